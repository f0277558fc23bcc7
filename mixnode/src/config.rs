//! `mixnode.toml`: what `init` writes and `run` reads.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bastet_directory::{
    DirectoryConfig, NodeKeys, SphinxKeyRing, default_sphinx_key_grace_secs, unix_now,
};
use bastet_link::TlsIdentity;
use serde::{Deserialize, Serialize};

use crate::{Error, MixerConfig, Result};

/// Name of the config file `init` writes into the data directory.
pub const CONFIG_FILE: &str = "mixnode.toml";
/// Prefix of environment overrides: `BASTET_MIXNODE__LISTEN=...`.
pub const ENV_PREFIX: &str = "BASTET_MIXNODE";

/// The mixnode's configuration (`mixnode.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixnodeConfig {
    /// Holds `identity.key`, `sphinx-keys/<epoch>.key`, `tls-cert.pem`,
    /// `tls-key.pem`.
    pub data_dir: PathBuf,
    /// Where the packet link (TLS) listens.
    pub listen: SocketAddr,
    /// `host:port` published in the directory; default: the bound `listen`.
    #[serde(default)]
    pub public_addr: Option<String>,
    /// Plain-HTTP `/health` and `/metrics`.
    pub metrics_listen: SocketAddr,
    /// Local address connections to next hops leave from (an IP address):
    /// on a host with several addresses, the one next hops see. Default:
    /// the system's choice.
    #[serde(default)]
    pub source_addr: Option<IpAddr>,
    /// Where the call circuit listener (TLS, same certificate) listens:
    /// this node relays calls (`bastet-circuit`) only when it is set.
    #[serde(default)]
    pub circuit_listen: Option<SocketAddr>,
    /// `host:port` of the circuit listener published in the directory;
    /// default: the bound `circuit_listen`.
    #[serde(default)]
    pub public_circuit_addr: Option<String>,
    /// Most call circuits through this node at once.
    #[serde(default = "default_max_circuits")]
    pub max_circuits: usize,
    /// ISO 3166-1 alpha-2 code of where the node runs.
    pub jurisdiction: String,
    /// Who runs the node.
    pub operator: String,
    /// Packets asking for a longer delay are dropped.
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
    /// Most packets held in the delay queue at once.
    #[serde(default = "default_max_delayed_packets")]
    pub max_delayed_packets: usize,
    /// Packets waiting to be unwrapped before new ones are dropped.
    #[serde(default = "default_ingress_queue")]
    pub ingress_queue: usize,
    /// A packet that waited longer than this, in milliseconds, to be
    /// unwrapped is dropped as overload without any Sphinx work: the bound
    /// on the delay an overloaded node adds to the packets it lets through.
    #[serde(default = "default_ingress_max_wait_ms")]
    pub ingress_max_wait_ms: u64,
    /// Where the Sphinx work runs: `"runtime"` (default), one task per
    /// core on the node's async runtime, beside the connections; or
    /// `"threads"`, one OS thread per core beside the runtime's. See
    /// [`PacketWork`].
    #[serde(default)]
    pub packet_work: PacketWork,
    /// Packets per second this node is provisioned for. Sizes the replay
    /// filter: by default it remembers every packet a Sphinx key can see
    /// in its life (`epoch_secs` + grace) at this rate.
    #[serde(default = "default_max_packet_rate")]
    pub max_packet_rate: u32,
    /// Replay tags remembered at least per Sphinx key (Bloom filter, false
    /// positives ~1e-6), overriding the size derived from
    /// `max_packet_rate`; see [`MixnodeConfig::replay_filter_capacity`].
    #[serde(default)]
    pub replay_filter_capacity: Option<usize>,
    /// Seconds into an epoch during which packets built for the previous
    /// epoch's Sphinx key are still processed; then that key is erased.
    /// Default: a quarter epoch, clamped to 5..=300 s. At most
    /// `directory.epoch_secs`.
    #[serde(default)]
    pub sphinx_key_grace_secs: Option<u64>,
    /// λ_M: this node's own cover loops per second, sent as a Poisson
    /// process along the rest of a route to a mailbox server, which drops
    /// them and sends their ack back through the earlier layers to this
    /// node. 0 turns cover off; at most 100.
    #[serde(default = "default_cover_rate")]
    pub cover_rate: f64,
    /// Mean per-hop delay, in milliseconds, that cover loops ask each
    /// other mix on the way for: set it to the `mix_delay_ms` clients use (default 50),
    /// so that cover is held like their packets.
    #[serde(default = "default_cover_mix_delay_ms")]
    pub cover_mix_delay_ms: u64,
    /// Test hook: append every packet sent onward to this file.
    #[serde(default)]
    pub packet_log: Option<PathBuf>,
    /// Must be `true` for any `test_*` fault-injection key to take effect:
    /// a guard against a test setting reaching a real node.
    #[serde(default)]
    pub test_hooks: bool,
    /// Test hook (needs `test_hooks = true`): drop this fraction (0 to 1)
    /// of received packets at random before processing them, counted as
    /// `packets_dropped{reason="injected_loss"}`.
    #[serde(default)]
    pub test_drop_fraction: f64,
    /// Test hook (needs `test_hooks = true`): append one line per frame
    /// received to this file, `<unix micros> <peer ip> <frame length>`, so
    /// that a test can see the timing and size of one sender's packets.
    #[serde(default)]
    pub test_ingress_log: Option<PathBuf>,
    /// Test hook (needs `test_hooks = true`): append one line per packet
    /// taken into the delay queue to this file, `<in frame id> <out frame
    /// id>` (frame ids as in the ingress log, [`bastet_link::frame_id`]):
    /// which packet left for which came in, the one thing only this node
    /// knows. Its own cover loops are `- <out frame id>`, a loop ending
    /// here `<in frame id> -`.
    #[serde(default)]
    pub test_hop_log: Option<PathBuf>,
    /// Test hook (needs `test_hooks = true`): corrupt this fraction, from 0
    /// to 1, of the call circuit cells this node relays, so that the next
    /// hop that authenticates them drops them: loss injected at a relay.
    #[serde(default)]
    pub test_cell_loss: f64,
    /// Test hook (needs `test_hooks = true`): append one line per call
    /// circuit cell read to this file, `<unix micros> <circuit> <out|back>
    /// <bytes>`, to measure cell timing on the wire.
    #[serde(default)]
    pub test_cell_log: Option<PathBuf>,
    /// The directory authorities.
    pub directory: DirectoryConfig,
}

