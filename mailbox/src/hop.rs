//! The final hop, sans IO: removes the last Sphinx layer and refuses
//! replays and packets that are not for a mailbox.

use bastet_sphinx::{MailboxId, Prepared, Processed, ReplayFilter, SphinxSecretKey};

/// Why a packet was dropped before reaching the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Its replay tag was seen before.
    Replay,
    /// It does not decode or authenticate under this node's key.
    Malformed,
    /// It is not exactly one packet long.
    WrongLength,
    /// It asks to be forwarded, but a mailbox server is the last hop.
    NotFinalHop,
}

impl Rejected {
    /// Label for the `packets_dropped` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::Replay => "replay",
            Rejected::Malformed => "malformed",
            Rejected::WrongLength => "wrong_length",
            Rejected::NotFinalHop => "not_final_hop",
        }
    }
}

/// The last Sphinx hop of this mailbox server.
pub struct FinalHop {
    key: SphinxSecretKey,
    replay: ReplayFilter,
}

impl FinalHop {
    /// A final hop for Sphinx key `key` remembering about
    /// `replay_capacity` packets per filter generation.
    pub fn new(key: SphinxSecretKey, replay_capacity: usize) -> Result<Self, String> {
        Ok(FinalHop {
            key,
            replay: ReplayFilter::new(replay_capacity)?,
        })
    }

    /// Opens one received packet: the mailbox and the payload to store.
    pub fn open(&mut self, bytes: &[u8]) -> Result<(MailboxId, Vec<u8>), Rejected> {
        let prepared = Prepared::new(bytes, &self.key).map_err(classify)?;
        let tag = prepared.replay_tag();
        // Authenticate before touching the filter: junk must not be able to
        // fill it and push real tags out.
        let processed = prepared.process().map_err(classify)?;
        if self.replay.check_and_insert(&tag) {
            return Err(Rejected::Replay);
        }
        match processed {
            Processed::Deliver { mailbox, message } => Ok((mailbox, message)),
            Processed::Forward { .. } => Err(Rejected::NotFinalHop),
        }
    }
}

fn classify(e: bastet_sphinx::Error) -> Rejected {
    match e {
        bastet_sphinx::Error::WrongPacketLength { .. } => Rejected::WrongLength,
        _ => Rejected::Malformed,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

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

    #[test]
    fn delivers_once_and_drops_replays_forwards_and_garbage() {
        let (me, key) = hop(1);
        let (other, _) = hop(2);
        let mailbox = MailboxId([5; 32]);
        let mut final_hop = FinalHop::new(key, 1000).unwrap();
        let packet = build(std::slice::from_ref(&me), &mailbox, b"hi").unwrap();
        assert_eq!(
            final_hop.open(packet.as_bytes()),
            Ok((mailbox, b"hi".to_vec()))
        );
        assert_eq!(final_hop.open(packet.as_bytes()), Err(Rejected::Replay));

        let onward = build(&[me, other], &mailbox, b"hi").unwrap();
        assert_eq!(
            final_hop.open(onward.as_bytes()),
            Err(Rejected::NotFinalHop)
        );

        let mut garbage = build(&[hop(1).0], &mailbox, b"x")
            .unwrap()
            .as_bytes()
            .to_vec();
        garbage[100] ^= 1;
        assert_eq!(final_hop.open(&garbage), Err(Rejected::Malformed));
        assert_eq!(final_hop.open(&garbage[1..]), Err(Rejected::WrongLength));
    }
}
