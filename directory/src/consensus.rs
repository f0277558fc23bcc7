//! The consensus: every node of an epoch, signed by the authorities.

use bastet_sphinx::NodeId;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::descriptor::{sig_bytes, signed_bytes};
use crate::{Descriptor, Error, Result, Role, SignedDescriptor, epoch_bounds};

/// Most bytes of an encoded signed consensus (about 400 nodes).
pub const MAX_CONSENSUS_LEN: usize = 1 << 20;
const CONSENSUS_CONTEXT: &[u8] = b"bastet consensus v1\0";

/// One epoch's network, before signing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consensus {
    /// Epoch number.
    pub epoch: u64,
    /// Not valid before this (unix seconds).
    pub valid_after: u64,
    /// Not valid from this on (unix seconds).
    pub valid_until: u64,
    /// The nodes' signed descriptors, sorted by node id.
    pub nodes: Vec<SignedDescriptor>,
}

impl Consensus {
    /// The canonical consensus of `epoch` over `nodes`: sorted by node id, one
    /// descriptor per node (the first given wins).
    pub fn new(epoch: u64, epoch_secs: u64, nodes: Vec<(NodeId, SignedDescriptor)>) -> Self {
        let mut nodes = nodes;
        nodes.sort_by_key(|n| n.0);
        nodes.dedup_by(|a, b| a.0 == b.0);
        let (valid_after, valid_until) = epoch_bounds(epoch, epoch_secs);
        Consensus {
            epoch,
            valid_after,
            valid_until,
            nodes: nodes.into_iter().map(|(_, d)| d).collect(),
        }
    }

    /// The canonical encoding and one authority's signature over it.
    pub fn sign(&self, authority: &SigningKey) -> Result<SignedConsensus> {
        let body = postcard::to_stdvec(self).map_err(|e| Error::malformed("consensus", e))?;
        let mut signed = SignedConsensus {
            body,
            signatures: Vec::new(),
        };
        signed.add_signature(authority);
        Ok(signed)
    }
}

/// An authority's signature on a consensus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthoritySignature {
    /// The authority's Ed25519 key.
    pub authority_key: [u8; 32],
    /// Its signature over the consensus body.
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

/// A consensus as served: canonical body plus every signature collected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedConsensus {
    /// Canonical (postcard) encoding of the [`Consensus`].
    pub body: Vec<u8>,
    /// Authorities' signatures.
    pub signatures: Vec<AuthoritySignature>,
}

impl SignedConsensus {
    /// Adds `authority`'s signature.
    pub fn add_signature(&mut self, authority: &SigningKey) {
        let signature = authority
            .sign(&signed_bytes(CONSENSUS_CONTEXT, &self.body))
            .to_bytes();
        self.signatures.push(AuthoritySignature {
            authority_key: *authority.verifying_key().as_bytes(),
            signature,
        });
    }

    /// The first signature by `key` that verifies over this body.
    fn valid_signature(&self, key: &VerifyingKey) -> Option<&AuthoritySignature> {
        let message = signed_bytes(CONSENSUS_CONTEXT, &self.body);
        self.signatures.iter().find(|s| {
            s.authority_key == *key.as_bytes()
                && key
                    .verify_strict(&message, &Signature::from_bytes(&s.signature))
                    .is_ok()
        })
    }

    /// The distinct keys of `pinned` whose signatures on this body verify,
    /// in the order of `pinned`. Signatures by other keys count for nothing.
    pub fn signers(&self, pinned: &[VerifyingKey]) -> Vec<VerifyingKey> {
        pinned
            .iter()
            .filter(|key| self.valid_signature(key).is_some())
            .copied()
            .collect()
    }

    /// Keeps one verified signature per key of `pinned`, taken from this
    /// document or from `other` if `other` has the very same body. Returns
    /// how many signers were added (0 when `other` is a different document).
    pub fn merge_signatures(&mut self, other: &SignedConsensus, pinned: &[VerifyingKey]) -> usize {
        let before = self.signers(pinned).len();
        let same = other.body == self.body;
        let merged: Vec<AuthoritySignature> = pinned
            .iter()
            .filter_map(|key| {
                self.valid_signature(key)
                    .or_else(|| same.then(|| other.valid_signature(key)).flatten())
                    .cloned()
            })
            .collect();
        self.signatures = merged;
        self.signatures.len().saturating_sub(before)
    }

