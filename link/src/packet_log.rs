//! The `packet_log` test hook shared by the relays: raw bytes appended to a
//! file, up to a bound, so that end-to-end tests can see what left a node.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The packet log stops growing at this size.
pub const PACKET_LOG_LIMIT: u64 = 64 << 20;

/// An append-only file of raw packets or payloads, up to
/// [`PACKET_LOG_LIMIT`] bytes. A test hook, not a production path: writes
/// block, and after a failed write it stops logging rather than retrying.
pub struct PacketLog {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
    failed: bool,
}

impl PacketLog {
    /// Opens (or creates) `path` for appending; bytes already in it count
    /// towards the limit.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(PacketLog {
            path: path.to_path_buf(),
            file,
            written,
            failed: false,
        })
    }

    /// Appends `bytes` whole, or nothing if that would pass the limit.
    pub fn append(&mut self, bytes: &[u8]) {
        let len = bytes.len() as u64;
        if self.failed || self.written + len > PACKET_LOG_LIMIT {
            return;
        }
        match self.file.write_all(bytes) {
            Ok(()) => self.written += len,
            Err(e) => {
                self.failed = true;
                tracing::warn!(path = %self.path.display(), error = %e, "packet_log write failed; not logging further");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_after_existing_bytes_and_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.bin");
        std::fs::write(&path, [1u8; 4]).unwrap();
        let mut log = PacketLog::open(&path).unwrap();
        log.append(&[2; 3]);
        let nearly_full = usize::try_from(PACKET_LOG_LIMIT).unwrap() - 7;
        log.append(&vec![3; nearly_full + 1]);
        log.append(&[4; 2]);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 9);
        assert_eq!(&bytes[..], &[1, 1, 1, 1, 2, 2, 2, 4, 4]);
    }
}
