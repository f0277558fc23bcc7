//! Layer 4, sealed envelope: the ratchet message sealed to the recipient
//! device's mailbox key, so the mailbox server stores bytes with no session
//! identifier, counter or version in them.
//!
//! Wire: `ephemeral X25519 public key (32, its unused top bit random) ||
//! ChaCha20-Poly1305(inner)`. The AEAD key is BLAKE3 `derive_key("bastet
//! 2026 sealed envelope v1", shared secret || ephemeral key as on the wire
//! (its top bit included, so that flipping it is detected) || recipient
//! key)`, used once, so the nonce is zero.
//!
//! Inner: `version (1) || sender's ratchet identity key (32) || ratchet
//! message type (1: 0 pre-key, 1 normal, 2 device pairing; see
//! [`crate::pairing`]) || ratchet message`.
//!
//! What remains distinguishable from random: the ephemeral key is a point
//! on Curve25519 (an Elligator2 encoding would hide that), and the length.

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce};
use rand::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::{self, AEAD_TAG_LEN, ClientKeys, PUBLIC_KEY_LEN};
use crate::{Error, Result};

/// The inner format this client writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;
const CONTEXT: &str = "bastet 2026 sealed envelope v1";
const INNER_HEADER: usize = 1 + PUBLIC_KEY_LEN + 1;
/// Bytes this layer adds to the ratchet message.
pub const OVERHEAD: usize = PUBLIC_KEY_LEN + AEAD_TAG_LEN + INNER_HEADER;
const LAYER: &str = "sealed envelope";

/// What a sealed envelope carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inner {
    /// The sender device's ratchet (Olm Curve25519) identity key.
    pub sender_ratchet_key: [u8; PUBLIC_KEY_LEN],
    /// Ratchet message type: 0 pre-key, 1 normal.
    pub message_type: u8,
    /// The ratchet message.
    pub message: Vec<u8>,
}

/// Seals `inner` to the X25519 key `recipient`.
pub fn seal<R: CryptoRng + ?Sized>(
    recipient: &[u8; PUBLIC_KEY_LEN],
    inner: &Inner,
    rng: &mut R,
) -> Result<Vec<u8>> {
    let ephemeral = StaticSecret::from(*crypto::random_secret(rng));
    let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&PublicKey::from(*recipient));
    if !shared.was_contributory() {
        return Err(Error::Contact(
            "the contact's mailbox key is invalid (a low-order point)".into(),
        ));
    }
    // X25519 ignores the top bit of a public key (RFC 7748 §5): draw it at
    // random so that it is not always zero on the wire, and bind it into
    // the key so that it cannot be flipped unnoticed.
    let mut wire_key = ephemeral_public;
    wire_key[31] |= crypto::random_bytes::<1, R>(rng)[0] & 0x80;
    let key = envelope_key(shared.as_bytes(), &wire_key, recipient);
    let mut body = Vec::with_capacity(INNER_HEADER + inner.message.len() + AEAD_TAG_LEN);
    body.push(ENVELOPE_VERSION);
    body.extend_from_slice(&inner.sender_ratchet_key);
    body.push(inner.message_type);
    body.extend_from_slice(&inner.message);
    ChaCha20Poly1305::new(&(*key).into())
        .encrypt_in_place(&Nonce::default(), &[], &mut body)
        .map_err(|_| Error::Layer {
            layer: LAYER,
            why: "too long for the AEAD".into(),
        })?;
    let mut out = Vec::with_capacity(PUBLIC_KEY_LEN + body.len());
    out.extend_from_slice(&wire_key);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens an envelope sealed to `keys`' mailbox key.
pub fn open(keys: &ClientKeys, bytes: &[u8]) -> Result<Inner> {
    let error = |why: &str| Error::Layer {
        layer: LAYER,
        why: why.into(),
    };
    if bytes.len() < OVERHEAD {
        return Err(error("shorter than its header"));
    }
    let (wire, ciphertext) = bytes.split_at(PUBLIC_KEY_LEN);
    let mut wire_key = [0u8; PUBLIC_KEY_LEN];
    wire_key.copy_from_slice(wire);
    let mut ephemeral_public = wire_key;
    ephemeral_public[31] &= 0x7f;
    let shared = keys
        .envelope_secret()
        .diffie_hellman(&PublicKey::from(ephemeral_public));
    if !shared.was_contributory() {
        return Err(error("does not open with this device's mailbox key"));
    }
    let key = envelope_key(shared.as_bytes(), &wire_key, &keys.encryption_public());
    let mut body = Zeroizing::new(ciphertext.to_vec());
    ChaCha20Poly1305::new(&(*key).into())
        .decrypt_in_place(&Nonce::default(), &[], &mut *body)
        .map_err(|_| {
            error("does not open with this device's mailbox key (altered, or not addressed to it)")
        })?;
    let (&version, rest) = body.split_first().ok_or_else(|| error("empty"))?;
    if version != ENVELOPE_VERSION {
        return Err(Error::Layer {
            layer: LAYER,
            why: format!("format version {version} is not supported by this version of bastet"),
        });
    }
    let (sender, rest) = rest
        .split_first_chunk::<PUBLIC_KEY_LEN>()
        .ok_or_else(|| error("shorter than its header"))?;
    let (&message_type, message) = rest
        .split_first()
        .ok_or_else(|| error("shorter than its header"))?;
    if message_type > crate::pairing::PAIRING_MESSAGE_TYPE {
        return Err(error("unknown ratchet message type"));
    }
    Ok(Inner {
        sender_ratchet_key: *sender,
        message_type,
        message: message.to_vec(),
    })
}

