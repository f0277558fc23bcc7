//! The final hop, sans IO: removes the last Sphinx layer, refuses replays
//! and packets that are not for a mailbox, discards cover addressed to
//! [`MailboxId::DROP`], reads the sender's final payload (the fragment to
//! store, the ack request to honour once it is stored), and turns an ack
//! request into the packet to send back.

use std::collections::BTreeMap;

use bastet_directory::{EpochKey, VerifiedConsensus};
use bastet_link::Peer;
use bastet_sphinx::{
    AckRequest, FinalPayload, MailboxId, Packet, Prepared, Processed, ReplayFilter, SphinxSecretKey,
};

/// A packet this hop accepted: what to store, for whom, and what to do
/// once it is stored; or cover, which is not stored at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// A forward packet: store the fragment for `mailbox`'s owner, then
    /// send the ack if the sender asked for one.
    Message {
        /// The recipient's mailbox.
        mailbox: MailboxId,
        /// The fragment bytes, still end-to-end encrypted.
        fragment: Vec<u8>,
        /// The sender's ack request.
        ack: Option<AckRequest>,
    },
    /// A SURB reply (an ack) for `mailbox`'s owner, who created the SURB:
    /// stored like a message, as [`bastet_sphinx::SealedReply::to_bytes`]
    /// (longer than any fragment, so the owner tells the two apart).
    Reply {
        /// The SURB creator's mailbox.
        mailbox: MailboxId,
        /// The sealed reply.
        sealed: Vec<u8>,
    },
    /// Cover traffic: a packet addressed to [`MailboxId::DROP`] (client
    /// drop cover, mixnode cover). It authenticated and was not a replay;
    /// it is never stored. Its payload is read only for an ack request:
    /// a mixnode's cover loop is a [`FinalPayload`] whose ack SURB leads
    /// back to the mixnode, and is acked like a stored fragment; client
    /// drop cover (random bytes) parses as none and is not acked.
    Cover {
        /// The ack request of a mixnode's cover loop, to send as it is.
        ack: Option<AckRequest>,
    },
}

impl Opened {
    /// The mailbox to store into and the bytes to store there; `None` for
    /// [`Opened::Cover`], which is not stored.
    pub fn to_store(&self) -> Option<(MailboxId, &[u8])> {
        match self {
            Opened::Message {
                mailbox, fragment, ..
            } => Some((*mailbox, fragment)),
            Opened::Reply { mailbox, sealed } => Some((*mailbox, sealed)),
            Opened::Cover { .. } => None,
        }
    }
}

/// Why an ack was not sent. The fragment is stored all the same; the
/// sender retransmits it and the recipient drops the duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckDropped {
    /// No valid consensus to check the SURB's first hop against.
    NoConsensus,
    /// The SURB's first hop is not a layer-1 mix of the current consensus:
    /// a mailbox server never sends into the network anywhere else.
    BadFirstHop,
    /// The SURB did not seal the ack.
    BadSurb,
    /// The queue to the first hop is full.
    QueueFull,
}

impl AckDropped {
    /// Label for the `acks_dropped` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            AckDropped::NoConsensus => "no_consensus",
            AckDropped::BadFirstHop => "bad_first_hop",
            AckDropped::BadSurb => "bad_surb",
            AckDropped::QueueFull => "queue_full",
        }
    }
}

/// The ack packet for a stored fragment and the layer-1 mix to send it to.
/// Checks the SURB's first hop against `consensus` before any work.
pub fn ack_packet(
    ack: &AckRequest,
    consensus: Option<&VerifiedConsensus>,
) -> Result<(Peer, Packet), AckDropped> {
    let consensus = consensus.ok_or(AckDropped::NoConsensus)?;
    let first_hop = ack.surb.first_hop();
    if consensus.layer_of(&first_hop) != Some(1) {
        return Err(AckDropped::BadFirstHop);
    }
    let descriptor = consensus.node(&first_hop).ok_or(AckDropped::BadFirstHop)?;
    let (packet, to) = ack
        .surb
        .clone()
        .use_surb(&ack.id.to_ack_body())
        .map_err(|_| AckDropped::BadSurb)?;
    if to != first_hop {
        return Err(AckDropped::BadSurb);
    }
    Ok((
        Peer {
            node: first_hop,
            addr: descriptor.addr.clone(),
            pin: descriptor.pin(),
        },
        packet,
    ))
}

