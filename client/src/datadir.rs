//! The client's data directory: keys, config and the little state `inbox`
//! keeps between calls. Stored in the clear for now (keys are mode 0600);
//! the encrypted container is a later issue.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use bastet_directory::{read_key_file, write_key_file};
use bastet_sphinx::EnvelopeId;

use crate::config::ENV_PREFIX;
use crate::crypto::DeviceSecrets;
use crate::message::MAX_SEALED_LEN;
use crate::outbox::Outgoing;
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
/// Seqs already shown that are still on the server (see `InboxPlan`).
const SHOWN: &str = "inbox-shown";
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
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (nothing is read or created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
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
            if path.exists() {
                return Err(Error::AlreadyInitialised(path));
            }
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
            Some(secret) => write_key_file(&self.root.join(IDENTITY_KEY), &secret)?,
            None => write_key_file(&self.root.join(IDENTITY_PUB), &keys.identity_public())?,
        }
        write_key_file(&self.root.join(ENCRYPTION_KEY), &keys.encryption_secret())?;
        write_key_file(&self.root.join(MAILBOX_KEY), &keys.mailbox_secret())?;
        self.save_device_secrets(&keys.device_secrets())
    }

    fn save_device_secrets(&self, device: &DeviceSecrets) -> Result<()> {
        write_key_file(&self.root.join(DEVICE_KEY), &device.device)?;
        write_key_file(&self.root.join(CONTENT_KEY), &device.content)?;
        write_key_file(&self.root.join(KEM_KEY), &device.kem)?;
        Ok(())
    }

    /// Reads the keys [`DataDir::save_keys`] wrote. A data dir made before
    /// device keys existed gets fresh ones (saved before they are used).
    pub fn load_keys(&self) -> Result<ClientKeys> {
        self.ensure_initialised()?;
        let identity_path = self.root.join(IDENTITY_KEY);
        let pub_path = self.root.join(IDENTITY_PUB);
        if identity_path.exists() && pub_path.exists() {
            let secret = read_key_file(&identity_path)?;
            let public = read_key_file(&pub_path)?;
            if crate::crypto::ed25519_public(&secret) == *public {
                // An identity key import that stopped before deleting
                // identity.pub: finish it.
                std::fs::remove_file(&pub_path).map_err(|e| self.file_error(&pub_path, e))?;
            } else {
                // A join that stopped between writing identity.pub and
                // deleting the old identity key: finish it.
                std::fs::remove_file(&identity_path)
                    .map_err(|e| self.file_error(&identity_path, e))?;
            }
        }
        let mut identity = if identity_path.exists() {
            Some(read_key_file(&identity_path)?)
        } else {
            None
        };
        // A `device join` that stopped after the joined identity's chain
        // was written and before the old identity key was deleted: finish.
        if let Some(secret) = &identity
            && let Some(joined) = self.joined_identity(secret)?
        {
            write_key_file(&self.root.join(IDENTITY_PUB), &joined)?;
            std::fs::remove_file(&identity_path).map_err(|e| self.file_error(&identity_path, e))?;
            identity = None;
        }
        let encryption = read_key_file(&self.root.join(ENCRYPTION_KEY))?;
        let mailbox = read_key_file(&self.root.join(MAILBOX_KEY))?;
        let device = if self.root.join(DEVICE_KEY).exists() {
            DeviceSecrets {
                device: read_key_file(&self.root.join(DEVICE_KEY))?,
                content: read_key_file(&self.root.join(CONTENT_KEY))?,
                kem: read_key_file(&self.root.join(KEM_KEY))?,
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
                let public = read_key_file(&self.root.join(IDENTITY_PUB))?;
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
        write_key_file(&self.root.join(IDENTITY_KEY), secret)?;
        let path = self.root.join(IDENTITY_PUB);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.file_error(&path, e)),
        }
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
        write_key_file(&self.root.join(IDENTITY_PUB), &identity_public)?;
        let path = self.root.join(IDENTITY_KEY);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.file_error(&path, e)),
        }
        Ok(joined)
    }

    /// Writes `client.toml`, with comments.
    pub fn save_config(&self, config: &ClientConfig) -> Result<()> {
        let path = self.config_path();
        std::fs::write(&path, config.to_commented_toml()?).map_err(|e| self.file_error(&path, e))
    }

    /// Loads and validates `client.toml` (environment overrides
    /// `BASTET_CLIENT__KEY`).
    pub fn load_config(&self) -> Result<ClientConfig> {
        self.ensure_initialised()?;
        let config: ClientConfig = bastet_directory::load_config(&self.config_path(), ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Seqs shown by earlier `inbox` calls that are still on the server.
    pub fn load_shown(&self) -> Result<BTreeSet<u64>> {
        let path = self.root.join(SHOWN);
        let text = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(self.file_error(&path, e)),
            Ok(meta) if meta.len() > MAX_SHOWN_FILE => {
                return Err(Error::File {
                    path,
                    why: format!("larger than {MAX_SHOWN_FILE} bytes; delete it"),
                });
            }
            Ok(_) => std::fs::read_to_string(&path).map_err(|e| self.file_error(&path, e))?,
        };
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
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(self.file_error(&path, e))
                }
                _ => Ok(()),
            };
        }
        let text: String = shown.iter().map(|s| format!("{s}\n")).collect();
        let tmp = self.root.join(format!("{SHOWN}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| self.file_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.file_error(&path, e))
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
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.file_error(&dir, e)),
            Ok(entries) => entries,
        };
        let mut out = Vec::new();
        for entry in entries.take(2 * MAX_OUTBOX_MESSAGES) {
            let path = entry.map_err(|e| self.file_error(&dir, e))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
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
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.file_error(&dir, e)),
            Ok(entries) => entries,
        };
        let mut names = Vec::new();
        for entry in entries.take(2 * MAX_HELD_MESSAGES) {
            let name = entry.map_err(|e| self.file_error(&dir, e))?.file_name();
            if let Some(name) = name.to_str().filter(|n| n.ends_with(".json")) {
                names.push(name.to_string());
            }
        }
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
        let path = self.root.join(INBOX).join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.file_error(&path, e)),
            _ => Ok(()),
        }
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
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.root.join(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| self.file_error(&dir, e))?;
        Ok(dir)
    }

    /// Removes an outgoing message's files (once stored or failed).
    pub fn remove_outgoing(&self, message_id: &str) -> Result<()> {
        let dir = self.root.join(OUTBOX);
        for ext in ["json", "fragments"] {
            let path = dir.join(format!("{message_id}.{ext}"));
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(self.file_error(&path, e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn outbox_dir(&self) -> Result<PathBuf> {
        self.sub_dir(OUTBOX)
    }

    /// Writes `bytes` to a temporary file (mode 0600), syncs it and renames
    /// it over `path`.
    pub(crate) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
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

    fn ensure_initialised(&self) -> Result<()> {
        if self.config_path().exists()
            && (self.root.join(IDENTITY_KEY).exists() || self.root.join(IDENTITY_PUB).exists())
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
}
