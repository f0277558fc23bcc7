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
        .decrypt_in_place(&XNonce::try_from(nonce).map_err(|_| Error::PskMismatch(contact.to_string()))?, AAD, &mut *body)
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
        .hash_password_into(passphrase.as_bytes(), &salt, out.as_mut())
        .map_err(|e| Error::Contact(format!("Argon2id: {e}")))?;
    Ok(out)
}
