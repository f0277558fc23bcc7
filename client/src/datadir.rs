//! The client's data directory: keys, config and the little state `inbox`
//! keeps between calls. Stored in the clear for now (keys are mode 0600);
//! the encrypted container is a later issue.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bastet_directory::{read_key_file, write_key_file};

use crate::config::ENV_PREFIX;
use crate::{ClientConfig, ClientKeys, Error, Result};

const IDENTITY_KEY: &str = "identity.key";
const ENCRYPTION_KEY: &str = "encryption.key";
const MAILBOX_KEY: &str = "mailbox.key";
const CONFIG: &str = "client.toml";
/// Seqs already shown that are still on the server (see `InboxPlan`).
const SHOWN: &str = "inbox-shown";
/// Bound on the shown-list file; a mailbox holds at most its quota anyway.
const MAX_SHOWN_FILE: u64 = 1 << 20;

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
        for existing in [IDENTITY_KEY, CONFIG] {
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

    /// Writes the three key files (hex, mode 0600).
    pub fn save_keys(&self, keys: &ClientKeys) -> Result<()> {
        write_key_file(&self.root.join(IDENTITY_KEY), &keys.identity_secret())?;
        write_key_file(&self.root.join(ENCRYPTION_KEY), &keys.encryption_secret())?;
        write_key_file(&self.root.join(MAILBOX_KEY), &keys.mailbox_secret())?;
        Ok(())
    }

    /// Reads the keys [`DataDir::save_keys`] wrote.
    pub fn load_keys(&self) -> Result<ClientKeys> {
        self.ensure_initialised()?;
        let identity = read_key_file(&self.root.join(IDENTITY_KEY))?;
        let encryption = read_key_file(&self.root.join(ENCRYPTION_KEY))?;
        let mailbox = read_key_file(&self.root.join(MAILBOX_KEY))?;
        Ok(ClientKeys::from_secrets(&identity, &encryption, &mailbox))
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

    fn ensure_initialised(&self) -> Result<()> {
        if self.config_path().exists() && self.root.join(IDENTITY_KEY).exists() {
            Ok(())
        } else {
            Err(Error::NotInitialised(self.root.clone()))
        }
    }

    fn file_error(&self, path: &Path, e: std::io::Error) -> Error {
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
}
