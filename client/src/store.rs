//! The encrypted container with hidden compartments (DESIGN.md §9): the
//! core format. One file of fixed size, made of 4 KiB blocks, with no magic
//! bytes, no visible version and no plaintext; everything in it looks like
//! random bytes, used or not.
//!
//! **Layout.** Blocks `0..3` are the header: a 32-byte global salt and 16
//! passphrase slots of 512 bytes (the rest random); the last 3 blocks are a
//! copy of it. The blocks between are data blocks.
//!
//! **Unlocking.** Argon2id runs once over the passphrase and the salt; its
//! output then tries **every** slot (XChaCha20-Poly1305, the slot index as
//! associated data), whichever matches, so the time to unlock does not
//! tell which slot matched, nor how many are used. A slot of level `L`
//! holds the keys of compartments `0..=L`: the passphrase of a more hidden
//! compartment opens the less hidden ones too (as in Shufflecake), so that
//! normal use, with the most hidden passphrase, knows every block in use and
//! overwrites nothing.
//!
//! **Compartments.** Each has a 32-byte key, from which its block key and
//! the places of its superblocks are derived (BLAKE3 `derive_key`). Its
//! data lives in logical blocks of 4,056 bytes; a block map (logical →
//! physical blocks) lives in map blocks, listed by the superblock. Every
//! block is `nonce (24) || XChaCha20-Poly1305(payload)`, with the
//! compartment id, the block's role, its logical index and its physical
//! index as associated data: a block cannot be moved or swapped unnoticed.
//! Physical blocks are allocated at random among those not in use.
//!
//! **Crash safety.** Writes are copy-on-write: changed data and map blocks
//! go to fresh blocks, then the superblock of the next generation is
//! written to the other of two superblock sets (A and B alternate). A crash
//! at any point leaves the previous generation intact (its blocks are never
//! reused while it is the committed one), and opening takes the newest
//! superblock that verifies.
//!
//! **Hidden data while only a decoy is open.** Blocks of a more hidden
//! compartment look free to a less hidden one, which may overwrite them.
//! Every block of a hidden compartment (level ≥ 1), its map and its
//! superblocks are therefore stored [`HIDDEN_REPLICAS`] times at
//! independent random places; a read tries each copy, and a block whose
//! every copy was overwritten is an error (AEAD failure), never wrong data.
//! The more a decoy writes without the hidden passphrase, the more hidden
//! data is lost: use the most hidden passphrase for normal use. One residual
//! risk: if every copy of a hidden compartment's newest superblock is
//! overwritten while a copy of the one before survives, the compartment
//! opens at that previous generation (an older, consistent state).
//!
//! **Files.** [`Vault`] holds one compartment's files (a [`FileTree`])
//! for the client's data dir: every change rewrites the blocks that
//! changed and commits; a batch commits once.
//!
//! Opening a hidden compartment gives every block that lost a copy fresh
//! copies ([`Store::repair`]), so damage from decoy-only sessions does not
//! pile up. Not yet: growing a container.

use std::collections::HashSet;

use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use rand::{CryptoRng, RngExt};
use zeroize::Zeroizing;

use crate::crypto::{self, AEAD_TAG_LEN};
use crate::layers::psk::{Argon2Params, argon2id};
use crate::{Error, Result};

/// Bytes of a block.
pub const BLOCK_LEN: usize = 4096;
const NONCE_LEN: usize = 24;
/// Bytes of data one logical block holds.
pub const PAYLOAD_LEN: usize = BLOCK_LEN - NONCE_LEN - AEAD_TAG_LEN;
/// Passphrase slots in the header.
pub const SLOTS: usize = 16;
const SLOT_LEN: usize = 512;
/// A level in a slot: its master key (32) and its slot's index (1).
const LEVEL_LEN: usize = 33;
const SALT_LEN: usize = 32;
const HEADER_BLOCKS: u64 = 3;
/// The most compartments (levels) of one container.
pub const MAX_LEVELS: usize = 8;
/// Copies of every block of a hidden compartment.
pub const HIDDEN_REPLICAS: usize = 3;
/// The smallest container, in blocks.
pub const MIN_BLOCKS: u64 = 64;
const SLOT_CONTEXT: &str = "bastet 2026 store slot v1";
const BLOCK_CONTEXT: &str = "bastet 2026 store block key v1";
const PLACE_CONTEXT: &str = "bastet 2026 store superblock place v1";
const ID_CONTEXT: &str = "bastet 2026 store compartment id v1";
const ROLE_DATA: u8 = 0;
const ROLE_MAP: u8 = 1;
const ROLE_SUPER: u8 = 2;
/// Map entries (physical block numbers, u32) one map block holds.
const MAP_ENTRIES: usize = PAYLOAD_LEN / 4;

/// The place of an unmapped logical block (a header block, never data).
const UNMAPPED: u64 = 0;

fn store_error(why: impl Into<String>) -> Error {
    Error::Store(why.into())
}

/// Where blocks are read and written: the container file, or memory in
/// tests.
pub trait Blocks {
    /// Blocks in the container.
    fn count(&self) -> u64;
    /// Reads block `index`.
    fn read(&self, index: u64, out: &mut [u8; BLOCK_LEN]) -> Result<()>;
    /// Writes block `index`.
    fn write(&mut self, index: u64, data: &[u8; BLOCK_LEN]) -> Result<()>;
    /// Makes every write so far durable.
    fn sync(&mut self) -> Result<()>;
}

/// A container file.
pub struct FileBlocks {
    file: std::fs::File,
    path: std::path::PathBuf,
    count: u64,
}

impl FileBlocks {
    /// Opens an existing container file.
    pub fn open(path: &std::path::Path) -> Result<FileBlocks> {
        let io = |e: std::io::Error| store_error(format!("{}: {e}", path.display()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        lock(&file, path)?;
        let len = file.metadata().map_err(io)?.len();
        if len % BLOCK_LEN as u64 != 0 || len / (BLOCK_LEN as u64) < MIN_BLOCKS {
            return Err(store_error(format!(
                "{} is not a container (its size is not a whole number of blocks)",
                path.display()
            )));
        }
        Ok(FileBlocks {
            file,
            path: path.to_path_buf(),
            count: len / BLOCK_LEN as u64,
        })
    }

    /// Creates a container file of `blocks` blocks of random bytes (mode
    /// 0600, never sparse); refuses to overwrite one.
    pub fn create<R: CryptoRng + ?Sized>(
        path: &std::path::Path,
        blocks: u64,
        rng: &mut R,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<FileBlocks> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e: std::io::Error| store_error(format!("{}: {e}", path.display()));
        if blocks < MIN_BLOCKS {
            return Err(store_error(format!(
                "a container has at least {MIN_BLOCKS} blocks ({} KiB)",
                MIN_BLOCKS * BLOCK_LEN as u64 / 1024
            )));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        lock(&file, path)?;
        let mut chunk = vec![0u8; 256 * BLOCK_LEN];
        let mut written = 0u64;
        while written < blocks {
            let n = (blocks - written).min(256);
            let bytes = &mut chunk[..n as usize * BLOCK_LEN];
            rng.fill_bytes(bytes);
            file.write_all(bytes).map_err(io)?;
            written += n;
            progress(written, blocks);
        }
        file.sync_all().map_err(io)?;
        // The file's entry in its directory, too: a power loss must not
        // lose the container after its first use.
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(FileBlocks {
            file,
            path: path.to_path_buf(),
            count: blocks,
        })
    }
}

/// Takes the container's exclusive lock (held while the file is open): one
/// process at a time writes a container.
fn lock(file: &std::fs::File, path: &std::path::Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(store_error(format!(
            "{} is open in another process (a running `bastet daemon`?): one process at a time",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(store_error(format!("{}: {e}", path.display())))
        }
    }
}

impl Blocks for FileBlocks {
    fn count(&self) -> u64 {
        self.count
    }

    fn read(&self, index: u64, out: &mut [u8; BLOCK_LEN]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(out, index * BLOCK_LEN as u64)
            .map_err(|e| store_error(format!("{}: {e}", self.path.display())))
    }

    fn write(&mut self, index: u64, data: &[u8; BLOCK_LEN]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(data, index * BLOCK_LEN as u64)
            .map_err(|e| store_error(format!("{}: {e}", self.path.display())))
    }

    fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| store_error(format!("{}: {e}", self.path.display())))
    }
}

/// A compartment's keys.
#[derive(Clone)]
struct Keys {
    master: Zeroizing<[u8; 32]>,
    /// The slot of this level's passphrase.
    slot: usize,
    block: Zeroizing<[u8; 32]>,
    place: Zeroizing<[u8; 32]>,
    id: [u8; 32],
}

impl Keys {
    fn new(master: Zeroizing<[u8; 32]>, slot: usize) -> Keys {
        Keys {
            slot,
            block: Zeroizing::new(blake3::derive_key(BLOCK_CONTEXT, master.as_ref())),
            place: Zeroizing::new(blake3::derive_key(PLACE_CONTEXT, master.as_ref())),
            id: blake3::derive_key(ID_CONTEXT, master.as_ref()),
            master,
        }
    }
}

/// An open compartment.
struct Compartment {
    level: usize,
    keys: Keys,
    replicas: usize,
    generation: u64,
    /// Superblock places: set A then set B, `replicas` each.
    supers: Vec<u64>,
    /// Logical block → its physical copies.
    map: Vec<Vec<u64>>,
    /// Physical copies of the committed map blocks.
    map_blocks: Vec<Vec<u64>>,
    dirty: bool,
    /// Blocks written since the last commit (not to be reused before it).
    fresh: HashSet<u64>,
    /// Blocks of the committed generation (data and map): never
    /// overwritten before the next commit, so that a crash leaves it whole.
    committed: HashSet<u64>,
    /// BLAKE3 of each logical block's payload as this process last wrote
    /// it (`None`: not written since opening): [`Store::write_all`] skips
    /// the blocks that did not change.
    digests: Vec<Option<[u8; 32]>>,
}

/// An open container: the compartments a passphrase opened (its level and
/// every less hidden one).
pub struct Store<B: Blocks> {
    blocks: B,
    compartments: Vec<Compartment>,
}

fn aad(id: &[u8; 32], role: u8, logical: u64, physical: u64) -> [u8; 49] {
    let mut out = [0u8; 49];
    out[..32].copy_from_slice(id);
    out[32] = role;
    out[33..41].copy_from_slice(&logical.to_be_bytes());
    out[41..].copy_from_slice(&physical.to_be_bytes());
    out
}

fn seal_block<R: CryptoRng + ?Sized>(
    key: &[u8; 32],
    aad: &[u8],
    payload: &[u8; PAYLOAD_LEN],
    rng: &mut R,
) -> Result<[u8; BLOCK_LEN]> {
    let nonce: [u8; NONCE_LEN] = crypto::random_bytes(rng);
    let mut body = payload.to_vec();
    XChaCha20Poly1305::new(key.into())
        .encrypt_in_place(&XNonce::from(nonce), aad, &mut body)
        .map_err(|_| store_error("encryption failed"))?;
    let mut out = [0u8; BLOCK_LEN];
    out[..NONCE_LEN].copy_from_slice(&nonce);
    out[NONCE_LEN..].copy_from_slice(&body);
    Ok(out)
}

fn open_block(key: &[u8; 32], aad: &[u8], block: &[u8; BLOCK_LEN]) -> Option<Zeroizing<Vec<u8>>> {
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&block[..NONCE_LEN]);
    let mut body = Zeroizing::new(block[NONCE_LEN..].to_vec());
    XChaCha20Poly1305::new(key.into())
        .decrypt_in_place(&XNonce::from(nonce), aad, &mut *body)
        .ok()?;
    Some(body)
}

/// The 3-block header and its salt, as read from one end of the file.
fn read_header<B: Blocks>(blocks: &B, at: u64) -> Result<Vec<u8>> {
    let mut out = vec![0u8; HEADER_BLOCKS as usize * BLOCK_LEN];
    let mut block = [0u8; BLOCK_LEN];
    for i in 0..HEADER_BLOCKS {
        blocks.read(at + i, &mut block)?;
        out[i as usize * BLOCK_LEN..(i as usize + 1) * BLOCK_LEN].copy_from_slice(&block);
    }
    Ok(out)
}

fn write_header<B: Blocks>(blocks: &mut B, header: &[u8]) -> Result<()> {
    let count = blocks.count();
    for at in [0, count - HEADER_BLOCKS] {
        let mut block = [0u8; BLOCK_LEN];
        for i in 0..HEADER_BLOCKS as usize {
            block.copy_from_slice(&header[i * BLOCK_LEN..(i + 1) * BLOCK_LEN]);
            blocks.write(at + i as u64, &block)?;
        }
        // The copy is written only once the first is durable.
        blocks.sync()?;
    }
    Ok(())
}

fn slot_range(slot: usize) -> std::ops::Range<usize> {
    SALT_LEN + slot * SLOT_LEN..SALT_LEN + (slot + 1) * SLOT_LEN
}

fn slot_key(unlock: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key(SLOT_CONTEXT, unlock))
}

