//! The async shell: sockets, packet workers and timers around the [`Mixer`].
//!
//! ```text
//! serve_packets ─▶ ingress queue ─▶ packet workers (one per core):
//!       unwrap, then under the Mixer's lock: replay filter, delay queue,
//!       release what is due ─▶ consensus lookup ─▶ Outbound
//! timer task: releases held packets as their delays end ─▶ Outbound
//! ```
//! Every arrow is a bounded queue; what does not fit is dropped and counted.
//! A frame that waited in the ingress queue longer than
//! `ingress_max_wait_ms` is dropped as overload before any Sphinx work, so
//! the queue never holds more than that much delay for the packets it lets
//! through. A packet whose delay is zero is forwarded by the worker that
//! unwrapped it.
//!
//! Packet workers are, by default ([`PacketWork::Runtime`]), tasks on the
//! node's tokio runtime, beside the connections' reader and writer tasks on
//! the same worker threads: a packet crosses no thread hand-off. With
//! [`PacketWork::Threads`] they are long-lived OS threads, and a packet
//! crosses one hand-off on the way in (the reader task to a packet thread)
//! and one on the way out (to the next hop's writer task).
//!
//! Beside it, the key rotation task rotates the [`SphinxKeyRing`] every
//! second and hands the mixer (and through it the packet workers) the keys
//! in force, and the cover task sends the node's own cover loops (λ_M) into
//! the same `Outbound` at Poisson-distributed times. The cover task and the
//! mixer share the [`LoopTracker`]: the one records loops sent and counts
//! those past their deadline as lost, the other hands it the SURB replies
//! that end at this node.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bastet_directory::{
    ConsensusWatch, Descriptor, DirectoryClient, EpochKey, NodeKeys, Role, SphinxKeyRing,
    VerifiedConsensus, publish_rotating_forever, rotate_forever, unix_now,
};
use bastet_link::{
    Direction, Frame, FrameSink, IngressConfig, IngressLog, IngressStats, Offered, Outbound,
    OutboundConfig, PacketLog, TestLog, TlsIdentity, frame_id, serve_packets,
};
use bastet_sphinx::NodeId;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::metrics::{Metrics, gauge_value};
use crate::{
    CoverSkipped, DropReason, Error, LoopReply, LoopTracker, Mixer, MixnodeConfig, Outcome,
    PacketWork, Result, Transmit, Unwrapped, Unwrapper, cover_gap, cover_packet, route,
};

/// How often the link's counters are copied into the metrics.
const STATS_PERIOD: Duration = Duration::from_millis(250);
/// How often an idle packet thread looks whether the node has stopped.
const IDLE_CHECK: Duration = Duration::from_millis(500);
/// A packet task that finds at least this many frames still waiting after
/// a packet (about a millisecond of work on one core) is behind...
const BACKLOG: usize = 8;
/// ...and then unwraps up to this many in a row before it yields.
const BACKLOG_RUN: usize = 8;

type Unwrap = std::result::Result<Unwrapped, DropReason>;

/// A frame and when it was read off the link.
struct Arrival {
    at: Instant,
    frame: Frame,
}

/// The ingress queue's sending end, as the listener sees it, and what
/// wakes a packet task (`None` with packet threads, which block on the
/// queue itself).
#[derive(Clone)]
struct IngressQueue(crossbeam_channel::Sender<Arrival>, Option<Arc<Notify>>);

impl FrameSink for IngressQueue {
    fn offer(&self, frame: Frame) -> Offered {
        let arrival = Arrival {
            at: Instant::now(),
            frame,
        };
        match self.0.try_send(arrival) {
            Ok(()) => {
                if let Some(ready) = &self.1 {
                    ready.notify_one();
                }
                Offered::Taken
            }
            Err(crossbeam_channel::TrySendError::Full(_)) => Offered::Full,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Offered::Closed,
        }
    }
}

/// What the packet workers and the timer task share: the [`Mixer`] behind
/// one lock (held for the replay check, the queue and the release, never
/// for any Diffie-Hellman), and what forwarding needs.
struct Pipeline {
    state: Mutex<MixState>,
    /// Wakes the timer task when a packet is held that must leave before
    /// the instant it sleeps until.
    wake: Notify,
    loops: Arc<Mutex<LoopTracker>>,
    consensus: ConsensusWatch,
    outbound: Arc<Outbound>,
    metrics: Arc<Metrics>,
    /// The `test_hop_log` test hook.
    hop_log: Option<Arc<TestLog>>,
    /// Set when the node is dropped or stopped: packet threads end.
    stopped: AtomicBool,
}

