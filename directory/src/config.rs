//! How every process names the directory authorities it trusts, and the one
//! configuration loader all Bastet binaries use.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use bastet_link::CertPin;
use ed25519_dalek::VerifyingKey;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One pinned directory authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityRef {
    /// `https://host:port` of its API.
    pub url: String,
    /// Its Ed25519 signing key, 64 hex digits.
    pub identity_key: String,
    /// Pin of its TLS certificate, 64 hex digits.
    pub tls_pin: String,
}

impl AuthorityRef {
    /// The parsed signing key.
    pub fn key(&self) -> Result<VerifyingKey> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(self.identity_key.trim(), &mut b)
            .ok()
            .and_then(|()| VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| {
                Error::Config(format!(
                    "directory.authorities: identity_key {:?} is not an Ed25519 key in hex",
                    self.identity_key
                ))
            })
    }

    /// The parsed TLS pin.
    pub fn pin(&self) -> Result<CertPin> {
        CertPin::from_hex(&self.tls_pin).map_err(|_| {
            Error::Config(format!(
                "directory.authorities: tls_pin {:?} is not 64 hex digits",
                self.tls_pin
            ))
        })
    }
}

/// The `[directory]` section of node and client configs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The authorities whose keys are pinned.
    pub authorities: Vec<AuthorityRef>,
    /// How many of them must sign a consensus (default: a majority).
    #[serde(default)]
    pub threshold: Option<usize>,
    /// Length of an epoch in seconds; must match the authorities'.
    #[serde(default = "default_epoch_secs")]
    pub epoch_secs: u64,
}

fn default_epoch_secs() -> u64 {
    3600
}

impl DirectoryConfig {
    /// The threshold in force: the configured one, or ⌊n/2⌋+1.
    pub fn threshold(&self) -> usize {
        self.threshold.unwrap_or(self.authorities.len() / 2 + 1)
    }

    /// Checks the section, naming the key at fault.
    pub fn validate(&self) -> Result<()> {
        if self.authorities.is_empty() {
            return Err(Error::Config(
                "directory.authorities: at least one authority is required".into(),
            ));
        }
        for a in &self.authorities {
            a.key()?;
            a.pin()?;
            if !a.url.starts_with("https://") {
                return Err(Error::Config(format!(
                    "directory.authorities: url {:?} must start with https://",
                    a.url
                )));
            }
        }
        let t = self.threshold();
        if t == 0 || t > self.authorities.len() {
            return Err(Error::Config(format!(
                "directory.threshold: {t} must be between 1 and the number of authorities ({})",
                self.authorities.len()
            )));
        }
        let mut keys: Vec<[u8; 32]> = self
            .authorities
            .iter()
            .map(|a| a.key().map(|k| *k.as_bytes()))
            .collect::<Result<_>>()?;
        keys.sort_unstable();
        keys.dedup();
        if keys.len() != self.authorities.len() {
            return Err(Error::Config(
                "directory.authorities: an identity_key is listed twice; each authority \
                 must be pinned once, or one key would count twice towards the threshold"
                    .into(),
            ));
        }
        if self.epoch_secs < 10 {
            return Err(Error::Config(
                "directory.epoch_secs: must be at least 10".into(),
            ));
        }
        Ok(())
    }