/// Where a mixnode unwraps packets.
///
/// With `Runtime` a packet is read, unwrapped and forwarded by tasks of the
/// one async runtime, which has a worker thread per core: no thread
/// hand-off on the way and no second thread competing for a core, so a
/// packet never waits for the kernel's scheduler to switch threads (a
/// slice of about 3 ms on Linux). A packet task yields after each packet,
/// so the connections' reads and writes run between packets. `Threads`
/// runs the same work on dedicated OS threads; it is kept for comparison
/// (`bastet-testnet bench mixnode --packet-work threads`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum PacketWork {
    /// Packet tasks on the async runtime's workers.
    #[default]
    Runtime,
    /// Dedicated packet threads, one per core.
    Threads,
}

impl PacketWork {
    /// The value as written in `mixnode.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            PacketWork::Runtime => "runtime",
            PacketWork::Threads => "threads",
        }
    }
}

impl TryFrom<String> for PacketWork {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "runtime" => Ok(PacketWork::Runtime),
            "threads" => Ok(PacketWork::Threads),
            // The loader adds "for key `packet_work`".
            other => Err(format!(
                "expected \"runtime\" or \"threads\", found {other:?}"
            )),
        }
    }
}

fn default_max_circuits() -> usize {
    1024
}

fn default_max_delay_ms() -> u64 {
    30_000
}

fn default_max_delayed_packets() -> usize {
    20_000
}

fn default_ingress_queue() -> usize {
    8192
}

fn default_ingress_max_wait_ms() -> u64 {
    100
}

fn default_max_packet_rate() -> u32 {
    2_000
}

fn default_cover_rate() -> f64 {
    1.0
}

fn default_cover_mix_delay_ms() -> u64 {
    50
}

/// Largest `cover_rate`, packets per second.
const MAX_COVER_RATE: f64 = 100.0;
/// Largest `cover_mix_delay_ms`: the clients' own limit on `mix_delay_ms`.
const MAX_COVER_MIX_DELAY_MS: u64 = 10_000;

/// Largest `replay_filter_capacity` accepted: about 750 MB of filter.
const MAX_REPLAY_FILTER_CAPACITY: usize = 100_000_000;
/// Largest `ingress_max_wait_ms`: longer waits are a backlog, not a queue.
const MAX_INGRESS_WAIT_MS: u64 = 10_000;
/// Largest `max_delay_ms`: an hour; Loopix delays are seconds.
const MAX_DELAY_MS: u64 = 3_600_000;

