//! `mailbox.toml` and `init`, which writes it next to fresh keys.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use bastet_directory::{
    DirectoryConfig, NodeKeys, SphinxKeyRing, default_sphinx_key_grace_secs, unix_now,
};
use bastet_link::TlsIdentity;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Prefix of environment overrides: `BASTET_MAILBOX__QUOTA_MESSAGES=...`.
pub const ENV_PREFIX: &str = "BASTET_MAILBOX";

/// The mailbox server's configuration (`mailbox.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxConfig {
    /// Holds `identity.key`, `sphinx-keys/<epoch>.key`, the TLS certificate
    /// and `db/`.
    pub data_dir: PathBuf,
    /// Packet link: where the last mixnodes deliver packets.
    pub listen: SocketAddr,
    /// `host:port` published for the packet link (default: `listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_addr: Option<String>,
    /// HTTPS API for mailbox owners.
    pub api_listen: SocketAddr,
    /// `host:port` published for the API (default: `api_listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_api_addr: Option<String>,
    /// Plain-HTTP `/health` and `/metrics`.
    pub metrics_listen: SocketAddr,
    /// Local address connections into the mixnet (acks) leave from (an IP
    /// address): on a host with several addresses, the one the mixes see.
    /// Default: the system's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_addr: Option<IpAddr>,
    /// ISO 3166-1 alpha-2 code of the jurisdiction the server runs in.
    pub jurisdiction: String,
    /// Who runs the server.
    pub operator: String,
    /// Most messages one mailbox holds; more are dropped.
    #[serde(default = "default_quota_messages")]
    pub quota_messages: u64,
    /// Most mailboxes on this server.
    #[serde(default = "default_max_mailboxes")]
    pub max_mailboxes: u64,
    /// Replay tags remembered per Bloom filter generation, per Sphinx key.
    #[serde(default = "default_replay_filter_capacity")]
    pub replay_filter_capacity: usize,
    /// MiB to keep free on the data directory's file system: below it, new
    /// packets are refused (not stored, not acknowledged: their senders
    /// retransmit) while polls are still served, and `/health` says why.
    #[serde(default = "default_min_free_mib")]
    pub min_free_mib: u64,
    /// Seconds into an epoch during which packets built for the previous
    /// epoch's Sphinx key are still accepted; then that key is erased.
    /// Default: a quarter epoch, clamped to 5..=300 s. At most
    /// `directory.epoch_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sphinx_key_grace_secs: Option<u64>,
    /// Test hook: append every stored payload to this file (bounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_log: Option<PathBuf>,
    /// Must be `true` for any `test_*` key to be accepted: a guard against a
    /// test setting reaching a real server.
    #[serde(default)]
    pub test_hooks: bool,
    /// Test hook (needs `test_hooks = true`): append one line per frame
    /// received to this file, `<unix micros> <peer ip> <frame length>
    /// <frame id>`, as the mixnode's hook of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_ingress_log: Option<PathBuf>,
    /// Test hook (needs `test_hooks = true`): append one line per packet
    /// opened to this file, `<frame id> <kind> <mailbox id hex>`, kind
    /// `message`, `reply` or `cover` (whose mailbox is `-`): what each
    /// arriving packet was and whose mailbox it was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_store_log: Option<PathBuf>,
    /// The directory authorities.
    pub directory: DirectoryConfig,
}

fn default_quota_messages() -> u64 {
    10_000
}

fn default_max_mailboxes() -> u64 {
    100_000
}

fn default_replay_filter_capacity() -> usize {
    1_000_000
}

fn default_min_free_mib() -> u64 {
    bastet_link::MIN_FREE_BYTES >> 20
}

fn bad(key: &str, why: &str) -> Error {
    Error::Config(format!("{key}: {why}"))
}

fn check_host_port(key: &str, value: &str) -> Result<()> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if ok && value.len() <= 255 {
        Ok(())
    } else {
        Err(bad(key, &format!("{value:?} must be host:port")))
    }
}

