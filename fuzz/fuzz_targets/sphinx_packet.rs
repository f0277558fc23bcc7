//! A relay's view of any bytes a peer sends as a packet: arbitrary frames
//! (which almost never authenticate), and frames whose header is a valid
//! one for this relay's key followed by arbitrary payload bytes (the header
//! MAC does not cover the payload), so the fuzzer reaches payload
//! decryption and unpadding at a forwarding and at a final hop.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bastet_sphinx::{
    Hop, MailboxId, NodeId, PACKET_LEN, PAYLOAD_SIZE, Prepared, SphinxPublicKey, SphinxSecretKey,
    build_with_secret,
};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [7; 32];

/// Headers of a packet for which this relay is the last hop, and of one it
/// forwards.
fn headers() -> &'static [Vec<u8>] {
    static H: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    H.get_or_init(|| {
        let me = Hop {
            node: NodeId([1; 32]),
            sphinx_key: SphinxPublicKey::from(&SphinxSecretKey::from(KEY)),
            delay: Duration::from_millis(5),
        };
        let next = Hop {
            node: NodeId([2; 32]),
            sphinx_key: SphinxPublicKey::from(&SphinxSecretKey::from([8; 32])),
            delay: Duration::ZERO,
        };
        let secret = SphinxSecretKey::from([9; 32]);
        [vec![me.clone()], vec![me, next]]
            .iter()
            .filter_map(|route| {
                build_with_secret(route, &MailboxId([3; 32]), b"seed", &secret).ok()
            })
            .map(|p| p.as_bytes()[..PACKET_LEN - PAYLOAD_SIZE].to_vec())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let key = SphinxSecretKey::from(KEY);
    // Fixed-length input exercises the decoder; other lengths the length check.
    let mut frame = [0u8; PACKET_LEN];
    let n = data.len().min(PACKET_LEN);
    frame[..n].copy_from_slice(&data[..n]);
    for bytes in [data, &frame[..]] {
        if let Ok(p) = Prepared::new(bytes, &key) {
            let _ = p.replay_tag();
            let _ = p.process();
        }
    }
    for header in headers() {
        let mut frame = header.clone();
        let payload = &data[..data.len().min(PAYLOAD_SIZE)];
        frame.extend_from_slice(payload);
        frame.resize(PACKET_LEN, 0);
        if let Ok(p) = Prepared::new(&frame, &key) {
            let _ = p.replay_tag();
            let _ = p.process();
        }
    }
});
