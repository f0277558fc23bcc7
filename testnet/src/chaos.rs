//! Faults under load (`bastet-testnet chaos SCENARIO`): a steady stream of
//! messages between several clients, each through its own daemon, with one
//! fault in the middle; then every message is awaited and counted. A run
//! passes when every message arrived exactly once, unaltered and verified.
//!
//! The clients form a ring (client *i* writes to client *i+1*), their
//! mailboxes alternate between the two mailbox servers, and every client
//! sends one message per round; the fault runs after half the rounds.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{Daemon, Payload};
use crate::network::{Network, NetworkOptions};
use crate::{Error, Result};

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scenario {
    /// SIGKILL mailbox server `mailbox-b` (half the clients' mailboxes),
    /// restart it 3 s later: what it acknowledged survived in RocksDB, what
    /// it did not is retransmitted.
    KillMailbox,
    /// SIGKILL mixnode `mix-a` for good: routes through it fail and are
    /// retransmitted on others; senders learn to avoid it.
    KillMixnode,
    /// Freeze mixnode `mix-a` (SIGSTOP) for 10 s, then let it go on
    /// (SIGCONT): to its peers, a node cut off the network that comes back
    /// (their connections to it time out; the kernel still takes what they
    /// had sent and the node processes it late).
    FreezeMixnode,
    /// Stop one authority of three (SIGTERM) for two epochs, then start it
    /// again: the other two still make and sign each epoch's consensus.
    OneAuthorityDown,
    /// Stop two authorities of three for three epochs and 5 s, then start
    /// them again: no new consensus can be signed (threshold 2), so once
    /// the one made ahead for the next epoch expires, clients hold their
    /// messages, and send them when a consensus is back.
    TwoAuthoritiesDown,
    /// Fill the file system of mailbox server `mailbox-b` for 10 s: the
    /// scenario first sets the server's `min_free_mib` 256 MiB under the
    /// free space it finds, then a filler file (its blocks really
    /// allocated, a few hundred MiB) takes the free space 128 MiB under
    /// that reserve; the server refuses new packets
    /// (unacknowledged, so retransmitted), keeps serving polls, says why in
    /// `/health`, and stores again once the filler is gone. Needs 1 GiB
    /// free where the network's files are.
    DiskFull,
    /// Restart mixnode `mix-a` with its clock 3 minutes ahead (libfaketime;
    /// timers keep the true monotonic clock) and leave it so: it lives in
    /// a later epoch than the network, with other Sphinx keys and no
    /// consensus valid by its clock, so what crosses it is lost and
    /// retransmitted on other routes. Needs Debian's `faketime` package.
    ClockSkew,
    /// Cut mixnode `mix-a` off for 15 s, then heal: an nftables table of
    /// the scenario's own drops every packet to or from its packet port on
    /// loopback (connections to it time out, established ones stall; its
    /// own outbound links, from ephemeral ports, are not cut). Needs `nft`
    /// (Debian's `nftables`) and CAP_NET_ADMIN; the table is deleted on
    /// heal, and on drop if the run fails first.
    PartitionMixnode,
}

impl Scenario {
    /// Every scenario, in the order `chaos all` runs them.
    pub const ALL: [Scenario; 8] = [
        Scenario::KillMailbox,
        Scenario::KillMixnode,
        Scenario::FreezeMixnode,
        Scenario::OneAuthorityDown,
        Scenario::TwoAuthoritiesDown,
        Scenario::DiskFull,
        Scenario::ClockSkew,
        Scenario::PartitionMixnode,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillMailbox => "kill-mailbox",
            Scenario::KillMixnode => "kill-mixnode",
            Scenario::FreezeMixnode => "freeze-mixnode",
            Scenario::OneAuthorityDown => "one-authority-down",
            Scenario::TwoAuthoritiesDown => "two-authorities-down",
            Scenario::DiskFull => "disk-full",
            Scenario::ClockSkew => "clock-skew",
            Scenario::PartitionMixnode => "partition-mixnode",
        }
    }

    /// The epoch length the scenario needs: the authority scenarios must
    /// see epochs change while authorities are down.
    fn epoch_secs(self) -> u64 {
        match self {
            Scenario::OneAuthorityDown | Scenario::TwoAuthoritiesDown => 20,
            _ => 120,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                Error::InvalidOption(format!(
                    "unknown scenario {s:?}; choose one of {}",
                    Scenario::ALL.map(Scenario::name).join(", ")
                ))
            })
    }
}