/// Why a packet was dropped before reaching the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Its replay tag was seen before under the same Sphinx key.
    Replay,
    /// It authenticates under one of this node's keys but does not decode.
    Malformed,
    /// It is not exactly one packet long.
    WrongLength,
    /// It asks to be forwarded, but a mailbox server is the last hop.
    NotFinalHop,
    /// Its header authenticates under none of the Sphinx keys this node
    /// processes with now (current, next, previous in grace): built for an
    /// erased or unknown epoch's key or another node's, or corrupted.
    UnknownKey,
}

impl Rejected {
    /// Label for the `packets_dropped` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::Replay => "replay",
            Rejected::Malformed => "malformed",
            Rejected::WrongLength => "wrong_length",
            Rejected::NotFinalHop => "not_final_hop",
            Rejected::UnknownKey => "unknown_key",
        }
    }
}

/// The last Sphinx hop of this mailbox server: the keys in force, in the
/// order to try them, and one replay filter per key.
pub struct FinalHop {
    keys: Vec<EpochKey>,
    /// One filter per key held, by epoch; dropped with its key.
    replay: BTreeMap<u64, ReplayFilter>,
    replay_capacity: usize,
}

impl FinalHop {
    /// A final hop for packets built for any of `keys` (tried in order),
    /// each key's filter remembering about `replay_capacity` packets per
    /// generation.
    pub fn new(keys: Vec<EpochKey>, replay_capacity: usize) -> Result<Self, String> {
        let mut hop = FinalHop {
            keys: Vec::new(),
            replay: BTreeMap::new(),
            replay_capacity,
        };
        hop.set_keys(keys)?;
        Ok(hop)
    }

    /// Replaces the keys in force (see `SphinxKeyRing::processing_keys`). A
    /// key kept keeps its replay filter, a new key gets an empty one, and
    /// the filter of a key no longer given is dropped with it.
    pub fn set_keys(&mut self, keys: Vec<EpochKey>) -> Result<(), String> {
        let mut replay = BTreeMap::new();
        for k in &keys {
            let filter = match self.replay.remove(&k.epoch) {
                Some(kept) => kept,
                None => ReplayFilter::new(self.replay_capacity)?,
            };
            replay.insert(k.epoch, filter);
        }
        self.replay = replay;
        self.keys = keys;
        Ok(())
    }

    /// Replay tags in the fullest filter's current generation.
    pub fn replay_entries(&self) -> usize {
        self.replay
            .values()
            .map(ReplayFilter::len)
            .max()
            .unwrap_or(0)
    }

    /// The epochs whose key (and replay filter) this hop holds.
    pub fn key_epochs(&self) -> Vec<u64> {
        self.replay.keys().copied().collect()
    }

