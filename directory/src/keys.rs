//! A node's long-term identity key, on disk. Its Sphinx keys rotate per
//! epoch and live in a [`crate::SphinxKeyRing`].

use std::path::Path;

use bastet_sphinx::NodeId;
use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// A relay's long-term identity. The secret zeroizes on drop.
pub struct NodeKeys {
    /// Long-term Ed25519 identity: signs descriptors; its hash is the node id.
    pub identity: SigningKey,
}

impl NodeKeys {
    /// A fresh random identity.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::Rng::fill_bytes(&mut rng, seed.as_mut());
        NodeKeys {
            identity: SigningKey::from_bytes(&seed),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_identity_key(self.identity.verifying_key().as_bytes())
    }

    /// Writes `identity.key` (hex, mode 0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_key_file(&dir.join("identity.key"), &self.identity.to_bytes())
    }

    /// Reads what [`NodeKeys::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self> {
        let identity = read_key_file(&dir.join("identity.key"))?;
        Ok(NodeKeys {
            identity: SigningKey::from_bytes(&identity),
        })
    }
}

/// What `check-config` of a relay prints: `fields` (its addresses,
/// jurisdiction, ...) with `"ok": true`, its node id and its TLS pin, once
/// its keys load as they would at start (present, parseable, private).
pub fn relay_check_report(
    data_dir: &Path,
    mut fields: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value> {
    let keys = NodeKeys::load(data_dir)?;
    let tls = bastet_link::TlsIdentity::load(data_dir)?;
    fields.insert("ok".into(), true.into());
    fields.insert("node_id".into(), keys.node_id().to_hex().into());
    fields.insert("tls_pin".into(), tls.pin().to_hex().into());
    Ok(serde_json::Value::Object(fields))
}

/// Writes a 32-byte secret as hex to a file only its owner can read.
pub fn write_key_file(path: &Path, key: &[u8; 32]) -> Result<()> {
    let text = Zeroizing::new(format!("{}\n", hex::encode(key)));
    bastet_link::write_private(path, text.as_bytes()).map_err(|e| Error::KeyFile {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Reads a key written by [`write_key_file`].
pub fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    let bytes = bastet_link::read_private(path, 1024).map_err(|e| Error::KeyFile {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::KeyFile {
        path: path.to_path_buf(),
        why: "not text: expected 64 hex digits".into(),
    })?;
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), key.as_mut()).map_err(|_| Error::KeyFile {
        path: path.to_path_buf(),
        why: "expected 64 hex digits".into(),
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let keys = NodeKeys::generate();
        keys.save(dir.path()).unwrap();
        let loaded = NodeKeys::load(dir.path()).unwrap();
        assert_eq!(keys.node_id(), loaded.node_id());
        std::fs::write(dir.path().join("identity.key"), "nothex").unwrap();
        assert!(matches!(
            NodeKeys::load(dir.path()),
            Err(Error::KeyFile { .. })
        ));
    }

    #[test]
    fn a_key_others_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = NodeKeys::generate();
        keys.save(dir.path()).unwrap();
        let path = dir.path().join("identity.key");
        for mode in [0o644, 0o640, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = NodeKeys::load(dir.path()).err().unwrap().to_string();
            assert!(err.contains("chmod 600"), "{mode:o}: {err}");
            assert!(err.contains(&format!("{mode:04o}")), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            NodeKeys::load(dir.path()).unwrap().node_id(),
            keys.node_id()
        );
    }
}
