//! The final hop, sans IO: removes the last Sphinx layer and refuses
//! replays and packets that are not for a mailbox.

use std::collections::BTreeMap;

use bastet_directory::EpochKey;
use bastet_sphinx::{MailboxId, Prepared, Processed, ReplayFilter, SphinxSecretKey};

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

    /// The epochs whose key (and replay filter) this hop holds.
    pub fn key_epochs(&self) -> Vec<u64> {
        self.replay.keys().copied().collect()
    }

    /// Opens one received packet: the mailbox and the payload to store.
    pub fn open(&mut self, bytes: &[u8]) -> Result<(MailboxId, Vec<u8>), Rejected> {
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
            Processed::Deliver { mailbox, message } => Ok((mailbox, message)),
            // Replies (acks) are not stored yet.
            Processed::Reply { .. } => Err(Rejected::Malformed),
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

    use bastet_directory::{SphinxKeyRing, sphinx_key_path};
    use bastet_sphinx::{Hop, NodeId, SphinxPublicKey, build};

    use super::*;

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
        let packet = build(std::slice::from_ref(&me), &mailbox, b"hi").unwrap();
        assert_eq!(
            final_hop.open(packet.as_bytes()),
            Ok((mailbox, b"hi".to_vec()))
        );
        assert_eq!(final_hop.open(packet.as_bytes()), Err(Rejected::Replay));

        let onward = build(&[me, other.clone()], &mailbox, b"hi").unwrap();
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
            build(&[me], &mailbox, message).unwrap()
        };
        let old = for_epoch(&ring, 5, b"old");
        let late = for_epoch(&ring, 5, b"late");

        // Epoch 6, in grace: the previous key still delivers, once.
        rotate(&mut ring, &mut final_hop, 6 * EPOCH);
        assert_eq!(final_hop.key_epochs(), [5, 6, 7]);
        assert_eq!(
            final_hop.open(old.as_bytes()),
            Ok((mailbox, b"old".to_vec()))
        );
        rotate(&mut ring, &mut final_hop, 6 * EPOCH + GRACE - 1);
        assert_eq!(final_hop.open(old.as_bytes()), Err(Rejected::Replay));
        let current = for_epoch(&ring, 6, b"current");
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
}
