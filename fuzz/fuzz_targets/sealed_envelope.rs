//! `layers::envelope::open` with fixed keys (bob) on: (0) any bytes; (1)
//! any inner bytes sealed to bob per the documented wire format (to reach
//! the inner parser past the AEAD); (2) an envelope sealed by
//! `envelope::seal`, then possibly one byte changed. Checks: every failure
//! is a sealed-envelope error; a well-formed inner opens to its fields; a
//! sealed envelope opens intact, and any changed byte is detected.
#![no_main]

use bastet_client::Error;
use bastet_client::layers::envelope::{self, ENVELOPE_VERSION, Inner};
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use x25519_dalek::{PublicKey, StaticSecret};

#[path = "common/keys.rs"]
mod keys;
use keys::fixed_keys as bob;

fn is_envelope_error(r: &Result<Inner, Error>) -> bool {
    matches!(
        r,
        Err(Error::Layer {
            layer: "sealed envelope",
            ..
        })
    )
}

/// The documented wire format around any inner bytes.
fn encrypt(to: &[u8; 32], inner: &[u8], top_bit: u8) -> Vec<u8> {
    let e = StaticSecret::from([9; 32]);
    let mut wire = PublicKey::from(&e).to_bytes();
    wire[31] |= top_bit & 0x80;
    let shared = e.diffie_hellman(&PublicKey::from(*to));
    let mut input = [0u8; 96];
    input[..32].copy_from_slice(shared.as_bytes());
    input[32..64].copy_from_slice(&wire);
    input[64..].copy_from_slice(to);
    let key = blake3::derive_key("bastet 2026 sealed envelope v1", &input);
    let mut body = inner.to_vec();
    ChaCha20Poly1305::new(&key.into())
        .encrypt_in_place(&Nonce::default(), &[], &mut body)
        .expect("AEAD seals");
    let mut out = wire.to_vec();
    out.extend_from_slice(&body);
    out
}

fuzz_target!(|data: &[u8]| {
    let bob = bob();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let r = envelope::open(bob, rest);
            assert!(is_envelope_error(&r), "{r:?}");
        }
        1 => {
            let r = envelope::open(bob, &encrypt(&bob.encryption_public(), rest, mode));
            // Types 0 and 1: Olm pre-key and normal messages; 2: pairing.
            let well_formed = rest.len() >= 34
                && rest[0] == ENVELOPE_VERSION
                && rest[33] <= bastet_client::pairing::PAIRING_MESSAGE_TYPE;
            match r {
                Ok(inner) => {
                    assert!(well_formed);
                    assert_eq!(inner.sender_ratchet_key[..], rest[1..33]);
                    assert_eq!(inner.message_type, rest[33]);
                    assert_eq!(inner.message, rest[34..]);
                }
                Err(Error::Layer {
                    layer: "sealed envelope",
                    why,
                }) => {
                    assert!(!well_formed, "{why}");
                    assert!(!why.contains("does not open"), "{why}");
                }
                Err(e) => panic!("{e}"),
            }
        }
        _ => {
            let Some((tamper, rest)) = rest.split_first_chunk::<4>() else {
                return;
            };
            let Some((sender, message)) = rest.split_first_chunk::<32>() else {
                return;
            };
            let inner = Inner {
                sender_ratchet_key: *sender,
                message_type: tamper[3] & 1,
                message: message.to_vec(),
            };
            let rng = &mut StdRng::from_seed([5; 32]);
            let sealed = envelope::seal(&bob.encryption_public(), &inner, rng).expect("seals");
            assert_eq!(envelope::open(bob, &sealed).expect("opens"), inner);
            let mut bad = sealed.clone();
            let at = usize::from(u16::from_le_bytes([tamper[0], tamper[1]])) % bad.len();
            bad[at] ^= tamper[2] | 1;
            assert!(
                is_envelope_error(&envelope::open(bob, &bad)),
                "byte {at} changed"
            );
        }
    }
});