    /// Opens one received packet: what to store, for whom, and the ack
    /// request if any. A forward packet whose message is not a
    /// [`FinalPayload`] is `Malformed`. A packet addressed to
    /// [`MailboxId::DROP`] is [`Opened::Cover`] once it has authenticated and
    /// passed the replay filter (a replayed cover packet is a `Replay`),
    /// with the ack request of its payload if that parses as a
    /// [`FinalPayload`] asking for one (a mixnode's cover loop); otherwise
    /// (client drop cover, a SURB reply to DROP) without.
    pub fn open(&mut self, bytes: &[u8]) -> Result<Opened, Rejected> {
        let secrets: Vec<&SphinxSecretKey> = self.keys.iter().map(|k| &k.secret).collect();
        let (index, prepared) = Prepared::with_keys(bytes, &secrets).map_err(classify)?;
        let epoch = self
            .keys
            .get(index)
            .map(|k| k.epoch)
            .ok_or(Rejected::UnknownKey)?;
        let tag = prepared.replay_tag();
        // Authenticate before touching the filter: junk must not be able to
        // fill it and push real tags out.
        let processed = prepared.process().map_err(classify)?;
        let replay = self.replay.get_mut(&epoch).ok_or(Rejected::UnknownKey)?;
        if replay.check_and_insert(&tag) {
            return Err(Rejected::Replay);
        }
        match processed {
            Processed::Deliver { mailbox, message } if mailbox.is_drop() => Ok(Opened::Cover {
                ack: FinalPayload::from_bytes(&message)
                    .ok()
                    .and_then(|payload| payload.ack().cloned()),
            }),
            Processed::Reply { mailbox, .. } if mailbox.is_drop() => {
                Ok(Opened::Cover { ack: None })
            }
            Processed::Deliver { mailbox, message } => {
                let payload =
                    FinalPayload::from_bytes(&message).map_err(|_| Rejected::Malformed)?;
                Ok(Opened::Message {
                    mailbox,
                    fragment: payload.fragment_bytes().to_vec(),
                    ack: payload.ack().cloned(),
                })
            }
            Processed::Reply { mailbox, reply } => Ok(Opened::Reply {
                mailbox,
                sealed: reply.to_bytes(),
            }),
            Processed::Forward { .. } => Err(Rejected::NotFinalHop),
        }
    }
}

