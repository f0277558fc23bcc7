//! The mixnode's own cover traffic (Loopix λ_M), sans IO: when the next
//! cover packet is due and what it is. The node's cover task (in `node`)
//! only sleeps and hands the packet to the link.
//!
//! A cover packet is a loop (Loopix λ_M) made only of links real traffic
//! uses. Its forward leg takes the rest of the path a real packet takes
//! after this node: one random mix in each later layer, then a random
//! mailbox server, addressed to [`MailboxId::DROP`], each mix holding it for
//! an Exp(mean) delay as a client's packet asks. Its payload is a
//! [`FinalPayload`] like a client's fragment with an ack request, whose SURB
//! is the return leg: one random mix of each earlier layer, then this node,
//! to [`loop_id`]. The mailbox server discards the packet as cover and
//! sends the ack through the SURB into layer 1, as it sends clients' acks;
//! it comes back to this node as a SURB reply, which [`LoopTracker`] counts
//! as returned, or, past its deadline, as lost. A mix that keeps losing its
//! loops is being cut off or flooded around ((n−1) attacks).
//!
//! Every loop crosses two other mixes whatever the node's layer (the
//! layers after it on the way out, the layers before it on the way back),
//! and leaves on the same outbound link as forwarded packets, so the next
//! hop cannot tell the two apart.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bastet_directory::{Descriptor, MIX_LAYERS, Role, VerifiedConsensus};
use bastet_link::Peer;
use bastet_sphinx::{
    AckId, AckRequest, FRAGMENT_CAPACITY, FinalPayload, Hop, MailboxId, NodeId, Packet,
    SealedReply, Surb, SurbId, SurbKeys, build, fragment,
};
use rand::{CryptoRng, Rng, RngExt};

/// Longest per-hop delay a cover packet asks a mix for: the cap clients
/// use too (`bastet_client::MAX_HOP_DELAY`), within every mixnode's default
/// `max_delay_ms`. The exponential tail beyond is cut off.
pub const MAX_COVER_HOP_DELAY: Duration = Duration::from_secs(30);

/// Most loops a [`LoopTracker`] waits for at once. At the highest
/// `cover_rate` (100/s) loops spend about 40 s out before the oldest is
/// pushed out (and counted lost); at the default rate, over an hour.
pub const MAX_PENDING_LOOPS: usize = 4096;

/// How long after its hop delays have passed a loop may still come back:
/// time on the links, in queues and in the mailbox server's batch. Its
/// delays are known (this node drew them, each at most
/// [`MAX_COVER_HOP_DELAY`]), so a loop is lost at `sent + delays + slack`.
pub const LOOP_SLACK: Duration = Duration::from_secs(20);

/// The [`MailboxId`] this node's loops come back to: the destination in the
/// header of its SURBs, seen only by the node itself, as their last hop.
/// BLAKE3 `derive_key` over the node id with its own context, so it is no
/// client's mailbox id and names the node only to the node.
pub fn loop_id(node: &NodeId) -> MailboxId {
    MailboxId(blake3::derive_key(
        "bastet 2026 mixnode loop id v1",
        node.as_bytes(),
    ))
}

/// Why a cover tick sent nothing. Each is a value of the `reason` label of
/// `bastet_mixnode_cover_skipped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CoverSkipped {
    /// This node holds no valid consensus.
    NoConsensus,
    /// The consensus gives this node no mix layer (not listed yet).
    NotListed,
    /// Another layer (later, for the way out, or earlier, for the way
    /// back) has no mix, or there is no mailbox server.
    NoNextHop,
    /// The packet could not be built (a descriptor's key or the route
    /// Sphinx refused).
    BuildFailed,
    /// The queue to the first hop is full.
    QueueFull,
}

impl CoverSkipped {
    /// Every reason, for exporting all of them from the start.
    pub const ALL: [CoverSkipped; 5] = [
        CoverSkipped::NoConsensus,
        CoverSkipped::NotListed,
        CoverSkipped::NoNextHop,
        CoverSkipped::BuildFailed,
        CoverSkipped::QueueFull,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CoverSkipped::NoConsensus => "no_consensus",
            CoverSkipped::NotListed => "not_listed",
            CoverSkipped::NoNextHop => "no_next_hop",
            CoverSkipped::BuildFailed => "build_failed",
            CoverSkipped::QueueFull => "queue_full",
        }
    }
}