/// Tries every slot of `header` with the Argon2id output `unlock`: the
/// compartment keys of the slot that opens, least hidden first.
/// A compartment's master key and the slot of its passphrase.
type Level = (Zeroizing<[u8; 32]>, usize);

fn try_slots(header: &[u8], unlock: &[u8; 32]) -> Option<Vec<Level>> {
    let key = slot_key(unlock);
    let mut found = None;
    // Every slot, whatever matched: the time does not depend on which.
    for slot in 0..SLOTS {
        let bytes = &header[slot_range(slot)];
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let mut body = Zeroizing::new(bytes[NONCE_LEN..].to_vec());
        let ok = XChaCha20Poly1305::new((&*key).into())
            .decrypt_in_place(&XNonce::from(nonce), &[slot as u8], &mut *body)
            .is_ok();
        if ok && found.is_none() {
            let levels = usize::from(body[0]);
            if (1..=MAX_LEVELS).contains(&levels) {
                let keys = (0..levels)
                    .map(|i| {
                        let at = 1 + LEVEL_LEN * i;
                        let mut k = Zeroizing::new([0u8; 32]);
                        k.copy_from_slice(&body[at..at + 32]);
                        (k, usize::from(body[at + 32]) % SLOTS)
                    })
                    .collect::<Vec<_>>();
                found = Some(keys);
            }
        }
    }
    found
}

