//! The packet pipeline as a state machine: bytes, keys and `now` in; typed
//! outcomes, packets to send and the next timer out. No sockets, no clock,
//! no tokio, so tests drive it with simulated time.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bastet_directory::{EpochKey, VerifiedConsensus};
use bastet_link::Peer;
use bastet_sphinx::{
    MailboxId, NodeId, Packet, Prepared, Processed, ReplayFilter, ReplayTag, SealedReply,
    SphinxSecretKey,
};

use crate::{Error, Result};

/// Why a packet was dropped. Each is a value of the `reason` label of
/// `bastet_mixnode_packets_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The packet was seen before under the same Sphinx key.
    Replay,
    /// The packet authenticates under one of this node's keys but does not
    /// decode, or names this mixnode as its final hop (a mixnode is one
    /// only for its own cover loops' replies).
    Malformed,
    /// The bytes are not one whole packet (a peer closed mid-frame).
    WrongLength,
    /// The next hop is not in the current consensus.
    UnknownNextHop,
    /// The delay queue or the queue to the next hop is full.
    QueueFull,
    /// Packets arrived faster than this node unwraps them.
    Overload,
    /// The sender asked for a longer delay than `max_delay_ms`.
    DelayTooLong,
    /// This node holds no valid consensus, so it cannot find any next hop.
    NoConsensus,
    /// The header authenticates under none of the Sphinx keys this node
    /// processes with now (current, next, previous in grace): the packet was
    /// built for an erased or unknown epoch's key or for another node, or
    /// was corrupted on the way (a Sphinx header names no key, so the cases
    /// look the same).
    UnknownKey,
    /// Dropped on purpose by the `test_drop_fraction` fault-injection hook.
    InjectedLoss,
}

impl DropReason {
    /// Every reason, for exporting all of them from the start.
    pub const ALL: [DropReason; 10] = [
        DropReason::Replay,
        DropReason::Malformed,
        DropReason::WrongLength,
        DropReason::UnknownNextHop,
        DropReason::QueueFull,
        DropReason::Overload,
        DropReason::DelayTooLong,
        DropReason::NoConsensus,
        DropReason::UnknownKey,
        DropReason::InjectedLoss,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Replay => "replay",
            DropReason::Malformed => "malformed",
            DropReason::WrongLength => "wrong_length",
            DropReason::UnknownNextHop => "unknown_next_hop",
            DropReason::QueueFull => "queue_full",
            DropReason::Overload => "overload",
            DropReason::DelayTooLong => "delay_too_long",
            DropReason::NoConsensus => "no_consensus",
            DropReason::UnknownKey => "unknown_key",
            DropReason::InjectedLoss => "injected_loss",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A packet with this node's layer removed, not yet checked for replay.
pub struct Unwrapped {
    /// The epoch of the key the packet was built for: its replay filter.
    epoch: u64,
    tag: ReplayTag,
    kind: Kind,
}

enum Kind {
    /// To be held and sent on.
    Forward {
        next_hop: NodeId,
        delay: Duration,
        packet: Packet,
    },
    /// A SURB reply this node is the last hop of: one of its own cover
    /// loops coming back, if addressed to its loop id.
    Reply {
        mailbox: MailboxId,
        reply: SealedReply,
    },
}

impl std::fmt::Debug for Unwrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unwrapped")
            .field("next_hop", &self.next_hop())
            .field("delay", &self.delay())
            .finish_non_exhaustive()
    }
}

impl Unwrapped {
    /// Where the packet goes next; `None` for a SURB reply that ends here.
    pub fn next_hop(&self) -> Option<NodeId> {
        match &self.kind {
            Kind::Forward { next_hop, .. } => Some(*next_hop),
            Kind::Reply { .. } => None,
        }
    }

    /// How long the sender asked this node to hold it; `None` for a SURB
    /// reply that ends here.
    pub fn delay(&self) -> Option<Duration> {
        match &self.kind {
            Kind::Forward { delay, .. } => Some(*delay),
            Kind::Reply { .. } => None,
        }
    }