impl std::fmt::Display for CoverSkipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One cover packet, the peer to send it to, and what to remember to
/// recognise it when it comes back.
#[derive(Debug)]
pub struct CoverPacket {
    /// The first hop after this node: a mix of the next layer, or a
    /// mailbox server if this node is in the last layer.
    pub first_hop: Peer,
    /// The packet, [`bastet_sphinx::PACKET_LEN`] bytes like every other.
    pub packet: Packet,
    /// The forward route, delays included, in order (for tests and
    /// debugging).
    pub hops: Vec<Hop>,
    /// The SURB's route back: a mix of each earlier layer, then this node.
    pub return_hops: Vec<Hop>,
    /// For [`LoopTracker::sent`].
    pub pending: PendingLoop,
}

/// What a node keeps of a loop it sent: the keys that open the SURB
/// reply, the ack id it must carry, and how long the loop's hops hold it.
#[derive(Debug)]
pub struct PendingLoop {
    keys: SurbKeys,
    ack: AckId,
    delays: Duration,
}

impl PendingLoop {
    /// The SURB the loop comes back through.
    pub fn surb_id(&self) -> SurbId {
        self.keys.id()
    }

    /// The ack id the mailbox server sends back.
    pub fn ack_id(&self) -> AckId {
        self.ack
    }
}

/// Builds the cover loop node `me` sends now, over `consensus` (the one
/// valid now, whose Sphinx keys the hops use): forward, one random mix from
/// each layer after `me`'s, then a random mailbox server, with an
/// Exp(`mean_delay`) delay for each mix and none at the mailbox server, as
/// real routes have; back (the ack SURB), one random mix from each layer
/// before `me`'s, delayed alike, then `me` to [`loop_id`].
pub fn cover_packet<R: CryptoRng + ?Sized>(
    consensus: Option<&VerifiedConsensus>,
    me: &NodeId,
    mean_delay: Duration,
    rng: &mut R,
) -> Result<CoverPacket, CoverSkipped> {
    let consensus = consensus.ok_or(CoverSkipped::NoConsensus)?;
    let layer = consensus.layer_of(me).ok_or(CoverSkipped::NotListed)?;
    let mut chosen: Vec<&Descriptor> = Vec::with_capacity(usize::from(MIX_LAYERS) + 1);
    for later in layer.saturating_add(1)..=MIX_LAYERS {
        let mixes: Vec<&Descriptor> = consensus.mixes(later).collect();
        chosen.push(pick(&mixes, rng).ok_or(CoverSkipped::NoNextHop)?);
    }
    let mailboxes: Vec<&Descriptor> = consensus.mailboxes().collect();
    chosen.push(pick(&mailboxes, rng).ok_or(CoverSkipped::NoNextHop)?);
    let mut back: Vec<&Descriptor> = Vec::with_capacity(usize::from(MIX_LAYERS));
    for earlier in 1..layer {
        let mixes: Vec<&Descriptor> = consensus.mixes(earlier).collect();
        back.push(pick(&mixes, rng).ok_or(CoverSkipped::NoNextHop)?);
    }
    let myself = consensus.node(me).ok_or(CoverSkipped::NotListed)?;
    let mut hop = |d: &Descriptor, delayed: bool| Hop {
        node: d.node_id(),
        sphinx_key: d.sphinx_public(),
        delay: if delayed {
            bastet_sphinx::exp_delay(mean_delay, MAX_COVER_HOP_DELAY, rng)
        } else {
            Duration::ZERO
        },
    };
    let hops: Vec<Hop> = chosen
        .iter()
        .map(|d| hop(d, d.role != Role::Mailbox))
        .collect();
    let mut return_hops: Vec<Hop> = back.iter().map(|d| hop(d, true)).collect();
    // The last hop of the SURB reads the reply; it holds nothing.
    return_hops.push(hop(myself, false));
    let delays = hops.iter().chain(&return_hops).map(|h| h.delay).sum();

    let (surb, keys) =
        Surb::build(&return_hops, &loop_id(me)).map_err(|_| CoverSkipped::BuildFailed)?;
    let mut id = [0u8; 16];
    rng.fill(&mut id);
    let ack = AckId(id);
    // What a client's full fragment with an ack request looks like to the
    // mailbox server: one fragment of random bytes.
    let mut body = vec![0u8; FRAGMENT_CAPACITY];
    rng.fill(&mut body[..]);
    let piece = fragment(&body, rng)
        .ok()
        .and_then(|f| f.into_iter().next())
        .ok_or(CoverSkipped::BuildFailed)?;
    let payload = FinalPayload::new(Some(AckRequest { id: ack, surb }), &piece).to_bytes();
    let packet = build(&hops, &MailboxId::DROP, &payload).map_err(|_| CoverSkipped::BuildFailed)?;
    let first = chosen.first().ok_or(CoverSkipped::NoNextHop)?;
    Ok(CoverPacket {
        first_hop: Peer {
            node: first.node_id(),
            addr: first.addr.clone(),
            pin: first.pin(),
        },
        packet,
        hops,
        return_hops,
        pending: PendingLoop { keys, ack, delays },
    })
}

