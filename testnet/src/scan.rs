//! Scanning every byte under a set of directories for a marker, to check
//! that relays never hold a message's plaintext.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Bytes read at a time.
const CHUNK: usize = 1 << 20;

/// A place the marker was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The file.
    pub path: PathBuf,
    /// In which form: `raw`, `hex` or `base64`.
    pub encoding: &'static str,
}

/// What a scan read and found.
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    /// Every regular file read, in full.
    pub files: Vec<PathBuf>,
    /// Total bytes read.
    pub bytes: u64,
    /// Symbolic links seen (not followed).
    pub skipped_links: Vec<PathBuf>,
    /// Where the marker appeared.
    pub hits: Vec<Hit>,
}

/// The forms a marker could take in a file: raw, hex (either case) and
/// base64 at each of the three alignments a longer text could place it in.
fn patterns(marker: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut p = vec![
        ("raw", marker.to_vec()),
        ("hex", hex::encode(marker).into_bytes()),
        ("hex", hex::encode_upper(marker).into_bytes()),
    ];
    if marker.len() >= 8 {
        let groups = (marker.len() - 2) / 3;
        for start in 0..3 {
            let part = &marker[start..start + 3 * groups];
            p.push(("base64", data_encoding::BASE64.encode(part).into_bytes()));
            p.push((
                "base64",
                data_encoding::BASE64URL_NOPAD.encode(part).into_bytes(),
            ));
        }
    }
    p
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return true;
    };
    haystack
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == first)
        .any(|(i, _)| haystack[i..].starts_with(needle))
}

/// Reads `reader` to its end in `chunk`-byte pieces, keeping enough of each
/// piece's end that a pattern straddling two pieces is still seen. Returns
/// the bytes read and the encodings found.
fn scan_reader(
    mut reader: impl Read,
    patterns: &[(&'static str, Vec<u8>)],
    chunk: usize,
) -> std::io::Result<(u64, Vec<&'static str>)> {
    let keep = patterns
        .iter()
        .map(|(_, p)| p.len())
        .max()
        .unwrap_or(1)
        .saturating_sub(1);
    let mut window: Vec<u8> = Vec::with_capacity(chunk + keep);
    let mut buf = vec![0u8; chunk.max(1)];
    let mut total = 0u64;
    let mut found: Vec<&'static str> = Vec::new();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        window.extend_from_slice(&buf[..n]);
        for (encoding, p) in patterns {
            if !found.contains(encoding) && contains(&window, p) {
                found.push(encoding);
            }
        }
        let drop_to = window.len().saturating_sub(keep);
        window.drain(..drop_to);
    }
    Ok((total, found))
}

/// Reads every regular file under `roots` (recursively, symbolic links not
/// followed) and reports where `marker` appears, raw, hex- or
/// base64-encoded. Any file that cannot be read fails the scan: a scan that
/// skipped bytes could not vouch for them.
pub fn scan_for_marker(roots: &[PathBuf], marker: &[u8]) -> Result<ScanReport> {
    if marker.is_empty() {
        return Err(Error::InvalidOption("the marker must not be empty".into()));
    }
    let patterns = patterns(marker);
    let mut report = ScanReport::default();
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)
            .map_err(Error::io(format!("scanning {}", path.display())))?;
        if meta.file_type().is_symlink() {
            report.skipped_links.push(path);
        } else if meta.is_dir() {
            let entries = std::fs::read_dir(&path)
                .map_err(Error::io(format!("listing {}", path.display())))?;
            for e in entries {
                stack.push(
                    e.map_err(Error::io(format!("listing {}", path.display())))?
                        .path(),
                );
            }
        } else if meta.is_file() {
            scan_file(&path, &patterns, &mut report)?;
        }
    }
    report.files.sort();
    Ok(report)
}

fn scan_file(
    path: &Path,
    patterns: &[(&'static str, Vec<u8>)],
    report: &mut ScanReport,
) -> Result<()> {
    let file =
        std::fs::File::open(path).map_err(Error::io(format!("reading {}", path.display())))?;
    let (bytes, found) = scan_reader(file, patterns, CHUNK)
        .map_err(Error::io(format!("reading {}", path.display())))?;
    report.bytes += bytes;
    report.files.push(path.to_path_buf());
    report.hits.extend(found.into_iter().map(|encoding| Hit {
        path: path.to_path_buf(),
        encoding,
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MARKER: &[u8] = b"BASTET-MARKER-0123456789abcdef";

    #[test]
    fn finds_the_marker_in_nested_files_and_only_there() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/db")).unwrap();
        std::fs::write(d.path().join("a/clean.log"), b"nothing to see").unwrap();
        let mut big = vec![7u8; 3 * CHUNK];
        big[CHUNK - 5..CHUNK - 5 + MARKER.len()].copy_from_slice(MARKER);
        std::fs::write(d.path().join("a/db/000001.sst"), &big).unwrap();
        let r = scan_for_marker(&[d.path().to_path_buf()], MARKER).unwrap();
        assert_eq!(r.files.len(), 2);
        assert_eq!(r.bytes, 14 + 3 * CHUNK as u64);
        assert_eq!(
            r.hits,
            vec![Hit {
                path: d.path().join("a/db/000001.sst"),
                encoding: "raw"
            }]
        );
    }

    #[test]
    fn finds_encoded_forms_inside_longer_text() {
        for prefix in ["", "x", "xy", "xyz"] {
            let text = [prefix.as_bytes(), b"say ", MARKER, b" please"].concat();
            let encoded = data_encoding::BASE64.encode(&text);
            let (_, found) = scan_reader(encoded.as_bytes(), &patterns(MARKER), 7).unwrap();
            assert_eq!(found, vec!["base64"], "prefix {prefix:?}");
            let (_, found) =
                scan_reader(hex::encode(&text).as_bytes(), &patterns(MARKER), 7).unwrap();
            assert_eq!(found, vec!["hex"]);
        }
    }

    #[test]
    fn unreadable_roots_fail_the_scan() {
        let d = tempfile::tempdir().unwrap();
        assert!(scan_for_marker(&[d.path().join("missing")], MARKER).is_err());
        assert!(scan_for_marker(&[d.path().to_path_buf()], b"").is_err());
    }

    proptest! {
        #[test]
        fn found_wherever_it_sits_whatever_the_chunk_size(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            at in 0usize..300,
            chunk in 1usize..64,
        ) {
            let at = at.min(data.len());
            let mut with = data.clone();
            with.splice(at..at, MARKER.iter().copied());
            let (n, found) = scan_reader(&with[..], &patterns(MARKER), chunk).unwrap();
            prop_assert_eq!(n, with.len() as u64);
            prop_assert!(found.contains(&"raw"));
            // Random bytes essentially never hold a 30-byte marker.
            let (_, found) = scan_reader(&data[..], &patterns(MARKER), chunk).unwrap();
            prop_assert!(found.is_empty());
        }
    }
}