fn classify(e: bastet_sphinx::Error) -> Rejected {
    match e {
        bastet_sphinx::Error::WrongPacketLength { .. } => Rejected::WrongLength,
        bastet_sphinx::Error::UnknownKey => Rejected::UnknownKey,
        _ => Rejected::Malformed,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use bastet_directory::{Descriptor, Role, SphinxKeyRing, sphinx_key_path};
    use bastet_sphinx::{
        AckId, Fragment, Hop, NodeId, SEALED_REPLY_LEN, SealedReply, SphinxPublicKey, Surb, build,
        fragment,
    };

    use super::*;

    /// One fragment's final payload, without an ack request.
    fn final_payload(text: &[u8]) -> (Fragment, Vec<u8>) {
        let f = fragment(text, &mut rand::rng()).unwrap().remove(0);
        let bytes = FinalPayload::new(None, &f).to_bytes();
        (f, bytes)
    }

    fn stored(mailbox: MailboxId, f: &Fragment) -> Opened {
        Opened::Message {
            mailbox,
            fragment: f.to_bytes(),
            ack: None,
        }
    }

    fn hop(i: u8) -> (Hop, SphinxSecretKey) {
        let key = SphinxSecretKey::from([i; 32]);
        let hop = Hop {
            node: NodeId([i; 32]),
            sphinx_key: SphinxPublicKey::from(&key),
            delay: Duration::ZERO,
        };
        (hop, key)
    }

    fn one_key(key: SphinxSecretKey) -> Vec<EpochKey> {
        vec![EpochKey {
            epoch: 0,
            secret: key,
        }]
    }

    #[test]
    fn delivers_once_and_drops_replays_forwards_and_garbage() {
        let (me, key) = hop(1);
        let (other, _) = hop(2);
        let mailbox = MailboxId([5; 32]);
        let mut final_hop = FinalHop::new(one_key(key), 1000).unwrap();
        let (f, hi) = final_payload(b"hi");
        let packet = build(std::slice::from_ref(&me), &mailbox, &hi).unwrap();
        assert_eq!(final_hop.open(packet.as_bytes()), Ok(stored(mailbox, &f)));
        assert_eq!(final_hop.open(packet.as_bytes()), Err(Rejected::Replay));

        // A message that is not a final payload is malformed.
        let raw = build(std::slice::from_ref(&me), &mailbox, b"hi").unwrap();
        assert_eq!(final_hop.open(raw.as_bytes()), Err(Rejected::Malformed));

        let onward = build(&[me, other.clone()], &mailbox, &hi).unwrap();
        assert_eq!(
            final_hop.open(onward.as_bytes()),
            Err(Rejected::NotFinalHop)
        );

        let mut garbage = build(&[hop(1).0], &mailbox, b"x")
            .unwrap()
            .as_bytes()
            .to_vec();
        garbage[100] ^= 1;
        assert_eq!(final_hop.open(&garbage), Err(Rejected::UnknownKey));
        assert_eq!(final_hop.open(&garbage[1..]), Err(Rejected::WrongLength));
        let for_another = build(&[other], &mailbox, b"x").unwrap();
        assert_eq!(
            final_hop.open(for_another.as_bytes()),
            Err(Rejected::UnknownKey)
        );
    }

    #[test]
    fn drop_cover_is_opened_as_cover_unparsed_and_its_replay_is_a_replay() {
        use rand::RngExt;
        let (me, key) = hop(1);
        let mut final_hop = FinalHop::new(one_key(key), 1000).unwrap();
        // Random bytes, as drop cover carries: no final payload in them.
        let mut random = vec![0u8; bastet_sphinx::MAX_MESSAGE_LEN];
        rand::rng().fill(&mut random[..]);
        assert!(FinalPayload::from_bytes(&random).is_err());
        let cover = build(std::slice::from_ref(&me), &MailboxId::DROP, &random).unwrap();
        let opened = final_hop.open(cover.as_bytes());
        assert_eq!(opened, Ok(Opened::Cover { ack: None }));
        assert_eq!(opened.unwrap().to_store(), None);
        assert_eq!(final_hop.open(cover.as_bytes()), Err(Rejected::Replay));
        // A well-formed final payload addressed to DROP is cover all the same.
        let (_, hi) = final_payload(b"hi");
        let cover = build(std::slice::from_ref(&me), &MailboxId::DROP, &hi).unwrap();
        assert_eq!(
            final_hop.open(cover.as_bytes()),
            Ok(Opened::Cover { ack: None })
        );
        // With an ack request (a mixnode's cover loop), the request comes
        // out to be honoured, and still nothing is stored.
        let (surb, _) = Surb::build(std::slice::from_ref(&me), &MailboxId([3; 32])).unwrap();
        let ack = AckRequest {
            id: AckId([2; 16]),
            surb,
        };
        let f = fragment(b"loop", &mut rand::rng()).unwrap().remove(0);
        let asking = FinalPayload::new(Some(ack.clone()), &f).to_bytes();
        let cover = build(std::slice::from_ref(&me), &MailboxId::DROP, &asking).unwrap();
        let opened = final_hop.open(cover.as_bytes()).unwrap();
        assert_eq!(opened, Opened::Cover { ack: Some(ack) });
        assert_eq!(opened.to_store(), None);
        assert_eq!(final_hop.open(cover.as_bytes()), Err(Rejected::Replay));
        // A SURB reply someone addressed to DROP is cover without an ack.
        let (surb, _) = Surb::build(std::slice::from_ref(&me), &MailboxId::DROP).unwrap();
        let (reply, _) = surb.use_surb(&AckId([1; 16]).to_ack_body()).unwrap();
        assert_eq!(
            final_hop.open(reply.as_bytes()),
            Ok(Opened::Cover { ack: None })
        );
    }

    #[test]
    fn the_previous_key_delivers_through_grace_then_its_packets_are_unknown_key() {
        const EPOCH: u64 = 60;
        const GRACE: u64 = 15;
        let tmp = tempfile::tempdir().unwrap();
        let mut ring = SphinxKeyRing::open(tmp.path(), EPOCH, GRACE).unwrap();
        let rotate = |ring: &mut SphinxKeyRing, hop: &mut FinalHop, now: u64| {
            ring.rotate(now).unwrap();
            hop.set_keys(ring.processing_keys(now)).unwrap();
        };
        ring.rotate(5 * EPOCH + 40).unwrap();
        let mut final_hop = FinalHop::new(ring.processing_keys(5 * EPOCH + 40), 1000).unwrap();
        let mailbox = MailboxId([6; 32]);
        let for_epoch = |ring: &SphinxKeyRing, epoch: u64, message: &[u8]| {
            let me = Hop {
                node: NodeId([1; 32]),
                sphinx_key: ring.public(epoch).unwrap(),
                delay: Duration::ZERO,
            };
            let (f, payload) = final_payload(message);
            (build(&[me], &mailbox, &payload).unwrap(), f)
        };
        let (old, old_fragment) = for_epoch(&ring, 5, b"old");
        let (late, _) = for_epoch(&ring, 5, b"late");

        // Epoch 6, in grace: the previous key still delivers, once.
        rotate(&mut ring, &mut final_hop, 6 * EPOCH);
        assert_eq!(final_hop.key_epochs(), [5, 6, 7]);
        assert_eq!(
            final_hop.open(old.as_bytes()),
            Ok(stored(mailbox, &old_fragment))
        );
        rotate(&mut ring, &mut final_hop, 6 * EPOCH + GRACE - 1);
        assert_eq!(final_hop.open(old.as_bytes()), Err(Rejected::Replay));
        let (current, _) = for_epoch(&ring, 6, b"current");
        assert!(final_hop.open(current.as_bytes()).is_ok());

        // Grace over: key, file and replay filter are gone.
        rotate(&mut ring, &mut final_hop, 6 * EPOCH + GRACE);
        assert_eq!(final_hop.key_epochs(), [6, 7]);
        assert!(!sphinx_key_path(tmp.path(), 5).exists());
        assert_eq!(final_hop.open(late.as_bytes()), Err(Rejected::UnknownKey));
        assert_eq!(final_hop.open(old.as_bytes()), Err(Rejected::UnknownKey));
        // The current key's filter was kept through it all.
        assert_eq!(final_hop.open(current.as_bytes()), Err(Rejected::Replay));
    }

    fn mix(i: u8) -> (Descriptor, SphinxSecretKey) {
        let key = SphinxSecretKey::from([i; 32]);
        let d = Descriptor {
            identity_key: [i; 32],
            epoch: 1,
            sphinx_key: SphinxPublicKey::from(&key).to_bytes(),
            tls_pin: [i; 32],
            addr: format!("127.0.0.1:{}", 7000 + u16::from(i)),
            api_addr: None,
            circuit_addr: None,
            role: Role::Mix,
            jurisdiction: "DE".into(),
            operator: "Org".into(),
        };
        (d, key)
    }

    fn hop_of(d: &Descriptor, delay_ms: u64) -> Hop {
        Hop {
            node: d.node_id(),
            sphinx_key: d.sphinx_public(),
            delay: Duration::from_millis(delay_ms),
        }
    }

    #[test]
    fn an_ack_goes_to_the_layer_one_mix_and_reaches_the_sender_as_a_reply() {
        let (mixes, keys): (Vec<_>, Vec<_>) = (11..=13).map(mix).unzip();
        let consensus = VerifiedConsensus::assume_verified(1, 0, u64::MAX, mixes.clone(), 1);
        // The consensus deals the three mixes out to the three layers.
        let by_layer: Vec<usize> = (1..=3)
            .map(|l| {
                (0..3)
                    .find(|&i| consensus.layer_of(&mixes[i].node_id()) == Some(l))
                    .unwrap()
            })
            .collect();
        let (sender_server, sender_key) = hop(40);
        let sender_mailbox = MailboxId([41; 32]);
        let mut reply_route: Vec<Hop> = by_layer.iter().map(|&i| hop_of(&mixes[i], 5)).collect();
        reply_route.push(sender_server);
        let (surb, surb_keys) = Surb::build(&reply_route, &sender_mailbox).unwrap();
        let ack = AckRequest {
            id: AckId([42; 16]),
            surb,
        };

        // The recipient's server opens the fragment with its ack request.
        let (me, key) = hop(1);
        let recipient = MailboxId([5; 32]);
        let f = fragment(b"acked", &mut rand::rng()).unwrap().remove(0);
        let payload = FinalPayload::new(Some(ack.clone()), &f).to_bytes();
        let packet = build(&[me], &recipient, &payload).unwrap();
        let mut final_hop = FinalHop::new(one_key(key), 1000).unwrap();
        let opened = final_hop.open(packet.as_bytes()).unwrap();
        assert_eq!(
            opened,
            Opened::Message {
                mailbox: recipient,
                fragment: f.to_bytes(),
                ack: Some(ack.clone()),
            }
        );

        // The ack goes to the layer-1 mix, crosses the layers and ends in
        // the sender's mailbox as a reply only the sender reads.
        let (peer, mut ack_packet_bytes) = ack_packet(&ack, Some(&consensus)).unwrap();
        assert_eq!(peer.node, mixes[by_layer[0]].node_id());
        assert_eq!(peer.addr, mixes[by_layer[0]].addr);
        for &i in &by_layer {
            match Prepared::new(ack_packet_bytes.as_bytes(), &keys[i])
                .unwrap()
                .process()
                .unwrap()
            {
                Processed::Forward { packet, .. } => ack_packet_bytes = packet,
                other => panic!("mix {i}: {other:?}"),
            }
        }
        let mut sender_hop = FinalHop::new(one_key(sender_key), 1000).unwrap();
        let Opened::Reply { mailbox, sealed } =
            sender_hop.open(ack_packet_bytes.as_bytes()).unwrap()
        else {
            panic!("expected a reply");
        };
        assert_eq!(mailbox, sender_mailbox);
        assert_eq!(sealed.len(), SEALED_REPLY_LEN);
        let body = surb_keys
            .open(&SealedReply::from_bytes(&sealed).unwrap())
            .unwrap();
        assert_eq!(AckId::from_ack_body(&body).unwrap(), ack.id);
        // Replayed, the reply is dropped like any packet.
        assert_eq!(
            sender_hop.open(ack_packet_bytes.as_bytes()),
            Err(Rejected::Replay)
        );
    }

    #[test]
    fn an_ack_whose_first_hop_is_not_a_layer_one_mix_is_not_sent() {
        let (mixes, _): (Vec<_>, Vec<_>) = (11..=13).map(mix).unzip();
        let consensus = VerifiedConsensus::assume_verified(1, 0, u64::MAX, mixes.clone(), 1);
        let (server, _) = hop(40);
        let surb_from = |first: Hop| {
            let route = vec![first, server.clone()];
            AckRequest {
                id: AckId([1; 16]),
                surb: Surb::build(&route, &MailboxId([2; 32])).unwrap().0,
            }
        };
        for d in &mixes {
            let ack = surb_from(hop_of(d, 0));
            let layer = consensus.layer_of(&d.node_id()).unwrap();
            let got = ack_packet(&ack, Some(&consensus)).map(|(peer, _)| peer.node);
            if layer == 1 {
                assert_eq!(got, Ok(d.node_id()));
            } else {
                assert_eq!(got, Err(AckDropped::BadFirstHop), "layer {layer}");
            }
            assert_eq!(
                ack_packet(&ack, None).map(|(p, _)| p.node),
                Err(AckDropped::NoConsensus)
            );
        }
        // A node the consensus does not list at all (here: straight to a
        // mailbox server), the classic reflection attempt.
        let stranger = surb_from(hop(77).0);
        assert_eq!(
            ack_packet(&stranger, Some(&consensus)).map(|(p, _)| p.node),
            Err(AckDropped::BadFirstHop)
        );
    }
}