impl MixnodeConfig {
    /// Loads `path` with `BASTET_MIXNODE__KEY` environment overrides and
    /// validates it.
    pub fn load(path: &Path) -> Result<Self> {
        let config: MixnodeConfig = bastet_directory::load_config(path, ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value, naming the key at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |key, why: &str| {
            Err(Error::Config {
                key,
                why: why.to_string(),
            })
        };
        let j = self.jurisdiction.as_bytes();
        if j.len() != 2 || !j.iter().all(u8::is_ascii_uppercase) {
            return bad(
                "jurisdiction",
                "must be an ISO 3166-1 alpha-2 code in capitals, such as DE",
            );
        }
        if self.operator.is_empty()
            || self.operator.len() > 64
            || self.operator.chars().any(char::is_control)
        {
            return bad("operator", "must be 1 to 64 printable characters");
        }
        match &self.public_addr {
            Some(a) if a.is_empty() || a.len() > 255 || !a.contains(':') => {
                return bad("public_addr", "must be host:port, at most 255 bytes");
            }
            None if self.listen.ip().is_unspecified() => {
                return bad(
                    "public_addr",
                    "is required when `listen` is a wildcard address: peers need an address to connect to",
                );
            }
            _ => {}
        }
        if self.metrics_listen == self.listen && self.listen.port() != 0 {
            return bad("metrics_listen", "must differ from `listen`");
        }
        if let Some(c) = self.circuit_listen
            && c.port() != 0
            && (c == self.listen || c == self.metrics_listen)
        {
            return bad(
                "circuit_listen",
                "must differ from `listen` and `metrics_listen`",
            );
        }
        match &self.public_circuit_addr {
            Some(a) if a.is_empty() || a.len() > 255 || !a.contains(':') => {
                return bad(
                    "public_circuit_addr",
                    "must be host:port, at most 255 bytes",
                );
            }
            Some(_) if self.circuit_listen.is_none() => {
                return bad("public_circuit_addr", "needs `circuit_listen`");
            }
            None if self.circuit_listen.is_some_and(|c| c.ip().is_unspecified()) => {
                return bad(
                    "public_circuit_addr",
                    "is required when `circuit_listen` is a wildcard address",
                );
            }
            _ => {}
        }
        if !(1..=1_000_000).contains(&self.max_circuits) {
            return bad("max_circuits", "must be between 1 and 1000000");
        }
        if !(0.0..=1.0).contains(&self.test_cell_loss) {
            return bad("test_cell_loss", "must be between 0 and 1");
        }
        if self.test_cell_loss > 0.0 && !self.test_hooks {
            return bad(
                "test_cell_loss",
                "is a fault-injection test hook: it needs `test_hooks = true`",
            );
        }
        match &self.test_cell_log {
            Some(p) if p.as_os_str().is_empty() => {
                return bad("test_cell_log", "must be a file path (or left out)");
            }
            Some(_) if !self.test_hooks => {
                return bad(
                    "test_cell_log",
                    "is a test hook that records call cell timing: it needs `test_hooks = true`",
                );
            }
            _ => {}
        }
        if self.max_delay_ms == 0 || self.max_delay_ms > MAX_DELAY_MS {
            return bad("max_delay_ms", "must be between 1 and 3600000");
        }
        if self.max_delayed_packets == 0 {
            return bad("max_delayed_packets", "must be at least 1");
        }
        if self.ingress_queue == 0 {
            return bad("ingress_queue", "must be at least 1");
        }
        if !(1..=MAX_INGRESS_WAIT_MS).contains(&self.ingress_max_wait_ms) {
            return bad(
                "ingress_max_wait_ms",
                &format!("must be from 1 to {MAX_INGRESS_WAIT_MS}"),
            );
        }
        if self.max_packet_rate == 0 {
            return bad("max_packet_rate", "must be at least 1");
        }
        if self
            .replay_filter_capacity
            .is_some_and(|c| c == 0 || c > MAX_REPLAY_FILTER_CAPACITY)
        {
            return bad("replay_filter_capacity", "must be between 1 and 100000000");
        }
        if self
            .sphinx_key_grace_secs
            .is_some_and(|g| g > self.directory.epoch_secs)
        {
            return bad(
                "sphinx_key_grace_secs",
                "must be at most directory.epoch_secs",
            );
        }
        if !(0.0..=MAX_COVER_RATE).contains(&self.cover_rate) {
            return bad(
                "cover_rate",
                "must be between 0 (off) and 100 packets per second",
            );
        }
        if self.cover_mix_delay_ms > MAX_COVER_MIX_DELAY_MS {
            return bad("cover_mix_delay_ms", "must be at most 10000");
        }
        if self
            .packet_log
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return bad("packet_log", "must be a file path (or left out)");
        }
        if !(0.0..=1.0).contains(&self.test_drop_fraction) {
            return bad("test_drop_fraction", "must be between 0 and 1");
        }
        if self.test_drop_fraction > 0.0 && !self.test_hooks {
            return bad(
                "test_drop_fraction",
                "is a fault-injection test hook: it needs `test_hooks = true`",
            );
        }
        match &self.test_ingress_log {
            Some(p) if p.as_os_str().is_empty() => {
                return bad("test_ingress_log", "must be a file path (or left out)");
            }
            Some(_) if !self.test_hooks => {
                return bad(
                    "test_ingress_log",
                    "is a test hook that records who sent what when: it needs `test_hooks = true`",
                );
            }
            _ => {}
        }
        match &self.test_hop_log {
            Some(p) if p.as_os_str().is_empty() => {
                return bad("test_hop_log", "must be a file path (or left out)");
            }
            Some(_) if !self.test_hooks => {
                return bad(
                    "test_hop_log",
                    "is a test hook that records which packet left for which came in (it \
                     undoes this node's mixing): it needs `test_hooks = true`",
                );
            }
            _ => {}
        }
        self.directory.validate().map_err(|e| Error::Config {
            key: "directory",
            why: e.to_string(),
        })
    }

    /// The grace period in force: `sphinx_key_grace_secs` or its default.
    pub fn sphinx_key_grace_secs(&self) -> u64 {
        self.sphinx_key_grace_secs
            .unwrap_or_else(|| default_sphinx_key_grace_secs(self.directory.epoch_secs))
    }

