//! The identity key, exported under a passphrase, so that a second admin
//! device can hold it (DESIGN.md §8: it never leaves the device where it
//! was created unless the user exports it like this).
//!
//! Text form: `BASTET-IDENTITY-KEY:` and base32 (no padding) of `"BSTI" ||
//! version (1) || Argon2id memory KiB (u32 BE) || passes (u32 BE) || lanes
//! (u32 BE) || salt (16, random) || identity public key (32) || nonce (24,
//! random) || XChaCha20-Poly1305(identity secret key (32))` under the
//! Argon2id output of the passphrase, with everything before the nonce as
//! associated data (so the parameters and the public key cannot be
//! swapped).

use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use data_encoding::BASE32_NOPAD;
use rand::CryptoRng;
use zeroize::Zeroizing;

use crate::crypto::{self, AEAD_TAG_LEN, PUBLIC_KEY_LEN};
use crate::layers::psk::{Argon2Params, MIN_PASSPHRASE_CHARS, argon2id};
use crate::{Error, Result};

/// Every exported identity key's text form starts with this.
pub const BACKUP_PREFIX: &str = "BASTET-IDENTITY-KEY:";
const MAGIC: &[u8; 4] = b"BSTI";
const VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 4 + 1 + 12 + SALT_LEN + PUBLIC_KEY_LEN;
const LEN: usize = HEADER_LEN + NONCE_LEN + 32 + AEAD_TAG_LEN;
/// The most memory an export may ask Argon2id for (a crafted file must not
/// exhaust the importing device): 1 GiB.
const MAX_MEMORY_KIB: u32 = 1 << 20;
const MAX_PASSES: u32 = 16;
const MAX_LANES: u32 = 8;

fn backup_error(why: impl Into<String>) -> Error {
    Error::Contact(format!("exported identity key: {}", why.into()))
}

/// Encrypts the identity secret `secret` (whose public key is `public`)
/// under `passphrase`.
pub fn export<R: CryptoRng + ?Sized>(
    secret: &[u8; 32],
    public: &[u8; PUBLIC_KEY_LEN],
    passphrase: &str,
    params: Argon2Params,
    rng: &mut R,
) -> Result<String> {
    if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(backup_error(format!(
            "the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters"
        )));
    }
    let salt: [u8; SALT_LEN] = crypto::random_bytes(rng);
    let mut out = Vec::with_capacity(LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&params.memory_kib.to_be_bytes());
    out.extend_from_slice(&params.iterations.to_be_bytes());
    out.extend_from_slice(&params.parallelism.to_be_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(public);
    let key = argon2id(passphrase, &salt, params)?;
    let nonce: [u8; NONCE_LEN] = crypto::random_bytes(rng);
    let mut body = secret.to_vec();
    XChaCha20Poly1305::new(&(*key).into())
        .encrypt_in_place(&XNonce::from(nonce), &out, &mut body)
        .map_err(|_| backup_error("encryption failed"))?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(format!("{BACKUP_PREFIX}{}", BASE32_NOPAD.encode(&out)))
}

/// The public key an export is of (read without the passphrase).
pub fn public_key(text: &str) -> Result<[u8; PUBLIC_KEY_LEN]> {
    let bytes = decode(text)?;
    let mut public = [0u8; PUBLIC_KEY_LEN];
    public.copy_from_slice(&bytes[HEADER_LEN - PUBLIC_KEY_LEN..HEADER_LEN]);
    Ok(public)
}

fn decode(text: &str) -> Result<Vec<u8>> {
    if text.len() > 4 * LEN {
        return Err(backup_error("far longer than an exported key"));
    }
    let compact = crate::card::normalize(text);
    let body = compact
        .strip_prefix(BACKUP_PREFIX)
        .ok_or_else(|| backup_error(format!("it starts with {BACKUP_PREFIX}")))?;
    let bytes = BASE32_NOPAD
        .decode(body.as_bytes())
        .map_err(|_| backup_error("not base32: was it copied whole?"))?;
    if bytes.len() != LEN || &bytes[..4] != MAGIC {
        return Err(backup_error("not an exported identity key, or cut short"));
    }
    if bytes[4] != VERSION {
        return Err(backup_error("made by another version of bastet"));
    }
    Ok(bytes)
}

/// Decrypts an export with `passphrase`: (secret, public key).
pub fn import(text: &str, passphrase: &str) -> Result<(Zeroizing<[u8; 32]>, [u8; PUBLIC_KEY_LEN])> {
    let bytes = decode(text)?;
    let word = |i: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&bytes[5 + 4 * i..9 + 4 * i]);
        u32::from_be_bytes(w)
    };
    let params = Argon2Params {
        memory_kib: word(0),
        iterations: word(1),
        parallelism: word(2),
    };
    if params.memory_kib > MAX_MEMORY_KIB
        || params.iterations > MAX_PASSES
        || params.parallelism > MAX_LANES
    {
        return Err(backup_error(
            "it asks Argon2id for more than 1 GiB, 16 passes or 8 lanes: refused",
        ));
    }
    let salt = &bytes[17..17 + SALT_LEN];
    let key = argon2id(passphrase, salt, params)?;
    let header = &bytes[..HEADER_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
    let mut body = Zeroizing::new(bytes[HEADER_LEN + NONCE_LEN..].to_vec());
    XChaCha20Poly1305::new(&(*key).into())
        .decrypt_in_place(&XNonce::from(nonce), header, &mut *body)
        .map_err(|_| backup_error("wrong passphrase, or the file was altered"))?;
    let mut secret = Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(&body);
    let public = public_key(text)?;
    if crypto::ed25519_public(&secret) != public {
        return Err(backup_error("its secret does not match its public key"));
    }
    Ok((secret, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Argon2Params {
        Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn an_export_opens_only_with_its_passphrase_and_unaltered() {
        let keys = crate::ClientKeys::generate(&mut rand::rng());
        let secret = keys.identity_secret().unwrap();
        let public = keys.identity_public();
        let text = export(
            &secret,
            &public,
            "a long passphrase",
            fast(),
            &mut rand::rng(),
        )
        .unwrap();
        assert!(text.starts_with(BACKUP_PREFIX));
        assert_eq!(public_key(&text).unwrap(), public);
        let (back, p) = import(&text, "a long passphrase").unwrap();
        assert_eq!(*back, *secret);
        assert_eq!(p, public);
        assert!(import(&text, "another passphrase").is_err());
        assert!(import(&text.to_lowercase(), "a long passphrase").is_ok());
        // Every changed character is refused (the header is authenticated).
        for i in BACKUP_PREFIX.len()..text.len() {
            let mut bad = text.clone().into_bytes();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(import(&bad, "a long passphrase").is_err(), "char {i}");
        }
        assert!(export(&secret, &public, "short", fast(), &mut rand::rng()).is_err());
        // A crafted export asking for too much memory is refused before any
        // work.
        let huge = Argon2Params {
            memory_kib: MAX_MEMORY_KIB + 1,
            ..fast()
        };
        let mut bytes = decode(&text).unwrap();
        bytes[5..9].copy_from_slice(&huge.memory_kib.to_be_bytes());
        let crafted = format!("{BACKUP_PREFIX}{}", BASE32_NOPAD.encode(&bytes));
        match import(&crafted, "a long passphrase") {
            Err(e) => assert!(e.to_string().contains("1 GiB"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
