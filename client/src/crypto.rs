//! The client's keys and every curve, AEAD, KDF and hash operation it
//! performs. No other module of this crate imports a cryptography crate.

use bastet_sphinx::MailboxId;
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Bytes of an Ed25519 or X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes the AEAD adds to a plaintext.
pub const AEAD_TAG_LEN: usize = 16;

const E2E_KEY_CONTEXT: &str = "bastet 2026 e2e payload v1";

/// A client's three long-term secrets. Each zeroizes on drop.
pub struct ClientKeys {
    /// Ed25519 identity: signs messages; recipients see its public half.
    identity: SigningKey,
    /// X25519 key that messages to this client are encrypted to.
    encryption: StaticSecret,
    /// Ed25519 key that owns (and authenticates polling of) the mailbox.
    mailbox: SigningKey,
}

impl ClientKeys {
    /// Fresh random keys.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let identity = random_secret(rng);
        let encryption = random_secret(rng);
        let mailbox = random_secret(rng);
        Self::from_secrets(&identity, &encryption, &mailbox)
    }

    /// Keys from their 32-byte secrets, as stored in the data directory.
    pub fn from_secrets(identity: &[u8; 32], encryption: &[u8; 32], mailbox: &[u8; 32]) -> Self {
        ClientKeys {
            identity: SigningKey::from_bytes(identity),
            encryption: StaticSecret::from(*encryption),
            mailbox: SigningKey::from_bytes(mailbox),
        }
    }

    /// The identity secret, for saving.
    pub fn identity_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.identity.to_bytes())
    }

    /// The encryption secret, for saving.
    pub fn encryption_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.encryption.to_bytes())
    }

    /// The mailbox secret, for saving.
    pub fn mailbox_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.mailbox.to_bytes())
    }

    /// Public identity key: what recipients see as the sender.
    pub fn identity_public(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.identity.verifying_key().to_bytes()
    }

    /// Public encryption key: what senders encrypt to.
    pub fn encryption_public(&self) -> [u8; PUBLIC_KEY_LEN] {
        PublicKey::from(&self.encryption).to_bytes()
    }

    /// The key that owns the mailbox, for signing mailbox API requests.
    pub fn mailbox_signing_key(&self) -> &SigningKey {
        &self.mailbox
    }

    /// The id of the mailbox this client owns.
    pub fn mailbox_id(&self) -> MailboxId {
        MailboxId::from_owner_key(self.mailbox.verifying_key().as_bytes())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.identity.sign(message).to_bytes()
    }
}

/// Draws `N` random bytes (message ids and the like).
pub(crate) fn random_bytes<const N: usize, R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill_bytes(&mut out);
    out
}

fn random_secret<R: CryptoRng + ?Sized>(rng: &mut R) -> Zeroizing<[u8; 32]> {
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(secret.as_mut());
    secret
}

