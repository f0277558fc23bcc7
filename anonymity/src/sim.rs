//! A discrete-event simulation of a Bastet network in virtual time, driven
//! by Bastet's own sans-IO code.
//!
//! What runs is the production logic, not a model of it:
//!
//! - each client's sending schedule is a `bastet_client::Scheduler` with
//!   the preset's `TrafficParams` (λ_P payload/drop stream, λ_L loops), fed
//!   by a Poisson workload of real messages as the daemon feeds it;
//! - every route, and every per-hop delay in it, comes from
//!   `bastet_client::packets::RouteChoice::route` (the client's route
//!   policy code and `TrafficParams::sample_hop_delay`), ack routes
//!   included; drop cover picks its mailbox server as
//!   `bastet_client::packets::drop_packet` does;
//! - each mixnode's cover loops come from `bastet_mixnode::cover_gap` and
//!   `bastet_mixnode::cover_packet`, in both modes;
//! - mailbox servers ack real fragments and mixnode loops back through
//!   the mixnet, as `bastet_mailbox` does.
//!
//! With [`Crypto::Real`] the packets are real Sphinx packets built by
//! `bastet_client::packets::{fragment_packet, drop_packet, loop_packet}`,
//! each mix is a `bastet_mixnode::Mixer` (unwrap, replay filter, delay
//! queue) and each mailbox server a `bastet_mailbox::FinalHop` answering
//! with `bastet_mailbox::ack_packet`. With [`Crypto::None`] packets are
//! their routes: the same draws from the same RNG streams give the same
//! routes and delays, and a mix forwards a packet after the delay its route
//! names, which is what the real mix reads from the Sphinx header. The
//! only difference is the bytes (a test checks both modes give the same
//! link events).
//!
//! Links have no latency and nodes no processing time: a packet arrives
//! when it is sent, and a mix's only effect on timing is its delay.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bastet_client::packets::{RouteChoice, drop_packet, fragment_packet, loop_packet};
use bastet_client::{Address, ClientKeys, MAX_IN_FLIGHT, Route, RoutePolicy, Scheduler, SendKind};
use bastet_directory::{Descriptor, EpochKey};
use bastet_mailbox::{FinalHop, Opened, ack_packet};
use bastet_mixnode::{Mixer, MixerConfig, Outcome, cover_gap, cover_packet};
use bastet_sphinx::{Hop, NodeId, Packet};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};

use crate::network::Network;
use crate::trace::{GroundTruth, LinkEvent, MessageTruth, Observation, TRACE_VERSION, TraceMeta};
use crate::{Endpoint, Error, Preset, Result, Trace};

/// Whether packets are real Sphinx packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crypto {
    /// Real packets through real `Mixer`s and `FinalHop`s: every public-key
    /// operation a packet costs in production (about 0.1 to 0.2 ms of CPU
    /// per hop), for small runs and as the cross-check.
    Real,
    /// Packets as their routes: the same schedule, routes and delays
    /// without the bytes, for thousands of clients.
    None,
}

impl std::str::FromStr for Crypto {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "real" => Ok(Crypto::Real),
            "none" => Ok(Crypto::None),
            _ => Err(Error::InvalidParameter {
                name: "crypto",
                why: format!("{s:?}: must be real or none"),
            }),
        }
    }
}

impl std::fmt::Display for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Crypto::Real => "real",
            Crypto::None => "none",
        })
    }
}

/// Most clients a simulation takes.
pub const MAX_CLIENTS: u32 = 100_000;
/// Longest virtual time a simulation covers.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Clients, each with its mailbox on server `client % mailboxes`.
    pub clients: u32,
    /// Mix layers (Bastet has 3).
    pub layers: u8,
    /// Mixes per layer.
    pub per_layer: u32,
    /// Mailbox servers.
    pub mailboxes: u32,
    /// Virtual time simulated.
    pub duration: Duration,
    /// Seed of every random draw except key generation.
    pub seed: u64,
    /// Real packets or routes only.
    pub crypto: Crypto,
    /// Client and mixnode traffic settings.
    pub preset: Preset,
    /// Real messages each client queues per minute (Poisson), each to the
    /// one partner it was given at random; a message is one fragment.
    pub messages_per_minute: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            clients: 1000,
            layers: 3,
            per_layer: 3,
            mailboxes: 3,
            duration: Duration::from_secs(300),
            seed: 1,
            crypto: Crypto::None,
            preset: Preset::bastet("balanced", bastet_client::TrafficParams::balanced()),
            messages_per_minute: 1.0,
        }
    }
}

