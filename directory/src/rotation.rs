//! Per-epoch Sphinx keys: each node publishes its key for epoch e+1 during
//! epoch e, processes packets under the current key (and the next, and the
//! previous one for a short grace period), then erases the old secret key
//! from memory and disk.
//!
//! On disk a key is `<data_dir>/sphinx-keys/<epoch>.key` (hex, mode 0600,
//! the directory mode 0700).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bastet_sphinx::{SphinxPublicKey, SphinxSecretKey};
use zeroize::Zeroizing;

use crate::{
    Descriptor, DirectoryClient, Error, Result, SigningKey, epoch_bounds, epoch_of,
    publish_forever, read_key_file, unix_now, write_key_file,
};

/// Readiness of a relay for `/health`: it holds a consensus valid now that
/// lists it, a Sphinx key for the current epoch, and its data directory
/// has `min_free` bytes free (e.g. [`bastet_link::MIN_FREE_BYTES`]). Each
/// failure says what to do.
pub fn relay_readiness(
    consensus: crate::ConsensusWatch,
    keyring: Arc<Mutex<SphinxKeyRing>>,
    node: bastet_sphinx::NodeId,
    data_dir: PathBuf,
    min_free: u64,
) -> bastet_link::Readiness {
    Arc::new(move || {
        let now = unix_now();
        let Some(c) = consensus.current() else {
            return Err(
                "no consensus valid now (are the authorities reachable, and the clock right?)"
                    .into(),
            );
        };
        if c.node(&node).is_none() {
            return Err(format!(
                "node {} is not in the consensus of epoch {} (the authorities must list it in allowed_nodes)",
                node.to_hex(),
                c.epoch
            ));
        }
        let ring = keyring.lock().unwrap_or_else(PoisonError::into_inner);
        let epoch = epoch_of(now, ring.epoch_secs());
        if ring.public(epoch).is_none() {
            return Err(format!("no Sphinx key for the current epoch {epoch}"));
        }
        drop(ring);
        bastet_link::check_free_space(&data_dir, min_free)
    })
}

/// The directory under a node's data directory holding its Sphinx keys.
pub const SPHINX_KEYS_DIR: &str = "sphinx-keys";
/// The one Sphinx key of a node from before keys rotated; erased on start.
const LEGACY_SPHINX_KEY: &str = "sphinx.key";
/// Suffix of a key file being written; renamed into place once synced.
const PARTIAL_SUFFIX: &str = ".key.partial";

/// The grace period, in seconds, during which a node still processes packets
/// built for the previous epoch's key unless configured otherwise: a quarter
/// epoch, at least 5 s (a packet's delays plus a client's consensus refresh)
/// and at most 5 minutes.
pub fn default_sphinx_key_grace_secs(epoch_secs: u64) -> u64 {
    (epoch_secs / 4).clamp(5, 300)
}

/// The path of the key file for `epoch` under `data_dir`.
pub fn sphinx_key_path(data_dir: &Path, epoch: u64) -> PathBuf {
    data_dir.join(SPHINX_KEYS_DIR).join(format!("{epoch}.key"))
}

/// One epoch's Sphinx secret key. Zeroizes on drop; `Debug` shows the epoch
/// only.
#[derive(Clone)]
pub struct EpochKey {
    /// The epoch the key is published for.
    pub epoch: u64,
    /// The X25519 secret that removes this node's layer from packets built
    /// for that epoch.
    pub secret: SphinxSecretKey,
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochKey")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// What one [`SphinxKeyRing::rotate`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Epochs whose key was generated.
    pub generated: Vec<u64>,
    /// Epochs whose key was erased from memory and disk.
    pub erased: Vec<u64>,
}

/// A node's Sphinx secret keys, one per epoch, in memory and on disk.
///
/// [`SphinxKeyRing::rotate`] keeps the keys of the current and the next
/// epoch, generating those missing, keeps the previous epoch's key until
/// `grace_secs` into the current epoch, and erases every older key: the file
/// is overwritten with zeros, synced and removed, and the secret dropped
/// (secrets zeroize on drop). Keys for epochs after the next (left by a clock
/// that went back) are kept for when their epoch comes.
pub struct SphinxKeyRing {
    dir: PathBuf,
    epoch_secs: u64,
    grace_secs: u64,
    keys: BTreeMap<u64, SphinxSecretKey>,
    /// Epochs whose secret is already dropped but whose file could not be
    /// erased yet; retried at every rotation.
    unerased: BTreeSet<u64>,
}