/// What became of a SURB reply offered to [`LoopTracker::returned`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopReply {
    /// One of this node's loops, back with its ack id, in time.
    Returned,
    /// Not a reply to a loop this node is waiting for: addressed elsewhere
    /// than its [`loop_id`], unknown SURB id (never sent, already returned,
    /// or already counted lost), or a reply that does not open or carries
    /// the wrong ack id.
    Unknown,
}

/// Counts this node's cover loops, sans IO: remembers each one sent (at
/// most [`MAX_PENDING_LOOPS`]), recognises it when its SURB reply comes
/// back, and declares it lost once its deadline passes.
#[derive(Debug)]
pub struct LoopTracker {
    loop_id: MailboxId,
    pending: HashMap<SurbId, (PendingLoop, (Instant, u64))>,
    /// Deadline (and a sequence number to break ties) → SURB id, earliest
    /// first.
    deadlines: BTreeMap<(Instant, u64), SurbId>,
    next_seq: u64,
    returned: u64,
    lost: u64,
}

impl LoopTracker {
    /// An empty tracker for the loops of node `me`.
    pub fn new(me: &NodeId) -> Self {
        LoopTracker {
            loop_id: loop_id(me),
            pending: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_seq: 0,
            returned: 0,
            lost: 0,
        }
    }

    /// Remembers a loop sent at `now`; due back by `now` + its delays +
    /// [`LOOP_SLACK`]. With [`MAX_PENDING_LOOPS`] already waiting, the one
    /// due first is given up and counted lost; returns how many were.
    pub fn sent(&mut self, now: Instant, pending: PendingLoop) -> u64 {
        let mut given_up = 0;
        while self.pending.len() >= MAX_PENDING_LOOPS {
            let Some((_, id)) = self.deadlines.pop_first() else {
                break;
            };
            if self.pending.remove(&id).is_some() {
                given_up += 1;
            }
        }
        self.lost += given_up;
        let key = (now + pending.delays + LOOP_SLACK, self.next_seq);
        self.next_seq += 1;
        let id = pending.surb_id();
        self.deadlines.insert(key, id);
        if let Some((_, old)) = self.pending.insert(id, (pending, key)) {
            // A repeated random 16-byte id: only the newest is waited for.
            self.deadlines.remove(&old);
        }
        given_up
    }

