//! The relay side: a TLS listener on which endpoints and other relays open
//! circuits, one TLS connection per circuit per link.
//!
//! ```text
//! accept ─▶ CREATE ─▶ Sphinx layer (keys in force, replay filter)
//!    ├─ Extend: connect to the next hop (pinned TLS), send its CREATE, then
//!    │          relay cells both ways through this hop's layer, no delay
//!    └─ Rendezvous: wait (bounded) for the circuit with the same cookie,
//!               then splice: open each cell from one circuit, seal it for
//!               the other
//! ```
//!
//! Every wait is bounded (setup, rendezvous, idle), the number of circuits
//! is bounded (`max_circuits`), the rendezvous table is bounded, and a
//! relay never queues more than [`SPLICE_QUEUE`] cells for one circuit: a
//! full queue holds the sending circuit back (TCP pushes back to its
//! endpoint) for at most [`STALL_LIMIT`], then the circuit is destroyed,
//! never buffered without bound.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bastet_directory::{ConsensusWatch, EpochKey};
use bastet_link::{TestLog, TlsIdentity, connect_from, server_config, unix_micros};
use bastet_sphinx::{Prepared, ReplayFilter, SphinxSecretKey};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::onion::{HopLayer, RendezvousOpener, RendezvousSealer};
use crate::setup::{Cookie, Setup, process_setup};
use crate::wire::{BODY_LEN, Message, Reason, read_message, write_message};
use crate::{Error, Result};

/// Cells queued towards one circuit at the rendezvous before it is
/// destroyed as too slow (about 0.6 s of the fastest call profile).
pub const SPLICE_QUEUE: usize = 64;
/// How long the rendezvous holds a circuit back while the peer's queue is
/// full before it destroys the call as too slow.
pub const STALL_LIMIT: Duration = Duration::from_secs(2);
/// Most circuits waiting at this relay for their peer.
pub const MAX_WAITING: usize = 4096;
/// Connections over `max_circuits` that still get a TLS handshake and an
/// `overload` answer at once; more are closed without a handshake.
const OVERLOAD_NOTICES: usize = 16;
/// Cookies of spliced circuits remembered, so that a third circuit with
/// the same cookie is refused (`rendezvous_taken`).
const MAX_USED_COOKIES: usize = 16_384;
/// Consecutive cells that fail to authenticate at the rendezvous before it
/// ends the circuit: its counters are out of step with the endpoint's.
const MAX_REFUSED_IN_A_ROW: u32 = 50;
/// Setup packets remembered per replay filter.
const REPLAY_CAPACITY: usize = 1 << 20;

