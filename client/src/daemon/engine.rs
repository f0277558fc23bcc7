//! The daemon's traffic engine: one task that owns the outbox, the Loopix
//! schedule, the mailbox listing and the received messages. Network calls
//! (listing, deleting, fetching the consensus) run in spawned tasks that
//! report back as [`Event`]s, so a slow server never delays a tick. Packets
//! are built up to [`LOOKAHEAD`] before their tick and released at the tick
//! by a separate pacer task, so that building them, or the engine being
//! briefly busy (saving the outbox, taking a message), does not move them.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bastet_directory::{DirectoryConfig, VerifiedConsensus, epoch_of};
use bastet_link::{Outbound, OutboundConfig, Peer, SendError};
use bastet_mailbox::{MailboxClient, StoredMessage};
use bastet_sphinx::{
    EnvelopeId, Fragment, NodeId, PACKET_LEN, Packet, SEALED_REPLY_LEN, SealedReply,
};
use tokio::sync::{mpsc, oneshot};

use super::api::{
    Counters, MAX_INBOX_PAGE_BYTES, MessageReport, Request, Response, StatusReport, WireCallSignal,
    WireHop, WireReceived, WireReceivedCall, WireScore,
};
use super::saver::Saver;
use crate::calls::{CallId, CallInbox, CallSignal};
use crate::contacts::Contacts;
use crate::datadir::MAX_HELD_MESSAGES;
use crate::inbox::plan_inbox;
use crate::outbox::{MAX_IN_FLIGHT, Outgoing, RoundTrip, ack_timeout};
use crate::packets::{
    Built, RouteChoice, drop_packet, fragment_packet, is_loop_envelope, loop_packet,
};
use crate::poisson::{Scheduler, SendKind};
use crate::policy::choose_policy_route;
use crate::route::mailbox_descriptor;
use crate::send_log::{SendLog, SendNote};
use crate::{
    Address, AnonymityReport, ClientConfig, ClientKeys, Content, DataDir, Error, NetworkLoad,
    NodeScores, Result, RouteNode, RoutePolicy, TrafficParams, now_ms,
};

/// A request from a socket connection and where to answer it.
pub(crate) type Call = (Request, oneshot::Sender<Response>);

/// Results of the spawned network calls.
pub(crate) enum Event {
    /// New payloads listed from this client's mailbox.
    Listed(Result<Vec<StoredMessage>>),
    /// A delete up to the seq finished.
    Deleted(u64, Result<u64>),
    /// A freshly fetched consensus.
    Consensus(Result<VerifiedConsensus>),
}

/// Packets queued per first mix on the link pool.
const OUTBOUND_QUEUE: usize = 1024;
/// Packets are built this long before their tick and released at the tick
/// by the pacer task: building one (Sphinx, route choice) takes
/// milliseconds of CPU, more on a loaded host, and done at the tick it
/// would delay that packet and every tick due meanwhile, which stretches
/// the short gaps of the Poisson process where an observer can see it.
const LOOKAHEAD: Duration = Duration::from_millis(250);
/// Packets built and waiting for their tick: more than `LOOKAHEAD` holds
/// at the highest rates allowed.
const PACER_QUEUE: usize = 256;
/// A fragment that could not be built or queued is tried again after this.
const UNSENT_RETRY: Duration = Duration::from_secs(1);
/// The outbox on disk is rewritten at most this often while sending.
const SAVE_PERIOD: Duration = Duration::from_secs(1);
/// Housekeeping (give-ups, loop expiry, refilling the queue) runs at least
/// this often.
pub(crate) const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Longest stretch spent sending due packets before looking at requests
/// and acks again.
const MAX_TICK_WORK: Duration = Duration::from_millis(50);
/// Most fragments in flight or queued, however fast the payload stream.
const MAX_WINDOW: usize = 2048;
/// `message` requests waiting at once (one per waiting `bastet send`).
const MAX_WAITERS: usize = 1024;
/// Final messages remembered for `bastet send` to read their fate.
const MAX_FINISHED: usize = 1000;
/// Loops awaited at once; more are sent but not scored.
const MAX_PENDING_LOOPS: usize = 4096;
/// Payloads held from the mailbox listing at once.
const MAX_CACHED: usize = 20_000;
/// Estimated bytes of one empty mailbox poll (signed request, TLS records,
/// JSON answer), for the idle bandwidth estimate.
const BYTES_PER_POLL: f64 = 900.0;

/// An outgoing message being driven.
struct Live {
    out: Outgoing,
    fragments: Vec<Vec<u8>>,
    to: Address,
    first_route: Vec<RouteNode>,
    epoch: u64,
    signatures: usize,
}

impl Live {
    /// A message not sent yet.
    fn new(out: Outgoing, fragments: Vec<Vec<u8>>, to: Address) -> Self {
        Live {
            out,
            fragments,
            to,
            first_route: Vec::new(),
            epoch: 0,
            signatures: 0,
        }
    }

    fn report(&self) -> MessageReport {
        MessageReport {
            route: self.first_route.iter().map(WireHop::from).collect(),
            epoch: self.epoch,
            signatures: self.signatures,
            ..MessageReport::from(&self.out)
        }
    }
}

struct PendingLoop {
    route: Vec<NodeId>,
    sent: Instant,
}

/// The engine's state; see the module docs.
pub(crate) struct Engine {
    dir: DataDir,
    keys: Arc<ClientKeys>,
    /// The contact book and ratchet sessions (only the daemon changes them
    /// while it runs).
    contacts: Contacts,
    config: ClientConfig,
    params: TrafficParams,
    own_server: NodeId,
    address: String,
    consensus: VerifiedConsensus,
    api: Arc<MailboxClient>,
    outbound: Arc<Outbound>,
    pacer: mpsc::Sender<Paced>,
    pacer_task: tokio::task::JoinHandle<()>,
    /// The `test_send_log` test hook.
    send_log: Option<Arc<SendLog>>,
    scheduler: Scheduler<(String, usize)>,
    live: Vec<Live>,
    finished: VecDeque<MessageReport>,
    queued: HashSet<(String, usize)>,
    round_trip: RoundTrip,
    loops: HashMap<EnvelopeId, PendingLoop>,
    loop_timeout: Duration,
    scores: NodeScores,
    scores_dirty: bool,
    counters: Counters,
    /// Fragments and messages listed and not yet deleted, by seq.
    cache: Vec<StoredMessage>,
    high_seq: Option<u64>,
    /// Seqs of acks and loops listed and not yet deleted: taken on arrival.
    taken: BTreeSet<u64>,
    shown: BTreeSet<u64>,
    completed: HashSet<EnvelopeId>,
    partial: usize,
    held: usize,
    deleting: bool,
    retry_delete: bool,
    polling: bool,
    refreshing: bool,
    started: Instant,
    last_save: Instant,
    dirty: bool,
    last_housekeeping: Instant,
    waiters: Vec<(String, Instant, oneshot::Sender<Response>)>,
    /// Call signals received, for `call_signals`.
    calls: CallInbox,
    /// `call_signals` requests waiting for a signal (of one call, or any).
    call_waiters: Vec<(Option<CallId>, Instant, oneshot::Sender<Response>)>,
    saver: Saver,
    events: mpsc::Sender<Event>,
}

