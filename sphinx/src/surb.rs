//! Single-use reply blocks (SURBs): a route back to the creator's mailbox,
//! packed so that someone else can send one packet along it without learning
//! the route.
//!
//! Built on sphinx-packet's single-seed SURBs (version 260): the SURB hands
//! its user only the last hop's payload key seed, so the user cannot predict
//! the payload any mix sees and, with a colluding mix, link the reply to its
//! route. The price is that the last hop cannot unpad the payload either: a
//! mailbox server stores the still-sealed payload ([`SealedReply`]) and only
//! the creator, holding the [`SurbKeys`], reads it. The last hop takes a
//! reply off the wire with [`Prepared::process`], which returns
//! [`Processed::Reply`](crate::Processed::Reply) for it.

use std::fmt;

use rand::Rng;
use sphinx_packet::constants::{IDENTIFIER_LENGTH, NODE_ADDRESS_LENGTH, PAYLOAD_KEY_SEED_SIZE};
use sphinx_packet::header::HEADER_SIZE;
use sphinx_packet::payload::Payload;
use sphinx_packet::route::{Destination, DestinationAddressBytes};
use sphinx_packet::version::SINGLE_SEED_SURB_VERSION;
use sphinx_packet::{SURB, SURBMaterial, SurbReplyRecovery};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

#[cfg(doc)]
use crate::Prepared;
use crate::packet::{guard, sphinx_route};
use crate::{
    Error, Hop, MAX_HOPS, MAX_MESSAGE_LEN, MailboxId, NodeId, PAYLOAD_SIZE, Packet, Result,
};

/// Length of every SURB: the Sphinx header (the same size for any route of
/// 1 to [`MAX_HOPS`] hops), the first hop's address and one payload key seed.
pub const SURB_LEN: usize = HEADER_SIZE + NODE_ADDRESS_LENGTH + PAYLOAD_KEY_SEED_SIZE;

/// Length of a [`SealedReply`] as a mailbox stores it: the SURB id and the
/// sealed Sphinx payload.
pub const SEALED_REPLY_LEN: usize = IDENTIFIER_LENGTH + PAYLOAD_SIZE;

/// Most bytes of [`SurbKeys::to_bytes`]: the SURB id and one payload key
/// seed per hop of a [`MAX_HOPS`]-hop route.
pub const MAX_SURB_KEYS_LEN: usize = SurbReplyRecovery::serialized_len(MAX_HOPS);

/// Names one SURB: delivered in the clear to the last hop with the reply, so
/// that the creator can find the [`SurbKeys`] that open it. Random, never
/// all zero (forward packets carry the all-zero identifier).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SurbId(pub [u8; IDENTIFIER_LENGTH]);

impl fmt::Debug for SurbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SurbId({})", hex::encode(&self.0[..4]))
    }
}

/// A single-use reply block of exactly [`SURB_LEN`] bytes. Use it once:
/// two packets sent with one SURB carry the same header, so every relay
/// drops the second as a replay.
#[derive(Clone, PartialEq, Eq)]
pub struct Surb(Box<[u8]>);

impl fmt::Debug for Surb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Surb({} bytes)", self.0.len())
    }
}

impl Surb {
    /// Builds a SURB along `route` (mixes, then the mailbox server holding
    /// `reply_to`) with a fresh random initial secret and id. The creator
    /// keeps the [`SurbKeys`] to read the reply and hands out the [`Surb`].
    pub fn build(route: &[Hop], reply_to: &MailboxId) -> Result<(Surb, SurbKeys)> {
        let mut id = [0u8; IDENTIFIER_LENGTH];
        rand::rng().fill_bytes(&mut id);
        if id == [0; IDENTIFIER_LENGTH] {
            // 2^-128, but the all-zero id would make this a forward packet.
            id[0] = 1;
        }
        Self::build_with_secret(route, reply_to, SurbId(id), &StaticSecret::random())
    }

    /// Like [`Surb::build`] with the caller's id and initial secret, for
    /// test vectors only: the group element and the keys are then fixed (the
    /// header's last routing block still carries random padding). Reusing a
    /// secret links SURBs; never do that.
    pub fn build_with_secret(
        route: &[Hop],
        reply_to: &MailboxId,
        id: SurbId,
        initial_secret: &StaticSecret,
    ) -> Result<(Surb, SurbKeys)> {
        let (nodes, delays) = sphinx_route(route)?;
        if id.0 == [0; IDENTIFIER_LENGTH] {
            return Err(Error::Malformed("a SURB id must not be all zero".into()));
        }
        let destination = Destination::new(DestinationAddressBytes::from_bytes(reply_to.0), id.0);
        let material = SURBMaterial::new(nodes, delays, destination, SINGLE_SEED_SURB_VERSION);
        let secret = initial_secret.clone();
        let (surb, recovery) = guard(move || SURB::new_recoverable(secret, material))?;
        let surb = Surb::from_bytes(&surb.to_bytes())?;
        Ok((surb, SurbKeys(recovery)))
    }