    /// Drops every signature that is not a verified one by a key of
    /// `pinned` (one per key).
    pub fn keep_valid_signatures(&mut self, pinned: &[VerifyingKey]) {
        let none = SignedConsensus {
            body: Vec::new(),
            signatures: Vec::new(),
        };
        self.merge_signatures(&none, pinned);
    }

    /// The document, decoded without any check: for inspection only.
    pub fn unverified(&self) -> Result<Consensus> {
        postcard::from_bytes(&self.body).map_err(|e| Error::malformed("consensus", e))
    }

    /// Accepts the consensus only if at least `threshold` distinct keys of
    /// `pinned` signed it, it is valid at `now`, and every descriptor in it
    /// verifies and is for its epoch.
    pub fn verify(
        &self,
        pinned: &[VerifyingKey],
        threshold: usize,
        now: u64,
    ) -> Result<VerifiedConsensus> {
        let signers = self.signers(pinned);
        let required = threshold.max(1);
        if signers.len() < required {
            return Err(Error::NotEnoughSignatures {
                valid: signers.len(),
                required,
            });
        }
        let consensus: Consensus =
            postcard::from_bytes(&self.body).map_err(|e| Error::malformed("consensus", e))?;
        if now < consensus.valid_after || now >= consensus.valid_until {
            return Err(Error::ConsensusNotValidNow {
                epoch: consensus.epoch,
                valid_after: consensus.valid_after,
                valid_until: consensus.valid_until,
                now,
            });
        }
        let mut nodes = Vec::with_capacity(consensus.nodes.len());
        for signed in &consensus.nodes {
            let d = signed.verify()?;
            if d.epoch != consensus.epoch {
                return Err(Error::InvalidField {
                    field: "epoch",
                    why: format!(
                        "descriptor for epoch {} in consensus {}",
                        d.epoch, consensus.epoch
                    ),
                });
            }
            if nodes
                .last()
                .is_some_and(|p: &Descriptor| p.node_id() >= d.node_id())
            {
                return Err(Error::malformed(
                    "consensus",
                    "nodes not sorted or duplicated",
                ));
            }
            nodes.push(d);
        }
        let layers = assign_layers(consensus.epoch, &nodes);
        Ok(VerifiedConsensus {
            epoch: consensus.epoch,
            valid_after: consensus.valid_after,
            valid_until: consensus.valid_until,
            nodes,
            layers,
            signatures: signers.len(),
        })
    }

    /// Wire encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Parses the wire encoding, refusing anything over 1 MiB. Does not
    /// verify; call [`SignedConsensus::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_CONSENSUS_LEN {
            return Err(Error::TooLarge {
                what: "consensus",
                len: bytes.len(),
                max: MAX_CONSENSUS_LEN,
            });
        }
        postcard::from_bytes(bytes).map_err(|e| Error::malformed("consensus", e))
    }
}

/// A consensus whose signatures, validity and descriptors were checked.
#[derive(Clone, Debug)]
pub struct VerifiedConsensus {
    /// Epoch number.
    pub epoch: u64,
    /// Start of validity (unix seconds).
    pub valid_after: u64,
    /// End of validity (unix seconds).
    pub valid_until: u64,
    /// Every node, sorted by node id.
    pub nodes: Vec<Descriptor>,
    /// The layer of each entry of `nodes` (0 for mailbox servers).
    layers: Vec<u8>,
    /// How many pinned authorities signed it.
    pub signatures: usize,
}

/// Mix layers of every route.
pub const MIX_LAYERS: u8 = 3;
const LAYER_CONTEXT: &str = "bastet 2026 layer assignment v2";