impl Engine {
    /// Loads the client in `dir` (holding its outbox lock), fetches the
    /// consensus and resumes every pending message in the outbox.
    pub(crate) async fn start(
        dir: DataDir,
        keys: ClientKeys,
        config: ClientConfig,
        address: String,
        consensus: VerifiedConsensus,
        events: mpsc::Sender<Event>,
    ) -> Result<Engine> {
        let params = config.traffic.params()?;
        let source_ip = config.source_ip()?;
        let own_server = config.mailbox_server_id()?;
        let server = mailbox_descriptor(&consensus, &own_server)?;
        let api = server
            .api_addr
            .as_deref()
            .ok_or_else(|| Error::MailboxServerNotInConsensus(own_server.to_hex()))?;
        let api = Arc::new(MailboxClient::new(api, server.pin())?);
        let scheduler = Scheduler::new(
            params.clone(),
            MAX_IN_FLIGHT,
            Instant::now(),
            &mut rand::rng(),
        )?;
        let mix_hops = config.route.template.len().max(3) as u32;
        let loop_timeout = params.max_hop_delay * mix_hops
            + 2 * config.traffic.poll_interval()
            + Duration::from_secs(3);
        let held = dir.load_received()?.len();
        let scores = match dir.load_scores()? {
            None => NodeScores::new(),
            Some((path, bytes)) => String::from_utf8(bytes)
                .map_err(|_| Error::CorruptScores("not UTF-8".into()))
                .and_then(|text| NodeScores::from_json(&text))
                .map_err(|e| Error::File {
                    path,
                    why: format!("{e}; delete it to start measuring afresh"),
                })?,
        };
        let dir_for_saver = dir.clone();
        let outbound = Arc::new(Outbound::new(OutboundConfig {
            queue_len: OUTBOUND_QUEUE,
            bind_addr: source_ip,
            ..OutboundConfig::default()
        }));
        let send_log = config
            .test_send_log
            .as_deref()
            .map(SendLog::open)
            .transpose()?
            .map(Arc::new);
        let (pacer, paced) = mpsc::channel(PACER_QUEUE);
        let pacer_task = tokio::spawn(pace(paced, outbound.clone(), send_log.clone()));
        let contacts = Contacts::load(&dir, &keys, own_server)?;
        let mut engine = Engine {
            contacts,
            shown: dir.load_shown()?,
            completed: dir.load_completed()?.into_iter().collect(),
            dir,
            keys: Arc::new(keys),
            config,
            params,
            own_server,
            address,
            consensus,
            api,
            outbound,
            pacer,
            pacer_task,
            send_log,
            scheduler,
            live: Vec::new(),
            finished: VecDeque::new(),
            queued: HashSet::new(),
            round_trip: RoundTrip::default(),
            loops: HashMap::new(),
            loop_timeout,
            scores,
            scores_dirty: false,
            counters: Counters::default(),
            cache: Vec::new(),
            high_seq: None,
            taken: BTreeSet::new(),
            partial: 0,
            held,
            deleting: false,
            retry_delete: false,
            polling: false,
            refreshing: false,
            started: Instant::now(),
            last_save: Instant::now(),
            dirty: false,
            last_housekeeping: Instant::now(),
            waiters: Vec::new(),
            calls: CallInbox::new(),
            call_waiters: Vec::new(),
            saver: Saver::start(dir_for_saver),
            events,
        };
        for out in engine.dir.load_outbox()? {
            if !out.is_final() {
                engine.resume(out);
            }
        }
        // A join or held messages left by the last run.
        engine.chain_work();
        Ok(engine)
    }

    /// Messages resumed from the outbox (not final).
    pub(crate) fn pending(&self) -> usize {
        self.live.len()
    }

    fn resume(&mut self, mut out: Outgoing) {
        let fragments = self.dir.load_fragments(&out.message_id);
        let to = Address::parse(&out.to);
        let (fragments, to) = match (fragments, to) {
            (Ok(f), Ok(a)) if f.len() == out.fragments.len() => (f, a),
            (f, a) => {
                let why = match (f, a) {
                    (Err(e), _) | (_, Err(e)) => e.to_string(),
                    _ => "fragment count does not match its state".into(),
                };
                out.fail(format!("cannot resend: {why}"));
                self.saver.remove(&out.message_id);
                self.remember(MessageReport::from(&out));
                return;
            }
        };
        self.live.push(Live::new(out, fragments, to));
    }

    /// Keeps a final message's report for `bastet send` to read.
    fn remember(&mut self, report: MessageReport) {
        self.finished.push_back(report);
        while self.finished.len() > MAX_FINISHED {
            self.finished.pop_front();
        }
    }