    /// Takes a SURB reply this node was the last hop of, addressed to
    /// `mailbox`: [`LoopReply::Returned`] if that is this node's
    /// [`loop_id`] and the reply opens with the keys of a loop still pending
    /// and carries its ack id (the loop is then forgotten). Replies past
    /// their deadline are lost, not returned, once [`LoopTracker::expire`]
    /// has seen them.
    pub fn returned(&mut self, mailbox: &MailboxId, reply: &SealedReply) -> LoopReply {
        if *mailbox != self.loop_id {
            return LoopReply::Unknown;
        }
        let id = reply.surb_id();
        let Some((pending, _)) = self.pending.get(&id) else {
            return LoopReply::Unknown;
        };
        let ack = pending
            .keys
            .open(reply)
            .ok()
            .and_then(|body| AckId::from_ack_body(&body).ok());
        // Constant time is moot here: the ack id protects nothing secret.
        if ack != Some(pending.ack) {
            return LoopReply::Unknown;
        }
        if let Some((_, key)) = self.pending.remove(&id) {
            self.deadlines.remove(&key);
        }
        self.returned += 1;
        LoopReply::Returned
    }

    /// Counts as lost, and forgets, every loop whose deadline is before
    /// `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let mut lost = 0;
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 >= now {
                break;
            }
            let id = entry.remove();
            if self.pending.remove(&id).is_some() {
                lost += 1;
            }
        }
        self.lost += lost;
        lost
    }

    /// When the next pending loop is due, if any is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|((at, _), _)| *at)
    }

    /// Loops waited for now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Loops returned so far.
    pub fn returned_total(&self) -> u64 {
        self.returned
    }

    /// Loops lost so far (past their deadline, or pushed out when full).
    pub fn lost_total(&self) -> u64 {
        self.lost
    }
}

/// The wait before the next cover packet of a Poisson process of `rate`
/// packets per second: an Exp(1/`rate`) gap. `None` when `rate` is 0 (or
/// not a positive number): cover is off.
pub fn cover_gap<R: Rng + ?Sized>(rate: f64, rng: &mut R) -> Option<Duration> {
    if !(rate > 0.0 && rate.is_finite()) {
        return None;
    }
    let mean = Duration::try_from_secs_f64(1.0 / rate).ok()?;
    Some(bastet_sphinx::exp_delay(mean, Duration::MAX, rng))
}

