//! `bastet-testnet bench mixnode`: one real mixnode process under load.
//!
//! ```text
//!  harness process (this one)                       mixnode process (taskset -c 0..N-1)
//!  generator ──TLS (pre-built packets)──────────────▶ listen ─▶ workers ─▶ mixer ─┐
//!  sink ◀──TLS───────────────────────────────────────────────────────── outbound ◀┘
//!  bastet-directory process: the consensus that lists the mixnode and the sink
//! ```
//!
//! Packets are built before each phase (in parallel, while the mixnode
//! idles) so that the generator is never the bottleneck, and each is used
//! once: the mixnode's replay filter would drop a second copy. The sink is
//! the mixnode's only next hop and is listed in the consensus as a mix; it
//! timestamps every frame as it is read and recognises a latency packet by
//! the first bytes of its forwarded form, computed beforehand with the
//! mixnode's Sphinx key (read from its data directory, as its operator
//! could).
//!
//! Phases, in order:
//! 1. the bare Sphinx `process` rate: a child process (`bench process-rate`)
//!    on the mixnode's cores, N threads, before and after the throughput
//!    phase;
//! 2. throughput: a closed loop over several TLS connections that keeps a
//!    fixed number of packets between the generator and the sink, so the
//!    mixnode always has work and never a reason to drop;
//! 3. latency at 25 %, 50 % and 90 % of the measured throughput, Poisson
//!    arrivals on one connection from a dedicated thread, zero mixing
//!    delay; each followed by the same schedule sent straight to the sink
//!    (the harness's own TLS, loopback and scheduling cost, subtracted),
//!    and set against two bounds: the same packets through the bare relay
//!    (one thread on the mixnode's CPU that unwraps and writes, nothing
//!    else; at 25 and 50 % on one core), and the latency of an ideal
//!    relay at the same rate, one first-come-first-served queue per core
//!    whose packets take the unwrap times phase 1 measured
//!    ([`queue_floor`]);
//! 4. overload: twice the measured throughput for 10 s, then 50 % for
//!    10 s, with the mixnode's memory sampled every 250 ms and the 99th
//!    percentile of each second watched until it is back to normal.
//!
//! Timings are reported, never asserted: the machines this runs on are
//! shared.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bastet_directory::{
    AuthorityRef, Descriptor, DirectoryClient, DirectoryConfig, NodeKeys, Role, epoch_of,
    publish_forever, read_key_file, sphinx_key_path, unix_now,
};
use bastet_link::{CertPin, FRAME_LEN, TlsIdentity};
use bastet_sphinx::{
    Hop, MailboxId, NodeId, PACKET_LEN, Prepared, Processed, SphinxPublicKey, SphinxSecretKey,
    build,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::layout::{self, edit_config};
use crate::network::{http_get, parse_json};
use crate::ports::free_ports;
use crate::process::{Binaries, NodeProcess, run_command, stop_all};
use crate::{Error, Result, metric_sum};

/// Epoch length of the bench's authority: the default, so that the
/// mixnode's replay filter has its default size (`max_packet_rate` × the
/// key's life). A key rotation inside a run is survived: packets are built
/// with the key of the epoch they are built in, and the previous key stays
/// in force for 5 minutes.
const EPOCH_SECS: u64 = 3_600;
/// Throughput phase: time before the measurement starts.
const WARMUP: Duration = Duration::from_secs(1);
/// Throughput phase: packets between the generator and the sink at once.
/// Below every queue on the way (ingress 8192, to the next hop 1024) and
/// under the ingress wait bound (`ingress_max_wait_ms`, 100 ms: 256 packets
/// are 30–60 ms of work at 4,000–8,000 packets/s), so a drop means a fault,
/// not the generator outrunning the node; and enough to keep it busy.
const WINDOW: u64 = 256;
/// Throughput phase: TLS connections the generator writes on.
const GENERATOR_CONNECTIONS: usize = 3;
/// Throughput phase: most frames one connection writes before a flush.
const WRITE_BATCH: u64 = 16;
/// Margin over the bare process rate when sizing the throughput phase's
/// packets (the mixnode cannot forward faster than it unwraps).
const THROUGHPUT_MARGIN: f64 = 1.15;
/// Offered loads of the latency phases, as fractions of the throughput.
pub const LATENCY_LOADS: [f64; 3] = [0.25, 0.5, 0.9];
/// Overload: offered load as a multiple of the throughput, and for how long.
const OVERLOAD_FACTOR: f64 = 2.0;
const OVERLOAD_SECS: f64 = 10.0;
/// After the overload: offered load and for how long recovery is watched.
const RECOVERY_LOAD: f64 = 0.5;
const RECOVERY_SECS: f64 = 10.0;
/// How often the mixnode's memory is sampled.
const RSS_PERIOD: Duration = Duration::from_millis(250);
/// How long a paced phase waits for its last packets to arrive.
const DRAIN: Duration = Duration::from_secs(2);
/// Unwrap times kept per thread of a bare process-rate measurement (about
/// 8,500 a second per core).
const MAX_SERVICE_SAMPLES: usize = 100_000;
/// Highest latency phase the [`BareRelay`] runs at: it writes every packet
/// on its own, so it saturates below 90 % of the mixnode's rate.
const BARE_RELAY_MAX_LOAD: f64 = 0.5;
/// Arrivals simulated for an ideal relay's latency floor.
const FLOOR_ARRIVALS: usize = 200_000;
/// How long each bare process-rate measurement runs.
const BARE_SECS: f64 = 3.0;
/// Most packets built for one phase (about 2.4 KB each): a phase that would
/// need more is shortened, and the report says so.
const MAX_PHASE_PACKETS: usize = 400_000;
/// The latency goal at 50 % load (p99 added per hop) and the recovery
/// criterion after the overload.
const LATENCY_GOAL_US: f64 = 1000.0;
/// Peak RSS goal.
const RSS_GOAL_KIB: u64 = 200 * 1024;
/// "Recovery within seconds".
const RECOVERY_GOAL_SECS: f64 = 5.0;
/// Readiness limits.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// What `bench mixnode` runs.
#[derive(Clone, Debug)]
pub struct MixnodeBenchOptions {
    /// CPUs the mixnode runs on (`taskset`); its worker count and runtime
    /// follow its affinity. The harness takes the remaining CPUs if there
    /// are any, else it shares these.
    pub cores: usize,
    /// Length of the throughput phase and of each latency phase.
    pub seconds: f64,
    /// Where the Bastet binaries are (`None`: see [`Binaries::locate`]).
    pub bin_dir: Option<PathBuf>,
    /// The mixnode's `packet_work` setting: `"runtime"` (packet tasks on
    /// its async runtime) or `"threads"` (packet threads).
    pub packet_work: String,
}

/// The bare Sphinx processing rate: what `bench process-rate` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessRate {
    /// Threads that processed packets at once.
    pub threads: usize,
    /// Seconds measured.
    pub seconds: f64,
    /// Packets processed by all threads together.
    pub packets: u64,
    /// Packets per second, all threads together.
    pub rate: f64,
    /// Packets per second of CPU time the process used while measuring
    /// (utime + stime): unlike `rate`, unmoved by other work on its CPUs.
    pub per_cpu_sec: Option<f64>,
    /// Each packet's unwrap time, wall clock: how steady the CPUs were
    /// (a packet that took 10 times the median was interrupted). `None` in
    /// reports saved before it was measured.
    #[serde(default)]
    pub per_packet: Option<Percentiles>,
    /// The unwrap times themselves, ns (at most [`MAX_SERVICE_SAMPLES`]
    /// per thread): what [`queue_floor`] draws from. Passed from the child
    /// process, not kept in the report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_packet_ns: Vec<u64>,
}

/// Unwraps one mix layer (`Prepared::new` + `process`, what a mixnode's
/// worker does per packet) in a loop on `threads` threads for `seconds`,
/// over pre-built two-hop packets; the bound the mixnode is measured
/// against. Blocks the calling thread.
pub fn process_rate(threads: usize, seconds: f64) -> Result<ProcessRate> {
    if threads == 0 || !(0.1..=600.0).contains(&seconds) {
        return Err(Error::InvalidOption(
            "--threads must be at least 1 and --seconds between 0.1 and 600".into(),
        ));
    }
    let secret = SphinxSecretKey::random();
    let route = standalone_route(&secret);
    let packets = (0..64)
        .map(|_| build(&route, &MailboxId([7; 32]), b"bench"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let ticks_before = cpu_ticks(std::process::id());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let counts = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (packets, secret) = (&packets, &secret);
                s.spawn(
                    move || -> std::result::Result<(u64, Vec<u64>), bastet_sphinx::Error> {
                        let mut done = 0u64;
                        let mut times = Vec::with_capacity(MAX_SERVICE_SAMPLES.min(1 << 16));
                        let mut i = t;
                        while Instant::now() < deadline {
                            for _ in 0..16 {
                                let p = &packets[i % packets.len()];
                                let started = Instant::now();
                                Prepared::new(p.as_bytes(), secret)?.process()?;
                                if times.len() < MAX_SERVICE_SAMPLES {
                                    times.push(
                                        u64::try_from(started.elapsed().as_nanos())
                                            .unwrap_or(u64::MAX),
                                    );
                                }
                                i += 1;
                                done += 1;
                            }
                        }
                        Ok((done, times))
                    },
                )
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(Ok((0, Vec::new()))))
            .collect::<std::result::Result<Vec<(u64, Vec<u64>)>, _>>()
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_secs = cpu_ticks(std::process::id())
        .zip(ticks_before)
        .map(|(after, before)| after.saturating_sub(before) as f64 / clock_ticks());
    let packets: u64 = counts.iter().map(|(n, _)| n).sum();
    let per_packet_ns: Vec<u64> = counts.into_iter().flat_map(|(_, t)| t).collect();
    Ok(ProcessRate {
        threads,
        seconds: elapsed,
        packets,
        rate: rate(packets as f64, elapsed),
        per_cpu_sec: cpu_secs.filter(|c| *c > 0.0).map(|c| packets as f64 / c),
        per_packet: (!per_packet_ns.is_empty())
            .then(|| Percentiles::of(&mut per_packet_ns.clone())),
        per_packet_ns,
    })
}

/// A two-hop route, zero delays, whose first hop unwraps with `secret` and
/// whose second is a made-up node: packets for a relay outside any network.
fn standalone_route(secret: &SphinxSecretKey) -> [Hop; 2] {
    [
        Hop {
            node: NodeId([1; 32]),
            sphinx_key: SphinxPublicKey::from(secret),
            delay: Duration::ZERO,
        },
        Hop {
            node: NodeId([2; 32]),
            sphinx_key: SphinxPublicKey::from(&SphinxSecretKey::random()),
            delay: Duration::ZERO,
        },
    ]
}

/// The latency an ideal relay would add at `rate` packets a second: Poisson
/// arrivals to `servers` first-come-first-served servers (one per core),
/// each packet taking an unwrap time drawn from `service_ns`, the bare
/// Sphinx work measured on the same CPUs in the same run. No I/O, TLS,
/// wake-ups or scheduling: a mixnode can only add latency above this, as
/// its throughput can only fall below the bare rate. Reproducible (a fixed
/// seed); `None` without samples, servers or rate.
pub fn queue_floor(rate: f64, servers: usize, service_ns: &[u64]) -> Option<Percentiles> {
    use rand::{RngExt, SeedableRng};
    if service_ns.is_empty() || servers == 0 || !rate.is_finite() || rate <= 0.0 {
        return None;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    let mut free_at = vec![0.0f64; servers];
    let mut now = 0.0f64;
    let mut sojourn = Vec::with_capacity(FLOOR_ARRIVALS);
    for _ in 0..FLOOR_ARRIVALS {
        now += -(1.0 - rng.random::<f64>()).ln() / rate * 1e9;
        // First come, first served: the packet goes to the server that is
        // free soonest.
        let server = free_at.iter_mut().min_by(|a, b| a.total_cmp(b))?;
        let service = service_ns[rng.random_range(0..service_ns.len())] as f64;
        let done = now.max(*server) + service;
        *server = done;
        sojourn.push((done - now) as u64);
    }
    Some(Percentiles::of(&mut sojourn))
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Samples they are taken over.
    pub samples: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `ns` (sorted in place).
    pub fn of(ns: &mut [u64]) -> Self {
        ns.sort_unstable();
        let us = |q: f64| nearest_rank(ns, q) as f64 / 1000.0;
        Percentiles {
            samples: ns.len(),
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: ns.last().map_or(0.0, |&m| m as f64 / 1000.0),
        }
    }

    /// `self - base`, percentile by percentile: the latency a hop adds over
    /// the direct path, as an estimate (a difference of percentiles is not
    /// the percentile of differences).
    pub fn minus(&self, base: &Percentiles) -> Added {
        Added {
            p50_us: self.p50_us - base.p50_us,
            p99_us: self.p99_us - base.p99_us,
            p999_us: self.p999_us - base.p999_us,
        }
    }
}

/// Latency a hop adds: its path's percentiles minus the direct path's.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Added {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
}

/// The value at quantile `q` of sorted `v` by the nearest-rank method
/// (0 for an empty slice).
fn nearest_rank(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Events per second, 0 over no time.
fn rate(count: f64, secs: f64) -> f64 {
    if secs > 0.0 { count / secs } else { 0.0 }
}

/// What the mixnode did over one phase, from its `/metrics` and `/proc`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeActivity {
    /// Seconds measured.
    pub secs: f64,
    /// Packets taken off the link per second (`packets_received`, drops at
    /// ingress included).
    pub received_per_sec: f64,
    /// Packets handed to the next hop per second (`packets_forwarded`).
    pub forwarded_per_sec: f64,
    /// Frames the sink read per second.
    pub sink_per_sec: f64,
    /// Packets dropped, by reason (only reasons that occurred).
    pub drops: BTreeMap<String, u64>,
    /// The mixnode's CPU time over wall time (1.0 = one core busy).
    pub node_cpu_cores: Option<f64>,
    /// Packets forwarded per second of the mixnode's CPU time.
    pub forwarded_per_cpu_sec: Option<f64>,
    /// The harness's own CPU time over wall time (generator, sink, pacer).
    pub harness_cpu_cores: Option<f64>,
    /// Largest VmRSS sampled (every 250 ms), KiB.
    pub rss_max_kib: Option<u64>,
    /// VmHWM after the phase, the high-water mark having been reset just
    /// before it (`/proc/PID/clear_refs`), KiB; `None` if it could not be.
    pub hwm_kib: Option<u64>,
}

/// The throughput phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Throughput {
    /// Packets kept between the generator and the sink.
    pub window: u64,
    /// TLS connections the generator wrote on.
    pub connections: usize,
    /// Packets built for the phase.
    pub packets_built: usize,
    /// Whether the generator used them all before the time was up (the
    /// measurement then ends there).
    pub ran_out: bool,
    /// What the mixnode did.
    pub node: NodeActivity,
    /// Forwarded per second over the bare process rate on the same cores.
    pub ratio_to_bare: f64,
    /// Forwarded per second of the mixnode's CPU time over the bare
    /// packets per CPU-second: how close each CPU-second the mixnode got
    /// comes to pure Sphinx work, whatever else ran on its cores.
    pub cpu_efficiency: Option<f64>,
}

