//! The line-per-event test hooks the relays and clients share: bounded,
//! buffered text files of who sent what when, never content, so that
//! end-to-end tests (and the anonymity measurement) can see the traffic a
//! global observer would, and join it across hops.
//!
//! Every packet is named in them by its [`FrameId`]: the first 8 bytes of
//! BLAKE3 over the frame, in hex. A packet changes at every hop (each
//! relay removes a layer), so the same id appears on exactly one link:
//! what joins hops is the relay's own `<in id> <out id>` line.

use std::fmt;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A test log stops growing at this size (the ingress log's lines are about
/// 1.5 million of them).
pub const INGRESS_LOG_LIMIT: u64 = 64 << 20;
/// Lines are flushed to the file at least this often while they are
/// written; [`TestLog::flush`] flushes at once.
const FLUSH_PERIOD: Duration = Duration::from_millis(100);

/// The short name of one frame in the test logs: the first 8 bytes of
/// BLAKE3 over its bytes, shown as 16 hex digits. Only test hooks compute
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameId(pub [u8; 8]);

impl fmt::Display for FrameId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for FrameId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|_| format!("frame id {s:?} is not hex"))?;
        let id: [u8; 8] = bytes
            .try_into()
            .map_err(|_| format!("frame id {s:?} is not 16 hex digits"))?;
        Ok(FrameId(id))
    }
}

/// The [`FrameId`] of `frame` (a whole packet as it crosses one link).
pub fn frame_id(frame: &[u8]) -> FrameId {
    let hash = blake3::hash(frame);
    let mut id = [0u8; 8];
    id.copy_from_slice(&hash.as_bytes()[..8]);
    FrameId(id)
}

/// Microseconds since the Unix epoch, as the test logs write time.
pub fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// An append-only text file of lines, up to [`INGRESS_LOG_LIMIT`] bytes. A
/// test hook, not a production path: writes block (briefly, into a buffer),
/// and after a failed write it stops logging rather than retrying. A line
/// that would pass the limit is dropped whole, as are all after it.
pub struct TestLog {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    out: BufWriter<std::fs::File>,
    written: u64,
    failed: bool,
    flushed: Instant,
}

impl fmt::Debug for TestLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TestLog {
    /// Opens (or creates) `path` for appending; bytes already in it count
    /// towards the limit.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(TestLog {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                out: BufWriter::new(file),
                written,
                failed: false,
                flushed: Instant::now(),
            }),
        })
    }

    /// The file it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` and a newline.
    pub fn line(&self, line: fmt::Arguments<'_>) {
        let mut text = line.to_string();
        text.push('\n');
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = text.len() as u64;
        if inner.failed || inner.written + n > INGRESS_LOG_LIMIT {
            return;
        }
        let result = inner.out.write_all(text.as_bytes());
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
            tracing::warn!(path = %self.path.display(), error = %e, "test log write failed; not logging further");
        }
    }
}

impl Drop for TestLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The relays' `test_ingress_log` test hook, set as
/// [`crate::IngressConfig::log`]: one line per frame received,
/// `<unix micros> <peer ip> <frame length> <frame id>`, so that an
/// end-to-end test can measure what a relay sees arrive from one sender
/// (its timing and sizes) and follow a packet across hops.
#[derive(Debug)]
pub struct IngressLog(TestLog);

impl IngressLog {
    /// Opens (or creates) `path` for appending; bytes already in it count
    /// towards [`INGRESS_LOG_LIMIT`].
    pub fn open(path: &Path) -> std::io::Result<Self> {
        TestLog::open(path).map(IngressLog)
    }

    /// Records `frame`, received now from `peer`.
    pub fn record(&self, peer: IpAddr, frame: &[u8]) {
        let micros = unix_micros();
        let id = frame_id(frame);
        self.0
            .line(format_args!("{micros} {peer} {} {id}", frame.len()));
    }

    /// Writes out every line recorded so far.
    pub fn flush(&self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_time_peer_length_and_frame_id_and_reach_the_file_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingress.log");
        let log = IngressLog::open(&path).unwrap();
        log.record("127.0.0.2".parse().unwrap(), &[7u8; 2048]);
        log.record("::1".parse().unwrap(), b"seven!!");
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let id = frame_id(&[7u8; 2048]).to_string();
        assert_eq!(&lines[0][1..], ["127.0.0.2", "2048", id.as_str()]);
        assert_eq!(lines[1][1..3], ["::1", "7"]);
        assert_eq!(lines[1][3].parse::<FrameId>(), Ok(frame_id(b"seven!!")));
        let t0: u128 = lines[0][0].parse().unwrap();
        let t1: u128 = lines[1][0].parse().unwrap();
        assert!(t0 > 1_600_000_000_000_000 && t1 >= t0, "{t0} {t1}");
    }

    #[test]
    fn frame_ids_are_short_stable_and_tell_frames_apart() {
        let a = frame_id(b"one packet");
        assert_eq!(a, frame_id(b"one packet"));
        assert_ne!(a, frame_id(b"another packet"));
        let text = a.to_string();
        assert_eq!(text.len(), 16);
        assert_eq!(&text[..], &blake3::hash(b"one packet").to_hex()[..16]);
        assert_eq!(text.parse::<FrameId>(), Ok(a));
        assert!("xyz".parse::<FrameId>().is_err());
        assert!("00".parse::<FrameId>().is_err());
    }

    #[test]
    fn a_test_log_stops_at_the_limit_and_keeps_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let nearly_full = usize::try_from(INGRESS_LOG_LIMIT).unwrap() - 10;
        std::fs::write(&path, vec![b'x'; nearly_full]).unwrap();
        let log = TestLog::open(&path).unwrap();
        log.line(format_args!("1234"));
        log.line(format_args!("too long now"));
        log.line(format_args!("4"));
        drop(log);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), nearly_full + 7);
        assert!(bytes.ends_with(b"1234\n4\n"));
    }
}