fn seal_slot<R: CryptoRng + ?Sized>(
    unlock: &[u8; 32],
    slot: usize,
    keys: &[Level],
    rng: &mut R,
) -> Result<Vec<u8>> {
    let mut body = Zeroizing::new(vec![0u8; SLOT_LEN - NONCE_LEN - AEAD_TAG_LEN]);
    rng.fill_bytes(&mut body);
    body[0] = keys.len() as u8;
    for (i, (k, s)) in keys.iter().enumerate() {
        let at = 1 + LEVEL_LEN * i;
        body[at..at + 32].copy_from_slice(k.as_ref());
        body[at + 32] = *s as u8;
    }
    let nonce: [u8; NONCE_LEN] = crypto::random_bytes(rng);
    let mut sealed = body.to_vec();
    XChaCha20Poly1305::new((&*slot_key(unlock)).into())
        .encrypt_in_place(&XNonce::from(nonce), &[slot as u8], &mut sealed)
        .map_err(|_| store_error("encryption failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn data_range(count: u64) -> std::ops::Range<u64> {
    HEADER_BLOCKS..count - HEADER_BLOCKS
}

/// The superblock places of a compartment with `keys` (two sets of
/// `replicas`, all distinct), in a container of `count` blocks.
fn superblock_places(keys: &Keys, replicas: usize, count: u64) -> Vec<u64> {
    let range = data_range(count);
    let span = range.end - range.start;
    let mut out = Vec::with_capacity(2 * replicas);
    let mut attempt = 0u64;
    while out.len() < 2 * replicas {
        let mut h = blake3::Hasher::new_keyed(&keys.place);
        h.update(&attempt.to_be_bytes());
        let mut x = [0u8; 8];
        h.finalize_xof().fill(&mut x);
        let place = range.start + u64::from_be_bytes(x) % span;
        if !out.contains(&place) {
            out.push(place);
        }
        attempt += 1;
    }
    out
}

impl<B: Blocks> Store<B> {
    /// Makes a new container in `blocks` (already filled with random
    /// bytes) with one compartment per passphrase of `passphrases` (least
    /// hidden first): each passphrase opens its compartment and the less
    /// hidden ones. The other slots stay random.
    pub fn create<R: CryptoRng + ?Sized>(
        blocks: B,
        passphrases: &[&str],
        params: Argon2Params,
        rng: &mut R,
    ) -> Result<Store<B>> {
        if passphrases.is_empty() || passphrases.len() > MAX_LEVELS {
            return Err(store_error(format!(
                "a container has 1 to {MAX_LEVELS} compartments"
            )));
        }
        if blocks.count() < MIN_BLOCKS {
            return Err(store_error("the container is too small"));
        }
        let mut header = read_header(&blocks, 0)?;
        let salt: [u8; SALT_LEN] = crypto::random_bytes(rng);
        header[..SALT_LEN].copy_from_slice(&salt);
        let mut store = Store {
            blocks,
            compartments: Vec::new(),
        };
        // Distinct random slots; superblock places that do not collide.
        let mut slots: Vec<usize> = Vec::new();
        while slots.len() < passphrases.len() {
            let s = rng.random_range(0..SLOTS);
            if !slots.contains(&s) {
                slots.push(s);
            }
        }
        for (level, &slot) in slots.iter().enumerate() {
            let mut c = store.fresh_compartment(level, slot, rng);
            c.dirty = true;
            store.compartments.push(c);
        }
        let levels: Vec<Level> = store
            .compartments
            .iter()
            .map(|c| (c.keys.master.clone(), c.keys.slot))
            .collect();
        for (level, phrase) in passphrases.iter().enumerate() {
            let unlock = argon2id(phrase, &salt, params)?;
            let slot = seal_slot(&unlock, slots[level], &levels[..=level], rng)?;
            header[slot_range(slots[level])].copy_from_slice(&slot);
        }
        store.commit(rng)?;
        write_header(&mut store.blocks, &header)?;
        Ok(store)
    }

    /// A new, empty compartment whose superblock places are free (its key
    /// is drawn again until they are).
    fn fresh_compartment<R: CryptoRng + ?Sized>(
        &self,
        level: usize,
        slot: usize,
        rng: &mut R,
    ) -> Compartment {
        let used = self.in_use();
        loop {
            let c = self.new_compartment(level, (Zeroizing::new(crypto::random_bytes(rng)), slot));
            if c.supers.iter().all(|p| !used.contains(p)) {
                return c;
            }
        }
    }

    fn new_compartment(&self, level: usize, (master, slot): Level) -> Compartment {
        let keys = Keys::new(master, slot);
        let replicas = if level == 0 { 1 } else { HIDDEN_REPLICAS };
        let supers = superblock_places(&keys, replicas, self.blocks.count());
        Compartment {
            level,
            keys,
            replicas,
            generation: 0,
            supers,
            map: Vec::new(),
            map_blocks: Vec::new(),
            dirty: false,
            fresh: HashSet::new(),
            committed: HashSet::new(),
            digests: Vec::new(),
        }
    }

    /// Opens the compartment `passphrase` unlocks (and the less hidden
    /// ones). A wrong passphrase and an unused slot give the same error
    /// after the same work.
    pub fn open(blocks: B, passphrase: &str, params: Argon2Params) -> Result<Store<B>> {
        let count = blocks.count();
        if count < MIN_BLOCKS {
            return Err(store_error("the container is too small"));
        }
        // One Argon2id run, then every slot of both copies of the header,
        // whatever matches: the same work for any passphrase. A second run
        // only if the copies' salts differ (a damaged header).
        let primary = read_header(&blocks, 0)?;
        let backup = read_header(&blocks, count - HEADER_BLOCKS)?;
        let unlock = argon2id(passphrase, &primary[..SALT_LEN], params)?;
        let mut found = try_slots(&primary, &unlock);
        let from_backup = try_slots(&backup, &unlock);
        if found.is_none() {
            found = from_backup;
        }
        if found.is_none() && primary[..SALT_LEN] != backup[..SALT_LEN] {
            let unlock = argon2id(passphrase, &backup[..SALT_LEN], params)?;
            found = try_slots(&backup, &unlock);
        }
        let masters = found.ok_or_else(|| {
            store_error("no compartment opens with this passphrase (or the container is damaged)")
        })?;
        let mut store = Store {
            blocks,
            compartments: Vec::new(),
        };
        for (level, master) in masters.into_iter().enumerate() {
            let mut c = store.new_compartment(level, master);
            store.load(&mut c)?;
            store.compartments.push(c);
        }
        Ok(store)
    }

    /// Reads the newest superblock of `c` that verifies, and its map.
    fn load(&self, c: &mut Compartment) -> Result<()> {
        let mut best: Option<(u64, Zeroizing<Vec<u8>>)> = None;
        let mut raw = [0u8; BLOCK_LEN];
        for &place in &c.supers {
            self.blocks.read(place, &mut raw)?;
            let aad = aad(&c.keys.id, ROLE_SUPER, 0, place);
            if let Some(body) = open_block(&c.keys.block, &aad, &raw) {
                let mut g = [0u8; 8];
                g.copy_from_slice(&body[..8]);
                let g = u64::from_be_bytes(g);
                if best.as_ref().is_none_or(|(b, _)| g > *b) {
                    best = Some((g, body));
                }
            }
        }
        let (generation, body) = best.ok_or_else(|| {
            store_error(format!(
                "compartment {} has no readable superblock: it was overwritten (written to while only a less hidden compartment was open?)",
                c.level
            ))
        })?;
        let u32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&body[i..i + 4]);
            u64::from(u32::from_be_bytes(b))
        };
        let logical = u32_at(8) as usize;
        let map_count = u32_at(12) as usize;
        if map_count * c.replicas * 4 + 16 > PAYLOAD_LEN
            || logical > map_count * MAP_ENTRIES / c.replicas
        {
            return Err(store_error("a superblock is malformed"));
        }
        let mut map_blocks = Vec::with_capacity(map_count);
        for m in 0..map_count {
            map_blocks.push(
                (0..c.replicas)
                    .map(|r| u32_at(16 + 4 * (m * c.replicas + r)))
                    .collect::<Vec<u64>>(),
            );
        }
        let per_block = MAP_ENTRIES / c.replicas;
        let mut map = Vec::with_capacity(logical);
        for (m, copies) in map_blocks.iter().enumerate() {
            let entries = self.read_copies(c, ROLE_MAP, m as u64, copies)?;
            for e in 0..per_block {
                if map.len() == logical {
                    break;
                }
                map.push(
                    (0..c.replicas)
                        .map(|r| {
                            let i = 4 * (e * c.replicas + r);
                            let mut b = [0u8; 4];
                            b.copy_from_slice(&entries[i..i + 4]);
                            u64::from(u32::from_be_bytes(b))
                        })
                        .collect(),
                );
            }
        }
        if map.len() != logical {
            return Err(store_error(
                "a block map is shorter than its superblock says",
            ));
        }
        c.generation = generation;
        c.committed = map.iter().chain(&map_blocks).flatten().copied().collect();
        c.map = map;
        c.map_blocks = map_blocks;
        Ok(())
    }

    /// The first copy of a block that verifies.
    fn read_copies(
        &self,
        c: &Compartment,
        role: u8,
        logical: u64,
        copies: &[u64],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let mut raw = [0u8; BLOCK_LEN];
        let range = data_range(self.blocks.count());
        for &place in copies {
            if !range.contains(&place) {
                continue;
            }
            self.blocks.read(place, &mut raw)?;
            if let Some(body) =
                open_block(&c.keys.block, &aad(&c.keys.id, role, logical, place), &raw)
            {
                return Ok(body);
            }
        }
        Err(store_error(format!(
            "block {logical} of compartment {} is lost: every copy was overwritten (written to while only a less hidden compartment was open?)",
            c.level
        )))
    }

    /// Adds a compartment more hidden than every open one, opened by
    /// `passphrase` (which also opens the open ones). Do it with the most
    /// hidden passphrase you have: a slot or blocks of a compartment this
    /// store does not know (a more hidden one) may be overwritten, exactly
    /// as a less hidden compartment's writes may. Returns its level.
    pub fn add_compartment<R: CryptoRng + ?Sized>(
        &mut self,
        passphrase: &str,
        params: Argon2Params,
        rng: &mut R,
    ) -> Result<usize> {
        let level = self.compartments.len();
        if level >= MAX_LEVELS {
            return Err(store_error(format!(
                "a container has at most {MAX_LEVELS} compartments"
            )));
        }
        let mut header = read_header(&self.blocks, 0)?;
        let unlock = argon2id(passphrase, &header[..SALT_LEN], params)?;
        if try_slots(&header, &unlock).is_some() {
            return Err(store_error(
                "this passphrase opens a compartment already: choose another",
            ));
        }
        let used: Vec<usize> = self.compartments.iter().map(|c| c.keys.slot).collect();
        if used.len() >= SLOTS {
            return Err(store_error("every passphrase slot is in use"));
        }
        let slot = loop {
            let s = rng.random_range(0..SLOTS);
            if !used.contains(&s) {
                break s;
            }
        };
        let mut c = self.fresh_compartment(level, slot, rng);
        c.dirty = true;
        self.compartments.push(c);
        let levels: Vec<Level> = self
            .compartments
            .iter()
            .map(|c| (c.keys.master.clone(), c.keys.slot))
            .collect();
        let sealed = seal_slot(&unlock, slot, &levels, rng)?;
        header[slot_range(slot)].copy_from_slice(&sealed);
        // The new compartment's first superblock before the slot that names
        // it: a crash in between leaves only random-looking blocks.
        self.commit(rng)?;
        write_header(&mut self.blocks, &header)?;
        Ok(level)
    }

    /// The levels open (0 is the least hidden).
    pub fn levels(&self) -> usize {
        self.compartments.len()
    }

    /// Logical blocks in compartment `level`.
    pub fn len(&self, level: usize) -> Result<usize> {
        Ok(self.compartment(level)?.map.len())
    }

    fn compartment(&self, level: usize) -> Result<&Compartment> {
        self.compartments
            .get(level)
            .ok_or_else(|| store_error(format!("compartment {level} is not open")))
    }

    /// Reads logical block `index` of compartment `level`.
    pub fn read(&self, level: usize, index: usize) -> Result<Zeroizing<Vec<u8>>> {
        let c = self.compartment(level)?;
        let copies = c
            .map
            .get(index)
            .ok_or_else(|| store_error(format!("block {index} is past the end")))?;
        self.read_copies(c, ROLE_DATA, index as u64, copies)
    }

    /// Blocks in use by any open compartment (committed, being written,
    /// and superblock places) and the header.
    fn in_use(&self) -> HashSet<u64> {
        self.in_use_except(None)
    }

    /// [`Store::in_use`], leaving out compartment `skip`.
    fn in_use_except(&self, skip: Option<usize>) -> HashSet<u64> {
        let mut used = HashSet::new();
        for c in self.compartments.iter().filter(|c| Some(c.level) != skip) {
            used.extend(c.supers.iter().copied());
            used.extend(c.map.iter().flatten().copied().filter(|p| *p != UNMAPPED));
            used.extend(c.map_blocks.iter().flatten().copied());
            used.extend(c.fresh.iter().copied());
            used.extend(c.committed.iter().copied());
        }
        used.remove(&UNMAPPED);
        used
    }

    fn allocate<R: CryptoRng + ?Sized>(&self, used: &mut HashSet<u64>, rng: &mut R) -> Result<u64> {
        let range = data_range(self.blocks.count());
        let free =
            (range.end - range.start) as usize - used.len().min((range.end - range.start) as usize);
        if free == 0 {
            return Err(store_error("the container is full"));
        }
        loop {
            let place = rng.random_range(range.clone());
            if used.insert(place) {
                return Ok(place);
            }
        }
    }

    /// Writes logical block `index` of compartment `level` (`index` at most
    /// its length: one past the end appends). Durable at [`Store::commit`].
    pub fn write<R: CryptoRng + ?Sized>(
        &mut self,
        level: usize,
        index: usize,
        payload: &[u8; PAYLOAD_LEN],
        rng: &mut R,
    ) -> Result<()> {
        let len = self.len(level)?;
        if index > len {
            return Err(store_error(format!("block {index} is past the end")));
        }
        let mut used = self.in_use();
        let replicas = self.compartments[level].replicas;
        let mut copies = Vec::with_capacity(replicas);
        for _ in 0..replicas {
            copies.push(self.allocate(&mut used, rng)?);
        }
        let c = &self.compartments[level];
        let mut sealed = Vec::with_capacity(replicas);
        for &place in &copies {
            sealed.push((
                place,
                seal_block(
                    &c.keys.block,
                    &aad(&c.keys.id, ROLE_DATA, index as u64, place),
                    payload,
                    rng,
                )?,
            ));
        }
        for (place, block) in &sealed {
            self.blocks.write(*place, block)?;
        }
        let c = &mut self.compartments[level];
        c.fresh.extend(copies.iter().copied());
        if index == len {
            c.map.push(copies);
        } else {
            c.map[index] = copies;
        }
        c.digests.resize(c.map.len(), None);
        c.digests[index] = Some(*blake3::hash(payload).as_bytes());
        c.dirty = true;
        Ok(())
    }

    /// Writes logical block `index` as [`Store::write`] does, unless this
    /// process last wrote it with the same payload.
    pub fn write_if_changed<R: CryptoRng + ?Sized>(
        &mut self,
        level: usize,
        index: usize,
        payload: &[u8; PAYLOAD_LEN],
        rng: &mut R,
    ) -> Result<()> {
        let c = self.compartment(level)?;
        if index < c.map.len()
            && c.digests.get(index).copied().flatten() == Some(*blake3::hash(payload).as_bytes())
        {
            return Ok(());
        }
        self.write(level, index, payload, rng)
    }

    /// Unmaps logical block `index` of compartment `level`: its physical
    /// blocks are free after the next commit; reading it is an error.
    pub fn discard(&mut self, level: usize, index: usize) -> Result<()> {
        let c = self
            .compartments
            .get_mut(level)
            .ok_or_else(|| store_error(format!("compartment {level} is not open")))?;
        let Some(copies) = c.map.get_mut(index) else {
            return Ok(());
        };
        if copies.iter().any(|p| *p != UNMAPPED) {
            copies.iter_mut().for_each(|p| *p = UNMAPPED);
            c.digests.resize(c.map.len(), None);
            c.digests[index] = None;
            c.dirty = true;
        }
        Ok(())
    }

    /// Gives every block of compartment `level` whose copies are not all
    /// intact (some were overwritten while only a less hidden compartment
    /// was open) a fresh set of copies, and commits if any was. Returns
    /// how many blocks were repaired. A block with no intact copy is an
    /// error (it cannot be repaired).
    pub fn repair<R: CryptoRng + ?Sized>(&mut self, level: usize, rng: &mut R) -> Result<usize> {
        let c = self.compartment(level)?;
        if c.replicas < 2 {
            return Ok(0);
        }
        let range = data_range(self.blocks.count());
        let mut damaged = Vec::new();
        let mut raw = [0u8; BLOCK_LEN];
        for (index, copies) in c.map.iter().enumerate() {
            if copies.iter().all(|p| *p == UNMAPPED) {
                continue;
            }
            let mut intact = 0;
            for &place in copies {
                if !range.contains(&place) {
                    continue;
                }
                self.blocks.read(place, &mut raw)?;
                let aad = aad(&c.keys.id, ROLE_DATA, index as u64, place);
                if open_block(&c.keys.block, &aad, &raw).is_some() {
                    intact += 1;
                }
            }
            if intact < copies.len() {
                damaged.push(index);
            }
        }
        // Map blocks are written afresh by every commit: one with a lost
        // copy only needs a commit.
        let mut map_damaged = false;
        for (m, copies) in c.map_blocks.iter().enumerate() {
            for &place in copies {
                if !range.contains(&place) {
                    continue;
                }
                self.blocks.read(place, &mut raw)?;
                let aad = aad(&c.keys.id, ROLE_MAP, m as u64, place);
                map_damaged |= open_block(&c.keys.block, &aad, &raw).is_none();
            }
        }
        if map_damaged {
            self.compartments[level].dirty = true;
        }
        for &index in &damaged {
            let body = self.read(level, index)?;
            let mut payload = Zeroizing::new([0u8; PAYLOAD_LEN]);
            payload.copy_from_slice(&body);
            self.write(level, index, &payload, rng)?;
        }
        if !damaged.is_empty() || map_damaged {
            // The map and superblock get fresh copies too.
            self.commit(rng)?;
        }
        Ok(damaged.len() + usize::from(map_damaged))
    }

    /// Drops every uncommitted write of compartment `level`: it is again
    /// as its newest superblock on disk says (after a failed commit).
    pub fn revert(&mut self, level: usize) -> Result<()> {
        let c = self.compartment(level)?;
        let mut again = self.new_compartment(level, (c.keys.master.clone(), c.keys.slot));
        self.load(&mut again)?;
        self.compartments[level] = again;
        Ok(())
    }

    /// Shortens compartment `level` to `len` logical blocks.
    pub fn truncate(&mut self, level: usize, len: usize) -> Result<()> {
        let c = self
            .compartments
            .get_mut(level)
            .ok_or_else(|| store_error(format!("compartment {level} is not open")))?;
        if len < c.map.len() {
            c.map.truncate(len);
            c.digests.truncate(len);
            c.dirty = true;
        }
        Ok(())
    }

    /// Makes every write so far durable: new map blocks, then the next
    /// superblock of each changed compartment in its other set.
    pub fn commit<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> Result<()> {
        for level in 0..self.compartments.len() {
            if !self.compartments[level].dirty {
                continue;
            }
            let replicas = self.compartments[level].replicas;
            let per_block = MAP_ENTRIES / replicas;
            let map_count = self.compartments[level].map.len().div_ceil(per_block);
            if map_count * replicas * 4 + 16 > PAYLOAD_LEN {
                return Err(store_error(
                    "the compartment's map is too large for one superblock",
                ));
            }
            let mut used = self.in_use();
            let mut map_blocks = Vec::with_capacity(map_count);
            for m in 0..map_count {
                let mut payload = [0u8; PAYLOAD_LEN];
                rng.fill_bytes(&mut payload);
                let c = &self.compartments[level];
                for (e, copies) in c.map.iter().skip(m * per_block).take(per_block).enumerate() {
                    for (r, place) in copies.iter().enumerate() {
                        let i = 4 * (e * replicas + r);
                        payload[i..i + 4].copy_from_slice(&(*place as u32).to_be_bytes());
                    }
                }
                let mut copies = Vec::with_capacity(replicas);
                for _ in 0..replicas {
                    copies.push(self.allocate(&mut used, rng)?);
                }
                let c = &self.compartments[level];
                for &place in &copies {
                    let block = seal_block(
                        &c.keys.block,
                        &aad(&c.keys.id, ROLE_MAP, m as u64, place),
                        &payload,
                        rng,
                    )?;
                    self.blocks.write(place, &block)?;
                }
                map_blocks.push(copies);
            }
            // Data and map blocks are durable before the superblock names
            // them.
            self.blocks.sync()?;
            let c = &self.compartments[level];
            let generation = c.generation + 1;
            let mut payload = [0u8; PAYLOAD_LEN];
            rng.fill_bytes(&mut payload);
            payload[..8].copy_from_slice(&generation.to_be_bytes());
            payload[8..12].copy_from_slice(&(c.map.len() as u32).to_be_bytes());
            payload[12..16].copy_from_slice(&(map_count as u32).to_be_bytes());
            for (m, copies) in map_blocks.iter().enumerate() {
                for (r, place) in copies.iter().enumerate() {
                    let i = 16 + 4 * (m * replicas + r);
                    payload[i..i + 4].copy_from_slice(&(*place as u32).to_be_bytes());
                }
            }
            // Generation g lives in set g % 2: the committed one (the other
            // set) stays intact until this one is durable.
            let set = (generation % 2) as usize;
            // A less hidden compartment, written while this one was not
            // open, may have put its blocks on this one's superblock
            // places: those copies are skipped, never overwritten.
            let others = self.in_use_except(Some(level));
            let places: Vec<u64> = c.supers[set * replicas..(set + 1) * replicas]
                .iter()
                .copied()
                .filter(|p| !others.contains(p))
                .collect();
            if places.is_empty() {
                return Err(store_error(format!(
                    "every superblock place of compartment {level} holds data of a less hidden compartment (written while only that one was open): copy the files out and make a new container"
                )));
            }
            for place in places {
                let c = &self.compartments[level];
                let block = seal_block(
                    &c.keys.block,
                    &aad(&c.keys.id, ROLE_SUPER, 0, place),
                    &payload,
                    rng,
                )?;
                self.blocks.write(place, &block)?;
            }
            self.blocks.sync()?;
            let c = &mut self.compartments[level];
            c.generation = generation;
            c.map_blocks = map_blocks;
            c.committed = c
                .map
                .iter()
                .chain(&c.map_blocks)
                .flatten()
                .copied()
                .collect();
            c.fresh.clear();
            c.dirty = false;
        }
        Ok(())
    }

    /// Replaces the contents of compartment `level` with `bytes` (length
    /// first, then the bytes across logical blocks) and commits. Blocks
    /// this process wrote before with the same payload are kept as they
    /// are (copy-on-write needs no new copy of an unchanged block).
    pub fn write_all<R: CryptoRng + ?Sized>(
        &mut self,
        level: usize,
        bytes: &[u8],
        rng: &mut R,
    ) -> Result<()> {
        let total = 8 + bytes.len();
        let blocks = total.div_ceil(PAYLOAD_LEN);
        let mut stream = Zeroizing::new(Vec::with_capacity(blocks * PAYLOAD_LEN));
        stream.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        stream.extend_from_slice(bytes);
        stream.resize(blocks * PAYLOAD_LEN, 0);
        self.truncate(level, blocks)?;
        for (i, chunk) in stream.chunks(PAYLOAD_LEN).enumerate() {
            let c = self.compartment(level)?;
            let same = c.digests.get(i).copied().flatten() == Some(*blake3::hash(chunk).as_bytes());
            if same && i < c.map.len() {
                continue;
            }
            let mut payload = Zeroizing::new([0u8; PAYLOAD_LEN]);
            payload.copy_from_slice(chunk);
            self.write(level, i, &payload, rng)?;
        }
        self.commit(rng)
    }

    /// The contents [`Store::write_all`] wrote.
    pub fn read_all(&self, level: usize) -> Result<Zeroizing<Vec<u8>>> {
        let len = self.len(level)?;
        let mut out = Zeroizing::new(Vec::with_capacity(len * PAYLOAD_LEN));
        for i in 0..len {
            out.extend_from_slice(&self.read(level, i)?);
        }
        if out.len() < 8 {
            return Ok(Zeroizing::new(Vec::new()));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&out[..8]);
        let n = usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX);
        if n > out.len() - 8 {
            return Err(store_error("the compartment's length is past its blocks"));
        }
        Ok(Zeroizing::new(out[8..8 + n].to_vec()))
    }

    /// The blocks backing the store (for tests).
    pub fn into_blocks(self) -> B {
        self.blocks
    }
}

