//! A node's long-term keys and config, backed up under a passphrase
//! (`bastet-mixnode backup`, `restore`; the same for mailbox servers and
//! authorities).
//!
//! What goes in: `identity.key`, `tls-key.pem`, `tls-cert.pem` and the
//! config file. What does not: the per-epoch Sphinx keys (a restored old
//! one is useless, and erasing them is what keeps a seized node from
//! opening past traffic) and a mailbox server's database.
//!
//! Text form: `BASTET-NODE-BACKUP:` and base64 of `"BSTN" || version (1) ||
//! Argon2id memory KiB, passes, lanes (u32 BE each) || salt (16) || nonce
//! (24) || XChaCha20-Poly1305(JSON of the files)` under the Argon2id
//! output of the passphrase, with everything before the nonce as
//! associated data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Every node backup's text starts with this.
pub const NODE_BACKUP_PREFIX: &str = "BASTET-NODE-BACKUP:";
const MAGIC: &[u8; 4] = b"BSTN";
const VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 4 + 1 + 12 + SALT_LEN;
/// Largest backup accepted (its files are small).
pub const MAX_BACKUP_LEN: usize = 1 << 20;
/// Shortest passphrase, in characters.
pub const MIN_BACKUP_PASSPHRASE_CHARS: usize = 12;
/// The secret files backed up, with the mode they are restored with.
const SECRET_FILES: [&str; 2] = ["identity.key", "tls-key.pem"];
const PUBLIC_FILES: [&str; 1] = ["tls-cert.pem"];
/// The config file names `init` writes, one per role.
const CONFIG_NAMES: [&str; 3] = ["authority.toml", "mixnode.toml", "mailbox.toml"];
/// Argon2id cost of new backups (RFC 9106's second recommended option).
const MEMORY_KIB: u32 = 64 * 1024;
const PASSES: u32 = 3;
const LANES: u32 = 1;
/// Most memory a backup may ask for (a crafted file must not exhaust the
/// machine restoring it): 1 GiB.
const MAX_MEMORY_KIB: u32 = 1 << 20;

fn backup_error(why: impl Into<String>) -> Error {
    Error::Config(format!("node backup: {}", why.into()))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Contents {
    /// The config file's name and text.
    config_name: String,
    config: String,
    /// File name → base64 bytes.
    files: BTreeMap<String, String>,
}

fn derive(passphrase: &str, salt: &[u8], m: u32, t: u32, p: u32) -> Result<Zeroizing<[u8; 32]>> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|e| backup_error(format!("Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
        .map_err(|e| backup_error(format!("Argon2id: {e}")))?;
    Ok(key)
}

/// Backs up the node whose config is `config_path` and data directory
/// `data_dir`, encrypted under `passphrase` (at least 12 characters).
pub fn backup(config_path: &Path, data_dir: &Path, passphrase: &str) -> Result<Zeroizing<String>> {
    if passphrase.chars().count() < MIN_BACKUP_PASSPHRASE_CHARS {
        return Err(backup_error(format!(
            "the passphrase needs at least {MIN_BACKUP_PASSPHRASE_CHARS} characters"
        )));
    }
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| backup_error(format!("{}: {e}", path.display())))
    };
    let mut files = BTreeMap::new();
    for name in SECRET_FILES.iter().chain(&PUBLIC_FILES) {
        let path = data_dir.join(name);
        if SECRET_FILES.contains(name) {
            bastet_link::check_private(&path)
                .map_err(|e| backup_error(format!("{}: {e}", path.display())))?;
        }
        let bytes = Zeroizing::new(read(&path)?);
        files.insert(name.to_string(), BASE64.encode(&bytes));
    }
    let config = String::from_utf8(read(config_path)?)
        .map_err(|_| backup_error(format!("{} is not text", config_path.display())))?;
    let config_name = config_path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| CONFIG_NAMES.contains(n))
        .ok_or_else(|| {
            backup_error(format!(
                "{} is not named as `init` names a config ({}): restore would refuse it",
                config_path.display(),
                CONFIG_NAMES.join(", ")
            ))
        })?
        .to_string();
    // What restore will do with it, checked now rather than in a disaster.
    rewrite_data_dir(&config, Path::new("/restored"))?;
    let contents = Contents {
        config_name,
        config,
        files,
    };
    let mut body =
        Zeroizing::new(serde_json::to_vec(&contents).map_err(|e| backup_error(e.to_string()))?);
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut salt);
    rand::Rng::fill_bytes(&mut rand::rng(), &mut nonce);
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + body.len() + 16);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    for v in [MEMORY_KIB, PASSES, LANES] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&salt);
    let key = derive(passphrase, &salt, MEMORY_KIB, PASSES, LANES)?;
    XChaCha20Poly1305::new(&(*key).into())
        .encrypt_in_place(&XNonce::from(nonce), &out, &mut *body)
        .map_err(|_| backup_error("encryption failed"))?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    let text = Zeroizing::new(format!("{NODE_BACKUP_PREFIX}{}\n", BASE64.encode(&out)));
    if text.len() > MAX_BACKUP_LEN {
        return Err(backup_error("the config is too large for a backup"));
    }
    Ok(text)
}

