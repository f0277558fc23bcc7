//! The `test_ingress_log` test hook: one text line per frame received,
//! `<unix micros> <peer ip> <frame length>`, so that an end-to-end test can
//! measure what a relay sees arrive from one sender (its timing and sizes).

use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The ingress log stops growing at this size (about 1.5 million lines).
pub const INGRESS_LOG_LIMIT: u64 = 64 << 20;
/// Lines are flushed to the file at least this often while frames arrive;
/// [`IngressLog::flush`] flushes at once.
const FLUSH_PERIOD: Duration = Duration::from_millis(100);

/// An append-only text file of received frames, up to
/// [`INGRESS_LOG_LIMIT`] bytes. A test hook, not a production path: it
/// records who sent what when, writes block (briefly, into a buffer), and
/// after a failed write it stops logging rather than retrying.
pub struct IngressLog {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    out: BufWriter<std::fs::File>,
    written: u64,
    failed: bool,
    flushed: Instant,
}

impl std::fmt::Debug for IngressLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl IngressLog {
    /// Opens (or creates) `path` for appending; bytes already in it count
    /// towards the limit.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(IngressLog {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                out: BufWriter::new(file),
                written,
                failed: false,
                flushed: Instant::now(),
            }),
        })
    }

    /// Records a frame of `len` bytes from `peer`, received now.
    pub fn record(&self, peer: IpAddr, len: usize) {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let line = format!("{micros} {peer} {len}\n");
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = line.len() as u64;
        if inner.failed || inner.written + n > INGRESS_LOG_LIMIT {
            return;
        }
        let result = inner.out.write_all(line.as_bytes());
        inner.written += n;
        self.check(&mut inner, result);
        if inner.flushed.elapsed() >= FLUSH_PERIOD {
            self.flush_locked(&mut inner);
        }
    }

    /// Writes out every line recorded so far.
    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_locked(&mut inner);
    }

    fn flush_locked(&self, inner: &mut Inner) {
        if inner.failed {
            return;
        }
        let result = inner.out.flush();
        inner.flushed = Instant::now();
        self.check(inner, result);
    }

    fn check(&self, inner: &mut Inner, result: std::io::Result<()>) {
        if let Err(e) = result {
            inner.failed = true;
            tracing::warn!(path = %self.path.display(), error = %e, "ingress log write failed; not logging further");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_time_peer_and_length_and_reach_the_file_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingress.log");
        let log = IngressLog::open(&path).unwrap();
        log.record("127.0.0.2".parse().unwrap(), 2048);
        log.record("::1".parse().unwrap(), 7);
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(&lines[0][1..], ["127.0.0.2", "2048"]);
        assert_eq!(&lines[1][1..], ["::1", "7"]);
        let t0: u128 = lines[0][0].parse().unwrap();
        let t1: u128 = lines[1][0].parse().unwrap();
        assert!(t0 > 1_600_000_000_000_000 && t1 >= t0, "{t0} {t1}");
    }
}