impl MailboxConfig {
    /// Loads `path` with environment overrides and validates it.
    pub fn load(path: &Path) -> Result<Self> {
        let config: MailboxConfig = bastet_directory::load_config(path, ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every key, naming the one at fault.
    pub fn validate(&self) -> Result<()> {
        let j = self.jurisdiction.as_bytes();
        if j.len() != 2 || !j.iter().all(u8::is_ascii_uppercase) {
            return Err(bad(
                "jurisdiction",
                "must be an ISO 3166-1 alpha-2 code such as CH",
            ));
        }
        if self.operator.is_empty()
            || self.operator.len() > 64
            || self.operator.chars().any(char::is_control)
        {
            return Err(bad("operator", "must be 1 to 64 printable characters"));
        }
        check_host_port("public_addr", &self.public_addr())?;
        check_host_port("public_api_addr", &self.public_api_addr())?;
        if self.quota_messages == 0 {
            return Err(bad("quota_messages", "must be at least 1"));
        }
        if self.max_mailboxes == 0 {
            return Err(bad("max_mailboxes", "must be at least 1"));
        }
        if self.replay_filter_capacity == 0 {
            return Err(bad("replay_filter_capacity", "must be at least 1"));
        }
        if self.min_free_mib == 0 || self.min_free_mib > 1 << 30 {
            return Err(bad(
                "min_free_mib",
                "must be between 1 and 1073741824 (MiB; RocksDB needs room to flush and compact)",
            ));
        }
        if self
            .sphinx_key_grace_secs
            .is_some_and(|g| g > self.directory.epoch_secs)
        {
            return Err(bad(
                "sphinx_key_grace_secs",
                "must be at most directory.epoch_secs",
            ));
        }
        for (key, path, what) in [
            (
                "test_ingress_log",
                &self.test_ingress_log,
                "records who sent what when",
            ),
            (
                "test_store_log",
                &self.test_store_log,
                "records what each packet was and for whom",
            ),
        ] {
            match path {
                Some(p) if p.as_os_str().is_empty() => {
                    return Err(bad(key, "must be a file path (or left out)"));
                }
                Some(_) if !self.test_hooks => {
                    return Err(bad(
                        key,
                        &format!("is a test hook that {what}: it needs `test_hooks = true`"),
                    ));
                }
                _ => {}
            }
        }
        let distinct = [self.listen, self.api_listen, self.metrics_listen];
        if distinct
            .iter()
            .any(|a| a.port() != 0 && distinct.iter().filter(|b| *b == a).count() > 1)
        {
            return Err(bad(
                "listen",
                "listen, api_listen and metrics_listen must be different addresses",
            ));
        }
        self.directory.validate()?;
        Ok(())
    }

    /// `min_free_mib` in bytes.
    pub fn min_free_bytes(&self) -> u64 {
        self.min_free_mib.saturating_mul(1 << 20)
    }

    /// The grace period in force: `sphinx_key_grace_secs` or its default.
    pub fn sphinx_key_grace_secs(&self) -> u64 {
        self.sphinx_key_grace_secs
            .unwrap_or_else(|| default_sphinx_key_grace_secs(self.directory.epoch_secs))
    }

    /// The packet link address published in the directory.
    pub fn public_addr(&self) -> String {
        self.public_addr
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// The API address published in the directory.
    pub fn public_api_addr(&self) -> String {
        self.public_api_addr
            .clone()
            .unwrap_or_else(|| self.api_listen.to_string())
    }
}

/// What `init` needs besides defaults.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Data directory to create.
    pub dir: PathBuf,
    /// Packet link address.
    pub listen: SocketAddr,
    /// HTTPS API address.
    pub api_listen: SocketAddr,
    /// Metrics address.
    pub metrics_listen: SocketAddr,
    /// Jurisdiction code.
    pub jurisdiction: String,
    /// Operator name.
    pub operator: String,
    /// Published packet link address, if not `listen`.
    pub public_addr: Option<String>,
    /// Published API address, if not `api_listen`.
    pub public_api_addr: Option<String>,
    /// The directory authorities.
    pub directory: DirectoryConfig,
    /// Test hook: where to log stored payloads.
    pub packet_log: Option<PathBuf>,
}

/// What `init` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitInfo {
    /// The node id, hex.
    pub node_id: String,
    /// The Ed25519 identity public key, hex.
    pub identity_key: String,
    /// Pin of the TLS certificate (packet link and API), hex.
    pub tls_pin: String,
    /// Path of the config written.
    pub config: PathBuf,
}

/// Reads a `--directory` file: a TOML file holding exactly a
/// [`DirectoryConfig`].
pub fn read_directory_file(path: &Path) -> Result<DirectoryConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let directory: DirectoryConfig =
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    directory.validate()?;
    Ok(directory)
}