/// One latency phase and its direct-path baseline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyPhase {
    /// Offered load as a fraction of the measured throughput.
    pub load: f64,
    /// Packets per second asked of the pacer.
    pub target_rate: f64,
    /// Packets per second it achieved.
    pub offered_rate: f64,
    /// Packets sent.
    pub sent: usize,
    /// Packets that reached the sink.
    pub arrived: usize,
    /// Through the mixnode: send to read at the sink.
    pub path: Percentiles,
    /// Generator straight to the sink, same schedule.
    pub direct: Percentiles,
    /// `path - direct`.
    pub added: Added,
    /// The bound `added` is measured against: an ideal relay's latency at
    /// the offered rate on this run's bare unwrap times ([`queue_floor`]).
    /// `None` in reports saved before it was computed.
    #[serde(default)]
    pub floor: Option<Percentiles>,
    /// The same packets, on the same schedule, through the least a relay
    /// can do on this rig ([`BareRelay`]); on one core, at loads up to
    /// [`BARE_RELAY_MAX_LOAD`]. `None` otherwise (one thread is no bound
    /// for several cores) and in older reports.
    #[serde(default)]
    pub bare_relay: Option<BareRelayPath>,
    /// What the mixnode did.
    pub node: NodeActivity,
}

/// A latency phase's packets through the [`BareRelay`] instead of the
/// mixnode.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct BareRelayPath {
    /// Packets that reached the sink.
    pub arrived: usize,
    /// Send to read at the sink.
    pub path: Percentiles,
    /// `path - direct`: what the bare relay adds.
    pub added: Added,
}

/// One second of the recovery after the overload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoveryWindow {
    /// Start, seconds after the overload ended (by send time).
    pub start_s: f64,
    /// Packets sent in it.
    pub sent: usize,
    /// Of which arrived.
    pub arrived: usize,
    /// Their 99th percentile minus the direct path's at 50 %, µs.
    pub added_p99_us: f64,
}

/// The overload phase and the recovery after it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overload {
    /// Packets per second asked of the pacer.
    pub target_rate: f64,
    /// Packets per second it achieved (the link may push back).
    pub offered_rate: f64,
    /// Seconds of overload.
    pub secs: f64,
    /// What the mixnode did during the overload.
    pub node: NodeActivity,
    /// What it did during the recovery.
    pub recovery_node: NodeActivity,
    /// VmRSS at the end of the recovery, KiB.
    pub rss_end_kib: Option<u64>,
    /// Offered load during the recovery, packets per second.
    pub recovery_rate: f64,
    /// The per-second windows of the recovery.
    pub windows: Vec<RecoveryWindow>,
    /// Start of the first window after the overload in which nothing was
    /// lost and the added p99 was at most 1 ms (the issue's criterion).
    pub recovered_after_s: Option<f64>,
    /// The steady-state criterion, µs: twice the added p99 of the 50 %
    /// phase, or 1 ms if that is higher (on a loaded machine the 1 ms of
    /// `recovered_after_s` may never hold, overload or not).
    pub steady_threshold_us: f64,
    /// Start of the first window in which nothing was lost and the added
    /// p99 was at most `steady_threshold_us`.
    pub steady_after_s: Option<f64>,
}

/// A goal of the issue and how this run measured against it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Goal {
    /// The goal.
    pub goal: String,
    /// The figure measured.
    pub measured: String,
    /// Whether it was met (`None`: not measurable in this run).
    pub met: Option<bool>,
}

/// Everything `bench mixnode` measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MixnodeBenchReport {
    /// CPUs the mixnode ran on.
    pub cores: usize,
    /// The mixnode's CPUs (`taskset -c`).
    pub node_cpus: String,
    /// The harness's CPUs during measurements; the same as the mixnode's
    /// when there were none left over.
    pub harness_cpus: String,
    /// CPUs online.
    pub cpus_online: usize,
    /// `release` or `debug` (the profile this harness was built with; the
    /// binaries next to it are assumed to match).
    pub profile: String,
    /// The mixnode's `packet_work` (`runtime` or `threads`; reports saved
    /// before the option existed ran `threads`).
    #[serde(default = "threads")]
    pub packet_work: String,
    /// `/proc/loadavg` (1, 5, 15 min) before and after the run.
    pub load_before: [f64; 3],
    /// See `load_before`.
    pub load_after: [f64; 3],
    /// Length of the throughput and of each latency phase.
    pub seconds: f64,
    /// Bytes per packet.
    pub packet_len: usize,
    /// The bare process rate before the throughput phase.
    pub bare_before: ProcessRate,
    /// And after it.
    pub bare_after: ProcessRate,
    /// Their mean, packets per second.
    pub bare_rate: f64,
    /// The throughput phase.
    pub throughput: Throughput,
    /// The latency phases.
    pub latency: Vec<LatencyPhase>,
    /// The overload and the recovery.
    pub overload: Overload,
    /// Largest VmHWM over the phases, KiB.
    pub peak_rss_kib: Option<u64>,
    /// The issue's goals against these figures.
    pub goals: Vec<Goal>,
}

/// The mixnode, authority and sink of a bench, and the files they use.
struct Rig {
    // Field order is drop order: the sink and its publisher stop before the
    // authority they publish to, processes before their files go.
    _tasks: JoinSet<()>,
    children: Children,
    dir: PathBuf,
    mix_listen: SocketAddr,
    mix_metrics: SocketAddr,
    mix_pin: CertPin,
    mix_id: NodeId,
    mix_data_dir: PathBuf,
    sink: Sink,
    sink_id: NodeId,
    sink_sphinx: SphinxPublicKey,
    node_cpus: Vec<usize>,
    harness_cpus: Vec<usize>,
    all_cpus: Vec<usize>,
    started: Instant,
    rss: Arc<Mutex<Vec<(f64, u64)>>>,
}

/// Child processes, stopped when dropped (on every way out, Ctrl-C
/// included).
#[derive(Default)]
struct Children(Vec<NodeProcess>);

impl Drop for Children {
    fn drop(&mut self) {
        for (name, outcome) in stop_all(&mut self.0) {
            tracing::debug!(node = %name, ?outcome, "stopped");
        }
    }
}

impl Rig {
    fn mix(&mut self) -> Result<&mut NodeProcess> {
        let node = self
            .children
            .0
            .iter_mut()
            .find(|n| n.name == "mixnode")
            .ok_or_else(|| Error::InvalidOption("the mixnode was not started".into()))?;
        if let Some(status) = node.exited() {
            return Err(node.exited_error(status));
        }
        Ok(node)
    }

    fn mix_pid(&mut self) -> Result<u32> {
        Ok(self.mix()?.pid())
    }

    /// The route every bench packet takes: the mixnode (its key for the
    /// epoch now, read from its data directory) with zero delay, then the
    /// sink. Also the mixnode's secret, to see what it will forward.
    fn route(&self) -> Result<([Hop; 2], SphinxSecretKey)> {
        let epoch = epoch_of(unix_now(), EPOCH_SECS);
        let secret = read_key_file(&sphinx_key_path(&self.mix_data_dir, epoch))?;
        let secret = SphinxSecretKey::from(*secret);
        Ok((
            [
                Hop {
                    node: self.mix_id,
                    sphinx_key: SphinxPublicKey::from(&secret),
                    delay: Duration::ZERO,
                },
                Hop {
                    node: self.sink_id,
                    sphinx_key: self.sink_sphinx,
                    delay: Duration::ZERO,
                },
            ],
            secret,
        ))
    }