    /// How long packets arrive for one Sphinx key: its epoch, then the
    /// grace period into the next.
    pub fn key_life_secs(&self) -> u64 {
        self.directory.epoch_secs + self.sphinx_key_grace_secs()
    }

    /// `max_packet_rate` × the key's life, at most the largest filter
    /// accepted (see [`MixnodeConfig::replay_filter_capped`]).
    fn derived_replay_filter_capacity(&self) -> usize {
        usize::try_from(u64::from(self.max_packet_rate).saturating_mul(self.key_life_secs()))
            .unwrap_or(usize::MAX)
            .min(MAX_REPLAY_FILTER_CAPACITY)
    }

    /// Whether the replay filter `max_packet_rate` asks for is larger than
    /// the largest accepted (100 million tags, about 750 MB), so that it
    /// was capped: at that rate it forgets packets before their key is
    /// erased. The node warns at start.
    pub fn replay_filter_capped(&self) -> bool {
        self.replay_filter_capacity.is_none()
            && u64::from(self.max_packet_rate).saturating_mul(self.key_life_secs())
                > MAX_REPLAY_FILTER_CAPACITY as u64
    }

    /// Replay tags each Sphinx key's filter remembers at least:
    /// `replay_filter_capacity` if set, else `max_packet_rate` × the key's
    /// life, so that no packet is forgotten before its key is erased while
    /// the node runs within its rate. Above that rate the filter's oldest
    /// generation is forgotten first (`replay_filter_turnovers_total`
    /// counts it): a replay of a packet older than that would pass.
    pub fn replay_filter_capacity(&self) -> usize {
        self.replay_filter_capacity
            .unwrap_or_else(|| self.derived_replay_filter_capacity())
    }

    /// The [`crate::Mixer`]'s part of this config.
    pub fn mixer(&self) -> MixerConfig {
        MixerConfig {
            max_delay: Duration::from_millis(self.max_delay_ms),
            max_delayed_packets: self.max_delayed_packets,
            replay_filter_capacity: self.replay_filter_capacity(),
        }
    }

    /// The mean per-hop delay cover packets ask for.
    pub fn cover_mix_delay(&self) -> Duration {
        Duration::from_millis(self.cover_mix_delay_ms)
    }