/// The files of one compartment: names (relative paths, `/`-separated) to
/// contents, held in memory. [`FileTree::load`] and [`FileTree::save`]
/// read and write them through a [`Layout`].
#[derive(Clone, Default)]
pub struct FileTree {
    files: std::collections::BTreeMap<String, Zeroizing<Vec<u8>>>,
}

/// Longest file name in a [`FileTree`], in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Most files in a [`FileTree`].
pub const MAX_FILES: usize = 1 << 20;
/// Most blocks the index of a compartment's files takes (the refs that fit
/// in the head block): about 4 MiB of index.
const MAX_INDEX_BLOCKS: usize = (PAYLOAD_LEN - 12) / 4;

/// Checks a file name: 1 to 255 bytes of `/`-separated parts, none empty,
/// `.` or `..`, no control characters.
pub fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(char::is_control)
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        Ok(())
    } else {
        Err(store_error(format!(
            "{name:?} is not a file name in the store"
        )))
    }
}

/// One file in a compartment's index: its name, its length and the
/// logical blocks holding its bytes, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The file's name.
    pub name: String,
    /// Its length in bytes.
    pub len: u32,
    /// Its logical blocks (`len` rounded up to whole blocks of
    /// [`PAYLOAD_LEN`]).
    pub blocks: Vec<u32>,
}

/// Encodes an index: `count (u32 BE)`, then per file `name length (u16
/// BE) || name || length (u32 BE) || its blocks (u32 BE each)`.
pub fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        out.extend_from_slice(&(e.name.len() as u16).to_be_bytes());
        out.extend_from_slice(e.name.as_bytes());
        out.extend_from_slice(&e.len.to_be_bytes());
        for b in &e.blocks {
            out.extend_from_slice(&b.to_be_bytes());
        }
    }
    out
}

/// Parses [`encode_index`]'s output for a compartment of `logical` blocks:
/// bounded, names checked, in order and unique, every block in `1..logical`
/// and used once (and not in `taken`, the index's own blocks), nothing
/// after the last entry.
pub fn decode_index(bytes: &[u8], logical: u32, taken: &[u32]) -> Result<Vec<IndexEntry>> {
    let bad = |why: &str| store_error(format!("the compartment's files are malformed: {why}"));
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8]> {
        let (head, tail) = rest
            .split_at_checked(n)
            .ok_or_else(|| bad("shorter than its fields"))?;
        rest = tail;
        Ok(head)
    };
    let u32_of = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let count = u32_of(take(4)?) as usize;
    if count > MAX_FILES {
        return Err(bad("too many files"));
    }
    let mut used: HashSet<u32> = taken.iter().copied().collect();
    let mut out: Vec<IndexEntry> = Vec::new();
    for _ in 0..count {
        let len = take(2)?;
        let name = std::str::from_utf8(take(usize::from(u16::from_be_bytes([len[0], len[1]])))?)
            .map_err(|_| bad("a name is not UTF-8"))?
            .to_string();
        check_file_name(&name)?;
        if out.last().is_some_and(|l| l.name >= name) {
            return Err(bad("names out of order or repeated"));
        }
        let len = u32_of(take(4)?);
        let n = (len as usize).div_ceil(PAYLOAD_LEN);
        if n > logical as usize {
            return Err(bad("a file is longer than the compartment"));
        }
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            let b = u32_of(take(4)?);
            if b == 0 || b >= logical || !used.insert(b) {
                return Err(bad("a block is out of range or used twice"));
            }
            blocks.push(b);
        }
        out.push(IndexEntry { name, len, blocks });
    }
    if !rest.is_empty() {
        return Err(bad("bytes after the last file"));
    }
    Ok(out)
}