impl SimConfig {
    /// Checks every parameter, naming the one out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, why: String| Err(Error::InvalidParameter { name, why });
        if !(2..=MAX_CLIENTS).contains(&self.clients) {
            return bad(
                "clients",
                format!("{}: must be 2 to {MAX_CLIENTS}", self.clients),
            );
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad(
                "minutes",
                format!("{:?}: must be more than 0 and at most 24 h", self.duration),
            );
        }
        let max_rate = 60.0 * bastet_client::MAX_RATE;
        if !(0.0..=max_rate).contains(&self.messages_per_minute) {
            return bad(
                "messages-per-minute",
                format!("{}: must be 0 to {max_rate}", self.messages_per_minute),
            );
        }
        self.preset.validate()
    }
}

/// Counters of a run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SimStats {
    /// Link events in the trace.
    pub link_events: u64,
    /// Real messages queued by the workload.
    pub messages_queued: u64,
    /// Real messages refused because the sender's queue was full.
    pub messages_refused: u64,
    /// Real packets sent.
    pub real_sent: u64,
    /// Real packets stored at their recipient's mailbox server.
    pub real_delivered: u64,
    /// Client drop cover sent.
    pub drop_sent: u64,
    /// Client loop cover sent.
    pub loop_sent: u64,
    /// Acks sent by mailbox servers (for real fragments and mix loops).
    pub acks_sent: u64,
    /// Mixnode cover loops sent.
    pub mix_cover_sent: u64,
    /// Packets a node refused, or ticks that could not build a packet:
    /// none in a healthy run.
    pub failures: u64,
    /// Mean packets held by a mix, as seen by arriving packets (Little's
    /// law: λ/μ of one mix, the Loopix measure of its pool).
    pub mean_mix_pool: f64,
    /// Most packets one mix held at once.
    pub max_mix_pool: u64,
    /// Wall-clock seconds the run took.
    pub wall_secs: f64,
}

/// A finished run.
#[derive(Clone, Debug)]
pub struct SimOutput {
    /// The trace: what the adversary saw and the ground truth.
    pub trace: Trace,
    /// Counters.
    pub stats: SimStats,
}

/// A packet in flight: whose real message it is, if any, and either its
/// route or its bytes.
struct Flight {
    real: Option<u32>,
    /// The mix whose pool it left (none mode), to count pools.
    held_by: Option<u32>,
    body: Body,
}

enum Body {
    /// The route with each node's delay, the node it is arriving at, and
    /// the route of the ack its final hop sends back.
    Plain {
        path: Vec<(Endpoint, Duration)>,
        pos: usize,
        ack: Option<Vec<(Endpoint, Duration)>>,
    },
    Sphinx(Packet),
}

enum Ev {
    ClientTick(u32),
    Workload(u32),
    Arrive {
        from: Endpoint,
        to: Endpoint,
        flight: Flight,
    },
    MixRelease(u32),
    MixCover(u32),
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: the earliest event on top of the max-heap.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct ClientState {
    scheduler: Scheduler<u32>,
    sched_rng: StdRng,
    packet_rng: StdRng,
    workload_rng: StdRng,
    server: NodeId,
    partner: u32,
    keys: Option<ClientKeys>,
}

struct MixState {
    id: NodeId,
    mixer: Option<Mixer>,
    /// Real mode: tags of the packets the mixer holds, by release instant,
    /// in arrival order (the order the mixer releases equal instants in).
    releases: HashMap<u64, VecDeque<Option<u32>>>,
    held: u64,
    gap_rng: StdRng,
    cover_rng: StdRng,
}

struct MessageRecord {
    sender: u32,
    recipient: u32,
    queued_ns: u64,
    links: Vec<u64>,
    delivered: bool,
}

struct Sim<'a> {
    config: &'a SimConfig,
    network: Network,
    policy: RoutePolicy,
    base: Instant,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    clients: Vec<ClientState>,
    addresses: Vec<Option<Address>>,
    mixes: Vec<MixState>,
    hops: Vec<Option<FinalHop>>,
    fragment: Vec<u8>,
    events: Vec<LinkEvent>,
    messages: Vec<MessageRecord>,
    stats: SimStats,
    pool_samples: u64,
    pool_sum: u64,
}

