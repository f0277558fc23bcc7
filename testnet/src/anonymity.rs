//! Anonymity measured on the real network (`bastet-testnet anonymity`):
//! a workload of real messages between client pairs, under one of the
//! clients' traffic presets (cover and mix delays) or with both off, seen
//! the way a global passive adversary sees it, then analysed by
//! `bastet-anonymity`: the Shannon entropy of each message's sender and
//! recipient anonymity sets, a timing-correlation attack against the
//! random-guess baseline, and latency.
//!
//! What the adversary sees comes from the relays' `test_ingress_log` (every
//! relay and client sends from its own loopback address, so the peer
//! address names the sender of each frame). What only the network knows
//! comes from the other test hooks, joined by frame id
//! ([`bastet_link::frame_id`]): each client's `test_send_log` names its
//! real packets, each mixnode's `test_hop_log` which packet left for which
//! came in, each mailbox server's `test_store_log` what arrived for whom.
//! Following a real packet's frame ids from its client to its mailbox
//! server gives its chain of link events: the ground truth the analysis
//! scores the adversary against (never its input).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use bastet_anonymity::{
    AnalysisConfig, AnalysisReport, Endpoint, GroundTruth, LinkEvent, MessageTruth, Observation,
    TRACE_VERSION, Trace, TraceMeta,
};
use bastet_client::{TrafficConfig, TrafficParams};
use bastet_directory::{DirectoryClient, Role};
use bastet_link::FrameId;
use bastet_sphinx::NodeId;
use serde::Serialize;

use crate::client::{Client, Payload, Sent};
use crate::network::{Network, NetworkOptions, client_source_addr};
use crate::{Error, Result};

/// The traffic the clients and mixnodes run.
#[derive(Clone, Debug, PartialEq)]
pub enum Traffic {
    /// One of the clients' presets (`interactive`, `balanced`, `paranoid`):
    /// client daemons with their payload and loop streams, mixnodes with
    /// their default cover rate and the preset's mean delay.
    Preset(String),
    /// No cover anywhere and no mix delays: each message is sent at once
    /// (`bastet send --direct`), mixnodes send no cover loops. The
    /// strawman the attack should beat.
    NoCover,
}

impl Traffic {
    /// The name reports use.
    pub fn name(&self) -> &str {
        match self {
            Traffic::Preset(p) => p,
            Traffic::NoCover => "no-cover",
        }
    }

    /// The clients' Loopix parameters.
    pub fn params(&self) -> Result<TrafficParams> {
        match self {
            Traffic::Preset(p) => TrafficParams::named(p).ok_or_else(|| {
                Error::InvalidOption(format!(
                    "--preset {p:?}: choose one of {}",
                    bastet_client::TRAFFIC_PRESETS.join(", ")
                ))
            }),
            Traffic::NoCover => Ok(TrafficParams {
                loop_rate: 0.0,
                mean_hop_delay: Duration::ZERO,
                max_hop_delay: Duration::ZERO,
                ..TrafficParams::balanced()
            }),
        }
    }

    fn client_config(&self) -> Result<TrafficConfig> {
        match self {
            Traffic::Preset(p) => {
                TrafficConfig::preset(p).map_err(|e| Error::InvalidOption(format!("--preset: {e}")))
            }
            Traffic::NoCover => Ok(TrafficConfig {
                loop_rate: Some(0.0),
                mean_hop_delay_ms: Some(0),
                max_hop_delay_ms: Some(0),
                ..TrafficConfig::default()
            }),
        }
    }
}

/// How to run the measurement.
#[derive(Clone, Debug)]
pub struct AnonymityOptions {
    /// Clients, an even number: client 2i sends to client 2i+1.
    pub clients: usize,
    /// How long the workload runs.
    pub duration: Duration,
    /// Messages per second each sender queues, a Poisson process.
    pub message_rate: f64,
    /// The traffic preset, or none.
    pub traffic: Traffic,
    /// Also write the trace (`bastet-anonymity` JSON lines) here.
    pub trace: Option<PathBuf>,
    /// Real messages analysed at most (attribution costs milliseconds each).
    pub max_messages: usize,
}

