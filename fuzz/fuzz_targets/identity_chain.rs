//! Identity chains as a contact card or a chain update carries them:
//! `Chain::from_bytes` and `decode_links` on any bytes, and the fixed keys'
//! chain (one link of each kind: add, add, revoke, change mailbox; see
//! common/keys.rs) with fuzzer-chosen edits (bytes changed, inserted,
//! removed). Checks: whatever is accepted re-encodes to exactly its bytes
//! and decodes again to the same; an accepted chain is well formed (head,
//! devices within bounds); an edited chain is refused unless the edits left
//! its bytes unchanged, and merging its links into the genuine chain never
//! changes it.
#![no_main]

use bastet_client::identity::{Chain, Link, MAX_DEVICES, MAX_LINKS, decode_links, encode_links};
use libfuzzer_sys::fuzz_target;

#[path = "common/keys.rs"]
mod keys;
use keys::fixed_identity;

/// An accepted chain: canonical, and well formed.
fn accepted(chain: &Chain, bytes: &[u8]) {
    assert_eq!(
        chain.to_bytes(),
        bytes,
        "an accepted chain re-encodes to itself"
    );
    let links = chain.links();
    assert!(!links.is_empty() && links.len() <= MAX_LINKS);
    let head = chain.head();
    assert_eq!(head.seq, links.len() as u64 - 1);
    assert_eq!(head.hash, links[links.len() - 1].hash());
    assert_eq!(
        links[0].signer,
        *chain.identity(),
        "link 0 is the identity's"
    );
    for (i, link) in links.iter().enumerate() {
        assert_eq!(link.seq, i as u64);
    }
    assert!(chain.current_devices().count() <= MAX_DEVICES);
    assert!(!chain.devices().is_empty());
    let again = Chain::from_bytes(bytes, Some(chain.identity())).expect("it decodes again");
    assert_eq!(&again, chain);
}

/// Links that decoded: canonical, each on its own too.
fn decoded(links: &[Link], bytes: &[u8]) {
    let mut out = Vec::new();
    encode_links(links, &mut out);
    assert_eq!(out, bytes, "decoded links re-encode to themselves");
    for link in links {
        assert_eq!(
            &Link::from_bytes(link.as_bytes()).expect("a link decodes alone"),
            link
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(chain) = Chain::from_bytes(data, None) {
        accepted(&chain, data);
    }
    if let Ok(links) = decode_links(data) {
        decoded(&links, data);
    }

    // The genuine chain, edited: (op, position (2 bytes), value) each.
    let genuine = &fixed_identity().chain;
    let original = genuine.to_bytes();
    let mut bytes = original.clone();
    for edit in data.chunks_exact(4) {
        let at = usize::from(u16::from_le_bytes([edit[1], edit[2]]));
        match edit[0] % 3 {
            0 if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes[at] ^= edit[3];
            }
            1 => {
                let at = at % (bytes.len() + 1);
                bytes.insert(at, edit[3]);
            }
            _ if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes.remove(at);
            }
            _ => {}
        }
    }
    let unchanged = bytes == original;
    match Chain::from_bytes(&bytes, None) {
        Ok(chain) => {
            accepted(&chain, &bytes);
            assert!(unchanged, "an edited chain was accepted");
            assert_eq!(&chain, genuine);
        }
        Err(e) => assert!(!unchanged, "the genuine chain was refused: {e}"),
    }
    if let Ok(links) = decode_links(&bytes) {
        decoded(&links, &bytes);
        // Links held must be identical, new ones valid: none of an edited
        // chain can change the genuine one, whatever merge answers.
        let mut merged = genuine.clone();
        match merged.merge(&links) {
            Ok(added) => assert_eq!(added, 0, "links were added to a whole chain"),
            Err(_) => assert!(!unchanged, "the genuine links did not merge"),
        }
        assert_eq!(&merged, genuine, "a merge changed the chain");
    }
});