/// How much load, for how long.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// The fault.
    pub scenario: Scenario,
    /// Clients in the ring (at least 2).
    pub clients: usize,
    /// Messages each client sends.
    pub messages: usize,
    /// Pause between two rounds of sends (the load goes on while the
    /// fault runs).
    pub interval: Duration,
    /// How long to wait for the last message after the last send.
    pub receive_timeout: Duration,
    /// Each client's payload rate λ_P (packets/s).
    pub payload_rate: f64,
}

impl ChaosOptions {
    /// The short form the test suite runs: 2 clients, 6 messages each (12
    /// over a minute for the authority scenarios, to send during the
    /// outage).
    pub fn short(scenario: Scenario) -> Self {
        let (messages, interval) = match scenario {
            Scenario::OneAuthorityDown | Scenario::TwoAuthoritiesDown => {
                (12, Duration::from_secs(5))
            }
            _ => (6, Duration::from_millis(300)),
        };
        ChaosOptions {
            scenario,
            clients: 2,
            messages,
            interval,
            receive_timeout: Duration::from_secs(150),
            payload_rate: 10.0,
        }
    }

    /// The long form: 4 clients, 50 messages each, a round a second.
    pub fn long(scenario: Scenario) -> Self {
        ChaosOptions {
            clients: 4,
            messages: 50,
            interval: Duration::from_secs(1),
            receive_timeout: Duration::from_secs(300),
            ..ChaosOptions::short(scenario)
        }
    }
}

/// What a run saw.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    /// The scenario's name.
    pub scenario: String,
    /// Clients in the ring.
    pub clients: usize,
    /// Messages each client sent.
    pub messages_per_client: usize,
    /// What was done, when (seconds from the first send).
    pub faults: Vec<String>,
    /// Messages sent (accepted by the senders' daemons).
    pub sent: usize,
    /// Messages that arrived.
    pub delivered: usize,
    /// Messages shown to a recipient more than once.
    pub duplicated: usize,
    /// Messages that never arrived.
    pub lost: usize,
    /// Messages that arrived changed or unverified.
    pub altered: usize,
    /// Delivery latency (sender's send to the recipient's inbox), ms.
    pub latency_ms_p50: u64,
    /// 99th percentile of the same.
    pub latency_ms_p99: u64,
    /// Longest delivery.
    pub latency_ms_max: u64,
    /// From the first send to the last message received.
    pub seconds: f64,
    /// The ids of the lost messages.
    pub lost_ids: Vec<String>,
}

impl ChaosReport {
    /// Every message arrived exactly once, unaltered and verified.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.altered == 0 && self.sent > 0
    }

    /// The summary line, e.g. `kill-mailbox: sent 12, delivered 12, …`.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} clients × {} messages; sent {}, delivered {}, duplicated {}, lost {}, altered {}; \
             latency p50 {} ms, p99 {} ms, max {} ms; {:.0} s; faults: {}",
            self.scenario,
            self.clients,
            self.messages_per_client,
            self.sent,
            self.delivered,
            self.duplicated,
            self.lost,
            self.altered,
            self.latency_ms_p50,
            self.latency_ms_p99,
            self.latency_ms_max,
            self.seconds,
            self.faults.join("; ")
        )
    }
}

/// The network a scenario runs on (the default layout, with the epoch
/// length the scenario needs), from `base`.
pub fn network_options(scenario: Scenario, base: NetworkOptions) -> NetworkOptions {
    NetworkOptions {
        epoch_secs: scenario.epoch_secs(),
        ..base
    }
}

/// Starts a network for `options.scenario`, runs it, stops the network.
pub async fn run_chaos(base: NetworkOptions, options: &ChaosOptions) -> Result<ChaosReport> {
    let mut net = Network::start(network_options(options.scenario, base)).await?;
    let report = run_on(&mut net, options).await;
    if report.as_ref().is_ok_and(|r| !r.passed()) {
        tracing::warn!(
            "relay counters:\n{}\nlog tails:\n{}",
            net.counters().await,
            net.log_tails(10)
        );
    }
    net.stop();
    let panics = net.panics();
    if !panics.is_empty() {
        return Err(node_panics_error(&panics));
    }
    report
}