    /// The epoch of the Sphinx key the packet authenticated under.
    pub fn key_epoch(&self) -> u64 {
        self.epoch
    }

    /// The packet to send on, layer removed; `None` for a SURB reply that
    /// ends here.
    pub fn packet(&self) -> Option<&Packet> {
        match &self.kind {
            Kind::Forward { packet, .. } => Some(packet),
            Kind::Reply { .. } => None,
        }
    }
}

/// The CPU-heavy, stateless half of mixing: parse, one Diffie-Hellman per
/// key tried, remove the layer. Cheap to clone; run it on as many threads as
/// there are cores and hand the results to the one [`Mixer`]. Every clone
/// sees the keys the [`Mixer`] it came from was last given.
#[derive(Clone)]
pub struct Unwrapper {
    /// Swapped whole by [`Mixer::set_keys`]; a packet worker clones the inner `Arc`
    /// and lets go of the lock before any Diffie-Hellman.
    keys: Arc<RwLock<Arc<[EpochKey]>>>,
}

impl Unwrapper {
    /// Unwraps packets built for any of `keys`, tried in order.
    pub fn new(keys: Vec<EpochKey>) -> Self {
        Unwrapper {
            keys: Arc::new(RwLock::new(keys.into())),
        }
    }

    fn set_keys(&self, keys: Vec<EpochKey>) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys.into();
    }

    /// Removes this node's layer from `frame`.
    pub fn unwrap(&self, frame: &[u8]) -> std::result::Result<Unwrapped, DropReason> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let first = &keys.first().ok_or(DropReason::UnknownKey)?.secret;
        let (index, prepared) = if keys.len() <= KEYS_ON_STACK {
            // Current, next and the previous in grace: no allocation.
            let mut secrets = [first; KEYS_ON_STACK];
            for (slot, k) in secrets.iter_mut().zip(keys.iter()) {
                *slot = &k.secret;
            }
            Prepared::with_keys(frame, &secrets[..keys.len()])
        } else {
            let secrets: Vec<&SphinxSecretKey> = keys.iter().map(|k| &k.secret).collect();
            Prepared::with_keys(frame, &secrets)
        }
        .map_err(sphinx_reason)?;
        let epoch = keys.get(index).ok_or(DropReason::UnknownKey)?.epoch;
        let tag = prepared.replay_tag();
        let kind = match prepared.process().map_err(sphinx_reason)? {
            Processed::Forward {
                next_hop,
                delay,
                packet,
            } => Kind::Forward {
                next_hop,
                delay,
                packet,
            },
            // A mixnode is the last hop only of its own loops' SURBs.
            Processed::Reply { mailbox, reply } => Kind::Reply { mailbox, reply },
            Processed::Deliver { .. } => return Err(DropReason::Malformed),
        };
        Ok(Unwrapped { epoch, tag, kind })
    }
}

/// Keys tried without allocating: a node holds at most three at once.
const KEYS_ON_STACK: usize = 4;

fn sphinx_reason(e: bastet_sphinx::Error) -> DropReason {
    match e {
        bastet_sphinx::Error::WrongPacketLength { .. } => DropReason::WrongLength,
        bastet_sphinx::Error::UnknownKey => DropReason::UnknownKey,
        _ => DropReason::Malformed,
    }
}

/// Limits of the [`Mixer`].
#[derive(Clone, Debug)]
pub struct MixerConfig {
    /// Packets asking for a longer delay are dropped.
    pub max_delay: Duration,
    /// Most packets held at once; more are dropped.
    pub max_delayed_packets: usize,
    /// Replay tags remembered at least, per Sphinx key (see the crate docs
    /// for the Bloom filter's size and false-positive rate).
    pub replay_filter_capacity: usize,
}

