//! The setup packet: one Sphinx packet, with no mixing delay, from the
//! endpoint through every hop of its circuit to the rendezvous relay. Each
//! hop removes its layer as a mixnode would and keeps the Sphinx shared
//! secret as the circuit's hop keys; the rendezvous relay finds the
//! rendezvous cookie in the payload.

use std::fmt;

use bastet_sphinx::{
    Hop, MailboxId, NodeId, Packet, Prepared, Processed, SphinxPublicKey, build_with_hop_secrets,
};

use crate::onion::{EndpointOnion, HopKeys, RelayLayer, RendezvousEnd};
use crate::{Error, Result};

/// Bytes of a rendezvous cookie.
pub const COOKIE_LEN: usize = 32;
/// Most hops in a circuit, the rendezvous included.
pub const MAX_CIRCUIT_HOPS: usize = 4;
/// What the setup packet's payload starts with.
const SETUP_MAGIC: &[u8; 8] = b"BSTCIRC1";
/// The setup packet's destination field: circuits end at a relay, not a
/// mailbox.
const NO_MAILBOX: MailboxId = MailboxId([0; 32]);

/// The secret both ends of a call present at the rendezvous relay, so that
/// it splices their two circuits. Chosen at random by the caller and sent
/// inside the end-to-end encrypted call offer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cookie(pub [u8; COOKIE_LEN]);

impl Cookie {
    /// A fresh random cookie.
    pub fn random() -> Self {
        Cookie(rand::random())
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(<redacted>)")
    }
}

/// One hop of a circuit as the endpoint knows it from the consensus.
#[derive(Clone, Debug)]
pub struct CircuitHop {
    /// The relay's node id.
    pub node: NodeId,
    /// Its Sphinx key for the current epoch.
    pub sphinx_key: SphinxPublicKey,
    /// Its circuit listener, `host:port`.
    pub addr: String,
    /// The pin of its TLS certificate.
    pub pin: bastet_link::CertPin,
}

/// Builds the setup packet for `hops` (the rendezvous last) and the
/// endpoint's onion keys.
pub fn build_setup(hops: &[CircuitHop], cookie: &Cookie) -> Result<(Packet, EndpointOnion)> {
    if hops.is_empty() || hops.len() > MAX_CIRCUIT_HOPS {
        return Err(Error::BadRoute(format!(
            "a circuit has 1 to {MAX_CIRCUIT_HOPS} hops, not {}",
            hops.len()
        )));
    }
    for (i, hop) in hops.iter().enumerate() {
        if hops[..i].iter().any(|h| h.node == hop.node) {
            return Err(Error::BadRoute(
                "a relay appears twice in the circuit".into(),
            ));
        }
    }
    let route: Vec<Hop> = hops
        .iter()
        .map(|h| Hop {
            node: h.node,
            sphinx_key: h.sphinx_key,
            delay: std::time::Duration::ZERO,
        })
        .collect();
    let mut message = Vec::with_capacity(SETUP_MAGIC.len() + COOKIE_LEN);
    message.extend_from_slice(SETUP_MAGIC);
    message.extend_from_slice(&cookie.0);
    let (packet, secrets) =
        build_with_hop_secrets(&route, &NO_MAILBOX, &message).map_err(Error::malformed)?;
    let onion = EndpointOnion::new(secrets.iter().map(HopKeys::derive).collect())?;
    Ok((packet, onion))
}

/// What a relay does with a setup packet.
#[derive(Debug)]
pub enum Setup {
    /// Open the next link of the circuit and send it `packet`; relay cells
    /// through `layer`.
    Extend {
        /// The next hop.
        next: NodeId,
        /// Its setup packet.
        packet: Packet,
        /// This hop's layer.
        layer: RelayLayer,
    },
    /// This relay is the rendezvous: wait for the peer's circuit with the
    /// same cookie, then splice.
    Rendezvous {
        /// The cookie.
        cookie: Cookie,
        /// This circuit's end.
        end: RendezvousEnd,
    },
}