impl SphinxKeyRing {
    /// [`SphinxKeyRing::open`], then [`SphinxKeyRing::rotate`] to `now`:
    /// what a starting node does. Returns the ring and the keys to process
    /// with now.
    pub fn open_rotated(
        data_dir: &Path,
        epoch_secs: u64,
        grace_secs: u64,
        now: u64,
    ) -> Result<(Self, Vec<EpochKey>)> {
        let mut ring = Self::open(data_dir, epoch_secs, grace_secs)?;
        ring.rotate(now)?;
        let in_force = ring.processing_keys(now);
        Ok((ring, in_force))
    }

    /// Opens the keys under `data_dir` (creating `sphinx-keys/` if needed),
    /// for epochs of `epoch_secs` and a grace period of `grace_secs`
    /// (at most `epoch_secs`). Erases a `sphinx.key` left from before keys
    /// rotated, and any key file left half-written. Generates nothing: call
    /// [`SphinxKeyRing::rotate`].
    pub fn open(data_dir: &Path, epoch_secs: u64, grace_secs: u64) -> Result<Self> {
        if epoch_secs == 0 {
            return Err(Error::Config("epoch_secs: must be at least 1".into()));
        }
        if grace_secs > epoch_secs {
            return Err(Error::Config(format!(
                "sphinx_key_grace_secs: {grace_secs} must be at most epoch_secs ({epoch_secs})"
            )));
        }
        let dir = data_dir.join(SPHINX_KEYS_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| key_file_error(&dir, &e))?;

        let legacy = data_dir.join(LEGACY_SPHINX_KEY);
        if legacy.exists() {
            erase_file(&legacy).map_err(|e| key_file_error(&legacy, &e))?;
            tracing::info!(
                path = %legacy.display(),
                "erased the single Sphinx key of an older version: Sphinx keys now rotate \
                 per epoch, under {SPHINX_KEYS_DIR}/"
            );
        }

        let mut keys = BTreeMap::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| key_file_error(&dir, &e))?;
        for entry in entries {
            let path = entry.map_err(|e| key_file_error(&dir, &e))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(PARTIAL_SUFFIX) {
                // Never renamed into place, so never published or used.
                erase_file(&path).map_err(|e| key_file_error(&path, &e))?;
            } else if let Some(epoch) = name
                .strip_suffix(".key")
                .and_then(|e| e.parse::<u64>().ok())
            {
                let secret = read_key_file(&path)?;
                keys.insert(epoch, SphinxSecretKey::from(*secret));
            } else {
                tracing::warn!(path = %path.display(), "ignoring a file that is not a Sphinx key");
            }
        }
        Ok(SphinxKeyRing {
            dir,
            epoch_secs,
            grace_secs,
            keys,
            unerased: BTreeSet::new(),
        })
    }

    /// Brings the keys in line with the time `now` (unix seconds): generates
    /// the current and the next epoch's key if missing, and erases every key
    /// older than the previous epoch's, and the previous epoch's once
    /// `grace_secs` of the current epoch have passed. Every step is tried;
    /// the first failure is returned (and the step retried next time).
    pub fn rotate(&mut self, now: u64) -> Result<Rotation> {
        let current = epoch_of(now, self.epoch_secs);
        let mut rotation = Rotation::default();
        let mut first_error = None;

        let expired: Vec<u64> = self
            .keys
            .keys()
            .copied()
            .filter(|epoch| !self.is_kept(*epoch, now))
            .collect();
        for epoch in expired {
            // Out of use whatever happens to the file.
            self.keys.remove(&epoch);
            self.unerased.insert(epoch);
            rotation.erased.push(epoch);
            tracing::info!(epoch, "Sphinx key expired; erasing it");
        }
        for epoch in std::mem::take(&mut self.unerased) {
            let path = self.path(epoch);
            match erase_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(epoch, error = %e, "cannot erase an expired Sphinx key file");
                    first_error.get_or_insert(key_file_error(&path, &e));
                    self.unerased.insert(epoch);
                }
            }
        }

        for epoch in [current, current.saturating_add(1)] {
            if self.keys.contains_key(&epoch) {
                continue;
            }
            let secret = SphinxSecretKey::random();
            match self.store(epoch, &secret) {
                Ok(()) => {
                    self.keys.insert(epoch, secret);
                    rotation.generated.push(epoch);
                    tracing::info!(epoch, "generated a Sphinx key");
                }
                Err(e) => {
                    tracing::error!(epoch, error = %e, "cannot store a new Sphinx key");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(rotation),
        }
    }

    /// The keys to process packets under at `now`, in the order to try
    /// them: the current epoch's, the next epoch's (a client may already
    /// hold the next consensus), then the previous epoch's while in grace.
    /// Only keys held are listed.
    pub fn processing_keys(&self, now: u64) -> Vec<EpochKey> {
        let current = epoch_of(now, self.epoch_secs);
        let mut epochs = vec![current, current.saturating_add(1)];
        if let Some(previous) = current.checked_sub(1)
            && self.in_grace(now)
        {
            epochs.push(previous);
        }
        epochs
            .into_iter()
            .filter_map(|epoch| {
                self.keys.get(&epoch).map(|secret| EpochKey {
                    epoch,
                    secret: secret.clone(),
                })
            })
            .collect()
    }

    /// The public key for `epoch`, if its secret is held.
    pub fn public(&self, epoch: u64) -> Option<SphinxPublicKey> {
        self.keys.get(&epoch).map(SphinxPublicKey::from)
    }

    /// The epochs whose secret key is held, oldest first.
    pub fn epochs(&self) -> Vec<u64> {
        self.keys.keys().copied().collect()
    }

    /// Epoch length in seconds.
    pub fn epoch_secs(&self) -> u64 {
        self.epoch_secs
    }

    /// Grace period in seconds.
    pub fn grace_secs(&self) -> u64 {
        self.grace_secs
    }

    /// True if at `now` the previous epoch's key is still in use.
    fn in_grace(&self, now: u64) -> bool {
        let (start, _) = epoch_bounds(epoch_of(now, self.epoch_secs), self.epoch_secs);
        now < start.saturating_add(self.grace_secs)
    }

    fn is_kept(&self, epoch: u64, now: u64) -> bool {
        let current = epoch_of(now, self.epoch_secs);
        epoch >= current || (epoch.saturating_add(1) == current && self.in_grace(now))
    }

    fn path(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!("{epoch}.key"))
    }

    /// Writes the key next to its final name, syncs it, then renames it into
    /// place, so a crash never leaves a half-written key under a key's name.
    fn store(&self, epoch: u64, secret: &SphinxSecretKey) -> Result<()> {
        let partial = self.dir.join(format!("{epoch}{PARTIAL_SUFFIX}"));
        let path = self.path(epoch);
        write_key_file(&partial, &Zeroizing::new(secret.to_bytes()))?;
        std::fs::rename(&partial, &path).map_err(|e| key_file_error(&path, &e))?;
        sync_dir(&self.dir).map_err(|e| key_file_error(&self.dir, &e))
    }
}