/// How a relay serves circuits.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Most circuits through this relay at once (each is one inbound and at
    /// most one outbound TLS connection).
    pub max_circuits: usize,
    /// Limit for the TLS handshake and the CREATE message, and for the next
    /// hop's connection.
    pub setup_timeout: Duration,
    /// How long a circuit waits at its rendezvous for the peer's.
    pub rendezvous_wait: Duration,
    /// A joined circuit whose link is silent this long is destroyed.
    pub idle_timeout: Duration,
    /// Local address connections to next hops leave from.
    pub source_addr: Option<IpAddr>,
    /// Test hook: the fraction of data cells this relay corrupts (so that
    /// the next authenticating hop drops them), to measure calls under
    /// loss. 0 outside tests.
    pub test_cell_loss: f64,
    /// Test hook: a log line per data cell read (time, circuit, direction,
    /// size), to measure cell timing on the wire.
    pub test_cell_log: Option<Arc<TestLog>>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_circuits: 1024,
            setup_timeout: Duration::from_secs(10),
            rendezvous_wait: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(30),
            source_addr: None,
            test_cell_loss: 0.0,
            test_cell_log: None,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The circuit metrics (under the registry given, e.g.
/// `bastet_mixnode_circuit_*`).
#[derive(Default)]
pub struct CircuitMetrics {
    open: Gauge,
    waiting: Gauge,
    opened: Counter,
    ended: Family<ReasonLabel, Counter>,
    cells: Counter,
    cells_refused: Counter,
}

impl CircuitMetrics {
    /// Registers every series in `registry`, with every end reason at zero.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = CircuitMetrics::default();
        registry.register("open", "Circuits through this relay now", m.open.clone());
        registry.register(
            "waiting",
            "Circuits waiting at this relay (their rendezvous) for the peer's",
            m.waiting.clone(),
        );
        registry.register(
            "opened",
            "Circuits set up through this relay",
            m.opened.clone(),
        );
        registry.register(
            "ended",
            "Circuits ended, by reason (the first reason seen by this relay)",
            m.ended.clone(),
        );
        registry.register("cells", "Data cells relayed", m.cells.clone());
        registry.register(
            "cells_refused",
            "Data cells that did not authenticate at this rendezvous (dropped)",
            m.cells_refused.clone(),
        );
        for reason in [
            Reason::Hangup,
            Reason::Protocol,
            Reason::Overload,
            Reason::NoPeer,
            Reason::Unreachable,
            Reason::RendezvousTaken,
            Reason::Refused,
            Reason::Timeout,
            Reason::Shutdown,
        ] {
            m.ended
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .get();
        }
        Arc::new(m)
    }

    fn ended(&self, reason: Reason) {
        self.ended
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// A circuit end at the rendezvous as its peer needs it: the sealer for
/// cells sent down it, and the queue of its writer.
struct Side {
    sealer: RendezvousSealer,
    tx: mpsc::Sender<Message>,
}

struct Waiting {
    circuit: u64,
    side: Side,
    partner: oneshot::Sender<Side>,
}

/// The rendezvous table: circuits waiting for their peer, and the cookies
/// of circuits already spliced (oldest first, bounded).
#[derive(Default)]
struct Rendezvous {
    waiting: HashMap<Cookie, Waiting>,
    used: std::collections::HashSet<Cookie>,
    used_order: std::collections::VecDeque<Cookie>,
}

impl Rendezvous {
    fn spliced(&mut self, cookie: Cookie) {
        if self.used.len() >= MAX_USED_COOKIES
            && let Some(oldest) = self.used_order.pop_front()
        {
            self.used.remove(&oldest);
        }
        if self.used.insert(cookie) {
            self.used_order.push_back(cookie);
        }
    }
}

struct Shared {
    config: RelayConfig,
    keys: watch::Receiver<Vec<EpochKey>>,
    consensus: ConsensusWatch,
    replay: Mutex<ReplayFilter>,
    waiting: Mutex<Rendezvous>,
    metrics: Arc<CircuitMetrics>,
    next_circuit: AtomicU64,
}

/// Serves circuits on `listener` until the task is dropped. `keys` are the
/// Sphinx keys in force (the mixnode's key rotation feeds them), `consensus`
/// names the next hops.
pub async fn serve_circuits(
    listener: TcpListener,
    identity: &TlsIdentity,
    config: RelayConfig,
    keys: watch::Receiver<Vec<EpochKey>>,
    consensus: ConsensusWatch,
    metrics: Arc<CircuitMetrics>,
) -> Result<()> {
    let acceptor = TlsAcceptor::from(server_config(identity)?);
    let slots = Arc::new(Semaphore::new(config.max_circuits));
    let notices = Arc::new(Semaphore::new(OVERLOAD_NOTICES));
    let replay = ReplayFilter::new(REPLAY_CAPACITY).map_err(|e| Error::Malformed(e.into()))?;
    let shared = Arc::new(Shared {
        config,
        keys,
        consensus,
        replay: Mutex::new(replay),
        waiting: Mutex::new(Rendezvous::default()),
        metrics,
        next_circuit: AtomicU64::new(1),
    });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "circuit accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // Over the limit, a few connections still get a TLS handshake and
        // an `overload` answer, so that endpoints see why; beyond those,
        // the connection is closed at once: no handshake, no task.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => match notices.clone().try_acquire_owned() {
                Ok(notice) => Err(notice),
                Err(_) => {
                    shared.metrics.ended(Reason::Overload);
                    drop(tcp);
                    continue;
                }
            },
        };
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            let setup = shared.config.setup_timeout;
            let Ok(Ok(mut tls)) = tokio::time::timeout(setup, acceptor.accept(tcp)).await else {
                tracing::debug!("circuit TLS handshake failed or timed out");
                return;
            };
            let _permit = match permit {
                Ok(permit) => permit,
                Err(_notice) => {
                    shared.metrics.ended(Reason::Overload);
                    let _ = tokio::time::timeout(
                        setup,
                        write_message(&mut tls, &Message::Destroy(Reason::Overload)),
                    )
                    .await;
                    return;
                }
            };
            let circuit = shared.next_circuit.fetch_add(1, Ordering::Relaxed);
            shared.metrics.open.inc();
            let reason = circuit_task(&shared, circuit, peer, tls).await;
            shared.metrics.open.dec();
            shared.metrics.ended(reason);
            tracing::debug!(circuit, reason = reason.as_str(), "circuit ended");
        });
    }
}

