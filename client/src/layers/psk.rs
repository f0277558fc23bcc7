//! Layer 2, pre-shared key: XChaCha20-Poly1305 under a key derived from
//! the secret the two people exchanged offline. This layer alone keeps the
//! content confidential if every public-key layer is broken.
//!
//! Wire: `nonce (24, random) || XChaCha20-Poly1305(inner)`, associated data
//! `"bastet 2026 psk layer v1"`. The key for messages from A to B is
//! BLAKE3 `derive_key("bastet 2026 psk layer v1", psk || A's identity key
//! || B's identity key)`: each direction has its own key.
//!
//! The pre-shared key itself comes either from the two contact cards
//! ([`psk_from_card_secrets`]: both people's fresh random secrets, so
//! neither card alone gives it) or from a passphrase both people type
//! ([`psk_from_passphrase`]: Argon2id, salted with both identity keys).

use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, AEAD_TAG_LEN, PUBLIC_KEY_LEN};
use crate::{Error, Result};

/// Bytes of a pre-shared key (and of each card's secret).
pub const PSK_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Bytes this layer adds.
pub const OVERHEAD: usize = NONCE_LEN + AEAD_TAG_LEN;
const LAYER_CONTEXT: &str = "bastet 2026 psk layer v1";
const AAD: &[u8] = b"bastet 2026 psk layer v1";
const CARDS_CONTEXT: &str = "bastet 2026 psk from contact cards v1";
const SALT_CONTEXT: &str = "bastet 2026 psk passphrase salt v1";

