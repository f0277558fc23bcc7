//! The mixnode's own cover traffic (Loopix λ_M), sans IO: when the next
//! cover packet is due and what it is. The node's cover task (in `node`)
//! only sleeps and hands the packet to the link.
//!
//! A cover packet takes the rest of the path a real packet takes after this
//! node: one random mix in each later layer, then a random mailbox server,
//! addressed to [`MailboxId::DROP`] with a random payload, each mix holding
//! it for an Exp(mean) delay as a client's packet asks. It leaves on the
//! same outbound link as forwarded packets, so the next hop cannot tell the
//! two apart, and an observer of this node's links sees outgoing traffic
//! even when little comes in. It ends as drop cover at the mailbox server
//! rather than looping back to this node, so it does not (yet) let the
//! node detect (n−1) attacks.

use std::time::Duration;

use bastet_directory::{Descriptor, MIX_LAYERS, Role, VerifiedConsensus};
use bastet_link::Peer;
use bastet_sphinx::{Hop, MAX_MESSAGE_LEN, MailboxId, NodeId, Packet, build};
use rand::{Rng, RngExt};

/// Longest per-hop delay a cover packet asks a mix for: the cap clients
/// use too (`bastet_client::MAX_HOP_DELAY`), within every mixnode's default
/// `max_delay_ms`. The exponential tail beyond is cut off.
pub const MAX_COVER_HOP_DELAY: Duration = Duration::from_secs(30);

/// Why a cover tick sent nothing. Each is a value of the `reason` label of
/// `bastet_mixnode_cover_skipped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CoverSkipped {
    /// This node holds no valid consensus.
    NoConsensus,
    /// The consensus gives this node no mix layer (not listed yet).
    NotListed,
    /// A later layer has no mix, or there is no mailbox server.
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

/// One cover packet and the peer to send it to.
#[derive(Debug)]
pub struct CoverPacket {
    /// The first hop after this node: a mix of the next layer, or a
    /// mailbox server if this node is in the last layer.
    pub first_hop: Peer,
    /// The packet, [`bastet_sphinx::PACKET_LEN`] bytes like every other.
    pub packet: Packet,
    /// The route, delays included, in order (for tests and debugging).
    pub hops: Vec<Hop>,
}

/// Builds the cover packet node `me` sends now, over `consensus` (the one
/// valid now, whose Sphinx keys the hops use): one random mix from each
/// layer after `me`'s, then a random mailbox server, with an Exp(`mean_delay`)
/// delay for each mix and none at the mailbox server, as real routes have.
pub fn cover_packet<R: Rng + ?Sized>(
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
    let hops: Vec<Hop> = chosen
        .iter()
        .map(|d| Hop {
            node: d.node_id(),
            sphinx_key: d.sphinx_public(),
            delay: if d.role == Role::Mailbox {
                Duration::ZERO
            } else {
                bastet_sphinx::exp_delay(mean_delay, MAX_COVER_HOP_DELAY, rng)
            },
        })
        .collect();
    let mut payload = vec![0u8; MAX_MESSAGE_LEN];
    rng.fill(&mut payload[..]);
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
    })
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

    #[test]
    fn cover_takes_the_rest_of_a_real_route_and_ends_as_drop_at_a_mailbox_server() {
        let (consensus, keys) = network(true);
        let mut rng = rand::rng();
        let mean = Duration::from_millis(50);
        for layer in 1..=MIX_LAYERS {
            let me = consensus.mixes(layer).next().unwrap().node_id();
            for _ in 0..20 {
                let cover = cover_packet(Some(&consensus), &me, mean, &mut rng).unwrap();
                assert_eq!(cover.packet.as_bytes().len(), PACKET_LEN);
                // Later layers in order, then a mailbox server.
                let layers: Vec<Option<u8>> = cover
                    .hops
                    .iter()
                    .map(|h| consensus.layer_of(&h.node))
                    .collect();
                let mut expected: Vec<Option<u8>> = (layer + 1..=MIX_LAYERS).map(Some).collect();
                expected.push(None);
                assert_eq!(layers, expected, "from layer {layer}");
                let last = cover.hops.last().unwrap();
                assert_eq!(consensus.node(&last.node).unwrap().role, Role::Mailbox);
                assert_eq!(last.delay, Duration::ZERO);
                assert!(cover.hops.iter().all(|h| h.delay <= MAX_COVER_HOP_DELAY));
                let first = consensus.node(&cover.hops[0].node).unwrap();
                assert_eq!(cover.first_hop.node, first.node_id());
                assert_eq!(cover.first_hop.addr, first.addr);
                assert_eq!(cover.first_hop.pin, first.pin());

                // Each hop peels its layer; the last sees drop cover.
                let mut bytes = cover.packet;
                for (i, hop) in cover.hops.iter().enumerate() {
                    let key = &keys[&hop.node];
                    match Prepared::new(bytes.as_bytes(), key)
                        .unwrap()
                        .process()
                        .unwrap()
                    {
                        Processed::Forward {
                            next_hop,
                            delay,
                            packet,
                        } => {
                            assert_eq!(next_hop, cover.hops[i + 1].node);
                            assert_eq!(delay, hop.delay);
                            bytes = packet;
                        }
                        Processed::Deliver { mailbox, message } => {
                            assert_eq!(i, cover.hops.len() - 1);
                            assert!(mailbox.is_drop());
                            assert_eq!(message.len(), MAX_MESSAGE_LEN);
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
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