/// Runs one circuit through this relay from its CREATE to its end; returns
/// why it ended.
async fn circuit_task<S>(shared: &Arc<Shared>, circuit: u64, peer: SocketAddr, mut tls: S) -> Reason
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let setup_timeout = shared.config.setup_timeout;
    let first = tokio::time::timeout(setup_timeout, read_message(&mut tls)).await;
    let packet = match first {
        Ok(Ok(Some(Message::Create(packet)))) => packet,
        Ok(Ok(None)) => return Reason::Hangup,
        Err(_) => return Reason::Timeout,
        Ok(Ok(Some(_)) | Err(_)) => {
            let _ = write_message(&mut tls, &Message::Destroy(Reason::Protocol)).await;
            return Reason::Protocol;
        }
    };
    let setup = match prepare(shared, packet.as_bytes()) {
        Ok(setup) => setup,
        Err(e) => {
            tracing::debug!(circuit, error = %e, "refused a circuit setup packet");
            let _ = write_message(&mut tls, &Message::Destroy(Reason::Refused)).await;
            return Reason::Refused;
        }
    };
    shared.metrics.opened.inc();
    tracing::debug!(circuit, peer = %redact(peer), "circuit opened");
    match setup {
        Setup::Extend {
            next,
            packet,
            layer,
        } => {
            let Some(descriptor) = shared
                .consensus
                .current()
                .and_then(|c| c.node(&next).cloned())
            else {
                let _ = write_message(&mut tls, &Message::Destroy(Reason::Unreachable)).await;
                return Reason::Unreachable;
            };
            let Some(addr) = descriptor.circuit_addr.clone() else {
                let _ = write_message(&mut tls, &Message::Destroy(Reason::Unreachable)).await;
                return Reason::Unreachable;
            };
            let connect = connect_from(shared.config.source_addr, &addr, descriptor.pin());
            let mut out = match tokio::time::timeout(setup_timeout, connect).await {
                Ok(Ok(out)) => out,
                _ => {
                    let _ = write_message(&mut tls, &Message::Destroy(Reason::Unreachable)).await;
                    return Reason::Unreachable;
                }
            };
            if write_message(&mut out, &Message::Create(packet))
                .await
                .is_err()
            {
                let _ = write_message(&mut tls, &Message::Destroy(Reason::Unreachable)).await;
                return Reason::Unreachable;
            }
            let (up, down) = layer.split();
            relay_middle(shared, circuit, tls, out, up, down).await
        }
        Setup::Rendezvous { cookie, end } => {
            let (opener, sealer) = end.split();
            rendezvous(shared, circuit, tls, cookie, opener, sealer).await
        }
    }
}

