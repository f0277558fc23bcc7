//! The client's data directory: keys, config, contacts, ratchet sessions,
//! the outbox and the held inbox. Either plain files (keys mode 0600), or,
//! when the directory holds a container (`store`, see [`crate::store`]),
//! files inside the compartment its passphrase opened: then nothing but the
//! container, the daemon's socket and the (empty) lock file is on disk.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bastet_directory::{read_key_file, write_key_file};
use bastet_sphinx::EnvelopeId;
use zeroize::Zeroizing;

use crate::config::ENV_PREFIX;
use crate::crypto::DeviceSecrets;
use crate::message::MAX_SEALED_LEN;
use crate::outbox::Outgoing;
use crate::store::Vault;
use crate::{ClientConfig, ClientKeys, Error, Result};

const IDENTITY_KEY: &str = "identity.key";
/// The identity's public key, on a device that joined an identity (and so
/// holds no `identity.key`).
const IDENTITY_PUB: &str = "identity.pub";
const ENCRYPTION_KEY: &str = "encryption.key";
const MAILBOX_KEY: &str = "mailbox.key";
const DEVICE_KEY: &str = "device.key";
const CONTENT_KEY: &str = "content.key";
const KEM_KEY: &str = "kem.key";
const CONFIG: &str = "client.toml";
/// The container file, when the data dir is encrypted.
pub const STORE_FILE: &str = "store";
/// Seqs already shown that are still on the server (see `InboxPlan`).
const SHOWN: &str = "inbox-shown";
/// Bound on `client.toml`.
const MAX_CONFIG_FILE: u64 = 1 << 20;
/// Bound on the shown-list file; a mailbox holds at most its quota anyway.
const MAX_SHOWN_FILE: u64 = 1 << 20;
/// Envelopes completed and shown, newest last (see `plan_inbox`).
const COMPLETED: &str = "inbox-envelopes";
/// Completed envelope ids remembered to recognise late retransmissions.
pub const MAX_COMPLETED_ENVELOPES: usize = 4096;
/// Outgoing messages: `<message id>.json` (state) and `.fragments` (bytes).
const OUTBOX: &str = "outbox";
/// Received messages the daemon holds for `bastet inbox`: `<ms>-<id>.json`.
const INBOX: &str = "inbox";
/// Bound on one received message's file (a 1 MiB file, base64, and JSON).
const MAX_INBOX_FILE: u64 = 2 << 20;
/// Most received messages held at once; past this the daemon stops taking
/// new ones off the server until `bastet inbox` makes room.
pub const MAX_HELD_MESSAGES: usize = 10_000;
/// Per-node loop reliability, as the daemon last saved it.
const SCORES: &str = "node-scores.json";
/// Held (advisory lock) by the one process driving the outbox.
const OUTBOX_LOCK: &str = "outbox.lock";
/// Bound on one outgoing message's files.
const MAX_OUTBOX_FILE: u64 = 4 * MAX_SEALED_LEN as u64;
/// Most outgoing messages read from the outbox at once.
pub(crate) const MAX_OUTBOX_MESSAGES: usize = 1000;

/// Exclusive use of the outbox while held: one process at a time sends,
/// retransmits and consumes acks. Released on drop or process exit.
#[derive(Debug)]
pub struct OutboxLock {
    _file: std::fs::File,
}

/// A client data directory.
#[derive(Clone)]
pub struct DataDir {
    root: PathBuf,
    /// The open compartment holding the files, if the data dir is a
    /// container.
    vault: Option<Arc<Shared>>,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("root", &self.root)
            .field("encrypted", &self.vault.is_some())
            .finish()
    }
}