    /// The file as `init` writes it: every key with a comment.
    pub fn to_commented_toml(&self) -> Result<String> {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let path = |p: &Path| q(&p.to_string_lossy());
        let public_addr = match &self.public_addr {
            Some(a) => format!("public_addr = {}", q(a)),
            None => "# public_addr = \"mix.example.org:4100\"".to_string(),
        };
        let grace = match self.sphinx_key_grace_secs {
            Some(g) => format!("sphinx_key_grace_secs = {g}"),
            None => format!(
                "# sphinx_key_grace_secs = {}",
                default_sphinx_key_grace_secs(self.directory.epoch_secs)
            ),
        };
        let packet_log = match &self.packet_log {
            Some(p) => format!("packet_log = {}", path(p)),
            None => "# packet_log = \"/tmp/bastet-mix-packets.bin\"".to_string(),
        };
        let source_addr = match &self.source_addr {
            Some(a) => format!("source_addr = {}", q(&a.to_string())),
            None => "# source_addr = \"192.0.2.7\"".to_string(),
        };
        let circuit_listen = match &self.circuit_listen {
            Some(a) => format!("circuit_listen = {}", q(&a.to_string())),
            None => "# circuit_listen = \"0.0.0.0:4102\"".to_string(),
        };
        let public_circuit_addr = match &self.public_circuit_addr {
            Some(a) => format!("public_circuit_addr = {}", q(a)),
            None => "# public_circuit_addr = \"mix.example.org:4102\"".to_string(),
        };
        let directory = self.directory.to_commented_section()?;
        Ok(format!(
            "# Bastet mixnode, written by `bastet-mixnode init`.\n\
             # Any key can be overridden from the environment as BASTET_MIXNODE__<KEY>,\n\
             # e.g. BASTET_MIXNODE__LISTEN=0.0.0.0:4100. Unknown keys are refused.\n\
             \n\
             # Holds identity.key and sphinx-keys/<epoch>.key (secret: mode 0600),\n\
             # tls-cert.pem, tls-key.pem.\n\
             data_dir = {data_dir}\n\
             # Address the packet link (TLS 1.3, pinned certificates) listens on.\n\
             listen = {listen}\n\
             # host:port other nodes connect to, published in the directory. Default: listen.\n\
             {public_addr}\n\
             # Plain-HTTP /health and Prometheus /metrics. Keep it on loopback or a\n\
             # management network.\n\
             metrics_listen = {metrics_listen}\n\
             # Local address connections to next hops leave from, on a host with several\n\
             # addresses: the one the next hops see. Default: the system's choice.\n\
             {source_addr}\n\
             # Call circuits (TLS, same certificate): the node relays calls only when\n\
             # circuit_listen is set. Cells pass with no mixing delay, one TLS connection\n\
             # per circuit per link.\n\
             {circuit_listen}\n\
             # host:port of the circuit listener published in the directory.\n\
             # Default: circuit_listen.\n\
             {public_circuit_addr}\n\
             # Most call circuits through this node at once; more are refused (overload).\n\
             max_circuits = {max_circuits}\n\
             # Where the node runs (ISO 3166-1 alpha-2, in capitals); published so that\n\
             # clients can choose routes by jurisdiction.\n\
             jurisdiction = {jurisdiction}\n\
             # Who runs the node (1 to 64 characters); published next to the jurisdiction.\n\
             operator = {operator}\n\
             # Packets asking to be held longer than this are dropped (delay_too_long).\n\
             max_delay_ms = {max_delay_ms}\n\
             # Most packets held at once; more are dropped (queue_full).\n\
             max_delayed_packets = {max_delayed_packets}\n\
             # Packets waiting to be unwrapped; more are dropped (overload).\n\
             ingress_queue = {ingress_queue}\n\
             # A packet that waited longer than this (ms) to be unwrapped is dropped\n\
             # (overload) before any Sphinx work: the most delay an overloaded node adds.\n\
             ingress_max_wait_ms = {ingress_max_wait_ms}\n\
             # Where packets are unwrapped: \"runtime\", one task per core beside the\n\
             # connections on the node's async runtime (no thread hand-offs), or\n\
             # \"threads\", one OS thread per core beside the runtime's.\n\
             packet_work = {packet_work}\n\
             # Packets per second this node is provisioned for. It sizes the replay\n\
             # filter to remember every packet of a Sphinx key's life (epoch_secs plus\n\
             # the grace below) at this rate: 3.8 bytes per tag for each of two Bloom\n\
             # filter generations, false positives at most 1e-6; one filter per key held\n\
             # (at most three: current, next, previous), only the one in use filling.\n\
             # Above this rate the oldest generation is forgotten early\n\
             # (replay_filter_turnovers_total) and replays older than it would pass.\n\
             max_packet_rate = {max_packet_rate}\n\
             # Replay tags per filter generation, overriding the size max_packet_rate gives\n\
             # (here {derived} for the epoch length below).\n\
             {replay_filter_capacity}\n\
             # Sphinx keys rotate per epoch. For this many seconds into an epoch, packets\n\
             # built for the previous epoch's key are still processed; then that key is\n\
             # erased from memory and disk and its packets dropped (unknown_key).\n\
             # Default: a quarter epoch, at least 5 and at most 300; at most epoch_secs.\n\
             {grace}\n\
             # Cover traffic (Loopix lambda_M): this node sends its own cover packets as a\n\
             # Poisson process of cover_rate packets per second (0 = off, at most 100).\n\
             # Each takes the path a client's packet takes from here on (a random mix for\n\
             # each mix hop still to come, then a random mailbox server, which discards it)\n\
             # on the same links as forwarded packets, so that they look alike, and loops\n\
             # back as the server's ack through a random mix of each earlier layer\n\
             # (cover_loops_returned / cover_loops_lost).\n\
             cover_rate = {cover_rate:?}\n\
             # Each mix on a cover loop's way holds it for an exponential delay of this\n\
             # mean, in milliseconds (at most 10000): keep it equal to the mix_delay_ms\n\
             # clients use (default 50), so that cover is held like their packets.\n\
             cover_mix_delay_ms = {cover_mix_delay_ms}\n\
             # TEST HOOK ONLY: append every packet forwarded to this file (stops at 64 MiB);\n\
             # the node's own cover packets are not logged.\n\
             {packet_log}\n\
             # TEST HOOKS ONLY, refused unless test_hooks = true. test_drop_fraction (fault\n\
             # injection) drops that fraction of received packets at random;\n\
             # test_ingress_log appends a line per packet received to a file,\n\
             # \"<unix micros> <peer ip> <frame length> <frame id>\" (who sent what when);\n\
             # test_hop_log a line per packet held, \"<in frame id> <out frame id>\" (which\n\
             # packet left for which: it undoes the mixing). Never on a real node; each\n\
             # stops at 64 MiB.\n\
             # test_hooks = false\n\
             # test_drop_fraction = 0.0\n\
             # test_ingress_log = \"/tmp/bastet-mix-ingress.log\"\n\
             # test_hop_log = \"/tmp/bastet-mix-hops.log\"\n\
             # test_cell_loss (fault injection) corrupts that fraction of call cells so the\n\
             # next hop drops them; test_cell_log a line per call cell read,\n\
             # \"<unix micros> <circuit> <out|back> <bytes>\".\n\
             # test_cell_loss = 0.0\n\
             # test_cell_log = \"/tmp/bastet-mix-cells.log\"\n\
             \n\
             # Directory authorities this node publishes to and trusts for the consensus.\n\
             {directory}",
            data_dir = path(&self.data_dir),
            listen = q(&self.listen.to_string()),
            metrics_listen = q(&self.metrics_listen.to_string()),
            jurisdiction = q(&self.jurisdiction),
            operator = q(&self.operator),
            max_delay_ms = self.max_delay_ms,
            max_delayed_packets = self.max_delayed_packets,
            ingress_queue = self.ingress_queue,
            ingress_max_wait_ms = self.ingress_max_wait_ms,
            packet_work = q(self.packet_work.as_str()),
            max_circuits = self.max_circuits,
            max_packet_rate = self.max_packet_rate,
            derived = self.derived_replay_filter_capacity(),
            replay_filter_capacity = match self.replay_filter_capacity {
                Some(c) => format!("replay_filter_capacity = {c}"),
                None => format!(
                    "# replay_filter_capacity = {}",
                    self.derived_replay_filter_capacity()
                ),
            },
            cover_rate = self.cover_rate,
            cover_mix_delay_ms = self.cover_mix_delay_ms,
        ))
    }
}