/// Authenticates a setup packet under the keys in force, checks the replay
/// filter and removes this relay's layer.
fn prepare(shared: &Shared, packet: &[u8]) -> Result<Setup> {
    let keys = shared.keys.borrow().clone();
    let secrets: Vec<&SphinxSecretKey> = keys.iter().map(|k| &k.secret).collect();
    let (_, prepared) = Prepared::with_keys(packet, &secrets).map_err(Error::malformed)?;
    let seen = shared
        .replay
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .check_and_insert(&prepared.replay_tag());
    if seen {
        return Err(Error::NotSetup("a replayed setup packet"));
    }
    process_setup(prepared)
}

fn redact(peer: SocketAddr) -> String {
    // Relays log no addresses by default; the circuit number is enough to
    // follow one circuit in a debug log.
    let _ = peer;
    "<redacted>".into()
}

/// Test hooks applied to a data cell read off a link.
fn hooks(shared: &Shared, circuit: u64, direction: &str, body: &mut [u8; BODY_LEN]) {
    if let Some(log) = &shared.config.test_cell_log {
        log.line(format_args!(
            "{} {circuit} {direction} {}",
            unix_micros(),
            body.len() + 1
        ));
    }
    let loss = shared.config.test_cell_loss;
    if loss > 0.0 && rand::random::<f64>() < loss {
        rand::fill(&mut body[..]);
    }
}

/// Relays the cells of a circuit this relay extends.
async fn relay_middle<S, T>(
    shared: &Arc<Shared>,
    circuit: u64,
    opener: S,
    next: T,
    mut up: HopLayer,
    mut down: HopLayer,
) -> Reason
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut in_r, mut in_w) = tokio::io::split(opener);
    let (mut out_r, mut out_w) = tokio::io::split(next);
    let joined = AtomicBool::new(false);
    let wait = |joined: &AtomicBool| {
        if joined.load(Ordering::Relaxed) {
            shared.config.idle_timeout
        } else {
            shared.config.rendezvous_wait + shared.config.setup_timeout
        }
    };
    // Each loop returns why it ended and what to tell the other side.
    let towards_rendezvous = async {
        loop {
            let message = match tokio::time::timeout(wait(&joined), read_message(&mut in_r)).await {
                Err(_) => return (Reason::Timeout, true),
                Ok(Ok(None) | Err(_)) => return (Reason::Hangup, true),
                Ok(Ok(Some(m))) => m,
            };
            match message {
                Message::Data(mut body) => {
                    hooks(shared, circuit, "out", &mut body);
                    if up.apply(&mut body).is_err() {
                        return (Reason::Protocol, true);
                    }
                    shared.metrics.cells.inc();
                    if !write_timely(shared, &mut out_w, &Message::Data(body)).await {
                        return (Reason::Timeout, false);
                    }
                }
                Message::Destroy(reason) => {
                    let _ = write_timely(shared, &mut out_w, &Message::Destroy(reason)).await;
                    return (reason, false);
                }
                _ => return (Reason::Protocol, true),
            }
        }
    };
    let towards_endpoint = async {
        loop {
            let message = match tokio::time::timeout(wait(&joined), read_message(&mut out_r)).await
            {
                Err(_) => return (Reason::Timeout, true),
                Ok(Ok(None) | Err(_)) => return (Reason::Hangup, true),
                Ok(Ok(Some(m))) => m,
            };
            let forward = match message {
                Message::Data(mut body) => {
                    hooks(shared, circuit, "back", &mut body);
                    if down.apply(&mut body).is_err() {
                        return (Reason::Protocol, true);
                    }
                    shared.metrics.cells.inc();
                    Message::Data(body)
                }
                Message::Joined => {
                    joined.store(true, Ordering::Relaxed);
                    Message::Joined
                }
                Message::Ready => Message::Ready,
                Message::Destroy(reason) => {
                    let _ = write_timely(shared, &mut in_w, &Message::Destroy(reason)).await;
                    return (reason, false);
                }
                Message::Create(_) => return (Reason::Protocol, true),
            };
            if !write_timely(shared, &mut in_w, &forward).await {
                return (Reason::Timeout, false);
            }
        }
    };
    tokio::select! {
        (reason, tell) = towards_rendezvous => {
            if tell {
                let _ = write_timely(shared, &mut out_w, &Message::Destroy(reason)).await;
            }
            reason
        }
        (reason, tell) = towards_endpoint => {
            if tell {
                let _ = write_timely(shared, &mut in_w, &Message::Destroy(reason)).await;
            }
            reason
        }
    }
}

