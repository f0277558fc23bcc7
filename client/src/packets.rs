//! The three kinds of packet a client sends, all the same length on every
//! link (DESIGN.md §6): a real fragment with its ack SURB, drop cover
//! (discarded by a mailbox server), and loop cover (back to the client's own
//! mailbox, recognised there by a keyed tag in its envelope id).

use bastet_directory::VerifiedConsensus;
use bastet_link::Peer;
use bastet_sphinx::{
    AckId, AckRequest, EnvelopeId, FRAGMENT_CAPACITY, FinalPayload, Fragment, MailboxId, NodeId,
    Packet, Surb, SurbKeys,
};
use rand::CryptoRng;
use rand::seq::IndexedRandom;

use crate::policy::{RoutePolicy, choose_policy_route_weighted};
use crate::{Address, ClientKeys, Error, Result, Route, RouteNode, TrafficParams};

/// Where drop cover goes: the reserved mailbox id every mailbox server
/// discards after authenticating the packet.
pub const DROP_MAILBOX: MailboxId = MailboxId::DROP;

/// A packet ready for its first hop.
pub struct Built {
    /// The Sphinx packet.
    pub packet: Packet,
    /// Its first hop.
    pub peer: Peer,
    /// The relays it crosses, first mix to mailbox server.
    pub nodes: Vec<RouteNode>,
}

/// How to draw routes: the policy, the per-hop delays, and how much to
/// favour each node.
pub struct RouteChoice<'a> {
    /// The consensus in force.
    pub consensus: &'a VerifiedConsensus,
    /// The route policy (never relaxed).
    pub policy: &'a RoutePolicy,
    /// Per-hop delay distribution.
    pub params: &'a TrafficParams,
    /// Relative preference for each node (reliability), or uniform.
    pub weight: Option<&'a dyn Fn(&NodeId) -> f64>,
}

impl RouteChoice<'_> {
    /// A route to `server` under the policy (nodes drawn in proportion to
    /// their weight among those it allows), each mix's delay drawn from
    /// Exp(μ) and cut at the parameters' cap.
    pub fn route<R: CryptoRng + ?Sized>(&self, server: &NodeId, rng: &mut R) -> Result<Route> {
        let uniform = |_: &NodeId| 1.0;
        let mut route = choose_policy_route_weighted(
            self.consensus,
            self.policy,
            server,
            self.params.mean_hop_delay,
            self.weight.unwrap_or(&uniform),
            rng,
        )?;
        for (hop, node) in route.hops.iter_mut().zip(&route.nodes) {
            if node.layer.is_some() {
                hop.delay = self.params.sample_hop_delay(rng);
            }
        }
        Ok(route)
    }
}

fn outgoing(route: Route, packet: Packet) -> Result<Built> {
    let first = route
        .hops
        .first()
        .ok_or(Error::MalformedMessage("an empty route"))?;
    Ok(Built {
        peer: Peer {
            node: first.node,
            addr: route.entry_addr,
            pin: route.entry_pin,
        },
        packet,
        nodes: route.nodes,
    })
}

/// A real fragment to `to` on a fresh route, with an ack SURB on another
/// fresh route back to `keys`' mailbox at `own_server`. Returns the packet,
/// the ack id to expect and the keys that open the ack.
pub fn fragment_packet<R: CryptoRng + ?Sized>(
    choice: &RouteChoice<'_>,
    keys: &ClientKeys,
    to: &Address,
    own_server: &NodeId,
    fragment: &[u8],
    rng: &mut R,
) -> Result<(Built, AckId, SurbKeys)> {
    let route = choice.route(&to.mailbox_server, rng)?;
    // The ack crosses the same kind of route back: the policy binds it too.
    let back = choice.route(own_server, rng)?;
    let (surb, surb_keys) = Surb::build(&back.hops, &keys.mailbox_id())?;
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    let ack_id = AckId(id);
    let payload = FinalPayload::new(
        Some(AckRequest { id: ack_id, surb }),
        &Fragment::from_bytes(fragment)?,
    );
    let packet = bastet_sphinx::build(&route.hops, &to.mailbox, &payload.to_bytes())?;
    Ok((outgoing(route, packet)?, ack_id, surb_keys))
}

