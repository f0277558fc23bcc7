//! Building and processing Bastet's one packet size class.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::time::Duration;

use sphinx_packet::constants::{IDENTIFIER_LENGTH, REPLAY_TAG_SIZE};
use sphinx_packet::header::SphinxHeader;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::header::keys::KeyMaterial;
use sphinx_packet::header::shared_secret::ExpandedSharedSecret;
use sphinx_packet::payload::PAYLOAD_OVERHEAD_SIZE;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::version::CURRENT_VERSION;
use sphinx_packet::{ProcessedPacketData, SphinxPacket, SphinxPacketBuilder};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::surb::{SealedReply, SurbId};
use crate::{Error, MailboxId, NodeId, Result};

/// Bytes of Sphinx payload in every packet (including Sphinx's own overhead).
pub const PAYLOAD_SIZE: usize = 2048;
/// Most message bytes one packet carries.
pub const MAX_MESSAGE_LEN: usize = PAYLOAD_SIZE - PAYLOAD_OVERHEAD_SIZE;
/// Length of every packet on every link.
pub const PACKET_LEN: usize = sphinx_packet::header::HEADER_SIZE + PAYLOAD_SIZE;
/// Most hops in a route (mixnodes plus the final mailbox server).
pub const MAX_HOPS: usize = sphinx_packet::constants::MAX_PATH_LENGTH;

/// One relay on a route, and how long it must hold the packet.
#[derive(Clone, Debug)]
pub struct Hop {
    /// The relay.
    pub node: NodeId,
    /// The relay's Sphinx key for the epoch the packet is sent in.
    pub sphinx_key: PublicKey,
    /// How long the relay holds the packet before forwarding it.
    pub delay: Duration,
}

/// A packet of exactly [`PACKET_LEN`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet(Box<[u8]>);

impl Packet {
    /// Wraps bytes received from a peer, checking only the length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != PACKET_LEN {
            return Err(Error::WrongPacketLength {
                got: bytes.len(),
                expected: PACKET_LEN,
            });
        }
        Ok(Packet(bytes.into()))
    }

    /// Takes `bytes` without copying them, checking only the length.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self> {
        if bytes.len() != PACKET_LEN {
            return Err(Error::WrongPacketLength {
                got: bytes.len(),
                expected: PACKET_LEN,
            });
        }
        Ok(Packet(bytes.into_boxed_slice()))
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packet({} bytes)", self.0.len())
    }
}

/// Builds a packet carrying `message` along `route` to `mailbox`, with a
/// fresh random initial secret.
pub fn build(route: &[Hop], mailbox: &MailboxId, message: &[u8]) -> Result<Packet> {
    build_with_secret(route, mailbox, message, &StaticSecret::random())
}

/// Like [`build`] with the caller's initial secret: deterministic, for test
/// vectors only. Reusing a secret across packets links them; never do that.
pub fn build_with_secret(
    route: &[Hop],
    mailbox: &MailboxId,
    message: &[u8],
    initial_secret: &StaticSecret,
) -> Result<Packet> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(Error::MessageTooLong {
            len: message.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    let (nodes, delays) = sphinx_route(route)?;
    let destination = Destination::new(DestinationAddressBytes::from_bytes(mailbox.0), [0; 16]);
    let packet = SphinxPacketBuilder::new()
        .with_payload_size(PAYLOAD_SIZE)
        .with_initial_secret(initial_secret)
        .build_packet(message, &nodes, &destination, &delays)
        .map_err(Error::malformed)?;
    let bytes = packet.to_bytes();
    debug_assert_eq!(bytes.len(), PACKET_LEN);
    Packet::from_bytes(&bytes)
}

/// A secret that a packet's creator shares with one relay on its route:
/// both derive it from that hop's Sphinx shared secret, the creator when it
/// builds the packet ([`build_with_hop_secrets`]), the relay when it
/// processes it ([`Prepared::hop_secret`]). Keys for other protocols (the
/// call circuit's per-hop keys) are derived from it with
/// [`HopSecret::derive`], never from the Sphinx keys directly. Zeroizes on
/// drop.
pub struct HopSecret(zeroize::Zeroizing<[u8; 32]>);

/// BLAKE3 key-derivation context of [`HopSecret`].
const HOP_SECRET_CONTEXT: &str = "bastet 2026 sphinx hop secret v1";

impl HopSecret {
    fn of(secret: &ExpandedSharedSecret) -> Self {
        HopSecret(zeroize::Zeroizing::new(blake3::derive_key(
            HOP_SECRET_CONTEXT,
            secret.legacy_payload_key(),
        )))
    }

    /// A 32-byte key for `context` (a BLAKE3 key-derivation context: a
    /// hard-coded, globally unique string naming the protocol and the key's
    /// use).
    pub fn derive(&self, context: &str) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(blake3::derive_key(context, self.0.as_slice()))
    }
}