fn envelope_key(
    shared: &[u8; 32],
    wire_key: &[u8; PUBLIC_KEY_LEN],
    recipient: &[u8; PUBLIC_KEY_LEN],
) -> Zeroizing<[u8; 32]> {
    let mut input = Zeroizing::new([0u8; 96]);
    input[..32].copy_from_slice(shared);
    input[32..64].copy_from_slice(wire_key);
    input[64..].copy_from_slice(recipient);
    Zeroizing::new(blake3::derive_key(CONTEXT, input.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ClientKeys {
        ClientKeys::generate(&mut rand::rng())
    }

    fn inner(message_type: u8, message: &[u8]) -> Inner {
        Inner {
            sender_ratchet_key: [0x11; PUBLIC_KEY_LEN],
            message_type,
            message: message.to_vec(),
        }
    }

    fn is_envelope_error(r: &Result<Inner>) -> bool {
        matches!(
            r,
            Err(Error::Layer {
                layer: "sealed envelope",
                ..
            })
        )
    }

    #[test]
    fn round_trip() {
        let bob = keys();
        for (t, m) in [(0, &b"pre-key"[..]), (1, b"normal"), (1, b"")] {
            let sealed = seal(&bob.encryption_public(), &inner(t, m), &mut rand::rng()).unwrap();
            assert_eq!(sealed.len(), OVERHEAD + m.len());
            assert_eq!(open(&bob, &sealed).unwrap(), inner(t, m));
        }
    }

    #[test]
    fn any_altered_bit_is_detected() {
        let bob = keys();
        let sealed = seal(
            &bob.encryption_public(),
            &inner(1, &[0x33; 200]),
            &mut rand::rng(),
        )
        .unwrap();
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                let r = open(&bob, &bad);
                assert!(is_envelope_error(&r), "byte {i} bit {bit}: {r:?}");
            }
        }
        for len in [0, 1, OVERHEAD - 1, OVERHEAD, sealed.len() - 1] {
            assert!(
                is_envelope_error(&open(&bob, &sealed[..len])),
                "cut to {len}"
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(is_envelope_error(&open(&bob, &longer)));
        assert_eq!(open(&bob, &sealed).unwrap(), inner(1, &[0x33; 200]));
    }

    #[test]
    fn the_top_bit_of_the_ephemeral_key_is_random() {
        let bob = keys();
        let tops: std::collections::BTreeSet<u8> = (0..64)
            .map(|_| {
                seal(&bob.encryption_public(), &inner(1, b"x"), &mut rand::rng()).unwrap()[31]
                    & 0x80
            })
            .collect();
        assert_eq!(tops.len(), 2, "both values of the top bit appear");
    }

    #[test]
    fn an_envelope_for_someone_else_does_not_open() {
        let (bob, carol) = (keys(), keys());
        let sealed = seal(
            &bob.encryption_public(),
            &inner(0, b"for bob"),
            &mut rand::rng(),
        )
        .unwrap();
        assert!(is_envelope_error(&open(&carol, &sealed)));
        // A low-order ephemeral key.
        let mut bad = sealed.clone();
        bad[..PUBLIC_KEY_LEN].fill(0);
        assert!(is_envelope_error(&open(&bob, &bad)));
        // Sealing to a low-order key is refused.
        assert!(matches!(
            seal(&[0; PUBLIC_KEY_LEN], &inner(0, b"x"), &mut rand::rng()),
            Err(Error::Contact(_))
        ));
    }

    #[test]
    fn an_unknown_message_type_is_refused() {
        let bob = keys();
        let sealed = seal(&bob.encryption_public(), &inner(3, b"x"), &mut rand::rng()).unwrap();
        let r = open(&bob, &sealed);
        assert!(is_envelope_error(&r), "{r:?}");
        let pairing = seal(&bob.encryption_public(), &inner(2, b"x"), &mut rand::rng()).unwrap();
        assert_eq!(open(&bob, &pairing).unwrap().message_type, 2);
    }

    #[test]
    fn key_derivation_is_pinned() {
        let key = envelope_key(&[1; 32], &[2; PUBLIC_KEY_LEN], &[3; PUBLIC_KEY_LEN]);
        assert_eq!(
            hex::encode(*key),
            "1bb4b66a6bca744379a061a9e5874059bd84afb76441662d18da50917fcdbd7c"
        );
    }
}
