//! `open_message` with fixed keys, as `bastet inbox` runs it on each payload
//! in its mailbox: (0) the bytes as stored; (1) any plaintext, sealed to the
//! fixed keys following the documented wire format (so that the fuzzer gets
//! past the AEAD to the plaintext parser); (2) any text sealed by
//! `seal_message` itself. Checks: a payload sealed to these keys never fails
//! to decrypt, and a sealed text comes back intact and verified.
#![no_main]

use bastet_client::{
    Address, ClientKeys, Error, MAX_TEXT_LEN, MESSAGE_OVERHEAD, PAYLOAD_VERSION, open_message,
    seal_message,
};
use bastet_sphinx::NodeId;
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use x25519_dalek::{PublicKey, StaticSecret};

/// `version || e_pub || ChaCha20-Poly1305(key, nonce 0, aad = version,
/// plaintext)` with `key = BLAKE3-derive_key("bastet 2026 e2e payload v1",
/// e·recipient || e_pub || recipient)` (client/README.md).
fn seal_plaintext(recipient: &[u8; 32], ephemeral: [u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let e = StaticSecret::from(ephemeral);
    let e_pub = PublicKey::from(&e).to_bytes();
    let shared = e.diffie_hellman(&PublicKey::from(*recipient));
    let mut input = [0u8; 96];
    input[..32].copy_from_slice(shared.as_bytes());
    input[32..64].copy_from_slice(&e_pub);
    input[64..].copy_from_slice(recipient);
    let key = blake3::derive_key("bastet 2026 e2e payload v1", &input);
    let mut buffer = plaintext.to_vec();
    ChaCha20Poly1305::new(&key.into())
        .encrypt_in_place(&Nonce::default(), &[PAYLOAD_VERSION], &mut buffer)
        .expect("AEAD seals");
    let mut payload = vec![PAYLOAD_VERSION];
    payload.extend_from_slice(&e_pub);
    payload.extend_from_slice(&buffer);
    payload
}

fuzz_target!(|data: &[u8]| {
    let bob = ClientKeys::from_secrets(&[1; 32], &[2; 32], &[3; 32]);
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let _ = open_message(&bob, input);
        }
        1 => {
            let payload = seal_plaintext(&bob.encryption_public(), [9; 32], input);
            match open_message(&bob, &payload) {
                Ok(m) => assert_eq!(input.len(), MESSAGE_OVERHEAD - 33 - 16 + m.text.len()),
                Err(Error::MalformedMessage(_) | Error::MessageVersion(_)) => {}
                Err(e) => panic!("a payload sealed to these keys was refused: {e}"),
            }
        }
        _ => {
            let alice = ClientKeys::from_secrets(&[4; 32], &[5; 32], &[6; 32]);
            let to = Address {
                identity_key: bob.identity_public(),
                encryption_key: bob.encryption_public(),
                mailbox_server: NodeId([7; 32]),
                mailbox: bob.mailbox_id(),
            };
            let Some((sent_at, text)) = input.split_first_chunk::<8>() else {
                return;
            };
            let sent_at_ms = u64::from_be_bytes(*sent_at);
            let text = String::from_utf8_lossy(text);
            let mut rng = StdRng::from_seed([11; 32]);
            match seal_message(&alice, &to, &text, sent_at_ms, &mut rng) {
                Ok(sealed) => {
                    let m = open_message(&bob, &sealed.payload).expect("a sealed message opens");
                    assert_eq!(m.text, text);
                    assert_eq!(m.message_id, sealed.message_id);
                    assert_eq!(m.sent_at_ms, sent_at_ms);
                    assert_eq!(m.from, alice.identity_public());
                    assert!(m.verified);
                    assert!(matches!(
                        open_message(&alice, &sealed.payload),
                        Err(Error::Undecryptable)
                    ));
                }
                Err(Error::MessageTooLong { .. }) => assert!(text.len() > MAX_TEXT_LEN),
                Err(e) => panic!("sealing failed: {e}"),
            }
        }
    }
});
