//! What a client or node does with a consensus document from the network:
//! the outer document as received, and any body as if a pinned authority had
//! signed it (so the fuzzer reaches the body and descriptor decoders).
#![no_main]

use bastet_directory::{SignedConsensus, SigningKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let authority = SigningKey::from_bytes(&[1u8; 32]);
    let pinned = [authority.verifying_key()];
    if let Ok(c) = SignedConsensus::from_bytes(data) {
        let _ = c.verify(&pinned, 1, 1_800_000_000);
    }
    let mut signed = SignedConsensus {
        body: data.to_vec(),
        signatures: Vec::new(),
    };
    signed.add_signature(&authority);
    let _ = signed.verify(&pinned, 1, 1_800_000_000);
});