/// One per-epoch sort key: BLAKE3 in derive-key mode over a tag, the epoch
/// and a length-prefixed value, so that keys of different kinds never
/// collide.
fn layer_hash(tag: u8, epoch: u64, value: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(LAYER_CONTEXT);
    h.update(&[tag]);
    h.update(&epoch.to_le_bytes());
    h.update(&(value.len() as u64).to_le_bytes());
    h.update(value);
    *h.finalize().as_bytes()
}

/// Assigns the epoch's mixnodes to layers 1..=3.
///
/// The mixes are sorted by jurisdiction, then by operator within a
/// jurisdiction, then by node; the order of jurisdictions, of operators
/// and of nodes is each a per-epoch hash, so it changes every epoch. The
/// sorted list is then dealt out in turn, starting at a per-epoch layer.
/// Dealing in turn keeps layers within one node of each other in size, and
/// because a jurisdiction's mixes (and, within it, an operator's) are
/// consecutive in the list, they land in consecutive layers: a
/// jurisdiction with n mixes has ⌊n/3⌋ or ⌈n/3⌉ of them in every layer, so
/// one with at least 3 mixes has a node in every layer in every epoch, and
/// a route policy the node population can meet is met in every epoch.
///
/// Every party computes the same assignment from the signed document
/// alone, and a node cannot choose its layer: its jurisdiction's and
/// operator's positions are hashes of the epoch, and within them it would
/// have to grind identity keys.
fn assign_layers(epoch: u64, nodes: &[Descriptor]) -> Vec<u8> {
    type SortKey = ([u8; 32], [u8; 32], [u8; 32]);
    let mut mixes: Vec<(SortKey, usize)> = nodes
        .iter()
        .enumerate()
        .filter(|(_, d)| d.role == Role::Mix)
        .map(|(i, d)| {
            let key = (
                layer_hash(b'j', epoch, d.jurisdiction.as_bytes()),
                layer_hash(b'o', epoch, d.operator.as_bytes()),
                layer_hash(b'n', epoch, d.node_id().as_bytes()),
            );
            (key, i)
        })
        .collect();
    mixes.sort();
    let layers_n = usize::from(MIX_LAYERS);
    let offset = usize::from(layer_hash(b's', epoch, &[])[0]) % layers_n;
    let mut layers = vec![0; nodes.len()];
    for (rank, (_, i)) in mixes.into_iter().enumerate() {
        // The remainder is below 3, so the cast cannot truncate.
        layers[i] = ((rank + offset) % layers_n) as u8 + 1;
    }
    layers
}

impl VerifiedConsensus {
    /// A consensus over `nodes` that the caller has verified some other way
    /// (tests, tools reading a document they checked): the layer
    /// assignment is computed exactly as [`SignedConsensus::verify`] does.
    pub fn assume_verified(
        epoch: u64,
        valid_after: u64,
        valid_until: u64,
        mut nodes: Vec<Descriptor>,
        signatures: usize,
    ) -> Self {
        nodes.sort_by_key(Descriptor::node_id);
        let layers = assign_layers(epoch, &nodes);
        VerifiedConsensus {
            epoch,
            valid_after,
            valid_until,
            nodes,
            layers,
            signatures,
        }
    }