/// The error for nodes whose logs show a panic (a bug to report), from
/// [`Network::panics`].
pub fn node_panics_error(panics: &[(String, String)]) -> Error {
    Error::UnexpectedOutput {
        command: panics
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        why: "a node panicked (a bug: please report it with the node's log)".into(),
        output: panics
            .iter()
            .map(|(name, lines)| format!("--- {name}:\n{lines}"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Runs `options` on a running network: clients, load, fault, count.
pub async fn run_on(net: &mut Network, options: &ChaosOptions) -> Result<ChaosReport> {
    if options.clients < 2 || options.messages == 0 {
        return Err(Error::InvalidOption(
            "chaos needs at least 2 clients and 1 message each".into(),
        ));
    }
    if options.scenario == Scenario::DiskFull {
        reserve_disk(net, DISK_FULL_NODE).await?;
    }
    let mut clients = Vec::new();
    for i in 0..options.clients {
        let mailbox = if i % 2 == 0 { "mailbox-a" } else { "mailbox-b" };
        clients.push(net.client(&format!("c{i}"), mailbox).await?);
    }
    let n = clients.len();
    // Each pair of neighbours once (two clients are one pair).
    let pairs = if n == 2 { 1 } else { n };
    for i in 0..pairs {
        clients[i].befriend(&clients[(i + 1) % n]).await?;
    }
    let traffic = bastet_client::TrafficConfig {
        payload_rate: Some(options.payload_rate),
        poll_interval_ms: 300,
        ..bastet_client::TrafficConfig::preset("interactive")
            .map_err(|e| Error::InvalidOption(e.to_string()))?
    };
    let mut daemons: Vec<Daemon> = Vec::new();
    for c in &mut clients {
        c.set_traffic(&traffic)?;
        daemons.push(c.start_daemon().await?);
    }
    let start = Instant::now();
    let mut faults = Vec::new();
    // Per recipient: (message id, text). The load goes on while the fault
    // runs: it starts once half the rounds are sent.
    let mut expected: Vec<Vec<(String, String)>> = vec![Vec::new(); n];
    let (half_sent, half_rx) = tokio::sync::oneshot::channel::<()>();
    let sending = async {
        let mut half_sent = Some(half_sent);
        for round in 0..options.messages {
            for i in 0..n {
                let to = (i + 1) % n;
                let text = format!(
                    "{} round {round} from c{i} to c{to}: a message across a fault",
                    options.scenario
                );
                let sent = clients[i]
                    .send_content(clients[to].name(), Payload::Text(&text), false)
                    .await?;
                expected[to].push((sent.message_id, text));
            }
            if round + 1 == options.messages.div_ceil(2)
                && let Some(tx) = half_sent.take()
            {
                let _ = tx.send(());
            }
            tokio::time::sleep(options.interval).await;
        }
        Ok::<(), Error>(())
    };
    let faulting = async {
        if half_rx.await.is_ok() {
            inject(net, options.scenario, start, &mut faults).await
        } else {
            // The load failed before half-way; its error is reported.
            Ok(())
        }
    };
    let (sending, faulting) = tokio::join!(sending, faulting);
    sending?;
    faulting?;
    let sent: usize = expected.iter().map(Vec::len).sum();
    let mut delivered = 0;
    let mut duplicated = 0;
    let mut altered = 0;
    let mut lost_ids = Vec::new();
    let mut latencies = Vec::new();
    for (to, wanted) in expected.iter().enumerate() {
        let ids: Vec<String> = wanted.iter().map(|(id, _)| id.clone()).collect();
        let (got, shown) = clients[to]
            .receive_counted(&ids, options.receive_timeout)
            .await?;
        let texts: HashMap<&str, &str> = wanted
            .iter()
            .map(|(id, t)| (id.as_str(), t.as_str()))
            .collect();
        for id in &ids {
            match got.get(id) {
                Some(m) => {
                    delivered += 1;
                    if !m.verified || texts.get(id.as_str()) != Some(&m.text.as_str()) {
                        altered += 1;
                    }
                    latencies.push(m.received_at_ms.saturating_sub(m.sent_at_ms));
                }
                None => lost_ids.push(id.clone()),
            }
        }
        duplicated += shown.values().filter(|&&k| k > 1).count();
    }
    drop(daemons);
    latencies.sort_unstable();
    let pick = |q: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[i.min(latencies.len() - 1)]
    };
    let report = ChaosReport {
        scenario: options.scenario.to_string(),
        clients: n,
        messages_per_client: options.messages,
        faults,
        sent,
        delivered,
        duplicated,
        lost: lost_ids.len(),
        altered,
        latency_ms_p50: pick(0.5),
        latency_ms_p99: pick(0.99),
        latency_ms_max: latencies.last().copied().unwrap_or(0),
        seconds: start.elapsed().as_secs_f64(),
        lost_ids,
    };
    tracing::info!("chaos {}", report.summary());
    Ok(report)
}

/// An nftables table that drops every packet to or from one TCP port
/// (both hooks see loopback traffic); deleted by [`Partition::heal`] or on
/// drop.
struct Partition {
    table: String,
    healed: bool,
}

impl Partition {
    fn cut(port: u16) -> Result<Partition> {
        let table = format!("bastet_chaos_{}_{port}", std::process::id());
        let script = format!(
            "table inet {table} {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority -10; policy accept;\n\
             \t\ttcp dport {port} counter drop\n\
             \t\ttcp sport {port} counter drop\n\
             \t}}\n\
             }}\n"
        );
        nft(&["-f", "-"], Some(&script))?;
        Ok(Partition {
            table,
            healed: false,
        })
    }

    /// Packets the table's rules dropped so far.
    fn dropped(&self) -> Option<u64> {
        let listing = nft(&["list", "table", "inet", &self.table], None).ok()?;
        let mut total = 0;
        for line in listing.lines().filter(|l| l.contains("counter packets")) {
            let n = line
                .split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)?
                .parse::<u64>()
                .ok()?;
            total += n;
        }
        Some(total)
    }

    fn heal(mut self) -> Result<()> {
        self.healed = true;
        nft(&["delete", "table", "inet", &self.table], None).map(|_| ())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !self.healed {
            let _ = nft(&["delete", "table", "inet", &self.table], None);
        }
    }
}

/// Runs `nft ARGS` (with `input` on stdin); its stdout.
fn nft(args: &[&str], input: Option<&str>) -> Result<String> {
    use std::io::Write;
    let fail = |why: String| {
        Error::InvalidOption(format!(
            "partition-mixnode needs nftables and CAP_NET_ADMIN (run as root; \
             scripts/setup.sh installs nftables): `nft {}` {why}",
            args.join(" ")
        ))
    };
    let mut child = std::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.unwrap_or("").as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How far ahead [`Scenario::ClockSkew`] puts a node's clock.
const CLOCK_SKEW_SECS: u64 = 180;

/// libfaketime's preload library (Debian's `faketime` package).
fn libfaketime() -> Result<String> {
    let found = std::fs::read_dir("/usr/lib").ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("faketime/libfaketime.so.1"))
            .find(|p| p.is_file())
    });
    found.map(|p| p.display().to_string()).ok_or_else(|| {
        Error::InvalidOption(
            "clock-skew needs libfaketime (/usr/lib/<arch>/faketime/libfaketime.so.1): \
                 run scripts/setup.sh, or apt-get install faketime"
                .into(),
        )
    })
}

