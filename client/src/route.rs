//! Route selection: one random mix per layer, then the recipient's mailbox
//! server, with the per-hop delays the sender draws. Pure: a consensus and an
//! RNG in, a route out.

use std::time::Duration;

use bastet_directory::{Descriptor, Role, VerifiedConsensus};
use bastet_link::CertPin;
use bastet_sphinx::{Hop, NodeId};
use rand::Rng;

use crate::policy::{RoutePolicy, choose_policy_route};
use crate::{Error, Result};

/// Mix layers every route crosses, in order (a fourth mix hop is drawn
/// from layer 3 again, see [`crate::hop_layer`]).
pub const MIX_LAYERS: [u8; 3] = [1, 2, 3];
/// How many mix layers the consensus deals.
pub(crate) const LAYERS: u8 = 3;
/// Longest delay a sender asks one hop for. Mixnodes drop packets asking for
/// more than their `max_delay_ms` (30 s by default); the exponential tail
/// beyond this is cut off rather than risk the packet.
pub const MAX_HOP_DELAY: Duration = Duration::from_secs(30);

/// One relay on a chosen route, as shown to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteNode {
    /// The relay.
    pub node: NodeId,
    /// Its mix layer this epoch, or `None` for the mailbox server.
    pub layer: Option<u8>,
    /// Its jurisdiction.
    pub jurisdiction: String,
}

impl RouteNode {
    /// `mix1`, `mix2`, `mix3` or `mailbox` (the fourth mix of a 4-hop
    /// route is in layer 3 too: `mix3`).
    pub fn role_label(&self) -> String {
        match self.layer {
            Some(l) => format!("mix{l}"),
            None => "mailbox".into(),
        }
    }
}

/// A route through the network to a mailbox server.
#[derive(Clone, Debug)]
pub struct Route {
    /// The hops for [`bastet_sphinx::build`], delays included.
    pub hops: Vec<Hop>,
    /// The same relays, for display.
    pub nodes: Vec<RouteNode>,
    /// Packet-link address of the first hop.
    pub entry_addr: String,
    /// TLS pin of the first hop.
    pub entry_pin: CertPin,
}

/// Picks one mix uniformly at random in each layer and ends at
/// `mailbox_server`: [`choose_policy_route`] with
/// [`RoutePolicy::layers_only`] (any jurisdiction, no distinctness rules).
/// Each mix holds the packet for an independent Exp(`mean_delay`) delay;
/// the mailbox server stores it at once.
pub fn choose_route<R: Rng + ?Sized>(
    consensus: &VerifiedConsensus,
    mailbox_server: &NodeId,
    mean_delay: Duration,
    rng: &mut R,
) -> Result<Route> {
    choose_policy_route(
        consensus,
        &RoutePolicy::layers_only(),
        mailbox_server,
        mean_delay,
        rng,
    )
}

/// The route over `chosen` (mixes, then the mailbox server), with an
/// Exp(`mean_delay`) delay drawn for each mix.
pub(crate) fn build_route<R: Rng + ?Sized>(
    consensus: &VerifiedConsensus,
    chosen: &[&Descriptor],
    mean_delay: Duration,
    rng: &mut R,
) -> Route {
    let hops = chosen
        .iter()
        .map(|d| Hop {
            node: d.node_id(),
            sphinx_key: d.sphinx_public(),
            delay: if d.role == Role::Mailbox {
                Duration::ZERO
            } else {
                sample_delay(mean_delay, rng)
            },
        })
        .collect();
    let nodes = chosen
        .iter()
        .map(|d| RouteNode {
            node: d.node_id(),
            layer: consensus.layer_of(&d.node_id()),
            jurisdiction: d.jurisdiction.clone(),
        })
        .collect();
    let (entry_addr, entry_pin) = chosen.first().map_or_else(
        || (String::new(), CertPin([0; 32])),
        |d| (d.addr.clone(), d.pin()),
    );
    Route {
        hops,
        nodes,
        entry_addr,
        entry_pin,
    }
}

/// The descriptor of `node` if the consensus lists it as a mailbox server.
pub fn mailbox_descriptor<'c>(
    consensus: &'c VerifiedConsensus,
    node: &NodeId,
) -> Result<&'c Descriptor> {
    consensus
        .node(node)
        .filter(|d| d.role == Role::Mailbox)
        .ok_or_else(|| Error::MailboxServerNotInConsensus(node.to_hex()))
}