/// What `init` needs to know.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Data directory to create (or fill, if empty of keys).
    pub dir: PathBuf,
    /// Packet link address.
    pub listen: SocketAddr,
    /// Published address, if not `listen`.
    pub public_addr: Option<String>,
    /// `/health` and `/metrics` address.
    pub metrics_listen: SocketAddr,
    /// ISO 3166-1 alpha-2 code.
    pub jurisdiction: String,
    /// Who runs the node.
    pub operator: String,
    /// A TOML file holding exactly a `[directory]`-style `DirectoryConfig`.
    pub directory_file: PathBuf,
}

/// What `init` prints as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitReport {
    /// The node id, hex (the authority's `allowed_nodes` entry).
    pub node_id: String,
    /// Ed25519 identity public key, hex.
    pub identity_key: String,
    /// TLS certificate pin, hex.
    pub tls_pin: String,
    /// Path of the config file written.
    pub config: PathBuf,
}

/// Creates the data directory with fresh keys, TLS certificate and a
/// commented `mixnode.toml`. Refuses to overwrite an existing `identity.key`.
pub fn init(options: &InitOptions) -> Result<InitReport> {
    let key_path = options.dir.join("identity.key");
    if key_path.exists() {
        return Err(Error::KeysExist(key_path));
    }
    let directory = read_directory_file(&options.directory_file)?;
    let mut config = MixnodeConfig {
        data_dir: options.dir.clone(),
        listen: options.listen,
        public_addr: options.public_addr.clone(),
        metrics_listen: options.metrics_listen,
        source_addr: None,
        circuit_listen: None,
        public_circuit_addr: None,
        max_circuits: default_max_circuits(),
        jurisdiction: options.jurisdiction.clone(),
        operator: options.operator.clone(),
        max_delay_ms: default_max_delay_ms(),
        max_delayed_packets: default_max_delayed_packets(),
        ingress_queue: default_ingress_queue(),
        ingress_max_wait_ms: default_ingress_max_wait_ms(),
        packet_work: PacketWork::default(),
        max_packet_rate: default_max_packet_rate(),
        replay_filter_capacity: None,
        sphinx_key_grace_secs: None,
        cover_rate: default_cover_rate(),
        cover_mix_delay_ms: default_cover_mix_delay_ms(),
        packet_log: None,
        test_hooks: false,
        test_drop_fraction: 0.0,
        test_ingress_log: None,
        test_hop_log: None,
        test_cell_loss: 0.0,
        test_cell_log: None,
        directory,
    };
    config.validate()?;

    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::File { path, source }
    };
    std::fs::create_dir_all(&options.dir).map_err(file_err(&options.dir))?;
    // An absolute data_dir, so `run` works from any working directory.
    config.data_dir = std::fs::canonicalize(&options.dir).map_err(file_err(&options.dir))?;
    let keys = NodeKeys::generate();
    keys.save(&config.data_dir)?;
    // The current and the next epoch's Sphinx keys; `run` keeps rotating.
    SphinxKeyRing::open(
        &config.data_dir,
        config.directory.epoch_secs,
        config.sphinx_key_grace_secs(),
    )?
    .rotate(unix_now())?;
    let tls = TlsIdentity::generate()?;
    tls.save(&config.data_dir)?;
    let config_path = config.data_dir.join(CONFIG_FILE);
    std::fs::write(&config_path, config.to_commented_toml()?).map_err(file_err(&config_path))?;
    Ok(InitReport {
        node_id: keys.node_id().to_hex(),
        identity_key: hex::encode(keys.identity.verifying_key().as_bytes()),
        tls_pin: tls.pin().to_hex(),
        config: config_path,
    })
}