/// Seals `inner` from `sender` to `recipient` (identity keys) under `psk`.
pub fn seal<R: CryptoRng + ?Sized>(
    psk: &[u8; PSK_LEN],
    sender: &[u8; PUBLIC_KEY_LEN],
    recipient: &[u8; PUBLIC_KEY_LEN],
    inner: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>> {
    let nonce: [u8; NONCE_LEN] = crypto::random_bytes(rng);
    let mut out = Vec::with_capacity(OVERHEAD + inner.len());
    out.extend_from_slice(&nonce);
    let mut body = inner.to_vec();
    cipher(psk, sender, recipient)
        .encrypt_in_place(&XNonce::from(nonce), AAD, &mut body)
        .map_err(|_| Error::Layer {
            layer: "pre-shared-key",
            why: "too long for the AEAD".into(),
        })?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens a layer sealed by [`seal`] with the same key and direction. A
/// failure is [`Error::PskMismatch`] naming `contact`.
pub fn open(
    psk: &[u8; PSK_LEN],
    sender: &[u8; PUBLIC_KEY_LEN],
    recipient: &[u8; PUBLIC_KEY_LEN],
    bytes: &[u8],
    contact: &str,
) -> Result<Zeroizing<Vec<u8>>> {
    if bytes.len() < OVERHEAD {
        return Err(Error::Layer {
            layer: "pre-shared-key",
            why: "shorter than its nonce and tag".into(),
        });
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
    let mut body = Zeroizing::new(ciphertext.to_vec());
    cipher(psk, sender, recipient)
        .decrypt_in_place(
            &XNonce::try_from(nonce).map_err(|_| Error::PskMismatch(contact.to_string()))?,
            AAD,
            &mut *body,
        )
        .map_err(|_| Error::PskMismatch(contact.to_string()))?;
    Ok(body)
}

fn cipher(
    psk: &[u8; PSK_LEN],
    sender: &[u8; PUBLIC_KEY_LEN],
    recipient: &[u8; PUBLIC_KEY_LEN],
) -> XChaCha20Poly1305 {
    let mut input = Zeroizing::new([0u8; PSK_LEN + 2 * PUBLIC_KEY_LEN]);
    input[..PSK_LEN].copy_from_slice(psk);
    input[PSK_LEN..PSK_LEN + PUBLIC_KEY_LEN].copy_from_slice(sender);
    input[PSK_LEN + PUBLIC_KEY_LEN..].copy_from_slice(recipient);
    let key = Zeroizing::new(blake3::derive_key(LAYER_CONTEXT, input.as_ref()));
    XChaCha20Poly1305::new(&(*key).into())
}

/// The pre-shared key of two contact cards' secrets (order does not
/// matter: both people compute the same key).
pub fn psk_from_card_secrets(a: &[u8; PSK_LEN], b: &[u8; PSK_LEN]) -> Zeroizing<[u8; PSK_LEN]> {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut input = Zeroizing::new([0u8; 2 * PSK_LEN]);
    input[..PSK_LEN].copy_from_slice(lo);
    input[PSK_LEN..].copy_from_slice(hi);
    Zeroizing::new(blake3::derive_key(CARDS_CONTEXT, input.as_ref()))
}

const REKEY_CONTEXT: &str = "bastet 2026 psk rekey v1";

/// The pre-shared key that follows `psk` after a re-key with the fresh
/// secret `r` (sent when a device that knew `psk` is revoked): BLAKE3
/// `derive_key` over `psk || r`, so the new key needs both the old one and
/// `r`, which the revoked device is never sent.
pub fn rekeyed(psk: &[u8; PSK_LEN], r: &[u8; PSK_LEN]) -> Zeroizing<[u8; PSK_LEN]> {
    let mut input = Zeroizing::new([0u8; 2 * PSK_LEN]);
    input[..PSK_LEN].copy_from_slice(psk);
    input[PSK_LEN..].copy_from_slice(r);
    Zeroizing::new(blake3::derive_key(REKEY_CONTEXT, input.as_ref()))
}

/// Argon2id cost of a passphrase-derived key, stored with the contact so
/// that a later default does not change an existing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Params {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for Argon2Params {
    /// 64 MiB, 3 passes, 1 lane (RFC 9106's second recommended option,
    /// about half a second here).
    fn default() -> Self {
        Argon2Params {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// Shortest passphrase accepted, in characters.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// The pre-shared key of a passphrase both people typed: Argon2id with
/// `params`, salted with both identity keys (in a fixed order), so the same
/// passphrase gives each pair of people a different key.
pub fn psk_from_passphrase(
    passphrase: &str,
    a: &[u8; PUBLIC_KEY_LEN],
    b: &[u8; PUBLIC_KEY_LEN],
    params: Argon2Params,
) -> Result<Zeroizing<[u8; PSK_LEN]>> {
    if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(Error::Contact(format!(
            "the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters"
        )));
    }
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut salt_input = [0u8; 2 * PUBLIC_KEY_LEN];
    salt_input[..PUBLIC_KEY_LEN].copy_from_slice(lo);
    salt_input[PUBLIC_KEY_LEN..].copy_from_slice(hi);
    let salt = blake3::derive_key(SALT_CONTEXT, &salt_input);
    argon2id(passphrase, &salt, params)
}

/// Argon2id (version 0x13) of `passphrase` with `salt` and `params`: 32
/// bytes.
pub(crate) fn argon2id(
    passphrase: &str,
    salt: &[u8],
    params: Argon2Params,
) -> Result<Zeroizing<[u8; PSK_LEN]>> {
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(PSK_LEN),
        )
        .map_err(|e| Error::Contact(format!("Argon2id parameters: {e}")))?,
    );
    let mut out = Zeroizing::new([0u8; PSK_LEN]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
        .map_err(|e| Error::Contact(format!("Argon2id: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; PUBLIC_KEY_LEN] = [0xaa; PUBLIC_KEY_LEN];
    const B: [u8; PUBLIC_KEY_LEN] = [0xbb; PUBLIC_KEY_LEN];
    const C: [u8; PUBLIC_KEY_LEN] = [0xcc; PUBLIC_KEY_LEN];
    const FAST: Argon2Params = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn mismatch(r: Result<Zeroizing<Vec<u8>>>) -> bool {
        matches!(r, Err(Error::PskMismatch(name)) if name == "bob")
    }

    #[test]
    fn round_trip_per_direction() {
        let psk = [7u8; PSK_LEN];
        let sealed = seal(&psk, &A, &B, b"inner layer", &mut rand::rng()).unwrap();
        assert_eq!(sealed.len(), OVERHEAD + b"inner layer".len());
        assert_eq!(
            open(&psk, &A, &B, &sealed, "bob").unwrap().as_slice(),
            b"inner layer"
        );
        // The other direction, another pair, another key: all refused.
        assert!(mismatch(open(&psk, &B, &A, &sealed, "bob")));
        assert!(mismatch(open(&psk, &A, &C, &sealed, "bob")));
        assert!(mismatch(open(&[8u8; PSK_LEN], &A, &B, &sealed, "bob")));
        // Empty inner layers work too; two seals differ (random nonce).
        let empty = seal(&psk, &A, &B, b"", &mut rand::rng()).unwrap();
        assert_eq!(open(&psk, &A, &B, &empty, "bob").unwrap().len(), 0);
        assert_ne!(
            seal(&psk, &A, &B, b"x", &mut rand::rng()).unwrap(),
            seal(&psk, &A, &B, b"x", &mut rand::rng()).unwrap()
        );
    }

    #[test]
    fn any_altered_byte_is_a_psk_mismatch() {
        let psk = [7u8; PSK_LEN];
        let sealed = seal(&psk, &A, &B, &[0x5a; 300], &mut rand::rng()).unwrap();
        for i in 0..sealed.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = sealed.clone();
                bad[i] ^= mask;
                assert!(
                    mismatch(open(&psk, &A, &B, &bad, "bob")),
                    "byte {i} ^ {mask:#x}"
                );
            }
        }
        for len in [OVERHEAD, sealed.len() - 1] {
            assert!(
                mismatch(open(&psk, &A, &B, &sealed[..len], "bob")),
                "cut to {len}"
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(mismatch(open(&psk, &A, &B, &longer, "bob")));
        for len in [0, 1, OVERHEAD - 1] {
            assert!(matches!(
                open(&psk, &A, &B, &sealed[..len], "bob"),
                Err(Error::Layer {
                    layer: "pre-shared-key",
                    ..
                })
            ));
        }
    }

    #[test]
    fn card_secrets_give_one_key_in_either_order() {
        let (x, y) = ([1u8; PSK_LEN], [2u8; PSK_LEN]);
        assert_eq!(
            *psk_from_card_secrets(&x, &y),
            *psk_from_card_secrets(&y, &x)
        );
        assert_ne!(
            *psk_from_card_secrets(&x, &y),
            *psk_from_card_secrets(&x, &[3u8; PSK_LEN])
        );
        assert_ne!(
            *psk_from_card_secrets(&x, &x),
            *psk_from_card_secrets(&y, &y)
        );
        // Regression vector of our own derivation.
        assert_eq!(
            hex::encode(*psk_from_card_secrets(&x, &y)),
            "8cc178fc427503ec5a9d267032692b63f18cd68ae69f40ba93107e72df421756"
        );
    }

    #[test]
    fn layer_key_is_pinned() {
        // Regression vector: the layer for fixed key, direction, nonce.
        let psk = [7u8; PSK_LEN];
        let mut nonce_rng = FixedRng(0x42);
        let sealed = seal(&psk, &A, &B, b"pinned", &mut nonce_rng).unwrap();
        assert_eq!(&sealed[..NONCE_LEN], &[0x42; NONCE_LEN]);
        assert_eq!(
            hex::encode(&sealed[NONCE_LEN..]),
            "0ee992522c92af6eb16e6e8d852416d15965e3b39402"
        );
    }

    /// An "RNG" that returns one byte over and over, for pinned vectors.
    struct FixedRng(u8);

    impl rand::TryRng for FixedRng {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> std::result::Result<u32, Self::Error> {
            Ok(u32::from_ne_bytes([self.0; 4]))
        }
        fn try_next_u64(&mut self) -> std::result::Result<u64, Self::Error> {
            Ok(u64::from_ne_bytes([self.0; 8]))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> std::result::Result<(), Self::Error> {
            dst.fill(self.0);
            Ok(())
        }
    }

    impl rand::TryCryptoRng for FixedRng {}

    #[test]
    fn a_passphrase_gives_one_key_per_pair() {
        let p = "correct horse battery staple";
        let ab = psk_from_passphrase(p, &A, &B, FAST).unwrap();
        assert_eq!(*ab, *psk_from_passphrase(p, &B, &A, FAST).unwrap());
        assert_ne!(*ab, *psk_from_passphrase(p, &A, &C, FAST).unwrap());
        assert_ne!(
            *ab,
            *psk_from_passphrase("correct horse battery stapler", &A, &B, FAST).unwrap()
        );
        // The cost is part of the key.
        let costlier = Argon2Params {
            iterations: 2,
            ..FAST
        };
        assert_ne!(*ab, *psk_from_passphrase(p, &A, &B, costlier).unwrap());
        // Regression vector of our own derivation.
        assert_eq!(
            hex::encode(*ab),
            "a25ec2043e28117ecaf061fc4a0f7eca8753c24191160475a0a3ae3ba4b3f773"
        );
    }

    #[test]
    fn short_passphrases_and_bad_costs_are_refused() {
        assert!(matches!(
            psk_from_passphrase("eleven char", &A, &B, FAST),
            Err(Error::Contact(_))
        ));
        assert!(matches!(
            psk_from_passphrase("", &A, &B, FAST),
            Err(Error::Contact(_))
        ));
        // Counted in characters, not bytes: 12 two-byte characters pass,
        // 11 do not.
        assert!(psk_from_passphrase(&"é".repeat(12), &A, &B, FAST).is_ok());
        assert!(psk_from_passphrase(&"é".repeat(11), &A, &B, FAST).is_err());
        let zero_memory = Argon2Params {
            memory_kib: 0,
            ..FAST
        };
        assert!(matches!(
            psk_from_passphrase("twelve chars", &A, &B, zero_memory),
            Err(Error::Contact(_))
        ));
    }

    #[test]
    fn default_cost_derives_a_key() {
        let p = "a passphrase at the default cost";
        let key = psk_from_passphrase(p, &A, &B, Argon2Params::default()).unwrap();
        assert_ne!(*key, [0u8; PSK_LEN]);
        assert_ne!(*key, *psk_from_passphrase(p, &A, &B, FAST).unwrap());
        assert_eq!(
            Argon2Params::default(),
            Argon2Params {
                memory_kib: 65536,
                iterations: 3,
                parallelism: 1
            }
        );
    }

    #[test]
    fn argon2id_matches_rfc_9106() {
        // RFC 9106 §5.3, through the argon2 crate as psk_from_passphrase
        // configures it (Argon2id, version 0x13).
        let params = argon2::ParamsBuilder::new()
            .m_cost(32)
            .t_cost(3)
            .p_cost(4)
            .output_len(32)
            .data(argon2::AssociatedData::new(&[0x04; 12]).unwrap())
            .build()
            .unwrap();
        let ctx = argon2::Argon2::new_with_secret(
            &[0x03; 8],
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        )
        .unwrap();
        let mut out = [0u8; 32];
        ctx.hash_password_into(&[0x01; 32], &[0x02; 16], &mut out)
            .unwrap();
        assert_eq!(
            hex::encode(out),
            "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"
        );
    }
}