/// Creates the data directory with fresh keys, a TLS certificate and a
/// commented `mailbox.toml`. Refuses to overwrite an existing identity key.
pub fn init(options: InitOptions) -> Result<InitInfo> {
    let file_err = |path: &Path, e: std::io::Error| Error::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    let dir = &options.dir;
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| file_err(dir, e))?;
    let identity_path = dir.join("identity.key");
    if identity_path.exists() {
        return Err(Error::File {
            path: identity_path,
            why: "already exists; refusing to overwrite a node's identity key".into(),
        });
    }
    let config = MailboxConfig {
        data_dir: dir.clone(),
        listen: options.listen,
        public_addr: options.public_addr,
        api_listen: options.api_listen,
        public_api_addr: options.public_api_addr,
        metrics_listen: options.metrics_listen,
        source_addr: None,
        jurisdiction: options.jurisdiction,
        operator: options.operator,
        quota_messages: default_quota_messages(),
        max_mailboxes: default_max_mailboxes(),
        replay_filter_capacity: default_replay_filter_capacity(),
        min_free_mib: default_min_free_mib(),
        sphinx_key_grace_secs: None,
        packet_log: options.packet_log,
        test_hooks: false,
        test_ingress_log: None,
        test_store_log: None,
        directory: options.directory,
    };
    config.validate()?;
    let keys = NodeKeys::generate();
    let tls = TlsIdentity::generate()?;
    keys.save(&dir)?;
    // The current and the next epoch's Sphinx keys; `run` keeps rotating.
    SphinxKeyRing::open(
        &dir,
        config.directory.epoch_secs,
        config.sphinx_key_grace_secs(),
    )?
    .rotate(unix_now())?;
    tls.save(&dir)?;
    let path = dir.join("mailbox.toml");
    std::fs::write(&path, commented(&config)?).map_err(|e| file_err(&path, e))?;
    Ok(InitInfo {
        node_id: keys.node_id().to_hex(),
        identity_key: hex::encode(keys.identity.verifying_key().as_bytes()),
        tls_pin: tls.pin().to_hex(),
        config: path,
    })
}

fn value(v: impl Into<toml::Value>) -> String {
    v.into().to_string()
}