/// What the [`Mixer`] did with a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Held until `release_at`, then returned by [`Mixer::poll_transmit`].
    Delayed {
        /// When it will be released.
        release_at: Instant,
    },
    /// A SURB reply that ends at this node, authenticated and not a
    /// replay: for the cover [`LoopTracker`](crate::LoopTracker), which
    /// takes only this node's own loops. Anything else the caller drops as
    /// [`DropReason::Malformed`] (and reports with [`Mixer::record_drop`]).
    Reply {
        /// The destination the SURB's creator put in it.
        mailbox: MailboxId,
        /// The reply, sealed for the SURB's creator.
        reply: SealedReply,
    },
    /// Dropped, for `reason`.
    Dropped(DropReason),
}

enum Admitted {
    Delayed(Instant),
    Reply {
        mailbox: MailboxId,
        reply: SealedReply,
    },
}

/// A packet whose delay has passed: send it to `next_hop`.
#[derive(Debug)]
pub struct Transmit {
    /// The node to send it to.
    pub next_hop: NodeId,
    /// The packet.
    pub packet: Packet,
}

struct Held {
    release_at: Instant,
    /// Arrival order, so that packets released at the same instant leave in
    /// the order they came.
    seq: u64,
    next_hop: NodeId,
    packet: Packet,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    // Reversed: `BinaryHeap` is a max-heap and the earliest release must be
    // on top.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.release_at, other.seq).cmp(&(self.release_at, self.seq))
    }
}

/// Counts of what the [`Mixer`] did since it was created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MixerStats {
    /// Packets accepted into the delay queue.
    pub delayed: u64,
    /// Packets released by [`Mixer::poll_transmit`].
    pub released: u64,
    /// Replay filter generations turned over (the oldest tags forgotten)
    /// while their key was held: more packets than the filter was sized for.
    pub replay_turnovers: u64,
    dropped: [u64; DropReason::ALL.len()],
}

impl MixerStats {
    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }
}

/// The stateful half of mixing: one replay filter per Sphinx key and the
/// bounded delay queue, in the style of `quinn-proto`: feed it packets with
/// [`Mixer::handle`] (or [`Mixer::handle_unwrapped`]), wake at
/// [`Mixer::poll_timeout`], drain [`Mixer::poll_transmit`], and hand it the
/// keys in force with [`Mixer::set_keys`] whenever they change.
pub struct Mixer {
    config: MixerConfig,
    unwrapper: Unwrapper,
    /// One filter per key held, by epoch; dropped with its key.
    replay: BTreeMap<u64, ReplayFilter>,
    queue: BinaryHeap<Held>,
    next_seq: u64,
    stats: MixerStats,
}

impl Mixer {
    /// A mixer for packets built for any of `keys` (tried in order), with
    /// an empty replay filter for each.
    pub fn new(config: MixerConfig, keys: Vec<EpochKey>) -> Result<Self> {
        let mut mixer = Mixer {
            queue: BinaryHeap::with_capacity(config.max_delayed_packets.min(4096)),
            config,
            unwrapper: Unwrapper::new(Vec::new()),
            replay: BTreeMap::new(),
            next_seq: 0,
            stats: MixerStats::default(),
        };
        mixer.set_keys(keys)?;
        Ok(mixer)
    }

    /// Replaces the keys packets are processed under, in the order to try
    /// them (see `SphinxKeyRing::processing_keys`). A key kept keeps its
    /// replay filter; a new key gets an empty one; the filter of a key no
    /// longer given is dropped with it, so its packets are then dropped as
    /// [`DropReason::UnknownKey`]. Every [`Unwrapper`] of this mixer sees
    /// the new keys from its next packet on.
    pub fn set_keys(&mut self, keys: Vec<EpochKey>) -> Result<()> {
        let mut replay = BTreeMap::new();
        for k in &keys {
            let filter = match self.replay.remove(&k.epoch) {
                Some(kept) => kept,
                None => ReplayFilter::new(self.config.replay_filter_capacity).map_err(|why| {
                    Error::Config {
                        key: "replay_filter_capacity",
                        why: why.to_string(),
                    }
                })?,
            };
            replay.insert(k.epoch, filter);
        }
        self.replay = replay;
        self.unwrapper.set_keys(keys);
        Ok(())
    }