/// `bastet_mixnode_sphinx_key_epoch` of `node`.
async fn key_epoch(net: &Network, node: &str) -> Result<f64> {
    let metrics = net.metrics(node).await?;
    Ok(crate::metric_sum(
        &metrics,
        "bastet_mixnode_sphinx_key_epoch",
        "",
    ))
}

/// The mailbox server whose disk [`Scenario::DiskFull`] fills.
const DISK_FULL_NODE: &str = "mailbox-b";
/// How far below the free space found the server's reserve is set (room
/// for the network's own writes before the fault).
const RESERVE_BELOW_FREE: u64 = 256 << 20;
/// How far under the reserve the filler takes the free space (room for
/// other writes to the same file system during the fault).
const BELOW_RESERVE: u64 = 128 << 20;
/// Free space the scenario needs.
const DISK_FULL_NEEDS: u64 = 1 << 30;

/// The `min_free_mib` in `config`, in bytes.
fn reserve_of(config: &std::path::Path) -> Result<u64> {
    let text = std::fs::read_to_string(config).map_err(|e| Error::Io {
        what: format!("reading {}", config.display()),
        source: e,
    })?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("min_free_mib = ")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|mib| mib << 20)
        .ok_or_else(|| Error::InvalidOption(format!("{} has no min_free_mib", config.display())))
}