impl Default for AnonymityOptions {
    fn default() -> Self {
        AnonymityOptions {
            clients: 8,
            duration: Duration::from_secs(120),
            message_rate: 0.5,
            traffic: Traffic::Preset("balanced".into()),
            trace: None,
            max_messages: 400,
        }
    }
}

/// Most clients a measurement runs (each is a daemon process).
pub const MAX_CLIENTS: usize = 64;

/// The delay model the adversary attributes with, besides the clients'
/// public μ: loopback links and busy packet threads add latency of their
/// own, so the mean is at least this...
const MODEL_MIN_MEAN: Duration = Duration::from_millis(2);
/// ...and a hop may take this much longer than the longest delay asked.
const MODEL_SLACK: Duration = Duration::from_millis(100);
/// How long after storing a fragment its mailbox server's ack leaves (the
/// adversary's window for candidate acks): after the batch's synced write.
const ACK_WINDOW: Duration = Duration::from_millis(100);
/// Hops followed at most along a packet's frame ids.
const MAX_CHAIN: usize = 8;

/// The adversary's delay model: (mean, longest) per hop.
pub fn delay_model(params: &TrafficParams) -> (Duration, Duration) {
    (
        params.mean_hop_delay.max(MODEL_MIN_MEAN),
        params.max_hop_delay + MODEL_SLACK,
    )
}

/// How the capture went, besides the analysis.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CaptureStats {
    /// Link events in the trace.
    pub link_events: usize,
    /// Frames received from an address that is no relay or client of the
    /// measurement (the testnet's own probes), left out.
    pub unattributed_frames: usize,
    /// Real packets the clients sent (send logs).
    pub real_packets_sent: usize,
    /// Real packets followed from their client to their mailbox server.
    pub real_packets_traced: usize,
    /// Log lines that did not parse (a process killed mid-line), skipped.
    pub unparsed_lines: usize,
}

/// What the measurement found.
#[derive(Clone, Debug, Serialize)]
pub struct AnonymityReport {
    /// `interactive`, `balanced`, `paranoid` or `no-cover`.
    pub traffic: String,
    /// Clients (half of them senders).
    pub clients: usize,
    /// Messages per second per sender.
    pub message_rate: f64,
    /// Seconds the workload ran.
    pub workload_secs: f64,
    /// Seconds the trace covers (the workload, then the tail its last
    /// messages need).
    pub trace_secs: f64,
    /// Messages queued.
    pub messages_queued: usize,
    /// `bastet send` calls that failed.
    pub send_failures: usize,
    /// The adversary's per-hop delay model, mean, milliseconds.
    pub model_mean_hop_delay_ms: f64,
    /// Its cap, milliseconds.
    pub model_max_hop_delay_ms: f64,
    /// The capture.
    pub capture: CaptureStats,
    /// The analysis (entropy, attack, latency).
    pub analysis: AnalysisReport,
    /// Where the trace was written, if it was.
    pub trace: Option<PathBuf>,
}