    /// Builds `n` unique packets along [`Rig::route`] on every CPU the
    /// harness may use; with `track`, also the key the sink will see.
    async fn packets(&self, n: usize, track: bool) -> Result<(Arc<Batch>, Vec<u128>)> {
        let (route, secret) = self.route()?;
        let started = Instant::now();
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let built = tokio::task::spawn_blocking(move || {
            build_batch(n, &route, track.then_some(&secret), threads)
        })
        .await
        .map_err(|e| Error::Io {
            what: "building packets".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
        tracing::info!(
            "built {n} packets{} in {:.1} s on {threads} threads",
            if track { " (tracked)" } else { "" },
            started.elapsed().as_secs_f64()
        );
        Ok((Arc::new(built.0), built.1))
    }

    /// Lets the harness run on its own CPUs (during a measurement) or on
    /// all of them (while building packets). Threads started later inherit
    /// the affinity of the thread that starts them.
    fn pin_harness(&self, measuring: bool) -> Result<()> {
        if self.harness_cpus.is_empty() {
            return Ok(());
        }
        let cpus = cpu_list(if measuring {
            &self.harness_cpus
        } else {
            &self.all_cpus
        });
        // `taskset -a` walks /proc/PID/task and fails if a thread ends
        // meanwhile (an idle blocking-pool thread, the pacer): try again.
        for _ in 0..10 {
            let ok = std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", &cpus])
                .arg(std::process::id().to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Error::Io {
            what: format!("taskset -a -p -c {cpus} (the harness's own CPUs)"),
            source: std::io::Error::other("failed ten times"),
        })
    }

    async fn snapshot(&mut self) -> Result<Snapshot> {
        let pid = self.mix_pid()?;
        let text = match http_get(self.mix_metrics, "/metrics").await {
            Some((200, text)) => text,
            other => {
                return Err(Error::UnexpectedOutput {
                    command: format!("GET http://{}/metrics", self.mix_metrics),
                    why: "the mixnode did not answer 200".into(),
                    output: format!("{other:?}").chars().take(200).collect(),
                });
            }
        };
        Ok(Snapshot {
            hwm_kib: status_kib(pid, "VmHWM"),
            at: Instant::now(),
            sink_frames: self.sink.shared.frames.load(Ordering::Relaxed),
            received: metric_sum(&text, "bastet_mixnode_packets_received", ""),
            forwarded: metric_sum(&text, "bastet_mixnode_packets_forwarded", ""),
            drops: parse_drops(&text),
            node_ticks: cpu_ticks(pid),
            self_ticks: cpu_ticks(std::process::id()),
        })
    }

    /// Resets the mixnode's VmHWM, so that the next snapshot's is the
    /// peak since. Says whether it could.
    fn reset_hwm(&mut self) -> bool {
        self.mix_pid()
            .is_ok_and(|pid| std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok())
    }

    /// What the mixnode did from `a` to `b`; `hwm_reset`: its VmHWM was
    /// reset just before `a`, so `b`'s is the phase's peak.
    fn activity(&self, a: &Snapshot, b: &Snapshot, hwm_reset: bool) -> NodeActivity {
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let forwarded = b.forwarded - a.forwarded;
        let ticks_per_sec = clock_ticks();
        let cpu = |x: Option<u64>, y: Option<u64>| -> Option<f64> {
            Some(y?.checked_sub(x?)? as f64 / ticks_per_sec)
        };
        let node_cpu = cpu(a.node_ticks, b.node_ticks);
        let from = a.at.duration_since(self.started).as_secs_f64();
        let to = b.at.duration_since(self.started).as_secs_f64();
        let rss_max_kib = self
            .rss
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(t, _)| (from..=to).contains(t))
            .map(|&(_, kib)| kib)
            .max();
        let hwm_kib = b.hwm_kib.filter(|_| hwm_reset);
        NodeActivity {
            secs,
            received_per_sec: rate(b.received - a.received, secs),
            forwarded_per_sec: rate(forwarded, secs),
            sink_per_sec: rate(b.sink_frames.saturating_sub(a.sink_frames) as f64, secs),
            drops: drop_delta(&a.drops, &b.drops),
            node_cpu_cores: node_cpu.map(|c| rate(c, secs)),
            forwarded_per_cpu_sec: node_cpu.filter(|c| *c > 0.0).map(|c| forwarded / c),
            harness_cpu_cores: cpu(a.self_ticks, b.self_ticks).map(|c| rate(c, secs)),
            rss_max_kib,
            hwm_kib,
        }
    }

    /// Runs `bench process-rate` on the mixnode's cores with one thread
    /// per core.
    async fn bare_rate(&self) -> Result<ProcessRate> {
        let exe = std::env::current_exe().map_err(Error::io("locating this executable"))?;
        let (cpus, threads, secs) = (
            cpu_list(&self.node_cpus),
            self.node_cpus.len().to_string(),
            BARE_SECS.to_string(),
        );
        let out = run_command(
            Path::new("taskset"),
            &[
                os("-c"),
                os(&cpus),
                exe.as_os_str(),
                os("bench"),
                os("process-rate"),
                os("--threads"),
                os(&threads),
                os("--seconds"),
                os(&secs),
            ],
            &[],
            Duration::from_secs(60),
        )
        .await?;
        parse_json("bastet-testnet bench process-rate", &out)
    }
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

/// Counters at one instant.
struct Snapshot {
    at: Instant,
    sink_frames: u64,
    received: f64,
    forwarded: f64,
    drops: BTreeMap<String, f64>,
    node_ticks: Option<u64>,
    self_ticks: Option<u64>,
    /// The mixnode's VmHWM when the snapshot was taken.
    hwm_kib: Option<u64>,
}

/// Packets laid end to end in one allocation.
struct Batch {
    bytes: Vec<u8>,
}

impl Batch {
    fn len(&self) -> usize {
        self.bytes.len() / PACKET_LEN
    }

    fn get(&self, i: usize) -> &[u8] {
        &self.bytes[i * PACKET_LEN..(i + 1) * PACKET_LEN]
    }

    /// `n` frames of random bytes (for the direct path, which nobody
    /// unwraps), and their keys.
    fn random(n: usize) -> (Batch, Vec<u128>) {
        let mut bytes = vec![0u8; n * PACKET_LEN];
        rand::fill(&mut bytes[..]);
        let batch = Batch { bytes };
        let keys = (0..n).map(|i| frame_key(batch.get(i))).collect();
        (batch, keys)
    }
}

/// What the sink recognises a frame by: its first 16 bytes (for a Sphinx
/// packet, half its group element, which differs for every packet).
fn frame_key(frame: &[u8]) -> u128 {
    let mut k = [0u8; 16];
    k.copy_from_slice(&frame[..16]);
    u128::from_le_bytes(k)
}

/// Builds `n` packets along `route` on `threads` threads; with `secret`
/// (the first hop's), also the key of each packet as forwarded.
fn build_batch(
    n: usize,
    route: &[Hop; 2],
    secret: Option<&SphinxSecretKey>,
    threads: usize,
) -> Result<(Batch, Vec<u128>)> {
    let mut bytes = vec![0u8; n * PACKET_LEN];
    let mut keys = vec![0u128; if secret.is_some() { n } else { 0 }];
    let per = n.div_ceil(threads.max(1)).max(1);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let mut key_chunks = keys.chunks_mut(per);
        let handles: Vec<_> = bytes
            .chunks_mut(per * PACKET_LEN)
            .map(|chunk| {
                let key_chunk = key_chunks.next();
                s.spawn(move || -> Result<()> {
                    let mut key_chunk = key_chunk;
                    for (j, slot) in chunk.chunks_mut(PACKET_LEN).enumerate() {
                        let p = build(route, &MailboxId([7; 32]), b"bench")?;
                        slot.copy_from_slice(p.as_bytes());
                        if let (Some(secret), Some(keys)) = (secret, key_chunk.as_deref_mut()) {
                            match Prepared::new(p.as_bytes(), secret)?.process()? {
                                Processed::Forward { packet, .. } => {
                                    keys[j] = frame_key(packet.as_bytes());
                                }
                                _ => {
                                    return Err(Error::Sphinx(bastet_sphinx::Error::Malformed(
                                        "a bench packet is not forwarded by its first hop".into(),
                                    )));
                                }
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::InvalidOption(
                        "a packet-building thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok((Batch { bytes }, keys))
}

/// Arrival times of the packets of a paced phase, filled in by the sink.
struct Tracker {
    index: HashMap<u128, u32>,
    arrived_ns: Vec<AtomicU64>,
}

impl Tracker {
    fn new(keys: &[u128]) -> Self {
        Tracker {
            index: keys
                .iter()
                .enumerate()
                .map(|(i, &k)| (k, u32::try_from(i).unwrap_or(u32::MAX)))
                .collect(),
            arrived_ns: keys.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn arrivals(&self) -> Vec<u64> {
        self.arrived_ns
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    fn arrived(&self) -> usize {
        self.arrived_ns
            .iter()
            .filter(|a| a.load(Ordering::Relaxed) != 0)
            .count()
    }
}

/// What the sink's connections share with the harness.
struct SinkShared {
    /// Frames read on every connection.
    frames: AtomicU64,
    /// Woken at every frame (the throughput phase's window).
    progress: Notify,
    /// The paced phase now running, if any.
    tracker: RwLock<Option<Arc<Tracker>>>,
    /// The clock every timestamp counts from.
    base: Instant,
}

impl SinkShared {
    fn track(&self, tracker: Option<Arc<Tracker>>) {
        *self.tracker.write().unwrap_or_else(PoisonError::into_inner) = tracker;
    }
}

/// The mixnode's next hop: a TLS listener that reads whole frames and
/// timestamps each as it completes.
struct Sink {
    addr: SocketAddr,
    pin: CertPin,
    shared: Arc<SinkShared>,
}

impl Sink {
    async fn start(base: Instant, tasks: &mut JoinSet<()>) -> Result<Sink> {
        let identity = TlsIdentity::generate().map_err(link_error("making the sink's TLS key"))?;
        let config = bastet_link::server_config(&identity)
            .map_err(link_error("configuring the sink's TLS"))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::io("binding the sink on 127.0.0.1"))?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("reading the sink's address"))?;
        let shared = Arc::new(SinkShared {
            frames: AtomicU64::new(0),
            progress: Notify::new(),
            tracker: RwLock::new(None),
            base,
        });
        let accept_shared = shared.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let (acceptor, shared) = (acceptor.clone(), accept_shared.clone());
                connections.spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        sink_connection(tls, &shared).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Sink {
            addr,
            pin: identity.pin(),
            shared,
        })
    }
}

async fn sink_connection<S: tokio::io::AsyncRead + Unpin>(mut tls: S, shared: &SinkShared) {
    let mut frame = vec![0u8; FRAME_LEN];
    while tls.read_exact(&mut frame).await.is_ok() {
        let at = ns_since(shared.base);
        shared.frames.fetch_add(1, Ordering::Relaxed);
        let tracker = shared
            .tracker
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(t) = tracker
            && let Some(&i) = t.index.get(&frame_key(&frame))
            && let Some(slot) = t.arrived_ns.get(i as usize)
        {
            slot.store(at.max(1), Ordering::Relaxed);
        }
        shared.progress.notify_waiters();
    }
}

/// The least a relay can do on this rig: one thread, pinned to the
/// mixnode's CPUs, with its own single-threaded runtime, that takes one TLS
/// connection, and for each frame unwraps it with the mixnode's key and
/// writes the result to the sink at once. No ingress queue, mixer, replay
/// filter, metrics or batching. Its added latency is the bound the
/// mixnode's is set against: the same TLS, system calls, loopback and
/// wake-ups, and the same Sphinx work, with nothing else.
struct BareRelay {
    addr: SocketAddr,
    pin: CertPin,
    thread: std::thread::JoinHandle<std::result::Result<u64, String>>,
}

impl BareRelay {
    /// Starts the thread and waits until it is pinned, listening and
    /// connected to the sink (whose side of that runs on this runtime, so
    /// the wait must not block it).
    async fn start(secret: SphinxSecretKey, sink: &Sink, cpus: &[usize]) -> Result<BareRelay> {
        let fail = |why: String| Error::Io {
            what: "starting the bare relay".into(),
            source: std::io::Error::other(why),
        };
        let identity =
            TlsIdentity::generate().map_err(link_error("making the bare relay's key"))?;
        let pin = identity.pin();
        let acceptor = tokio_rustls::TlsAcceptor::from(
            bastet_link::server_config(&identity)
                .map_err(link_error("configuring the bare relay's TLS"))?,
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(Error::io("binding the bare relay on 127.0.0.1"))?;
        listener
            .set_nonblocking(true)
            .map_err(Error::io("setting the bare relay's listener non-blocking"))?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("reading the bare relay's address"))?;
        let (sink_addr, sink_pin, cpus) = (sink.addr, sink.pin, cpu_list(cpus));
        let (ready_tx, ready_rx) =
            tokio::sync::oneshot::channel::<std::result::Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("bench-bare-relay".into())
            .spawn(move || -> std::result::Result<u64, String> {
                let started = (|| -> std::result::Result<_, String> {
                    pin_this_thread(&cpus)?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("its runtime: {e}"))?;
                    let out = rt
                        .block_on(bastet_link::connect(&sink_addr.to_string(), sink_pin))
                        .map_err(|e| format!("connecting to the sink: {e}"))?;
                    let listener = rt
                        .block_on(async { tokio::net::TcpListener::from_std(listener) })
                        .map_err(|e| format!("its listener: {e}"))?;
                    Ok((rt, out, listener))
                })();
                let (rt, mut out, listener) = match started {
                    Ok(started) => {
                        let _ = ready_tx.send(Ok(()));
                        started
                    }
                    Err(why) => {
                        let _ = ready_tx.send(Err(why.clone()));
                        return Err(why);
                    }
                };
                rt.block_on(async move {
                    let (tcp, _) = tokio::time::timeout(READY_TIMEOUT, listener.accept())
                        .await
                        .map_err(|_| "nobody connected".to_string())?
                        .map_err(|e| format!("accepting: {e}"))?;
                    let _ = tcp.set_nodelay(true);
                    let mut tls = acceptor
                        .accept(tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?;
                    let mut frame = vec![0u8; FRAME_LEN];
                    let mut forwarded = 0u64;
                    while tls.read_exact(&mut frame).await.is_ok() {
                        let processed = Prepared::new(&frame, &secret)
                            .and_then(Prepared::process)
                            .map_err(|e| format!("unwrapping: {e}"))?;
                        let Processed::Forward { packet, .. } = processed else {
                            return Err("a packet did not unwrap to a forward hop".into());
                        };
                        out.write_all(packet.as_bytes())
                            .await
                            .map_err(|e| format!("writing to the sink: {e}"))?;
                        out.flush()
                            .await
                            .map_err(|e| format!("writing to the sink: {e}"))?;
                        forwarded += 1;
                    }
                    let _ = out.shutdown().await;
                    Ok(forwarded)
                })
            })
            .map_err(Error::io("starting the bare relay's thread"))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(BareRelay { addr, pin, thread }),
            Ok(Err(why)) => Err(fail(why)),
            Err(_) => Err(fail("its thread ended before it was ready".into())),
        }
    }

    /// Waits for the thread, which ends when the sender hangs up, without
    /// blocking the runtime (the sink may still be reading from it); the
    /// thread's error, if it had one, or how many packets it forwarded.
    async fn finish(self) -> Result<u64> {
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| format!("waiting for its thread: {e}"))
            .and_then(|joined| joined.map_err(|_| "it panicked".to_string()))
            .and_then(|r| r)
            .map_err(|why| Error::Io {
                what: "running the bare relay".into(),
                source: std::io::Error::other(why),
            })
    }
}

/// Pins the calling thread (alone, not its process) to `cpus` with
/// `taskset -p`.
fn pin_this_thread(cpus: &str) -> std::result::Result<(), String> {
    let tid = std::fs::read_link("/proc/thread-self")
        .map_err(|e| format!("reading /proc/thread-self: {e}"))?;
    let tid = tid
        .file_name()
        .map(|t| t.to_string_lossy().into_owned())
        .ok_or("no thread id in /proc/thread-self")?;
    let status = std::process::Command::new("taskset")
        .args(["-p", "-c", cpus, &tid])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("running taskset: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("taskset -p -c {cpus} {tid} failed ({status})"))
    }
}

fn ns_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn link_error(what: &'static str) -> impl FnOnce(bastet_link::Error) -> Error {
    move |e| Error::Io {
        what: what.into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Runs the whole bench: sets up an authority, the sink and the mixnode,
/// measures each phase, stops everything.
pub async fn bench_mixnode(options: &MixnodeBenchOptions) -> Result<MixnodeBenchReport> {
    if !(1.0..=600.0).contains(&options.seconds) {
        return Err(Error::InvalidOption(
            "--seconds must be between 1 and 600".into(),
        ));
    }
    let all_cpus = allowed_cpus()?;
    if options.cores == 0 || options.cores > all_cpus.len() {
        return Err(Error::InvalidOption(format!(
            "--cores must be between 1 and the {} CPUs this process may use ({})",
            all_cpus.len(),
            cpu_list(&all_cpus)
        )));
    }
    let load_before = load_average();
    let bins = Binaries::locate(options.bin_dir.as_deref())?;
    let temp = tempfile::Builder::new()
        .prefix("bastet-bench-")
        .tempdir()
        .map_err(Error::io("creating a temporary directory"))?;
    let mut rig = match setup(
        temp.path(),
        &bins,
        (options.cores, &options.packet_work),
        all_cpus,
    )
    .await
    {
        Ok(rig) => rig,
        Err(e) => {
            let kept = temp.keep();
            tracing::warn!("bench files (node logs) kept in {}", kept.display());
            return Err(e);
        }
    };
    let result = measure(&mut rig, options, load_before).await;
    // Processes stop before their files go, or are kept.
    drop(rig);
    if result.is_err() {
        let kept = temp.keep();
        tracing::warn!("bench files (node logs) kept in {}", kept.display());
    }
    result
}

async fn measure(
    rig: &mut Rig,
    options: &MixnodeBenchOptions,
    load_before: [f64; 3],
) -> Result<MixnodeBenchReport> {
    tracing::info!(
        "mixnode on CPUs {}, harness on {}",
        cpu_list(&rig.node_cpus),
        if rig.harness_cpus.is_empty() {
            "the same (none left over)".to_string()
        } else {
            cpu_list(&rig.harness_cpus)
        }
    );

    let bare_before = rig.bare_rate().await?;
    tracing::info!(
        rate = bare_before.rate as u64,
        "bare Sphinx process rate on the mixnode's cores"
    );
    // What N threads could do with the CPUs to themselves: the wall-clock
    // rate undercounts when other work shares the CPUs, and the phase must
    // not run out of packets.
    let bound = bare_before.per_cpu_sec.map_or(bare_before.rate, |r| {
        bare_before.rate.max(r * bare_before.threads as f64)
    });
    let throughput = throughput(rig, options.seconds, bound).await?;
    let bare_after = rig.bare_rate().await?;
    let bare_rate = (bare_before.rate + bare_after.rate) / 2.0;
    let capacity = throughput.node.forwarded_per_sec;
    let bare_per_cpu_sec = bare_before
        .per_cpu_sec
        .zip(bare_after.per_cpu_sec)
        .map(|(a, b)| (a + b) / 2.0);
    let throughput = Throughput {
        ratio_to_bare: rate(capacity, bare_rate),
        cpu_efficiency: throughput
            .node
            .forwarded_per_cpu_sec
            .zip(bare_per_cpu_sec)
            .map(|(f, b)| rate(f, b)),
        ..throughput
    };
    tracing::info!(
        forwarded = capacity as u64,
        bare = bare_rate as u64,
        "throughput measured"
    );
    if capacity < 1.0 {
        return Err(Error::NotReady {
            secs: options.seconds as u64,
            waiting_for: "the mixnode to forward packets (it forwarded none)".into(),
            dir: rig.dir.clone(),
        });
    }

    let service_ns = [
        bare_before.per_packet_ns.as_slice(),
        &bare_after.per_packet_ns,
    ]
    .concat();
    let (bare_before, bare_after) = (
        ProcessRate {
            per_packet_ns: Vec::new(),
            ..bare_before
        },
        ProcessRate {
            per_packet_ns: Vec::new(),
            ..bare_after
        },
    );
    let mut latency = Vec::new();
    for load in LATENCY_LOADS {
        latency.push(latency_phase(rig, load, capacity, options.seconds, &service_ns).await?);
    }
    let steady_p99 = latency
        .iter()
        .find(|l| l.load == RECOVERY_LOAD)
        .map_or(0.0, |l| l.added.p99_us);
    let direct_p99 = latency
        .iter()
        .find(|l| l.load == RECOVERY_LOAD)
        .map_or(0.0, |l| l.direct.p99_us);
    let overload = overload_phase(rig, capacity, steady_p99, direct_p99).await?;
    let peak_rss_kib = latency
        .iter()
        .map(|l| l.node.hwm_kib)
        .chain([
            throughput.node.hwm_kib,
            overload.node.hwm_kib,
            overload.recovery_node.hwm_kib,
        ])
        .flatten()
        .max();
    let mut report = MixnodeBenchReport {
        cores: options.cores,
        node_cpus: cpu_list(&rig.node_cpus),
        harness_cpus: if rig.harness_cpus.is_empty() {
            cpu_list(&rig.node_cpus)
        } else {
            cpu_list(&rig.harness_cpus)
        },
        cpus_online: rig.all_cpus.len(),
        packet_work: options.packet_work.clone(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        load_before,
        load_after: load_average(),
        seconds: options.seconds,
        packet_len: PACKET_LEN,
        bare_before,
        bare_after,
        bare_rate,
        throughput,
        latency,
        overload,
        peak_rss_kib,
        goals: Vec::new(),
    };
    report.goals = goals(&report);
    Ok(report)
}

/// Starts the authority, the sink and the mixnode, and waits until a
/// packet crosses the mixnode to the sink.
fn threads() -> String {
    "threads".into()
}

async fn setup(
    dir: &Path,
    bins: &Binaries,
    (cores, packet_work): (usize, &str),
    all_cpus: Vec<usize>,
) -> Result<Rig> {
    let dir = dir.to_path_buf();
    let node_cpus: Vec<usize> = all_cpus[..cores].to_vec();
    let harness_cpus: Vec<usize> = all_cpus[cores..].to_vec();
    let ports = free_ports(4)?;
    let (auth_listen, auth_metrics, mix_listen, mix_metrics) =
        (ports[0], ports[1], ports[2], ports[3]);
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let sink = Sink::start(started, &mut tasks).await?;
    let sink_keys = NodeKeys::generate();
    let sink_id = sink_keys.node_id();
    let sink_secret = SphinxSecretKey::random();
    let sink_sphinx = SphinxPublicKey::from(&sink_secret);

    // The authority, as the testnet makes one.
    let auth_dir = dir.join("authority");
    let (listen_s, metrics_s, epoch_s) = (
        auth_listen.to_string(),
        auth_metrics.to_string(),
        EPOCH_SECS.to_string(),
    );
    let out = run_command(
        &bins.path("bastet-directory"),
        &[
            os("init"),
            os("--dir"),
            auth_dir.as_os_str(),
            os("--listen"),
            os(&listen_s),
            os("--metrics-listen"),
            os(&metrics_s),
            os("--epoch-secs"),
            os(&epoch_s),
        ],
        &[],
        INIT_TIMEOUT,
    )
    .await?;
    let info: AuthorityInfo = parse_json("bastet-directory init", &out)?;
    let directory = DirectoryConfig {
        authorities: vec![AuthorityRef {
            url: info.url,
            identity_key: info.identity_key,
            tls_pin: info.tls_pin,
        }],
        threshold: None,
        epoch_secs: EPOCH_SECS,
    };
    let directory_file = dir.join("directory.toml");
    let text = layout::directory_toml(&directory).map_err(|why| Error::Config {
        path: directory_file.clone(),
        why,
    })?;
    std::fs::write(&directory_file, text)
        .map_err(Error::io(format!("writing {}", directory_file.display())))?;

    // The mixnode, with no cover traffic of its own.
    let mix_dir = dir.join("mixnode");
    let (listen_s, metrics_s) = (mix_listen.to_string(), mix_metrics.to_string());
    let out = run_command(
        &bins.path("bastet-mixnode"),
        &[
            os("init"),
            os("--dir"),
            mix_dir.as_os_str(),
            os("--listen"),
            os(&listen_s),
            os("--metrics-listen"),
            os(&metrics_s),
            os("--jurisdiction"),
            os("DE"),
            os("--operator"),
            os("Bench Org"),
            os("--directory"),
            directory_file.as_os_str(),
        ],
        &[],
        INIT_TIMEOUT,
    )
    .await?;
    let init: MixInit = parse_json("bastet-mixnode init", &out)?;
    edit_config(
        &init.config,
        "cover_rate",
        0.0.into(),
        "Set by bastet-testnet bench: only the bench's packets.",
    )?;
    edit_config(
        &init.config,
        "packet_work",
        packet_work.into(),
        "Set by bastet-testnet bench --packet-work.",
    )?;
    let mix_id = NodeId::from_hex(&init.node_id).ok_or_else(|| Error::UnexpectedOutput {
        command: "bastet-mixnode init".into(),
        why: "node_id is not 64 hex digits".into(),
        output: init.node_id.clone(),
    })?;
    let mix_pin = CertPin::from_hex(&init.tls_pin).map_err(|e| Error::UnexpectedOutput {
        command: "bastet-mixnode init".into(),
        why: format!("tls_pin: {e}"),
        output: init.tls_pin.clone(),
    })?;
    edit_config(
        &auth_dir.join("authority.toml"),
        "allowed_nodes",
        toml::Value::Array(vec![init.node_id.clone().into(), sink_id.to_hex().into()]),
        "",
    )?;

    let env = vec![
        (
            "BASTET_LOG".to_string(),
            std::env::var("BASTET_LOG").unwrap_or_else(|_| "info".into()),
        ),
        ("NO_COLOR".to_string(), "1".to_string()),
    ];
    let mut children = Children::default();
    let authority_cpus = if harness_cpus.is_empty() {
        &all_cpus
    } else {
        &harness_cpus
    };
    let config = auth_dir.join("authority.toml");
    let authority_bin = bins.path("bastet-directory");
    children.0.push(NodeProcess::spawn(
        "authority",
        Path::new("taskset"),
        &[
            os("-c"),
            os(&cpu_list(authority_cpus)),
            authority_bin.as_os_str(),
            os("run"),
            os("--config"),
            config.as_os_str(),
        ],
        &env,
        &auth_dir.join("node.log"),
    )?);
    wait_healthy(&mut children, "authority", auth_metrics, &dir).await?;

    // The sink joins the consensus as a mix, then the mixnode starts.
    let client = Arc::new(DirectoryClient::new(&directory)?);
    let descriptor = Descriptor {
        identity_key: *sink_keys.identity.verifying_key().as_bytes(),
        epoch: 0,
        sphinx_key: sink_sphinx.to_bytes(),
        tls_pin: sink.pin.0,
        addr: sink.addr.to_string(),
        api_addr: None,
        circuit_addr: None,
        role: Role::Mix,
        jurisdiction: "CH".into(),
        operator: "Bench Sink".into(),
    };
    let identity = sink_keys.identity.clone();
    tasks.spawn(publish_forever(client.clone(), move |epoch| {
        Descriptor {
            epoch,
            ..descriptor.clone()
        }
        .sign(&identity)
    }));
    let mix_bin = bins.path("bastet-mixnode");
    children.0.push(NodeProcess::spawn(
        "mixnode",
        Path::new("taskset"),
        &[
            os("-c"),
            os(&cpu_list(&node_cpus)),
            mix_bin.as_os_str(),
            os("run"),
            os("--config"),
            init.config.as_os_str(),
        ],
        &env,
        &mix_dir.join("node.log"),
    )?);
    wait_healthy(&mut children, "mixnode", mix_metrics, &dir).await?;

    let rss = Arc::new(Mutex::new(Vec::new()));
    let mut rig = Rig {
        children,
        dir,
        mix_listen,
        mix_metrics,
        mix_pin,
        mix_id,
        mix_data_dir: mix_dir,
        sink,
        sink_id,
        sink_sphinx,
        node_cpus,
        harness_cpus,
        all_cpus,
        started,
        rss: rss.clone(),
        _tasks: tasks,
    };
    let pid = rig.mix_pid()?;
    rig._tasks.spawn(async move {
        let mut tick = tokio::time::interval(RSS_PERIOD);
        loop {
            tick.tick().await;
            if let Some(kib) = status_kib(pid, "VmRSS") {
                rss.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((started.elapsed().as_secs_f64(), kib));
            }
        }
    });
    probe(&mut rig).await?;
    Ok(rig)
}

/// What `bastet-directory init` prints.
#[derive(Deserialize)]
struct AuthorityInfo {
    url: String,
    identity_key: String,
    tls_pin: String,
}

/// What `bastet-mixnode init` prints.
#[derive(Deserialize)]
struct MixInit {
    node_id: String,
    tls_pin: String,
    config: PathBuf,
}

async fn wait_healthy(
    children: &mut Children,
    name: &str,
    metrics: SocketAddr,
    dir: &Path,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if matches!(http_get(metrics, "/health").await, Some((200, _))) {
            return Ok(());
        }
        if let Some(node) = children.0.iter_mut().find(|n| n.name == name)
            && let Some(status) = node.exited()
        {
            return Err(node.exited_error(status));
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                secs: READY_TIMEOUT.as_secs(),
                waiting_for: format!("the {name}'s /health"),
                dir: dir.to_path_buf(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends tracked packets one at a time until one reaches the sink: the
/// mixnode then knows the sink from its consensus (a packet for a next hop
/// it does not know yet makes it refresh).
async fn probe(rig: &mut Rig) -> Result<()> {
    let (batch, keys) = rig.packets(100, true).await?;
    let tracker = Arc::new(Tracker::new(&keys));
    rig.sink.shared.track(Some(tracker.clone()));
    let mut link = bastet_link::connect(&rig.mix_listen.to_string(), rig.mix_pin)
        .await
        .map_err(link_error("connecting to the mixnode"))?;
    let mut arrived = false;
    for i in 0..batch.len() {
        link.write_all(batch.get(i))
            .await
            .map_err(Error::io("sending a probe to the mixnode"))?;
        link.flush()
            .await
            .map_err(Error::io("sending a probe to the mixnode"))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tracker.arrived() > 0 {
            arrived = true;
            break;
        }
        rig.mix()?;
    }
    let _ = link.shutdown().await;
    rig.sink.shared.track(None);
    if !arrived {
        return Err(Error::NotReady {
            secs: 20,
            waiting_for: "a probe to cross the mixnode to the sink".into(),
            dir: rig.dir.clone(),
        });
    }
    Ok(())
}

/// The closed loop: [`WINDOW`] packets in flight over
/// [`GENERATOR_CONNECTIONS`] connections; measured for `seconds` after
/// [`WARMUP`]. `bare_rate`, the most the mixnode could unwrap, sizes it.
async fn throughput(rig: &mut Rig, seconds: f64, bare_rate: f64) -> Result<Throughput> {
    let wanted = (bare_rate * (WARMUP.as_secs_f64() + seconds) * THROUGHPUT_MARGIN).ceil() as usize
        + WINDOW as usize;
    let n = wanted.min(MAX_PHASE_PACKETS);
    let (batch, _) = rig.packets(n, false).await?;
    rig.pin_harness(true)?;
    let shared = rig.sink.shared.clone();
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let exhausted = Arc::new(Notify::new());
    let base_frames = shared.frames.load(Ordering::Relaxed);
    let mut writers = JoinSet::new();
    for _ in 0..GENERATOR_CONNECTIONS {
        let mut link = bastet_link::connect(&rig.mix_listen.to_string(), rig.mix_pin)
            .await
            .map_err(link_error("connecting to the mixnode"))?;
        let (batch, shared, next, sent, stop, exhausted) = (
            batch.clone(),
            shared.clone(),
            next.clone(),
            sent.clone(),
            stop.clone(),
            exhausted.clone(),
        );
        writers.spawn(async move {
            // Packets the node lost (none expected) would hold the window
            // shut: after a second without progress they are written off.
            let mut written_off = 0u64;
            let mut stalled_since: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                let done = shared.frames.load(Ordering::Relaxed) - base_frames + written_off;
                let in_flight = sent.load(Ordering::Relaxed).saturating_sub(done);
                let room = WINDOW.saturating_sub(in_flight).min(WRITE_BATCH);
                if room == 0 {
                    let waited = stalled_since.get_or_insert_with(Instant::now);
                    if waited.elapsed() > Duration::from_secs(1) {
                        written_off += in_flight;
                        stalled_since = None;
                    }
                    let _ =
                        tokio::time::timeout(Duration::from_millis(2), shared.progress.notified())
                            .await;
                    continue;
                }
                stalled_since = None;
                let first = next.fetch_add(room as usize, Ordering::Relaxed);
                if first >= batch.len() {
                    exhausted.notify_one();
                    break;
                }
                let last = (first + room as usize).min(batch.len());
                sent.fetch_add((last - first) as u64, Ordering::Relaxed);
                for i in first..last {
                    if link.write_all(batch.get(i)).await.is_err() {
                        return;
                    }
                }
                if link.flush().await.is_err() {
                    return;
                }
            }
            let _ = link.shutdown().await;
        });
    }
    let ran_out = async {
        exhausted.notified().await;
    };
    tokio::pin!(ran_out);
    let mut out_of_packets = false;
    tokio::select! {
        () = tokio::time::sleep(WARMUP) => {}
        () = &mut ran_out => out_of_packets = true,
    }
    let reset = rig.reset_hwm();
    let a = rig.snapshot().await?;
    if !out_of_packets {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs_f64(seconds)) => {}
            () = &mut ran_out => out_of_packets = true,
        }
    }
    let b = rig.snapshot().await?;
    stop.store(true, Ordering::Relaxed);
    while tokio::time::timeout(Duration::from_secs(5), writers.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    let node = rig.activity(&a, &b, reset);
    rig.pin_harness(false)?;
    // Let what is still in flight drain before the next phase.
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.mix()?;
    Ok(Throughput {
        window: WINDOW,
        connections: GENERATOR_CONNECTIONS,
        packets_built: n,
        ran_out: out_of_packets,
        node,
        ratio_to_bare: 0.0,
        cpu_efficiency: None,
    })
}

/// A run of packets sent at `rate` a second on average.
struct Segment {
    batch: Arc<Batch>,
    rate: f64,
}

/// What a pacer did: per segment, the send time of each packet (ns from
/// the sink's base) and when the segment ended.
struct Paced {
    sent_ns: Vec<Vec<u64>>,
    first_ns: u64,
    ends_ns: Vec<u64>,
}

/// Sends `segments` to `addr` over one TLS connection from a thread of
/// its own, at Poisson-distributed times: the pacer sleeps until the next
/// packet is due and then sends every packet whose time has come, so it
/// never spins. `boundary` hears of the end of every segment but the last.
async fn pace(
    addr: SocketAddr,
    pin: CertPin,
    segments: Vec<Segment>,
    base: Instant,
    boundary: Option<tokio::sync::mpsc::Sender<()>>,
) -> Result<Paced> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            let _ = tx.send(pace_blocking(addr, pin, &segments, base, boundary.as_ref()));
        })
        .map_err(Error::io("starting the pacer thread"))?;
    rx.await.map_err(|_| Error::Io {
        what: "pacing packets".into(),
        source: std::io::Error::other("the pacer thread ended without a result"),
    })?
}

fn pace_blocking(
    addr: SocketAddr,
    pin: CertPin,
    segments: &[Segment],
    base: Instant,
    boundary: Option<&tokio::sync::mpsc::Sender<()>>,
) -> Result<Paced> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting the pacer's runtime"))?;
    let mut link = rt
        .block_on(bastet_link::connect(&addr.to_string(), pin))
        .map_err(link_error("connecting the pacer"))?;
    let io = Error::io(format!("pacing packets to {addr}"));
    let mut next_at = Instant::now() + Duration::from_millis(5);
    let first_ns = u64::try_from(next_at.duration_since(base).as_nanos()).unwrap_or(0);
    let mut paced = Paced {
        sent_ns: Vec::new(),
        first_ns,
        ends_ns: Vec::new(),
    };
    let mut result = Ok(());
    for (s, segment) in segments.iter().enumerate() {
        let n = segment.batch.len();
        let mut sent = vec![0u64; n];
        let mut i = 0;
        while i < n && result.is_ok() {
            let now = Instant::now();
            if next_at > now {
                std::thread::sleep(next_at - now);
                continue;
            }
            result = rt.block_on(async {
                while i < n && next_at <= Instant::now() {
                    sent[i] = ns_since(base);
                    link.write_all(segment.batch.get(i)).await?;
                    i += 1;
                    next_at += exp_gap(segment.rate, rand::random::<f64>());
                }
                link.flush().await
            });
        }
        paced.sent_ns.push(sent);
        paced.ends_ns.push(ns_since(base));
        if s + 1 < segments.len()
            && let Some(b) = boundary
        {
            let _ = b.try_send(());
        }
    }
    let _ = rt.block_on(link.shutdown());
    result.map_err(io)?;
    Ok(paced)
}

/// A Poisson process's gap for `rate` events a second, from a uniform
/// `u` in [0, 1).
fn exp_gap(rate: f64, u: f64) -> Duration {
    let secs = -(1.0 - u).ln() / rate.max(f64::MIN_POSITIVE);
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(1))
}

/// Latencies (ns) of the packets that arrived, and how many did.
fn latencies(sent_ns: &[u64], arrived_ns: &[u64]) -> Vec<u64> {
    sent_ns
        .iter()
        .zip(arrived_ns)
        .filter(|(_, a)| **a != 0)
        .map(|(s, a)| a.saturating_sub(*s))
        .collect()
}

/// Waits until every tracked packet arrived, or [`DRAIN`] passed.
async fn drain(tracker: &Tracker) {
    let deadline = Instant::now() + DRAIN;
    while tracker.arrived() < tracker.arrived_ns.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Packets of a paced phase: `rate × secs`, capped.
fn paced_count(rate: f64, secs: f64) -> usize {
    ((rate * secs).ceil() as usize).clamp(1, MAX_PHASE_PACKETS)
}

/// Paces `batch` at `rate` to `to`, whose packets reach the sink as
/// `keys`, and returns the latencies (ns) of those that arrived.
async fn paced_latencies(
    sink: &Sink,
    to: (SocketAddr, CertPin),
    batch: Arc<Batch>,
    keys: &[u128],
    rate: f64,
) -> Result<Vec<u64>> {
    let tracker = Arc::new(Tracker::new(keys));
    sink.shared.track(Some(tracker.clone()));
    let paced = pace(
        to.0,
        to.1,
        vec![Segment { batch, rate }],
        sink.shared.base,
        None,
    )
    .await;
    if paced.is_ok() {
        drain(&tracker).await;
    }
    sink.shared.track(None);
    Ok(latencies(&paced?.sent_ns.concat(), &tracker.arrivals()))
}

async fn latency_phase(
    rig: &mut Rig,
    load: f64,
    capacity: f64,
    seconds: f64,
    service_ns: &[u64],
) -> Result<LatencyPhase> {
    let target = load * capacity;
    let n = paced_count(target, seconds);
    let (batch, keys) = rig.packets(n, true).await?;
    let relay_batch = batch.clone();
    let tracker = Arc::new(Tracker::new(&keys));
    rig.sink.shared.track(Some(tracker.clone()));
    rig.pin_harness(true)?;
    let reset = rig.reset_hwm();
    let a = rig.snapshot().await?;
    let base = rig.sink.shared.base;
    let paced = pace(
        rig.mix_listen,
        rig.mix_pin,
        vec![Segment {
            batch,
            rate: target,
        }],
        base,
        None,
    )
    .await?;
    let b = rig.snapshot().await?;
    drain(&tracker).await;
    let node = rig.activity(&a, &b, reset);
    rig.sink.shared.track(None);
    let sent = paced.sent_ns.concat();
    let offered_rate = rate(
        sent.len() as f64,
        (paced.ends_ns[0].saturating_sub(paced.first_ns)) as f64 / 1e9,
    );
    let mut path_ns = latencies(&sent, &tracker.arrivals());
    let arrived = path_ns.len();
    let path = Percentiles::of(&mut path_ns);

    // The same packets through the bare relay (it keeps no replay filter),
    // with the mixnode's key, on its CPUs while the mixnode idles.
    let relay = if load <= BARE_RELAY_MAX_LOAD && rig.node_cpus.len() == 1 {
        let (_, secret) = rig.route()?;
        let relay = BareRelay::start(secret, &rig.sink, &rig.node_cpus).await?;
        let mut ns = paced_latencies(
            &rig.sink,
            (relay.addr, relay.pin),
            relay_batch,
            &keys,
            target,
        )
        .await?;
        relay.finish().await?;
        Some((ns.len(), Percentiles::of(&mut ns)))
    } else {
        drop(relay_batch);
        None
    };

    // The same schedule, straight to the sink.
    let (direct_batch, direct_keys) = Batch::random(n);
    let mut direct_ns = paced_latencies(
        &rig.sink,
        (rig.sink.addr, rig.sink.pin),
        Arc::new(direct_batch),
        &direct_keys,
        target,
    )
    .await?;
    rig.pin_harness(false)?;
    let direct = Percentiles::of(&mut direct_ns);
    rig.mix()?;
    let floor = queue_floor(offered_rate, rig.node_cpus.len(), service_ns);
    let bare_relay = relay.map(|(arrived, path)| BareRelayPath {
        arrived,
        path,
        added: path.minus(&direct),
    });
    tracing::info!(
        "{:.0} % load: {arrived}/{} arrived, added p50/p99/p999 {:.0}/{:.0}/{:.0} µs \
         (an ideal relay's {}; the bare relay adds {})",
        load * 100.0,
        sent.len(),
        path.p50_us - direct.p50_us,
        path.p99_us - direct.p99_us,
        path.p999_us - direct.p999_us,
        floor.map_or("?".into(), |f| format!(
            "{:.0}/{:.0}/{:.0}",
            f.p50_us, f.p99_us, f.p999_us
        )),
        bare_relay.map_or("-".into(), |r| format!(
            "{:.0}/{:.0}/{:.0}",
            r.added.p50_us, r.added.p99_us, r.added.p999_us
        ))
    );
    Ok(LatencyPhase {
        load,
        target_rate: target,
        offered_rate,
        sent: sent.len(),
        arrived,
        added: path.minus(&direct),
        path,
        direct,
        floor,
        bare_relay,
        node,
    })
}

async fn overload_phase(
    rig: &mut Rig,
    capacity: f64,
    steady_p99: f64,
    direct_p99: f64,
) -> Result<Overload> {
    let target = OVERLOAD_FACTOR * capacity;
    let recovery_rate = RECOVERY_LOAD * capacity;
    let n_over = paced_count(target, OVERLOAD_SECS);
    let n_rec = paced_count(recovery_rate, RECOVERY_SECS);
    let (over, _) = rig.packets(n_over, false).await?;
    let (rec, keys) = rig.packets(n_rec, true).await?;
    let tracker = Arc::new(Tracker::new(&keys));
    rig.sink.shared.track(Some(tracker.clone()));
    rig.pin_harness(true)?;
    let reset = rig.reset_hwm();
    let a = rig.snapshot().await?;
    let (boundary_tx, mut boundary_rx) = tokio::sync::mpsc::channel(1);
    let base = rig.sink.shared.base;
    let pacer = pace(
        rig.mix_listen,
        rig.mix_pin,
        vec![
            Segment {
                batch: over,
                rate: target,
            },
            Segment {
                batch: rec,
                rate: recovery_rate,
            },
        ],
        base,
        Some(boundary_tx),
    );
    tokio::pin!(pacer);
    // The overload's end, as the pacer reports it; the recovery runs on.
    let mut mid = None;
    let paced = loop {
        tokio::select! {
            paced = &mut pacer => break paced?,
            Some(()) = boundary_rx.recv(), if mid.is_none() => {
                // The overload's peak is in this snapshot; then the
                // recovery's own starts.
                let snapshot = rig.snapshot().await?;
                mid = Some((snapshot, rig.reset_hwm()));
            }
        }
    };
    let b = rig.snapshot().await?;
    drain(&tracker).await;
    rig.sink.shared.track(None);
    rig.pin_harness(false)?;
    let (mid, mid_reset) = match mid {
        Some(m) => m,
        None => (rig.snapshot().await?, false),
    };
    let node = rig.activity(&a, &mid, reset);
    let recovery_node = rig.activity(&mid, &b, mid_reset);
    let rss_end_kib = rig.mix_pid().ok().and_then(|pid| status_kib(pid, "VmRSS"));
    let over_secs = paced.ends_ns[0].saturating_sub(paced.first_ns) as f64 / 1e9;
    let offered_rate = rate(paced.sent_ns[0].len() as f64, over_secs);
    let steady_threshold_us = LATENCY_GOAL_US.max(2.0 * steady_p99);
    let windows = recovery_windows(
        &paced.sent_ns[1],
        &tracker.arrivals(),
        paced.ends_ns[0],
        direct_p99,
    );
    let first_under = |threshold: f64| {
        windows
            .iter()
            .find(|w| w.sent > 0 && w.arrived == w.sent && w.added_p99_us <= threshold)
            .map(|w| w.start_s)
    };
    let recovered_after_s = first_under(LATENCY_GOAL_US);
    let steady_after_s = first_under(steady_threshold_us);
    rig.mix()?;
    Ok(Overload {
        target_rate: target,
        offered_rate,
        secs: over_secs,
        node,
        recovery_node,
        rss_end_kib,
        recovery_rate,
        recovered_after_s,
        steady_threshold_us,
        steady_after_s,
        windows,
    })
}

/// One-second windows (by send time, from `from_ns`) of the recovery
/// packets: how many were sent and arrived, and their p99 minus
/// `direct_p99` (µs).
fn recovery_windows(
    sent_ns: &[u64],
    arrived_ns: &[u64],
    from_ns: u64,
    direct_p99: f64,
) -> Vec<RecoveryWindow> {
    let mut by_second: BTreeMap<u64, (usize, Vec<u64>)> = BTreeMap::new();
    for (s, a) in sent_ns.iter().zip(arrived_ns) {
        let second = s.saturating_sub(from_ns) / 1_000_000_000;
        let w = by_second.entry(second).or_default();
        w.0 += 1;
        if *a != 0 {
            w.1.push(a.saturating_sub(*s));
        }
    }
    by_second
        .into_iter()
        .map(|(second, (sent, mut lat))| {
            let p = Percentiles::of(&mut lat);
            RecoveryWindow {
                start_s: second as f64,
                sent,
                arrived: p.samples,
                added_p99_us: p.p99_us - direct_p99,
            }
        })
        .collect()
}

fn goals(r: &MixnodeBenchReport) -> Vec<Goal> {
    let mut goals = vec![Goal {
        goal: "packets/s >= 90 % of the bare process rate on the same cores".into(),
        measured: format!(
            "{:.0} forwarded/s = {:.0} % of {:.0}",
            r.throughput.node.forwarded_per_sec,
            r.throughput.ratio_to_bare * 100.0,
            r.bare_rate
        ),
        met: Some(r.throughput.ratio_to_bare >= 0.9),
    }];
    goals.push(Goal {
        goal: ">= 1.8x from 1 to 2 cores".into(),
        measured: "compare the --cores 1 and --cores 2 runs".into(),
        met: None,
    });
    if let Some(l) = r.latency.iter().find(|l| l.load == 0.5) {
        goals.push(Goal {
            goal: "added latency per hop at 50 % load: p99 <= 1 ms".into(),
            measured: format!(
                "p99 {:.0} µs (the bare relay: {}; an ideal relay on this run's bare unwrap times: {})",
                l.added.p99_us,
                l.bare_relay
                    .map_or("-".into(), |r| format!("{:.0} µs", r.added.p99_us)),
                l.floor.map_or("-".into(), |f| format!("{:.0} µs", f.p99_us)),
            ),
            met: Some(l.added.p99_us <= LATENCY_GOAL_US),
        });
    }
    if let Some(l) = r.latency.iter().find(|l| l.load == 0.9) {
        let peak = l.node.hwm_kib.or(l.node.rss_max_kib);
        goals.push(Goal {
            goal: "peak RSS at 90 % load <= 200 MB".into(),
            measured: peak.map_or("not measured".into(), |k| format!("{:.1} MiB", mib(k))),
            met: peak.map(|k| k <= RSS_GOAL_KIB),
        });
    }
    let o = &r.overload;
    let peak = [o.node.hwm_kib, o.node.rss_max_kib, o.recovery_node.hwm_kib]
        .into_iter()
        .flatten()
        .max();
    goals.push(Goal {
        goal: "under 2x overload RSS bounded (<= 200 MB)".into(),
        measured: peak.map_or("not measured".into(), |k| format!("peak {:.1} MiB", mib(k))),
        met: peak.map(|k| k <= RSS_GOAL_KIB),
    });
    goals.push(Goal {
        goal: "recovery from overload within seconds (<= 5 s to p99 <= 1 ms, nothing lost)".into(),
        measured: match (o.recovered_after_s, o.steady_after_s) {
            (Some(s), _) => format!("{s:.0} s"),
            (None, Some(s)) => format!(
                "never under 1 ms in 10 s; back to steady (<= {:.0} µs) after {s:.0} s",
                o.steady_threshold_us
            ),
            (None, None) => "not recovered in 10 s".into(),
        },
        met: Some(o.recovered_after_s.is_some_and(|s| s <= RECOVERY_GOAL_SECS)),
    });
    goals
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl MixnodeBenchReport {
    /// The report as text for a terminal.
    pub fn to_human(&self) -> String {
        let mut s = String::new();
        let t = &self.throughput;
        let _ = writeln!(
            s,
            "mixnode on {} core(s) (CPUs {}, packet_work {}), harness on CPUs {}{}; {} build; {} B packets",
            self.cores,
            self.node_cpus,
            self.packet_work,
            self.harness_cpus,
            if self.harness_cpus == self.node_cpus {
                " (shared: the generator and sink compete with the mixnode)"
            } else {
                ""
            },
            self.profile,
            self.packet_len
        );
        let _ = writeln!(
            s,
            "load average {:.2} {:.2} {:.2} before, {:.2} {:.2} {:.2} after",
            self.load_before[0],
            self.load_before[1],
            self.load_before[2],
            self.load_after[0],
            self.load_after[1],
            self.load_after[2]
        );
        let _ = writeln!(
            s,
            "bare Sphinx process, {} thread(s) on the mixnode's CPUs: {:.0}/s before, {:.0}/s after \
             ({} and {} per CPU-second)",
            self.bare_before.threads,
            self.bare_before.rate,
            self.bare_after.rate,
            self.bare_before
                .per_cpu_sec
                .map_or("?".into(), |r| format!("{r:.0}")),
            self.bare_after
                .per_cpu_sec
                .map_or("?".into(), |r| format!("{r:.0}")),
        );
        if let (Some(a), Some(b)) = (self.bare_before.per_packet, self.bare_after.per_packet) {
            let _ = writeln!(
                s,
                "  one unwrap: p50/p99/p999/max {:.0}/{:.0}/{:.0}/{:.0} µs before, {:.0}/{:.0}/{:.0}/{:.0} µs after",
                a.p50_us, a.p99_us, a.p999_us, a.max_us, b.p50_us, b.p99_us, b.p999_us, b.max_us
            );
        }
        let _ = writeln!(
            s,
            "throughput ({} in flight over {} TLS connections, {:.1} s{}): {:.0} forwarded/s \
             ({:.0} received/s, {:.0}/s at the sink) = {:.0} % of bare",
            t.window,
            t.connections,
            t.node.secs,
            if t.ran_out { ", packets ran out" } else { "" },
            t.node.forwarded_per_sec,
            t.node.received_per_sec,
            t.node.sink_per_sec,
            t.ratio_to_bare * 100.0
        );
        let _ = writeln!(s, "  {}", activity_line(&t.node));
        if let Some(e) = t.cpu_efficiency {
            let _ = writeln!(
                s,
                "  per CPU-second: {:.0} forwarded by the mixnode = {:.0} % of the bare {:.0} \
                 processed per CPU-second",
                t.node.forwarded_per_cpu_sec.unwrap_or(0.0),
                e * 100.0,
                t.node.forwarded_per_cpu_sec.unwrap_or(0.0) / e
            );
        }
        let _ = writeln!(
            s,
            "latency, zero mixing delay, Poisson arrivals (µs; added = through the mixnode minus straight to the sink; \
             ideal = a relay that only unwraps, each packet taking a bare unwrap time from this run, one queue per core):"
        );
        let _ = writeln!(
            s,
            "  load  offered/s  arrived/sent   added p50/p99/p999   ideal p50/p99/p999   path p50/p99/p999    direct p50/p99/p999"
        );
        for l in &self.latency {
            let f = l.floor.unwrap_or_default();
            let _ = writeln!(
                s,
                "  {:>3.0} % {:>9.0}  {:>6}/{:<6}  {:>6.0} {:>6.0} {:>6.0}  {:>6.0} {:>6.0} {:>6.0}  {:>6.0} {:>6.0} {:>6.0}  {:>6.0} {:>6.0} {:>6.0}",
                l.load * 100.0,
                l.offered_rate,
                l.arrived,
                l.sent,
                l.added.p50_us,
                l.added.p99_us,
                l.added.p999_us,
                f.p50_us,
                f.p99_us,
                f.p999_us,
                l.path.p50_us,
                l.path.p99_us,
                l.path.p999_us,
                l.direct.p50_us,
                l.direct.p99_us,
                l.direct.p999_us
            );
            let _ = writeln!(s, "        {}", activity_line(&l.node));
            if let Some(r) = l.bare_relay {
                let _ = writeln!(
                    s,
                    "        the bare relay (one thread: unwrap and write, nothing else): {}/{} arrived, \
                     added p50/p99/p999 {:.0}/{:.0}/{:.0} µs",
                    r.arrived, l.sent, r.added.p50_us, r.added.p99_us, r.added.p999_us
                );
            }
        }
        let o = &self.overload;
        let _ = writeln!(
            s,
            "overload: {:.0}/s asked, {:.0}/s offered for {:.1} s: {:.0} received/s, {:.0} forwarded/s",
            o.target_rate,
            o.offered_rate,
            o.secs,
            o.node.received_per_sec,
            o.node.forwarded_per_sec
        );
        let _ = writeln!(s, "  {}", activity_line(&o.node));
        let second = |t: Option<f64>| t.map_or("never".to_string(), |t| format!("second {t:.0}"));
        let _ = writeln!(
            s,
            "recovery at {:.0}/s: added p99 <= 1 ms with nothing lost from {}, <= {:.0} µs \
             (twice the steady 50 % p99) from {}; VmRSS at the end {}",
            o.recovery_rate,
            second(o.recovered_after_s),
            o.steady_threshold_us,
            second(o.steady_after_s),
            o.rss_end_kib
                .map_or("?".into(), |k| format!("{:.1} MiB", mib(k)))
        );
        let windows: Vec<String> = o
            .windows
            .iter()
            .map(|w| {
                format!(
                    "{:.0}s:{:.0}µs{}",
                    w.start_s,
                    w.added_p99_us,
                    if w.arrived < w.sent {
                        format!("({} lost)", w.sent - w.arrived)
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        let _ = writeln!(s, "  p99 by second: {}", windows.join(" "));
        let _ = writeln!(s, "  {}", activity_line(&o.recovery_node));
        if let Some(k) = self.peak_rss_kib {
            let _ = writeln!(s, "peak RSS (VmHWM) over the phases: {:.1} MiB", mib(k));
        }
        let _ = writeln!(s, "goals (reported, not asserted):");
        for g in &self.goals {
            let mark = match g.met {
                Some(true) => "met    ",
                Some(false) => "NOT met",
                None => "n/a    ",
            };
            let _ = writeln!(s, "  [{mark}] {}: {}", g.goal, g.measured);
        }
        s
    }

    /// Reads a report saved from `bench mixnode --json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            why: format!("not a `bench mixnode --json` report: {e}"),
        })
    }

    /// Draws throughput and latency against offered load as an SVG.
    pub fn plot(&self, path: &Path) -> Result<()> {
        plot::draw(self, path).map_err(|e| Error::Io {
            what: format!("drawing {}", path.display()),
            source: std::io::Error::other(e),
        })
    }
}

fn activity_line(n: &NodeActivity) -> String {
    let drops: Vec<String> = n.drops.iter().map(|(r, c)| format!("{r}={c}")).collect();
    format!(
        "mixnode CPU {} cores, {} forwarded per CPU-second, harness CPU {} cores; RSS max {}{}; drops: {}",
        n.node_cpu_cores.map_or("?".into(), |c| format!("{c:.2}")),
        n.forwarded_per_cpu_sec
            .map_or("?".into(), |c| format!("{c:.0}")),
        n.harness_cpu_cores
            .map_or("?".into(), |c| format!("{c:.2}")),
        n.rss_max_kib
            .map_or("?".into(), |k| format!("{:.1} MiB", mib(k))),
        n.hwm_kib
            .map_or(String::new(), |k| format!(" (VmHWM {:.1} MiB)", mib(k))),
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(", ")
        }
    )
}

mod plot {
    //! The SVG: forwarded and latency against offered load.

    use plotters::prelude::*;

    use super::MixnodeBenchReport;

    /// (offered load, latency) points of one line.
    type Points = Vec<(f64, f64)>;

    pub(super) fn draw(r: &MixnodeBenchReport, path: &std::path::Path) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let (top, bottom) = root.split_vertically(450);

        // Throughput: each phase's offered load and what was forwarded.
        let mut labelled: Vec<((f64, f64), String)> = r
            .latency
            .iter()
            .map(|l| {
                (
                    (l.offered_rate, l.node.forwarded_per_sec),
                    format!("{:.0} %", l.load * 100.0),
                )
            })
            .collect();
        labelled.push((
            (
                r.throughput.node.received_per_sec,
                r.throughput.node.forwarded_per_sec,
            ),
            "closed loop".into(),
        ));
        labelled.push((
            (r.overload.offered_rate, r.overload.node.forwarded_per_sec),
            "2x overload".into(),
        ));
        labelled.sort_by(|a, b| a.0.0.total_cmp(&b.0.0));
        let points: Vec<(f64, f64)> = labelled.iter().map(|(p, _)| *p).collect();
        let xmax = points.iter().map(|p| p.0).fold(r.bare_rate, f64::max) * 1.1;
        let ymax = points.iter().map(|p| p.1).fold(r.bare_rate, f64::max) * 1.15;
        let title = format!(
            "bastet-mixnode on {} core(s), {} build: forwarded vs offered",
            r.cores, r.profile
        );
        let mut chart = ChartBuilder::on(&top)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("offered load (packets/s)")
            .y_desc("forwarded (packets/s)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label("forwarded by the mixnode")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(labelled.iter().map(|(p, label)| {
                EmptyElement::at(*p)
                    + Circle::new((0, 0), 4, BLUE.filled())
                    + Text::new(label.clone(), (6, -18), ("sans-serif", 13))
            }))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, r.bare_rate), (xmax, r.bare_rate)],
                RED,
            ))
            .map_err(|x| e(&x))?
            .label(format!(
                "bare Sphinx process rate, {} thread(s)",
                r.bare_before.threads
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 0.0), (ymax.min(xmax), ymax.min(xmax))],
                BLACK.mix(0.3),
            ))
            .map_err(|x| e(&x))?
            .label("forwarded = offered")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(|x| e(&x))?;

        // Latency added per hop at 25/50/90 %, log scale.
        let floor = 1.0;
        let series = |f: fn(&super::LatencyPhase) -> f64| -> Vec<(f64, f64)> {
            r.latency
                .iter()
                .map(|l| (l.offered_rate, f(l).max(floor)))
                .collect()
        };
        let p50 = series(|l| l.added.p50_us);
        let p99 = series(|l| l.added.p99_us);
        let p999 = series(|l| l.added.p999_us);
        let lmax = p999
            .iter()
            .chain(&p99)
            .map(|p| p.1)
            .fold(super::LATENCY_GOAL_US, f64::max)
            * 2.0;
        let mut chart = ChartBuilder::on(&bottom)
            .caption(
                "latency added per hop (zero mixing delay, Poisson arrivals)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, (floor..lmax).log_scale())
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("offered load (packets/s)")
            .y_desc("added latency (µs, log)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|x| e(&x))?;
        for (data, color, label) in [
            (p50, GREEN, "p50"),
            (p99, BLUE, "p99"),
            (p999, MAGENTA, "p99.9"),
        ] {
            chart
                .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(data.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|x| e(&x))?;
        }
        // The bounds each p99 is measured against, where the report has them.
        let bounds: [(Points, RGBAColor, &str); 2] = [
            (
                r.latency
                    .iter()
                    .filter_map(|l| l.bare_relay.map(|b| (l.offered_rate, b.added.p99_us)))
                    .collect(),
                BLACK.mix(0.5),
                "p99 of the bare relay (one thread, same CPUs, this run)",
            ),
            (
                r.latency
                    .iter()
                    .filter_map(|l| l.floor.map(|f| (l.offered_rate, f.p99_us)))
                    .collect(),
                BLUE.mix(0.4),
                "p99 of an ideal relay (bare unwrap times, this run)",
            ),
        ];
        for (points, color, label) in bounds {
            if points.is_empty() {
                continue;
            }
            let points: Vec<(f64, f64)> =
                points.into_iter().map(|(x, y)| (x, y.max(floor))).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(1)))
                .map_err(|x| e(&x))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color)))
                .map_err(|x| e(&x))?;
        }
        chart
            .draw_series(LineSeries::new(
                vec![
                    (0.0, super::LATENCY_GOAL_US),
                    (xmax, super::LATENCY_GOAL_US),
                ],
                RED,
            ))
            .map_err(|x| e(&x))?
            .label("goal: p99 <= 1 ms at 50 %")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
        Ok(())
    }
}