struct MixState {
    mixer: Mixer,
    packet_log: Option<PacketLog>,
    /// False once the node stops: frames still arriving are not admitted.
    accepting: bool,
    /// When the timer task wakes next, if it sleeps.
    timer_at: Option<Instant>,
}

impl Pipeline {
    fn lock(&self) -> MutexGuard<'_, MixState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forwards every held packet due at `now`.
    fn release_due(&self, state: &mut MixState, now: Instant) {
        let mut held_consensus = None;
        let mut stale = false;
        let MixState {
            mixer, packet_log, ..
        } = state;
        while let Some(transmit) = mixer.poll_transmit(now) {
            let c = held_consensus.get_or_insert_with(|| self.consensus.current());
            let sent = forward(
                transmit,
                c.as_deref(),
                &self.outbound,
                &self.metrics,
                packet_log,
            );
            if let Err(reason) = sent {
                stale |= matches!(reason, DropReason::UnknownNextHop | DropReason::NoConsensus);
                mixer.record_drop(reason);
            }
        }
        if stale {
            // A node joined after our fetch, or the epoch turned: look again
            // now rather than at the next periodic refresh.
            self.consensus.nudge();
        }
    }
}

/// Sets [`Pipeline::stopped`] when dropped with the [`Mixnode`].
struct StopThreads(Arc<Pipeline>);

impl Drop for StopThreads {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Relaxed);
    }
}

/// A running mixnode. Dropping it stops every task it started.
pub struct Mixnode {
    node_id: NodeId,
    listen_addr: SocketAddr,
    metrics_addr: SocketAddr,
    consensus: ConsensusWatch,
    tasks: JoinSet<Result<()>>,
    ingress_log: Option<Arc<IngressLog>>,
    hop_log: Option<Arc<TestLog>>,
    cell_log: Option<Arc<TestLog>>,
    /// Tells the mixer to stop taking packets and release what it holds.
    drain: watch::Sender<bool>,
    /// Fires once the mixer has released (or given up on) what it held.
    drained: Option<tokio::sync::oneshot::Receiver<usize>>,
    outbound: Arc<Outbound>,
    _threads: StopThreads,
}

/// How long a stopping mixnode keeps releasing the packets it holds (each
/// at the end of its own delay; those whose delay ends later are dropped,
/// and their senders retransmit).
pub const DRAIN_BOUND: Duration = Duration::from_secs(2);

/// Runs a mixnode with `config` until `shutdown` completes (then stops it
/// cleanly and returns `Ok`) or a part of it fails (returns the error).
pub async fn run(config: MixnodeConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut node = Mixnode::start(config).await?;
    tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            node.stop().await;
            Ok(())
        }
        failed = node.wait() => failed,
    }
}