    /// Parses a SURB received from a peer: exactly [`SURB_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != SURB_LEN {
            return Err(Error::WrongSurbLength {
                got: bytes.len(),
                expected: SURB_LEN,
            });
        }
        guard(|| SURB::from_bytes(bytes))?;
        Ok(Surb(bytes.into()))
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The relay the reply must be sent to. Whoever uses a SURB from a
    /// stranger should check that this is a first-layer mix it knows.
    pub fn first_hop(&self) -> NodeId {
        let mut id = [0u8; NODE_ADDRESS_LENGTH];
        if let Some(b) = self.0.get(HEADER_SIZE..HEADER_SIZE + NODE_ADDRESS_LENGTH) {
            id.copy_from_slice(b);
        }
        NodeId(id)
    }

    /// Seals `message` (at most [`MAX_MESSAGE_LEN`] bytes) into a packet of
    /// [`PACKET_LEN`](crate::PACKET_LEN) bytes that relays process like any
    /// other, and says which relay to send it to.
    pub fn use_surb(self, message: &[u8]) -> Result<(Packet, NodeId)> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(Error::MessageTooLong {
                len: message.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let surb = guard(|| SURB::from_bytes(&self.0))?;
        let (packet, first_hop) = guard(move || surb.use_surb(message, PAYLOAD_SIZE))?;
        let packet = Packet::from_bytes(&packet.to_bytes())?;
        Ok((packet, NodeId(first_hop.to_bytes())))
    }
}

/// What the creator of a SURB keeps to read the reply: the SURB id and one
/// payload key seed per hop. Secret; zeroized on drop.
pub struct SurbKeys(SurbReplyRecovery);

impl fmt::Debug for SurbKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SurbKeys({:?}, [redacted])", self.id())
    }
}

impl SurbKeys {
    /// The SURB these keys open replies for.
    pub fn id(&self) -> SurbId {
        SurbId(*self.0.identifier())
    }

    /// Hops of the SURB's route.
    pub fn hops(&self) -> usize {
        self.0.num_hops()
    }

    /// `id (16) || seeds (16 per hop)`, for the creator's own storage.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// Parses [`SurbKeys::to_bytes`]: the id and 1 to [`MAX_HOPS`] seeds.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_SURB_KEYS_LEN {
            return Err(Error::MalformedEncoding {
                what: "SURB keys",
                reason: "longer than the keys of a maximal route",
            });
        }
        guard(|| SurbReplyRecovery::from_bytes(bytes)).map(SurbKeys)
    }

    /// Reads a reply sent with this SURB.
    pub fn open(&self, reply: &SealedReply) -> Result<Vec<u8>> {
        if reply.surb_id != self.id() {
            return Err(Error::WrongReplyKeys);
        }
        let payload = guard(|| Payload::from_bytes(&reply.payload))?;
        guard(|| self.0.recover_plaintext(payload))
    }
}

/// A SURB reply as its last hop delivers it: still sealed, readable only
/// with the creator's [`SurbKeys`] for [`SealedReply::surb_id`].
#[derive(Clone, PartialEq, Eq)]
pub struct SealedReply {
    surb_id: SurbId,
    payload: Box<[u8]>,
}

impl fmt::Debug for SealedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedReply({:?})", self.surb_id)
    }
}

impl SealedReply {
    pub(crate) fn new(surb_id: SurbId, payload: Box<[u8]>) -> Self {
        SealedReply { surb_id, payload }
    }

    /// The SURB the reply was sent with.
    pub fn surb_id(&self) -> SurbId {
        self.surb_id
    }

