//! The packet pipeline as a state machine: bytes, keys and `now` in; typed
//! outcomes, packets to send and the next timer out. No sockets, no clock,
//! no tokio, so tests drive it with simulated time.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bastet_directory::VerifiedConsensus;
use bastet_link::Peer;
use bastet_sphinx::{
    NodeId, Packet, Prepared, Processed, ReplayFilter, ReplayTag, SphinxSecretKey,
};

use crate::{Error, Result};

/// Why a packet was dropped. Each is a value of the `reason` label of
/// `bastet_mixnode_packets_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The packet was seen before under this node's key.
    Replay,
    /// The packet does not decode or authenticate under this node's key, or
    /// names this mixnode as its final hop (a mixnode never is one).
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
}

impl DropReason {
    /// Every reason, for exporting all of them from the start.
    pub const ALL: [DropReason; 8] = [
        DropReason::Replay,
        DropReason::Malformed,
        DropReason::WrongLength,
        DropReason::UnknownNextHop,
        DropReason::QueueFull,
        DropReason::Overload,
        DropReason::DelayTooLong,
        DropReason::NoConsensus,
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
    tag: ReplayTag,
    next_hop: NodeId,
    delay: Duration,
    packet: Packet,
}

impl std::fmt::Debug for Unwrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unwrapped")
            .field("next_hop", &self.next_hop)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl Unwrapped {
    /// Where the packet goes next.
    pub fn next_hop(&self) -> NodeId {
        self.next_hop
    }

    /// How long the sender asked this node to hold it.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

/// The CPU-heavy, stateless half of mixing: parse, one Diffie-Hellman,
/// remove the layer. Cheap to clone; run it on as many threads as there are
/// cores and hand the results to the one [`Mixer`].
#[derive(Clone)]
pub struct Unwrapper {
    key: Arc<SphinxSecretKey>,
}

impl Unwrapper {
    /// Unwraps packets addressed to the Sphinx key `key`.
    pub fn new(key: SphinxSecretKey) -> Self {
        Unwrapper { key: Arc::new(key) }
    }

    /// Removes this node's layer from `frame`.
    pub fn unwrap(&self, frame: &[u8]) -> std::result::Result<Unwrapped, DropReason> {
        let prepared = Prepared::new(frame, &self.key).map_err(sphinx_reason)?;
        let tag = prepared.replay_tag();
        match prepared.process().map_err(sphinx_reason)? {
            Processed::Forward {
                next_hop,
                delay,
                packet,
            } => Ok(Unwrapped {
                tag,
                next_hop,
                delay,
                packet,
            }),
            // Only a mailbox server may be a final hop.
            Processed::Deliver { .. } => Err(DropReason::Malformed),
        }
    }
}

fn sphinx_reason(e: bastet_sphinx::Error) -> DropReason {
    match e {
        bastet_sphinx::Error::WrongPacketLength { .. } => DropReason::WrongLength,
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
    /// Replay tags remembered at least (see the crate docs for the Bloom
    /// filter's size and false-positive rate).
    pub replay_filter_capacity: usize,
}

/// What the [`Mixer`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Held until `release_at`, then returned by [`Mixer::poll_transmit`].
    Delayed {
        /// When it will be released.
        release_at: Instant,
    },
    /// Dropped, for `reason`.
    Dropped(DropReason),
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
    dropped: [u64; DropReason::ALL.len()],
}

impl MixerStats {
    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }
}

/// The stateful half of mixing: the replay filter and the bounded delay
/// queue, in the style of `quinn-proto`: feed it packets with
/// [`Mixer::handle`] (or [`Mixer::handle_unwrapped`]), wake at
/// [`Mixer::poll_timeout`], and drain [`Mixer::poll_transmit`].
pub struct Mixer {
    config: MixerConfig,
    unwrapper: Unwrapper,
    replay: ReplayFilter,
    queue: BinaryHeap<Held>,
    next_seq: u64,
    stats: MixerStats,
}

impl Mixer {
    /// A mixer for packets to `key`, with an empty replay filter.
    pub fn new(config: MixerConfig, key: SphinxSecretKey) -> Result<Self> {
        let replay =
            ReplayFilter::new(config.replay_filter_capacity).map_err(|why| Error::Config {
                key: "replay_filter_capacity",
                why: why.to_string(),
            })?;
        Ok(Mixer {
            queue: BinaryHeap::with_capacity(config.max_delayed_packets.min(4096)),
            config,
            unwrapper: Unwrapper::new(key),
            replay,
            next_seq: 0,
            stats: MixerStats::default(),
        })
    }

    /// The stateless half, to run on worker threads.
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
            Ok(release_at) => {
                self.stats.delayed += 1;
                Outcome::Delayed { release_at }
            }
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
    ) -> std::result::Result<Instant, DropReason> {
        let u = unwrapped?;
        // Checked only after the layer authenticated, so garbage cannot
        // fill the filter and push real tags out early.
        if self.replay.check_and_insert(&u.tag) {
            return Err(DropReason::Replay);
        }
        if u.delay > self.config.max_delay {
            return Err(DropReason::DelayTooLong);
        }
        if self.queue.len() >= self.config.max_delayed_packets {
            return Err(DropReason::QueueFull);
        }
        let release_at = now + u.delay;
        self.queue.push(Held {
            release_at,
            seq: self.next_seq,
            next_hop: u.next_hop,
            packet: u.packet,
        });
        self.next_seq += 1;
        Ok(release_at)
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
    use bastet_directory::{Descriptor, Role, SigningKey};
    use bastet_sphinx::{Hop, MailboxId, PACKET_LEN, SphinxPublicKey, build};

    const MIX_KEY: [u8; 32] = [11; 32];

    fn mixer(max_delayed_packets: usize) -> Mixer {
        let config = MixerConfig {
            max_delay: Duration::from_secs(5),
            max_delayed_packets,
            replay_filter_capacity: 1000,
        };
        Mixer::new(config, SphinxSecretKey::from(MIX_KEY)).unwrap()
    }

    fn node(i: u8) -> NodeId {
        NodeId::from_identity_key(&[i; 32])
    }

    /// A packet for the mix (holding it `delay`) and then node `next`.
    fn packet(delay_ms: u64, next: u8) -> Vec<u8> {
        let mix = Hop {
            node: node(1),
            sphinx_key: SphinxPublicKey::from(&SphinxSecretKey::from(MIX_KEY)),
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
        let other_key = {
            let mut other = mixer(10);
            other.unwrapper = Unwrapper::new(SphinxSecretKey::from([12; 32]));
            other.handle(t0, &packet(10, 2))
        };

        assert_eq!(
            m.handle(t0, &garbage),
            Outcome::Dropped(DropReason::Malformed)
        );
        assert_eq!(
            m.handle(t0, short),
            Outcome::Dropped(DropReason::WrongLength)
        );
        assert_eq!(m.handle(t0, &[]), Outcome::Dropped(DropReason::WrongLength));
        assert_eq!(
            m.handle(t0, &tampered),
            Outcome::Dropped(DropReason::Malformed)
        );
        assert_eq!(
            m.handle(t0, final_hop.as_bytes()),
            Outcome::Dropped(DropReason::Malformed)
        );
        assert_eq!(other_key, Outcome::Dropped(DropReason::Malformed));
        assert_eq!(m.stats().dropped(DropReason::Malformed), 3);
        assert_eq!(m.stats().dropped(DropReason::WrongLength), 2);
        assert_eq!(m.queued(), 0);
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
                "no_consensus"
            ]
        );
    }
}
