//! `Contacts::open_message` of a fixed befriended pair (see common/pair.rs)
//! on: (0) any bytes as a payload; (1) any bytes as the ratchet (Olm)
//! message of a valid envelope from alice, as either message type; (2) a
//! genuine ratchet message from alice with fuzzer-chosen edits (bytes
//! changed, inserted, removed), in a fresh envelope. Checks: fuzzed ratchet
//! bytes never open and fail with an error of a layer inside the envelope;
//! an edited genuine message opens only if the edits left its bytes
//! unchanged.
//!
//! vodozemac skips its MAC check when built with `cfg(fuzzing)` (as cargo
//! fuzz builds), so here an altered ratchet message can get past the
//! ratchet layer: the pre-shared-key layer must then refuse it, and a
//! message whose only change is in its MAC opens. In normal builds the unit
//! tests check that the ratchet layer itself refuses every altered byte.
#![no_main]

#[path = "common/pair.rs"]
mod common;

use bastet_client::layers::envelope::{self, Inner};
use bastet_client::{Error, Opened};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// A ratchet-layer error, or (with vodozemac's MAC check off) one of the
/// layers inside it.
fn is_inner_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Layer {
            layer: "ratchet" | "content",
            ..
        } | Error::Replayed
            | Error::PskMismatch(_)
            | Error::NotTheContact(_)
    )
}

fuzz_target!(|data: &[u8]| {
    let pair = common::pair();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bob = pair.bob();
    let rng = &mut StdRng::from_seed([5; 32]);
    let seal = |message_type: u8, message: Vec<u8>, rng: &mut StdRng| {
        envelope::seal(
            &pair.bob_keys.encryption_public(),
            &Inner {
                sender_ratchet_key: pair.alice_ratchet_key,
                message_type,
                message,
            },
            rng,
        )
        .expect("an envelope seals")
    };
    match mode % 3 {
        0 => {
            let _ = bob.open_message(&pair.bob_keys, rest);
        }
        1 => {
            let payload = seal(mode >> 7, rest.to_vec(), rng);
            match bob.open_message(&pair.bob_keys, &payload) {
                Err(e) if is_inner_error(&e) => {}
                Err(e) => panic!("fuzzed ratchet bytes failed outside the inner layers: {e}"),
                Ok(Opened::Message(m)) => panic!("fuzzed ratchet bytes opened: {m:?}"),
                Ok(Opened::Held) => panic!("fuzzed ratchet bytes opened (held)"),
                Ok(Opened::Chain(n)) => {
                    panic!("fuzzed ratchet bytes opened as chain traffic: {n:?}")
                }
                Ok(Opened::Pending(e)) => panic!("alice is a contact: {e}"),
            }
        }
        _ => {
            let (text, genuine) = &pair.genuine[usize::from(mode >> 7)];
            let inner = envelope::open(&pair.bob_keys, genuine).expect("genuine envelope");
            let mut message = inner.message.clone();
            // Edits: (op, position (2 bytes), value).
            for edit in rest.chunks_exact(4) {
                let at = usize::from(u16::from_le_bytes([edit[1], edit[2]]));
                match edit[0] % 3 {
                    0 if !message.is_empty() => {
                        let at = at % message.len();
                        message[at] ^= edit[3];
                    }
                    1 => {
                        let at = at % (message.len() + 1);
                        message.insert(at, edit[3]);
                    }
                    _ if !message.is_empty() => {
                        let at = at % message.len();
                        message.remove(at);
                    }
                    _ => {}
                }
            }
            let unchanged = message == inner.message;
            // Olm's 8-byte MAC ends both message types; vodozemac does not
            // check it under cfg(fuzzing).
            let n = inner.message.len();
            let only_mac = message.len() == n && message[..n - 8] == inner.message[..n - 8];
            let payload = seal(inner.message_type, message, rng);
            match bob.open_message(&pair.bob_keys, &payload) {
                Ok(Opened::Message(m)) => {
                    assert!(only_mac, "an altered ratchet message opened");
                    assert_eq!(&m.text, text);
                    assert!(m.verified);
                }
                Err(e) if is_inner_error(&e) => {
                    assert!(!unchanged, "a genuine message failed: {e}")
                }
                Err(e) => panic!("an altered ratchet message failed outside the inner layers: {e}"),
                // A text from alice at her current chain head: neither.
                Ok(Opened::Held) => panic!("a ratchet message was held"),
                Ok(Opened::Chain(n)) => panic!("a ratchet message opened as chain traffic: {n:?}"),
                Ok(Opened::Pending(e)) => panic!("alice is a contact: {e}"),
            }
        }
    }
});