fn pick<'a, R: Rng + ?Sized>(from: &[&'a Descriptor], rng: &mut R) -> Option<&'a Descriptor> {
    if from.is_empty() {
        return None;
    }
    from.get(rng.random_range(0..from.len())).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastet_sphinx::{PACKET_LEN, Prepared, Processed, SphinxPublicKey, SphinxSecretKey};

    fn descriptor(i: u8, role: Role) -> (Descriptor, SphinxSecretKey) {
        let key = SphinxSecretKey::from([i; 32]);
        let d = Descriptor {
            identity_key: [i; 32],
            epoch: 1,
            sphinx_key: SphinxPublicKey::from(&key).to_bytes(),
            tls_pin: [i; 32],
            addr: format!("127.0.0.1:{}", 7000 + u16::from(i)),
            api_addr: (role == Role::Mailbox).then(|| format!("127.0.0.1:{}", 7100 + u16::from(i))),
            circuit_addr: None,
            role,
            jurisdiction: "DE".into(),
            operator: "Org".into(),
        };
        (d, key)
    }

    /// Six mixes (two a layer) and two mailbox servers, with their keys.
    fn network(
        mailboxes: bool,
    ) -> (
        VerifiedConsensus,
        std::collections::HashMap<NodeId, SphinxSecretKey>,
    ) {
        let mut nodes = Vec::new();
        let mut keys = std::collections::HashMap::new();
        for i in 1..=8u8 {
            let role = if i > 6 { Role::Mailbox } else { Role::Mix };
            if role == Role::Mailbox && !mailboxes {
                continue;
            }
            let (d, k) = descriptor(i, role);
            keys.insert(d.node_id(), k);
            nodes.push(d);
        }
        (
            VerifiedConsensus::assume_verified(1, 0, u64::MAX, nodes, 1),
            keys,
        )
    }

    /// Sends `packet` through `hops` as each node would, and returns what
    /// the last one gets.
    fn through(
        mut packet: Packet,
        hops: &[Hop],
        keys: &std::collections::HashMap<NodeId, SphinxSecretKey>,
    ) -> Processed {
        for (i, hop) in hops.iter().enumerate() {
            let processed = Prepared::new(packet.as_bytes(), &keys[&hop.node])
                .unwrap()
                .process()
                .unwrap();
            match processed {
                Processed::Forward {
                    next_hop,
                    delay,
                    packet: next,
                } => {
                    assert_eq!(next_hop, hops[i + 1].node);
                    assert_eq!(delay, hop.delay);
                    packet = next;
                }
                last => {
                    assert_eq!(i, hops.len() - 1, "{last:?} before the last hop");
                    return last;
                }
            }
        }
        panic!("the last hop forwarded");
    }

    /// What a mailbox server does with a loop's forward leg: it is cover,
    /// and its ack goes back through the SURB.
    fn ack_of(processed: Processed) -> (Packet, NodeId) {
        let Processed::Deliver { mailbox, message } = processed else {
            panic!("not delivered: {processed:?}");
        };
        assert!(mailbox.is_drop());
        let payload = FinalPayload::from_bytes(&message).unwrap();
        let ack = payload.ack().unwrap().clone();
        let fragment = bastet_sphinx::Fragment::from_bytes(payload.fragment_bytes()).unwrap();
        assert_eq!(fragment.chunk().len(), FRAGMENT_CAPACITY);
        ack.surb.use_surb(&ack.id.to_ack_body()).unwrap()
    }

    #[test]
    fn cover_goes_out_along_later_layers_and_comes_back_through_earlier_ones() {
        let (consensus, keys) = network(true);
        let mut rng = rand::rng();
        let mean = Duration::from_millis(50);
        for layer in 1..=MIX_LAYERS {
            let me = consensus.mixes(layer).next().unwrap().node_id();
            let mut tracker = LoopTracker::new(&me);
            for _ in 0..10 {
                let cover = cover_packet(Some(&consensus), &me, mean, &mut rng).unwrap();
                assert_eq!(cover.packet.as_bytes().len(), PACKET_LEN);
                let layers = |hops: &[Hop]| -> Vec<Option<u8>> {
                    hops.iter().map(|h| consensus.layer_of(&h.node)).collect()
                };
                // Later layers in order, then a mailbox server.
                let mut expected: Vec<Option<u8>> = (layer + 1..=MIX_LAYERS).map(Some).collect();
                expected.push(None);
                assert_eq!(layers(&cover.hops), expected, "from layer {layer}");
                let last = cover.hops.last().unwrap();
                assert_eq!(consensus.node(&last.node).unwrap().role, Role::Mailbox);
                assert_eq!(last.delay, Duration::ZERO);
                // Back: layer 1 up to this node's own, ending at this node.
                let back: Vec<Option<u8>> = (1..=layer).map(Some).collect();
                assert_eq!(layers(&cover.return_hops), back, "to layer {layer}");
                assert_eq!(cover.return_hops.last().unwrap().node, me);
                assert_eq!(cover.return_hops.last().unwrap().delay, Duration::ZERO);
                assert!(
                    cover
                        .hops
                        .iter()
                        .chain(&cover.return_hops)
                        .all(|h| h.delay <= MAX_COVER_HOP_DELAY)
                );
                let first = consensus.node(&cover.hops[0].node).unwrap();
                assert_eq!(cover.first_hop.node, first.node_id());
                assert_eq!(cover.first_hop.addr, first.addr);
                assert_eq!(cover.first_hop.pin, first.pin());

                let sent = Instant::now();
                let ack_id = cover.pending.ack_id();
                assert_eq!(tracker.sent(sent, cover.pending), 0);
                let (ack, to) = ack_of(through(cover.packet, &cover.hops, &keys));
                // The mailbox server sends the ack into layer 1.
                assert_eq!(to, cover.return_hops[0].node);
                assert_eq!(consensus.layer_of(&to), Some(1));
                let Processed::Reply { mailbox, reply } = through(ack, &cover.return_hops, &keys)
                else {
                    panic!("the loop did not come back as a reply");
                };
                assert_eq!(mailbox, loop_id(&me));
                assert_ne!(ack_id, AckId([0; 16]));
                assert_eq!(tracker.returned(&mailbox, &reply), LoopReply::Returned);
                // Once only.
                assert_eq!(tracker.returned(&mailbox, &reply), LoopReply::Unknown);
            }
            assert_eq!(tracker.returned_total(), 10);
            assert_eq!(tracker.pending(), 0);
            assert_eq!(
                tracker.expire(Instant::now() + Duration::from_secs(3600)),
                0
            );
            assert_eq!(tracker.lost_total(), 0);
        }
    }

    /// A loop's pending state and the reply that returns it, without the
    /// network in between.
    fn a_loop(ack: AckId, delays: Duration) -> (PendingLoop, Surb, SphinxSecretKey) {
        let key = SphinxSecretKey::from([3; 32]);
        let me = Hop {
            node: ME,
            sphinx_key: SphinxPublicKey::from(&key),
            delay: Duration::ZERO,
        };
        let (surb, keys) = Surb::build(&[me], &loop_id(&ME)).unwrap();
        (PendingLoop { keys, ack, delays }, surb, key)
    }

    const ME: NodeId = NodeId([3; 32]);

    fn reply(surb: Surb, body: &[u8], key: &SphinxSecretKey) -> SealedReply {
        let (packet, _) = surb.use_surb(body).unwrap();
        match Prepared::new(packet.as_bytes(), key)
            .unwrap()
            .process()
            .unwrap()
        {
            Processed::Reply { mailbox, reply } => {
                assert_eq!(mailbox, loop_id(&ME));
                reply
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_loop_not_back_by_its_deadline_is_lost_and_then_unknown() {
        let t0 = Instant::now();
        let delays = Duration::from_secs(2);
        let mut tracker = LoopTracker::new(&ME);
        let (pending, surb, key) = a_loop(AckId([7; 16]), delays);
        tracker.sent(t0, pending);
        assert_eq!(tracker.poll_timeout(), Some(t0 + delays + LOOP_SLACK));
        assert_eq!(tracker.expire(t0 + delays + LOOP_SLACK), 0);
        assert_eq!(tracker.pending(), 1);
        assert_eq!(
            tracker.expire(t0 + delays + LOOP_SLACK + Duration::from_millis(1)),
            1
        );
        assert_eq!((tracker.lost_total(), tracker.pending()), (1, 0));
        assert_eq!(tracker.poll_timeout(), None);
        // Late: not counted returned as well.
        let late = reply(surb, &AckId([7; 16]).to_ack_body(), &key);
        assert_eq!(tracker.returned(&loop_id(&ME), &late), LoopReply::Unknown);
        assert_eq!(tracker.returned_total(), 0);
    }

    #[test]
    fn a_wrong_ack_id_or_an_unknown_surb_does_not_return_a_loop() {
        let t0 = Instant::now();
        let mut tracker = LoopTracker::new(&ME);
        let (pending, surb, key) = a_loop(AckId([7; 16]), Duration::ZERO);
        tracker.sent(t0, pending);
        let wrong = reply(surb.clone(), &AckId([8; 16]).to_ack_body(), &key);
        assert_eq!(tracker.returned(&loop_id(&ME), &wrong), LoopReply::Unknown);
        let garbage = reply(surb.clone(), b"not an ack body", &key);
        assert_eq!(
            tracker.returned(&loop_id(&ME), &garbage),
            LoopReply::Unknown
        );
        let (_, stranger, _) = a_loop(AckId([7; 16]), Duration::ZERO);
        let unknown = reply(stranger, &AckId([7; 16]).to_ack_body(), &key);
        assert_eq!(
            tracker.returned(&loop_id(&ME), &unknown),
            LoopReply::Unknown
        );
        // The right reply, addressed to another mailbox (as a client's ack
        // would be), is not this node's loop.
        let right = reply(surb.clone(), &AckId([7; 16]).to_ack_body(), &key);
        assert_eq!(
            tracker.returned(&MailboxId([9; 32]), &right),
            LoopReply::Unknown
        );
        // Still pending: the right reply returns it.
        assert_eq!(tracker.pending(), 1);
        let right = reply(surb, &AckId([7; 16]).to_ack_body(), &key);
        assert_eq!(tracker.returned(&loop_id(&ME), &right), LoopReply::Returned);
        assert_eq!((tracker.returned_total(), tracker.lost_total()), (1, 0));
    }

    #[test]
    fn the_tracker_is_bounded_and_gives_up_the_loop_due_first() {
        let t0 = Instant::now();
        let mut tracker = LoopTracker::new(&ME);
        let (first, first_surb, key) = a_loop(AckId([1; 16]), Duration::ZERO);
        tracker.sent(t0, first);
        let mut given_up = 0;
        for i in 1..MAX_PENDING_LOOPS + 10 {
            let (p, _, _) = a_loop(AckId([2; 16]), Duration::from_millis(i as u64));
            given_up += tracker.sent(t0, p);
        }
        assert_eq!(given_up, 10);
        assert_eq!(tracker.pending(), MAX_PENDING_LOOPS);
        assert_eq!(tracker.lost_total(), 10);
        let late = reply(first_surb, &AckId([1; 16]).to_ack_body(), &key);
        assert_eq!(tracker.returned(&loop_id(&ME), &late), LoopReply::Unknown);
        assert_eq!(
            tracker.expire(t0 + Duration::from_secs(3600)),
            MAX_PENDING_LOOPS as u64
        );
        assert_eq!(tracker.lost_total(), MAX_PENDING_LOOPS as u64 + 10);
    }

    #[test]
    fn cover_is_skipped_without_consensus_listing_or_next_hops() {
        let mut rng = rand::rng();
        let mean = Duration::from_millis(50);
        let (consensus, _) = network(true);
        let me = consensus.mixes(1).next().unwrap().node_id();
        let skipped = |c: Option<&VerifiedConsensus>, me: &NodeId, rng: &mut _| {
            cover_packet(c, me, mean, rng).map(|c| c.first_hop.node)
        };
        assert_eq!(skipped(None, &me, &mut rng), Err(CoverSkipped::NoConsensus));
        assert_eq!(
            skipped(Some(&consensus), &NodeId([99; 32]), &mut rng),
            Err(CoverSkipped::NotListed)
        );
        // A mailbox server has no layer: it sends no mixnode cover.
        let server = consensus.mailboxes().next().unwrap().node_id();
        assert_eq!(
            skipped(Some(&consensus), &server, &mut rng),
            Err(CoverSkipped::NotListed)
        );
        let (no_mailboxes, _) = network(false);
        let last = no_mailboxes.mixes(MIX_LAYERS).next().unwrap().node_id();
        assert_eq!(
            skipped(Some(&no_mailboxes), &last, &mut rng),
            Err(CoverSkipped::NoNextHop)
        );
        // Two mixes and a mailbox server, in an epoch that leaves layer 3
        // empty: neither mix has a full path after it.
        let nodes: Vec<Descriptor> = [1, 2]
            .map(|i| descriptor(i, Role::Mix).0)
            .into_iter()
            .chain([descriptor(7, Role::Mailbox).0])
            .collect();
        let sparse = (1..1000)
            .map(|epoch| VerifiedConsensus::assume_verified(epoch, 0, u64::MAX, nodes.clone(), 1))
            .find(|c| c.mixes(MIX_LAYERS).next().is_none())
            .unwrap();
        for d in sparse.nodes.iter().filter(|d| d.role == Role::Mix) {
            assert_eq!(
                skipped(Some(&sparse), &d.node_id(), &mut rng),
                Err(CoverSkipped::NoNextHop)
            );
        }
    }

    #[test]
    fn gaps_are_exponential_with_mean_one_over_the_rate_and_zero_is_off() {
        let mut rng = rand::rng();
        assert_eq!(cover_gap(0.0, &mut rng), None);
        assert_eq!(cover_gap(f64::NAN, &mut rng), None);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| cover_gap(4.0, &mut rng).unwrap().as_secs_f64())
            .sum();
        let mean = total / f64::from(n);
        // Mean 0.25 s; the standard error over 20 000 draws is under 0.002 s.
        assert!((0.23..0.27).contains(&mean), "mean gap {mean}");
    }

    #[test]
    fn skip_reason_labels_are_the_documented_ones() {
        let labels: Vec<&str> = CoverSkipped::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "no_consensus",
                "not_listed",
                "no_next_hop",
                "build_failed",
                "queue_full"
            ]
        );
    }
}