/// The config file text, every key with a comment saying what it does.
fn commented(c: &MailboxConfig) -> Result<String> {
    let directory = c.directory.to_commented_section()?;
    let optional = |key: &str, v: &Option<String>, example: &str| match v {
        Some(v) => format!("{key} = {}", value(v.as_str())),
        None => format!("# {key} = {}", value(example)),
    };
    let grace = match c.sphinx_key_grace_secs {
        Some(g) => format!("sphinx_key_grace_secs = {g}"),
        None => format!(
            "# sphinx_key_grace_secs = {}",
            default_sphinx_key_grace_secs(c.directory.epoch_secs)
        ),
    };
    let packet_log = match &c.packet_log {
        Some(p) => format!("packet_log = {}", value(p.display().to_string())),
        None => "# packet_log = \"/path/to/stored-payloads.bin\"".into(),
    };
    Ok(format!(
        "# Bastet mailbox server: `bastet-mailbox run --config <this file>`.\n\
         # Every key can be overridden from the environment as {ENV_PREFIX}__<KEY>\n\
         # (for example {ENV_PREFIX}__QUOTA_MESSAGES=5000). Unknown keys are refused.\n\
         \n\
         # Holds identity.key and sphinx-keys/<epoch>.key (secret, mode 0600),\n\
         # tls-cert.pem and tls-key.pem, and db/ (the RocksDB message store).\n\
         data_dir = {data_dir}\n\
         \n\
         # Packet link (TLS, pinned): the last mixnode of each route delivers here.\n\
         listen = {listen}\n\
         # host:port published in the directory for the packet link (default: listen).\n\
         {public_addr}\n\
         \n\
         # HTTPS API where mailbox owners register and poll (same certificate as the link).\n\
         api_listen = {api_listen}\n\
         # host:port published in the directory for the API (default: api_listen).\n\
         {public_api_addr}\n\
         \n\
         # Plain HTTP /health and Prometheus /metrics: keep it on loopback or a\n\
         # management network.\n\
         metrics_listen = {metrics_listen}\n\
         \n\
         # Local address connections into the mixnet (acks) leave from, on a host with\n\
         # several addresses: the one the mixes see. Default: the system's choice.\n\
         {source_addr}\n\
         \n\
         # Where this server runs (ISO 3166-1 alpha-2, in capitals); published so that\n\
         # clients can choose routes by jurisdiction.\n\
         jurisdiction = {jurisdiction}\n\
         # Who runs it (1 to 64 characters); published next to the jurisdiction.\n\
         operator = {operator}\n\
         \n\
         # Most messages one mailbox holds; further packets for it are dropped\n\
         # (metric packets_dropped{{reason=\"quota\"}}) until its owner deletes some.\n\
         quota_messages = {quota}\n\
         # Most mailboxes this server registers.\n\
         max_mailboxes = {max_mailboxes}\n\
         # Replay tags remembered per Bloom filter generation (two generations are\n\
         # kept, {fp} false-positive rate each; about 7.5 MB per million in all),\n\
         # one filter per Sphinx key held (at most three: current, next, previous).\n\
         replay_filter_capacity = {replay}\n\
         # MiB to keep free on data_dir's file system. Below it, new packets are\n\
         # refused (packets_dropped{{reason=\"disk_full\"}}; not acknowledged, so\n\
         # their senders retransmit) while owners can still poll and delete, and\n\
         # /health answers 503 with the reason. Room for RocksDB to flush and compact.\n\
         min_free_mib = {min_free}\n\
         # Sphinx keys rotate per epoch. For this many seconds into an epoch, packets\n\
         # built for the previous epoch's key are still accepted; then that key is\n\
         # erased from memory and disk and its packets dropped (reason=\"unknown_key\").\n\
         # Default: a quarter epoch, at least 5 and at most 300; at most epoch_secs.\n\
         {grace}\n\
         \n\
         # FOR TESTS ONLY: append every stored payload to this file (at most 64 MiB).\n\
         {packet_log}\n\
         # TEST HOOKS ONLY, refused unless test_hooks = true. test_ingress_log appends a\n\
         # line per packet received to a file, \"<unix micros> <peer ip> <frame length>\n\
         # <frame id>\" (who sent what when); test_store_log a line per packet opened,\n\
         # \"<frame id> <message|reply|cover> <mailbox id>\" (what it was, for whom).\n\
         # Never on a real server; each stops at 64 MiB.\n\
         # test_hooks = false\n\
         # test_ingress_log = \"/tmp/bastet-mailbox-ingress.log\"\n\
         # test_store_log = \"/tmp/bastet-mailbox-store.log\"\n\
         \n\
         # The directory authorities this server publishes its descriptor to.\n\
         {directory}",
        data_dir = value(c.data_dir.display().to_string()),
        listen = value(c.listen.to_string()),
        public_addr = optional("public_addr", &c.public_addr, "mailbox.example.org:9000"),
        api_listen = value(c.api_listen.to_string()),
        public_api_addr = optional(
            "public_api_addr",
            &c.public_api_addr,
            "mailbox.example.org:9443"
        ),
        metrics_listen = value(c.metrics_listen.to_string()),
        source_addr = match c.source_addr {
            Some(a) => format!("source_addr = {}", value(a.to_string())),
            None => "# source_addr = \"192.0.2.7\"".into(),
        },
        jurisdiction = value(c.jurisdiction.as_str()),
        operator = value(c.operator.as_str()),
        quota = c.quota_messages,
        max_mailboxes = c.max_mailboxes,
        fp = bastet_sphinx::REPLAY_FILTER_FP_RATE,
        replay = c.replay_filter_capacity,
        min_free = c.min_free_mib,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bastet_directory::AuthorityRef;

    use super::*;

    fn directory() -> DirectoryConfig {
        DirectoryConfig {
            authorities: vec![AuthorityRef {
                url: "https://127.0.0.1:7000".into(),
                identity_key: hex::encode(
                    bastet_directory::SigningKey::from_bytes(&[1; 32])
                        .verifying_key()
                        .as_bytes(),
                ),
                tls_pin: hex::encode([2; 32]),
            }],
            threshold: None,
            epoch_secs: 60,
        }
    }

    fn options(dir: &Path) -> InitOptions {
        InitOptions {
            dir: dir.join("node"),
            listen: "127.0.0.1:9000".parse().unwrap(),
            api_listen: "127.0.0.1:9001".parse().unwrap(),
            metrics_listen: "127.0.0.1:9002".parse().unwrap(),
            jurisdiction: "CH".into(),
            operator: "Org \"quoted\"".into(),
            public_addr: None,
            public_api_addr: Some("mb.example:443".into()),
            directory: directory(),
            packet_log: None,
        }
    }

    #[test]
    fn init_writes_a_config_that_loads_and_refuses_to_run_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let info = init(options(tmp.path())).unwrap();
        let text = std::fs::read_to_string(&info.config).unwrap();
        assert!(text.contains("\nquota_messages = 10000\n"), "{text}");
        assert!(text.contains("# Most messages one mailbox holds"), "{text}");
        let config = MailboxConfig::load(&info.config).unwrap();
        assert_eq!(config.operator, "Org \"quoted\"");
        assert_eq!(config.public_addr(), "127.0.0.1:9000");
        assert_eq!(config.public_api_addr(), "mb.example:443");
        assert_eq!(config.quota_messages, 10_000);
        assert_eq!(config.directory, directory());
        let keys = NodeKeys::load(&config.data_dir).unwrap();
        assert_eq!(keys.node_id().to_hex(), info.node_id);
        assert_eq!(config.sphinx_key_grace_secs(), 15);
        assert!(!config.data_dir.join("sphinx.key").exists());
        let ring = SphinxKeyRing::open(&config.data_dir, 60, 15).unwrap();
        let epochs = ring.epochs();
        assert_eq!(epochs.len(), 2, "{epochs:?}");
        assert_eq!(epochs[1], epochs[0] + 1);

        let again = init(options(tmp.path())).unwrap_err();
        assert!(again.to_string().contains("identity.key"), "{again}");
        // The first node's keys are untouched.
        assert_eq!(
            NodeKeys::load(&config.data_dir).unwrap().node_id().to_hex(),
            info.node_id
        );
    }

    #[test]
    fn test_hooks_need_the_switch_and_source_addr_must_be_an_ip_address() {
        let tmp = tempfile::tempdir().unwrap();
        let info = init(options(tmp.path())).unwrap();
        let text = std::fs::read_to_string(&info.config).unwrap();
        assert!(text.contains("\n# source_addr = "), "{text}");
        assert!(text.contains("\n# test_store_log = "), "{text}");
        let config = MailboxConfig::load(&info.config).unwrap();
        assert!(!config.test_hooks && config.source_addr.is_none());
        let load = |extra: &str| {
            std::fs::write(&info.config, format!("{extra}\n{text}")).unwrap();
            MailboxConfig::load(&info.config)
        };
        for key in ["test_ingress_log", "test_store_log"] {
            let err = load(&format!("{key} = \"/tmp/x.log\""))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("test_hooks"), "{err}");
        }
        let on =
            load("test_hooks = true\ntest_store_log = \"/tmp/s.log\"\nsource_addr = \"127.0.0.9\"")
                .unwrap();
        assert_eq!(on.test_store_log, Some(PathBuf::from("/tmp/s.log")));
        assert_eq!(on.source_addr, Some("127.0.0.9".parse().unwrap()));
        let err = load("source_addr = \"mailbox.example\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("source_addr"), "{err}");
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let info = init(options(tmp.path())).unwrap();
        let text = std::fs::read_to_string(&info.config).unwrap();

        let bad_jurisdiction = text.replace("jurisdiction = \"CH\"", "jurisdiction = \"Swiss\"");
        std::fs::write(&info.config, bad_jurisdiction).unwrap();
        let err = MailboxConfig::load(&info.config).unwrap_err();
        assert!(err.to_string().contains("jurisdiction"), "{err}");

        let unknown = text.replace("quota_messages =", "quota_mesages =");
        std::fs::write(&info.config, unknown).unwrap();
        let err = MailboxConfig::load(&info.config).unwrap_err();
        assert!(err.to_string().contains("quota_mesages"), "{err}");

        let zero = text.replace("quota_messages = 10000", "quota_messages = 0");
        std::fs::write(&info.config, zero).unwrap();
        let err = MailboxConfig::load(&info.config).unwrap_err();
        assert!(err.to_string().contains("quota_messages"), "{err}");

        let long_grace = text.replace("# sphinx_key_grace_secs = 15", "sphinx_key_grace_secs = 61");
        std::fs::write(&info.config, long_grace).unwrap();
        let err = MailboxConfig::load(&info.config).unwrap_err();
        assert!(err.to_string().contains("sphinx_key_grace_secs"), "{err}");
    }
}
