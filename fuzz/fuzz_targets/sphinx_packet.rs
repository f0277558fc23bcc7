//! A relay's view of any bytes a peer sends as a packet.
#![no_main]

use bastet_sphinx::{PACKET_LEN, Prepared, SphinxSecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SphinxSecretKey::from([7u8; 32]);
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
});