/// Runs the simulation `config` describes.
pub fn simulate(config: &SimConfig) -> Result<SimOutput> {
    config.validate()?;
    let started = Instant::now();
    let mut sim = Sim::new(config)?;
    sim.run()?;
    let mut out = sim.finish();
    out.stats.wall_secs = started.elapsed().as_secs_f64();
    Ok(out)
}

fn network_error(e: impl std::fmt::Display) -> Error {
    Error::Network(e.to_string())
}

impl<'a> Sim<'a> {
    fn new(config: &'a SimConfig) -> Result<Self> {
        let mut master = StdRng::seed_from_u64(config.seed);
        // Keys come from their own stream so that both modes draw the same
        // schedule, routes and delays from `master`.
        let mut key_rng = StdRng::seed_from_u64(config.seed ^ 0x6b65_7973);
        let real = config.crypto == Crypto::Real;
        let network = Network::new(
            config.layers,
            config.per_layer,
            config.mailboxes,
            &mut master,
        )?;
        let base = Instant::now();
        let params = &config.preset.traffic;
        let mut clients = Vec::with_capacity(config.clients as usize);
        let mut addresses = Vec::with_capacity(config.clients as usize);
        for c in 0..config.clients {
            let mut sched_rng = StdRng::from_rng(&mut master);
            let scheduler = Scheduler::new(params.clone(), MAX_IN_FLIGHT, base, &mut sched_rng)
                .map_err(network_error)?;
            let mut partner = master.random_range(0..config.clients - 1);
            if partner >= c {
                partner += 1;
            }
            let server = network.mailboxes[(c % config.mailboxes) as usize];
            let keys = real.then(|| ClientKeys::generate(&mut key_rng));
            addresses.push(keys.as_ref().map(|k| Address {
                identity_key: k.identity_public(),
                encryption_key: k.encryption_public(),
                mailbox_server: server,
                mailbox: k.mailbox_id(),
            }));
            clients.push(ClientState {
                scheduler,
                sched_rng,
                packet_rng: StdRng::from_rng(&mut master),
                workload_rng: StdRng::from_rng(&mut master),
                server,
                partner,
                keys,
            });
        }
        let mut mixes = Vec::with_capacity(network.mixes.len());
        for (i, id) in network.mixes.iter().enumerate() {
            let mixer = if real {
                let keys = vec![EpochKey {
                    epoch: 1,
                    secret: network.mix_secrets[i].clone(),
                }];
                let config = MixerConfig {
                    max_delay: bastet_client::MAX_HOP_DELAY,
                    max_delayed_packets: usize::MAX,
                    replay_filter_capacity: 1 << 20,
                };
                Some(Mixer::new(config, keys).map_err(network_error)?)
            } else {
                None
            };
            mixes.push(MixState {
                id: *id,
                mixer,
                releases: HashMap::new(),
                held: 0,
                gap_rng: StdRng::from_rng(&mut master),
                cover_rng: StdRng::from_rng(&mut master),
            });
        }
        let mut hops = Vec::new();
        for secret in &network.mailbox_secrets {
            hops.push(if real {
                let keys = vec![EpochKey {
                    epoch: 1,
                    secret: secret.clone(),
                }];
                Some(FinalHop::new(keys, 1 << 20).map_err(Error::Network)?)
            } else {
                None
            });
        }
        let fragment = if real {
            let body = vec![0x42u8; bastet_sphinx::FRAGMENT_CAPACITY];
            bastet_sphinx::fragment(&body, &mut key_rng)
                .map_err(network_error)?
                .into_iter()
                .next()
                .ok_or_else(|| Error::Network("no fragment".into()))?
                .to_bytes()
        } else {
            Vec::new()
        };
        Ok(Sim {
            config,
            network,
            policy: RoutePolicy::default(),
            base,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            clients,
            addresses,
            mixes,
            hops,
            fragment,
            events: Vec::new(),
            messages: Vec::new(),
            stats: SimStats::default(),
            pool_samples: 0,
            pool_sum: 0,
        })
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn instant(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }

    fn workload_gap(&mut self, c: u32) -> Option<u64> {
        if self.config.messages_per_minute <= 0.0 {
            return None;
        }
        let mean = Duration::from_secs_f64(60.0 / self.config.messages_per_minute);
        let client = &mut self.clients[c as usize];
        let gap = bastet_sphinx::exp_delay(mean, MAX_DURATION, &mut client.workload_rng);
        Some(gap.as_nanos() as u64)
    }

    fn run(&mut self) -> Result<()> {
        for c in 0..self.config.clients {
            if let Some(t) = self.clients[c as usize].scheduler.poll_timeout() {
                let at = since(self.base, t);
                self.schedule(at, Ev::ClientTick(c));
            }
            if let Some(gap) = self.workload_gap(c) {
                self.schedule(gap, Ev::Workload(c));
            }
        }
        for m in 0..self.mixes.len() as u32 {
            self.schedule_cover(m, 0);
        }
        let end = self.config.duration.as_nanos() as u64;
        while let Some(next) = self.queue.pop() {
            if next.at > end {
                break;
            }
            self.now = next.at;
            match next.ev {
                Ev::ClientTick(c) => self.client_tick(c)?,
                Ev::Workload(c) => self.workload(c),
                Ev::Arrive { from, to, flight } => self.arrive(from, to, flight)?,
                Ev::MixRelease(m) => self.mix_release(m)?,
                Ev::MixCover(m) => self.mix_cover(m)?,
            }
        }
        Ok(())
    }

    fn schedule_cover(&mut self, m: u32, from: u64) {
        let rate = self.config.preset.mix_cover_rate;
        if let Some(gap) = cover_gap(rate, &mut self.mixes[m as usize].gap_rng) {
            self.schedule(from + gap.as_nanos() as u64, Ev::MixCover(m));
        }
    }

    fn workload(&mut self, c: u32) {
        let index = self.messages.len() as u32;
        let client = &mut self.clients[c as usize];
        self.stats.messages_queued += 1;
        if client.scheduler.enqueue(index).is_err() {
            self.stats.messages_refused += 1;
        } else {
            self.messages.push(MessageRecord {
                sender: c,
                recipient: client.partner,
                queued_ns: self.now,
                links: Vec::new(),
                delivered: false,
            });
        }
        if let Some(gap) = self.workload_gap(c) {
            self.schedule(self.now + gap, Ev::Workload(c));
        }
    }

    fn plain(&self, hops: &[Hop]) -> Result<Vec<(Endpoint, Duration)>> {
        hops.iter()
            .map(|h| Ok((self.network.endpoint(&h.node)?, h.delay)))
            .collect()
    }

    fn plain_flight(
        &self,
        real: Option<u32>,
        route: &Route,
        ack: Option<&Route>,
    ) -> Result<Flight> {
        Ok(Flight {
            real,
            held_by: None,
            body: Body::Plain {
                path: self.plain(&route.hops)?,
                pos: 0,
                ack: ack.map(|r| self.plain(&r.hops)).transpose()?,
            },
        })
    }

    fn client_tick(&mut self, c: u32) -> Result<()> {
        let now = self.instant(self.now);
        let real = self.config.crypto == Crypto::Real;
        loop {
            let base = self.base;
            let client = &mut self.clients[c as usize];
            let Some(send) = client.scheduler.poll(now, &mut client.sched_rng) else {
                break;
            };
            let at = since(base, send.at);
            // One generator per packet, seeded from the client's packet
            // stream: the route (and the ack's) are its first draws in
            // both modes, whatever the Sphinx code draws after them.
            let mut rng = StdRng::from_rng(&mut client.packet_rng);
            let own = client.server;
            let choice = RouteChoice {
                consensus: &self.network.consensus,
                policy: &self.policy,
                params: &self.config.preset.traffic,
                weight: None,
            };
            let built: Option<(NodeId, Flight)> = match send.kind {
                SendKind::Real(index) => {
                    let partner = self.clients[c as usize].partner;
                    let to_server = self.clients[partner as usize].server;
                    self.stats.real_sent += 1;
                    if real {
                        let (keys, to) = match (
                            &self.clients[c as usize].keys,
                            &self.addresses[partner as usize],
                        ) {
                            (Some(k), Some(a)) => (k, a),
                            _ => return Err(Error::Network("real mode without keys".into())),
                        };
                        let (built, _, _) =
                            fragment_packet(&choice, keys, to, &own, &self.fragment, &mut rng)
                                .map_err(network_error)?;
                        Some((built.peer.node, sphinx(Some(index), built.packet)))
                    } else {
                        let route = choice.route(&to_server, &mut rng).map_err(network_error)?;
                        let back = choice.route(&own, &mut rng).map_err(network_error)?;
                        let flight = self.plain_flight(Some(index), &route, Some(&back))?;
                        Some((route.hops[0].node, flight))
                    }
                }
                SendKind::Drop if !self.config.preset.drop_cover => None,
                SendKind::Drop => {
                    self.stats.drop_sent += 1;
                    if real {
                        let built = drop_packet(&choice, &own, &mut rng).map_err(network_error)?;
                        Some((built.peer.node, sphinx(None, built.packet)))
                    } else {
                        // As `drop_packet` draws it.
                        let servers: Vec<NodeId> = self
                            .network
                            .consensus
                            .mailboxes()
                            .map(Descriptor::node_id)
                            .collect();
                        let pick = servers.choose(&mut rng).copied().unwrap_or(own);
                        let route = choice
                            .route(&pick, &mut rng)
                            .or_else(|_| choice.route(&own, &mut rng))
                            .map_err(network_error)?;
                        Some((route.hops[0].node, self.plain_flight(None, &route, None)?))
                    }
                }
                SendKind::Loop => {
                    self.stats.loop_sent += 1;
                    if real {
                        let keys = self.clients[c as usize]
                            .keys
                            .as_ref()
                            .ok_or_else(|| Error::Network("real mode without keys".into()))?;
                        let (built, _) =
                            loop_packet(&choice, keys, &own, &mut rng).map_err(network_error)?;
                        Some((built.peer.node, sphinx(None, built.packet)))
                    } else {
                        let route = choice.route(&own, &mut rng).map_err(network_error)?;
                        Some((route.hops[0].node, self.plain_flight(None, &route, None)?))
                    }
                }
            };
            if let Some((first, flight)) = built {
                let to = self.network.endpoint(&first)?;
                self.schedule(
                    at,
                    Ev::Arrive {
                        from: Endpoint::Client(c),
                        to,
                        flight,
                    },
                );
            }
        }
        if let Some(t) = self.clients[c as usize].scheduler.poll_timeout() {
            let at = since(self.base, t);
            self.schedule(at, Ev::ClientTick(c));
        }
        Ok(())
    }

    fn record(&mut self, from: Endpoint, to: Endpoint, real: Option<u32>) {
        let id = self.events.len() as u64;
        self.events.push(LinkEvent {
            t_us: self.now / 1000,
            from,
            to,
        });
        if let Some(m) = real.and_then(|i| self.messages.get_mut(i as usize)) {
            m.links.push(id);
        }
    }

    fn arrive(&mut self, from: Endpoint, to: Endpoint, flight: Flight) -> Result<()> {
        self.record(from, to, flight.real);
        if let Some(m) = flight.held_by {
            let mix = &mut self.mixes[m as usize];
            mix.held = mix.held.saturating_sub(1);
        }
        match to {
            Endpoint::Mix(m) => self.at_mix(m, flight),
            Endpoint::Mailbox(s) => self.at_mailbox(s, flight),
            Endpoint::Client(_) => Err(Error::Network("a packet was sent to a client".into())),
        }
    }

    fn sample_pool(&mut self, held: u64) {
        self.pool_samples += 1;
        self.pool_sum += held;
        self.stats.max_mix_pool = self.stats.max_mix_pool.max(held);
    }

    fn at_mix(&mut self, m: u32, flight: Flight) -> Result<()> {
        let here = Endpoint::Mix(m);
        match flight.body {
            Body::Plain { path, pos, ack } => {
                let Some(&(next, _)) = path.get(pos + 1) else {
                    // The end of a mixnode's loop: back home.
                    return Ok(());
                };
                let held = self.mixes[m as usize].held;
                self.sample_pool(held);
                self.mixes[m as usize].held += 1;
                let delay = path.get(pos).map_or(Duration::ZERO, |p| p.1);
                let at = self.now + delay.as_nanos() as u64;
                let flight = Flight {
                    real: flight.real,
                    held_by: Some(m),
                    body: Body::Plain {
                        path,
                        pos: pos + 1,
                        ack,
                    },
                };
                self.schedule(
                    at,
                    Ev::Arrive {
                        from: here,
                        to: next,
                        flight,
                    },
                );
            }
            Body::Sphinx(packet) => {
                let now = self.instant(self.now);
                let base = self.base;
                let mix = &mut self.mixes[m as usize];
                let Some(mixer) = mix.mixer.as_mut() else {
                    return Err(Error::Network("a Sphinx packet in none mode".into()));
                };
                let held = mixer.queued() as u64;
                match mixer.handle(now, packet.as_bytes()) {
                    Outcome::Delayed { release_at } => {
                        let at = since(base, release_at);
                        mix.releases.entry(at).or_default().push_back(flight.real);
                        self.sample_pool(held);
                        self.schedule(at, Ev::MixRelease(m));
                    }
                    // One of this mix's loops, back home.
                    Outcome::Reply { .. } => {}
                    Outcome::Dropped(_) => self.stats.failures += 1,
                }
            }
        }
        Ok(())
    }

    fn mix_release(&mut self, m: u32) -> Result<()> {
        let now = self.instant(self.now);
        let at = self.now;
        loop {
            let mix = &mut self.mixes[m as usize];
            let Some(mixer) = mix.mixer.as_mut() else {
                return Ok(());
            };
            let Some(transmit) = mixer.poll_transmit(now) else {
                return Ok(());
            };
            let real = match mix.releases.get_mut(&at) {
                Some(tags) => {
                    let tag = tags.pop_front().flatten();
                    if tags.is_empty() {
                        mix.releases.remove(&at);
                    }
                    tag
                }
                None => return Err(Error::Network("a mixer released out of turn".into())),
            };
            let to = self.network.endpoint(&transmit.next_hop)?;
            self.schedule(
                at,
                Ev::Arrive {
                    from: Endpoint::Mix(m),
                    to,
                    flight: sphinx(real, transmit.packet),
                },
            );
        }
    }

    fn at_mailbox(&mut self, s: u32, flight: Flight) -> Result<()> {
        let here = Endpoint::Mailbox(s);
        let ack: Option<(NodeId, Body)> = match flight.body {
            Body::Plain { path, pos, ack } => {
                if pos + 1 != path.len() {
                    return Err(Error::Network("a mailbox server mid-route".into()));
                }
                if let Some(i) = flight.real {
                    self.delivered(i, s)?;
                }
                match ack {
                    Some(path) => match path.first() {
                        Some(&(first, _)) => Some((
                            self.node_of(first)?,
                            Body::Plain {
                                path,
                                pos: 0,
                                ack: None,
                            },
                        )),
                        None => None,
                    },
                    None => None,
                }
            }
            Body::Sphinx(packet) => {
                let Some(hop) = self.hops[s as usize].as_mut() else {
                    return Err(Error::Network("a Sphinx packet in none mode".into()));
                };
                match hop.open(packet.as_bytes()) {
                    Ok(opened) => {
                        let ack = match opened {
                            Opened::Message { mailbox, ack, .. } => {
                                if let Some(i) = flight.real {
                                    let recipient = self.messages[i as usize].recipient;
                                    let expected = self.addresses[recipient as usize]
                                        .as_ref()
                                        .map(|a| a.mailbox);
                                    if expected != Some(mailbox) {
                                        return Err(Error::Network(
                                            "a real packet reached the wrong mailbox".into(),
                                        ));
                                    }
                                    self.delivered(i, s)?;
                                }
                                ack
                            }
                            Opened::Cover { ack } => ack,
                            Opened::Reply { .. } => None,
                        };
                        match ack.map(|a| ack_packet(&a, Some(&self.network.consensus))) {
                            Some(Ok((peer, packet))) => Some((peer.node, Body::Sphinx(packet))),
                            Some(Err(_)) => {
                                self.stats.failures += 1;
                                None
                            }
                            None => None,
                        }
                    }
                    Err(_) => {
                        self.stats.failures += 1;
                        None
                    }
                }
            }
        };
        if let Some((node, body)) = ack {
            self.stats.acks_sent += 1;
            let to = self.network.endpoint(&node)?;
            self.schedule(
                self.now,
                Ev::Arrive {
                    from: here,
                    to,
                    flight: Flight {
                        real: None,
                        held_by: None,
                        body,
                    },
                },
            );
        }
        Ok(())
    }

    fn node_of(&self, e: Endpoint) -> Result<NodeId> {
        match e {
            Endpoint::Mix(i) => self.network.mixes.get(i as usize).copied(),
            Endpoint::Mailbox(i) => self.network.mailboxes.get(i as usize).copied(),
            Endpoint::Client(_) => None,
        }
        .ok_or_else(|| Error::Network(format!("{e} is no node")))
    }

    fn delivered(&mut self, i: u32, s: u32) -> Result<()> {
        let record = &mut self.messages[i as usize];
        let expected = self.network.mailboxes[(record.recipient % self.config.mailboxes) as usize];
        if self.network.mailboxes.get(s as usize) != Some(&expected) {
            return Err(Error::Network(
                "a real packet reached the wrong mailbox server".into(),
            ));
        }
        record.delivered = true;
        self.stats.real_delivered += 1;
        Ok(())
    }

    fn mix_cover(&mut self, m: u32) -> Result<()> {
        let real = self.config.crypto == Crypto::Real;
        let mix = &mut self.mixes[m as usize];
        let mut rng = StdRng::from_rng(&mut mix.cover_rng);
        let id = mix.id;
        match cover_packet(
            Some(&self.network.consensus),
            &id,
            self.config.preset.mix_cover_delay,
            &mut rng,
        ) {
            Ok(cover) => {
                self.stats.mix_cover_sent += 1;
                let to = self.network.endpoint(&cover.first_hop.node)?;
                let body = if real {
                    Body::Sphinx(cover.packet)
                } else {
                    Body::Plain {
                        path: self.plain(&cover.hops)?,
                        pos: 0,
                        ack: Some(self.plain(&cover.return_hops)?),
                    }
                };
                self.schedule(
                    self.now,
                    Ev::Arrive {
                        from: Endpoint::Mix(m),
                        to,
                        flight: Flight {
                            real: None,
                            held_by: None,
                            body,
                        },
                    },
                );
            }
            Err(_) => self.stats.failures += 1,
        }
        self.schedule_cover(m, self.now);
        Ok(())
    }

    fn finish(self) -> SimOutput {
        let config = self.config;
        let mut stats = self.stats;
        stats.link_events = self.events.len() as u64;
        stats.mean_mix_pool = if self.pool_samples == 0 {
            0.0
        } else {
            self.pool_sum as f64 / self.pool_samples as f64
        };
        let mut messages: Vec<MessageTruth> = self
            .messages
            .into_iter()
            .filter(|m| m.delivered)
            .map(|m| MessageTruth {
                sender: m.sender,
                recipient: m.recipient,
                queued_us: m.queued_ns / 1000,
                links: m.links,
            })
            .collect();
        messages.sort_by_key(|m| m.arrival());
        let params = &config.preset.traffic;
        let meta = TraceMeta {
            version: TRACE_VERSION,
            clients: config.clients,
            mix_layers: self.network.mix_layers.clone(),
            mailboxes: config.mailboxes,
            client_mailbox: (0..config.clients).map(|c| c % config.mailboxes).collect(),
            mean_hop_delay_us: params.mean_hop_delay.as_micros() as u64,
            max_hop_delay_us: params.max_hop_delay.as_micros() as u64,
            duration_us: config.duration.as_micros() as u64,
            description: format!(
                "bastet-anonymity simulate: preset {}, {} clients, {}x{} mixes, {} mailbox servers, {} messages/min/client, {:?} virtual, seed {}, crypto {}",
                config.preset.name,
                config.clients,
                config.layers,
                config.per_layer,
                config.mailboxes,
                config.messages_per_minute,
                config.duration,
                config.seed,
                config.crypto
            ),
        };
        SimOutput {
            trace: Trace {
                observation: Observation {
                    meta,
                    events: self.events,
                },
                truth: GroundTruth { messages },
            },
            stats,
        }
    }
}

/// Nanoseconds of virtual time at `at`.
fn since(base: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(base).as_nanos() as u64
}

fn sphinx(real: Option<u32>, packet: Packet) -> Flight {
    Flight {
        real,
        held_by: None,
        body: Body::Sphinx(packet),
    }
}