/// Drop counters by reason from a mixnode's `/metrics`.
fn parse_drops(text: &str) -> BTreeMap<String, f64> {
    const PREFIX: &str = "bastet_mixnode_packets_dropped_total{reason=\"";
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(PREFIX)?;
            let (reason, value) = rest.split_once("\"}")?;
            Some((reason.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Non-zero increases from `a` to `b`.
fn drop_delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    b.iter()
        .filter_map(|(reason, &v)| {
            let d = v - a.get(reason).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (reason.clone(), d as u64))
        })
        .collect()
}

/// utime + stime of `pid` in clock ticks, from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime from the text of a `/proc/PID/stat` (fields 14 and 15;
/// the command name, field 2, may hold spaces and parentheses, so fields
/// are counted from the last `)`).
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails, the
/// value on every Linux this runs on).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The CPUs this process may run on (`Cpus_allowed_list`).
fn allowed_cpus() -> Result<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(Error::io("reading /proc/self/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|l| parse_cpu_list(l.trim()))
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::UnexpectedOutput {
            command: "cat /proc/self/status".into(),
            why: "no readable Cpus_allowed_list".into(),
            output: String::new(),
        })
}

/// `0-2,5` → `[0, 1, 2, 5]`.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

/// `[0, 1, 5]` → `0,1,5` (what `taskset -c` takes).
fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `/proc/loadavg`'s three averages (zeros if unreadable).
fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut ns: Vec<u64> = (1..=1000).rev().map(|i| i * 1000).collect();
        let p = Percentiles::of(&mut ns);
        assert_eq!(p.samples, 1000);
        assert_eq!(p.p50_us, 500.0);
        assert_eq!(p.p99_us, 990.0);
        assert_eq!(p.p999_us, 999.0);
        assert_eq!(p.max_us, 1000.0);
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
        let mut one = [7000];
        let p = Percentiles::of(&mut one);
        assert_eq!((p.p50_us, p.p999_us), (7.0, 7.0));
        let added = p.minus(&Percentiles {
            p50_us: 2.0,
            p99_us: 3.0,
            p999_us: 10.0,
            ..Percentiles::default()
        });
        assert_eq!(
            (added.p50_us, added.p99_us, added.p999_us),
            (5.0, 4.0, -3.0)
        );
    }

    #[test]
    fn proc_files_are_parsed() {
        // A command name with a space and a parenthesis in it.
        let stat = "4242 (bastet (x) y) S 1 4242 4242 0 -1 4194560 5000 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
        let status = "Name:\tbastet-mixnode\nVmHWM:\t   51234 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(40960));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(51234));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert_eq!(parse_cpu_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        assert_eq!(parse_cpu_list("2-1"), None);
        assert_eq!(cpu_list(&[0, 1, 5]), "0,1,5");
    }

    #[test]
    fn drops_and_rates() {
        let before = parse_drops(
            "# HELP x\nbastet_mixnode_packets_dropped_total{reason=\"overload\"} 10\n\
             bastet_mixnode_packets_dropped_total{reason=\"replay\"} 0\n",
        );
        let after = parse_drops(
            "bastet_mixnode_packets_dropped_total{reason=\"overload\"} 25\n\
             bastet_mixnode_packets_dropped_total{reason=\"replay\"} 0\n\
             bastet_mixnode_packets_dropped_total{reason=\"queue_full\"} 3\n\
             bastet_mixnode_packets_forwarded_total 99\n",
        );
        let delta = drop_delta(&before, &after);
        assert_eq!(
            delta.into_iter().collect::<Vec<_>>(),
            vec![("overload".to_string(), 15), ("queue_full".to_string(), 3)]
        );
        assert_eq!(rate(300.0, 2.0), 150.0);
        assert_eq!(rate(300.0, 0.0), 0.0);
        assert_eq!(paced_count(1000.0, 2.5), 2500);
        assert_eq!(paced_count(1e9, 10.0), MAX_PHASE_PACKETS);
        // A Poisson gap's mean is 1/rate.
        let n = 10_000;
        let mean: f64 = (0..n)
            .map(|i| exp_gap(100.0, (i as f64 + 0.5) / n as f64).as_secs_f64())
            .sum::<f64>()
            / n as f64;
        assert!((mean - 0.01).abs() < 0.0005, "{mean}");
    }

    #[test]
    fn recovery_is_judged_per_second_by_send_time() {
        let s = 1_000_000_000u64;
        // Second 0: two sent, one lost; second 1: both arrive 500 µs late.
        let sent = [10 * s, 10 * s + 1, 11 * s, 11 * s + 5];
        let arrived = [10 * s + 3_000_000, 0, 11 * s + 500_000, 11 * s + 500_005];
        let w = recovery_windows(&sent, &arrived, 10 * s, 100.0);
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].sent, w[0].arrived), (2, 1));
        assert_eq!(w[0].added_p99_us, 2900.0);
        assert_eq!((w[1].start_s, w[1].sent, w[1].arrived), (1.0, 2, 2));
        assert_eq!(w[1].added_p99_us, 400.0);
        assert_eq!(
            latencies(&sent, &arrived),
            vec![3_000_000, 500_000, 500_000]
        );
    }

    #[test]
    fn bare_process_rate_runs() {
        let r = process_rate(1, 0.2).unwrap();
        assert_eq!(r.threads, 1);
        assert!(r.packets > 0 && r.rate > 0.0, "{r:?}");
        assert_eq!(r.per_packet_ns.len() as u64, r.packets);
        let per_packet = r.per_packet.unwrap();
        assert!(per_packet.p50_us > 0.0 && per_packet.max_us >= per_packet.p99_us);
        // The samples go from the child to the harness in the JSON.
        let back: ProcessRate = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.per_packet_ns, r.per_packet_ns);
        assert!(process_rate(0, 1.0).is_err());
    }

    // One worker: the relay's start and finish must not block the runtime
    // the sink runs on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_bare_relay_unwraps_and_forwards_and_says_what_went_wrong() {
        let mut tasks = JoinSet::new();
        let sink = Sink::start(Instant::now(), &mut tasks).await.unwrap();
        let cpus = allowed_cpus().unwrap();
        let secret = SphinxSecretKey::random();
        let route = standalone_route(&secret);
        let packets: Vec<_> = (0..3)
            .map(|_| build(&route, &MailboxId([7; 32]), b"bench").unwrap())
            .collect();
        let keys: Vec<u128> = packets
            .iter()
            .map(
                |p| match Prepared::new(p.as_bytes(), &secret).unwrap().process() {
                    Ok(Processed::Forward { packet, .. }) => frame_key(packet.as_bytes()),
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        let tracker = Arc::new(Tracker::new(&keys));
        sink.shared.track(Some(tracker.clone()));

        let relay = BareRelay::start(secret.clone(), &sink, &cpus)
            .await
            .unwrap();
        let mut link = bastet_link::connect(&relay.addr.to_string(), relay.pin)
            .await
            .unwrap();
        for p in &packets {
            link.write_all(p.as_bytes()).await.unwrap();
        }
        link.shutdown().await.unwrap();
        drain(&tracker).await;
        assert_eq!(tracker.arrived(), 3);
        assert_eq!(relay.finish().await.unwrap(), 3);

        // A frame that is not a packet for its key stops it, and says so.
        let relay = BareRelay::start(secret, &sink, &cpus).await.unwrap();
        let mut link = bastet_link::connect(&relay.addr.to_string(), relay.pin)
            .await
            .unwrap();
        link.write_all(&[0u8; FRAME_LEN]).await.unwrap();
        link.flush().await.unwrap();
        let err = relay.finish().await.unwrap_err();
        assert!(err.to_string().contains("bare relay"), "{err}");
    }

    #[test]
    fn the_floor_is_the_queue_of_an_ideal_relay() {
        // Exponential service times (mean 100 µs) make one server an M/M/1
        // queue, whose time in the system is exponential with rate μ - λ:
        // at λ = 5,000/s its p50 is ln 2 / 5,000 s = 139 µs and its p99
        // ln 100 / 5,000 s = 921 µs.
        let service: Vec<u64> = (0..10_000)
            .map(|i| (-(1.0 - (i as f64 + 0.5) / 10_000.0).ln() * 100_000.0) as u64)
            .collect();
        let one = queue_floor(5_000.0, 1, &service).unwrap();
        assert_eq!(one.samples, FLOOR_ARRIVALS);
        assert!((one.p50_us / 138.6 - 1.0).abs() < 0.05, "{one:?}");
        assert!((one.p99_us / 921.0 - 1.0).abs() < 0.05, "{one:?}");
        // A fixed service time: at ρ = 0.3, 70 % of packets find the
        // server free and take exactly that long.
        let fixed = queue_floor(3_000.0, 1, &[100_000]).unwrap();
        assert_eq!(fixed.p50_us, 100.0);
        assert!(fixed.p99_us > 100.0 && fixed.p99_us < 400.0, "{fixed:?}");
        // Two servers at twice the rate: the same load per core, a shorter
        // tail (a packet waits only when both are busy).
        let two = queue_floor(10_000.0, 2, &service).unwrap();
        assert!(two.p99_us < one.p99_us * 0.8, "{two:?} against {one:?}");
        assert!(queue_floor(5_000.0, 0, &service).is_none());
        assert!(queue_floor(0.0, 1, &service).is_none());
        assert!(queue_floor(5_000.0, 1, &[]).is_none());
    }
}
