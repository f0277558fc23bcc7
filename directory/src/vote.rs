//! Votes: what one authority saw for an epoch, signed, and the canonical
//! consensus every authority computes from the same votes.
//!
//! Each authority freezes its vote for an epoch at a fixed point of the
//! schedule (see [`crate::server`]), fetches its peers' votes, and computes
//! the consensus with [`consensus_from_votes`]: a node is in only if a
//! majority of *all* authorities (not only those that voted) listed it, with
//! the very same signed descriptor. Authorities holding the same votes
//! compute byte-identical documents, so their signatures add up.

use std::collections::BTreeMap;

use bastet_sphinx::NodeId;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::descriptor::{sig_bytes, signed_bytes};
use crate::{Consensus, Error, Result, SignedDescriptor};

/// Most bytes of an encoded signed vote.
pub const MAX_VOTE_LEN: usize = 1 << 20;
const VOTE_CONTEXT: &[u8] = b"bastet vote v1\0";

/// One authority's view of an epoch: every admitted node's descriptor it
/// received, sorted by node id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The epoch voted on.
    pub epoch: u64,
    /// The voting authority's Ed25519 key.
    pub authority_key: [u8; 32],
    /// Descriptors, sorted by node id, one per node.
    pub nodes: Vec<SignedDescriptor>,
}

/// A vote as exchanged between authorities.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVote {
    /// Canonical (postcard) encoding of the [`Vote`].
    pub body: Vec<u8>,
    /// The voting authority's signature over the body.
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

impl Vote {
    /// The vote of `authority` on `epoch` over `nodes` (any order; one per
    /// node, the first given wins), signed.
    pub fn sign(
        epoch: u64,
        nodes: impl IntoIterator<Item = (NodeId, SignedDescriptor)>,
        authority: &SigningKey,
    ) -> Result<SignedVote> {
        let mut sorted: BTreeMap<NodeId, SignedDescriptor> = BTreeMap::new();
        for (id, d) in nodes {
            sorted.entry(id).or_insert(d);
        }
        let nodes = sorted;
        let vote = Vote {
            epoch,
            authority_key: *authority.verifying_key().as_bytes(),
            nodes: nodes.into_values().collect(),
        };
        let body = postcard::to_stdvec(&vote).map_err(|e| Error::malformed("vote", e))?;
        let signature = authority
            .sign(&signed_bytes(VOTE_CONTEXT, &body))
            .to_bytes();
        Ok(SignedVote { body, signature })
    }
}

impl SignedVote {
    /// Wire encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Parses the wire encoding, refusing anything over [`MAX_VOTE_LEN`].
    /// Does not verify; call [`SignedVote::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_VOTE_LEN {
            return Err(Error::TooLarge {
                what: "vote",
                len: bytes.len(),
                max: MAX_VOTE_LEN,
            });
        }
        postcard::from_bytes(bytes).map_err(|e| Error::malformed("vote", e))
    }

    /// Decodes the body without checking the signature or the
    /// descriptors: for inspection and fuzzing only.
    pub fn decode_unverified(&self) -> Result<Vote> {
        postcard::from_bytes(&self.body).map_err(|e| Error::malformed("vote", e))
    }

    /// Checks that `authority` signed this vote on `epoch`, and that every
    /// descriptor in it verifies, is for `epoch`, and appears once, in order.
    pub fn verify(&self, authority: &VerifyingKey, epoch: u64) -> Result<Vote> {
        authority
            .verify_strict(
                &signed_bytes(VOTE_CONTEXT, &self.body),
                &Signature::from_bytes(&self.signature),
            )
            .map_err(|_| Error::BadSignature("vote"))?;
        let vote: Vote =
            postcard::from_bytes(&self.body).map_err(|e| Error::malformed("vote", e))?;
        if vote.authority_key != *authority.as_bytes() {
            return Err(Error::malformed("vote", "signed by another authority"));
        }
        if vote.epoch != epoch {
            return Err(Error::malformed(
                "vote",
                format!("vote is for epoch {}, expected {epoch}", vote.epoch),
            ));
        }
        let mut previous: Option<NodeId> = None;
        for signed in &vote.nodes {
            let d = signed.verify()?;
            if d.epoch != epoch {
                return Err(Error::malformed(
                    "vote",
                    format!("descriptor for epoch {} in a vote on {epoch}", d.epoch),
                ));
            }
            let id = d.node_id();
            if previous.is_some_and(|p| p >= id) {
                return Err(Error::malformed("vote", "nodes not sorted or duplicated"));
            }
            previous = Some(id);
        }
        Ok(vote)
    }
}

