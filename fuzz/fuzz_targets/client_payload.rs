//! The whole receive path, `Contacts::receive`, as the daemon runs it on
//! each payload in bob's mailbox (a fixed befriended pair, common/pair.rs):
//! (0) any bytes; (1) a genuine payload from alice with fuzzer-chosen bytes
//! xored in. Checks: nothing panics; a payload that is not genuine comes
//! back as a rejected message (not verified, no text, no file) whose reason
//! names a layer or the sender (never as nothing to show: only chain
//! traffic and held messages are that); a genuine one opens intact and
//! verified.
#![no_main]

#[path = "common/pair.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let pair = common::pair();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bob = pair.bob();
    let (payload, genuine) = if mode % 2 == 0 {
        (rest.to_vec(), None)
    } else {
        let (text, genuine) = &pair.genuine[usize::from(mode >> 7)];
        let mut payload = genuine.clone();
        for (i, b) in rest.iter().enumerate() {
            let at = (i * 131 + usize::from(*b)) % payload.len();
            payload[at] ^= b.rotate_left(3);
        }
        let unchanged = &payload == genuine;
        (payload, unchanged.then_some(text))
    };
    // `None` is chain traffic or a message held for missing links: neither
    // a text from alice at her chain head nor anything forged can be one.
    let m = bob
        .receive(&pair.bob_keys, &payload)
        .expect("a message to show, opened or rejected");
    match genuine {
        Some(text) => {
            assert!(m.verified && m.rejected.is_none(), "{m:?}");
            assert_eq!(&m.text, text);
            assert_eq!(m.from, pair.alice_keys.identity_public());
            assert_eq!(m.contact.as_deref(), Some("alice"));
        }
        None => {
            assert!(
                !m.verified && m.text.is_empty() && m.file.is_none(),
                "{m:?}"
            );
            let why = m.rejected.expect("a reason");
            assert!(
                why.contains("layer") || why.contains("not one of your contacts"),
                "{why}"
            );
        }
    }
});