/// Where a compartment's files live: logical block 0 is the head (the
/// index's length and its blocks), the index lists each file's name,
/// length and blocks, and each file has blocks of its own, so that a
/// change rewrites only the blocks of the files that changed (and the
/// index's blocks that changed).
#[derive(Clone, Debug, Default)]
pub struct Layout {
    files: std::collections::BTreeMap<String, Vec<u32>>,
    index: Vec<u32>,
    free: std::collections::BTreeSet<u32>,
    /// Logical blocks, the head included.
    len: u32,
}

impl Layout {
    /// The files of compartment `level` and where they are.
    pub fn load<B: Blocks>(store: &Store<B>, level: usize) -> Result<(FileTree, Layout)> {
        let logical = store.len(level)?;
        if logical == 0 {
            return Ok((FileTree::default(), Layout::default()));
        }
        let logical = u32::try_from(logical).map_err(|_| store_error("too many blocks"))?;
        let bad = |why: &str| store_error(format!("the compartment's files are malformed: {why}"));
        let head = store.read(level, 0)?;
        let index_len = u64::from_be_bytes(head[..8].try_into().map_err(|_| bad("head"))?);
        let count = u32::from_be_bytes(head[8..12].try_into().map_err(|_| bad("head"))?) as usize;
        if count > MAX_INDEX_BLOCKS || index_len > (count * PAYLOAD_LEN) as u64 {
            return Err(bad("the head is out of range"));
        }
        let mut index = Vec::with_capacity(count);
        for i in 0..count {
            let at = 12 + 4 * i;
            let b = u32::from_be_bytes(head[at..at + 4].try_into().map_err(|_| bad("head"))?);
            if b == 0 || b >= logical || index.contains(&b) {
                return Err(bad("an index block is out of range or repeated"));
            }
            index.push(b);
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(count * PAYLOAD_LEN));
        for &b in &index {
            bytes.extend_from_slice(&store.read(level, b as usize)?);
        }
        bytes.truncate(index_len as usize);
        let entries = decode_index(&bytes, logical, &index)?;
        let mut tree = FileTree::default();
        let mut layout = Layout {
            len: logical,
            ..Layout::default()
        };
        let mut used: HashSet<u32> = index.iter().copied().collect();
        for e in entries {
            let mut contents = Zeroizing::new(Vec::with_capacity(e.blocks.len() * PAYLOAD_LEN));
            for &b in &e.blocks {
                contents.extend_from_slice(&store.read(level, b as usize)?);
                used.insert(b);
            }
            contents.truncate(e.len as usize);
            tree.files.insert(e.name.clone(), contents);
            layout.files.insert(e.name, e.blocks);
        }
        layout.index = index;
        layout.free = (1..logical).filter(|b| !used.contains(b)).collect();
        Ok((tree, layout))
    }

    fn allocate(&mut self) -> u32 {
        if let Some(b) = self.free.pop_first() {
            return b;
        }
        self.len = self.len.max(1);
        let b = self.len;
        self.len += 1;
        b
    }

    fn resize(&mut self, blocks: &mut Vec<u32>, n: usize) {
        while blocks.len() > n {
            if let Some(b) = blocks.pop() {
                self.free.insert(b);
            }
        }
        while blocks.len() < n {
            let b = self.allocate();
            blocks.push(b);
        }
    }

    /// Writes `bytes` across `blocks` (the last one padded with zeros),
    /// skipping blocks whose payload did not change.
    fn write_chunks<B: Blocks, R: CryptoRng + ?Sized>(
        store: &mut Store<B>,
        level: usize,
        blocks: &[u32],
        bytes: &[u8],
        rng: &mut R,
    ) -> Result<()> {
        for (b, chunk) in blocks.iter().zip(bytes.chunks(PAYLOAD_LEN)) {
            let mut payload = Zeroizing::new([0u8; PAYLOAD_LEN]);
            payload[..chunk.len()].copy_from_slice(chunk);
            store.write_if_changed(level, *b as usize, &payload, rng)?;
        }
        Ok(())
    }

    /// Writes the files of `tree` named in `changed` (removed ones are
    /// freed), then the index and the head, and commits: all of it or, if
    /// a crash comes first, none.
    pub fn save<B: Blocks, R: CryptoRng + ?Sized>(
        &mut self,
        store: &mut Store<B>,
        level: usize,
        tree: &FileTree,
        changed: &std::collections::BTreeSet<String>,
        rng: &mut R,
    ) -> Result<()> {
        if store.len(level)? == 0 {
            // The head's place, so that later blocks can follow it.
            store.write(level, 0, &[0u8; PAYLOAD_LEN], rng)?;
        }
        self.len = self.len.max(1);
        for name in changed {
            let mut blocks = self.files.remove(name).unwrap_or_default();
            match tree.get(name) {
                None => self.resize(&mut blocks, 0),
                Some(contents) => {
                    if u32::try_from(contents.len()).is_err() {
                        return Err(store_error(format!("{name} is larger than 4 GiB")));
                    }
                    self.resize(&mut blocks, contents.len().div_ceil(PAYLOAD_LEN));
                    Layout::write_chunks(store, level, &blocks, contents, rng)?;
                    self.files.insert(name.clone(), blocks);
                }
            }
        }
        let entries: Vec<IndexEntry> = self
            .files
            .iter()
            .map(|(name, blocks)| IndexEntry {
                name: name.clone(),
                len: tree.get(name).map_or(0, |c| c.len() as u32),
                blocks: blocks.clone(),
            })
            .collect();
        let bytes = Zeroizing::new(encode_index(&entries));
        let n = bytes.len().div_ceil(PAYLOAD_LEN);
        if n > MAX_INDEX_BLOCKS {
            return Err(store_error("too many files for the index"));
        }
        let mut index = std::mem::take(&mut self.index);
        self.resize(&mut index, n);
        Layout::write_chunks(store, level, &index, &bytes, rng)?;
        let mut head = Zeroizing::new([0u8; PAYLOAD_LEN]);
        head[..8].copy_from_slice(&(bytes.len() as u64).to_be_bytes());
        head[8..12].copy_from_slice(&(index.len() as u32).to_be_bytes());
        for (i, b) in index.iter().enumerate() {
            head[12 + 4 * i..16 + 4 * i].copy_from_slice(&b.to_be_bytes());
        }
        self.index = index;
        store.write_if_changed(level, 0, &head, rng)?;
        // Free blocks at the end are given back; those between are
        // unmapped (they hold nothing the compartment needs).
        while self.len > 1 && self.free.remove(&(self.len - 1)) {
            self.len -= 1;
        }
        store.truncate(level, self.len as usize)?;
        for &b in &self.free {
            store.discard(level, b as usize)?;
        }
        store.commit(rng)
    }
}

impl FileTree {
    /// The files of compartment `level` of `store` (none in a new one).
    pub fn load<B: Blocks>(store: &Store<B>, level: usize) -> Result<FileTree> {
        Ok(Layout::load(store, level)?.0)
    }

    /// Writes every file to compartment `level` (as its only files) and
    /// commits.
    pub fn save<B: Blocks, R: CryptoRng + ?Sized>(
        &self,
        store: &mut Store<B>,
        level: usize,
        rng: &mut R,
    ) -> Result<()> {
        let (old, mut layout) = Layout::load(store, level)?;
        let changed = old.files.keys().chain(self.files.keys()).cloned().collect();
        layout.save(store, level, self, &changed, rng)
    }

    /// A file's contents.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(|c| c.as_slice())
    }

    /// Sets a file's contents.
    pub fn put(&mut self, name: &str, contents: &[u8]) -> Result<()> {
        check_file_name(name)?;
        if !self.files.contains_key(name) && self.files.len() >= MAX_FILES {
            return Err(store_error("too many files"));
        }
        self.files
            .insert(name.to_string(), Zeroizing::new(contents.to_vec()));
        Ok(())
    }

    /// Removes a file; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.files.remove(name).is_some()
    }

    /// The names under directory `dir` (`""` for all), in order.
    pub fn list(&self, dir: &str) -> Vec<&str> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{}/", dir.trim_end_matches('/'))
        };
        self.files
            .keys()
            .filter(|n| n.starts_with(&prefix))
            .map(String::as_str)
            .collect()
    }
}

/// The Argon2id cost of every container (fixed: a container shows no
/// parameters): RFC 9106's second recommended option.
pub const STORE_ARGON2: Argon2Params = Argon2Params {
    memory_kib: 64 * 1024,
    iterations: 3,
    parallelism: 1,
};

/// An open compartment of a container file, as the client's data dir uses
/// it: a [`FileTree`] in memory, written back after every change (only the
/// blocks of the files that changed, the index, then one commit), or once
/// at the end of a batch. The container file stays locked while this is
/// open.
pub struct Vault {
    path: std::path::PathBuf,
    store: Store<FileBlocks>,
    level: usize,
    tree: FileTree,
    layout: Layout,
    /// Files changed since the last commit.
    changed: std::collections::BTreeSet<String>,
    /// Nesting depth of [`Vault::begin`] calls.
    batch: usize,
    /// The thread whose batch is open: others wait for its end (see
    /// `DataDir`), so that a batch commits exactly its own changes.
    batch_owner: Option<std::thread::ThreadId>,
    /// Why the vault refuses every change: its state could not be read back
    /// after a failed commit (reopen it).
    broken: Option<String>,
}

impl Vault {
    /// Makes a container file at `path` of `blocks` blocks with one
    /// compartment per passphrase (least hidden first). `progress` is
    /// called as the random fill goes (blocks written, of all).
    pub fn create(
        path: &std::path::Path,
        blocks: u64,
        passphrases: &[&str],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let mut rng = rand::rng();
        let file = FileBlocks::create(path, blocks, &mut rng, progress)?;
        let mut store = Store::create(file, passphrases, STORE_ARGON2, &mut rng)?;
        for level in 0..store.levels() {
            FileTree::default().save(&mut store, level, &mut rng)?;
        }
        Ok(())
    }

    /// Opens the most hidden compartment `passphrase` unlocks.
    pub fn open(path: &std::path::Path, passphrase: &str) -> Result<Vault> {
        Vault::unlock(FileBlocks::open(path)?, passphrase)
    }