/// Votes needed to put a node in the consensus: a majority of all `n`
/// authorities, ⌊n/2⌋+1.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The canonical consensus of `epoch` from `votes` (at most one per
/// authority, already verified) cast by some of `n_authorities`
/// authorities: each node whose identical signed descriptor is in at least a
/// majority of `n_authorities` votes. A node whose votes disagree on its
/// descriptor is in with the variant most votes carry, and only if that
/// variant alone has a majority. Returns `None` when fewer than a majority
/// of authorities voted: no consensus can be formed then.
pub fn consensus_from_votes(
    epoch: u64,
    epoch_secs: u64,
    votes: &[Vote],
    n_authorities: usize,
) -> Option<Consensus> {
    let needed = majority(n_authorities);
    if votes.len() < needed {
        return None;
    }
    // node -> descriptor variant -> number of votes carrying it. BTreeMaps
    // keyed by bytes keep the outcome independent of the votes' order.
    let mut tally: BTreeMap<NodeId, BTreeMap<Vec<u8>, (usize, SignedDescriptor)>> = BTreeMap::new();
    for vote in votes {
        for signed in &vote.nodes {
            let Ok(d) = signed.verify() else { continue };
            let entry = tally
                .entry(d.node_id())
                .or_default()
                .entry(signed.to_bytes())
                .or_insert((0, signed.clone()));
            entry.0 += 1;
        }
    }
    let mut nodes = Vec::new();
    for (id, variants) in tally {
        // Most votes wins; among equals the smallest encoding, so that every
        // authority picks the same one.
        let best = variants
            .into_iter()
            .max_by(|a, b| a.1.0.cmp(&b.1.0).then_with(|| b.0.cmp(&a.0)));
        if let Some((_, (count, signed))) = best
            && count >= needed
        {
            nodes.push((id, signed));
        }
    }
    Some(Consensus::new(epoch, epoch_secs, nodes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use crate::descriptor::tests::descriptor;

    fn node(i: u8, epoch: u64) -> (NodeId, SignedDescriptor) {
        let k = SigningKey::from_bytes(&[i; 32]);
        let mut d = descriptor(&k, Role::Mix, "DE");
        d.epoch = epoch;
        (d.node_id(), d.sign(&k).unwrap())
    }

    fn authority(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[100 + i; 32])
    }

    fn vote(a: u8, epoch: u64, nodes: &[u8]) -> Vote {
        let key = authority(a);
        let signed = Vote::sign(epoch, nodes.iter().map(|i| node(*i, epoch)), &key).unwrap();
        let parsed = SignedVote::from_bytes(&signed.to_bytes()).unwrap();
        parsed.verify(&key.verifying_key(), epoch).unwrap()
    }

    #[test]
    fn a_node_needs_a_majority_of_all_authorities() {
        // Three authorities: node 1 seen by all, 2 by two, 3 by one.
        let votes = [
            vote(1, 5, &[1, 2, 3]),
            vote(2, 5, &[1, 2]),
            vote(3, 5, &[1]),
        ];
        let c = consensus_from_votes(5, 60, &votes, 3).unwrap();
        let ids: Vec<NodeId> = c
            .nodes
            .iter()
            .map(|s| s.verify().unwrap().node_id())
            .collect();
        let mut expected = vec![node(1, 5).0, node(2, 5).0];
        expected.sort();
        assert_eq!(ids, expected);
        assert_eq!((c.epoch, c.valid_after, c.valid_until), (5, 300, 360));
        // With the first authority silent the two others must both list a
        // node: only node 1 is left.
        let c = consensus_from_votes(5, 60, &votes[1..], 3).unwrap();
        assert_eq!(c.nodes, vec![node(1, 5).1]);
        // One vote of three is not a majority: no consensus at all.
        assert!(consensus_from_votes(5, 60, &votes[2..], 3).is_none());
    }

    #[test]
    fn the_same_votes_in_any_order_give_the_same_bytes() {
        let a = [
            vote(1, 5, &[1, 2, 3]),
            vote(2, 5, &[3, 2]),
            vote(3, 5, &[1, 3]),
        ];
        let b = [a[2].clone(), a[0].clone(), a[1].clone()];
        let ca = consensus_from_votes(5, 60, &a, 3).unwrap();
        let cb = consensus_from_votes(5, 60, &b, 3).unwrap();
        let sign = |c: &Consensus| c.sign(&authority(1)).unwrap().body;
        assert_eq!(sign(&ca), sign(&cb));
        assert_eq!(ca.nodes.len(), 3);
    }

    #[test]
    fn conflicting_descriptors_need_a_majority_for_one_variant() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let mut d = descriptor(&k, Role::Mix, "DE");
        d.epoch = 5;
        let one = d.sign(&k).unwrap();
        d.addr = "127.0.0.1:4444".into();
        let other = d.sign(&k).unwrap();
        let id = d.node_id();
        let v = |a: u8, s: &SignedDescriptor| {
            let key = authority(a);
            Vote::sign(5, [(id, s.clone())], &key)
                .unwrap()
                .verify(&key.verifying_key(), 5)
                .unwrap()
        };
        let split = [v(1, &one), v(2, &other), v(3, &one)];
        let c = consensus_from_votes(5, 60, &split, 3).unwrap();
        assert_eq!(c.nodes, vec![one.clone()]);
        let split = [v(1, &one), v(2, &other)];
        assert!(
            consensus_from_votes(5, 60, &split, 3)
                .unwrap()
                .nodes
                .is_empty()
        );
    }

    #[test]
    fn votes_are_checked_for_signer_epoch_and_order() {
        let key = authority(1);
        let signed = Vote::sign(5, [node(1, 5), node(2, 5)], &key).unwrap();
        assert!(signed.verify(&authority(2).verifying_key(), 5).is_err());
        assert!(signed.verify(&key.verifying_key(), 6).is_err());
        let mut tampered = signed.clone();
        let last = tampered.body.len() - 1;
        tampered.body[last] ^= 1;
        assert!(matches!(
            tampered.verify(&key.verifying_key(), 5),
            Err(Error::BadSignature("vote"))
        ));
        // A descriptor for another epoch smuggled into the vote.
        let wrong = Vote::sign(5, [node(1, 6)], &key).unwrap();
        assert!(wrong.verify(&key.verifying_key(), 5).is_err());
        // Out of order (built by hand, signed correctly).
        let mut nodes = vec![node(1, 5).1, node(2, 5).1];
        nodes.sort_by_key(|s| std::cmp::Reverse(s.verify().unwrap().node_id()));
        let body = postcard::to_stdvec(&Vote {
            epoch: 5,
            authority_key: *key.verifying_key().as_bytes(),
            nodes,
        })
        .unwrap();
        let signature = key.sign(&signed_bytes(VOTE_CONTEXT, &body)).to_bytes();
        let unsorted = SignedVote { body, signature };
        assert!(unsorted.verify(&key.verifying_key(), 5).is_err());
        assert!(matches!(
            SignedVote::from_bytes(&vec![0; MAX_VOTE_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
    }
}