fn free_bytes(path: &std::path::Path) -> Result<u64> {
    bastet_link::free_bytes(path).map_err(|e| Error::Io {
        what: format!("free space of {}", path.display()),
        source: e,
    })
}

/// Sets `node`'s `min_free_mib` [`RESERVE_BELOW_FREE`] under the free
/// space of its file system, and restarts it with that config.
async fn reserve_disk(net: &mut Network, node: &str) -> Result<()> {
    let relay = net
        .layout()
        .relay(node)
        .ok_or_else(|| Error::InvalidOption(format!("no node {node}")))?
        .clone();
    let free = free_bytes(&relay.dir)?;
    if free < DISK_FULL_NEEDS {
        return Err(Error::InvalidOption(format!(
            "disk-full needs {} MiB free on the file system of {} (it has {} MiB)",
            DISK_FULL_NEEDS >> 20,
            relay.dir.display(),
            free >> 20
        )));
    }
    let reserve_mib = (free - RESERVE_BELOW_FREE) >> 20;
    let io = |what: String| move |source| Error::Io { what, source };
    let text = std::fs::read_to_string(&relay.config)
        .map_err(io(format!("reading {}", relay.config.display())))?;
    let mut found = false;
    let edited: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("min_free_mib") {
                found = true;
                format!("min_free_mib = {reserve_mib}")
            } else {
                line.to_string()
            }
        })
        .collect();
    if !found {
        return Err(Error::InvalidOption(format!(
            "{} has no min_free_mib line to edit",
            relay.config.display()
        )));
    }
    net.stop_node(node)?;
    std::fs::write(&relay.config, edited.join("\n") + "\n")
        .map_err(io(format!("writing {}", relay.config.display())))?;
    net.start_node(node)?;
    // Ready again: its /health answers 200 (listed, keys, free space).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = crate::network::http_get(relay.metrics_listen, "/health").await {
            tracing::info!("chaos disk-full: {node} keeps {reserve_mib} MiB free");
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::InvalidOption(format!(
                "{node} did not come back ready within 60 s with min_free_mib = {reserve_mib}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes `path` a file of `len` bytes whose blocks are allocated (not
/// sparse), quickly (fallocate).
fn fill(path: &std::path::Path, len: u64) -> Result<()> {
    let io = |what: String| move |source| Error::Io { what, source };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len)
        .map_err(std::io::Error::from)
        .map_err(io(format!(
            "allocating {} MiB in {}",
            len >> 20,
            path.display()
        )))
}

/// Does the scenario's fault to `net`, noting each step in `faults`.
async fn inject(
    net: &mut Network,
    scenario: Scenario,
    start: Instant,
    faults: &mut Vec<String>,
) -> Result<()> {
    let mut note = |what: String| {
        let line = format!("{:.1} s: {what}", start.elapsed().as_secs_f64());
        tracing::info!("chaos {scenario}: {line}");
        faults.push(line);
    };
    let epoch = Duration::from_secs(scenario.epoch_secs());
    match scenario {
        Scenario::KillMailbox => {
            net.kill_node("mailbox-b")?;
            note("SIGKILL mailbox-b".into());
            tokio::time::sleep(Duration::from_secs(3)).await;
            net.start_node("mailbox-b")?;
            note("mailbox-b started again".into());
        }
        Scenario::KillMixnode => {
            net.kill_node("mix-a")?;
            note("SIGKILL mix-a, for good".into());
        }
        Scenario::FreezeMixnode => {
            net.pause_node("mix-a")?;
            note("SIGSTOP mix-a".into());
            tokio::time::sleep(Duration::from_secs(10)).await;
            net.resume_node("mix-a")?;
            note("SIGCONT mix-a".into());
        }
        Scenario::OneAuthorityDown => {
            net.stop_node("authority-3")?;
            note("authority-3 stopped".into());
            tokio::time::sleep(epoch * 2).await;
            net.start_node("authority-3")?;
            note("authority-3 started again".into());
        }
        Scenario::DiskFull => {
            let node = net
                .layout()
                .relay(DISK_FULL_NODE)
                .ok_or_else(|| Error::InvalidOption(format!("no node {DISK_FULL_NODE}")))?
                .clone();
            let filler = node.dir.join("disk-full-filler");
            // Down to BELOW_RESERVE under the server's reserve: the filler
            // is a few hundred MiB, whatever the disk's size.
            let reserve = reserve_of(&node.config)?;
            let free = free_bytes(&node.dir)?;
            let target = reserve.saturating_sub(BELOW_RESERVE);
            fill(&filler, free.saturating_sub(target))?;
            note(format!(
                "{DISK_FULL_NODE}'s file system filled to {} MiB free",
                free_bytes(&node.dir)? >> 20
            ));
            let outcome = async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let metrics = net.metrics(DISK_FULL_NODE).await?;
                let refused =
                    crate::metric_sum(&metrics, "bastet_mailbox_packets_dropped", "disk_full");
                let health = crate::network::http_get(node.metrics_listen, "/health").await;
                Ok::<_, Error>((refused, health))
            }
            .await;
            // Whatever happened, the space comes back.
            let removed = std::fs::remove_file(&filler);
            let (refused, health) = outcome?;
            removed.map_err(|e| Error::Io {
                what: format!("removing {}", filler.display()),
                source: e,
            })?;
            note(format!(
                "filler removed; while full, {DISK_FULL_NODE} refused {refused} packets (disk_full) \
                 and /health said {}",
                match &health {
                    Some((status, body)) => format!("{status} {}", body.trim()),
                    None => "nothing".into(),
                }
            ));
            if refused < 1.0 || health.as_ref().is_none_or(|(s, _)| *s != 503) {
                return Err(Error::InvalidOption(format!(
                    "disk-full: {DISK_FULL_NODE} did not refuse packets or report itself not ready \
                     while its disk was full (refused {refused}, /health {health:?})"
                )));
            }
        }
        Scenario::PartitionMixnode => {
            let port = net
                .layout()
                .relay("mix-a")
                .ok_or_else(|| Error::InvalidOption("no node mix-a".into()))?
                .listen
                .port();
            let cut = Partition::cut(port)?;
            note(format!("mix-a's port {port} cut off (nftables)"));
            tokio::time::sleep(Duration::from_secs(15)).await;
            let dropped = cut.dropped();
            cut.heal()?;
            note(format!(
                "healed; {} packets to or from it were dropped",
                dropped.map_or_else(|| "an unknown number of".into(), |n| n.to_string())
            ));
        }
        Scenario::ClockSkew => {
            let preload = libfaketime()?;
            let before = key_epoch(net, "mix-b").await?;
            net.stop_node("mix-a")?;
            net.start_node_with_env(
                "mix-a",
                &[
                    ("LD_PRELOAD".into(), preload),
                    ("FAKETIME".into(), format!("+{CLOCK_SKEW_SECS}s")),
                    ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
                ],
            )?;
            note(format!(
                "mix-a restarted with its clock {CLOCK_SKEW_SECS} s ahead"
            ));
            // The skew took: mix-a's newest Sphinx key is for a later epoch.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let skewed = key_epoch(net, "mix-a").await.unwrap_or(0.0);
                if skewed > before {
                    note(format!(
                        "mix-a's newest Sphinx key is for epoch {skewed}, the network's {before}"
                    ));
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::InvalidOption(format!(
                        "clock-skew: mix-a's key epoch is {skewed}, not ahead of {before}: \
                         did libfaketime take?"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Scenario::TwoAuthoritiesDown => {
            net.stop_node("authority-2")?;
            net.stop_node("authority-3")?;
            note("authority-2 and authority-3 stopped".into());
            // Longer than the consensus made ahead for the next epoch
            // lasts: the network runs out of consensus for a while.
            tokio::time::sleep(epoch * 3 + Duration::from_secs(5)).await;
            let left = net.metrics("authority-1").await?;
            note(format!(
                "authority-1 alone holds {} signature(s) on its current consensus (threshold 2)",
                crate::metric_sum(&left, "bastet_directory_consensus_signatures", "")
            ));
            net.start_node("authority-2")?;
            net.start_node("authority-3")?;
            note("authority-2 and authority-3 started again".into());
        }
    }
    Ok(())
}