impl AnonymityReport {
    /// The report as text.
    pub fn to_human(&self) -> String {
        let mut a = self.analysis.clone();
        // An entropy of -0.0 (a certainty) reads as 0.
        for s in [
            &mut a.sender_entropy_bits,
            &mut a.sender_entropy_with_ack_bits,
            &mut a.recipient_entropy_bits,
            &mut a.recipient_server_entropy_bits,
        ] {
            s.mean += 0.0;
            s.min += 0.0;
        }
        let a = &a;
        let atk = &a.attack;
        let mut out = format!(
            "anonymity on the testnet: traffic {}, {} clients ({} senders at {} msg/s), workload {:.0} s\n",
            self.traffic,
            self.clients,
            self.clients / 2,
            self.message_rate,
            self.workload_secs
        );
        out += &format!(
            "  {} messages queued ({} sends failed)\n",
            self.messages_queued, self.send_failures
        );
        out += &format!(
            "  trace: {} link events over {:.0} s; {} of {} real packets traced to their mailbox server; {} analysed\n",
            self.capture.link_events,
            self.trace_secs,
            self.capture.real_packets_traced,
            self.capture.real_packets_sent,
            a.messages_analysed
        );
        out += &format!(
            "  adversary's delay model: mean {:.0} ms, cap {:.0} ms per hop\n",
            self.model_mean_hop_delay_ms, self.model_max_hop_delay_ms
        );
        out += &format!(
            "  sender entropy:    mean {:.2} bits, min {:.2} (at most {:.2} = log2 of {} active clients); effective set 2^H mean {:.1}, min {:.1}\n",
            a.sender_entropy_bits.mean,
            a.sender_entropy_bits.min,
            a.max_sender_entropy_bits,
            a.active_senders,
            a.sender_set.mean,
            a.sender_set.min
        );
        out += &format!(
            "  ... with the ack followed: mean {:.2} bits, min {:.2}\n",
            a.sender_entropy_with_ack_bits.mean, a.sender_entropy_with_ack_bits.min
        );
        out += &format!(
            "  recipient entropy: mean {:.2} bits, min {:.2} (mailbox server alone: mean {:.2}); effective set mean {:.1}\n",
            a.recipient_entropy_bits.mean,
            a.recipient_entropy_bits.min,
            a.recipient_server_entropy_bits.mean,
            a.recipient_entropy_bits.mean.exp2()
        );
        out += &format!(
            "  correlation attack on the sender: right {:.0} % of {} (with the ack {:.0} %) against {:.0} % for a random guess: {:.1}x the baseline\n",
            100.0 * atk.accuracy,
            atk.messages,
            100.0 * atk.accuracy_with_ack,
            100.0 * atk.baseline,
            atk.advantage
        );
        out += &format!(
            "  latency, queued to stored: p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} packets)\n",
            a.latency_ms.median,
            a.latency_ms.p95,
            a.latency_ms.p99,
            a.latency_ms.max,
            a.latency_ms.n
        );
        if let Some(t) = &self.trace {
            out += &format!("  trace written to {}\n", t.display());
        }
        out
    }
}

/// Starts a network with the trace hooks on, runs the measurement on it,
/// stops it.
pub async fn run_anonymity(
    base: NetworkOptions,
    options: &AnonymityOptions,
) -> Result<AnonymityReport> {
    check(options)?;
    let params = options.traffic.params()?;
    let mix_cover = match &options.traffic {
        Traffic::Preset(_) => {
            let delay = u64::try_from(params.mean_hop_delay.as_millis()).unwrap_or(u64::MAX);
            (bastet_anonymity::DEFAULT_MIX_COVER_RATE, delay)
        }
        Traffic::NoCover => (0.0, 0),
    };
    let mut net = Network::start(NetworkOptions {
        trace: true,
        mix_cover: Some(mix_cover),
        // One layer assignment for the whole run, as far as possible.
        epoch_secs: base.epoch_secs.max(600),
        ..base
    })
    .await?;
    let report = measure(&mut net, options, &params).await;
    let panics = net.panics();
    if !panics.is_empty() {
        return Err(crate::chaos::node_panics_error(&panics));
    }
    report
}

fn check(options: &AnonymityOptions) -> Result<()> {
    if options.clients < 2 || !options.clients.is_multiple_of(2) || options.clients > MAX_CLIENTS {
        return Err(Error::InvalidOption(format!(
            "--clients must be an even number from 2 to {MAX_CLIENTS} (pairs of sender and recipient)"
        )));
    }
    if !(options.message_rate > 0.0 && options.message_rate <= 10.0) {
        return Err(Error::InvalidOption(
            "--rate must be above 0 and at most 10 messages per second".into(),
        ));
    }
    if options.duration < Duration::from_secs(10) {
        return Err(Error::InvalidOption(
            "the workload must run at least 10 seconds".into(),
        ));
    }
    if options.max_messages == 0 {
        return Err(Error::InvalidOption(
            "max messages must be at least 1".into(),
        ));
    }
    Ok(())
}

/// One measured client.
struct Member {
    client: Client,
    send_log: PathBuf,
    mailbox_id: String,
    mailbox_server: String,
}