/// Overwrites a small secret file with zeros, syncs it, removes it and syncs
/// its directory. On journaling or copy-on-write file systems and on flash
/// the old blocks may survive the overwrite; the file and its name do not.
fn erase_file(path: &Path) -> std::io::Result<()> {
    /// Key files are 65 bytes; anything larger is overwritten this far.
    const MAX_OVERWRITE: u64 = 1 << 20;
    let mut file = OpenOptions::new().write(true).open(path)?;
    let len = file.metadata()?.len().min(MAX_OVERWRITE);
    file.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)])?;
    file.sync_all()?;
    drop(file);
    std::fs::remove_file(path)?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn key_file_error(path: &Path, e: &std::io::Error) -> Error {
    Error::KeyFile {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

/// Publishes this node's descriptor for the current and the next epoch,
/// each with that epoch's Sphinx key from `keyring`, again every quarter
/// epoch (see [`publish_forever`]), until the task is dropped. `template`
/// gives every other field; `identity` signs. A key missing from the ring
/// (the rotation task has not caught up with an epoch change yet) is made by
/// rotating the ring here.
pub async fn publish_rotating_forever(
    client: Arc<DirectoryClient>,
    template: Descriptor,
    identity: SigningKey,
    keyring: Arc<Mutex<SphinxKeyRing>>,
) {
    publish_forever(client, move |epoch| {
        let sphinx_key = {
            let mut ring = keyring.lock().unwrap_or_else(PoisonError::into_inner);
            if ring.public(epoch).is_none() {
                ring.rotate(unix_now())?;
            }
            ring.public(epoch).ok_or(Error::NoSphinxKey { epoch })?
        };
        Descriptor {
            epoch,
            sphinx_key: sphinx_key.to_bytes(),
            ..template.clone()
        }
        .sign(&identity)
    })
    .await;
}

/// How often [`rotate_forever`] brings the keys in line with the clock.
const ROTATION_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Rotates `keyring` every second (on a blocking thread: it writes and
/// syncs files) and sends the keys to process with on `keys` whenever their
/// set changes, so that an expired key leaves the packet path within a
/// second of its grace period's end. Failures are logged and retried at the
/// next tick. Returns once every receiver of `keys` is gone.
pub async fn rotate_forever(
    keyring: Arc<Mutex<SphinxKeyRing>>,
    keys: tokio::sync::watch::Sender<Vec<EpochKey>>,
) {
    let mut tick = tokio::time::interval(ROTATION_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !keys.is_closed() {
        tick.tick().await;
        let ring = keyring.clone();
        let rotated = tokio::task::spawn_blocking(move || {
            let now = unix_now();
            let mut ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
            (ring.rotate(now), ring.processing_keys(now))
        })
        .await;
        let (result, in_force) = match rotated {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "Sphinx key rotation panicked; retrying");
                continue;
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "Sphinx key rotation failed; retrying in a second");
        }
        keys.send_if_modified(|held| {
            let changed = !held
                .iter()
                .map(|k| k.epoch)
                .eq(in_force.iter().map(|k| k.epoch));
            if changed {
                *held = in_force;
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: u64 = 100;
    const GRACE: u64 = 20;

    /// Unix time `offset` seconds into `epoch`.
    fn at(epoch: u64, offset: u64) -> u64 {
        epoch * EPOCH + offset
    }

    fn files(data_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(data_dir.join(SPHINX_KEYS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn epochs(keys: &[EpochKey]) -> Vec<u64> {
        keys.iter().map(|k| k.epoch).collect()
    }

    #[test]
    fn keys_appear_one_epoch_ahead_and_the_previous_is_erased_after_grace() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, GRACE).unwrap();
        assert!(ring.epochs().is_empty());

        let r = ring.rotate(at(7, 50)).unwrap();
        assert_eq!(r.generated, vec![7, 8]);
        assert!(r.erased.is_empty());
        assert_eq!(files(tmp.path()), ["7.key", "8.key"]);
        assert_eq!(epochs(&ring.processing_keys(at(7, 50))), [7, 8]);
        let old_public = ring.public(7).unwrap();
        assert_eq!(
            SphinxPublicKey::from(&SphinxSecretKey::from(
                *read_key_file(&sphinx_key_path(tmp.path(), 7)).unwrap()
            )),
            old_public
        );
        // Idempotent within an epoch.
        assert_eq!(ring.rotate(at(7, 99)).unwrap(), Rotation::default());

        // Epoch 8 begins: 9 is generated, 7 kept for the grace period and
        // tried last.
        let r = ring.rotate(at(8, 0)).unwrap();
        assert_eq!((r.generated, r.erased), (vec![9], vec![]));
        assert_eq!(files(tmp.path()), ["7.key", "8.key", "9.key"]);
        assert_eq!(epochs(&ring.processing_keys(at(8, 0))), [8, 9, 7]);
        assert_eq!(epochs(&ring.processing_keys(at(8, GRACE - 1))), [8, 9, 7]);
        assert_eq!(ring.rotate(at(8, GRACE - 1)).unwrap(), Rotation::default());

        // Grace over: 7 is erased from memory and disk.
        assert_eq!(epochs(&ring.processing_keys(at(8, GRACE))), [8, 9]);
        let r = ring.rotate(at(8, GRACE)).unwrap();
        assert_eq!((r.generated, r.erased), (vec![], vec![7]));
        assert_eq!(files(tmp.path()), ["8.key", "9.key"]);
        assert!(!sphinx_key_path(tmp.path(), 7).exists());
        assert_eq!(ring.public(7), None);
        assert_eq!(ring.epochs(), [8, 9]);
    }

    #[test]
    fn a_node_down_for_epochs_erases_every_stale_key_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, GRACE).unwrap();
        ring.rotate(at(3, 0)).unwrap();
        drop(ring);
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, GRACE).unwrap();
        assert_eq!(ring.epochs(), [3, 4]);
        // Back in epoch 5, within grace: 4 is the previous epoch's, kept.
        let r = ring.rotate(at(5, 1)).unwrap();
        assert_eq!((r.generated, r.erased), (vec![5, 6], vec![3]));
        assert_eq!(files(tmp.path()), ["4.key", "5.key", "6.key"]);
        // Far later: everything old goes.
        let r = ring.rotate(at(40, GRACE)).unwrap();
        assert_eq!((r.generated, r.erased), (vec![40, 41], vec![4, 5, 6]));
        assert_eq!(files(tmp.path()), ["40.key", "41.key"]);
    }

    #[test]
    fn a_restart_reloads_the_same_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, GRACE).unwrap();
        ring.rotate(at(7, 10)).unwrap();
        let before = [ring.public(7).unwrap(), ring.public(8).unwrap()];
        drop(ring);
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, GRACE).unwrap();
        assert_eq!(ring.epochs(), [7, 8]);
        assert_eq!(ring.rotate(at(7, 11)).unwrap(), Rotation::default());
        assert_eq!([ring.public(7).unwrap(), ring.public(8).unwrap()], before);
        // The secrets, not only the public halves, came back.
        for k in ring.processing_keys(at(7, 11)) {
            assert_eq!(
                SphinxPublicKey::from(&k.secret),
                ring.public(k.epoch).unwrap()
            );
        }
    }

    #[test]
    fn the_single_key_of_an_older_version_is_erased_and_leftovers_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let legacy = tmp.path().join("sphinx.key");
        write_key_file(&legacy, &[0x33; 32]).unwrap();
        std::fs::create_dir(tmp.path().join(SPHINX_KEYS_DIR)).unwrap();
        let partial = tmp.path().join(SPHINX_KEYS_DIR).join("9.key.partial");
        write_key_file(&partial, &[0x44; 32]).unwrap();
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, GRACE).unwrap();
        assert!(!legacy.exists());
        assert!(!partial.exists());
        assert!(ring.epochs().is_empty());
        // No key from the old file survives into the ring.
        ring.rotate(at(1, 0)).unwrap();
        let legacy_public = SphinxPublicKey::from(&SphinxSecretKey::from([0x33; 32]));
        assert!(
            ring.epochs()
                .iter()
                .all(|e| ring.public(*e) != Some(legacy_public))
        );
    }

    #[test]
    fn key_files_are_private_and_corrupt_ones_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, GRACE).unwrap();
        ring.rotate(at(2, 0)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tmp.path().join(SPHINX_KEYS_DIR)), 0o700);
        assert_eq!(mode(&sphinx_key_path(tmp.path(), 2)), 0o600);
        std::fs::write(sphinx_key_path(tmp.path(), 3), "nothex").unwrap();
        assert!(matches!(
            SphinxKeyRing::open(tmp.path(), EPOCH, GRACE),
            Err(Error::KeyFile { .. })
        ));
    }

    #[test]
    fn grace_is_bounded_by_the_epoch_and_defaults_to_a_quarter_clamped() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            SphinxKeyRing::open(tmp.path(), 10, 11),
            Err(Error::Config(m)) if m.contains("sphinx_key_grace_secs")
        ));
        assert!(SphinxKeyRing::open(tmp.path(), 10, 10).is_ok());
        assert_eq!(default_sphinx_key_grace_secs(10), 5);
        assert_eq!(default_sphinx_key_grace_secs(60), 15);
        assert_eq!(default_sphinx_key_grace_secs(3600), 300);
    }

    #[test]
    fn zero_grace_drops_the_previous_key_at_the_boundary() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, 0).unwrap();
        ring.rotate(at(4, 99)).unwrap();
        assert_eq!(epochs(&ring.processing_keys(at(5, 0))), [5]);
        let r = ring.rotate(at(5, 0)).unwrap();
        assert_eq!((r.generated, r.erased), (vec![6], vec![4]));
    }
}