    /// The descriptor of `node`, if it is in this epoch.
    pub fn node(&self, node: &NodeId) -> Option<&Descriptor> {
        self.nodes
            .binary_search_by(|d| d.node_id().cmp(node))
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// The mixnodes the consensus put in `layer` (1 to 3).
    pub fn mixes(&self, layer: u8) -> impl Iterator<Item = &Descriptor> {
        self.nodes
            .iter()
            .zip(&self.layers)
            .filter(move |(_, l)| **l == layer)
            .map(|(d, _)| d)
    }

    /// The layer of `node` in this epoch: `Some(1..=3)` for a mixnode.
    pub fn layer_of(&self, node: &NodeId) -> Option<u8> {
        self.nodes
            .binary_search_by(|d| d.node_id().cmp(node))
            .ok()
            .map(|i| self.layers[i])
            .filter(|l| *l > 0)
    }

    /// The mailbox servers.
    pub fn mailboxes(&self) -> impl Iterator<Item = &Descriptor> {
        self.nodes.iter().filter(|d| d.role == Role::Mailbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::tests::descriptor;

    fn signed_consensus(authority: &SigningKey) -> SignedConsensus {
        let nodes = (1..=3u8)
            .map(|i| {
                let k = SigningKey::from_bytes(&[i; 32]);
                let d = descriptor(&k, Role::Mix, "DE");
                (d.node_id(), d.sign(&k).unwrap())
            })
            .collect();
        Consensus::new(7, 100, nodes).sign(authority).unwrap()
    }

    #[test]
    fn consensus_verifies_against_pinned_key_in_its_epoch() {
        let auth = SigningKey::from_bytes(&[42; 32]);
        let signed = signed_consensus(&auth);
        let parsed = SignedConsensus::from_bytes(&signed.to_bytes()).unwrap();
        let v = parsed.verify(&[auth.verifying_key()], 1, 750).unwrap();
        assert_eq!((v.epoch, v.nodes.len(), v.signatures), (7, 3, 1));
        assert_eq!(v.mixes(2).count(), 1);
        let id = v.nodes[1].node_id();
        assert_eq!(v.node(&id).map(Descriptor::node_id), Some(id));
    }

    fn mixes(n: u8) -> Vec<Descriptor> {
        (1..=n)
            .map(|i| descriptor(&SigningKey::from_bytes(&[i; 32]), Role::Mix, "DE"))
            .collect()
    }

    #[test]
    fn layers_are_balanced_deterministic_and_change_with_the_epoch() {
        for n in [1u8, 3, 7, 10] {
            let nodes = mixes(n);
            let layers = assign_layers(5, &nodes);
            assert_eq!(layers, assign_layers(5, &nodes));
            let count = |l| layers.iter().filter(|x| **x == l).count();
            let (max, min) = (
                (1..=3).map(count).max().unwrap(),
                (1..=3).map(count).min().unwrap(),
            );
            assert!(max - min <= 1, "n={n}: {layers:?}");
            assert_eq!(count(0), 0);
        }
        let nodes = mixes(12);
        let changed = (6..20)
            .filter(|e| assign_layers(*e, &nodes) != assign_layers(5, &nodes))
            .count();
        assert!(changed > 10, "the assignment barely moves between epochs");
        let mut with_mailbox = mixes(3);
        with_mailbox.push(descriptor(
            &SigningKey::from_bytes(&[9; 32]),
            Role::Mailbox,
            "CH",
        ));
        assert_eq!(assign_layers(1, &with_mailbox)[3], 0);
    }

    /// Mixes in several jurisdictions and operators: `(jurisdiction,
    /// operator)` for each.
    fn population(spec: &[(&str, &str)]) -> Vec<Descriptor> {
        spec.iter()
            .enumerate()
            .map(|(i, (j, o))| {
                let seed = u8::try_from(i + 1).unwrap();
                let mut d = descriptor(&SigningKey::from_bytes(&[seed; 32]), Role::Mix, j);
                d.operator = (*o).to_string();
                d
            })
            .collect()
    }

    /// How many of the mixes matching `pick` each layer holds.
    fn per_layer(
        nodes: &[Descriptor],
        layers: &[u8],
        pick: impl Fn(&Descriptor) -> bool,
    ) -> [usize; 3] {
        let mut out = [0; 3];
        for (d, l) in nodes.iter().zip(layers) {
            if pick(d) {
                out[usize::from(*l) - 1] += 1;
            }
        }
        out
    }

    #[test]
    fn every_jurisdiction_and_operator_is_spread_over_the_layers_in_every_epoch() {
        // DE: 3 mixes by two operators, CH: 4, IS: 1, NL: 5 by one
        // operator, US: 2; 15 mixes.
        let spec = [
            ("DE", "a"),
            ("DE", "a"),
            ("DE", "b"),
            ("CH", "c"),
            ("CH", "d"),
            ("CH", "e"),
            ("CH", "c"),
            ("IS", "f"),
            ("NL", "g"),
            ("NL", "g"),
            ("NL", "g"),
            ("NL", "g"),
            ("NL", "g"),
            ("US", "h"),
            ("US", "i"),
        ];
        let nodes = population(&spec);
        for epoch in 0..300 {
            let layers = assign_layers(epoch, &nodes);
            let total = per_layer(&nodes, &layers, |_| true);
            assert!(
                total.iter().max().unwrap() - total.iter().min().unwrap() <= 1,
                "epoch {epoch}: layer sizes {total:?}"
            );
            for j in ["DE", "CH", "IS", "NL", "US"] {
                let counts = per_layer(&nodes, &layers, |d| d.jurisdiction == j);
                let n: usize = counts.iter().sum();
                for c in counts {
                    assert!(
                        c == n / 3 || c == n.div_ceil(3),
                        "epoch {epoch}: {j}'s {n} mixes dealt {counts:?}"
                    );
                }
                if n >= 3 {
                    assert!(
                        counts.iter().all(|c| *c > 0),
                        "epoch {epoch}: {j} misses a layer"
                    );
                }
            }
            // An operator's mixes within one jurisdiction are spread too.
            for (j, o) in [("NL", "g"), ("CH", "c"), ("DE", "a")] {
                let counts = per_layer(&nodes, &layers, |d| d.jurisdiction == j && d.operator == o);
                assert!(
                    counts.iter().all(|c| *c <= 2)
                        && counts.iter().filter(|c| **c > 0).count()
                            >= counts.iter().sum::<usize>().min(3),
                    "epoch {epoch}: operator {o} in {j} dealt {counts:?}"
                );
            }
        }
    }

    #[test]
    fn a_node_moves_between_layers_across_epochs() {
        let spec = [
            ("DE", "a"),
            ("DE", "b"),
            ("DE", "c"),
            ("CH", "d"),
            ("CH", "e"),
            ("CH", "f"),
        ];
        let nodes = population(&spec);
        let mut seen = [0usize; 3];
        for epoch in 0..60 {
            seen[usize::from(assign_layers(epoch, &nodes)[0]) - 1] += 1;
        }
        assert!(
            seen.iter().all(|n| *n >= 5),
            "node 0's layers over 60 epochs: {seen:?}"
        );
    }

    #[test]
    fn forged_unpinned_or_expired_consensus_is_rejected() {
        let auth = SigningKey::from_bytes(&[42; 32]);
        let pinned = [auth.verifying_key()];
        let mut forged = signed_consensus(&auth);
        forged.signatures[0].signature[3] ^= 0x10;
        assert!(matches!(
            forged.verify(&pinned, 1, 750),
            Err(Error::NotEnoughSignatures { valid: 0, .. })
        ));

        let rogue = SigningKey::from_bytes(&[43; 32]);
        assert!(matches!(
            signed_consensus(&rogue).verify(&pinned, 1, 750),
            Err(Error::NotEnoughSignatures { .. })
        ));

        let mut two = signed_consensus(&auth);
        two.add_signature(&rogue);
        assert!(matches!(
            two.verify(
                &[
                    auth.verifying_key(),
                    SigningKey::from_bytes(&[44; 32]).verifying_key()
                ],
                2,
                750
            ),
            Err(Error::NotEnoughSignatures {
                valid: 1,
                required: 2
            })
        ));

        let ok = signed_consensus(&auth);
        assert!(matches!(
            ok.verify(&pinned, 1, 800),
            Err(Error::ConsensusNotValidNow { .. })
        ));
        assert!(matches!(
            ok.verify(&pinned, 1, 699),
            Err(Error::ConsensusNotValidNow { .. })
        ));
    }

    #[test]
    fn tampered_body_fails_even_with_signature_count_met() {
        let auth = SigningKey::from_bytes(&[42; 32]);
        let mut signed = signed_consensus(&auth);
        let last = signed.body.len() - 1;
        signed.body[last] ^= 1;
        assert!(signed.verify(&[auth.verifying_key()], 1, 750).is_err());
    }
}