/// Writes one message within the idle timeout; false if it failed.
async fn write_timely<W: AsyncWrite + Unpin>(
    shared: &Shared,
    writer: &mut W,
    message: &Message,
) -> bool {
    matches!(
        tokio::time::timeout(shared.config.idle_timeout, write_message(writer, message)).await,
        Ok(Ok(()))
    )
}

/// Writes what the rendezvous queues for one circuit; ends after a DESTROY
/// or when the link fails.
async fn writer_task<S>(idle: Duration, mut writer: WriteHalf<S>, mut rx: mpsc::Receiver<Message>)
where
    S: AsyncRead + AsyncWrite,
{
    while let Some(message) = rx.recv().await {
        let last = matches!(message, Message::Destroy(_));
        let written = tokio::time::timeout(idle, write_message(&mut writer, &message)).await;
        if last || !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
}

/// The rendezvous end of a circuit: waits for the peer's circuit, then
/// moves cells from this circuit to the peer's.
async fn rendezvous<S>(
    shared: &Arc<Shared>,
    circuit: u64,
    tls: S,
    cookie: Cookie,
    mut opener: RendezvousOpener,
    sealer: RendezvousSealer,
) -> Reason
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(tls);
    let (tx, rx) = mpsc::channel::<Message>(SPLICE_QUEUE);
    let mut writer = tokio::spawn(writer_task(shared.config.idle_timeout, writer, rx));
    let reason = match meet(shared, circuit, &mut reader, &tx, cookie, sealer).await {
        Ok(peer) => splice_cells(shared, circuit, &mut reader, &tx, &mut opener, peer).await,
        Err(reason) => reason,
    };
    // The endpoint hears why (if it is still there): the DESTROY waits
    // behind what is queued, for a second at most.
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Destroy(reason))).await;
    drop(tx);
    if tokio::time::timeout(shared.config.idle_timeout, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    reason
}

enum Claim {
    /// The peer's circuit was waiting: here is its side.
    Second(Side),
    /// This circuit waits for the peer's.
    First(oneshot::Receiver<Side>),
    /// Refused.
    Refused(Reason),
}

