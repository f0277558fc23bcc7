//! Every curve, AEAD and KDF operation of this crate. No other module
//! imports a cryptography crate.

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Bytes of a ChaCha20-Poly1305 key, and of every key this crate derives.
pub const KEY_LEN: usize = 32;
/// Bytes of an X25519 public key.
pub const X25519_PUBLIC_LEN: usize = 32;
/// Bytes of a ChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes the AEAD adds to a plaintext.
pub const TAG_LEN: usize = 16;

/// A 32-byte secret that zeroizes on drop.
pub type SecretKey = Zeroizing<[u8; KEY_LEN]>;

/// HKDF-SHA256 (RFC 5869): extract with `salt` over `ikm`, expand with
/// `info` into `okm`.
pub(crate) fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], okm: &mut [u8]) -> Result<()> {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, okm)
        .map_err(|_| Error::KeyDerivation)
}

/// A 32-byte key from HKDF-SHA256.
pub(crate) fn derive_key(salt: &[u8], ikm: &[u8], info: &[u8]) -> Result<SecretKey> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    hkdf_sha256(salt, ikm, info, key.as_mut())?;
    Ok(key)
}

/// SHA-256 of the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Seals `buffer` in place under `key` and `nonce` with `aad`
/// authenticated; returns the tag.
pub(crate) fn seal(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buffer: &mut [u8],
) -> Result<[u8; TAG_LEN]> {
    let tag = ChaCha20Poly1305::new(&(*key).into())
        .encrypt_inout_detached(&Nonce::from(*nonce), aad, buffer.into())
        .map_err(|_| Error::Encrypt)?;
    Ok(tag.into())
}

/// Opens `buffer` in place; on failure `buffer` is left unspecified and
/// must not be used.
pub(crate) fn open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buffer: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<()> {
    ChaCha20Poly1305::new(&(*key).into())
        .decrypt_inout_detached(&Nonce::from(*nonce), aad, buffer.into(), &Tag::from(*tag))
        .map_err(|_| Error::Decrypt)
}

/// An ephemeral X25519 key pair for one call.
pub struct EphemeralKey {
    secret: StaticSecret,
}

impl EphemeralKey {
    /// A fresh key pair.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(bytes.as_mut());
        EphemeralKey {
            secret: StaticSecret::from(*bytes),
        }
    }

    /// The public half, sent to the peer in call setup.
    pub fn public(&self) -> [u8; X25519_PUBLIC_LEN] {
        PublicKey::from(&self.secret).to_bytes()
    }

    /// The X25519 shared secret with `peer`; refuses a low-order peer key
    /// (whose shared secret would not depend on our secret).
    pub fn agree(&self, peer: &[u8; X25519_PUBLIC_LEN]) -> Result<SecretKey> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer));
        if !shared.was_contributory() {
            return Err(Error::LowOrderPoint);
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        hex::decode(s).unwrap()
    }

    /// RFC 8439 §2.8.2: the AEAD construction's published example.
    #[test]
    fn chacha20poly1305_matches_rfc8439_2_8_2() {
        let key: [u8; 32] =
            unhex("808182838485868788898a8b8c8d8e8f 909192939495969798999a9b9c9d9e9f")
                .try_into()
                .unwrap();
        let nonce: [u8; 12] = unhex("070000004041424344454647").try_into().unwrap();
        let aad = unhex("50515253c0c1c2c3c4c5c6c7");
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you \
only one tip for the future, sunscreen would be it.";
        let ciphertext = unhex(
            "d31a8d34648e60db7b86afbc53ef7ec2 a4aded51296e08fea9e2b5a736ee62d6
             3dbea45e8ca9671282fafb69da92728b 1a71de0a9e060b2905d6a5b67ecd3b36
             92ddbd7f2d778b8c9803aee328091b58 fab324e4fad675945585808b4831d7bc
             3ff4def08e4b7a9de576d26586cec64b 6116",
        );
        let tag: [u8; 16] = unhex("1ae10b594f09e26a7e902ecbd0600691")
            .try_into()
            .unwrap();

        let mut buffer = plaintext.to_vec();
        assert_eq!(seal(&key, &nonce, &aad, &mut buffer).unwrap(), tag);
        assert_eq!(buffer, ciphertext);
        open(&key, &nonce, &aad, &mut buffer, &tag).unwrap();
        assert_eq!(buffer, plaintext);

        let mut altered = ciphertext.clone();
        altered[0] ^= 1;
        assert!(matches!(
            open(&key, &nonce, &aad, &mut altered, &tag),
            Err(Error::Decrypt)
        ));
        let mut buffer = ciphertext;
        assert!(open(&key, &nonce, b"other aad", &mut buffer, &tag).is_err());
    }

    /// RFC 5869 appendix A.1, test case 1 (SHA-256).
    #[test]
    fn hkdf_sha256_matches_rfc5869_case_1() {
        let ikm = [0x0b; 22];
        let salt = unhex("000102030405060708090a0b0c");
        let info = unhex("f0f1f2f3f4f5f6f7f8f9");
        let mut okm = [0u8; 42];
        hkdf_sha256(&salt, &ikm, &info, &mut okm).unwrap();
        assert_eq!(
            okm.to_vec(),
            unhex(
                "3cb25f25faacd57a90434f64d0362f2a 2d2d0a90cf1a5a4c5db02d56ecc4c5bf
                 34007208d5b887185865"
            )
        );
    }

    #[test]
    fn low_order_peer_keys_are_refused() {
        let key = EphemeralKey::generate(&mut rand::rng());
        assert!(matches!(key.agree(&[0u8; 32]), Err(Error::LowOrderPoint)));
        let peer = EphemeralKey::generate(&mut rand::rng());
        assert_eq!(
            *key.agree(&peer.public()).unwrap(),
            *peer.agree(&key.public()).unwrap()
        );
    }
}