    /// The `[directory]` section as a node's `init` writes it: every key
    /// with a comment above its first occurrence, and `threshold`, when not
    /// set, shown commented out with the default in force. The values come
    /// from serializing `self`, so that none is left out.
    pub fn to_commented_section(&self) -> Result<String> {
        let plain = toml::to_string(&BTreeMap::from([("directory", self)]))
            .map_err(|e| Error::Config(format!("directory: {e}")))?;
        let mut out = String::new();
        let mut commented = HashSet::new();
        let mut comment = |out: &mut String, key: &str| {
            if let Some(why) = section_comment(key).filter(|_| commented.insert(key.to_string())) {
                for line in why.lines() {
                    out.push_str("# ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
        };
        for line in plain.lines() {
            let key = line.split_once(" = ").map_or(line, |(key, _)| key).trim();
            comment(&mut out, key);
            out.push_str(line);
            out.push('\n');
            if key == "epoch_secs" && self.threshold.is_none() {
                comment(&mut out, "threshold");
                out.push_str(&format!("# threshold = {}\n", self.threshold()));
            }
        }
        Ok(out)
    }
}

/// What each key of the `[directory]` section is for (`None`: the line
/// needs no comment).
fn section_comment(key: &str) -> Option<&'static str> {
    Some(match key {
        "epoch_secs" => {
            "Length of an epoch in seconds (default 3600): the authorities' epoch_secs,\n\
             which every node and client of the network must share. Sphinx keys rotate\n\
             and a new consensus is signed once per epoch."
        }
        "threshold" => {
            "Authority signatures a consensus needs to be trusted. Default: a majority of\n\
             the authorities listed (floor(n/2) + 1), so that no minority can publish one."
        }
        "[[directory.authorities]]" => {
            "One [[directory.authorities]] table per authority, with what its\n\
             `bastet-directory init` printed. Keys are pinned: no certificate authority\n\
             is involved."
        }
        "url" => "Its HTTPS API, https://host:port.",
        "identity_key" => "Its Ed25519 signing key, 64 hex digits: only its signatures count.",
        "tls_pin" => "Pin of its TLS certificate, 64 hex digits: any other is refused.",
        _ => return None,
    })
}

/// Loads a TOML config file into `T`, with environment overrides
/// `{env_prefix}__SECTION__KEY=value` (e.g. `BASTET_MIXNODE__LISTEN`).
/// Unknown keys are refused by `T`'s `deny_unknown_fields`; the error names
/// the file and the key.
pub fn load_config<T: DeserializeOwned>(path: &Path, env_prefix: &str) -> Result<T> {
    if !path.exists() {
        return Err(Error::Config(format!(
            "{} does not exist (create it with `init`)",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    parse_config(&text, path, env_prefix)
}

/// Parses a TOML configuration held in memory (`origin` names it in
/// errors) with the same environment overrides as [`load_config`].
pub fn parse_config<T: DeserializeOwned>(text: &str, origin: &Path, env_prefix: &str) -> Result<T> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(env_prefix)
                .prefix_separator("__")
                .separator("__"),
        )
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| Error::Config(format!("{}: {e}", origin.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        listen: String,
        directory: DirectoryConfig,
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"x\"\nlisten_port = 3\n[directory]\nauthorities = []\n",
        )
        .unwrap();
        let err = load_config::<Sample>(&path, "BASTET_TEST_UNKNOWN").unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn the_commented_section_reads_back_and_comments_every_key() {
        let authority = |i: u8| AuthorityRef {
            url: format!("https://127.0.0.1:{i}"),
            identity_key: hex::encode(
                ed25519_dalek::SigningKey::from_bytes(&[i; 32])
                    .verifying_key()
                    .as_bytes(),
            ),
            tls_pin: hex::encode([i; 32]),
        };
        let mut c = DirectoryConfig {
            authorities: vec![authority(1), authority(2), authority(3)],
            threshold: None,
            epoch_secs: 60,
        };
        for threshold in [None, Some(3)] {
            c.threshold = threshold;
            let text = c.to_commented_section().unwrap();
            #[derive(Deserialize)]
            struct Section {
                directory: DirectoryConfig,
            }
            let back: Section = toml::from_str(&text).unwrap();
            assert_eq!(back.directory, c, "{text}");
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate().skip(1) {
                if line.contains(" = ") && !line.starts_with('#') {
                    let key = line.split(" = ").next().unwrap();
                    let first = lines
                        .iter()
                        .position(|l| l.starts_with(&format!("{key} =")));
                    if first == Some(i) {
                        assert!(
                            lines[i - 1].starts_with("# "),
                            "{key} lacks a comment: {text}"
                        );
                    }
                }
            }
            let shown = if threshold.is_none() {
                "\n# threshold = 2\n"
            } else {
                "\nthreshold = 3\n"
            };
            assert!(text.contains(shown), "{text}");
        }
    }

    #[test]
    fn threshold_defaults_to_majority_and_is_checked() {
        let a = AuthorityRef {
            url: "https://127.0.0.1:1".into(),
            identity_key: hex::encode(
                ed25519_dalek::SigningKey::from_bytes(&[1; 32])
                    .verifying_key()
                    .as_bytes(),
            ),
            tls_pin: hex::encode([0; 32]),
        };
        let key = |i: u8| {
            hex::encode(
                ed25519_dalek::SigningKey::from_bytes(&[i; 32])
                    .verifying_key()
                    .as_bytes(),
            )
        };
        let mut c = DirectoryConfig {
            authorities: vec![a.clone(), a.clone(), a],
            threshold: None,
            epoch_secs: 60,
        };
        assert_eq!(c.threshold(), 2);
        // One key pinned twice would count twice.
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        c.authorities[1].identity_key = key(2);
        c.authorities[2].identity_key = key(3);
        assert!(c.validate().is_ok());
        c.threshold = Some(3);
        assert!(c.validate().is_ok());
        c.threshold = Some(0);
        assert!(c.validate().is_err());
        c.threshold = Some(4);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("directory.threshold")
        );
    }
}