    /// `surb id (16) || sealed payload (PAYLOAD_SIZE)`: [`SEALED_REPLY_LEN`]
    /// bytes, longer than any forward message, so a mailbox owner tells the
    /// two apart by length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEALED_REPLY_LEN);
        out.extend_from_slice(&self.surb_id.0);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses [`SealedReply::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != SEALED_REPLY_LEN {
            return Err(Error::MalformedEncoding {
                what: "sealed reply",
                reason: "wrong length",
            });
        }
        let (id, payload) = bytes.split_at(IDENTIFIER_LENGTH);
        let mut surb_id = [0u8; IDENTIFIER_LENGTH];
        surb_id.copy_from_slice(id);
        Ok(SealedReply {
            surb_id: SurbId(surb_id),
            payload: payload.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use x25519_dalek::PublicKey;

    use super::*;
    use crate::{PACKET_LEN, Prepared, Processed, ReplayTag, build};

    fn node(i: u8) -> (Hop, StaticSecret) {
        let sk = StaticSecret::from([i; 32]);
        let hop = Hop {
            node: NodeId::from_identity_key(&[i; 32]),
            sphinx_key: PublicKey::from(&sk),
            delay: Duration::from_millis(u64::from(i) * 7),
        };
        (hop, sk)
    }

    /// Three mixes, then the mailbox server (no delay there).
    fn route(hops: u8) -> (Vec<Hop>, Vec<StaticSecret>) {
        let (mut hops, keys): (Vec<_>, Vec<_>) = (1..=hops).map(node).unzip();
        if let Some(last) = hops.last_mut() {
            last.delay = Duration::ZERO;
        }
        (hops, keys)
    }

    /// Sends `packet` through every mix with [`Prepared::process`], checking
    /// each next hop and delay, and returns what reaches the last hop.
    fn through_mixes(mut packet: Packet, hops: &[Hop], keys: &[StaticSecret]) -> Packet {
        for i in 0..hops.len() - 1 {
            assert_eq!(packet.as_bytes().len(), PACKET_LEN);
            match Prepared::new(packet.as_bytes(), &keys[i])
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
                other => panic!("at mix {i}: {other:?}"),
            }
        }
        packet
    }

    /// The last hop's view of a packet: the reply it carries, or an error.
    fn reply_at(bytes: &[u8], key: &StaticSecret) -> Result<(MailboxId, ReplayTag, SealedReply)> {
        let prepared = Prepared::new(bytes, key)?;
        let tag = prepared.replay_tag();
        match prepared.process()? {
            Processed::Reply { mailbox, reply } => Ok((mailbox, tag, reply)),
            other => Err(Error::Malformed(format!("not a reply: {other:?}"))),
        }
    }

    #[test]
    fn reply_crosses_three_mixes_and_the_mailbox_and_only_the_creator_reads_it() {
        let (hops, keys) = route(4);
        let reply_to = MailboxId([0x5a; 32]);
        let (surb, creator_keys) = Surb::build(&hops, &reply_to).unwrap();
        assert_eq!(surb.as_bytes().len(), SURB_LEN);
        assert_eq!(creator_keys.hops(), 4);

        // The SURB travels as bytes to the "mailbox server" that uses it.
        let received = Surb::from_bytes(surb.as_bytes()).unwrap();
        assert_eq!(received.first_hop(), hops[0].node);
        let message = b"ack 0123456789abcdef";
        let (packet, first_hop) = received.use_surb(message).unwrap();
        assert_eq!(first_hop, hops[0].node);
        assert_eq!(packet.as_bytes().len(), PACKET_LEN);

        let at_mailbox = through_mixes(packet, &hops, &keys);
        let (mailbox, _, delivered) = reply_at(at_mailbox.as_bytes(), &keys[3]).unwrap();
        assert_eq!(mailbox, reply_to);
        assert_eq!(delivered.surb_id(), creator_keys.id());
        let stored = delivered.to_bytes();
        assert_eq!(stored.len(), SEALED_REPLY_LEN);
        assert!(!stored.windows(message.len()).any(|w| w == message));

        // The creator reloads its keys and the stored reply, and reads it.
        let keys_again = SurbKeys::from_bytes(&creator_keys.to_bytes()).unwrap();
        let reply = SealedReply::from_bytes(&stored).unwrap();
        assert_eq!(keys_again.open(&reply).unwrap(), message);
        assert_eq!(creator_keys.open(&reply).unwrap(), message);
    }

    #[test]
    fn every_route_length_gives_the_same_surb_length_and_delivers() {
        let reply_to = MailboxId([1; 32]);
        for n in 1..=MAX_HOPS as u8 {
            let (hops, keys) = route(n);
            let (surb, creator_keys) = Surb::build(&hops, &reply_to).unwrap();
            assert_eq!(surb.as_bytes().len(), SURB_LEN, "{n} hops");
            let message = vec![n; MAX_MESSAGE_LEN];
            let (packet, _) = surb.use_surb(&message).unwrap();
            let last = through_mixes(packet, &hops, &keys);
            let (_, _, reply) = reply_at(last.as_bytes(), &keys[usize::from(n) - 1]).unwrap();
            assert_eq!(creator_keys.open(&reply).unwrap(), message);
        }
        for bad in [0, MAX_HOPS + 1] {
            let hops = vec![node(1).0; bad];
            assert!(matches!(
                Surb::build(&hops, &reply_to),
                Err(Error::BadRouteLength { .. })
            ));
        }
    }

    #[test]
    fn the_last_hop_tells_replies_from_forward_packets() {
        let (hops, keys) = route(4);
        let reply_to = MailboxId([2; 32]);
        let (surb, creator_keys) = Surb::build(&hops, &reply_to).unwrap();
        let (packet, _) = surb.use_surb(b"reply").unwrap();
        let at_mailbox = through_mixes(packet, &hops, &keys);
        // The last hop cannot unpad a sealed reply: it gets the sealed
        // payload, not garbage "delivered" as a message.
        match Prepared::new(at_mailbox.as_bytes(), &keys[3])
            .unwrap()
            .process()
            .unwrap()
        {
            Processed::Reply { mailbox, reply } => {
                assert_eq!(mailbox, reply_to);
                assert_eq!(creator_keys.open(&reply).unwrap(), b"reply");
            }
            other => panic!("expected a reply, got {other:?}"),
        }
        // A forward packet at its last hop is a delivery, not a reply.
        let forward = build(&hops, &reply_to, b"forward").unwrap();
        let forward_last = through_mixes(forward, &hops, &keys);
        match Prepared::new(forward_last.as_bytes(), &keys[3])
            .unwrap()
            .process()
            .unwrap()
        {
            Processed::Deliver { message, .. } => assert_eq!(message, b"forward"),
            other => panic!("expected a delivery, got {other:?}"),
        }
        // A reply at its first mix is forwarded like any packet.
        let (surb, _) = Surb::build(&hops, &reply_to).unwrap();
        let (packet, _) = surb.use_surb(b"reply").unwrap();
        assert!(matches!(
            Prepared::new(packet.as_bytes(), &keys[0])
                .unwrap()
                .process()
                .unwrap(),
            Processed::Forward { .. }
        ));
        // Under the wrong key it does not authenticate.
        assert!(matches!(
            Prepared::new(at_mailbox.as_bytes(), &keys[2]),
            Err(Error::UnknownKey)
        ));
    }

    #[test]
    fn a_reply_has_the_same_replay_tag_each_time_it_is_replayed() {
        let (hops, keys) = route(4);
        let (surb, _) = Surb::build(&hops, &MailboxId([3; 32])).unwrap();
        let (packet, _) = surb.clone().use_surb(b"one").unwrap();
        let (again, _) = surb.use_surb(b"two").unwrap();
        let tag = |p: &Packet| Prepared::new(p.as_bytes(), &keys[0]).unwrap().replay_tag();
        // Same header, so a relay's replay filter stops a SURB used twice.
        assert!(tag(&packet) == tag(&again));
        let last = through_mixes(packet, &hops, &keys);
        let (_, replay_tag, _) = reply_at(last.as_bytes(), &keys[3]).unwrap();
        assert!(
            replay_tag
                == Prepared::new(last.as_bytes(), &keys[3])
                    .unwrap()
                    .replay_tag()
        );
    }

    #[test]
    fn keys_of_another_surb_do_not_open_the_reply() {
        let (hops, keys) = route(4);
        let reply_to = MailboxId([4; 32]);
        let id = SurbId([7; IDENTIFIER_LENGTH]);
        let (surb, _) =
            Surb::build_with_secret(&hops, &reply_to, id, &StaticSecret::from([8; 32])).unwrap();
        let (_, other_keys) = Surb::build(&hops, &reply_to).unwrap();
        // Same id, other secret: the id matches but the seeds do not.
        let (_, impostor) =
            Surb::build_with_secret(&hops, &reply_to, id, &StaticSecret::from([9; 32])).unwrap();
        let (packet, _) = surb.use_surb(b"secret reply").unwrap();
        let last = through_mixes(packet, &hops, &keys);
        let (_, _, reply) = reply_at(last.as_bytes(), &keys[3]).unwrap();
        assert!(matches!(
            other_keys.open(&reply),
            Err(Error::WrongReplyKeys)
        ));
        assert!(matches!(impostor.open(&reply), Err(Error::Malformed(_))));
    }

    #[test]
    fn deterministic_build_is_reproducible_and_ids_are_checked() {
        let (hops, _) = route(4);
        let reply_to = MailboxId([5; 32]);
        let id = SurbId([6; IDENTIFIER_LENGTH]);
        let secret = StaticSecret::from([10; 32]);
        let (a, ka) = Surb::build_with_secret(&hops, &reply_to, id, &secret).unwrap();
        let (b, kb) = Surb::build_with_secret(&hops, &reply_to, id, &secret).unwrap();
        // Same group element and seeds; only the random header padding differs.
        assert_eq!(a.as_bytes()[..32], b.as_bytes()[..32]);
        assert_eq!(a.as_bytes()[SURB_LEN - 48..], b.as_bytes()[SURB_LEN - 48..]);
        assert_eq!(*ka.to_bytes(), *kb.to_bytes());
        assert_eq!(ka.id(), id);
        assert_eq!(
            ka.to_bytes().len(),
            IDENTIFIER_LENGTH + 4 * PAYLOAD_KEY_SEED_SIZE
        );
        assert!(Surb::build_with_secret(&hops, &reply_to, SurbId([0; 16]), &secret).is_err());
        let (r1, _) = Surb::build(&hops, &reply_to).unwrap();
        let (r2, _) = Surb::build(&hops, &reply_to).unwrap();
        assert_ne!(r1, r2);
    }

    #[test]
    fn wrong_lengths_are_clear_errors() {
        let (hops, _) = route(4);
        let (surb, keys) = Surb::build(&hops, &MailboxId([6; 32])).unwrap();
        let bytes = surb.as_bytes();
        for len in [
            0,
            1,
            SURB_LEN - 1,
            SURB_LEN + 1,
            SURB_LEN + PAYLOAD_KEY_SEED_SIZE,
        ] {
            let mut v = bytes.to_vec();
            v.resize(len, 0);
            assert!(matches!(
                Surb::from_bytes(&v),
                Err(Error::WrongSurbLength { got, expected: SURB_LEN }) if got == len
            ));
        }
        let k = keys.to_bytes();
        for len in [0, IDENTIFIER_LENGTH, k.len() - 1, MAX_SURB_KEYS_LEN + 1] {
            let mut v = k.to_vec();
            v.resize(len, 1);
            assert!(SurbKeys::from_bytes(&v).is_err(), "{len}");
        }
        for len in [0, SEALED_REPLY_LEN - 1, SEALED_REPLY_LEN + 1] {
            assert!(SealedReply::from_bytes(&vec![0; len]).is_err());
        }
        assert!(matches!(
            surb.use_surb(&[0; MAX_MESSAGE_LEN + 1]),
            Err(Error::MessageTooLong { .. })
        ));
    }

    #[test]
    fn debug_output_redacts_seeds() {
        let (hops, _) = route(4);
        let (surb, keys) = Surb::build(&hops, &MailboxId([6; 32])).unwrap();
        assert_eq!(format!("{surb:?}"), format!("Surb({SURB_LEN} bytes)"));
        let shown = format!("{keys:?}");
        let seeds = hex::encode(&keys.to_bytes()[IDENTIFIER_LENGTH..]);
        assert!(!shown.contains(&seeds[..8]), "{shown}");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn garbage_surbs_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), SURB_LEN),
                message in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                if let Ok(surb) = Surb::from_bytes(&bytes) {
                    let (packet, _) = surb.use_surb(&message).unwrap();
                    prop_assert_eq!(packet.as_bytes().len(), PACKET_LEN);
                    let key = StaticSecret::from([3; 32]);
                    prop_assert!(reply_at(packet.as_bytes(), &key).is_err());
                }
            }

            #[test]
            fn garbage_keys_and_replies_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..=SEALED_REPLY_LEN + 1),
            ) {
                if let Ok(keys) = SurbKeys::from_bytes(&bytes) {
                    let again = keys.to_bytes();
                    prop_assert_eq!(again.as_slice(), bytes.as_slice());
                }
                let _ = SealedReply::from_bytes(&bytes);
                let (hops, _) = route(3);
                let (_, keys) = Surb::build(&hops, &MailboxId([1; 32])).unwrap();
                let mut reply = bytes.clone();
                reply.resize(SEALED_REPLY_LEN, 0);
                reply[..IDENTIFIER_LENGTH].copy_from_slice(&keys.id().0);
                let reply = SealedReply::from_bytes(&reply).unwrap();
                prop_assert!(keys.open(&reply).is_err());
            }
        }
    }
}