    /// The epochs whose key (and replay filter) this mixer holds.
    pub fn key_epochs(&self) -> Vec<u64> {
        self.replay.keys().copied().collect()
    }

    /// The stateless half, to run on the packet workers.
    pub fn unwrapper(&self) -> Unwrapper {
        self.unwrapper.clone()
    }

    /// Unwraps `frame` and admits it: both halves on the caller's thread.
    pub fn handle(&mut self, now: Instant, frame: &[u8]) -> Outcome {
        let unwrapped = self.unwrapper.unwrap(frame);
        self.handle_unwrapped(now, unwrapped)
    }

    /// Admits what an [`Unwrapper`] made of a packet received at `now`:
    /// drops replays, overlong delays and overflow, queues the rest.
    pub fn handle_unwrapped(
        &mut self,
        now: Instant,
        unwrapped: std::result::Result<Unwrapped, DropReason>,
    ) -> Outcome {
        match self.admit(now, unwrapped) {
            Ok(Admitted::Delayed(release_at)) => {
                self.stats.delayed += 1;
                Outcome::Delayed { release_at }
            }
            Ok(Admitted::Reply { mailbox, reply }) => Outcome::Reply { mailbox, reply },
            Err(reason) => {
                self.record_drop(reason);
                Outcome::Dropped(reason)
            }
        }
    }

    fn admit(
        &mut self,
        now: Instant,
        unwrapped: std::result::Result<Unwrapped, DropReason>,
    ) -> std::result::Result<Admitted, DropReason> {
        let u = unwrapped?;
        // A packet worker may have unwrapped it just before its key was dropped.
        let replay = self
            .replay
            .get_mut(&u.epoch)
            .ok_or(DropReason::UnknownKey)?;
        // Checked only after the layer authenticated, so garbage cannot
        // fill the filter and push real tags out early.
        let turnovers = replay.turnovers();
        let seen = replay.check_and_insert(&u.tag);
        self.stats.replay_turnovers += replay.turnovers() - turnovers;
        if seen {
            return Err(DropReason::Replay);
        }
        let (next_hop, delay, packet) = match u.kind {
            Kind::Forward {
                next_hop,
                delay,
                packet,
            } => (next_hop, delay, packet),
            Kind::Reply { mailbox, reply } => return Ok(Admitted::Reply { mailbox, reply }),
        };
        if delay > self.config.max_delay {
            return Err(DropReason::DelayTooLong);
        }
        if self.queue.len() >= self.config.max_delayed_packets {
            return Err(DropReason::QueueFull);
        }
        let release_at = now + delay;
        self.queue.push(Held {
            release_at,
            seq: self.next_seq,
            next_hop,
            packet,
        });
        self.next_seq += 1;
        Ok(Admitted::Delayed(release_at))
    }

    /// Counts a drop decided after release (no consensus, unknown next hop,
    /// full link queue), so that [`Mixer::stats`] covers a packet's life.
    pub fn record_drop(&mut self, reason: DropReason) {
        self.stats.dropped[reason as usize] += 1;
    }

    /// When the next held packet is due, if any is held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.peek().map(|h| h.release_at)
    }

    /// The next packet due at `now`, earliest first.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.queue.peek()?.release_at > now {
            return None;
        }
        let held = self.queue.pop()?;
        self.stats.released += 1;
        Some(Transmit {
            next_hop: held.next_hop,
            packet: held.packet,
        })
    }

    /// Tags each replay filter generation holds.
    pub fn replay_capacity(&self) -> usize {
        self.config.replay_filter_capacity
    }

    /// Replay tags in the fullest filter's current generation.
    pub fn replay_entries(&self) -> usize {
        self.replay
            .values()
            .map(ReplayFilter::len)
            .max()
            .unwrap_or(0)
    }

    /// Packets held now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// What the mixer did so far.
    pub fn stats(&self) -> &MixerStats {
        &self.stats
    }
}