/// Meets the peer's circuit under `cookie`, or fails with why not.
async fn meet<S>(
    shared: &Arc<Shared>,
    circuit: u64,
    reader: &mut ReadHalf<S>,
    tx: &mpsc::Sender<Message>,
    cookie: Cookie,
    sealer: RendezvousSealer,
) -> std::result::Result<Side, Reason>
where
    S: AsyncRead + AsyncWrite,
{
    let own = Side {
        sealer,
        tx: tx.clone(),
    };
    let claim = {
        let mut table = shared
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let claim = if table.used.contains(&cookie) {
            Claim::Refused(Reason::RendezvousTaken)
        } else {
            match table.waiting.remove(&cookie) {
                Some(first) => {
                    // JOINED reaches the first circuit before any cell the
                    // second could send it: it is queued here, under the
                    // lock, before the second circuit can read a cell.
                    let _ = first.side.tx.try_send(Message::Joined);
                    match first.partner.send(own) {
                        Ok(()) => {
                            table.spliced(cookie);
                            Claim::Second(first.side)
                        }
                        // The waiting circuit ended as we took it.
                        Err(_) => Claim::Refused(Reason::NoPeer),
                    }
                }
                None if table.waiting.len() >= MAX_WAITING => Claim::Refused(Reason::Overload),
                None => {
                    let (partner, rx) = oneshot::channel();
                    let _ = tx.try_send(Message::Ready);
                    table.waiting.insert(
                        cookie,
                        Waiting {
                            circuit,
                            side: own,
                            partner,
                        },
                    );
                    Claim::First(rx)
                }
            }
        };
        shared.metrics.waiting.set(gauge(table.waiting.len()));
        claim
    };
    let peer = match claim {
        Claim::Second(side) => {
            let _ = tx.try_send(Message::Joined);
            side
        }
        Claim::Refused(reason) => return Err(reason),
        Claim::First(rx) => {
            let outcome = tokio::select! {
                side = rx => side.map_err(|_| Reason::NoPeer),
                message = read_message(reader) => Err(match message {
                    Ok(Some(Message::Destroy(reason))) => reason,
                    Ok(None) | Err(_) => Reason::Hangup,
                    Ok(Some(_)) => Reason::Protocol,
                }),
                () = tokio::time::sleep(shared.config.rendezvous_wait) => Err(Reason::NoPeer),
            };
            if outcome.is_err() {
                let mut table = shared
                    .waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if table
                    .waiting
                    .get(&cookie)
                    .is_some_and(|w| w.circuit == circuit)
                {
                    table.waiting.remove(&cookie);
                }
                shared.metrics.waiting.set(gauge(table.waiting.len()));
            }
            // Its JOINED was queued by the circuit that claimed it.
            outcome?
        }
    };
    tracing::debug!(circuit, "circuit spliced at its rendezvous");
    Ok(peer)
}

/// Moves every cell arriving on this circuit to the peer's, until either
/// ends.
async fn splice_cells<S>(
    shared: &Arc<Shared>,
    circuit: u64,
    reader: &mut ReadHalf<S>,
    tx: &mpsc::Sender<Message>,
    opener: &mut RendezvousOpener,
    peer: Side,
) -> Reason
where
    S: AsyncRead + AsyncWrite,
{
    let Side {
        mut sealer,
        tx: peer_tx,
    } = peer;
    let end = |reason: Reason| {
        let _ = peer_tx.try_send(Message::Destroy(reason));
        reason
    };
    let mut refused_in_a_row = 0u32;
    loop {
        let read = tokio::time::timeout(shared.config.idle_timeout, read_message(reader)).await;
        let message = match read {
            Err(_) => return end(Reason::Timeout),
            Ok(Ok(None) | Err(_)) => return end(Reason::Hangup),
            Ok(Ok(Some(m))) => m,
        };
        match message {
            Message::Data(mut body) => {
                hooks(shared, circuit, "out", &mut body);
                let Ok(sealed) = opener.open(&body) else {
                    shared.metrics.cells_refused.inc();
                    refused_in_a_row += 1;
                    if refused_in_a_row >= MAX_REFUSED_IN_A_ROW {
                        // Out of step with its endpoint: nothing will open.
                        return end(Reason::Protocol);
                    }
                    continue;
                };
                refused_in_a_row = 0;
                let Ok(out) = sealer.seal(&sealed) else {
                    return end(Reason::Protocol);
                };
                // A full queue holds this circuit back (TCP pushes back to
                // its sender) for at most STALL_LIMIT, then the call ends.
                match tokio::time::timeout(STALL_LIMIT, peer_tx.send(Message::Data(Box::new(out))))
                    .await
                {
                    Ok(Ok(())) => {
                        shared.metrics.cells.inc();
                    }
                    Err(_) => {
                        let _ = tx.try_send(Message::Destroy(Reason::Overload));
                        return end(Reason::Overload);
                    }
                    Ok(Err(_)) => return Reason::Hangup,
                }
            }
            Message::Destroy(reason) => return end(reason),
            _ => return end(Reason::Protocol),
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
