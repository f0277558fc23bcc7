//! A node's long-term identity key and its Sphinx key, on disk.

use std::path::Path;

use bastet_sphinx::{NodeId, SphinxPublicKey, SphinxSecretKey};
use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The keys a relay holds. Both secret halves zeroize on drop.
pub struct NodeKeys {
    /// Long-term Ed25519 identity: signs descriptors; its hash is the node id.
    pub identity: SigningKey,
    /// X25519 key that removes this node's Sphinx layer.
    pub sphinx: SphinxSecretKey,
}

impl NodeKeys {
    /// Fresh random keys.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::Rng::fill_bytes(&mut rng, seed.as_mut());
        NodeKeys {
            identity: SigningKey::from_bytes(&seed),
            sphinx: SphinxSecretKey::random(),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_identity_key(self.identity.verifying_key().as_bytes())
    }

    /// The public half of the Sphinx key.
    pub fn sphinx_public(&self) -> SphinxPublicKey {
        SphinxPublicKey::from(&self.sphinx)
    }

    /// Writes `identity.key` and `sphinx.key` (hex, mode 0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_key_file(&dir.join("identity.key"), &self.identity.to_bytes())?;
        write_key_file(&dir.join("sphinx.key"), &self.sphinx.to_bytes())
    }

    /// Reads what [`NodeKeys::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self> {
        let identity = read_key_file(&dir.join("identity.key"))?;
        let sphinx = read_key_file(&dir.join("sphinx.key"))?;
        Ok(NodeKeys {
            identity: SigningKey::from_bytes(&identity),
            sphinx: SphinxSecretKey::from(*sphinx),
        })
    }
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
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| Error::KeyFile {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?);
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
        assert_eq!(keys.sphinx_public(), loaded.sphinx_public());
        std::fs::write(dir.path().join("sphinx.key"), "nothex").unwrap();
        assert!(matches!(
            NodeKeys::load(dir.path()),
            Err(Error::KeyFile { .. })
        ));
    }
}