    /// Runs until `shutdown` resolves, the request channel closes or a
    /// `shutdown` request comes; then saves the outbox and lets queued
    /// packets reach their first hops (for at most a few seconds).
    pub(crate) async fn run(
        mut self,
        mut calls: mpsc::Receiver<Call>,
        mut events: mpsc::Receiver<Event>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let mut poll = tokio::time::interval(self.config.traffic.poll_interval());
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let next_tick =
                self.scheduler
                    .poll_timeout()
                    .map_or(Instant::now() + HOUSEKEEPING, |t| {
                        t.checked_sub(LOOKAHEAD)
                            .unwrap_or(t)
                            .min(Instant::now() + HOUSEKEEPING)
                    });
            tokio::select! {
                () = tokio::time::sleep_until(next_tick.into()) => {}
                _ = poll.tick() => self.start_poll(),
                Some(event) = events.recv() => self.handle_event(event),
                call = calls.recv() => match call {
                    Some((Request::Shutdown {}, reply)) => {
                        let _ = reply.send(Response::Done);
                        break;
                    }
                    Some((request, reply)) => self.handle(request, reply),
                    None => break,
                },
                () = &mut shutdown => break,
            }
            // Answer every request already waiting, then send what is due.
            let mut stop = false;
            while let Ok((request, reply)) = calls.try_recv() {
                if matches!(request, Request::Shutdown {}) {
                    let _ = reply.send(Response::Done);
                    stop = true;
                    break;
                }
                self.handle(request, reply);
            }
            if stop {
                break;
            }
            self.serve_ticks();
            if self.last_housekeeping.elapsed() >= HOUSEKEEPING {
                self.last_housekeeping = Instant::now();
                self.housekeeping();
            }
        }
        tracing::info!("daemon stopping: saving the outbox");
        self.save();
        // The pacer releases what it holds (at most LOOKAHEAD ahead), then ends.
        drop(self.pacer);
        let _ = tokio::time::timeout(LOOKAHEAD + Duration::from_secs(1), self.pacer_task).await;
        self.saver.finish();
        let written = self.outbound.written() + self.outbound.lost();
        let sent = self.counters.real + self.counters.drop + self.counters.loops_sent;
        let drained = Instant::now();
        while self.outbound.written() + self.outbound.lost() < sent.max(written)
            && self.outbound.queued() > 0
            && drained.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Builds the packets of the ticks due within [`LOOKAHEAD`] and hands
    /// them to the pacer, which sends each at its tick; for at most
    /// [`MAX_TICK_WORK`] at a time, so that a starved engine still answers
    /// requests and reads acks between bursts.
    fn serve_ticks(&mut self) {
        let rng = &mut rand::rng();
        let start = Instant::now();
        while start.elapsed() < MAX_TICK_WORK
            && let Some(tick) = self.scheduler.poll(Instant::now() + LOOKAHEAD, rng)
        {
            let at = tick.at;
            let t = Instant::now();
            match tick.kind {
                SendKind::Real((id, index)) => {
                    self.queued.remove(&(id.clone(), index));
                    if !self.send_real(at, &id, index) {
                        self.send_drop(at);
                    }
                }
                SendKind::Drop => self.send_drop(at),
                SendKind::Loop => self.send_loop(at),
            }
            self.counters.ticks += 1;
            self.counters.tick_work_us += t.elapsed().as_micros() as u64;
        }
        self.counters.missed = self.scheduler.missed();
    }