    /// Opens the most hidden compartment `passphrase` unlocks in `file`
    /// (opened, and so locked, before the passphrase is asked for).
    pub fn unlock(file: FileBlocks, passphrase: &str) -> Result<Vault> {
        let path = file.path.clone();
        let store = Store::open(file, passphrase, STORE_ARGON2)?;
        let level = store.levels() - 1;
        let (tree, layout) = Layout::load(&store, level)?;
        let mut store = store;
        // Best effort: a compartment whose repair cannot be written (the
        // container full, its superblock places taken) still opens, so
        // that its files can be read and copied out.
        match store.repair(level, &mut rand::rng()) {
            Ok(0) => {}
            Ok(repaired) => tracing::warn!(
                blocks = repaired,
                "some blocks had lost copies (written over while only a less hidden compartment was open): given fresh copies"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "blocks that lost copies could not be repaired now");
                store.revert(level)?;
            }
        }
        Ok(Vault {
            path,
            store,
            level,
            tree,
            layout,
            changed: Default::default(),
            batch: 0,
            batch_owner: None,
            broken: None,
        })
    }

    /// Adds a compartment more hidden than every one `below` opens (give
    /// the most hidden passphrase you have), opened by `passphrase`.
    /// Returns its level.
    pub fn add_compartment(path: &std::path::Path, below: &str, passphrase: &str) -> Result<usize> {
        let mut rng = rand::rng();
        let mut store = Store::open(FileBlocks::open(path)?, below, STORE_ARGON2)?;
        let level = store.add_compartment(passphrase, STORE_ARGON2, &mut rng)?;
        FileTree::default().save(&mut store, level, &mut rng)?;
        Ok(level)
    }

    /// The container file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The level of the open compartment (0: the least hidden).
    pub fn level(&self) -> usize {
        self.level
    }

    /// Bytes of the container file and bytes the open compartments use.
    pub fn usage(&self) -> (u64, u64) {
        let total = self.store.blocks.count() * BLOCK_LEN as u64;
        let used = self.store.in_use().len() as u64 * BLOCK_LEN as u64;
        (total, used)
    }

    /// A file's contents.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.tree.get(name)
    }

    /// The files directly in directory `dir` (`""`: the top), their names
    /// without the directory.
    pub fn list_dir(&self, dir: &str) -> Vec<String> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{}/", dir.trim_end_matches('/'))
        };
        self.tree
            .list(dir)
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_string)
            .collect()
    }

    /// Sets a file's contents, durably (unless in a batch).
    pub fn put(&mut self, name: &str, contents: &[u8]) -> Result<()> {
        self.check_usable()?;
        self.begin();
        let done = self.tree.put(name, contents);
        if done.is_ok() {
            self.changed.insert(name.to_string());
        }
        self.end_with(done)
    }

    /// Removes a file, durably (unless in a batch); whether it was there.
    pub fn remove(&mut self, name: &str) -> Result<bool> {
        self.check_usable()?;
        if self.tree.get(name).is_none() {
            return Ok(false);
        }
        self.begin();
        self.tree.remove(name);
        self.changed.insert(name.to_string());
        self.end_with(Ok(()))?;
        Ok(true)
    }

    /// Renames a file (replacing `to`), in one commit; whether `from` was
    /// there.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<bool> {
        self.check_usable()?;
        let Some(contents) = self.tree.get(from).map(|c| Zeroizing::new(c.to_vec())) else {
            return Ok(false);
        };
        if from == to {
            return Ok(true);
        }
        self.begin();
        let done = self
            .put(to, &contents)
            .and_then(|()| self.remove(from).map(|_| ()));
        self.end_with(done)?;
        Ok(true)
    }

    fn check_usable(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(store_error(format!(
                "the store refuses changes until it is opened again: {why}"
            ))),
            None => Ok(()),
        }
    }

    /// Whether a batch of another thread is open (its changes are not
    /// committed yet: wait for its end before reading or writing).
    pub fn busy_for_others(&self) -> bool {
        self.batch_owner
            .is_some_and(|owner| owner != std::thread::current().id())
    }

    /// Starts a batch: changes are committed together at the matching
    /// [`Vault::end`] (all or none of them, even across a crash).
    pub fn begin(&mut self) {
        if self.batch == 0 {
            self.batch_owner = Some(std::thread::current().id());
        }
        self.batch += 1;
    }

    /// Ends a batch; the outermost commits every change it made.
    pub fn end(&mut self) -> Result<()> {
        self.end_with(Ok(()))
    }

    /// Ends a batch whose work had `outcome`; the outermost commits, or,
    /// if the work or the commit failed, reads the compartment back from
    /// its newest superblock on disk: the files are exactly as committed
    /// (the old state, or the new one if the failed commit had in fact
    /// landed), never a mix.
    pub fn end_with(&mut self, outcome: Result<()>) -> Result<()> {
        self.batch = self.batch.saturating_sub(1);
        if self.batch > 0 {
            return outcome;
        }
        self.batch_owner = None;
        let outcome = outcome.and_then(|()| {
            if self.changed.is_empty() {
                return Ok(());
            }
            let mut rng = rand::rng();
            let mut layout = self.layout.clone();
            layout.save(
                &mut self.store,
                self.level,
                &self.tree,
                &self.changed,
                &mut rng,
            )?;
            self.layout = layout;
            self.changed.clear();
            Ok(())
        });
        if let Err(e) = outcome {
            self.changed.clear();
            let reloaded = self
                .store
                .revert(self.level)
                .and_then(|()| Layout::load(&self.store, self.level));
            match reloaded {
                Ok((tree, layout)) => {
                    self.tree = tree;
                    self.layout = layout;
                }
                Err(again) => {
                    self.broken = Some(format!("{e}; reading it back failed: {again}"));
                    return Err(store_error(format!(
                        "{e}; and reading the compartment back failed: {again}"
                    )));
                }
            }
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks in memory; writes after `budget` are lost (a crash).
    #[derive(Clone)]
    pub(crate) struct MemBlocks {
        data: Vec<[u8; BLOCK_LEN]>,
        budget: Option<usize>,
        /// Blocks written so far.
        writes: usize,
    }

    impl MemBlocks {
        pub(crate) fn new(count: u64) -> MemBlocks {
            Self::with_rng(count, &mut rand::rng())
        }

        pub(crate) fn with_rng<R: CryptoRng + ?Sized>(count: u64, rng: &mut R) -> MemBlocks {
            let mut data = vec![[0u8; BLOCK_LEN]; count as usize];
            for b in &mut data {
                rng.fill_bytes(b);
            }
            MemBlocks {
                data,
                budget: None,
                writes: 0,
            }
        }
    }

    impl Blocks for MemBlocks {
        fn count(&self) -> u64 {
            self.data.len() as u64
        }
        fn read(&self, index: u64, out: &mut [u8; BLOCK_LEN]) -> Result<()> {
            out.copy_from_slice(&self.data[index as usize]);
            Ok(())
        }
        fn write(&mut self, index: u64, data: &[u8; BLOCK_LEN]) -> Result<()> {
            match &mut self.budget {
                Some(0) => return Err(store_error("crash")),
                Some(n) => *n -= 1,
                None => {}
            }
            self.data[index as usize] = *data;
            self.writes += 1;
            Ok(())
        }
        fn sync(&mut self) -> Result<()> {
            Ok(())
        }
    }

    fn fast() -> Argon2Params {
        Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn payload(byte: u8) -> [u8; PAYLOAD_LEN] {
        [byte; PAYLOAD_LEN]
    }

    #[test]
    fn each_passphrase_opens_its_compartment_and_the_less_hidden_ones() {
        let rng = &mut rand::rng();
        let mut store = Store::create(
            MemBlocks::new(512),
            &["decoy pass", "hidden pass"],
            fast(),
            rng,
        )
        .unwrap();
        store.write_all(0, b"decoy contents", rng).unwrap();
        store.write_all(1, b"hidden contents", rng).unwrap();
        let blocks = store.into_blocks();
        let decoy = Store::open(blocks.clone(), "decoy pass", fast()).unwrap();
        assert_eq!(decoy.levels(), 1);
        assert_eq!(&decoy.read_all(0).unwrap()[..], b"decoy contents");
        assert!(decoy.read_all(1).is_err());
        let hidden = Store::open(blocks.clone(), "hidden pass", fast()).unwrap();
        assert_eq!(hidden.levels(), 2);
        assert_eq!(&hidden.read_all(0).unwrap()[..], b"decoy contents");
        assert_eq!(&hidden.read_all(1).unwrap()[..], b"hidden contents");
        match Store::open(blocks.clone(), "wrong pass", fast()) {
            Err(e) => assert!(e.to_string().contains("no compartment opens"), "{e}"),
            Ok(_) => panic!("a wrong passphrase opened"),
        }
        // The header copy at the end serves when the start is damaged.
        let mut damaged = blocks.clone();
        damaged.data[0] = [0; BLOCK_LEN];
        damaged.data[1] = [0; BLOCK_LEN];
        let again = Store::open(damaged, "hidden pass", fast()).unwrap();
        assert_eq!(&again.read_all(1).unwrap()[..], b"hidden contents");
    }

    #[test]
    fn writing_with_the_hidden_passphrase_never_touches_hidden_data() {
        let rng = &mut rand::rng();
        let store = Store::create(
            MemBlocks::new(300),
            &["decoy pass", "hidden pass"],
            fast(),
            rng,
        )
        .unwrap();
        let mut store = Store::open(store.into_blocks(), "hidden pass", fast()).unwrap();
        let hidden: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        store.write_all(1, &hidden, rng).unwrap();
        // Fill the decoy until the container is full.
        let mut n = 0;
        loop {
            let len = store.len(0).unwrap();
            match store.write(0, len, &payload(n as u8), rng) {
                Ok(()) => n += 1,
                Err(e) => {
                    assert!(e.to_string().contains("full"), "{e}");
                    break;
                }
            }
            if n % 16 == 0 {
                store.commit(rng).unwrap();
            }
        }
        assert!(n > 100, "{n}");
        let blocks = store.into_blocks();
        let reopened = Store::open(blocks, "hidden pass", fast()).unwrap();
        assert_eq!(&reopened.read_all(1).unwrap()[..], &hidden[..]);
    }

    #[test]
    fn decoy_only_writes_lose_hidden_data_only_as_errors() {
        let rng = &mut rand::rng();
        let store = Store::create(
            MemBlocks::new(2000),
            &["decoy pass", "hidden pass"],
            fast(),
            rng,
        )
        .unwrap();
        let mut store = Store::open(store.into_blocks(), "hidden pass", fast()).unwrap();
        for i in 0..20 {
            store.write(1, i, &payload(i as u8 + 1), rng).unwrap();
        }
        store.commit(rng).unwrap();
        let mut blocks = store.into_blocks();
        let mut survived = Vec::new();
        // Decoy-only writes of 50 blocks, then 300 more each round.
        for writes in [50, 300, 300, 300, 300, 300] {
            let mut decoy = Store::open(blocks, "decoy pass", fast()).unwrap();
            for _ in 0..writes {
                let len = decoy.len(0).unwrap();
                decoy.write(0, len, &payload(0xdd), rng).unwrap();
            }
            decoy.commit(rng).unwrap();
            blocks = decoy.into_blocks();
            // Every hidden block reads back right, or is an error.
            let mut ok = 0;
            if let Ok(hidden) = Store::open(blocks.clone(), "hidden pass", fast()) {
                for i in 0..20 {
                    if let Ok(p) = hidden.read(1, i) {
                        assert_eq!(&p[..], &payload(i as u8 + 1)[..]);
                        ok += 1;
                    }
                }
            }
            survived.push(ok);
        }
        eprintln!(
            "hidden blocks (of 20, 3 copies each) readable after decoy-only writes of 50, 350, 650, 950, 1250, 1550 blocks (of 1,994): {survived:?}"
        );
        // 50 decoy blocks in 1,994: each hidden block has three copies, so
        // losing one is about (50/1994)^3 per block: all survive.
        assert_eq!(survived[0], 20, "{survived:?}");
    }

    #[test]
    fn a_crash_at_any_write_leaves_the_old_or_the_new_state() {
        // A small container, so that new blocks would often land on the
        // committed generation's if they were not kept apart.
        let rng = &mut rand::rng();
        let store = Store::create(
            MemBlocks::new(96),
            &["decoy pass", "hidden pass"],
            fast(),
            rng,
        )
        .unwrap();
        let mut store = Store::open(store.into_blocks(), "hidden pass", fast()).unwrap();
        let old_decoy = vec![1u8; 40_000];
        store.write_all(0, &old_decoy, rng).unwrap();
        store.write_all(1, b"old hidden", rng).unwrap();
        let before = store.into_blocks();
        let new_decoy = vec![7u8; 45_000];
        for budget in 0..60 {
            let mut blocks = before.clone();
            blocks.budget = Some(budget);
            let mut store = Store::open(blocks, "hidden pass", fast()).unwrap();
            let _ = store
                .write_all(0, &new_decoy, rng)
                .and_then(|()| store.write_all(1, b"new hidden", rng));
            let mut blocks = store.into_blocks();
            blocks.budget = None;
            for phrase in ["decoy pass", "hidden pass"] {
                let reopened = Store::open(blocks.clone(), phrase, fast()).unwrap();
                let decoy = reopened.read_all(0).unwrap();
                assert!(
                    decoy[..] == old_decoy[..] || decoy[..] == new_decoy[..],
                    "budget {budget}"
                );
            }
            let reopened = Store::open(blocks, "hidden pass", fast()).unwrap();
            let hidden = reopened.read_all(1).unwrap();
            assert!(
                &hidden[..] == b"old hidden" || &hidden[..] == b"new hidden",
                "budget {budget}"
            );
        }
    }

    #[test]
    fn a_container_file_is_random_bytes_of_its_size_and_reopens() {
        let rng = &mut rand::rng();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("store");
        let mut seen = 0;
        let blocks = FileBlocks::create(&path, 100, rng, &mut |done, _| seen = done).unwrap();
        assert_eq!(seen, 100);
        assert!(
            FileBlocks::create(&path, 100, rng, &mut |_, _| {}).is_err(),
            "never overwritten"
        );
        let mut store = Store::create(blocks, &["a file passphrase"], fast(), rng).unwrap();
        store.write_all(0, b"MARKER-in-the-store", rng).unwrap();
        drop(store);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 100 * BLOCK_LEN);
        assert!(!bytes.windows(6).any(|w| w == b"MARKER"), "no plaintext");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let store = Store::open(
            FileBlocks::open(&path).unwrap(),
            "a file passphrase",
            fast(),
        )
        .unwrap();
        assert_eq!(&store.read_all(0).unwrap()[..], b"MARKER-in-the-store");
        assert!(FileBlocks::create(&tmp.path().join("small"), 10, rng, &mut |_, _| {}).is_err());
    }

    /// Pearson's chi-square of `bytes`' byte histogram against uniform.
    fn chi_square(bytes: &[u8]) -> f64 {
        let mut counts = [0u32; 256];
        for &b in bytes {
            counts[usize::from(b)] += 1;
        }
        let expected = bytes.len() as f64 / 256.0;
        counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum()
    }

    /// The two-sample Kolmogorov–Smirnov distance of `a` and `b`, and its
    /// critical value at α = 0.001.
    fn ks(a: &[f64], b: &[f64]) -> (f64, f64) {
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let cdf = |s: &[f64], x: f64| s.partition_point(|&v| v <= x) as f64 / s.len() as f64;
        let d = a
            .iter()
            .chain(&b)
            .map(|&x| (cdf(&a, x) - cdf(&b, x)).abs())
            .fold(0.0, f64::max);
        let (n, m) = (a.len() as f64, b.len() as f64);
        (d, 1.949 * ((n + m) / (n * m)).sqrt())
    }

    /// The best accuracy of one threshold on `a` (one class) against `b`.
    fn best_threshold(a: &[f64], b: &[f64]) -> f64 {
        let total = (a.len() + b.len()) as f64;
        a.iter()
            .chain(b)
            .map(|&t| {
                let below_a = a.iter().filter(|&&x| x <= t).count() as f64;
                let below_b = b.iter().filter(|&&x| x <= t).count() as f64;
                let right = (below_a + (b.len() as f64 - below_b))
                    .max(below_b + (a.len() as f64 - below_a));
                right / total
            })
            .fold(0.0, f64::max)
    }

    /// Containers with a decoy only and with a decoy and a hidden
    /// compartment (the same decoy contents) cannot be told apart from the
    /// blocks the decoy does not use, nor from the header: byte chi-square
    /// per block, its spread, and the best single-threshold classifier.
    #[test]
    fn a_hidden_compartment_cannot_be_told_from_random_blocks() {
        use rand::SeedableRng;
        let rng = &mut rand::rngs::StdRng::seed_from_u64(0xB457E7);
        let decoy: Vec<u8> = (0..40_000u32).map(|i| (i % 7) as u8).collect();
        let hidden: Vec<u8> = vec![b'h'; 60_000];
        let (mut mean_a, mut mean_b, mut head_a, mut head_b) = (vec![], vec![], vec![], vec![]);
        let (mut max_a, mut max_b) = (vec![], vec![]);
        for i in 0..24 {
            let with_hidden = i % 2 == 1;
            let blocks = MemBlocks::with_rng(256, rng);
            let phrases: &[&str] = if with_hidden {
                &["decoy pass", "hidden pass"]
            } else {
                &["decoy pass"]
            };
            let mut store = Store::create(blocks, phrases, fast(), rng).unwrap();
            store.write_all(0, &decoy, rng).unwrap();
            if with_hidden {
                store.write_all(1, &hidden, rng).unwrap();
            }
            let blocks = store.into_blocks();
            // What the owner of the decoy passphrase can see in use.
            let seen = Store::open(blocks.clone(), "decoy pass", fast()).unwrap();
            let used = seen.in_use();
            let stats: Vec<f64> = data_range(256)
                .filter(|b| !used.contains(b))
                .map(|b| chi_square(&blocks.data[b as usize]))
                .collect();
            let mean = stats.iter().sum::<f64>() / stats.len() as f64;
            let max = stats.iter().copied().fold(0.0, f64::max);
            let header: Vec<u8> = blocks.data[..HEADER_BLOCKS as usize].concat();
            let head = chi_square(&header);
            if with_hidden {
                mean_b.push(mean);
                max_b.push(max);
                head_b.push(head);
            } else {
                mean_a.push(mean);
                max_a.push(max);
                head_a.push(head);
            }
        }
        for (what, a, b) in [
            ("mean chi-square of unused blocks", &mean_a, &mean_b),
            ("largest chi-square of unused blocks", &max_a, &max_b),
            ("chi-square of the header", &head_a, &head_b),
        ] {
            let (d, critical) = ks(a, b);
            assert!(d < critical, "{what}: KS distance {d:.3} ≥ {critical:.3}");
            let accuracy = best_threshold(a, b);
            assert!(
                accuracy < 0.85,
                "{what}: a threshold tells them apart ({accuracy:.2})"
            );
        }
        // The battery has the power to see a leak: had one unused block of
        // each such container held plaintext, the largest chi-square would
        // tell them apart.
        let leaky: Vec<f64> = max_b
            .iter()
            .map(|m| m.max(chi_square(&hidden[..BLOCK_LEN])))
            .collect();
        let (d, critical) = ks(&max_a, &leaky);
        assert!(d >= critical, "the control leak went unseen ({d:.3})");
        // And random-looking at all: 255 ± a few standard errors.
        for m in mean_a.iter().chain(&mean_b) {
            assert!((240.0..270.0).contains(m), "{m}");
        }
    }

    #[test]
    fn a_compartment_is_added_above_the_open_ones() {
        let rng = &mut rand::rng();
        let mut store = Store::create(MemBlocks::new(256), &["decoy pass"], fast(), rng).unwrap();
        store.write_all(0, b"decoy", rng).unwrap();
        assert!(
            store.add_compartment("decoy pass", fast(), rng).is_err(),
            "in use"
        );
        assert_eq!(
            store.add_compartment("hidden pass", fast(), rng).unwrap(),
            1
        );
        store.write_all(1, b"hidden", rng).unwrap();
        assert_eq!(
            store.add_compartment("deeper pass", fast(), rng).unwrap(),
            2
        );
        store.write_all(2, b"deeper", rng).unwrap();
        let blocks = store.into_blocks();
        for (phrase, levels) in [("decoy pass", 1), ("hidden pass", 2), ("deeper pass", 3)] {
            let s = Store::open(blocks.clone(), phrase, fast()).unwrap();
            assert_eq!(s.levels(), levels);
            assert_eq!(&s.read_all(0).unwrap()[..], b"decoy");
            if levels > 1 {
                assert_eq!(&s.read_all(1).unwrap()[..], b"hidden");
            }
            if levels > 2 {
                assert_eq!(&s.read_all(2).unwrap()[..], b"deeper");
            }
        }
    }

    #[test]
    fn a_file_tree_round_trips_through_a_compartment_and_refuses_bad_bytes() {
        let rng = &mut rand::rng();
        let mut store = Store::create(
            MemBlocks::new(256),
            &["decoy pass", "hidden pass"],
            fast(),
            rng,
        )
        .unwrap();
        assert!(FileTree::load(&store, 1).unwrap().list("").is_empty());
        let mut tree = FileTree::default();
        tree.put("keys/device.key", &[1; 32]).unwrap();
        tree.put("contacts/bob.json", b"{}").unwrap();
        tree.put("contacts/held/x+bob.json", &vec![7; 10_000])
            .unwrap();
        tree.put("config.toml", b"").unwrap();
        for bad in [
            "",
            "/abs",
            "a//b",
            "../x",
            "a/./b",
            "a\nb",
            &"x".repeat(256),
        ] {
            assert!(tree.put(bad, b"x").is_err(), "{bad:?}");
        }
        tree.save(&mut store, 1, rng).unwrap();
        let reopened = Store::open(store.into_blocks(), "hidden pass", fast()).unwrap();
        let back = FileTree::load(&reopened, 1).unwrap();
        assert_eq!(
            back.list("contacts"),
            vec!["contacts/bob.json", "contacts/held/x+bob.json"]
        );
        assert_eq!(back.get("keys/device.key"), Some(&[1u8; 32][..]));
        assert_eq!(back.get("contacts/held/x+bob.json").unwrap().len(), 10_000);
        assert_eq!(back.get("config.toml"), Some(&b""[..]));
        assert!(FileTree::load(&reopened, 0).unwrap().list("").is_empty());
        // Every cut and every extension of a valid index is refused, and
        // so are blocks out of range or used twice.
        let entries = vec![
            IndexEntry {
                name: "a".into(),
                len: 5000,
                blocks: vec![3, 4],
            },
            IndexEntry {
                name: "b".into(),
                len: 0,
                blocks: vec![],
            },
        ];
        let bytes = encode_index(&entries);
        assert_eq!(decode_index(&bytes, 5, &[1]).unwrap(), entries);
        for cut in 0..bytes.len() {
            assert!(decode_index(&bytes[..cut], 5, &[1]).is_err(), "cut {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_index(&longer, 5, &[1]).is_err());
        assert!(decode_index(&bytes, 4, &[1]).is_err(), "block 4 of 4");
        assert!(decode_index(&bytes, 5, &[3]).is_err(), "the index's block");
        let mut twice = entries.clone();
        twice[1].name = "a".into();
        assert!(decode_index(&encode_index(&twice), 5, &[1]).is_err());
        let mut shared = entries.clone();
        shared[1] = IndexEntry {
            name: "c".into(),
            len: 1,
            blocks: vec![4],
        };
        assert!(decode_index(&encode_index(&shared), 5, &[1]).is_err());
        assert!(decode_index(&u32::MAX.to_be_bytes(), 5, &[]).is_err());
    }

    /// A change rewrites the blocks of the file that changed (and the
    /// index and head), not the other files, whatever their order; freed
    /// blocks are given back; the result reads back.
    #[test]
    fn a_change_rewrites_only_the_files_that_changed() {
        let rng = &mut rand::rng();
        let store = Store::create(MemBlocks::new(2048), &["one pass"], fast(), rng).unwrap();
        let mut store = Store::open(store.into_blocks(), "one pass", fast()).unwrap();
        let (mut tree, mut layout) = Layout::load(&store, 0).unwrap();
        let big = vec![9u8; 1 << 20];
        tree.put("a/small.json", b"{}").unwrap();
        tree.put("b/big.bin", &big).unwrap();
        let all = ["a/small.json".to_string(), "b/big.bin".to_string()]
            .into_iter()
            .collect();
        layout.save(&mut store, 0, &tree, &all, rng).unwrap();
        let used = store.in_use().len();
        let one = ["a/small.json".to_string()].into_iter().collect();
        for round in 0..5usize {
            // It grows by a block each round: a single stream would shift
            // the big file after it.
            tree.put("a/small.json", &vec![round as u8; 4100 * (round + 1)])
                .unwrap();
            let before = store.blocks.writes;
            layout.save(&mut store, 0, &tree, &one, rng).unwrap();
            let written = store.blocks.writes - before;
            // The file's blocks, the index, the head, the map, the
            // superblock: far fewer than the big file's 259 blocks.
            assert!(
                written <= round + 2 + 1 + 1 + 1 + 1 + 2,
                "{written} blocks written"
            );
        }
        tree.remove("a/small.json");
        layout.save(&mut store, 0, &tree, &one, rng).unwrap();
        assert!(store.in_use().len() <= used, "freed blocks are free again");
        let reopened = Store::open(store.into_blocks(), "one pass", fast()).unwrap();
        let back = FileTree::load(&reopened, 0).unwrap();
        assert_eq!(back.list(""), vec!["b/big.bin"]);
        assert_eq!(back.get("b/big.bin"), Some(&big[..]));
    }

    /// Copies of hidden blocks a decoy overwrote are given fresh copies
    /// when the hidden compartment is opened: damage does not pile up
    /// across decoy-only sessions.
    #[test]
    fn lost_copies_are_repaired_when_the_hidden_compartment_opens() {
        let rng = &mut rand::rng();
        let store = Store::create(
            MemBlocks::new(400),
            &["decoy pass", "hidden pass"],
            fast(),
            rng,
        )
        .unwrap();
        let mut hidden = Store::open(store.into_blocks(), "hidden pass", fast()).unwrap();
        for i in 0..10 {
            hidden.write(1, i, &payload(i as u8 + 1), rng).unwrap();
        }
        hidden.commit(rng).unwrap();
        assert_eq!(hidden.repair(1, rng).unwrap(), 0, "nothing to repair");
        // Damage one copy of each of blocks 0..5 by hand.
        let places: Vec<u64> = (0..5).map(|i| hidden.compartments[1].map[i][0]).collect();
        let mut blocks = hidden.into_blocks();
        for p in places {
            blocks.data[p as usize] = [0x55; BLOCK_LEN];
        }
        let mut hidden = Store::open(blocks, "hidden pass", fast()).unwrap();
        assert_eq!(hidden.repair(1, rng).unwrap(), 5);
        assert_eq!(hidden.repair(1, rng).unwrap(), 0, "all copies intact again");
        let hidden = Store::open(hidden.into_blocks(), "hidden pass", fast()).unwrap();
        for i in 0..10 {
            assert_eq!(&hidden.read(1, i).unwrap()[..], &payload(i as u8 + 1)[..]);
        }
    }

    /// Decoy-only writes land on a hidden compartment's superblock places;
    /// when the hidden compartment is open again, its commits skip those
    /// places: the decoy's data is never overwritten.
    #[test]
    fn hidden_superblocks_never_overwrite_decoy_data() {
        let rng = &mut rand::rng();
        let mut opened = 0;
        for _ in 0..30 {
            let store = Store::create(
                MemBlocks::new(160),
                &["decoy pass", "hidden pass"],
                fast(),
                rng,
            )
            .unwrap();
            let mut hidden = Store::open(store.into_blocks(), "hidden pass", fast()).unwrap();
            hidden.write(1, 0, &payload(1), rng).unwrap();
            hidden.commit(rng).unwrap();
            let mut decoy = Store::open(hidden.into_blocks(), "decoy pass", fast()).unwrap();
            for i in 0..60 {
                decoy.write(0, i, &payload(i as u8), rng).unwrap();
            }
            decoy.commit(rng).unwrap();
            let blocks = decoy.into_blocks();
            let Ok(mut hidden) = Store::open(blocks.clone(), "hidden pass", fast()) else {
                continue;
            };
            opened += 1;
            // Two commits: both superblock sets are written.
            for round in 0..2 {
                if hidden.write(1, 0, &payload(7 + round), rng).is_err()
                    || hidden.commit(rng).is_err()
                {
                    break;
                }
            }
            let decoy = Store::open(hidden.into_blocks(), "decoy pass", fast()).unwrap();
            for i in 0..60 {
                assert_eq!(&decoy.read(0, i).unwrap()[..], &payload(i as u8)[..]);
            }
        }
        assert!(opened > 0, "the hidden compartment never survived");
    }

    /// Random puts, removes and batches in a decoy, in a hidden
    /// compartment, in the decoy alone again (which may overwrite hidden
    /// blocks, its superblock places among them), then in the hidden one:
    /// after every step the decoy reopens with exactly its files, and the
    /// hidden one too while only it was written.
    #[test]
    fn random_changes_read_back_in_both_compartments() {
        use rand::RngExt;
        type Files = std::collections::BTreeMap<String, Vec<u8>>;
        let rng = &mut rand::rng();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("store");
        Vault::create(&path, 512, &["decoy pass 1"], &mut |_, _| {}).unwrap();
        let mut expected: Vec<Files> = vec![Files::new(), Files::new()];
        let check = |expected: &Files, phrase: &str| {
            let v = Vault::open(&path, phrase).unwrap();
            let names: Vec<&str> = v.tree.list("");
            let want: Vec<&str> = expected.keys().map(String::as_str).collect();
            assert_eq!(names, want, "{phrase}");
            for (n, c) in expected {
                assert_eq!(v.get(n), Some(&c[..]), "{phrase} {n}");
            }
        };
        for (phase, phrase, level) in [
            (0, "decoy pass 1", 0),
            (1, "hidden pass 2", 1),
            (2, "decoy pass 1", 0),
            (3, "hidden pass 2", 1),
        ] {
            if phase == 1 {
                Vault::add_compartment(&path, "decoy pass 1", "hidden pass 2").unwrap();
            }
            for _ in 0..12 {
                let Ok(mut v) = Vault::open(&path, phrase) else {
                    // Hidden data the decoy overwrote: an error, never
                    // wrong data (phase 3 only).
                    assert_eq!(phase, 3);
                    break;
                };
                let batch = rng.random_bool(0.3);
                if batch {
                    v.begin();
                }
                for _ in 0..rng.random_range(1..4) {
                    let name = format!("d{}/f{}", rng.random_range(0..3), rng.random_range(0..6));
                    if rng.random_bool(0.25) {
                        v.remove(&name).unwrap();
                        expected[level].remove(&name);
                    } else {
                        let len = rng.random_range(0..20_000);
                        let c: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                        v.put(&name, &c).unwrap();
                        expected[level].insert(name, c);
                    }
                }
                if batch {
                    v.end().unwrap();
                }
                drop(v);
                check(&expected[0], "decoy pass 1");
                if phase == 1 {
                    check(&expected[1], "hidden pass 2");
                }
            }
        }
    }

    /// A commit that fails (the container is full) changes nothing: the
    /// vault's files and the compartment are as committed before, and the
    /// next change works.
    #[test]
    fn a_failed_commit_is_undone() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("store");
        Vault::create(&path, 96, &["only pass 1"], &mut |_, _| {}).unwrap();
        let mut vault = Vault::open(&path, "only pass 1").unwrap();
        vault.put("kept", b"before").unwrap();
        let err = vault.put("huge", &vec![1u8; 400 * 1024]).unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        assert_eq!(vault.get("huge"), None);
        vault.begin();
        vault.put("kept", b"changed in a failing batch").unwrap();
        // In a batch nothing is written until its end, where it fails.
        vault.put("huge", &vec![1u8; 400 * 1024]).unwrap();
        assert!(vault.end().is_err());
        assert_eq!(vault.get("kept"), Some(&b"before"[..]));
        vault.put("small", b"fits").unwrap();
        drop(vault);
        let vault = Vault::open(&path, "only pass 1").unwrap();
        assert_eq!(vault.get("kept"), Some(&b"before"[..]));
        assert_eq!(vault.get("small"), Some(&b"fits"[..]));
        assert_eq!(vault.get("huge"), None);
    }

    #[test]
    fn blocks_cannot_be_moved_or_swapped() {
        let rng = &mut rand::rng();
        let mut store = Store::create(MemBlocks::new(128), &["only pass"], fast(), rng).unwrap();
        store.write(0, 0, &payload(1), rng).unwrap();
        store.write(0, 1, &payload(2), rng).unwrap();
        store.commit(rng).unwrap();
        let (a, b) = (
            store.compartments[0].map[0][0],
            store.compartments[0].map[1][0],
        );
        let mut blocks = store.into_blocks();
        blocks.data.swap(a as usize, b as usize);
        let store = Store::open(blocks, "only pass", fast()).unwrap();
        assert!(store.read(0, 0).is_err());
        assert!(store.read(0, 1).is_err());
    }
}