fn read_directory_file(path: &Path) -> Result<DirectoryConfig> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    let directory: DirectoryConfig = toml::from_str(&text).map_err(|e| Error::Config {
        key: "directory",
        why: format!("{} is not a directory config: {e}", path.display()),
    })?;
    Ok(directory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastet_directory::{AuthorityRef, SigningKey};

    fn directory_toml() -> String {
        format!(
            "epoch_secs = 60\n[[authorities]]\nurl = \"https://127.0.0.1:7000\"\n\
             identity_key = \"{}\"\ntls_pin = \"{}\"\n",
            hex::encode(SigningKey::from_bytes(&[1; 32]).verifying_key().as_bytes()),
            hex::encode([2u8; 32]),
        )
    }

    fn options(dir: &Path) -> InitOptions {
        let directory_file = dir.join("directory.toml");
        std::fs::write(&directory_file, directory_toml()).unwrap();
        InitOptions {
            dir: dir.join("mix"),
            listen: "127.0.0.1:4100".parse().unwrap(),
            public_addr: None,
            metrics_listen: "127.0.0.1:4101".parse().unwrap(),
            jurisdiction: "DE".into(),
            operator: "Example \"Org\"".into(),
            directory_file,
        }
    }

    #[test]
    fn init_writes_a_config_that_loads_back_and_refuses_to_overwrite_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = options(tmp.path());
        let report = init(&opts).unwrap();
        let text = std::fs::read_to_string(&report.config).unwrap();
        assert!(text.contains("# TEST HOOK ONLY"), "{text}");
        let config = MixnodeConfig::load(&report.config).unwrap();
        assert_eq!(config.operator, "Example \"Org\"");
        assert_eq!(config.max_delay_ms, 30_000);
        // Sized from the rate: 2,000 packets/s over the key's 60 + 15 s.
        assert_eq!(config.max_packet_rate, 2_000);
        assert_eq!(config.replay_filter_capacity, None);
        assert_eq!(config.replay_filter_capacity(), 150_000);
        assert!(!config.replay_filter_capped());
        let mut sized = config.clone();
        sized.replay_filter_capacity = Some(7);
        assert_eq!(sized.replay_filter_capacity(), 7);
        // A day-long epoch at the default rate would need 173 million tags:
        // capped (the node warns), unless set outright.
        let mut long = config.clone();
        long.directory.epoch_secs = 86_400;
        assert!(long.replay_filter_capped());
        assert_eq!(long.replay_filter_capacity(), 100_000_000);
        long.validate().unwrap();
        long.replay_filter_capacity = Some(1_000_000);
        assert!(!long.replay_filter_capped());
        assert_eq!(config.cover_rate, 1.0);
        assert_eq!(config.cover_mix_delay(), Duration::from_millis(50));
        assert_eq!(config.public_addr, None);
        assert_eq!(config.directory.epoch_secs, 60);
        assert_eq!(
            config.directory.authorities,
            vec![AuthorityRef {
                url: "https://127.0.0.1:7000".into(),
                identity_key: hex::encode(
                    SigningKey::from_bytes(&[1; 32]).verifying_key().as_bytes()
                ),
                tls_pin: hex::encode([2u8; 32]),
            }]
        );
        let keys = NodeKeys::load(&config.data_dir).unwrap();
        assert_eq!(keys.node_id().to_hex(), report.node_id);
        assert_eq!(config.sphinx_key_grace_secs, None);
        assert_eq!(config.sphinx_key_grace_secs(), 15);
        let epoch = bastet_directory::epoch_of(unix_now(), 60);
        let ring = SphinxKeyRing::open(&config.data_dir, 60, 15).unwrap();
        // Unless the epoch turned during the test, exactly current and next.
        assert!(
            ring.epochs() == [epoch, epoch + 1] || ring.epochs() == [epoch - 1, epoch],
            "{:?} in epoch {epoch}",
            ring.epochs()
        );
        assert!(matches!(init(&opts), Err(Error::KeysExist(_))));
    }

    #[test]
    fn bad_values_are_refused_by_key_name_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        type Change = fn(&mut InitOptions);
        let cases: [(&str, Change); 3] = [
            ("jurisdiction", |o| o.jurisdiction = "de".into()),
            ("operator", |o| o.operator = String::new()),
            ("public_addr", |o| {
                o.listen = "0.0.0.0:4100".parse().unwrap()
            }),
        ];
        for (key, change) in cases {
            let mut opts = options(tmp.path());
            change(&mut opts);
            match init(&opts) {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("expected an error naming {key}, got {other:?}"),
            }
            assert!(!opts.dir.join("identity.key").exists());
        }
    }

    #[test]
    fn fault_injection_needs_the_test_hooks_switch() {
        let tmp = tempfile::tempdir().unwrap();
        let report = init(&options(tmp.path())).unwrap();
        let text = std::fs::read_to_string(&report.config).unwrap();
        assert_eq!(
            MixnodeConfig::load(&report.config)
                .unwrap()
                .test_drop_fraction,
            0.0
        );
        let write = |name: &str, extra: &str| {
            let path = tmp.path().join(name);
            std::fs::write(&path, format!("{extra}\n{text}")).unwrap();
            MixnodeConfig::load(&path)
        };
        let err = write("lossy.toml", "test_drop_fraction = 0.1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test_drop_fraction") && err.contains("test_hooks"),
            "{err}"
        );
        let err = write("log.toml", "test_ingress_log = \"/tmp/x.log\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test_ingress_log") && err.contains("test_hooks"),
            "{err}"
        );
        let log = write(
            "log-on.toml",
            "test_hooks = true\ntest_ingress_log = \"/tmp/x.log\"",
        )
        .unwrap();
        assert_eq!(log.test_ingress_log, Some(PathBuf::from("/tmp/x.log")));
        let err = write("hops.toml", "test_hop_log = \"/tmp/h.log\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test_hop_log") && err.contains("test_hooks"),
            "{err}"
        );
        let hops = write(
            "hops-on.toml",
            "test_hooks = true\ntest_hop_log = \"/tmp/h.log\"",
        )
        .unwrap();
        assert_eq!(hops.test_hop_log, Some(PathBuf::from("/tmp/h.log")));
        let on = write("on.toml", "test_hooks = true\ntest_drop_fraction = 0.1").unwrap();
        assert_eq!(on.test_drop_fraction, 0.1);
        let err = write("over.toml", "test_hooks = true\ntest_drop_fraction = 1.5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("test_drop_fraction"), "{err}");
    }

    #[test]
    fn source_addr_is_optional_and_must_be_an_ip_address() {
        let tmp = tempfile::tempdir().unwrap();
        let report = init(&options(tmp.path())).unwrap();
        let text = std::fs::read_to_string(&report.config).unwrap();
        assert!(text.contains("\n# source_addr = "), "{text}");
        assert_eq!(
            MixnodeConfig::load(&report.config).unwrap().source_addr,
            None
        );
        let path = tmp.path().join("source.toml");
        std::fs::write(&path, format!("source_addr = \"127.0.0.7\"\n{text}")).unwrap();
        assert_eq!(
            MixnodeConfig::load(&path).unwrap().source_addr,
            Some("127.0.0.7".parse().unwrap())
        );
        std::fs::write(&path, format!("source_addr = \"mix.example\"\n{text}")).unwrap();
        let err = MixnodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("source_addr"), "{err}");
    }

    #[test]
    fn unknown_keys_and_out_of_range_values_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let report = init(&options(tmp.path())).unwrap();
        let text = std::fs::read_to_string(&report.config).unwrap();

        let typo = tmp.path().join("typo.toml");
        std::fs::write(&typo, text.replace("max_delay_ms", "max_delay_msec")).unwrap();
        let err = MixnodeConfig::load(&typo).unwrap_err().to_string();
        assert!(err.contains("max_delay_msec"), "{err}");

        let zero = tmp.path().join("zero.toml");
        std::fs::write(
            &zero,
            text.replace("ingress_queue = 8192", "ingress_queue = 0"),
        )
        .unwrap();
        let err = MixnodeConfig::load(&zero).unwrap_err().to_string();
        assert!(err.contains("ingress_queue"), "{err}");

        let work = tmp.path().join("work.toml");
        assert!(text.contains("packet_work = \"runtime\""), "{text}");
        std::fs::write(
            &work,
            text.replace("packet_work = \"runtime\"", "packet_work = \"fast\""),
        )
        .unwrap();
        let err = MixnodeConfig::load(&work).unwrap_err().to_string();
        assert!(
            err.contains("expected \"runtime\" or \"threads\", found \"fast\"")
                && err.contains("packet_work"),
            "{err}"
        );
        std::fs::write(
            &work,
            text.replace("packet_work = \"runtime\"", "packet_work = \"threads\""),
        )
        .unwrap();
        assert_eq!(
            MixnodeConfig::load(&work).unwrap().packet_work,
            PacketWork::Threads
        );

        let short_epoch = tmp.path().join("epoch.toml");
        std::fs::write(
            &short_epoch,
            text.replace("epoch_secs = 60", "epoch_secs = 5"),
        )
        .unwrap();
        let err = MixnodeConfig::load(&short_epoch).unwrap_err().to_string();
        assert!(err.contains("epoch_secs"), "{err}");

        let cover = tmp.path().join("cover.toml");
        for (from, to, key) in [
            ("cover_rate = 1.0", "cover_rate = 100.5", "cover_rate"),
            ("cover_rate = 1.0", "cover_rate = -1.0", "cover_rate"),
            (
                "cover_mix_delay_ms = 50",
                "cover_mix_delay_ms = 10001",
                "cover_mix_delay_ms",
            ),
        ] {
            assert!(text.contains(from), "{text}");
            std::fs::write(&cover, text.replace(from, to)).unwrap();
            let err = MixnodeConfig::load(&cover).unwrap_err().to_string();
            assert!(err.contains(key), "{to}: {err}");
        }
        std::fs::write(&cover, text.replace("cover_rate = 1.0", "cover_rate = 0")).unwrap();
        assert_eq!(MixnodeConfig::load(&cover).unwrap().cover_rate, 0.0);

        let grace = tmp.path().join("grace.toml");
        std::fs::write(
            &grace,
            text.replace("# sphinx_key_grace_secs = 15", "sphinx_key_grace_secs = 61"),
        )
        .unwrap();
        let err = MixnodeConfig::load(&grace).unwrap_err().to_string();
        assert!(err.contains("sphinx_key_grace_secs"), "{err}");
        std::fs::write(
            &grace,
            text.replace("# sphinx_key_grace_secs = 15", "sphinx_key_grace_secs = 60"),
        )
        .unwrap();
        assert_eq!(
            MixnodeConfig::load(&grace).unwrap().sphinx_key_grace_secs(),
            60
        );
    }
}