    /// Sends fragment `index` of message `id`; false if nothing went out
    /// (acked meanwhile, final, or no route), so the tick sends cover.
    fn send_real(&mut self, at: Instant, id: &str, index: usize) -> bool {
        let Some(pos) = self.live.iter().position(|l| l.out.message_id == id) else {
            return false;
        };
        let now = now_ms();
        let timeout = self.ack_timeout();
        let live = &self.live[pos];
        if live.out.is_final() || live.out.fragments.get(index).is_none_or(|f| f.acked) {
            return false;
        }
        let policy = live.out.route.as_ref().unwrap_or(&self.config.route);
        let built = self.with_choice(policy, |choice| {
            let fragment = &live.fragments[index];
            fragment_packet(
                choice,
                &self.keys,
                &live.to,
                &self.own_server,
                fragment,
                &mut rand::rng(),
            )
        });
        let live = &mut self.live[pos];
        match built {
            Ok((built, ack_id, keys)) => {
                let note = self.send_log.as_ref().map(|_| SendNote::Real {
                    recipient: live.to.mailbox,
                    message: live.out.message_id.clone(),
                    fragment: index,
                });
                if let Err(e) = transmit(&self.pacer, at, (built.peer, built.packet), note) {
                    tracing::warn!(error = %e, "a fragment could not be queued for its first mix");
                    live.out.record_unsent(index, now, UNSENT_RETRY);
                    return false;
                }
                live.out.record_send(index, ack_id, &keys, now, timeout);
                if live.first_route.is_empty() {
                    live.first_route = built.nodes;
                    live.epoch = self.consensus.epoch;
                    live.signatures = self.consensus.signatures;
                }
                self.counters.real += 1;
                self.dirty = true;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "a fragment could not be built; trying again");
                live.out.record_unsent(index, now, UNSENT_RETRY);
                false
            }
        }
    }

    /// Runs `f` with the route choice for `policy`: this consensus, the
    /// delays in force and the nodes weighted by their loop scores.
    fn with_choice<T>(&self, policy: &RoutePolicy, f: impl FnOnce(&RouteChoice<'_>) -> T) -> T {
        let weigher = self.scores.weigher(now_ms());
        f(&RouteChoice {
            consensus: &self.consensus,
            policy,
            params: &self.params,
            weight: Some(&weigher),
        })
    }

    /// Hands a cover packet (drop or loop) to the pacer; its route if queued.
    fn send_cover(
        &mut self,
        at: Instant,
        kind: SendNote,
        built: Result<Built>,
    ) -> Option<Vec<RouteNode>> {
        let note = self.send_log.as_ref().map(|_| kind.clone());
        let kind = if kind == SendNote::Loop {
            "loop"
        } else {
            "drop"
        };
        match built {
            Ok(built) => match transmit(&self.pacer, at, (built.peer, built.packet), note) {
                Ok(()) => Some(built.nodes),
                Err(e) => {
                    tracing::debug!(error = %e, "{kind} cover not queued");
                    self.counters.skipped += 1;
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no route for {kind} cover; tick skipped");
                self.counters.skipped += 1;
                None
            }
        }
    }

    fn send_drop(&mut self, at: Instant) {
        let policy = &self.config.route;
        let built = self.with_choice(policy, |c| {
            drop_packet(c, &self.own_server, &mut rand::rng())
        });
        if self.send_cover(at, SendNote::Drop, built).is_some() {
            self.counters.drop += 1;
        }
    }

    fn send_loop(&mut self, at: Instant) {
        let policy = &self.config.route;
        let built = self.with_choice(policy, |c| {
            loop_packet(c, &self.keys, &self.own_server, &mut rand::rng())
        });
        let (built, envelope) = match built {
            Ok((b, e)) => (Ok(b), Some(e)),
            Err(e) => (Err(e), None),
        };
        if let (Some(nodes), Some(envelope)) =
            (self.send_cover(at, SendNote::Loop, built), envelope)
        {
            self.counters.loops_sent += 1;
            if self.loops.len() < MAX_PENDING_LOOPS {
                let route = nodes.iter().map(|n| n.node).collect();
                let sent = Instant::now();
                self.loops.insert(envelope, PendingLoop { route, sent });
            }
        }
    }

    /// Give-ups, lost loops, the real-packet queue, saving, the consensus.
    fn housekeeping(&mut self) {
        self.answer_waiters();
        self.take_calls();
        let now = now_ms();
        let mut done = Vec::new();
        for (i, live) in self.live.iter_mut().enumerate() {
            if live.out.advance(now) {
                self.dirty = true;
            }
            if live.out.is_final() {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let live = self.live.remove(i);
            self.queued.retain(|(id, _)| *id != live.out.message_id);
            self.saver.remove(&live.out.message_id);
            self.remember(live.report());
        }
        let timeout = self.loop_timeout;
        let lost: Vec<EnvelopeId> = self
            .loops
            .iter()
            .filter(|(_, p)| p.sent.elapsed() > timeout)
            .map(|(e, _)| *e)
            .collect();
        for envelope in lost {
            if let Some(p) = self.loops.remove(&envelope) {
                self.counters.loops_lost += 1;
                self.scores.record(&p.route, false, now);
                self.scores_dirty = true;
            }
        }
        self.refill();
        if (self.dirty || self.scores_dirty) && self.last_save.elapsed() >= SAVE_PERIOD {
            self.save();
        }
        let epoch = epoch_of(now / 1000, self.config.directory.epoch_secs);
        if epoch != self.consensus.epoch && !self.refreshing {
            self.refreshing = true;
            let directory = self.config.directory.clone();
            let events = self.events.clone();
            tokio::spawn(async move {
                let result = fetch_consensus(&directory).await;
                if result.is_err() {
                    // Do not hammer the authorities; the next try follows.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                let _ = events.send(Event::Consensus(result)).await;
            });
        }
    }

    /// Fragments in flight (sent, not acked, not yet due again) or queued
    /// at most: enough to keep the payload stream busy for two ack timeouts
    /// (the rate, not the window, limits sending), at least
    /// [`MAX_IN_FLIGHT`], at most [`MAX_WINDOW`].
    fn window(&self) -> usize {
        let timeout = self.ack_timeout().as_secs_f64();
        let busy = (2.0 * self.params.payload_rate * timeout).ceil() as usize;
        busy.clamp(MAX_IN_FLIGHT, MAX_WINDOW)
    }

    fn ack_timeout(&self) -> Duration {
        self.round_trip.timeout(ack_timeout(
            self.params.mean_capped_hop_delay(),
            self.config.traffic.poll_interval(),
        ))
    }

    /// Queues due fragments for payload ticks, round robin over messages,
    /// while fewer than [`Engine::window`] are in flight or queued.
    fn refill(&mut self) {
        let now = now_ms();
        let in_flight: usize = self.live.iter().map(|l| l.out.in_flight(now)).sum();
        let mut room = self
            .window()
            .saturating_sub(in_flight + self.scheduler.queued());
        if room == 0 {
            return;
        }
        let mut due: Vec<VecDeque<(String, usize)>> = self
            .live
            .iter()
            .map(|l| {
                l.out
                    .due(now)
                    .into_iter()
                    .map(|i| (l.out.message_id.clone(), i))
                    .filter(|k| !self.queued.contains(k))
                    .collect()
            })
            .collect();
        while room > 0 {
            let mut any = false;
            for d in &mut due {
                if room == 0 {
                    break;
                }
                if let Some(key) = d.pop_front() {
                    if self.scheduler.enqueue(key.clone()).is_err() {
                        return;
                    }
                    self.queued.insert(key);
                    room -= 1;
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
    }

    /// Writes every live message's state.
    fn save(&mut self) {
        for live in &self.live {
            self.saver.outgoing(&live.out);
        }
        if self.scores_dirty {
            self.saver.scores(self.scores.to_json().into_bytes());
        }
        self.dirty = false;
        self.scores_dirty = false;
        self.last_save = Instant::now();
    }

    fn start_poll(&mut self) {
        if self.polling || self.cache.len() + self.taken.len() >= MAX_CACHED {
            return;
        }
        self.polling = true;
        let (api, keys, events) = (self.api.clone(), self.keys.clone(), self.events.clone());
        let after = self.high_seq;
        tokio::spawn(async move {
            let result = list_after(&api, &keys, after).await;
            let _ = events.send(Event::Listed(result)).await;
        });
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Listed(result) => {
                self.polling = false;
                self.counters.polls += 1;
                match result {
                    Ok(new) => self.take_listing(new),
                    Err(e) => {
                        self.counters.poll_errors += 1;
                        tracing::warn!(error = %e, "listing the mailbox failed; trying again");
                    }
                }
            }
            Event::Deleted(upto, result) => {
                self.deleting = false;
                match result {
                    Ok(_) => {
                        // What arrived while this delete ran is planned
                        // (and deleted) at the next listing even if that
                        // brings nothing new.
                        self.cache.retain(|m| m.seq > upto);
                        self.taken.retain(|&seq| seq > upto);
                        self.retry_delete = !self.cache.is_empty() || !self.taken.is_empty();
                        self.shown.retain(|&seq| seq > upto);
                        if let Err(e) = self.dir.save_shown(&self.shown) {
                            tracing::error!(error = %e, "saving the inbox state failed");
                        }
                    }
                    Err(e) => {
                        self.retry_delete = true;
                        tracing::warn!(error = %e, "deleting read payloads failed; trying again");
                    }
                }
            }
            Event::Consensus(result) => {
                self.refreshing = false;
                match result {
                    Ok(c) if c.epoch >= self.consensus.epoch => self.consensus = c,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "refreshing the consensus failed"),
                }
            }
        }
    }

    /// Takes new payloads: acks to the outbox, loops to the scores, and
    /// messages, once complete, to the local inbox; then deletes what was
    /// taken from the server.
    fn take_listing(&mut self, new: Vec<StoredMessage>) {
        if new.is_empty() && !self.retry_delete {
            return;
        }
        self.retry_delete = false;
        let now = now_ms();
        for stored in new {
            self.high_seq = Some(self.high_seq.map_or(stored.seq, |h| h.max(stored.seq)));
            self.counters.bytes_down += stored.payload.len() as u64;
            if stored.payload.len() == SEALED_REPLY_LEN {
                self.taken.insert(stored.seq);
                if let Ok(reply) = SealedReply::from_bytes(&stored.payload) {
                    for live in &mut self.live {
                        if let Some(acked) = live.out.apply_reply(&reply, now) {
                            self.round_trip.sample(acked.round_trip);
                            self.counters.acks += 1;
                            self.dirty = true;
                            break;
                        }
                    }
                }
            } else if let Ok(f) = Fragment::from_bytes(&stored.payload)
                && is_loop_envelope(&self.keys, &f.envelope())
            {
                self.taken.insert(stored.seq);
                if let Some(p) = self.loops.remove(&f.envelope()) {
                    self.counters.loops_returned += 1;
                    self.scores.record(&p.route, true, now);
                    self.scores_dirty = true;
                }
            } else {
                self.cache.push(stored);
            }
        }
        // Listings come in seq order; keep it so whatever the server does.
        if !self.cache.is_sorted_by_key(|m| m.seq) {
            self.cache.sort_by_key(|m| m.seq);
            self.cache.dedup_by_key(|m| m.seq);
        }
        if self.held >= MAX_HELD_MESSAGES {
            tracing::warn!(
                held = self.held,
                "the local inbox is full; run `bastet inbox` to take messages"
            );
            return;
        }
        let keys = &self.keys;
        let contacts = &mut self.contacts;
        let mut open = |bytes: &[u8]| Ok(contacts.receive(keys, bytes));
        let plan = plan_inbox(
            &mut open,
            &self.cache,
            &self.shown,
            &self.completed,
            true,
            Instant::now(),
        );
        self.partial = plan.partial_envelopes;
        self.take_calls();
        for u in &plan.unreadable {
            tracing::warn!(seq = u.seq, error = %u.error, "a payload could not be read; it stays on the server");
        }
        // Saved before anything is deleted: a crash in between keeps the
        // message twice at worst, never loses it.
        if !self.hold(&plan.new, "it stays on the server") {
            return;
        }
        if let Err(e) = self.dir.add_completed(&plan.completed) {
            tracing::error!(error = %e, "saving the inbox state failed");
            return;
        }
        // The ratchet moves on disk only once the messages are: a crash
        // before this opens them again.
        if let Err(e) = self.contacts.save() {
            tracing::error!(error = %e, "saving the ratchet state failed; nothing is deleted");
            return;
        }
        self.completed.extend(plan.completed.iter().copied());
        self.shown = plan.shown.clone();
        if let Err(e) = self.dir.save_shown(&self.shown) {
            tracing::error!(error = %e, "saving the inbox state failed");
            return;
        }
        // A contact's devices changed: messages kept from a device not
        // known then may open now.
        if self.chain_work() {
            self.retry_pending();
        }
        // Acks and loops are always taken: delete up to the first payload
        // that must stay (unreadable, or a fragment of an incomplete
        // envelope).
        let blocked = self
            .cache
            .iter()
            .map(|s| s.seq)
            .find(|&seq| plan.delete_upto.is_none_or(|u| seq > u));
        let upto = self
            .cache
            .iter()
            .map(|m| m.seq)
            .chain(self.taken.iter().copied())
            .filter(|&seq| blocked.is_none_or(|b| seq < b))
            .max();
        if let Some(upto) = upto
            && !self.deleting
        {
            self.deleting = true;
            let (api, keys, events) = (self.api.clone(), self.keys.clone(), self.events.clone());
            tokio::spawn(async move {
                let result = api
                    .delete(keys.mailbox_signing_key(), &keys.mailbox_id(), upto)
                    .await
                    .map_err(Error::from);
                let _ = events.send(Event::Deleted(upto, result)).await;
            });
        }
    }

    /// The report of message `id`, if the daemon knows it.
    fn report(&self, id: &str) -> Option<MessageReport> {
        self.live
            .iter()
            .find(|l| l.out.message_id == id)
            .map(Live::report)
            .or_else(|| {
                self.finished
                    .iter()
                    .rev()
                    .find(|r| r.message_id == id)
                    .cloned()
            })
    }

    /// Answers the `message` requests waiting for a message that is now
    /// final, or whose wait is over.
    fn answer_waiters(&mut self) {
        let now = Instant::now();
        let waiters = std::mem::take(&mut self.waiters);
        for (id, deadline, reply) in waiters {
            match self.report(&id) {
                Some(r) if r.state.is_final() || now >= deadline => {
                    let _ = reply.send(Response::Message(r));
                }
                Some(_) => self.waiters.push((id, deadline, reply)),
                None => {
                    let _ = reply.send(Response::Error {
                        error: format!("no message {id} in the outbox"),
                    });
                }
            }
        }
    }

    /// Moves the call signals the contact book opened into the call queue
    /// (refusing stale offers and replays), and answers the
    /// `call_signals` requests waiting for them or whose wait is over.
    fn take_calls(&mut self) {
        let now = now_ms();
        for call in self.contacts.take_calls() {
            let (contact, kind) = (call.contact.clone(), call.signal.kind());
            match self.calls.accept(call, now) {
                Ok(()) => self.counters.call_signals += 1,
                Err(e) => tracing::warn!(contact, %kind, error = %e, "a call signal is refused"),
            }
        }
        self.counters.call_signals_refused = self.calls.refused();
        self.counters.call_signals_dropped = self.calls.dropped();
        if self.call_waiters.is_empty() {
            return;
        }
        let now = Instant::now();
        for (call_id, deadline, reply) in std::mem::take(&mut self.call_waiters) {
            if reply.is_closed() {
                // The asker went away: what it waited for stays queued.
                continue;
            }
            if self.calls.has(call_id) || now >= deadline {
                let taken = self.calls.take(call_id);
                if let Err(Response::CallSignals { signals }) = reply.send(call_response(&taken))
                    && !signals.is_empty()
                {
                    self.calls.put_back(taken);
                }
            } else {
                self.call_waiters.push((call_id, deadline, reply));
            }
        }
    }

    /// Takes the waiting call signals (of one call, if given).
    fn call_signals(&mut self, call_id: Option<CallId>) -> Response {
        call_response(&self.calls.take(call_id))
    }

    fn handle(&mut self, request: Request, reply: oneshot::Sender<Response>) {
        if let Request::CallSignals { wait_ms, call_id } = &request
            && *wait_ms > 0
            && self.call_waiters.len() < MAX_WAITERS
        {
            let call_id = match call_id.as_deref().map(parse_call_id).transpose() {
                Ok(id) => id,
                Err(e) => {
                    let _ = reply.send(Response::Error {
                        error: e.to_string(),
                    });
                    return;
                }
            };
            if !self.calls.has(call_id) {
                let wait = Duration::from_millis((*wait_ms).min(super::api::MAX_WAIT_MS));
                self.call_waiters
                    .push((call_id, Instant::now() + wait, reply));
                return;
            }
        }
        if let Request::Message { id, wait_ms } = &request
            && *wait_ms > 0
            && self.report(id).is_some_and(|r| !r.state.is_final())
            && self.waiters.len() < MAX_WAITERS
        {
            let wait = Duration::from_millis((*wait_ms).min(super::api::MAX_WAIT_MS));
            self.waiters
                .push((id.clone(), Instant::now() + wait, reply));
            return;
        }
        let _ = reply.send(self.answer(request));
    }

    fn answer(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Status {} => Ok(Response::Status(Box::new(self.status()))),
            Request::Send {
                to,
                text,
                file,
                give_up_secs,
                route,
            } => self.queue_message(&to, text, file, give_up_secs, route),
            Request::Message { id, .. } => self
                .report(&id)
                .map(Response::Message)
                .ok_or_else(|| Error::Daemon(format!("no message {id} in the outbox"))),
            Request::Outbox {} => Ok(Response::Outbox {
                messages: self.live.iter().map(Live::report).collect(),
            }),
            Request::Inbox {} => self.inbox_page(),
            Request::InboxDone { ids } => self.inbox_done(&ids),
            Request::Shutdown {} => Ok(Response::Done),
            Request::Config {} => Ok(Response::Config {
                config: Box::new(self.config.clone()),
            }),
            Request::Contact { request } => self.contact(request),
            Request::CallSend {
                to,
                device,
                except,
                signal,
            } => self.queue_call(&to, (device.as_deref(), except.as_deref()), &signal),
            Request::CallSignals { call_id, .. } => call_id
                .as_deref()
                .map(parse_call_id)
                .transpose()
                .map(|id| self.call_signals(id)),
            Request::CallRoute { rendezvous } => self.call_route(rendezvous.as_deref()),
        };
        result.unwrap_or_else(|e| Response::Error {
            error: e.to_string(),
        })
    }

    /// A call circuit's relays under the configured policy.
    fn call_route(&self, rendezvous: Option<&str>) -> Result<Response> {
        let rendezvous = rendezvous
            .map(|h| {
                NodeId::from_hex(h).ok_or_else(|| {
                    Error::Daemon(format!("rendezvous {h:?} is not a node id (64 hex digits)"))
                })
            })
            .transpose()?;
        let nodes = crate::choose_circuit_nodes(
            &self.consensus,
            &self.config.route,
            rendezvous.as_ref(),
            &mut rand::rng(),
        )?;
        let hops = nodes
            .iter()
            .map(|d| super::api::WireCircuitHop {
                node: d.node_id().to_hex(),
                addr: d.circuit_addr.clone().unwrap_or_default(),
                pin: hex::encode(d.tls_pin),
                sphinx_key: hex::encode(d.sphinx_key),
                jurisdiction: d.jurisdiction.clone(),
            })
            .collect();
        Ok(Response::CallRoute {
            hops,
            identity: hex::encode(self.keys.identity_public()),
            device: hex::encode(self.keys.device_public()),
            source_addr: self.config.source_addr.clone(),
        })
    }

    fn queue_message(
        &mut self,
        to: &str,
        text: Option<String>,
        file: Option<super::api::WireFile>,
        give_up_secs: u64,
        route: Option<RoutePolicy>,
    ) -> Result<Response> {
        let contact = to;
        let addresses = self.contacts.addresses_of(contact)?;
        let content = match (text, file) {
            (Some(text), None) => Content::Text(text),
            (None, Some(f)) => {
                use data_encoding::BASE64;
                let bytes = BASE64
                    .decode(f.base64.as_bytes())
                    .map_err(|_| Error::Daemon("the file is not valid base64".into()))?;
                Content::File {
                    name: f.name,
                    bytes,
                }
            }
            _ => return Err(Error::Daemon("give either a text or a file".into())),
        };
        content.check()?;
        if give_up_secs == 0 {
            return Err(Error::Daemon("give_up_secs must be at least 1".into()));
        }
        self.check_sendable(&addresses, route.as_ref())?;
        let sent_at_ms = now_ms();
        let copies = self.contacts.seal_message(
            &self.keys,
            contact,
            &content,
            sent_at_ms,
            &mut rand::rng(),
        )?;
        let mut reports = Vec::with_capacity(copies.len());
        for sealed in &copies {
            reports.push(self.queue_copy(
                sealed,
                contact,
                Duration::from_secs(give_up_secs),
                route.clone(),
            )?);
        }
        // Copies for this identity's other devices: queued, not reported
        // with the message (a failure is logged, the message stands).
        match self
            .contacts
            .seal_copies(&self.keys, contact, &content, sent_at_ms, &mut rand::rng())
        {
            Ok(own) => {
                let label = format!("your devices (copy of a message to {contact})");
                for sealed in &own {
                    if let Err(e) = self.queue_copy(
                        sealed,
                        &label,
                        Duration::from_secs(give_up_secs),
                        route.clone(),
                    ) {
                        tracing::warn!(error = %e, "a copy for another device of yours could not be queued");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "copies for your other devices could not be sealed");
            }
        }
        self.refill();
        Ok(Response::Sent { copies: reports })
    }

    /// Refuses now rather than retrying until the give-up: a route policy
    /// that is invalid, an unknown mailbox server, a policy this consensus
    /// cannot meet, or an outbox without room for one copy per address.
    fn check_sendable(&self, addresses: &[Address], route: Option<&RoutePolicy>) -> Result<()> {
        if let Some(p) = route {
            p.validate("route policy: ")?;
        }
        let policy = route.unwrap_or(&self.config.route);
        let (mean, rng) = (self.params.mean_hop_delay, &mut rand::rng());
        for to in addresses {
            mailbox_descriptor(&self.consensus, &to.mailbox_server)?;
            choose_policy_route(&self.consensus, policy, &to.mailbox_server, mean, rng)?;
        }
        choose_policy_route(&self.consensus, policy, &self.own_server, mean, rng)?;
        if self.live.len() + addresses.len() > crate::datadir::MAX_OUTBOX_MESSAGES {
            return Err(Error::Daemon(format!(
                "the outbox holds {} messages already; wait for some to be stored",
                self.live.len()
            )));
        }
        Ok(())
    }

    /// Seals a call signal to contact `to` (device `device`, hex, or every
    /// current device) and queues each copy exactly as a message is
    /// queued, with the default give-up and the configured route policy.
    fn queue_call(
        &mut self,
        to: &str,
        (device, except): (Option<&str>, Option<&str>),
        signal: &WireCallSignal,
    ) -> Result<Response> {
        let signal = CallSignal::try_from(signal)?;
        let key = |d: &str| {
            let mut key = [0u8; 32];
            hex::decode_to_slice(d, &mut key)
                .map(|()| key)
                .map_err(|_| {
                    Error::Daemon(format!("device {d:?} is not a device key (64 hex digits)"))
                })
        };
        let device = device.map(key).transpose()?;
        let except = except.map(key).transpose()?;
        if device.is_some() && except.is_some() {
            return Err(Error::Daemon(
                "give a device or a device to leave out, not both".into(),
            ));
        }
        if device.is_none() && matches!(signal, CallSignal::Answer(_)) {
            return Err(Error::Daemon(
                "an answer goes to the one device that sent the offer: give its device key".into(),
            ));
        }
        let addresses = self.contacts.addresses_of(to)?;
        self.check_sendable(&addresses, None)?;
        let copies =
            self.contacts
                .seal_call(&self.keys, to, device, &signal, now_ms(), &mut rand::rng())?;
        let mut reports = Vec::with_capacity(copies.len());
        // Sealed for the device left out and not sent: its ratchet skips
        // that message key, as for any message lost on the way.
        for sealed in copies.iter().filter(|c| Some(c.device) != except) {
            reports.push(self.queue_copy(sealed, to, crate::outbox::DEFAULT_GIVE_UP, None)?);
        }
        tracing::debug!(
            kind = %signal.kind(),
            copies = reports.len(),
            "call signal queued"
        );
        self.refill();
        Ok(Response::Sent { copies: reports })
    }

    /// Cuts one sealed copy into fragments, saves it in the outbox (on disk
    /// before the answer: a crash after "queued" loses nothing) and starts
    /// driving it.
    fn queue_copy(
        &mut self,
        sealed: &crate::SealedMessage,
        contact: &str,
        give_up: Duration,
        route: Option<RoutePolicy>,
    ) -> Result<MessageReport> {
        let fragments: Vec<Vec<u8>> = bastet_sphinx::fragment(&sealed.payload, &mut rand::rng())?
            .iter()
            .map(Fragment::to_bytes)
            .collect();
        let message_id = sealed.message_id.to_hex();
        let mut out = Outgoing::new(
            message_id.clone(),
            sealed.to.to_string(),
            fragments.len(),
            sealed.sent_at_ms,
            give_up,
        );
        out.route = route;
        out.contact = Some(contact.to_string());
        out.device = (sealed.device != [0; 32]).then(|| crate::identity::short_id(&sealed.device));
        self.dir.save_fragments(&message_id, &fragments)?;
        self.dir.save_outgoing(&out)?;
        let live = Live::new(out, fragments, sealed.to);
        let report = live.report();
        self.live.push(live);
        Ok(report)
    }

    /// Seals and queues the chain traffic the contact book asks for (our
    /// links after a device change or for a contact who asked, requests
    /// for a contact's links), and holds the messages it released.
    pub(crate) fn chain_work(&mut self) -> bool {
        let (released, files) = self.contacts.take_released();
        let any_released = !released.is_empty();
        if any_released {
            let messages: Vec<crate::InboxMessage> = released
                .into_iter()
                .map(|message| crate::InboxMessage {
                    seq: 0,
                    received_at_ms: now_ms(),
                    fragments: 0,
                    message,
                })
                .collect();
            if self.hold(&messages, "it stays held") {
                if let Err(e) = self.contacts.save() {
                    tracing::error!(error = %e, "saving the contact book failed");
                } else {
                    for f in &files {
                        if let Err(e) = self.contacts.drop_held(f) {
                            tracing::error!(error = %e, "forgetting a held message failed");
                        }
                    }
                }
            }
        }
        if let Some((identity, bundle)) = self.contacts.take_join() {
            self.finish_join(identity, &bundle);
        }
        let mut sealed = self
            .contacts
            .seal_actions(&self.keys, now_ms(), &mut rand::rng());
        sealed.extend(
            self.contacts
                .take_pairing_outgoing()
                .into_iter()
                .map(|s| ("pairing".to_string(), s)),
        );
        let queued = !sealed.is_empty();
        for (contact, copy) in sealed {
            if self.live.len() >= crate::datadir::MAX_OUTBOX_MESSAGES {
                tracing::warn!(
                    contact,
                    "the outbox is full: chain traffic for a contact is dropped"
                );
                continue;
            }
            if let Err(e) = self.queue_copy(&copy, &contact, crate::outbox::DEFAULT_GIVE_UP, None) {
                tracing::error!(contact, error = %e, "queuing chain traffic failed");
            }
        }
        if queued {
            self.refill();
        }
        any_released
    }

    /// This device was accepted into `identity`: takes its chain and
    /// contacts, and becomes one of its devices (the old identity key is
    /// deleted).
    fn finish_join(&mut self, identity: [u8; 32], bundle: &crate::DeviceBundle) {
        if let Err(e) = self.contacts.join(&self.keys, &identity, bundle, now_ms()) {
            tracing::error!(error = %e, "joining the identity failed; the admin device's answer is dropped (ask for a new pairing code)");
            if let Err(e) = self.contacts.drop_join() {
                tracing::error!(error = %e, "saving the contact book failed");
            }
            return;
        }
        match self.dir.join_identity(&self.keys, identity) {
            Ok(keys) => {
                self.keys = Arc::new(keys);
                tracing::info!(identity = %hex::encode(identity), "this device joined an identity");
            }
            Err(e) => tracing::error!(error = %e, "joining the identity failed"),
        }
    }

    fn contact(&mut self, request: crate::ContactRequest) -> Result<Response> {
        let import = matches!(request, crate::ContactRequest::Import { .. });
        let response = self.contacts.handle(&self.keys, request, now_ms())?;
        if import {
            self.retry_pending();
        }
        if self.chain_work() {
            self.retry_pending();
        }
        Ok(Response::Contact { contact: response })
    }

    /// Saves `messages` in the local inbox for `bastet inbox`; false (and
    /// logged, with `otherwise` saying where the message stays) if one
    /// could not be saved.
    fn hold(&mut self, messages: &[crate::InboxMessage], otherwise: &str) -> bool {
        for m in messages {
            let wire = WireReceived::new(&m.message, m.received_at_ms, m.fragments);
            if let Err(e) = self.dir.save_received(&wire) {
                tracing::error!(error = %e, "saving a received message failed; {otherwise}");
                return false;
            }
            self.held += 1;
            self.counters.received += 1;
        }
        true
    }

    /// Opens the messages kept from devices that were not contacts, now
    /// that one more is, and holds those that open for `bastet inbox`.
    pub(crate) fn retry_pending(&mut self) {
        let (messages, files) = match self.contacts.retry_pending(&self.keys) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading the kept messages failed");
                return;
            }
        };
        if !self.hold(&messages, "it stays kept") {
            return;
        }
        if let Err(e) = self.contacts.save() {
            tracing::error!(error = %e, "saving the ratchet state failed");
            return;
        }
        for f in &files {
            if let Err(e) = self.contacts.drop_pending(f) {
                tracing::error!(error = %e, "forgetting a kept message failed");
            }
        }
    }

    fn inbox_page(&self) -> Result<Response> {
        let held = self.dir.load_received()?;
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for (_, m) in held {
            let len = m.text.len() + m.file.as_ref().map_or(0, |f| f.base64.len());
            if !messages.is_empty() && bytes + len > MAX_INBOX_PAGE_BYTES {
                more = true;
                break;
            }
            bytes += len;
            messages.push(m);
        }
        Ok(Response::Inbox {
            messages,
            more,
            partial: self.partial,
        })
    }

    fn inbox_done(&mut self, ids: &[String]) -> Result<Response> {
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        for (name, m) in self.dir.load_received()? {
            if wanted.contains(m.message_id.as_str()) {
                self.dir.remove_received(&name)?;
                self.held = self.held.saturating_sub(1);
            }
        }
        Ok(Response::Done)
    }

    fn status(&self) -> StatusReport {
        let p = &self.params;
        let poll = self.config.traffic.poll_interval();
        let idle = p.idle_bandwidth(poll, BYTES_PER_POLL);
        let mix_hops = self.config.route.template.len().max(3) as u32;
        let uptime = self.started.elapsed();
        let payload_sent = self.counters.real + self.counters.drop;
        StatusReport {
            pid: std::process::id(),
            uptime_secs: uptime.as_secs(),
            address: self.address.clone(),
            preset: self.config.traffic.preset.clone(),
            payload_rate: p.payload_rate,
            loop_rate: p.loop_rate,
            mean_hop_delay_ms: p.mean_hop_delay.as_millis() as u64,
            max_hop_delay_ms: p.max_hop_delay.as_millis() as u64,
            poll_interval_ms: self.config.traffic.poll_interval_ms,
            packet_len: PACKET_LEN,
            idle_up_bytes_per_sec: idle.up,
            idle_down_bytes_per_sec: idle.down,
            expected_latency_ms: p.expected_latency(1, mix_hops, poll).as_millis() as u64,
            measured_payload_rate: payload_sent as f64 / uptime.as_secs_f64().max(1e-3),
            epoch: self.consensus.epoch,
            queued_packets: self.scheduler.queued(),
            pending_messages: self.live.len(),
            inbox_messages: self.held,
            counters: self.counters.clone(),
            scores: self
                .scores
                .scores(now_ms())
                .into_iter()
                .map(|(node, s)| WireScore {
                    node: node.to_hex(),
                    delivery: s.delivery_rate,
                    weight: s.weight,
                    samples: s.samples(),
                })
                .collect(),
            mailbox_server: self.own_server.to_hex(),
            mailbox_jurisdiction: self
                .consensus
                .node(&self.own_server)
                .map(|d| d.jurisdiction.clone()),
            consensus_signatures: self.consensus.signatures,
            consensus_nodes: self.consensus.nodes.len(),
            consensus_valid_secs: self.consensus.valid_until.saturating_sub(now_ms() / 1000),
            route_template: self.config.route.template.clone(),
            route_avoid: self.config.route.avoid.clone(),
            store_bytes: self.dir.store_usage(),
            anonymity: Some(self.anonymity()),
        }
    }

    /// The anonymity estimate for this preset on the consensus in force.
    /// Rates are the ones this client measured once it has run a minute
    /// (every active client is assumed to send like it), the preset's
    /// before. The consensus does not publish λ_M, so the mixnode default
    /// is assumed (and the report says so).
    fn anonymity(&self) -> AnonymityReport {
        let layers = crate::MIX_LAYERS
            .iter()
            .map(|&l| self.consensus.mixes(l).count())
            .collect();
        let mut load = NetworkLoad::new(layers, self.consensus.mailboxes().count(), &self.params);
        let uptime = self.started.elapsed().as_secs_f64();
        if uptime >= MEASURED_RATE_AFTER.as_secs_f64() {
            load.payload_rate = (self.counters.real + self.counters.drop) as f64 / uptime;
            load.loop_rate = self.counters.loops_sent as f64 / uptime;
        }
        load.report(false)
    }
}

/// The answer to `call_signals`.
fn call_response(calls: &[crate::ReceivedCall]) -> Response {
    Response::CallSignals {
        signals: calls.iter().map(WireReceivedCall::from).collect(),
    }
}

/// A call id from the API (hex).
fn parse_call_id(s: &str) -> Result<CallId> {
    s.parse()
}

/// Uptime after which `status` estimates anonymity from the measured
/// rates rather than the preset's: at `balanced` about 180 packets, a
/// Poisson count within ±8 % (one standard deviation) of the rate.
const MEASURED_RATE_AFTER: Duration = Duration::from_secs(60);

/// A packet built ahead of its tick.
struct Paced {
    at: Instant,
    peer: Peer,
    packet: Packet,
    /// What it is, for the `test_send_log` (only when that is on).
    note: Option<SendNote>,
}

/// Hands `packet` to the pacer, to go to `peer` at `at`.
fn transmit(
    pacer: &mpsc::Sender<Paced>,
    at: Instant,
    (peer, packet): (Peer, Packet),
    note: Option<SendNote>,
) -> std::result::Result<(), SendError> {
    pacer
        .try_send(Paced {
            at,
            peer,
            packet,
            note,
        })
        .map_err(|_| SendError::QueueFull)
}

/// Releases each packet to the link at its tick, in order (the engine
/// hands them over earliest first). A packet whose tick has passed goes at
/// once. Ends when the engine drops its sender and the queue is empty.
async fn pace(
    mut paced: mpsc::Receiver<Paced>,
    outbound: Arc<Outbound>,
    send_log: Option<Arc<SendLog>>,
) {
    while let Some(p) = paced.recv().await {
        tokio::time::sleep_until(p.at.into()).await;
        let logged = send_log
            .as_ref()
            .zip(p.note)
            .map(|(log, note)| (log, note, p.packet.clone()));
        match outbound.send(&p.peer, p.packet) {
            Ok(()) => {
                if let Some((log, note, packet)) = logged {
                    log.record(&packet, &note);
                }
            }
            // Lost like a packet on a failing link: a real fragment is
            // retransmitted after its ack timeout.
            Err(e) => tracing::warn!(error = %e, "a packet could not be queued for its first mix"),
        }
    }
    if let Some(log) = send_log {
        log.flush();
    }
}

pub(crate) async fn fetch_consensus(directory: &DirectoryConfig) -> Result<VerifiedConsensus> {
    Ok(bastet_directory::DirectoryClient::new(directory)?
        .fetch_consensus()
        .await?)
}

/// Every payload after `after`, page by page, up to [`MAX_CACHED`].
async fn list_after(
    api: &MailboxClient,
    keys: &ClientKeys,
    mut after: Option<u64>,
) -> Result<Vec<StoredMessage>> {
    let limit = bastet_mailbox::api::MAX_LIST_LIMIT;
    let mut all = Vec::new();
    loop {
        let (page, next) = api
            .list_page(keys.mailbox_signing_key(), &keys.mailbox_id(), after, limit)
            .await?;
        all.extend(page);
        match next {
            Some(n) if all.len() < MAX_CACHED && after.is_none_or(|a| n > a) => after = Some(n),
            _ => return Ok(all),
        }
    }
}