impl std::fmt::Debug for HopSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopSecret(<redacted>)")
    }
}

/// Like [`build`], also returning the [`HopSecret`] shared with each hop of
/// `route`, in route order.
pub fn build_with_hop_secrets(
    route: &[Hop],
    mailbox: &MailboxId,
    message: &[u8],
) -> Result<(Packet, Vec<HopSecret>)> {
    let initial_secret = StaticSecret::random();
    let packet = build_with_secret(route, mailbox, message, &initial_secret)?;
    let (nodes, _) = sphinx_route(route)?;
    let secrets = KeyMaterial::derive(&nodes, &initial_secret)
        .expanded_shared_secrets
        .iter()
        .map(HopSecret::of)
        .collect();
    Ok((packet, secrets))
}

/// `route` as sphinx-packet's nodes and delays, after checking its length
/// (1 to [`MAX_HOPS`]) and that every delay fits its encoding.
pub(crate) fn sphinx_route(route: &[Hop]) -> Result<(Vec<Node>, Vec<Delay>)> {
    if route.is_empty() || route.len() > MAX_HOPS {
        return Err(Error::BadRouteLength {
            got: route.len(),
            max: MAX_HOPS,
        });
    }
    let nodes = route
        .iter()
        .map(|h| Node::new(NodeAddressBytes::from_bytes(h.node.0), h.sphinx_key))
        .collect();
    let delays = route
        .iter()
        .map(|h| {
            u64::try_from(h.delay.as_nanos())
                .map(Delay::new_from_nanos)
                .map_err(|_| Error::DelayTooLong(h.delay))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((nodes, delays))
}

/// A packet's replay tag: the same packet replayed to the same key has the
/// same tag, so a relay drops it without processing it twice.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayTag(pub [u8; REPLAY_TAG_SIZE]);

/// A received packet after the one Diffie-Hellman and the header MAC
/// check, before the rest of the work: the relay checks
/// [`Prepared::replay_tag`] against its filter, then calls
/// [`Prepared::process`]. Only a packet whose header authenticates under one
/// of the relay's keys becomes a `Prepared`, so a replay filter fed from here
/// records authenticated tags only.
pub struct Prepared {
    packet: SphinxPacket,
    secret: ExpandedSharedSecret,
}

impl Prepared {
    /// Parses `bytes`, derives the shared secret under `key` and checks the
    /// header MAC: [`Prepared::with_keys`] with one key.
    pub fn new(bytes: &[u8], key: &StaticSecret) -> Result<Self> {
        Self::with_keys(bytes, &[key]).map(|(_, prepared)| prepared)
    }

    /// Trial processing for a relay that holds several Sphinx keys (one per
    /// epoch, while keys rotate): parses `bytes` once and, for each key in
    /// order, derives the shared secret and checks the header MAC. Returns
    /// the index in `keys` of the first key the header authenticates under.
    ///
    /// Costs one X25519 multiplication and one header MAC per key tried, so
    /// list the key most packets are built for first. Fails with
    /// [`Error::UnknownKey`] if the header authenticates under none of them
    /// (built for a key the relay does not hold, or corrupted), and with
    /// [`Error::Malformed`] for a small-order group element.
    pub fn with_keys(bytes: &[u8], keys: &[&StaticSecret]) -> Result<(usize, Self)> {
        if bytes.len() != PACKET_LEN {
            return Err(Error::WrongPacketLength {
                got: bytes.len(),
                expected: PACKET_LEN,
            });
        }
        let packet = guard(|| SphinxPacket::from_bytes(bytes))?;
        for (index, key) in keys.iter().enumerate() {
            let secret = packet.header.compute_expanded_shared_secret(key);
            // A small-order group element makes the Diffie-Hellman output
            // zero whatever our key: such a packet could be forged without
            // any of our keys, and is refused whichever key is tried.
            if secret.replay_tag() == non_contributory_tag() {
                return Err(Error::Malformed("non-contributory group element".into()));
            }
            if guard(|| packet.header.ensure_header_integrity(&secret)).is_ok() {
                return Ok((index, Prepared { packet, secret }));
            }
        }
        Err(Error::UnknownKey)
    }

    /// The tag to check against the replay filter.
    pub fn replay_tag(&self) -> ReplayTag {
        ReplayTag(*self.secret.replay_tag())
    }

    /// The secret this relay shares with the packet's creator
    /// (see [`HopSecret`]).
    pub fn hop_secret(&self) -> HopSecret {
        HopSecret::of(&self.secret)
    }

    /// Removes this node's layer. At the last hop, a forward packet (SURB
    /// id all zero) gives [`Processed::Deliver`] with its unpadded message;
    /// a SURB reply gives [`Processed::Reply`] with the still-sealed payload,
    /// which only the SURB's creator can unpad. Either way it costs the one
    /// Diffie-Hellman already done in [`Prepared::with_keys`].
    pub fn process(self) -> Result<Processed> {
        let Prepared { packet, secret } = self;
        let processed = guard(move || packet.process_with_expanded_secret(&secret))?;
        // Older formats take other key-derivation paths; Bastet speaks one.
        if processed.version != CURRENT_VERSION {
            return Err(Error::Malformed(format!(
                "unsupported packet version {}",
                processed.version.value()
            )));
        }
        match processed.data {
            ProcessedPacketData::ForwardHop {
                next_hop_packet,
                next_hop_address,
                delay,
            } => Ok(Processed::Forward {
                next_hop: NodeId(next_hop_address.to_bytes()),
                delay: delay.to_duration(),
                packet: Packet::from_vec(next_hop_packet.to_bytes())?,
            }),
            ProcessedPacketData::FinalHop {
                destination,
                identifier,
                payload,
            } if identifier != [0; IDENTIFIER_LENGTH] => Ok(Processed::Reply {
                mailbox: MailboxId(destination.as_bytes()),
                reply: SealedReply::new(SurbId(identifier), payload.into_bytes().into()),
            }),
            ProcessedPacketData::FinalHop {
                destination,
                payload,
                ..
            } => Ok(Processed::Deliver {
                mailbox: MailboxId(destination.as_bytes()),
                message: guard(move || payload.recover_plaintext())?,
            }),
        }
    }
}

/// The replay tag of an all-zero shared secret, which every small-order
/// group element yields (X25519 clamps scalars to multiples of 8).
fn non_contributory_tag() -> &'static [u8; REPLAY_TAG_SIZE] {
    static TAG: OnceLock<[u8; REPLAY_TAG_SIZE]> = OnceLock::new();
    TAG.get_or_init(|| {
        let header = [0u8; sphinx_packet::header::HEADER_SIZE];
        match SphinxHeader::from_bytes(&header) {
            Ok(h) => *h
                .compute_expanded_shared_secret(&StaticSecret::from([1; 32]))
                .replay_tag(),
            // Unreachable for a correctly sized buffer; a tag no real secret
            // expands to keeps the check meaningful if it ever happens.
            Err(_) => [0xff; REPLAY_TAG_SIZE],
        }
    })
}

/// What a relay does with a packet after removing its layer.
#[derive(Debug)]
pub enum Processed {
    /// Hold the packet for `delay`, then send it to `next_hop`.
    Forward {
        /// Where to send it.
        next_hop: NodeId,
        /// How long to hold it.
        delay: Duration,
        /// The packet for the next hop.
        packet: Packet,
    },
    /// This relay is the last hop: store `message` in `mailbox`.
    Deliver {
        /// The recipient's mailbox.
        mailbox: MailboxId,
        /// The (still end-to-end encrypted) message.
        message: Vec<u8>,
    },
    /// This relay is the last hop of a SURB reply: store `reply` in
    /// `mailbox` for the SURB's creator, who alone can open it.
    Reply {
        /// The mailbox of the SURB's creator.
        mailbox: MailboxId,
        /// The sealed reply, named by its SURB id.
        reply: SealedReply,
    },
}

/// Runs a `sphinx-packet` call on peer-supplied bytes, turning any panic deep
/// in the library into a `Malformed` error: a relay must never die on input.
pub(crate) fn guard<T>(f: impl FnOnce() -> sphinx_packet::Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::malformed(e)),
        Err(_) => Err(Error::Malformed("packet decoder panicked".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> (Hop, StaticSecret) {
        let sk = StaticSecret::from([i; 32]);
        let hop = Hop {
            node: NodeId::from_identity_key(&[i; 32]),
            sphinx_key: PublicKey::from(&sk),
            delay: Duration::from_millis(u64::from(i)),
        };
        (hop, sk)
    }

    #[test]
    fn each_relay_derives_the_hop_secret_its_creator_holds_and_no_other() {
        let (hops, keys): (Vec<_>, Vec<_>) = (1..=3).map(node).unzip();
        let mailbox = MailboxId([4; 32]);
        let (mut packet, secrets) = build_with_hop_secrets(&hops, &mailbox, b"hi").unwrap();
        assert_eq!(secrets.len(), 3);
        let ctx = "bastet test hop secret";
        for (i, key) in keys.iter().enumerate() {
            let prepared = Prepared::new(packet.as_bytes(), key).unwrap();
            let relay = prepared.hop_secret().derive(ctx);
            for (j, secret) in secrets.iter().enumerate() {
                assert_eq!(*relay == *secret.derive(ctx), i == j, "hop {i} vs {j}");
            }
            assert_ne!(*relay, *secrets[i].derive("bastet test other context"));
            match prepared.process().unwrap() {
                Processed::Forward { packet: next, .. } => packet = next,
                Processed::Deliver { message, .. } => assert_eq!(message, b"hi"),
                Processed::Reply { .. } => panic!("not a reply"),
            }
        }
    }

    #[test]
    fn four_hops_deliver_the_message_and_each_hop_sees_only_its_next() {
        let (hops, keys): (Vec<_>, Vec<_>) = (1..=4).map(node).unzip();
        let mailbox = MailboxId([9; 32]);
        let mut packet = build(&hops, &mailbox, b"hello bastet").unwrap();
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(packet.as_bytes().len(), PACKET_LEN);
            match Prepared::new(packet.as_bytes(), key)
                .unwrap()
                .process()
                .unwrap()
            {
                Processed::Forward {
                    next_hop,
                    delay,
                    packet: next,
                } => {
                    assert_eq!(next_hop, hops[i + 1].node);
                    assert_eq!(delay, hops[i].delay);
                    packet = next;
                }
                Processed::Reply { .. } => panic!("a forward packet came out as a reply"),
                Processed::Deliver {
                    mailbox: m,
                    message,
                } => {
                    assert_eq!(i, 3);
                    assert_eq!(m, mailbox);
                    assert_eq!(message, b"hello bastet");
                    return;
                }
            }
        }
        panic!("never delivered");
    }

    #[test]
    fn drop_cover_with_a_full_random_payload_reaches_the_last_hop_as_drop() {
        use rand::RngExt;
        let (hops, keys): (Vec<_>, Vec<_>) = (1..=2).map(node).unzip();
        let mut random = vec![0u8; MAX_MESSAGE_LEN];
        rand::rng().fill(&mut random[..]);
        let packet = build(&hops, &MailboxId::DROP, &random).unwrap();
        assert_eq!(packet.as_bytes().len(), PACKET_LEN);
        let Processed::Forward { packet, .. } = Prepared::new(packet.as_bytes(), &keys[0])
            .unwrap()
            .process()
            .unwrap()
        else {
            panic!("the first hop is not the last");
        };
        match Prepared::new(packet.as_bytes(), &keys[1])
            .unwrap()
            .process()
            .unwrap()
        {
            Processed::Deliver { mailbox, message } => {
                assert!(mailbox.is_drop());
                assert_eq!(message, random);
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    #[test]
    fn wrong_key_and_wrong_length_are_errors() {
        let (hop, _) = node(1);
        let packet = build(&[hop], &MailboxId([1; 32]), b"x").unwrap();
        let other = StaticSecret::from([99; 32]);
        // The header MAC is checked before any other work.
        assert!(matches!(
            Prepared::new(packet.as_bytes(), &other),
            Err(Error::UnknownKey)
        ));
        assert!(matches!(
            Prepared::new(&packet.as_bytes()[1..], &other),
            Err(Error::WrongPacketLength { .. })
        ));
    }

    #[test]
    fn replay_tag_is_stable_for_a_packet_and_differs_between_packets() {
        let (hop, key) = node(1);
        let mb = MailboxId([1; 32]);
        let a = build(std::slice::from_ref(&hop), &mb, b"x").unwrap();
        let b = build(&[hop], &mb, b"x").unwrap();
        let tag = |p: &Packet| Prepared::new(p.as_bytes(), &key).unwrap().replay_tag();
        assert!(tag(&a) == tag(&a));
        assert!(tag(&a) != tag(&b));
    }

    #[test]
    fn small_order_group_element_is_refused() {
        let (hop, key) = node(1);
        let packet = build(&[hop], &MailboxId([1; 32]), b"x").unwrap();
        let mut bytes = packet.as_bytes().to_vec();
        // The identity point and a point of order 8.
        for alpha in [[0u8; 32], {
            let mut p = [0u8; 32];
            p[0] = 1;
            p
        }] {
            bytes[..32].copy_from_slice(&alpha);
            assert!(matches!(
                Prepared::new(&bytes, &key),
                Err(Error::Malformed(m)) if m.contains("non-contributory")
            ));
        }
    }

    #[test]
    fn trial_processing_finds_the_key_a_packet_was_built_for() {
        let keys: Vec<StaticSecret> = (1..=3).map(|i| StaticSecret::from([i; 32])).collect();
        let refs: Vec<&StaticSecret> = keys.iter().collect();
        let mailbox = MailboxId([4; 32]);
        for (i, key) in keys.iter().enumerate() {
            let hop = Hop {
                node: NodeId([7; 32]),
                sphinx_key: PublicKey::from(key),
                delay: Duration::ZERO,
            };
            let packet = build(&[hop], &mailbox, b"for one key").unwrap();
            let (index, prepared) = Prepared::with_keys(packet.as_bytes(), &refs).unwrap();
            assert_eq!(index, i);
            // The secret kept is the matching key's: same tag, and it opens.
            assert!(
                prepared.replay_tag()
                    == Prepared::new(packet.as_bytes(), key).unwrap().replay_tag()
            );
            match prepared.process().unwrap() {
                Processed::Deliver { message, .. } => assert_eq!(message, b"for one key"),
                other => panic!("expected delivery, got {other:?}"),
            }
            // Without its key, no other key will do.
            let others: Vec<&StaticSecret> = refs
                .iter()
                .copied()
                .filter(|k| !std::ptr::eq(*k, key))
                .collect();
            assert!(matches!(
                Prepared::with_keys(packet.as_bytes(), &others),
                Err(Error::UnknownKey)
            ));
        }
        let hop = Hop {
            node: NodeId([7; 32]),
            sphinx_key: PublicKey::from(&keys[0]),
            delay: Duration::ZERO,
        };
        let packet = build(&[hop], &mailbox, b"x").unwrap();
        assert!(matches!(
            Prepared::with_keys(packet.as_bytes(), &[]),
            Err(Error::UnknownKey)
        ));
        // A flipped header bit fails the MAC under the right key too.
        let mut tampered = packet.as_bytes().to_vec();
        tampered[100] ^= 1;
        assert!(matches!(
            Prepared::with_keys(&tampered, &refs),
            Err(Error::UnknownKey)
        ));
    }

    #[test]
    fn oversize_message_and_bad_routes_are_refused() {
        let (hop, _) = node(1);
        let mb = MailboxId([1; 32]);
        let big = vec![0; MAX_MESSAGE_LEN + 1];
        assert!(matches!(
            build(std::slice::from_ref(&hop), &mb, &big),
            Err(Error::MessageTooLong { .. })
        ));
        assert!(build(std::slice::from_ref(&hop), &mb, &big[1..]).is_ok());
        assert!(matches!(
            build(&[], &mb, b"x"),
            Err(Error::BadRouteLength { .. })
        ));
        assert!(matches!(
            build(&vec![hop; MAX_HOPS + 1], &mb, b"x"),
            Err(Error::BadRouteLength { .. })
        ));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), PACKET_LEN)) {
                let key = StaticSecret::from([3; 32]);
                if let Ok(p) = Prepared::new(&bytes, &key) {
                    let _ = p.replay_tag();
                    prop_assert!(p.process().is_err());
                }
            }
        }
    }
}