async fn measure(
    net: &mut Network,
    options: &AnonymityOptions,
    params: &TrafficParams,
) -> Result<AnonymityReport> {
    let mailbox_names: Vec<String> = net.layout().mailboxes().map(|r| r.name.clone()).collect();
    if mailbox_names.is_empty() {
        return Err(Error::InvalidOption(
            "the network has no mailbox server".into(),
        ));
    }
    let traffic = options.traffic.client_config()?;
    let mut members = Vec::with_capacity(options.clients);
    for i in 0..options.clients {
        // Pairs split over the servers, so that a server does not name
        // the pair.
        let server = &mailbox_names[(i / 2 + i % 2) % mailbox_names.len()];
        let client = net.client(&format!("anon{i}"), server).await?;
        client.set_source_addr(client_source_addr(i))?;
        client.set_traffic(&traffic)?;
        let send_log = net.dir().join("clients").join(format!("anon{i}-send.log"));
        client.set_send_log(&send_log)?;
        let (mailbox_id, mailbox_server) = client.mailbox()?;
        members.push(Member {
            client,
            send_log,
            mailbox_id,
            mailbox_server,
        });
    }
    for pair in members.chunks(2) {
        if let [a, b] = pair {
            a.client.befriend(&b.client).await?;
        }
    }
    let mut daemons = Vec::new();
    if matches!(options.traffic, Traffic::Preset(_)) {
        for m in &mut members {
            daemons.push(m.client.start_daemon().await?);
        }
    }
    let consensus = DirectoryClient::new(&net.layout().directory)?
        .fetch_consensus()
        .await?;

    tracing::info!(
        "workload: {} senders, {} messages/s each, for {} s ({})",
        options.clients / 2,
        options.message_rate,
        options.duration.as_secs(),
        options.traffic.name()
    );
    let t0 = unix_micros();
    let started = Instant::now();
    let until = started + options.duration;
    let mut load = tokio::task::JoinSet::new();
    for pair in members.chunks(2) {
        if let [a, b] = pair {
            let (client, to) = (a.client.clone(), b.client.name().to_string());
            load.spawn(send_poisson(client, to, options.message_rate, until));
        }
    }
    let mut sent: Vec<Sent> = Vec::new();
    let mut send_failures = 0;
    while let Some(done) = load.join_next().await {
        let (ok, failed) = done.map_err(|e| Error::Io {
            what: "a sender of the workload".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        sent.extend(ok);
        send_failures += failed;
    }
    let workload_secs = started.elapsed().as_secs_f64();
    // The last messages cross the network; cover goes on meanwhile.
    let (mean, max) = delay_model(params);
    let layers = consensus_layers(&consensus);
    let tail = max * (u32::from(layers) + 1) + ACK_WINDOW + Duration::from_secs(2);
    tracing::info!("workload done; {} s for the last messages", tail.as_secs());
    tokio::time::sleep(tail).await;
    let t_end = unix_micros();
    // Stopped, every process has written its logs out.
    drop(daemons);
    net.stop();

    let queued: HashMap<String, u64> = sent
        .iter()
        .map(|s| (s.message_id.clone(), s.sent_at_ms.saturating_mul(1000)))
        .collect();
    let mut endpoints: HashMap<IpAddr, Endpoint> = HashMap::new();
    let mut relays = Vec::new();
    let mut mix_layers = Vec::new();
    let mut mailbox_ids: Vec<String> = Vec::new();
    let (mut mixes, mut servers) = (0u32, 0u32);
    for r in &net.layout().relays {
        let endpoint = match r.role {
            Role::Mix => {
                let layer = NodeId::from_hex(&r.node_id)
                    .and_then(|id| consensus.layer_of(&id))
                    .ok_or_else(|| {
                        Error::InvalidOption(format!("{} has no layer in the consensus", r.name))
                    })?;
                mix_layers.push(layer);
                mixes += 1;
                Endpoint::Mix(mixes - 1)
            }
            Role::Mailbox => {
                mailbox_ids.push(r.node_id.clone());
                servers += 1;
                Endpoint::Mailbox(servers - 1)
            }
        };
        if let Some(ip) = r.source_addr {
            endpoints.insert(ip, endpoint);
        }
        relays.push(RelayLogs {
            endpoint,
            ingress: read_log(r.ingress_log.as_deref())?,
            hops: read_log(r.hop_log.as_deref())?,
            stores: read_log(r.store_log.as_deref())?,
        });
    }
    let mut clients = Vec::new();
    let mut client_mailbox = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        endpoints.insert(client_source_addr(i), Endpoint::Client(index));
        let server = mailbox_ids
            .iter()
            .position(|id| *id == m.mailbox_server)
            .ok_or_else(|| {
                Error::InvalidOption(format!(
                    "{}'s mailbox server is not in the network",
                    m.client.name()
                ))
            })?;
        client_mailbox.push(u32::try_from(server).unwrap_or(u32::MAX));
        clients.push(ClientLogs {
            index,
            mailbox_id: m.mailbox_id.clone(),
            sends: read_log(Some(&m.send_log))?,
        });
    }
    let meta = TraceMeta {
        version: TRACE_VERSION,
        clients: u32::try_from(options.clients).unwrap_or(u32::MAX),
        mix_layers,
        mailboxes: servers,
        client_mailbox,
        mean_hop_delay_us: micros(mean),
        max_hop_delay_us: micros(max),
        duration_us: t_end.saturating_sub(t0),
        description: format!(
            "bastet-testnet anonymity: traffic {}, {} clients in pairs, {} msg/s per sender, {:.0} s workload",
            options.traffic.name(),
            options.clients,
            options.message_rate,
            workload_secs
        ),
    };
    let capture = Capture {
        t0,
        t_end,
        endpoints,
        relays,
        clients,
        queued,
    };
    let (trace, stats) = build_trace(meta, &capture)?;
    if let Some(path) = &options.trace {
        trace.save(path)?;
    }
    let analysis = bastet_anonymity::analyse(
        &trace,
        &AnalysisConfig {
            max_messages: options.max_messages,
            ack_window: ACK_WINDOW,
            ..AnalysisConfig::default()
        },
    )?;
    Ok(AnonymityReport {
        traffic: options.traffic.name().to_string(),
        clients: options.clients,
        message_rate: options.message_rate,
        workload_secs,
        trace_secs: t_end.saturating_sub(t0) as f64 / 1e6,
        messages_queued: sent.len(),
        send_failures,
        model_mean_hop_delay_ms: mean.as_secs_f64() * 1000.0,
        model_max_hop_delay_ms: max.as_secs_f64() * 1000.0,
        capture: stats,
        analysis,
        trace: options.trace.clone(),
    })
}

fn consensus_layers(consensus: &bastet_directory::VerifiedConsensus) -> u8 {
    consensus
        .nodes
        .iter()
        .filter_map(|d| consensus.layer_of(&d.node_id()))
        .max()
        .unwrap_or(3)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn unix_micros() -> u64 {
    u64::try_from(bastet_link::unix_micros()).unwrap_or(u64::MAX)
}

/// Sends messages from `client` to its contact `to` at Poisson times of
/// `rate` a second until `until`, one at a time (a client's outbox takes
/// one sender at once); what was sent, and how many sends failed.
async fn send_poisson(client: Client, to: String, rate: f64, until: Instant) -> (Vec<Sent>, usize) {
    let mut sent = Vec::new();
    let mut failed = 0;
    let gap = || Duration::from_secs_f64(-(1.0 - rand::random::<f64>()).ln() / rate);
    let mut next = Instant::now() + gap();
    let mut k = 0usize;
    while next < until {
        tokio::time::sleep_until(next.into()).await;
        let text = format!("anonymity workload message {k} from {}", client.name());
        k += 1;
        match client.send_content(&to, Payload::Text(&text), false).await {
            Ok(s) => sent.push(s),
            Err(e) => {
                tracing::warn!(error = %e, "a workload message could not be sent");
                failed += 1;
            }
        }
        // Behind schedule (a slow send): the next goes at once, not in a burst.
        next = (next + gap()).max(Instant::now());
    }
    (sent, failed)
}

/// The whole of a test log (an absent one is empty): at most the 64 MiB
/// the hooks write.
fn read_log(path: Option<&Path>) -> Result<String> {
    let Some(path) = path else {
        return Ok(String::new());
    };
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(Error::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// One relay's test logs.
#[derive(Clone, Debug)]
pub struct RelayLogs {
    /// The relay in the trace.
    pub endpoint: Endpoint,
    /// `test_ingress_log`: `<unix micros> <peer ip> <length> <frame id>`.
    pub ingress: String,
    /// `test_hop_log` (mixnodes): `<in frame id> <out frame id>`.
    pub hops: String,
    /// `test_store_log` (mailbox servers): `<frame id> <kind> <mailbox>`.
    pub stores: String,
}

/// One client's test log.
#[derive(Clone, Debug, Default)]
pub struct ClientLogs {
    /// The client in the trace.
    pub index: u32,
    /// Its mailbox id, hex.
    pub mailbox_id: String,
    /// `test_send_log`: `<unix micros> <frame id> <kind> <recipient> <message>:<fragment>`.
    pub sends: String,
}

/// Everything a capture collected.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    /// Start of the trace, unix microseconds.
    pub t0: u64,
    /// Its end.
    pub t_end: u64,
    /// Who sends from which address.
    pub endpoints: HashMap<IpAddr, Endpoint>,
    /// The relays' logs.
    pub relays: Vec<RelayLogs>,
    /// The clients' logs.
    pub clients: Vec<ClientLogs>,
    /// When each message (by id) was queued, unix microseconds.
    pub queued: HashMap<String, u64>,
}

/// Joins a capture's logs into a trace: the link events the relays saw
/// between `t0` and `t_end`, in time order, and each real packet's chain
/// of link events from its client to its mailbox server.
pub fn build_trace(meta: TraceMeta, capture: &Capture) -> Result<(Trace, CaptureStats)> {
    let mut stats = CaptureStats::default();
    let mut seen: Vec<(u64, Endpoint, Endpoint, FrameId)> = Vec::new();
    let mut next_hop: HashMap<FrameId, FrameId> = HashMap::new();
    let mut stored: HashMap<FrameId, (String, String)> = HashMap::new();
    for relay in &capture.relays {
        for line in relay.ingress.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let parsed = match *f.as_slice() {
                [t, ip, _len, id] => t
                    .parse::<u64>()
                    .ok()
                    .zip(ip.parse::<IpAddr>().ok())
                    .zip(FrameId::from_str(id).ok()),
                _ => None,
            };
            let Some(((t, ip), id)) = parsed else {
                stats.unparsed_lines += 1;
                continue;
            };
            if t < capture.t0 || t > capture.t_end {
                continue;
            }
            match capture.endpoints.get(&ip) {
                Some(from) if *from != relay.endpoint => {
                    seen.push((t - capture.t0, *from, relay.endpoint, id));
                }
                _ => stats.unattributed_frames += 1,
            }
        }
        for line in relay.hops.lines() {
            match line.split_once(' ') {
                Some((a, b)) => {
                    // `- out` (own cover) and `in -` (a loop back) join nothing.
                    if let (Ok(a), Ok(b)) = (FrameId::from_str(a), FrameId::from_str(b)) {
                        next_hop.insert(a, b);
                    } else if a != "-" && b != "-" {
                        stats.unparsed_lines += 1;
                    }
                }
                None => stats.unparsed_lines += 1,
            }
        }
        for line in relay.stores.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match (
                f.as_slice(),
                f.first().and_then(|id| FrameId::from_str(id).ok()),
            ) {
                (&[_, kind, mailbox], Some(id)) => {
                    stored.insert(id, (kind.to_string(), mailbox.to_string()));
                }
                _ => stats.unparsed_lines += 1,
            }
        }
    }
    // Stable: frames of one instant keep their per-relay order.
    seen.sort_by_key(|s| s.0);
    let mut at: HashMap<FrameId, u64> = HashMap::with_capacity(seen.len());
    let mut events = Vec::with_capacity(seen.len());
    for (i, (t_us, from, to, id)) in seen.into_iter().enumerate() {
        at.entry(id).or_insert(i as u64);
        events.push(LinkEvent { t_us, from, to });
    }
    stats.link_events = events.len();

    let by_mailbox: HashMap<&str, u32> = capture
        .clients
        .iter()
        .map(|c| (c.mailbox_id.as_str(), c.index))
        .collect();
    let mut messages = Vec::new();
    for client in &capture.clients {
        for line in client.sends.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let &[t, id, kind, recipient, message] = f.as_slice() else {
                stats.unparsed_lines += 1;
                continue;
            };
            if kind != "real" {
                continue;
            }
            let (Ok(t), Ok(id)) = (t.parse::<u64>(), FrameId::from_str(id)) else {
                stats.unparsed_lines += 1;
                continue;
            };
            if t < capture.t0 || t > capture.t_end {
                continue;
            }
            stats.real_packets_sent += 1;
            let Some(links) = follow(id, &at, &next_hop, &events) else {
                continue;
            };
            let last = links.last().and_then(|&l| events.get(l as usize));
            let Some(LinkEvent { t_us: arrived, .. }) = last else {
                continue;
            };
            let Some(first) = links.first().and_then(|&l| events.get(l as usize)) else {
                continue;
            };
            if first.from != Endpoint::Client(client.index) {
                continue;
            }
            let end_id = chain_end(id, &next_hop, links.len());
            let stored_for = end_id.and_then(|e| stored.get(&e));
            if stored_for.is_some_and(|(kind, _)| kind != "message") {
                continue;
            }
            let to = by_mailbox
                .get(recipient)
                .or_else(|| stored_for.and_then(|(_, m)| by_mailbox.get(m.as_str())));
            let Some(&to) = to else {
                continue;
            };
            let message_id = message.split_once(':').map_or(message, |(m, _)| m);
            let queued = capture
                .queued
                .get(message_id)
                .copied()
                .unwrap_or(t)
                .max(capture.t0)
                - capture.t0;
            stats.real_packets_traced += 1;
            messages.push((
                *arrived,
                MessageTruth {
                    sender: client.index,
                    recipient: to,
                    queued_us: queued.min(*arrived),
                    links,
                },
            ));
        }
    }
    messages.sort_by_key(|m| m.0);
    let trace = Trace {
        observation: Observation { meta, events },
        truth: GroundTruth {
            messages: messages.into_iter().map(|m| m.1).collect(),
        },
    };
    Ok((trace, stats))
}