/// Drop cover: random bytes to [`DROP_MAILBOX`] at a random mailbox server
/// the policy allows (this client's own if no other is allowed).
pub fn drop_packet<R: CryptoRng + ?Sized>(
    choice: &RouteChoice<'_>,
    own_server: &NodeId,
    rng: &mut R,
) -> Result<Built> {
    let servers: Vec<NodeId> = choice.consensus.mailboxes().map(|d| d.node_id()).collect();
    let pick = servers.choose(rng).copied().unwrap_or(*own_server);
    let route = choice
        .route(&pick, rng)
        .or_else(|_| choice.route(own_server, rng))?;
    let mut body = vec![0u8; bastet_sphinx::MAX_MESSAGE_LEN];
    rng.fill_bytes(&mut body);
    let packet = bastet_sphinx::build(&route.hops, &DROP_MAILBOX, &body)?;
    outgoing(route, packet)
}

/// The key that tags this client's loop envelopes.
fn loop_key(keys: &ClientKeys) -> [u8; 32] {
    blake3::derive_key("bastet 2026 loop cover v1", &*keys.mailbox_secret())
}

/// A fresh loop envelope id: 8 random bytes, then 8 bytes of keyed BLAKE3
/// over them. Only this client can make or recognise one.
pub fn loop_envelope<R: CryptoRng + ?Sized>(keys: &ClientKeys, rng: &mut R) -> EnvelopeId {
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id[..8]);
    let tag = blake3::keyed_hash(&loop_key(keys), &id[..8]);
    id[8..].copy_from_slice(&tag.as_bytes()[..8]);
    EnvelopeId(id)
}

/// Whether `envelope` is one of this client's loop envelopes.
pub fn is_loop_envelope(keys: &ClientKeys, envelope: &EnvelopeId) -> bool {
    let tag = blake3::keyed_hash(&loop_key(keys), &envelope.0[..8]);
    subtle_eq(&tag.as_bytes()[..8], &envelope.0[8..])
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Loop cover: a one-fragment envelope of random bytes under a loop
/// envelope id, through a full route to this client's own mailbox, without
/// an ack. Returns the packet and its envelope id.
pub fn loop_packet<R: CryptoRng + ?Sized>(
    choice: &RouteChoice<'_>,
    keys: &ClientKeys,
    own_server: &NodeId,
    rng: &mut R,
) -> Result<(Built, EnvelopeId)> {
    let route = choice.route(own_server, rng)?;
    let envelope = loop_envelope(keys, rng);
    let mut body = vec![0u8; FRAGMENT_CAPACITY];
    rng.fill_bytes(&mut body);
    let fragment = bastet_sphinx::fragment(&body, rng)?
        .into_iter()
        .next()
        .ok_or(Error::MalformedMessage("no fragment"))?
        .with_envelope(envelope);
    let payload = FinalPayload::new(None, &fragment);
    let packet = bastet_sphinx::build(&route.hops, &keys.mailbox_id(), &payload.to_bytes())?;
    Ok((outgoing(route, packet)?, envelope))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_envelopes_are_recognised_only_by_their_owner() {
        let rng = &mut rand::rng();
        let a = ClientKeys::generate(rng);
        let b = ClientKeys::generate(rng);
        for _ in 0..100 {
            let id = loop_envelope(&a, rng);
            assert!(is_loop_envelope(&a, &id));
            assert!(!is_loop_envelope(&b, &id));
        }
        let mut random = [0u8; 16];
        rand::Rng::fill_bytes(rng, &mut random);
        assert!(!is_loop_envelope(&a, &EnvelopeId(random)));
    }
}