/// `config` with its top-level `data_dir` set to `dir`; it must parse as
/// TOML before and after, and have a `data_dir`.
fn rewrite_data_dir(config: &str, dir: &Path) -> Result<String> {
    let mut doc: toml::Table = config
        .parse()
        .map_err(|e| backup_error(format!("its config is not TOML: {e}")))?;
    if !doc.contains_key("data_dir") {
        return Err(backup_error(
            "its config has no data_dir (set by the environment?): put it in the file",
        ));
    }
    let value = toml::Value::String(dir.to_string_lossy().into_owned());
    // Keep the comments: replace the line, then check the result parses
    // to the same document with the new data_dir.
    let mut replaced = false;
    let text: String = config
        .lines()
        .map(|line| {
            if !replaced && line.trim_start().starts_with("data_dir") && line.contains('=') {
                replaced = true;
                format!("data_dir = {value}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    doc.insert("data_dir".into(), value);
    let reparsed: toml::Table = text
        .parse()
        .map_err(|e| backup_error(format!("rewriting its data_dir broke the config: {e}")))?;
    if !replaced || reparsed != doc {
        return Err(backup_error(
            "its data_dir is not a plain top-level line: cannot point it at the new directory",
        ));
    }
    Ok(text)
}

/// What [`restore`] wrote.
#[derive(Debug, Serialize)]
pub struct Restored {
    /// The data directory.
    pub dir: PathBuf,
    /// The config file (its `data_dir` set to `dir`).
    pub config: PathBuf,
}

/// Decrypts a backup made by [`backup`] with `passphrase` and writes its
/// keys (mode 0600), certificate and config into `dir` (created, mode
/// 0700); refuses a `dir` that already holds keys. The config's
/// `data_dir` is set to `dir`.
pub fn restore(text: &str, passphrase: &str, dir: &Path, role_config: &str) -> Result<Restored> {
    let text = text.trim();
    if text.len() > MAX_BACKUP_LEN {
        return Err(backup_error("larger than any backup"));
    }
    let b64 = text.strip_prefix(NODE_BACKUP_PREFIX).ok_or_else(|| {
        backup_error(format!(
            "not a node backup (it starts {NODE_BACKUP_PREFIX})"
        ))
    })?;
    let bytes = BASE64
        .decode(b64.as_bytes())
        .map_err(|_| backup_error("not base64"))?;
    if bytes.len() < HEADER_LEN + NONCE_LEN + 16 || &bytes[..4] != MAGIC {
        return Err(backup_error("too short, or not a node backup"));
    }
    if bytes[4] != VERSION {
        return Err(backup_error(format!(
            "version {} is not one this bastet reads",
            bytes[4]
        )));
    }
    let u32_at =
        |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let (m, t, p) = (u32_at(5), u32_at(9), u32_at(13));
    if m > MAX_MEMORY_KIB || t == 0 || t > 16 || p == 0 || p > 8 {
        return Err(backup_error("its Argon2id cost is out of range"));
    }
    let (header, rest) = bytes.split_at(HEADER_LEN);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let key = derive(passphrase, &header[17..], m, t, p)?;
    let mut body = Zeroizing::new(sealed.to_vec());
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    XChaCha20Poly1305::new(&(*key).into())
        .decrypt_in_place(&XNonce::from(n), header, &mut *body)
        .map_err(|_| backup_error("wrong passphrase, or the backup was altered"))?;
    let contents: Contents =
        serde_json::from_slice(&body).map_err(|e| backup_error(format!("contents: {e}")))?;
    let mut expected: Vec<&str> = SECRET_FILES.iter().chain(&PUBLIC_FILES).copied().collect();
    expected.sort_unstable();
    if contents.files.keys().map(String::as_str).ne(expected)
        || !CONFIG_NAMES.contains(&contents.config_name.as_str())
    {
        return Err(backup_error("it holds other files than a node backup does"));
    }
    if contents.config_name != role_config {
        return Err(backup_error(format!(
            "it is the backup of another kind of node (its config is {}, not {role_config})",
            contents.config_name
        )));
    }
    if SECRET_FILES.iter().any(|f| dir.join(f).exists()) {
        return Err(backup_error(format!(
            "{} already holds keys: restore into a new directory",
            dir.display()
        )));
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| backup_error(format!("{}: {e}", dir.display())))?;
    let dir =
        std::fs::canonicalize(dir).map_err(|e| backup_error(format!("{}: {e}", dir.display())))?;
    let config = rewrite_data_dir(&contents.config, &dir)?;
    let config_path = dir.join(&contents.config_name);
    // Every file is new (never through a link or over a file), and a
    // failure part-way removes what was written, so a retry can work.
    let mut written: Vec<PathBuf> = Vec::new();
    let mut write_new = |path: &Path, bytes: &[u8]| -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| backup_error(format!("{}: {e}", path.display())))?;
        written.push(path.to_path_buf());
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| backup_error(format!("{}: {e}", path.display())))
    };
    let mut outcome = Ok(());
    for (name, b64) in &contents.files {
        outcome = BASE64
            .decode(b64.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| backup_error(format!("{name} is not base64")))
            .and_then(|bytes| write_new(&dir.join(name), &bytes));
        if outcome.is_err() {
            break;
        }
    }
    if outcome.is_ok() {
        outcome = write_new(&config_path, config.as_bytes());
    }
    if let Err(e) = outcome {
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    Ok(Restored {
        dir,
        config: config_path,
    })
}

/// The arguments of `<program> backup`.
#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// Path to the node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Where to write the backup.
    #[arg(long)]
    pub out: PathBuf,
    /// Read the passphrase from file descriptor N (one line) instead of the
    /// terminal.
    #[arg(long, value_name = "N")]
    pub passphrase_fd: Option<u32>,
}

/// The arguments of `<program> restore`.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    pub backup: PathBuf,
    /// The data directory to restore into.
    #[arg(long)]
    pub dir: PathBuf,
    /// Read the passphrase from file descriptor N (one line) instead of the
    /// terminal.
    #[arg(long, value_name = "N")]
    pub passphrase_fd: Option<u32>,
}