/// The link events of the packet first sent as frame `id`, hop by hop
/// through the mixes to a mailbox server; `None` if it did not get there
/// within the trace.
fn follow(
    id: FrameId,
    at: &HashMap<FrameId, u64>,
    next_hop: &HashMap<FrameId, FrameId>,
    events: &[LinkEvent],
) -> Option<Vec<u64>> {
    let mut links = Vec::new();
    let mut id = id;
    for _ in 0..MAX_CHAIN {
        let e = *at.get(&id)?;
        links.push(e);
        match events.get(e as usize)?.to {
            Endpoint::Mailbox(_) => return Some(links),
            Endpoint::Mix(_) => id = *next_hop.get(&id)?,
            Endpoint::Client(_) => return None,
        }
    }
    None
}

/// The frame id of the `hops`-th frame along `id`'s chain (the last one
/// for a whole chain).
fn chain_end(id: FrameId, next_hop: &HashMap<FrameId, FrameId>, hops: usize) -> Option<FrameId> {
    let mut id = id;
    for _ in 1..hops {
        id = *next_hop.get(&id)?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastet_link::frame_id;

    fn meta() -> TraceMeta {
        TraceMeta {
            version: TRACE_VERSION,
            clients: 2,
            mix_layers: vec![1, 2, 3],
            mailboxes: 1,
            client_mailbox: vec![0, 0],
            mean_hop_delay_us: 2000,
            max_hop_delay_us: 100_000,
            duration_us: 1_000_000,
            description: "test".into(),
        }
    }

    #[test]
    fn a_real_packet_is_followed_by_frame_id_from_its_client_to_its_mailbox() {
        let ids: Vec<FrameId> = (0u8..6).map(|i| frame_id(&[i])).collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let endpoints = HashMap::from([
            (ip("127.2.0.1"), Endpoint::Client(0)),
            (ip("127.2.0.2"), Endpoint::Client(1)),
            (ip("127.1.0.1"), Endpoint::Mix(0)),
            (ip("127.1.0.2"), Endpoint::Mix(1)),
            (ip("127.1.0.3"), Endpoint::Mix(2)),
            (ip("127.1.0.4"), Endpoint::Mailbox(0)),
        ]);
        let t0 = 1_700_000_000_000_000u64;
        let line = |dt: u64, from: &str, id: FrameId| format!("{} {from} 2048 {id}\n", t0 + dt);
        let relays = vec![
            RelayLogs {
                endpoint: Endpoint::Mix(0),
                // The real packet, a cover packet from client 1, and a probe
                // from an unknown address.
                ingress: line(10, "127.2.0.1", ids[0])
                    + &line(12, "127.2.0.2", ids[5])
                    + &line(5, "127.0.0.1", ids[4])
                    + "garbage\n",
                hops: format!("{} {}\n- {}\n", ids[0], ids[1], ids[4]),
                stores: String::new(),
            },
            RelayLogs {
                endpoint: Endpoint::Mix(1),
                ingress: line(30, "127.1.0.1", ids[1]),
                hops: format!("{} {}\n", ids[1], ids[2]),
                stores: String::new(),
            },
            RelayLogs {
                endpoint: Endpoint::Mix(2),
                ingress: line(50, "127.1.0.2", ids[2]),
                hops: format!("{} {}\n", ids[2], ids[3]),
                stores: String::new(),
            },
            RelayLogs {
                endpoint: Endpoint::Mailbox(0),
                ingress: line(70, "127.1.0.3", ids[3]),
                hops: String::new(),
                stores: format!("{} message {}\n", ids[3], "bb"),
            },
        ];
        let clients = vec![
            ClientLogs {
                index: 0,
                mailbox_id: "aa".into(),
                sends: format!("{} {} real bb m1:0\n", t0 + 9, ids[0]),
            },
            ClientLogs {
                index: 1,
                mailbox_id: "bb".into(),
                sends: format!("{} {} drop - -\n", t0 + 11, ids[5]),
            },
        ];
        let capture = Capture {
            t0,
            t_end: t0 + 1_000_000,
            endpoints,
            relays,
            clients,
            queued: HashMap::from([("m1".to_string(), t0 + 3)]),
        };
        let (trace, stats) = build_trace(meta(), &capture).unwrap();
        let ev = |t_us, from, to| LinkEvent { t_us, from, to };
        assert_eq!(
            trace.observation.events,
            vec![
                ev(10, Endpoint::Client(0), Endpoint::Mix(0)),
                ev(12, Endpoint::Client(1), Endpoint::Mix(0)),
                ev(30, Endpoint::Mix(0), Endpoint::Mix(1)),
                ev(50, Endpoint::Mix(1), Endpoint::Mix(2)),
                ev(70, Endpoint::Mix(2), Endpoint::Mailbox(0)),
            ]
        );
        assert_eq!(
            trace.truth.messages,
            vec![MessageTruth {
                sender: 0,
                recipient: 1,
                queued_us: 3,
                links: vec![0, 2, 3, 4],
            }]
        );
        assert_eq!(
            stats,
            CaptureStats {
                link_events: 5,
                unattributed_frames: 1,
                real_packets_sent: 1,
                real_packets_traced: 1,
                unparsed_lines: 1,
            }
        );
        // It is a trace the analysis reads back.
        let mut bytes = Vec::new();
        trace.write_jsonl(&mut bytes).unwrap();
        assert_eq!(Trace::read_jsonl(&bytes[..]).unwrap(), trace);

        // A packet lost on the way (no hop line at the second mix) is
        // counted sent, not traced.
        let mut lossy = capture.clone();
        lossy.relays[1].hops.clear();
        let (trace, stats) = build_trace(meta(), &lossy).unwrap();
        assert!(trace.truth.messages.is_empty());
        assert_eq!((stats.real_packets_sent, stats.real_packets_traced), (1, 0));
    }

    #[test]
    fn options_are_checked_and_no_cover_means_no_delay() {
        let ok = AnonymityOptions::default();
        check(&ok).unwrap();
        for bad in [
            AnonymityOptions {
                clients: 3,
                ..ok.clone()
            },
            AnonymityOptions {
                message_rate: 0.0,
                ..ok.clone()
            },
            AnonymityOptions {
                duration: Duration::from_secs(1),
                ..ok.clone()
            },
        ] {
            assert!(check(&bad).is_err());
        }
        let p = Traffic::NoCover.params().unwrap();
        assert_eq!((p.mean_hop_delay, p.loop_rate), (Duration::ZERO, 0.0));
        assert_eq!(delay_model(&p).0, MODEL_MIN_MEAN);
        assert_eq!(
            Traffic::Preset("balanced".into()).params().unwrap(),
            TrafficParams::balanced()
        );
        assert!(Traffic::Preset("fast".into()).params().is_err());
        assert_eq!(
            Traffic::NoCover.client_config().unwrap().params().unwrap(),
            p
        );
    }
}