/// One draw from Exp(`mean`) (inverse transform: `-ln(U) * mean`), capped at
/// [`MAX_HOP_DELAY`].
pub fn sample_delay<R: Rng + ?Sized>(mean: Duration, rng: &mut R) -> Duration {
    bastet_sphinx::exp_delay(mean, MAX_HOP_DELAY, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(i: u8, role: Role, jurisdiction: &str) -> Descriptor {
        Descriptor {
            identity_key: [i; 32],
            epoch: 1,
            sphinx_key: [i; 32],
            tls_pin: [i; 32],
            addr: format!("127.0.0.1:{}", 9000 + u16::from(i)),
            api_addr: (role == Role::Mailbox).then(|| format!("127.0.0.1:{}", 9100 + u16::from(i))),
            circuit_addr: None,
            role,
            jurisdiction: jurisdiction.into(),
            operator: "Org".into(),
        }
    }

    fn consensus(nodes: Vec<Descriptor>) -> VerifiedConsensus {
        VerifiedConsensus::assume_verified(1, 0, u64::MAX, nodes, 1)
    }

    fn network() -> VerifiedConsensus {
        consensus(vec![
            descriptor(1, Role::Mix, "DE"),
            descriptor(2, Role::Mix, "NL"),
            descriptor(3, Role::Mix, "CH"),
            descriptor(4, Role::Mix, "SE"),
            descriptor(5, Role::Mix, "IS"),
            descriptor(6, Role::Mix, "FR"),
            descriptor(7, Role::Mailbox, "CH"),
        ])
    }

    #[test]
    fn routes_cross_each_layer_in_order_and_end_at_the_mailbox_server() {
        let c = network();
        let mailbox = descriptor(7, Role::Mailbox, "CH").node_id();
        let mut rng = rand::rng();
        for _ in 0..50 {
            let r = choose_route(&c, &mailbox, Duration::from_millis(50), &mut rng).unwrap();
            let roles: Vec<String> = r.nodes.iter().map(|n| n.role_label()).collect();
            assert_eq!(roles, ["mix1", "mix2", "mix3", "mailbox"]);
            assert_eq!(r.hops.len(), 4);
            assert_eq!(r.hops[3].node, mailbox);
            assert_eq!(r.hops[3].delay, Duration::ZERO);
            let first = c.node(&r.hops[0].node).unwrap();
            assert_eq!(r.entry_addr, first.addr);
            assert_eq!(r.entry_pin, first.pin());
        }
    }

    #[test]
    fn every_mix_of_a_layer_gets_chosen() {
        let c = network();
        let mailbox = descriptor(7, Role::Mailbox, "CH").node_id();
        let mut rng = rand::rng();
        let firsts: std::collections::HashSet<NodeId> = (0..200)
            .map(|_| {
                choose_route(&c, &mailbox, Duration::ZERO, &mut rng)
                    .unwrap()
                    .hops[0]
                    .node
            })
            .collect();
        assert_eq!(firsts.len(), 2);
    }

    #[test]
    fn missing_layers_and_unknown_mailbox_servers_are_refused() {
        let c = network();
        let mut rng = rand::rng();
        let not_mailbox = descriptor(1, Role::Mix, "DE").node_id();
        assert!(matches!(
            choose_route(&c, &not_mailbox, Duration::ZERO, &mut rng),
            Err(Error::MailboxServerNotInConsensus(_))
        ));
        assert!(matches!(
            choose_route(&c, &NodeId([0xee; 32]), Duration::ZERO, &mut rng),
            Err(Error::MailboxServerNotInConsensus(_))
        ));
        // Two mixes fill two layers; one stays empty.
        let two_mixes = consensus(vec![
            descriptor(1, Role::Mix, "DE"),
            descriptor(5, Role::Mix, "IS"),
            descriptor(7, Role::Mailbox, "CH"),
        ]);
        let empty = (1..=3u8)
            .find(|l| two_mixes.mixes(*l).count() == 0)
            .unwrap();
        let mailbox = descriptor(7, Role::Mailbox, "CH").node_id();
        let err = choose_route(&two_mixes, &mailbox, Duration::ZERO, &mut rng).unwrap_err();
        assert!(
            matches!(err, Error::NoEligibleNode { hop, layer, .. } if layer == empty && hop == usize::from(empty)),
            "{err}"
        );
    }

    #[test]
    fn delays_are_exponential_with_the_configured_mean() {
        let mut rng = rand::rng();
        let mean = Duration::from_millis(50);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| sample_delay(mean, &mut rng).as_secs_f64())
            .sum();
        let observed = total / f64::from(n);
        // Standard error of the mean is 50 ms / sqrt(20000) ≈ 0.35 ms.
        assert!((observed - 0.050).abs() < 0.003, "mean {observed}");
        assert_eq!(sample_delay(Duration::ZERO, &mut rng), Duration::ZERO);
        assert!(sample_delay(Duration::from_secs(1_000_000), &mut rng) <= MAX_HOP_DELAY);
    }
}