/// Processes a setup packet that authenticated under one of the relay's
/// keys (and passed its replay filter).
pub fn process_setup(prepared: Prepared) -> Result<Setup> {
    let keys = HopKeys::derive(&prepared.hop_secret());
    match prepared.process().map_err(Error::malformed)? {
        Processed::Forward {
            next_hop,
            delay,
            packet,
        } => {
            if !delay.is_zero() {
                return Err(Error::NotSetup(
                    "a packet with a mixing delay: a mix packet sent to the circuit listener",
                ));
            }
            Ok(Setup::Extend {
                next: next_hop,
                packet,
                layer: RelayLayer::new(keys),
            })
        }
        Processed::Deliver { mailbox, message } => {
            if mailbox != NO_MAILBOX {
                return Err(Error::NotSetup("a packet for a mailbox"));
            }
            let cookie = message
                .strip_prefix(SETUP_MAGIC.as_slice())
                .and_then(|c| <[u8; COOKIE_LEN]>::try_from(c).ok())
                .ok_or(Error::NotSetup(
                    "a final payload that is not a rendezvous cookie",
                ))?;
            Ok(Setup::Rendezvous {
                cookie: Cookie(cookie),
                end: RendezvousEnd::new(keys),
            })
        }
        Processed::Reply { .. } => Err(Error::NotSetup("a SURB reply")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastet_link::CertPin;
    use bastet_sphinx::SphinxSecretKey;

    fn hop(i: u8) -> (CircuitHop, SphinxSecretKey) {
        let secret = SphinxSecretKey::from([i; 32]);
        let hop = CircuitHop {
            node: NodeId::from_identity_key(&[i; 32]),
            sphinx_key: SphinxPublicKey::from(&secret),
            addr: format!("127.0.0.1:{}", 5000 + u16::from(i)),
            pin: CertPin([i; 32]),
        };
        (hop, secret)
    }

    #[test]
    fn the_setup_packet_extends_through_each_hop_to_the_rendezvous() {
        let (hops, keys): (Vec<_>, Vec<_>) = (1..=3).map(hop).unzip();
        let cookie = Cookie([42; 32]);
        let (mut packet, _onion) = build_setup(&hops, &cookie).unwrap();
        for (i, key) in keys.iter().enumerate() {
            let prepared = Prepared::new(packet.as_bytes(), key).unwrap();
            match process_setup(prepared).unwrap() {
                Setup::Extend {
                    next, packet: p, ..
                } => {
                    assert_eq!(next, hops[i + 1].node);
                    packet = p;
                }
                Setup::Rendezvous { cookie: c, .. } => {
                    assert_eq!(i, 2);
                    assert_eq!(c, cookie);
                }
            }
        }
    }

    #[test]
    fn bad_routes_and_mix_packets_are_refused() {
        let (a, _) = hop(1);
        assert!(build_setup(&[], &Cookie([0; 32])).is_err());
        assert!(build_setup(&[a.clone(), a.clone()], &Cookie([0; 32])).is_err());
        let five: Vec<_> = (1..=5).map(|i| hop(i).0).collect();
        assert!(build_setup(&five, &Cookie([0; 32])).is_err());

        // A mix packet (with a delay, or for a mailbox) is not a setup packet.
        let (b, b_key) = hop(2);
        let route = [
            Hop {
                node: b.node,
                sphinx_key: b.sphinx_key,
                delay: std::time::Duration::from_millis(5),
            },
            Hop {
                node: a.node,
                sphinx_key: a.sphinx_key,
                delay: std::time::Duration::ZERO,
            },
        ];
        let packet = bastet_sphinx::build(&route, &MailboxId([1; 32]), b"x").unwrap();
        let prepared = Prepared::new(packet.as_bytes(), &b_key).unwrap();
        assert!(matches!(process_setup(prepared), Err(Error::NotSetup(_))));
        let packet = bastet_sphinx::build(&route[..1], &MailboxId([1; 32]), b"x").unwrap();
        let prepared = Prepared::new(packet.as_bytes(), &b_key).unwrap();
        assert!(matches!(process_setup(prepared), Err(Error::NotSetup(_))));
    }
}