/// Where to send a released packet: its next hop as listed in `consensus`.
pub fn route(
    consensus: Option<&VerifiedConsensus>,
    next_hop: &NodeId,
) -> std::result::Result<Peer, DropReason> {
    let consensus = consensus.ok_or(DropReason::NoConsensus)?;
    let d = consensus.node(next_hop).ok_or(DropReason::UnknownNextHop)?;
    Ok(Peer {
        node: *next_hop,
        addr: d.addr.clone(),
        pin: d.pin(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastet_directory::{Descriptor, Role, SigningKey, SphinxKeyRing, sphinx_key_path};
    use bastet_sphinx::{Hop, MailboxId, PACKET_LEN, SphinxPublicKey, build};

    const MIX_KEY: [u8; 32] = [11; 32];

    fn config(max_delayed_packets: usize, replay_filter_capacity: usize) -> MixerConfig {
        MixerConfig {
            max_delay: Duration::from_secs(5),
            max_delayed_packets,
            replay_filter_capacity,
        }
    }

    fn mixer_with_key(max_delayed_packets: usize, key: [u8; 32]) -> Mixer {
        let keys = vec![EpochKey {
            epoch: 0,
            secret: SphinxSecretKey::from(key),
        }];
        Mixer::new(config(max_delayed_packets, 1000), keys).unwrap()
    }

    fn mixer(max_delayed_packets: usize) -> Mixer {
        mixer_with_key(max_delayed_packets, MIX_KEY)
    }

    fn node(i: u8) -> NodeId {
        NodeId::from_identity_key(&[i; 32])
    }

    /// A packet for the mix (holding it `delay`) and then node `next`.
    fn packet(delay_ms: u64, next: u8) -> Vec<u8> {
        packet_for(
            SphinxPublicKey::from(&SphinxSecretKey::from(MIX_KEY)),
            delay_ms,
            next,
        )
    }

    /// A packet for the mix's Sphinx key `key`, then node `next`.
    fn packet_for(key: SphinxPublicKey, delay_ms: u64, next: u8) -> Vec<u8> {
        let mix = Hop {
            node: node(1),
            sphinx_key: key,
            delay: Duration::from_millis(delay_ms),
        };
        let after = Hop {
            node: node(next),
            sphinx_key: SphinxPublicKey::from(&SphinxSecretKey::from([next; 32])),
            delay: Duration::ZERO,
        };
        build(&[mix, after], &MailboxId([5; 32]), b"payload")
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn delays_are_honoured_and_packets_leave_in_release_order() {
        let mut m = mixer(10);
        let t0 = Instant::now();
        for (delay, next) in [(300, 3), (100, 1), (200, 2), (100, 4)] {
            let outcome = m.handle(t0, &packet(delay, next));
            assert_eq!(
                outcome,
                Outcome::Delayed {
                    release_at: t0 + Duration::from_millis(delay)
                }
            );
        }
        assert_eq!(m.queued(), 4);
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_millis(100)));
        assert!(m.poll_transmit(t0 + Duration::from_millis(99)).is_none());

        let mut order = Vec::new();
        for step in [100, 199, 200, 299, 300, 1000] {
            let now = t0 + Duration::from_millis(step);
            while let Some(t) = m.poll_transmit(now) {
                assert_eq!(t.packet.as_bytes().len(), PACKET_LEN);
                order.push((step, t.next_hop));
            }
        }
        // Equal release times keep arrival order (node 1 before node 4).
        assert_eq!(
            order,
            vec![
                (100, node(1)),
                (100, node(4)),
                (200, node(2)),
                (300, node(3))
            ]
        );
        assert_eq!(m.poll_timeout(), None);
        assert_eq!((m.stats().delayed, m.stats().released), (4, 4));
    }

    #[test]
    fn a_replayed_packet_is_dropped_and_counted() {
        let mut m = mixer(10);
        let t0 = Instant::now();
        let p = packet(10, 2);
        assert!(matches!(m.handle(t0, &p), Outcome::Delayed { .. }));
        // Still a replay after the first copy left the queue.
        assert!(m.poll_transmit(t0 + Duration::from_secs(1)).is_some());
        for _ in 0..2 {
            assert_eq!(
                m.handle(t0 + Duration::from_secs(2), &p),
                Outcome::Dropped(DropReason::Replay)
            );
        }
        assert_eq!(m.stats().dropped(DropReason::Replay), 2);
        assert_eq!(m.queued(), 0);
        // A different packet on the same route is not a replay.
        assert!(matches!(
            m.handle(t0, &packet(10, 2)),
            Outcome::Delayed { .. }
        ));
    }

    #[test]
    fn malformed_and_wrong_length_frames_are_dropped_and_counted() {
        let mut m = mixer(10);
        let t0 = Instant::now();
        let garbage = vec![0x5a; PACKET_LEN];
        let short = &packet(10, 2)[..PACKET_LEN - 1];
        // A flipped bit in the header fails its MAC. (The payload is not
        // authenticated before the last hop: that is how Sphinx works.)
        let mut tampered = packet(10, 2);
        tampered[100] ^= 1;
        let final_hop = build(
            &[Hop {
                node: node(1),
                sphinx_key: SphinxPublicKey::from(&SphinxSecretKey::from(MIX_KEY)),
                delay: Duration::ZERO,
            }],
            &MailboxId([5; 32]),
            b"to a mixnode as if it were a mailbox",
        )
        .unwrap();
        let other_key = mixer_with_key(10, [12; 32]).handle(t0, &packet(10, 2));

        // Bytes that authenticate under no key look like a packet for a key
        // this node does not hold.
        assert_eq!(
            m.handle(t0, &garbage),
            Outcome::Dropped(DropReason::UnknownKey)
        );
        assert_eq!(
            m.handle(t0, short),
            Outcome::Dropped(DropReason::WrongLength)
        );
        assert_eq!(m.handle(t0, &[]), Outcome::Dropped(DropReason::WrongLength));
        assert_eq!(
            m.handle(t0, &tampered),
            Outcome::Dropped(DropReason::UnknownKey)
        );
        assert_eq!(
            m.handle(t0, final_hop.as_bytes()),
            Outcome::Dropped(DropReason::Malformed)
        );
        assert_eq!(other_key, Outcome::Dropped(DropReason::UnknownKey));
        assert_eq!(m.stats().dropped(DropReason::Malformed), 1);
        assert_eq!(m.stats().dropped(DropReason::UnknownKey), 2);
        assert_eq!(m.stats().dropped(DropReason::WrongLength), 2);
        assert_eq!(m.queued(), 0);
    }

    #[test]
    fn a_surb_reply_ending_here_is_handed_out_once_and_its_replay_dropped() {
        let mut m = mixer(10);
        let t0 = Instant::now();
        let me = Hop {
            node: node(1),
            sphinx_key: SphinxPublicKey::from(&SphinxSecretKey::from(MIX_KEY)),
            delay: Duration::ZERO,
        };
        let to = MailboxId([6; 32]);
        let (surb, keys) = bastet_sphinx::Surb::build(&[me], &to).unwrap();
        let (packet, first) = surb.use_surb(b"ack").unwrap();
        assert_eq!(first, node(1));
        let Outcome::Reply { mailbox, reply } = m.handle(t0, packet.as_bytes()) else {
            panic!("not handed out as a reply");
        };
        assert_eq!(mailbox, to);
        assert_eq!(keys.open(&reply).unwrap(), b"ack");
        assert_eq!(
            m.handle(t0, packet.as_bytes()),
            Outcome::Dropped(DropReason::Replay)
        );
        assert_eq!(m.queued(), 0);
        assert_eq!(m.stats().delayed, 0);
    }

    #[test]
    fn a_delay_over_the_limit_is_dropped() {
        let mut m = mixer(10);
        let t0 = Instant::now();
        assert_eq!(
            m.handle(t0, &packet(5001, 2)),
            Outcome::Dropped(DropReason::DelayTooLong)
        );
        assert!(matches!(
            m.handle(t0, &packet(5000, 2)),
            Outcome::Delayed { .. }
        ));
        assert_eq!(m.stats().dropped(DropReason::DelayTooLong), 1);
    }

    #[test]
    fn the_delay_queue_bound_is_enforced_and_frees_up_on_release() {
        let mut m = mixer(2);
        let t0 = Instant::now();
        assert!(matches!(
            m.handle(t0, &packet(10, 2)),
            Outcome::Delayed { .. }
        ));
        assert!(matches!(
            m.handle(t0, &packet(20, 2)),
            Outcome::Delayed { .. }
        ));
        assert_eq!(
            m.handle(t0, &packet(1, 2)),
            Outcome::Dropped(DropReason::QueueFull)
        );
        assert_eq!(m.queued(), 2);
        assert!(m.poll_transmit(t0 + Duration::from_millis(10)).is_some());
        assert!(matches!(
            m.handle(t0, &packet(1, 2)),
            Outcome::Delayed { .. }
        ));
        assert_eq!(m.stats().dropped(DropReason::QueueFull), 1);
    }

    #[test]
    fn zero_delay_is_released_at_once() {
        let mut m = mixer(2);
        let t0 = Instant::now();
        assert_eq!(
            m.handle(t0, &packet(0, 2)),
            Outcome::Delayed { release_at: t0 }
        );
        assert_eq!(m.poll_transmit(t0).map(|t| t.next_hop), Some(node(2)));
    }

    #[test]
    fn routes_come_from_the_consensus() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let d = Descriptor {
            identity_key: *key.verifying_key().as_bytes(),
            epoch: 1,
            sphinx_key: [1; 32],
            tls_pin: [2; 32],
            addr: "127.0.0.1:4000".into(),
            api_addr: None,
            circuit_addr: None,
            role: Role::Mix,
            jurisdiction: "DE".into(),
            operator: "Org".into(),
        };
        let id = d.node_id();
        let consensus = VerifiedConsensus::assume_verified(1, 0, u64::MAX, vec![d], 1);
        assert_eq!(route(None, &id), Err(DropReason::NoConsensus));
        assert_eq!(
            route(Some(&consensus), &node(9)),
            Err(DropReason::UnknownNextHop)
        );
        let peer = route(Some(&consensus), &id).unwrap();
        assert_eq!((peer.node, peer.addr.as_str()), (id, "127.0.0.1:4000"));
        assert_eq!(peer.pin.0, [2; 32]);
    }

    #[test]
    fn drop_reason_labels_are_the_documented_ones() {
        let labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "replay",
                "malformed",
                "wrong_length",
                "unknown_next_hop",
                "queue_full",
                "overload",
                "delay_too_long",
                "no_consensus",
                "unknown_key",
                "injected_loss"
            ]
        );
    }

    const EPOCH: u64 = 60;
    const GRACE: u64 = 15;

    /// Unix time `offset` seconds into `epoch`.
    fn at(epoch: u64, offset: u64) -> u64 {
        epoch * EPOCH + offset
    }

    /// Rotates `ring` at unix time `now` and hands `m` the keys in force,
    /// as the node's rotation task does.
    fn rotate(ring: &mut SphinxKeyRing, m: &mut Mixer, now: u64) {
        ring.rotate(now).unwrap();
        m.set_keys(ring.processing_keys(now)).unwrap();
    }

    #[test]
    fn the_previous_key_works_through_grace_then_its_packets_are_unknown_key() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, GRACE).unwrap();
        ring.rotate(at(10, 30)).unwrap();
        let mut m = Mixer::new(config(10, 1000), ring.processing_keys(at(10, 30))).unwrap();
        assert_eq!(m.key_epochs(), [10, 11]);
        let t0 = Instant::now();
        let (old, old_again) = (
            packet_for(ring.public(10).unwrap(), 0, 2),
            packet_for(ring.public(10).unwrap(), 0, 2),
        );
        // A client that already holds the next epoch's consensus.
        let early = packet_for(ring.public(11).unwrap(), 0, 2);
        assert!(matches!(m.handle(t0, &early), Outcome::Delayed { .. }));

        // Epoch 11 begins: 10 is the previous key, still in grace.
        rotate(&mut ring, &mut m, at(11, 0));
        assert_eq!(m.key_epochs(), [10, 11, 12]);
        assert!(matches!(m.handle(t0, &old), Outcome::Delayed { .. }));
        rotate(&mut ring, &mut m, at(11, GRACE - 1));
        // Its replay filter survived the epoch change.
        assert_eq!(m.handle(t0, &old), Outcome::Dropped(DropReason::Replay));
        assert_eq!(m.handle(t0, &early), Outcome::Dropped(DropReason::Replay));

        // Grace over: the key and its filter are gone, from memory and disk.
        rotate(&mut ring, &mut m, at(11, GRACE));
        assert_eq!(m.key_epochs(), [11, 12]);
        assert!(!sphinx_key_path(tmp.path(), 10).exists());
        assert_eq!(
            m.handle(t0, &old_again),
            Outcome::Dropped(DropReason::UnknownKey)
        );
        // Not a replay any more: nothing remembers it, nothing can open it.
        assert_eq!(m.handle(t0, &old), Outcome::Dropped(DropReason::UnknownKey));
        assert_eq!(m.stats().dropped(DropReason::UnknownKey), 2);
        assert_eq!(m.stats().dropped(DropReason::Replay), 2);
        assert_eq!(m.stats().delayed, 2);
    }

    #[test]
    fn a_packet_unwrapped_just_before_its_key_was_dropped_is_unknown_key() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, GRACE).unwrap();
        ring.rotate(at(11, 1)).unwrap();
        ring.rotate(at(12, 1)).unwrap();
        let mut m = Mixer::new(config(10, 1000), ring.processing_keys(at(12, 1))).unwrap();
        let unwrapper = m.unwrapper();
        let p = packet_for(ring.public(11).unwrap(), 0, 2);
        // A worker unwraps it under the previous key...
        let unwrapped = unwrapper.unwrap(&p);
        assert_eq!(unwrapped.as_ref().map(Unwrapped::key_epoch).ok(), Some(11));
        // ...the grace period ends before the mixer admits it...
        rotate(&mut ring, &mut m, at(12, GRACE));
        let t0 = Instant::now();
        assert_eq!(
            m.handle_unwrapped(t0, unwrapped),
            Outcome::Dropped(DropReason::UnknownKey)
        );
        // ...and the worker's clone sees the change too.
        assert_eq!(unwrapper.unwrap(&p).err(), Some(DropReason::UnknownKey));
    }

    #[test]
    fn replay_filters_are_per_key() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, GRACE).unwrap();
        ring.rotate(at(20, 59)).unwrap();
        // Filters remembering as few as 16 tags (at most 32).
        let mut m = Mixer::new(config(100, 16), ring.processing_keys(at(20, 59))).unwrap();
        rotate(&mut ring, &mut m, at(21, 0));
        let t0 = Instant::now();
        let previous = packet_for(ring.public(20).unwrap(), 0, 2);
        assert!(matches!(m.handle(t0, &previous), Outcome::Delayed { .. }));
        // Many packets under the current key: enough to push the previous
        // key's packet out of a filter they shared.
        // (A Bloom filter this small may call a fresh packet a replay now
        // and then; what counts is what it remembers.)
        let current = ring.public(21).unwrap();
        for _ in 0..48 {
            let _ = m.handle(t0, &packet_for(current, 0, 2));
        }
        assert_eq!(
            m.handle(t0, &previous),
            Outcome::Dropped(DropReason::Replay)
        );
        // And the same packet replayed under the same key is dropped.
        let p = packet_for(current, 0, 2);
        assert!(matches!(m.handle(t0, &p), Outcome::Delayed { .. }));
        assert_eq!(m.handle(t0, &p), Outcome::Dropped(DropReason::Replay));
    }
}