impl DataDir {
    /// The data directory at `root`, plain files (nothing is read or
    /// created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir {
            root: root.into(),
            vault: None,
        }
    }

    /// The data directory at `root` whose files live in `vault` (the
    /// compartment a passphrase opened in `root/store`).
    pub fn with_vault(root: impl Into<PathBuf>, vault: Vault) -> Self {
        DataDir {
            root: root.into(),
            vault: Some(Arc::new(Shared {
                vault: Mutex::new(vault),
                batch_ended: std::sync::Condvar::new(),
            })),
        }
    }

    /// The container file of the data dir at `root`, if it has one.
    pub fn store_file(root: &Path) -> Option<PathBuf> {
        let path = root.join(STORE_FILE);
        path.exists().then_some(path)
    }

    /// Whether the files live in an encrypted container.
    pub fn is_encrypted(&self) -> bool {
        self.vault.is_some()
    }

    /// The container's size and the bytes its open compartments use.
    pub fn store_usage(&self) -> Option<(u64, u64)> {
        self.vault.as_ref().map(|v| lock_vault(v).usage())
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Path of `client.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    /// Creates the directory (mode 0700) for a new client, refusing if one
    /// is already there.
    pub fn create(&self) -> Result<()> {
        for existing in [IDENTITY_KEY, IDENTITY_PUB, CONFIG] {
            let path = self.root.join(existing);
            if self.exists(&path) {
                return Err(Error::AlreadyInitialised(path));
            }
        }
        if self.vault.is_some() {
            return Ok(());
        }
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| self.file_error(&self.root, e))
    }

    /// Writes the key files (hex, mode 0600).
    pub fn save_keys(&self, keys: &ClientKeys) -> Result<()> {
        match keys.identity_secret() {
            Some(secret) => self.write_key(&self.root.join(IDENTITY_KEY), &secret)?,
            None => self.write_key(&self.root.join(IDENTITY_PUB), &keys.identity_public())?,
        }
        self.write_key(&self.root.join(ENCRYPTION_KEY), &keys.encryption_secret())?;
        self.write_key(&self.root.join(MAILBOX_KEY), &keys.mailbox_secret())?;
        self.save_device_secrets(&keys.device_secrets())
    }

    fn save_device_secrets(&self, device: &DeviceSecrets) -> Result<()> {
        self.write_key(&self.root.join(DEVICE_KEY), &device.device)?;
        self.write_key(&self.root.join(CONTENT_KEY), &device.content)?;
        self.write_key(&self.root.join(KEM_KEY), &device.kem)?;
        Ok(())
    }

    /// Reads the keys [`DataDir::save_keys`] wrote. A data dir made before
    /// device keys existed gets fresh ones (saved before they are used).
    pub fn load_keys(&self) -> Result<ClientKeys> {
        self.ensure_initialised()?;
        let identity_path = self.root.join(IDENTITY_KEY);
        let pub_path = self.root.join(IDENTITY_PUB);
        if self.exists(&identity_path) && self.exists(&pub_path) {
            let secret = self.read_key(&identity_path)?;
            let public = self.read_key(&pub_path)?;
            if crate::crypto::ed25519_public(&secret) == *public {
                // An identity key import that stopped before deleting
                // identity.pub: finish it.
                self.remove_file(&pub_path)?;
            } else {
                // A join that stopped between writing identity.pub and
                // deleting the old identity key: finish it.
                self.remove_file(&identity_path)?;
            }
        }
        let mut identity = if self.exists(&identity_path) {
            Some(self.read_key(&identity_path)?)
        } else {
            None
        };
        // A `device join` that stopped after the joined identity's chain
        // was written and before the old identity key was deleted: finish.
        if let Some(secret) = &identity
            && let Some(joined) = self.joined_identity(secret)?
        {
            self.write_key(&self.root.join(IDENTITY_PUB), &joined)?;
            self.remove_file(&identity_path)?;
            identity = None;
        }
        let encryption = self.read_key(&self.root.join(ENCRYPTION_KEY))?;
        let mailbox = self.read_key(&self.root.join(MAILBOX_KEY))?;
        let device = if self.exists(&self.root.join(DEVICE_KEY)) {
            DeviceSecrets {
                device: self.read_key(&self.root.join(DEVICE_KEY))?,
                content: self.read_key(&self.root.join(CONTENT_KEY))?,
                kem: self.read_key(&self.root.join(KEM_KEY))?,
            }
        } else {
            let fresh = DeviceSecrets::generate(&mut rand::rng());
            self.save_device_secrets(&fresh)?;
            tracing::info!("created device keys for a data dir made by an older bastet");
            fresh
        };
        Ok(match identity {
            Some(identity) => ClientKeys::from_secrets(&identity, &encryption, &mailbox, &device),
            None => {
                let public = self.read_key(&self.root.join(IDENTITY_PUB))?;
                ClientKeys::from_device_secrets(*public, &encryption, &mailbox, &device)
            }
        })
    }

    /// Makes this device hold its identity's key `secret` (from an export):
    /// it must be the key of the identity this device belongs to. Returns
    /// the keys as they now are.
    pub fn import_identity_key(&self, keys: &ClientKeys, secret: &[u8; 32]) -> Result<ClientKeys> {
        if crate::crypto::ed25519_public(secret) != keys.identity_public() {
            return Err(Error::Contact(
                "this identity key is not the key of this device's identity".into(),
            ));
        }
        self.write_key(&self.root.join(IDENTITY_KEY), secret)?;
        self.remove_file(&self.root.join(IDENTITY_PUB))?;
        self.load_keys()
    }

    /// The identity of the chain in `contacts/chain` if it is not the one
    /// `identity_secret` is the key of.
    fn joined_identity(&self, identity_secret: &[u8; 32]) -> Result<Option<[u8; 32]>> {
        let path = self.root.join("contacts").join("chain");
        let Some(bytes) = self.read_bounded(&path, crate::identity::MAX_CHAIN_LEN as u64)? else {
            return Ok(None);
        };
        let own = ClientKeys::from_secrets(
            identity_secret,
            &[1; 32],
            &[1; 32],
            &DeviceSecrets {
                device: zeroize::Zeroizing::new([1; 32]),
                content: zeroize::Zeroizing::new([1; 32]),
                kem: zeroize::Zeroizing::new([1; 32]),
            },
        )
        .identity_public();
        let chain = crate::identity::Chain::from_bytes(&bytes, None).map_err(|e| Error::File {
            path: path.clone(),
            why: e.to_string(),
        })?;
        Ok((chain.identity() != &own).then_some(*chain.identity()))
    }

    /// Makes this data dir a device of the identity `identity_public`: its
    /// own identity key (if any) is deleted for good. Returns the keys as
    /// they now are.
    pub fn join_identity(
        &self,
        keys: &ClientKeys,
        identity_public: [u8; 32],
    ) -> Result<ClientKeys> {
        let joined = keys.joined(identity_public);
        self.write_key(&self.root.join(IDENTITY_PUB), &identity_public)?;
        self.remove_file(&self.root.join(IDENTITY_KEY))?;
        Ok(joined)
    }

    /// Writes `client.toml`, with comments.
    pub fn save_config(&self, config: &ClientConfig) -> Result<()> {
        self.write_atomic(&self.config_path(), config.to_commented_toml()?.as_bytes())
    }

    /// The text of `client.toml`.
    pub fn config_text(&self) -> Result<String> {
        self.ensure_initialised()?;
        let path = self.config_path();
        let bytes = self
            .read_bounded(&path, MAX_CONFIG_FILE)?
            .ok_or_else(|| Error::NotInitialised(self.root.clone()))?;
        String::from_utf8(bytes).map_err(|_| Error::File {
            path,
            why: "not UTF-8".into(),
        })
    }

    /// Replaces `client.toml` with `text` once it parses and validates.
    pub fn replace_config(&self, text: &str) -> Result<ClientConfig> {
        self.ensure_initialised()?;
        let config = self.parse_config(text)?;
        self.write_atomic(&self.config_path(), text.as_bytes())?;
        Ok(config)
    }

    fn parse_config(&self, text: &str) -> Result<ClientConfig> {
        let config: ClientConfig =
            bastet_directory::parse_config(text, &self.config_path(), ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads and validates `client.toml` (environment overrides
    /// `BASTET_CLIENT__KEY`).
    pub fn load_config(&self) -> Result<ClientConfig> {
        let text = self.config_text()?;
        self.parse_config(&text)
    }

    /// Seqs shown by earlier `inbox` calls that are still on the server.
    pub fn load_shown(&self) -> Result<BTreeSet<u64>> {
        let path = self.root.join(SHOWN);
        let Some(bytes) = self.read_bounded(&path, MAX_SHOWN_FILE)? else {
            return Ok(BTreeSet::new());
        };
        let text = String::from_utf8(bytes).map_err(|_| Error::File {
            path: path.clone(),
            why: "not text; delete the file".into(),
        })?;
        text.split_whitespace()
            .map(|s| {
                s.parse().map_err(|_| Error::File {
                    path: path.clone(),
                    why: format!("{s:?} is not a sequence number; delete the file"),
                })
            })
            .collect()
    }

    /// Replaces the shown list (atomically: write then rename).
    pub fn save_shown(&self, shown: &BTreeSet<u64>) -> Result<()> {
        let path = self.root.join(SHOWN);
        if shown.is_empty() {
            return self.remove_file(&path).map(|_| ());
        }
        let text: String = shown.iter().map(|s| format!("{s}\n")).collect();
        self.write_atomic(&path, text.as_bytes())
    }

    /// Envelope ids of messages completed and shown, oldest first.
    pub fn load_completed(&self) -> Result<VecDeque<EnvelopeId>> {
        let path = self.root.join(COMPLETED);
        let text = self
            .read_bounded(&path, MAX_SHOWN_FILE)?
            .unwrap_or_default();
        let text = String::from_utf8(text).map_err(|_| Error::File {
            path: path.clone(),
            why: "not text; delete the file".into(),
        })?;
        text.split_whitespace()
            .map(|s| {
                let mut id = [0u8; 16];
                hex::decode_to_slice(s, &mut id)
                    .map(|()| EnvelopeId(id))
                    .map_err(|_| Error::File {
                        path: path.clone(),
                        why: format!("{s:?} is not an envelope id; delete the file"),
                    })
            })
            .collect()
    }

    /// Adds `new` to the completed envelopes, keeping the newest
    /// [`MAX_COMPLETED_ENVELOPES`].
    pub fn add_completed(&self, new: &[EnvelopeId]) -> Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let mut all = self.load_completed()?;
        let known: HashSet<EnvelopeId> = all.iter().copied().collect();
        all.extend(new.iter().filter(|e| !known.contains(e)));
        while all.len() > MAX_COMPLETED_ENVELOPES {
            all.pop_front();
        }
        let text: String = all
            .iter()
            .map(|e| format!("{}\n", hex::encode(e.0)))
            .collect();
        self.write_atomic(&self.root.join(COMPLETED), text.as_bytes())
    }

    /// Takes the outbox lock if no other process holds it.
    pub fn try_lock_outbox(&self) -> Result<Option<OutboxLock>> {
        let path = self.root.join(OUTBOX_LOCK);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| self.file_error(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(OutboxLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(self.file_error(&path, e)),
        }
    }

    /// Saves an outgoing message's state (atomically, mode 0600: it holds
    /// SURB keys).
    pub fn save_outgoing(&self, m: &Outgoing) -> Result<()> {
        let dir = self.outbox_dir()?;
        let json = serde_json::to_vec(m).map_err(|e| Error::File {
            path: dir.clone(),
            why: e.to_string(),
        })?;
        self.write_atomic(&dir.join(format!("{}.json", m.message_id)), &json)
    }

    /// Saves an outgoing message's fragments: `len (u32 BE) || bytes` each.
    pub fn save_fragments(&self, message_id: &str, fragments: &[Vec<u8>]) -> Result<()> {
        let dir = self.outbox_dir()?;
        let mut bytes = Vec::new();
        for f in fragments {
            bytes.extend_from_slice(&(f.len() as u32).to_be_bytes());
            bytes.extend_from_slice(f);
        }
        self.write_atomic(&dir.join(format!("{message_id}.fragments")), &bytes)
    }

    /// Reads [`DataDir::save_fragments`].
    pub fn load_fragments(&self, message_id: &str) -> Result<Vec<Vec<u8>>> {
        let path = self
            .root
            .join(OUTBOX)
            .join(format!("{message_id}.fragments"));
        let bytes = self
            .read_bounded(&path, MAX_OUTBOX_FILE)?
            .ok_or_else(|| Error::File {
                path: path.clone(),
                why: "missing".into(),
            })?;
        let mut rest = &bytes[..];
        let mut out = Vec::new();
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_be_bytes(*len) as usize;
            if tail.len() < len {
                break;
            }
            let (f, tail) = tail.split_at(len);
            out.push(f.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(Error::File {
                path,
                why: "truncated; the message cannot be resent".into(),
            });
        }
        Ok(out)
    }

    /// Every outgoing message in the outbox, oldest first.
    pub fn load_outbox(&self) -> Result<Vec<Outgoing>> {
        let dir = self.root.join(OUTBOX);
        let mut out = Vec::new();
        for name in self.list_files(&dir, 2 * MAX_OUTBOX_MESSAGES)? {
            if !name.ends_with(".json") {
                continue;
            }
            let path = dir.join(name);
            let Some(bytes) = self.read_bounded(&path, MAX_OUTBOX_FILE)? else {
                continue;
            };
            let m: Outgoing = serde_json::from_slice(&bytes).map_err(|e| Error::File {
                path: path.clone(),
                why: format!("{e}; delete it and its .fragments file"),
            })?;
            out.push(m);
        }
        out.sort_by_key(|m| m.created_at_ms);
        out.truncate(MAX_OUTBOX_MESSAGES);
        Ok(out)
    }

    /// Saves a received message for `bastet inbox` (atomically, mode 0600)
    /// under a name that sorts by arrival.
    pub fn save_received(&self, m: &crate::daemon::api::WireReceived) -> Result<()> {
        let dir = self.sub_dir(INBOX)?;
        let json = serde_json::to_vec(m).map_err(|e| Error::File {
            path: dir.clone(),
            why: e.to_string(),
        })?;
        let name = format!("{:016}-{}.json", m.received_at_ms, m.message_id);
        self.write_atomic(&dir.join(name), &json)
    }

    /// The received messages held, oldest first, as (file name, message).
    pub fn load_received(&self) -> Result<Vec<(String, crate::daemon::api::WireReceived)>> {
        let dir = self.root.join(INBOX);
        let mut names: Vec<String> = self
            .list_files(&dir, 2 * MAX_HELD_MESSAGES)?
            .into_iter()
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let path = dir.join(&name);
            let Some(bytes) = self.read_bounded(&path, MAX_INBOX_FILE)? else {
                continue;
            };
            let m = serde_json::from_slice(&bytes).map_err(|e| Error::File {
                path: path.clone(),
                why: format!("{e}: not a received message"),
            })?;
            out.push((name, m));
        }
        Ok(out)
    }

    /// Forgets a received message once shown.
    pub fn remove_received(&self, name: &str) -> Result<()> {
        if name.contains('/') || !name.ends_with(".json") {
            return Err(Error::Config(format!("{name:?} is not a held message")));
        }
        self.remove_file(&self.root.join(INBOX).join(name))
            .map(|_| ())
    }

    /// Saves the node scores (JSON).
    pub fn save_scores(&self, json: &[u8]) -> Result<()> {
        self.write_atomic(&self.root.join(SCORES), json)
    }

    /// The node scores saved last, if any (bounded).
    pub fn load_scores(&self) -> Result<Option<(PathBuf, Vec<u8>)>> {
        let path = self.root.join(SCORES);
        Ok(self.read_bounded(&path, 4 << 20)?.map(|b| (path, b)))
    }

    fn sub_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        self.create_dir(&dir)?;
        Ok(dir)
    }

    /// Removes an outgoing message's files (once stored or failed).
    pub fn remove_outgoing(&self, message_id: &str) -> Result<()> {
        let dir = self.root.join(OUTBOX);
        self.batch(|| {
            for ext in ["json", "fragments"] {
                self.remove_file(&dir.join(format!("{message_id}.{ext}")))?;
            }
            Ok(())
        })
    }

    fn outbox_dir(&self) -> Result<PathBuf> {
        self.sub_dir(OUTBOX)
    }

    /// Writes `bytes` to a temporary file (mode 0600), syncs it and renames
    /// it over `path`.
    pub(crate) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        if let Some(vault) = &self.vault {
            let name = self.name_in_store(path)?;
            return lock_vault(vault)
                .put(&name, bytes)
                .map_err(|e| self.store_error(path, e));
        }
        use std::os::unix::fs::OpenOptionsExt;
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.file_error(&tmp, e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| self.file_error(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| self.file_error(path, e))
    }

    /// The file's bytes, `None` if it does not exist, an error beyond `max`.
    pub(crate) fn read_bounded(&self, path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
        if let Some(vault) = &self.vault {
            let name = self.name_in_store(path)?;
            let vault = lock_vault(vault);
            return match vault.get(&name) {
                None => Ok(None),
                Some(bytes) if bytes.len() as u64 > max => Err(Error::File {
                    path: path.to_path_buf(),
                    why: format!("larger than {max} bytes; delete it"),
                }),
                Some(bytes) => Ok(Some(bytes.to_vec())),
            };
        }
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.file_error(path, e)),
            Ok(meta) if meta.len() > max => Err(Error::File {
                path: path.to_path_buf(),
                why: format!("larger than {max} bytes; delete it"),
            }),
            Ok(_) => std::fs::read(path)
                .map(Some)
                .map_err(|e| self.file_error(path, e)),
        }
    }

    /// Removes a file; whether it was there.
    pub(crate) fn remove_file(&self, path: &Path) -> Result<bool> {
        if let Some(vault) = &self.vault {
            let name = self.name_in_store(path)?;
            return lock_vault(vault)
                .remove(&name)
                .map_err(|e| self.store_error(path, e));
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.file_error(path, e)),
        }
    }

    /// Renames a file (replacing `to`); whether `from` was there.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> Result<bool> {
        if let Some(vault) = &self.vault {
            let (a, b) = (self.name_in_store(from)?, self.name_in_store(to)?);
            return lock_vault(vault)
                .rename(&a, &b)
                .map_err(|e| self.store_error(from, e));
        }
        match std::fs::rename(from, to) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.file_error(from, e)),
        }
    }

    /// Whether a file is there.
    pub(crate) fn exists(&self, path: &Path) -> bool {
        match &self.vault {
            Some(vault) => self
                .name_in_store(path)
                .is_ok_and(|name| lock_vault(vault).get(&name).is_some()),
            None => path.exists(),
        }
    }

    /// Makes directory `dir` (mode 0700) and its parents; nothing to do in
    /// a container, where directories are parts of file names.
    pub(crate) fn create_dir(&self, dir: &Path) -> Result<()> {
        if self.vault.is_some() {
            return Ok(());
        }
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| self.file_error(dir, e))
    }

    /// The names of the files directly in `dir` (none if it does not
    /// exist), at most `max` of them, in no set order.
    pub(crate) fn list_files(&self, dir: &Path, max: usize) -> Result<Vec<String>> {
        if let Some(vault) = &self.vault {
            let name = self.name_in_store(dir)?;
            let mut names = lock_vault(vault).list_dir(&name);
            names.truncate(max);
            return Ok(names);
        }
        let entries = match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.file_error(dir, e)),
            Ok(entries) => entries,
        };
        let mut names = Vec::new();
        for entry in entries {
            if names.len() >= max {
                break;
            }
            let entry = entry.map_err(|e| self.file_error(dir, e))?;
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if let (true, Some(name)) = (is_file, entry.file_name().to_str()) {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    /// Writes a 32-byte key (hex, mode 0600 when a plain file).
    pub(crate) fn write_key(&self, path: &Path, key: &[u8; 32]) -> Result<()> {
        if self.vault.is_none() {
            return Ok(write_key_file(path, key)?);
        }
        let text = Zeroizing::new(format!("{}\n", hex::encode(key)));
        self.write_atomic(path, text.as_bytes())
    }

    /// Reads a key [`DataDir::write_key`] wrote.
    pub(crate) fn read_key(&self, path: &Path) -> Result<Zeroizing<[u8; 32]>> {
        if self.vault.is_none() {
            return Ok(read_key_file(path)?);
        }
        let text = Zeroizing::new(self.read_bounded(path, 256)?.ok_or_else(|| Error::File {
            path: path.to_path_buf(),
            why: "missing".into(),
        })?);
        let mut key = Zeroizing::new([0u8; 32]);
        let hex_text = std::str::from_utf8(&text).map(str::trim).unwrap_or("");
        hex::decode_to_slice(hex_text, key.as_mut()).map_err(|_| Error::File {
            path: path.to_path_buf(),
            why: "expected 64 hex digits".into(),
        })?;
        Ok(key)
    }

    /// Runs `work`; in a container, its changes are committed together at
    /// the end (all or none, even across a crash), and undone if it fails.
    /// Plain files are written one by one as `work` goes.
    pub(crate) fn batch<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let Some(vault) = &self.vault else {
            return work();
        };
        lock_vault(vault).begin();
        // Ends the batch even if `work` panics (undone then), so that the
        // vault never stays in a batch nobody will end.
        struct Ender<'a>(&'a Shared, bool);
        impl Drop for Ender<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    let _ = lock_vault(self.0).end_with(Err(Error::Store("undone".into())));
                    self.0.batch_ended.notify_all();
                }
            }
        }
        let mut ender = Ender(vault, false);
        let result = work();
        ender.1 = true;
        let mut v = lock_vault(vault);
        let ended = match result {
            Ok(value) => v
                .end()
                .map(|()| value)
                .map_err(|e| self.store_error(v.path(), e)),
            Err(e) => {
                let _ = v.end_with(Err(Error::Store("undone".into())));
                Err(e)
            }
        };
        drop(v);
        vault.batch_ended.notify_all();
        ended
    }

    /// A path under the data dir as a file name in the container.
    fn name_in_store(&self, path: &Path) -> Result<String> {
        let rel = path.strip_prefix(&self.root).map_err(|_| Error::File {
            path: path.to_path_buf(),
            why: "not in the data dir".into(),
        })?;
        let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
        parts.map(|p| p.join("/")).ok_or_else(|| Error::File {
            path: path.to_path_buf(),
            why: "not UTF-8: not a name in the store".into(),
        })
    }

    fn store_error(&self, path: &Path, e: Error) -> Error {
        Error::File {
            path: path.to_path_buf(),
            why: e.to_string(),
        }
    }

    fn ensure_initialised(&self) -> Result<()> {
        if self.exists(&self.config_path())
            && (self.exists(&self.root.join(IDENTITY_KEY))
                || self.exists(&self.root.join(IDENTITY_PUB)))
        {
            Ok(())
        } else {
            Err(Error::NotInitialised(self.root.clone()))
        }
    }

    pub(crate) fn file_error(&self, path: &Path, e: std::io::Error) -> Error {
        Error::File {
            path: path.to_path_buf(),
            why: e.to_string(),
        }
    }
}

/// The vault of an encrypted data dir, shared by the threads of a process
/// (the daemon's engine and its saver).
struct Shared {
    vault: Mutex<Vault>,
    /// Signalled when a batch ends.
    batch_ended: std::sync::Condvar,
}

/// The vault, once no other thread's batch is open (a batch commits
/// exactly its own thread's changes), even if a thread panicked holding
/// it (every change it made was committed or undone).
fn lock_vault(shared: &Shared) -> std::sync::MutexGuard<'_, Vault> {
    let mut guard = shared
        .vault
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    while guard.busy_for_others() {
        guard = shared
            .batch_ended
            .wait(guard)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_a_second_init_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("client"));
        assert!(matches!(dir.load_keys(), Err(Error::NotInitialised(_))));
        let err = dir.load_config().unwrap_err();
        assert!(err.to_string().contains("bastet init"), "{err}");
        dir.create().unwrap();
        let keys = ClientKeys::generate(&mut rand::rng());
        dir.save_keys(&keys).unwrap();
        std::fs::write(dir.config_path(), "placeholder").unwrap();
        let loaded = dir.load_keys().unwrap();
        assert_eq!(loaded.identity_public(), keys.identity_public());
        assert_eq!(loaded.encryption_public(), keys.encryption_public());
        assert_eq!(loaded.mailbox_id(), keys.mailbox_id());
        assert!(matches!(dir.create(), Err(Error::AlreadyInitialised(_))));

        use std::os::unix::fs::PermissionsExt;
        for f in [IDENTITY_KEY, ENCRYPTION_KEY, MAILBOX_KEY] {
            let mode = std::fs::metadata(tmp.path().join("client").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        // Joining another identity deletes the identity key for good.
        let joined = dir.join_identity(&loaded, [4; 32]).unwrap();
        assert!(!joined.has_identity_key());
        assert!(!tmp.path().join("client").join(IDENTITY_KEY).exists());
        let again = dir.load_keys().unwrap();
        assert_eq!(again.identity_public(), [4; 32]);
        assert!(!again.has_identity_key());
        assert_eq!(again.device_public(), keys.device_public());
        // A join interrupted before the old key was deleted is finished.
        write_key_file(
            &tmp.path().join("client").join(IDENTITY_KEY),
            &keys.identity_secret().unwrap(),
        )
        .unwrap();
        let again = dir.load_keys().unwrap();
        assert_eq!(again.identity_public(), [4; 32]);
        assert!(!tmp.path().join("client").join(IDENTITY_KEY).exists());
        // An imported identity key must be this identity's; once imported
        // the device holds it, and an import interrupted before
        // identity.pub was deleted is finished.
        let other = ClientKeys::generate(&mut rand::rng());
        let joined = dir.load_keys().unwrap();
        assert!(
            dir.import_identity_key(&joined, &other.identity_secret().unwrap())
                .is_err()
        );
        let owner = ClientKeys::generate(&mut rand::rng());
        let member = dir.join_identity(&joined, owner.identity_public()).unwrap();
        let holding = dir
            .import_identity_key(&member, &owner.identity_secret().unwrap())
            .unwrap();
        assert!(holding.has_identity_key());
        assert_eq!(holding.identity_public(), owner.identity_public());
        assert!(!tmp.path().join("client").join(IDENTITY_PUB).exists());
        write_key_file(
            &tmp.path().join("client").join(IDENTITY_PUB),
            &owner.identity_public(),
        )
        .unwrap();
        let again = dir.load_keys().unwrap();
        assert!(again.has_identity_key());
        assert!(!tmp.path().join("client").join(IDENTITY_PUB).exists());
    }

    #[test]
    fn shown_list_round_trips_and_empties() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        assert!(dir.load_shown().unwrap().is_empty());
        let set = BTreeSet::from([3, 9, 12]);
        dir.save_shown(&set).unwrap();
        assert_eq!(dir.load_shown().unwrap(), set);
        dir.save_shown(&BTreeSet::new()).unwrap();
        assert!(dir.load_shown().unwrap().is_empty());
        std::fs::write(tmp.path().join(SHOWN), "x\n").unwrap();
        assert!(dir.load_shown().is_err());
    }

    #[test]
    fn outgoing_messages_persist_and_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        assert!(dir.load_outbox().unwrap().is_empty());
        let m = Outgoing::new(
            "aa".into(),
            "bastet1x".into(),
            2,
            5,
            std::time::Duration::from_secs(9),
        );
        let frags = vec![vec![1u8; 1617], vec![2u8; 3]];
        dir.save_fragments("aa", &frags).unwrap();
        dir.save_outgoing(&m).unwrap();
        let older = Outgoing::new(
            "bb".into(),
            "bastet1y".into(),
            1,
            1,
            std::time::Duration::from_secs(9),
        );
        dir.save_outgoing(&older).unwrap();
        let loaded = dir.load_outbox().unwrap();
        assert_eq!(loaded, vec![older, m]);
        assert_eq!(dir.load_fragments("aa").unwrap(), frags);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join(OUTBOX).join("aa.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        dir.remove_outgoing("aa").unwrap();
        assert!(dir.load_fragments("aa").is_err());
        assert_eq!(dir.load_outbox().unwrap().len(), 1);
    }

    #[test]
    fn the_outbox_lock_is_exclusive_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let held = dir.try_lock_outbox().unwrap();
        assert!(held.is_some());
        assert!(dir.try_lock_outbox().unwrap().is_none());
        drop(held);
        assert!(dir.try_lock_outbox().unwrap().is_some());
    }

    #[test]
    fn completed_envelopes_are_bounded_newest_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        assert!(dir.load_completed().unwrap().is_empty());
        let ids: Vec<EnvelopeId> = (0..MAX_COMPLETED_ENVELOPES as u32 + 3)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_be_bytes());
                EnvelopeId(id)
            })
            .collect();
        dir.add_completed(&ids[..2]).unwrap();
        dir.add_completed(&ids[..2]).unwrap();
        assert_eq!(dir.load_completed().unwrap().len(), 2);
        dir.add_completed(&ids).unwrap();
        let got = dir.load_completed().unwrap();
        assert_eq!(got.len(), MAX_COMPLETED_ENVELOPES);
        assert_eq!(got.back(), ids.last());
        assert_eq!(got.front(), Some(&ids[3]));
    }

    /// An encrypted data dir: keys, the outbox, the shown list and the
    /// completed envelopes round-trip through the container across a
    /// reopen; nothing but the container is written to the directory; the
    /// decoy compartment sees none of it; a failed batch is undone whole.
    #[test]
    fn an_encrypted_data_dir_keeps_everything_in_the_container() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("client");
        std::fs::create_dir(&root).unwrap();
        let store = root.join(STORE_FILE);
        Vault::create(&store, 256, &["decoy phrase 1"], &mut |_, _| {}).unwrap();
        Vault::add_compartment(&store, "decoy phrase 1", "hidden phrase 2").unwrap();
        let keys = ClientKeys::generate(&mut rand::rng());
        let m = Outgoing::new(
            "aa".into(),
            "bastet1x".into(),
            2,
            5,
            std::time::Duration::from_secs(9),
        );
        let frags = vec![vec![7u8; 5000], vec![8u8; 3]];
        {
            let dir = DataDir::with_vault(&root, Vault::open(&store, "hidden phrase 2").unwrap());
            assert!(dir.is_encrypted());
            // A second opener is refused while this one holds the file.
            let again = Vault::open(&store, "hidden phrase 2");
            assert!(again.is_err_and(|e| e.to_string().contains("another process")));
            dir.create().unwrap();
            dir.save_keys(&keys).unwrap();
            dir.write_atomic(&dir.config_path(), b"placeholder")
                .unwrap();
            dir.save_fragments("aa", &frags).unwrap();
            dir.save_outgoing(&m).unwrap();
            dir.save_shown(&BTreeSet::from([4, 5])).unwrap();
            // A batch that fails leaves nothing of itself.
            let failed: Result<()> = dir.batch(|| {
                dir.save_shown(&BTreeSet::from([6]))?;
                dir.remove_outgoing("aa")?;
                Err(Error::Config("stop".into()))
            });
            assert!(failed.is_err());
            assert_eq!(dir.load_shown().unwrap(), BTreeSet::from([4, 5]));
            assert_eq!(dir.load_outbox().unwrap().len(), 1);
            assert!(matches!(dir.create(), Err(Error::AlreadyInitialised(_))));
        }
        let names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, vec![STORE_FILE.to_string()]);

        let dir = DataDir::with_vault(&root, Vault::open(&store, "hidden phrase 2").unwrap());
        let loaded = dir.load_keys().unwrap();
        assert_eq!(loaded.identity_public(), keys.identity_public());
        assert_eq!(loaded.device_public(), keys.device_public());
        assert_eq!(dir.load_outbox().unwrap(), vec![m]);
        assert_eq!(dir.load_fragments("aa").unwrap(), frags);
        assert_eq!(dir.load_shown().unwrap(), BTreeSet::from([4, 5]));
        dir.remove_outgoing("aa").unwrap();
        assert!(dir.load_outbox().unwrap().is_empty());
        drop(dir);

        let decoy = DataDir::with_vault(&root, Vault::open(&store, "decoy phrase 1").unwrap());
        assert!(matches!(decoy.load_keys(), Err(Error::NotInitialised(_))));
        assert!(decoy.load_outbox().unwrap().is_empty());
    }

    /// Another thread's write waits for an open batch to end and is
    /// committed on its own: a failing batch undoes only its own changes;
    /// a batch whose work panics is undone and the vault stays usable.
    #[test]
    fn batches_of_two_threads_do_not_mix() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("client");
        std::fs::create_dir(&root).unwrap();
        let store = root.join(STORE_FILE);
        Vault::create(&store, 256, &["only phrase 1"], &mut |_, _| {}).unwrap();
        let dir = DataDir::with_vault(&root, Vault::open(&store, "only phrase 1").unwrap());
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let other = dir.clone();
        let failed: Result<()> = dir.batch(|| {
            dir.write_atomic(&root.join("mine"), b"from the batch")?;
            let root = root.clone();
            let writer = std::thread::spawn(move || {
                started_tx.send(()).unwrap();
                other.write_atomic(&root.join("theirs"), b"from another thread")
            });
            started_rx.recv().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            // The other thread is still waiting for this batch.
            assert!(!writer.is_finished());
            // Ends this batch (undone) before the writer can go on.
            std::thread::spawn(move || writer.join().unwrap().unwrap());
            Err(Error::Config("stop".into()))
        });
        assert!(failed.is_err());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dir.exists(&root.join("theirs")) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(dir.exists(&root.join("theirs")));
        assert!(!dir.exists(&root.join("mine")));

        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: Result<()> = dir.batch(|| {
                dir.write_atomic(&root.join("lost"), b"x")?;
                panic!("work panicked");
            });
        }));
        assert!(panicked.is_err());
        assert!(!dir.exists(&root.join("lost")));
        dir.write_atomic(&root.join("after"), b"y").unwrap();
        drop(dir);
        let dir = DataDir::with_vault(&root, Vault::open(&store, "only phrase 1").unwrap());
        assert!(dir.exists(&root.join("theirs")));
        assert!(dir.exists(&root.join("after")));
        assert!(!dir.exists(&root.join("mine")));
        assert!(!dir.exists(&root.join("lost")));
    }
}
