//! What an authority does with a peer's vote and a peer's consensus
//! document fetched over the network: the outer encodings as received, any
//! vote body as if the pinned peer had signed it (so the fuzzer reaches the
//! body and descriptor decoders), the consensus computed from such votes,
//! and the signature merge of a fetched document into a held one.
#![no_main]

use bastet_directory::{SignedConsensus, SignedVote, SigningKey, Vote, consensus_from_votes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let peer = SigningKey::from_bytes(&[2u8; 32]);
    let pinned = [peer.verifying_key()];
    if let Ok(v) = SignedVote::from_bytes(data) {
        let _ = v.verify(&pinned[0], 7);
    }
    // Any body, correctly signed by the pinned peer.
    if let Ok(v) = Vote::sign(7, [], &peer) {
        let forged = SignedVote {
            body: data.to_vec(),
            signature: v.signature,
        };
        let _ = forged.verify(&pinned[0], 7);
        if let Ok(vote) = postcard_vote(data) {
            let _ = consensus_from_votes(7, 60, &[vote.clone(), vote], 3);
        }
    }
    if let Ok(theirs) = SignedConsensus::from_bytes(data) {
        let mut held = SignedConsensus {
            body: theirs.body.clone(),
            signatures: Vec::new(),
        };
        held.add_signature(&peer);
        let _ = held.merge_signatures(&theirs, &pinned);
        let _ = held.signers(&pinned);
        let _ = held.unverified();
    }
});

/// A vote body decoded without its signature check, as the consensus
/// computation sees verified votes.
fn postcard_vote(data: &[u8]) -> Result<Vote, ()> {
    let signed = SignedVote {
        body: data.to_vec(),
        signature: [0; 64],
    };
    // Only the decoder: the signature is not what is fuzzed here.
    signed.decode_unverified().map_err(|_| ())
}