/// Checks an Ed25519 signature by `public` over `message` (strict
/// verification: no malleable or small-order encodings).
pub(crate) fn verify(
    public: &[u8; PUBLIC_KEY_LEN],
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> bool {
    VerifyingKey::from_bytes(public).is_ok_and(|k| {
        k.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    })
}

/// First four bytes of the BLAKE3 hash: the address checksum.
pub(crate) fn checksum(bytes: &[u8]) -> [u8; 4] {
    let hash = blake3::hash(bytes);
    let mut out = [0u8; 4];
    out.copy_from_slice(&hash.as_bytes()[..4]);
    out
}

/// Encrypts `plaintext` to the X25519 key `recipient` under a fresh
/// ephemeral key, authenticating `aad` too. Returns the ephemeral public key
/// and the ciphertext (plaintext length + [`AEAD_TAG_LEN`]).
///
/// The AEAD key is derived from a fresh ephemeral secret and used exactly
/// once, so the fixed zero nonce is safe.
pub(crate) fn seal<R: CryptoRng + ?Sized>(
    recipient: &[u8; PUBLIC_KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut R,
) -> Result<([u8; PUBLIC_KEY_LEN], Vec<u8>)> {
    let ephemeral = StaticSecret::from(*random_secret(rng));
    let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&PublicKey::from(*recipient));
    if !shared.was_contributory() {
        return Err(Error::BadRecipientKey);
    }
    let key = payload_key(shared.as_bytes(), &ephemeral_public, recipient);
    let mut buffer = Vec::with_capacity(plaintext.len() + AEAD_TAG_LEN);
    buffer.extend_from_slice(plaintext);
    cipher(&key)
        .encrypt_in_place(&Nonce::default(), aad, &mut buffer)
        .map_err(|_| Error::MalformedMessage("plaintext too long for the AEAD"))?;
    Ok((ephemeral_public, buffer))
}

/// Reverses [`seal`] with this client's encryption key. Any failure is
/// [`Error::Undecryptable`]: nothing unauthenticated comes out.
pub(crate) fn open(
    keys: &ClientKeys,
    ephemeral_public: &[u8; PUBLIC_KEY_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let shared = keys
        .encryption
        .diffie_hellman(&PublicKey::from(*ephemeral_public));
    if !shared.was_contributory() {
        return Err(Error::Undecryptable);
    }
    let key = payload_key(
        shared.as_bytes(),
        ephemeral_public,
        &keys.encryption_public(),
    );
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    cipher(&key)
        .decrypt_in_place(&Nonce::default(), aad, &mut *buffer)
        .map_err(|_| Error::Undecryptable)?;
    Ok(buffer)
}

fn payload_key(
    shared: &[u8; 32],
    ephemeral_public: &[u8; PUBLIC_KEY_LEN],
    recipient: &[u8; PUBLIC_KEY_LEN],
) -> Zeroizing<[u8; 32]> {
    let mut input = Zeroizing::new([0u8; 96]);
    input[..32].copy_from_slice(shared);
    input[32..64].copy_from_slice(ephemeral_public);
    input[64..].copy_from_slice(recipient);
    Zeroizing::new(blake3::derive_key(E2E_KEY_CONTEXT, input.as_ref()))
}

fn cipher(key: &[u8; 32]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(&(*key).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_opens_only_for_the_recipient_and_with_the_same_aad() {
        let mut rng = rand::rng();
        let alice = ClientKeys::generate(&mut rng);
        let bob = ClientKeys::generate(&mut rng);
        let (e, ct) = seal(&bob.encryption_public(), b"v", b"hello", &mut rng).unwrap();
        assert_eq!(ct.len(), 5 + AEAD_TAG_LEN);
        assert_eq!(&open(&bob, &e, b"v", &ct).unwrap()[..], b"hello");
        assert!(matches!(
            open(&alice, &e, b"v", &ct),
            Err(Error::Undecryptable)
        ));
        assert!(matches!(
            open(&bob, &e, b"w", &ct),
            Err(Error::Undecryptable)
        ));
    }

    #[test]
    fn low_order_keys_are_refused() {
        let mut rng = rand::rng();
        let bob = ClientKeys::generate(&mut rng);
        assert!(matches!(
            seal(&[0; 32], b"", b"x", &mut rng),
            Err(Error::BadRecipientKey)
        ));
        assert!(matches!(
            open(&bob, &[0; 32], b"", &[0; 32]),
            Err(Error::Undecryptable)
        ));
    }

    #[test]
    fn keys_survive_their_secrets() {
        let keys = ClientKeys::generate(&mut rand::rng());
        let again = ClientKeys::from_secrets(
            &keys.identity_secret(),
            &keys.encryption_secret(),
            &keys.mailbox_secret(),
        );
        assert_eq!(keys.identity_public(), again.identity_public());
        assert_eq!(keys.encryption_public(), again.encryption_public());
        assert_eq!(keys.mailbox_id(), again.mailbox_id());
    }

    #[test]
    fn signatures_verify_only_for_the_signed_message() {
        let keys = ClientKeys::generate(&mut rand::rng());
        let sig = keys.sign(b"abc");
        assert!(verify(&keys.identity_public(), b"abc", &sig));
        assert!(!verify(&keys.identity_public(), b"abd", &sig));
    }
}
