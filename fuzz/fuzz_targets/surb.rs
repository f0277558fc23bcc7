//! SURB parsing and use on bytes a peer sends (an ack SURB arrives inside a
//! final payload), the creator's stored keys and replies, and the last
//! hop's reply path on a packet-sized input. Checks: no panic; an accepted
//! SURB re-encodes to itself and yields one packet of PACKET_LEN bytes for
//! any message that fits, which no key of the fuzzer's opens as a reply.
#![no_main]

use bastet_sphinx::{
    MAX_MESSAGE_LEN, PACKET_LEN, Prepared, Processed, SEALED_REPLY_LEN, SURB_LEN, SealedReply,
    SphinxSecretKey, Surb, SurbKeys,
};

/// The last hop's reply path: a reply ending under `key`, if it is one.
fn reply_at(bytes: &[u8], key: &SphinxSecretKey) -> Option<SealedReply> {
    match Prepared::new(bytes, key).ok()?.process().ok()? {
        Processed::Reply { reply, .. } => Some(reply),
        _ => None,
    }
}
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Surb::from_bytes(data);
    if let Ok(keys) = SurbKeys::from_bytes(data) {
        assert_eq!(&keys.to_bytes()[..], data);
    }
    let key = SphinxSecretKey::from([7; 32]);
    if data.len() >= PACKET_LEN {
        let _ = reply_at(&data[..PACKET_LEN], &key);
    }
    let Some((surb, rest)) = data.split_first_chunk::<SURB_LEN>() else {
        return;
    };
    if let Ok(s) = Surb::from_bytes(surb) {
        assert_eq!(s.as_bytes(), surb);
        let message = &rest[..rest.len().min(MAX_MESSAGE_LEN)];
        let (packet, _first_hop) = s.use_surb(message).expect("a message that fits is sealed");
        assert_eq!(packet.as_bytes().len(), PACKET_LEN);
        assert!(reply_at(packet.as_bytes(), &key).is_none());
    }
    if let Some((reply, keys)) = rest.split_first_chunk::<SEALED_REPLY_LEN>() {
        let reply = SealedReply::from_bytes(reply).expect("right length");
        if let Ok(keys) = SurbKeys::from_bytes(keys) {
            let _ = keys.open(&reply);
        }
    }
});