impl Mixnode {
    /// Loads keys, binds the listeners and starts every task. Errors here
    /// (bad config, missing keys, address in use) leave nothing running.
    pub async fn start(config: MixnodeConfig) -> Result<Self> {
        config.validate()?;
        let NodeKeys { identity } = NodeKeys::load(&config.data_dir)?;
        let (keyring, in_force) = SphinxKeyRing::open_rotated(
            &config.data_dir,
            config.directory.epoch_secs,
            config.sphinx_key_grace_secs(),
            unix_now(),
        )?;
        let tls = TlsIdentity::load(&config.data_dir)?;
        let circuit_tls = circuit_listener_tls(&config)?;
        let directory = Arc::new(DirectoryClient::new(&config.directory)?);
        let listener = bind("listen", config.listen).await?;
        let metrics_listener = bind("metrics_listen", config.metrics_listen).await?;
        let listen_addr = local_addr("listen", config.listen, &listener)?;
        let circuit_listener = match config.circuit_listen {
            Some(addr) => {
                let l = bind("circuit_listen", addr).await?;
                let bound = local_addr("circuit_listen", addr, &l)?;
                Some((l, bound))
            }
            None => None,
        };
        let cell_log = config
            .test_cell_log
            .as_deref()
            .map(open_cell_log)
            .transpose()?;
        let metrics_addr = local_addr("metrics_listen", config.metrics_listen, &metrics_listener)?;
        let packet_log = config
            .packet_log
            .as_deref()
            .map(open_packet_log)
            .transpose()?;
        let ingress_log = config
            .test_ingress_log
            .as_deref()
            .map(open_ingress_log)
            .transpose()?;
        let hop_log = config
            .test_hop_log
            .as_deref()
            .map(open_hop_log)
            .transpose()?;

        let mut registry = Registry::with_prefix("bastet_mixnode");
        let metrics = Arc::new(Metrics::register(&mut registry));
        let mixer = Mixer::new(config.mixer(), in_force.clone())?;
        metrics.sphinx_keys.set(gauge_value(in_force.len()));
        metrics.sphinx_key_epoch.set(
            i64::try_from(in_force.iter().map(|k| k.epoch).max().unwrap_or(0)).unwrap_or(i64::MAX),
        );
        metrics
            .replay_filter_capacity
            .set(gauge_value(config.replay_filter_capacity()));
        if config.replay_filter_capped() {
            tracing::warn!(
                max_packet_rate = config.max_packet_rate,
                key_life_secs = config.key_life_secs(),
                capacity = config.replay_filter_capacity(),
                "the replay filter max_packet_rate asks for is larger than the largest \
                 accepted and was capped: at that rate it forgets packets before their key \
                 is erased. Lower max_packet_rate or shorten directory.epoch_secs"
            );
        }
        let unwrapper = mixer.unwrapper();
        let keyring = Arc::new(Mutex::new(keyring));
        let (keys_tx, keys_rx) = watch::channel(in_force);
        let node_id = NodeId::from_identity_key(identity.verifying_key().as_bytes());
        let descriptor = Descriptor {
            identity_key: *identity.verifying_key().as_bytes(),
            // Both set per epoch by the publisher.
            epoch: 0,
            sphinx_key: [0; 32],
            tls_pin: tls.pin().0,
            addr: config
                .public_addr
                .clone()
                .unwrap_or_else(|| listen_addr.to_string()),
            api_addr: None,
            circuit_addr: circuit_listener.as_ref().map(|(_, bound)| {
                config
                    .public_circuit_addr
                    .clone()
                    .unwrap_or_else(|| bound.to_string())
            }),
            role: Role::Mix,
            jurisdiction: config.jurisdiction.clone(),
            operator: config.operator.clone(),
        };
        // Fail now, not in the background, if the descriptor is unsignable.
        descriptor.sign(&identity)?;
        // The watch notices a new epoch's consensus only when it refreshes,
        // so poll often enough that an epoch change costs seconds of
        // `no_consensus` drops at most.
        let refresh = Duration::from_secs((config.directory.epoch_secs / 12).clamp(2, 10));
        let consensus = ConsensusWatch::spawn(directory.clone(), refresh);
        let loops = Arc::new(Mutex::new(LoopTracker::new(&node_id)));

        let mut tasks = JoinSet::new();
        let (frames_tx, frames_rx) = crossbeam_channel::bounded::<Arrival>(config.ingress_queue);
        let ready = (config.packet_work == PacketWork::Runtime).then(|| Arc::new(Notify::new()));
        let frames_tx = IngressQueue(frames_tx, ready.clone());
        let ingress_stats = Arc::new(IngressStats::default());
        {
            let stats = ingress_stats.clone();
            let ingress = IngressConfig {
                log: ingress_log.clone(),
                ..IngressConfig::default()
            };
            tasks.spawn(async move {
                let why = match serve_packets(listener, &tls, ingress, frames_tx, stats).await {
                    Ok(()) => "listener closed".to_string(),
                    Err(e) => e.to_string(),
                };
                Err(Error::TaskFailed {
                    what: "packet listener",
                    why,
                })
            });
        }
        let outbound = Arc::new(Outbound::new(OutboundConfig {
            bind_addr: config.source_addr,
            ..OutboundConfig::default()
        }));
        bastet_link::register_peer_connections(
            &mut registry,
            [
                (Direction::Inbound, ingress_stats.connections.clone()),
                (Direction::Outbound, outbound.connections()),
            ],
        );
        let (drain, drain_rx) = watch::channel(false);
        let (drained_tx, drained) = tokio::sync::oneshot::channel();
        tasks.spawn(copy_link_stats(
            ingress_stats,
            outbound.clone(),
            metrics.clone(),
            (ingress_log.clone(), hop_log.clone()),
        ));
        if config.test_drop_fraction > 0.0 {
            tracing::warn!(
                fraction = config.test_drop_fraction,
                "TEST HOOK test_drop_fraction is on: received packets are dropped at random \
                 (injected_loss). Never run a real node like this."
            );
        }
        let pipeline = Arc::new(Pipeline {
            state: Mutex::new(MixState {
                mixer,
                packet_log,
                accepting: true,
                timer_at: None,
            }),
            wake: Notify::new(),
            loops: loops.clone(),
            consensus: consensus.clone(),
            outbound: outbound.clone(),
            metrics: metrics.clone(),
            hop_log: hop_log.clone(),
            stopped: AtomicBool::new(false),
        });
        let threads = StopThreads(pipeline.clone());
        let limits = ThreadLimits {
            max_wait: Duration::from_millis(config.ingress_max_wait_ms),
            drop_fraction: config.test_drop_fraction,
        };
        for i in 0..workers() {
            let (pipeline, frames, unwrapper) =
                (pipeline.clone(), frames_rx.clone(), unwrapper.clone());
            if let Some(ready) = &ready {
                tasks.spawn(packet_task(
                    frames,
                    ready.clone(),
                    unwrapper,
                    pipeline,
                    limits,
                ));
                continue;
            }
            let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("bastet-packets-{i}"))
                .spawn(move || {
                    // Dropped however the thread ends, panics included.
                    let _ended = ended_tx;
                    packet_thread(&frames, &unwrapper, &pipeline, limits);
                })
                .map_err(|e| Error::TaskFailed {
                    what: "packet threads",
                    why: format!("cannot start one: {e}"),
                })?;
            tasks.spawn(async move {
                let _ = ended.await;
                Err(Error::TaskFailed {
                    what: "packet threads",
                    why: format!("bastet-packets-{i} stopped"),
                })
            });
        }
        drop(frames_rx);
        tasks.spawn({
            let keyring = keyring.clone();
            async move {
                rotate_forever(keyring, keys_tx).await;
                Err(Error::TaskFailed {
                    what: "key rotation",
                    why: "the mixer stopped taking keys".into(),
                })
            }
        });
        if config.cover_rate > 0.0 {
            tasks.spawn(cover(
                (config.cover_rate, config.cover_mix_delay()),
                node_id,
                consensus.clone(),
                outbound.clone(),
                metrics.clone(),
                loops.clone(),
                hop_log.clone(),
            ));
        }
        if let Some((listener, bound)) = circuit_listener {
            let circuit_metrics = bastet_circuit::CircuitMetrics::register(
                registry.sub_registry_with_prefix("circuit"),
            );
            if config.test_cell_loss > 0.0 {
                tracing::warn!(
                    fraction = config.test_cell_loss,
                    "TEST HOOK test_cell_loss is on: call cells are corrupted at random. \
                     Never run a real node like this."
                );
            }
            let relay = bastet_circuit::RelayConfig {
                max_circuits: config.max_circuits,
                source_addr: config.source_addr,
                test_cell_loss: config.test_cell_loss,
                test_cell_log: cell_log.clone(),
                ..bastet_circuit::RelayConfig::default()
            };
            let (keys, consensus) = (keys_rx.clone(), consensus.clone());
            let tls = circuit_tls.ok_or_else(|| Error::TaskFailed {
                what: "circuit listener",
                why: "no TLS identity".into(),
            })?;
            tracing::info!(circuit_listen = %bound, "relaying call circuits");
            tasks.spawn(async move {
                let why = match bastet_circuit::serve_circuits(
                    listener,
                    &tls,
                    relay,
                    keys,
                    consensus,
                    circuit_metrics,
                )
                .await
                {
                    Ok(()) => "listener closed".to_string(),
                    Err(e) => e.to_string(),
                };
                Err(Error::TaskFailed {
                    what: "circuit listener",
                    why,
                })
            });
            if let Some(log) = cell_log.clone() {
                tasks.spawn(async move {
                    let mut tick = tokio::time::interval(STATS_PERIOD);
                    loop {
                        tick.tick().await;
                        log.flush();
                    }
                });
            }
        }
        tasks.spawn(mix(pipeline, keys_rx, (drain_rx, drained_tx)));
        {
            let registry = Arc::new(registry);
            let ready = bastet_directory::relay_readiness(
                consensus.clone(),
                keyring.clone(),
                node_id,
                config.data_dir.clone(),
                bastet_link::MIN_FREE_BYTES,
            );
            tasks.spawn(async move {
                let why = match bastet_link::serve_metrics(metrics_listener, registry, ready).await
                {
                    Ok(()) => "server closed".to_string(),
                    Err(e) => e.to_string(),
                };
                Err(Error::TaskFailed {
                    what: "metrics server",
                    why,
                })
            });
        }
        tasks.spawn(async move {
            publish_rotating_forever(directory, descriptor, identity, keyring).await;
            Err(Error::TaskFailed {
                what: "descriptor publisher",
                why: "ended".into(),
            })
        });
        tracing::info!(
            node = %node_id.short(),
            listen = %listen_addr,
            metrics = %metrics_addr,
            "mixnode running"
        );
        Ok(Mixnode {
            node_id,
            listen_addr,
            metrics_addr,
            consensus,
            tasks,
            ingress_log,
            hop_log,
            cell_log,
            drain,
            drained: Some(drained),
            outbound,
            _threads: threads,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Where the packet link listens (the bound port if `listen` had port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Where `/health` and `/metrics` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Waits until the node holds a valid consensus, and returns it.
    pub async fn consensus(&self) -> Arc<VerifiedConsensus> {
        self.consensus.clone().ready().await
    }

    /// Waits until a part of the node fails and returns why. Never returns
    /// while everything runs.
    pub async fn wait(&mut self) -> Result<()> {
        match self.tasks.join_next().await {
            Some(Ok(Err(e))) => Err(e),
            Some(Ok(Ok(()))) | None => Err(Error::TaskFailed {
                what: "node",
                why: "a task ended".into(),
            }),
            Some(Err(e)) => Err(Error::TaskFailed {
                what: "node",
                why: format!("a task panicked or was cancelled: {e}"),
            }),
        }
    }

    /// Stops the node: it takes no new packets, releases those it holds
    /// as their delays end for up to [`DRAIN_BOUND`] (the rest are dropped;
    /// senders' end-to-end retransmission recovers them), gives the links
    /// a moment to write what was released, then stops every task.
    pub async fn stop(mut self) {
        let _ = self.drain.send(true);
        if let Some(drained) = self.drained.take() {
            match tokio::time::timeout(DRAIN_BOUND + Duration::from_millis(500), drained).await {
                Ok(Ok(0)) => tracing::info!("every held packet was released"),
                Ok(Ok(left)) => tracing::warn!(
                    dropped = left,
                    "packets whose delay outlasted the drain were dropped"
                ),
                _ => tracing::warn!("the mixer did not finish draining"),
            }
            let deadline = Instant::now() + Duration::from_millis(500);
            while self.outbound.queued() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.tasks.shutdown().await;
        if let Some(log) = &self.ingress_log {
            log.flush();
        }
        if let Some(log) = &self.hop_log {
            log.flush();
        }
        if let Some(log) = &self.cell_log {
            log.flush();
        }
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { key, addr, source })
}

fn local_addr(key: &'static str, addr: SocketAddr, l: &TcpListener) -> Result<SocketAddr> {
    l.local_addr()
        .map_err(|source| Error::Bind { key, addr, source })
}

fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Copies the link's counters into the metrics: packets shed at ingress
/// (which never reach [`dispatch`], where the others are counted as
/// received), frames cut short, and the outbound backlog; flushes the
/// `test_ingress_log` and `test_hop_log`, so that their files are never
/// more than a period behind.
async fn copy_link_stats(
    stats: Arc<IngressStats>,
    outbound: Arc<Outbound>,
    metrics: Arc<Metrics>,
    (ingress_log, hop_log): (Option<Arc<IngressLog>>, Option<Arc<TestLog>>),
) -> Result<()> {
    let mut seen = [0u64; 2];
    let mut tick = tokio::time::interval(STATS_PERIOD);
    loop {
        tick.tick().await;
        let now = [
            stats.dropped_overload.load(Ordering::Relaxed),
            // A connection that ended inside a frame: a packet cut short.
            // (Failed TLS handshakes are no packets; the link counts them
            // in `peer_connections_closed`.)
            stats.partial_frames.load(Ordering::Relaxed),
        ];
        let delta = |i: usize| now[i].saturating_sub(seen[i]);
        metrics.received.inc_by(delta(0));
        metrics.drops(DropReason::Overload, delta(0));
        metrics.drops(DropReason::WrongLength, delta(1));
        seen = now;
        metrics.outbound_queued.set(gauge_value(outbound.queued()));
        if let Some(log) = &ingress_log {
            log.flush();
        }
        if let Some(log) = &hop_log {
            log.flush();
        }
    }
}

/// Limits a packet worker applies before any Sphinx work.
#[derive(Clone, Copy)]
struct ThreadLimits {
    /// A frame that waited longer in the ingress queue is dropped as
    /// overload.
    max_wait: Duration,
    /// The `test_drop_fraction` fault-injection hook.
    drop_fraction: f64,
}

/// One packet thread: takes frames off the ingress queue one at a time and
/// [`process`]es each. Ends when the node stops or the listener is gone.
fn packet_thread(
    frames: &crossbeam_channel::Receiver<Arrival>,
    unwrapper: &Unwrapper,
    pipeline: &Pipeline,
    limits: ThreadLimits,
) {
    while !pipeline.stopped.load(Ordering::Relaxed) {
        match frames.recv_timeout(IDLE_CHECK) {
            Ok(arrival) => {
                process(arrival, unwrapper, pipeline, limits);
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One packet task on the async runtime: [`process`]es frames off the
/// ingress queue, yielding after each so that the connections' reads and
/// writes (and the other tasks) run between packets, and sleeps on `ready`
/// when the queue is empty. Ends when the listener is gone.
async fn packet_task(
    frames: crossbeam_channel::Receiver<Arrival>,
    ready: Arc<Notify>,
    unwrapper: Unwrapper,
    pipeline: Arc<Pipeline>,
    limits: ThreadLimits,
) -> Result<()> {
    loop {
        match frames.try_recv() {
            Ok(arrival) => {
                // Frames shed without Sphinx work (waited too long) cost
                // next to nothing: go on until one packet was unwrapped, so
                // that under overload the stale head of the queue is cleared
                // at once rather than a few frames per turn while the
                // connections' reads take the core. Behind, take up to
                // `BACKLOG_RUN` packets before yielding, so that the writers
                // send them in one system call rather than one each.
                let mut run = usize::from(process(arrival, &unwrapper, &pipeline, limits));
                while run == 0 || (run < BACKLOG_RUN && frames.len() >= BACKLOG) {
                    let Ok(arrival) = frames.try_recv() else {
                        break;
                    };
                    run += usize::from(process(arrival, &unwrapper, &pipeline, limits));
                }
                tokio::task::yield_now().await;
            }
            // The listener wakes one task per frame it queues; a wake-up
            // that comes while this task is busy is kept for its next wait.
            Err(crossbeam_channel::TryRecvError::Empty) => ready.notified().await,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                return Err(Error::TaskFailed {
                    what: "packet tasks",
                    why: "the packet listener is gone".into(),
                });
            }
        }
    }
}

/// Takes one frame off the ingress queue: unwraps it (the Diffie-Hellman,
/// outside any lock), then admits it to the [`Mixer`] and forwards whatever
/// is due, itself included when its delay is zero. False when the frame
/// was shed before any Sphinx work.
fn process(
    arrival: Arrival,
    unwrapper: &Unwrapper,
    pipeline: &Pipeline,
    limits: ThreadLimits,
) -> bool {
    let metrics = &pipeline.metrics;
    metrics.received.inc();
    if limits.drop_fraction > 0.0 && rand::random::<f64>() < limits.drop_fraction {
        metrics.drops(DropReason::InjectedLoss, 1);
        return false;
    }
    if arrival.at.elapsed() > limits.max_wait {
        // Behind by more than the bound: shed it before spending a
        // Diffie-Hellman on a packet that would leave late anyway.
        metrics.drops(DropReason::Overload, 1);
        return false;
    }
    // Only with the test hook on: no hashing on the real path.
    let in_id = pipeline
        .hop_log
        .as_ref()
        .map(|_| frame_id(&arrival.frame[..]));
    let unwrapped = unwrapper.unwrap(&arrival.frame[..]);
    drop(arrival);
    let hop = in_id.map(|in_id| {
        let out_id = unwrapped
            .as_ref()
            .ok()
            .and_then(Unwrapped::packet)
            .map(|p| frame_id(p.as_bytes()));
        (in_id, out_id)
    });
    let now = Instant::now();
    let mut state = pipeline.lock();
    if !state.accepting {
        // Stopping: what arrives now is not taken; senders retransmit.
        return true;
    }
    let admitted = admit(&mut state.mixer, &pipeline.loops, metrics, now, unwrapped);
    if let (Some(log), Some((in_id, out_id))) = (&pipeline.hop_log, hop) {
        // Logged under the lock, before the packet can be released, so
        // that the line is written before the packet's next hop logs it.
        match (admitted, out_id) {
            (Admitted::Held, Some(out_id)) => log.line(format_args!("{in_id} {out_id}")),
            (Admitted::Ended, _) => log.line(format_args!("{in_id} -")),
            _ => {}
        }
    }
    pipeline.release_due(&mut state, now);
    let next = state.mixer.poll_timeout();
    let entries = state.mixer.replay_entries();
    let wake = next.is_some_and(|n| state.timer_at.is_none_or(|t| n < t));
    drop(state);
    metrics.replay_filter_entries.set(gauge_value(entries));
    if wake {
        pipeline.wake.notify_one();
    }
    true
}

/// Releases held packets as their delays end, takes the keys in force
/// whenever they change, and drains the delay queue when the node stops.
async fn mix(
    pipeline: Arc<Pipeline>,
    mut keys: watch::Receiver<Vec<EpochKey>>,
    (mut drain, drained): (watch::Receiver<bool>, tokio::sync::oneshot::Sender<usize>),
) -> Result<()> {
    // Set once the node stops: no new packets; release until then.
    let mut draining: Option<Instant> = None;
    let mut drained = Some(drained);
    let metrics = pipeline.metrics.clone();
    loop {
        let now = Instant::now();
        let (mut wake, queued) = {
            let mut state = pipeline.lock();
            pipeline.release_due(&mut state, now);
            let wake = state
                .mixer
                .poll_timeout()
                .unwrap_or(now + Duration::from_secs(3600));
            state.timer_at = Some(wake);
            (wake, state.mixer.queued())
        };
        metrics.delay_queue_depth.set(gauge_value(queued));
        // Done once every packet admitted before the stop was released, or
        // at the bound.
        if let Some(deadline) = draining
            && (queued == 0 || now >= deadline)
        {
            if let Some(tx) = drained.take() {
                let _ = tx.send(queued);
            }
            // Stay until the node stops the task: returning would look like
            // a failure to `wait`.
            std::future::pending::<()>().await;
        }
        if let Some(deadline) = draining {
            wake = wake.min(deadline);
        }
        tokio::select! {
            changed = drain.changed(), if draining.is_none() => {
                // A stop, or the node dropped its sender (stopping too).
                if changed.is_err() || *drain.borrow() {
                    draining = Some(Instant::now() + DRAIN_BOUND);
                    let mut state = pipeline.lock();
                    state.accepting = false;
                    tracing::info!(held = state.mixer.queued(), "stopping: releasing the packets held");
                }
            }
            () = pipeline.wake.notified() => {}
            () = tokio::time::sleep_until(wake.into()) => {}
            changed = keys.changed() => {
                if changed.is_err() {
                    return Err(Error::TaskFailed {
                        what: "mixer",
                        why: "key rotation stopped".into(),
                    });
                }
                let in_force = keys.borrow_and_update().clone();
                let epochs: Vec<u64> = in_force.iter().map(|k| k.epoch).collect();
                pipeline.lock().mixer.set_keys(in_force)?;
                tracing::info!(?epochs, "processing packets under the Sphinx keys of these epochs");
                metrics.sphinx_keys.set(gauge_value(epochs.len()));
                metrics.sphinx_key_epoch.set(
                    i64::try_from(epochs.iter().copied().max().unwrap_or(0)).unwrap_or(i64::MAX),
                );
            }
        }
    }
}

/// Sends this node's cover loops at Poisson-distributed times, `rate` a
/// second on average, each along the rest of a route after this node and
/// back through the layers before it (see [`cover_packet`]) on the link
/// packets are forwarded on, and records each in `loops`. A tick that
/// cannot send (no consensus, not listed yet, no next hop, queue full) is
/// counted and skipped; the task never fails, and ends when the node stops.
/// Every tick, sent or not, counts the loops past their deadline as lost.
async fn cover(
    (rate, mean_delay): (f64, Duration),
    me: NodeId,
    consensus: ConsensusWatch,
    outbound: Arc<Outbound>,
    metrics: Arc<Metrics>,
    loops: Arc<Mutex<LoopTracker>>,
    hop_log: Option<Arc<TestLog>>,
) -> Result<()> {
    // Ticks are scheduled from the previous tick, not from when its work
    // ended, so the rate does not sag; after a stall (a suspended process)
    // the schedule restarts from now instead of sending a burst.
    let mut next = tokio::time::Instant::now();
    loop {
        // Started only with a positive rate. The cap bends the distribution
        // only for rates far below one packet a minute.
        let gap = cover_gap(rate, &mut rand::rng())
            .unwrap_or(LONGEST_COVER_GAP)
            .min(LONGEST_COVER_GAP);
        let now = tokio::time::Instant::now();
        if next + STALL < now {
            next = now;
        }
        next += gap;
        tokio::time::sleep_until(next).await;
        let held = consensus.current();
        let sent =
            cover_packet(held.as_deref(), &me, mean_delay, &mut rand::rng()).and_then(|cover| {
                let out_id = hop_log.as_ref().map(|_| frame_id(cover.packet.as_bytes()));
                outbound
                    .send(&cover.first_hop, cover.packet)
                    .map_err(|_| CoverSkipped::QueueFull)?;
                if let (Some(log), Some(out_id)) = (&hop_log, out_id) {
                    log.line(format_args!("- {out_id}"));
                }
                Ok(cover.pending)
            });
        let now = Instant::now();
        let mut tracker = loops.lock().unwrap_or_else(PoisonError::into_inner);
        metrics.cover_loops_lost.inc_by(tracker.expire(now));
        let sent = sent.map(|pending| {
            metrics.cover_loops_lost.inc_by(tracker.sent(now, pending));
        });
        metrics
            .cover_loops_pending
            .set(gauge_value(tracker.pending()));
        drop(tracker);
        match sent {
            Ok(()) => {
                metrics.cover_sent.inc();
            }
            Err(reason) => {
                tracing::debug!(%reason, "cover packet skipped");
                metrics.cover_skips(reason, 1);
            }
        }
    }
}

/// How far the cover schedule may fall behind before it restarts from now.
const STALL: Duration = Duration::from_secs(1);
/// Longest wait between two cover packets.
const LONGEST_COVER_GAP: Duration = Duration::from_secs(3600);

/// What [`admit`] did with a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admitted {
    /// Held in the delay queue, to be forwarded.
    Held,
    /// One of this node's cover loops, back.
    Ended,
    /// Dropped (and counted).
    Dropped,
}

fn admit(
    mixer: &mut Mixer,
    loops: &Mutex<LoopTracker>,
    metrics: &Metrics,
    now: Instant,
    unwrapped: Unwrap,
) -> Admitted {
    let turnovers = mixer.stats().replay_turnovers;
    let outcome = mixer.handle_unwrapped(now, unwrapped);
    if mixer.stats().replay_turnovers > turnovers {
        metrics.replay_filter_turnovers.inc();
        tracing::warn!(
            capacity = mixer.replay_capacity(),
            "a replay filter filled before its Sphinx key expired and forgot its oldest \
             generation: replays of those packets would pass. More packets came than \
             max_packet_rate sized it for; raise max_packet_rate"
        );
    }
    let reason = match outcome {
        Outcome::Delayed { .. } => return Admitted::Held,
        Outcome::Dropped(reason) => reason,
        Outcome::Reply { mailbox, reply } => {
            let mut loops = loops.lock().unwrap_or_else(PoisonError::into_inner);
            let returned = loops.returned(&mailbox, &reply);
            metrics
                .cover_loops_pending
                .set(gauge_value(loops.pending()));
            drop(loops);
            if returned == LoopReply::Returned {
                metrics.cover_loops_returned.inc();
                return Admitted::Ended;
            }
            // Someone else's SURB ending here, or a loop already counted
            // lost: a mixnode is the last hop of nothing else.
            mixer.record_drop(DropReason::Malformed);
            DropReason::Malformed
        }
    };
    tracing::debug!(%reason, "packet dropped");
    metrics.drops(reason, 1);
    Admitted::Dropped
}

fn forward(
    transmit: Transmit,
    consensus: Option<&VerifiedConsensus>,
    outbound: &Outbound,
    metrics: &Metrics,
    packet_log: &mut Option<PacketLog>,
) -> std::result::Result<(), DropReason> {
    let result = route(consensus, &transmit.next_hop).and_then(|peer| {
        let logged = packet_log.is_some().then(|| transmit.packet.clone());
        outbound
            .send(&peer, transmit.packet)
            .map_err(|_| DropReason::QueueFull)?;
        if let (Some(log), Some(packet)) = (packet_log.as_mut(), logged) {
            log.append(packet.as_bytes());
        }
        Ok(())
    });
    match result {
        Ok(()) => metrics.forwarded.inc(),
        Err(reason) => {
            tracing::debug!(%reason, "released packet dropped");
            metrics.drops(reason, 1);
            return Err(reason);
        }
    };
    Ok(())
}

/// Opens the `packet_log` test hook, loudly: it writes every forwarded packet
/// to disk.
fn open_packet_log(path: &Path) -> Result<PacketLog> {
    let log = PacketLog::open(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::warn!(path = %path.display(), "packet_log is on: every forwarded packet is written to disk (test hook)");
    Ok(log)
}

/// Opens the `test_ingress_log` test hook, loudly: it records who sent
/// every packet and when.
fn open_ingress_log(path: &Path) -> Result<Arc<IngressLog>> {
    let log = IngressLog::open(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::warn!(
        path = %path.display(),
        "TEST HOOK test_ingress_log is on: the time, sender address and length of every \
         packet received are written to disk. Never run a real node like this."
    );
    Ok(Arc::new(log))
}

/// Opens the `test_hop_log` test hook, loudly: it undoes this node's
/// mixing for whoever reads the file.
/// The TLS identity for the circuit listener (the node's certificate,
/// loaded a second time for its own acceptor), if calls are relayed.
fn circuit_listener_tls(config: &MixnodeConfig) -> Result<Option<TlsIdentity>> {
    match config.circuit_listen {
        Some(_) => Ok(Some(TlsIdentity::load(&config.data_dir)?)),
        None => Ok(None),
    }
}

fn open_cell_log(path: &Path) -> Result<Arc<TestLog>> {
    let log = TestLog::open(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::warn!(
        path = %path.display(),
        "TEST HOOK test_cell_log is on: the time of every call cell is written to disk. \
         Never run a real node like this."
    );
    Ok(Arc::new(log))
}

fn open_hop_log(path: &Path) -> Result<Arc<TestLog>> {
    let log = TestLog::open(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::warn!(
        path = %path.display(),
        "TEST HOOK test_hop_log is on: which packet left for which packet came in is \
         written to disk, undoing this node's mixing. Never run a real node like this."
    );
    Ok(Arc::new(log))
}