/// `<program> backup`: asks for a passphrase (twice at a terminal, or
/// one line from `passphrase_fd`), backs up the node of `config` (whose
/// data directory is `data_dir`) and writes the backup to `out` (mode
/// 0600), saying so on stderr.
pub fn backup_command(
    program: &str,
    config: &Path,
    data_dir: &Path,
    out: &Path,
    passphrase_fd: Option<u32>,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let phrase = bastet_link::read_passphrase(
        passphrase_fd,
        "Passphrase for the backup (at least 12 characters): ",
        true,
    )?;
    eprintln!("{program}: deriving the key (Argon2id, 64 MiB)...");
    let text = backup(config, data_dir, &phrase)?;
    bastet_link::write_private(out, text.as_bytes())
        .map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "{program}: backup written to {}; keep it apart from its passphrase",
        out.display()
    );
    Ok(())
}

/// `<program> restore`: reads the backup file (bounded), asks for its
/// passphrase, restores into `dir`, prints [`Restored`] as JSON and says
/// how to check the result.
pub fn restore_command(
    program: &str,
    role_config: &str,
    backup_file: &Path,
    dir: &Path,
    passphrase_fd: Option<u32>,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(backup_file)
        .and_then(|f| f.take(MAX_BACKUP_LEN as u64 + 1).read_to_string(&mut text))
        .map_err(|e| format!("{}: {e}", backup_file.display()))?;
    if text.len() > MAX_BACKUP_LEN {
        return Err(format!("{} is larger than any backup", backup_file.display()).into());
    }
    let phrase = bastet_link::read_passphrase(passphrase_fd, "Passphrase of the backup: ", false)?;
    let restored = restore(&text, &phrase, dir, role_config)?;
    println!("{}", serde_json::to_string(&restored)?);
    eprintln!(
        "{program}: restored; check it with `{program} check-config --config {}`",
        restored.config.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path) -> PathBuf {
        crate::NodeKeys::generate().save(dir).unwrap();
        bastet_link::TlsIdentity::generate()
            .unwrap()
            .save(dir)
            .unwrap();
        let config = dir.join("mixnode.toml");
        std::fs::write(
            &config,
            format!(
                "# a comment\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:1\"\n",
                dir.display()
            ),
        )
        .unwrap();
        config
    }

    #[test]
    fn a_backup_restores_the_same_keys_elsewhere_and_only_with_its_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("from");
        std::fs::create_dir(&from).unwrap();
        let config = node(&from);
        let text = backup(&config, &from, "a long backup passphrase").unwrap();
        assert!(text.starts_with(NODE_BACKUP_PREFIX));
        // No key in the clear.
        let key = std::fs::read_to_string(from.join("identity.key")).unwrap();
        assert!(!text.contains(key.trim()));
        assert!(backup(&config, &from, "short").is_err());

        let to = tmp.path().join("to");
        let err = restore(&text, "not the passphrase!", &to, "mixnode.toml").unwrap_err();
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
        let restored = restore(&text, "a long backup passphrase", &to, "mixnode.toml").unwrap();
        let before = crate::NodeKeys::load(&from).unwrap();
        let after = crate::NodeKeys::load(&restored.dir).unwrap();
        assert_eq!(before.node_id(), after.node_id());
        assert_eq!(
            bastet_link::TlsIdentity::load(&from).unwrap().pin(),
            bastet_link::TlsIdentity::load(&restored.dir).unwrap().pin()
        );
        let text_config = std::fs::read_to_string(&restored.config).unwrap();
        assert!(text_config.contains(&format!("data_dir = \"{}\"", restored.dir.display())));
        assert!(text_config.contains("listen = \"127.0.0.1:1\""));
        // Never over existing keys.
        let again = restore(&text, "a long backup passphrase", &to, "mixnode.toml").unwrap_err();
        assert!(again.to_string().contains("already holds keys"), "{again}");
    }

    #[test]
    fn an_altered_or_foreign_backup_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let config = node(tmp.path());
        let text = backup(&config, tmp.path(), "a long backup passphrase").unwrap();
        let bytes = BASE64
            .decode(
                text.trim()
                    .strip_prefix(NODE_BACKUP_PREFIX)
                    .unwrap()
                    .as_bytes(),
            )
            .unwrap();
        for i in [0, 4, 20, HEADER_LEN + 1, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            let t = format!("{NODE_BACKUP_PREFIX}{}", BASE64.encode(&b));
            assert!(
                restore(
                    &t,
                    "a long backup passphrase",
                    &tmp.path().join("x"),
                    "mixnode.toml"
                )
                .is_err(),
                "{i}"
            );
        }
        // A crafted cost is refused before any work.
        let mut b = bytes.clone();
        b[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        let t = format!("{NODE_BACKUP_PREFIX}{}", BASE64.encode(&b));
        let err = restore(
            &t,
            "a long backup passphrase",
            &tmp.path().join("y"),
            "mixnode.toml",
        )
        .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(restore("BASTET-IDENTITY-KEY:AAAA", "x", tmp.path(), "mixnode.toml").is_err());
    }
}
