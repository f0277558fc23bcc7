//! The client's keys and every curve, AEAD, KDF and hash operation it
//! performs. No other module of this crate imports a cryptography crate.

use bastet_sphinx::MailboxId;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Bytes of an Ed25519 or X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of an ML-KEM-768 encapsulation key.
pub const KEM_PUBLIC_LEN: usize = 1184;
/// Bytes of an ML-KEM-768 ciphertext.
pub const KEM_CIPHERTEXT_LEN: usize = 1088;
/// Bytes the AEAD adds to a plaintext.
pub const AEAD_TAG_LEN: usize = 16;

/// A device's long-term secrets. Each zeroizes on drop.
///
/// The identity key is here only on the device that created the identity
/// (see [`crate::identity`]): other devices know its public half, and are
/// certified by the identity's chain.
pub struct ClientKeys {
    /// Ed25519 identity: signs the first link of the identity chain.
    identity: Option<SigningKey>,
    /// Its public half: what contacts see as the sender.
    identity_public: [u8; PUBLIC_KEY_LEN],
    /// X25519 key the sealed envelope (the outermost end-to-end layer) is
    /// sealed to: the recipient device's mailbox key.
    encryption: StaticSecret,
    /// Ed25519 key that owns (and authenticates polling of) the mailbox.
    mailbox: SigningKey,
    /// Ed25519 device key: signs the content layer of every message.
    device: SigningKey,
    /// X25519 half of the content layer's hybrid KEM.
    content: StaticSecret,
    /// ML-KEM-768 half of the content layer's hybrid KEM (from `kem_secret`).
    kem: ml_kem::ml_kem_768::DecapsulationKey,
    /// The 32-byte secret the ML-KEM seed is expanded from.
    kem_secret: Zeroizing<[u8; 32]>,
}

/// The device half of a client's secrets, as saved.
pub struct DeviceSecrets {
    /// Ed25519 device signing key.
    pub device: Zeroizing<[u8; 32]>,
    /// X25519 content-layer key.
    pub content: Zeroizing<[u8; 32]>,
    /// Secret the ML-KEM-768 seed is derived from.
    pub kem: Zeroizing<[u8; 32]>,
}

impl DeviceSecrets {
    /// Fresh random device secrets.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        DeviceSecrets {
            device: random_secret(rng),
            content: random_secret(rng),
            kem: random_secret(rng),
        }
    }
}

const KEM_SEED_CONTEXT: &str = "bastet 2026 ml-kem-768 seed v1";

/// The ML-KEM-768 key pair of a 32-byte secret: the FIPS 203 64-byte seed
/// (d || z) is BLAKE3's derive-key output stream over the secret.
fn kem_from_secret(secret: &[u8; 32]) -> ml_kem::ml_kem_768::DecapsulationKey {
    let mut seed = ml_kem::Seed::default();
    let mut hasher = blake3::Hasher::new_derive_key(KEM_SEED_CONTEXT);
    hasher.update(secret);
    hasher.finalize_xof().fill(seed.as_mut_slice());
    let key = ml_kem::ml_kem_768::DecapsulationKey::from_seed(seed);
    zeroize::Zeroize::zeroize(seed.as_mut_slice());
    key
}

impl ClientKeys {
    /// Fresh random keys.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let identity = random_secret(rng);
        let encryption = random_secret(rng);
        let mailbox = random_secret(rng);
        Self::from_secrets(
            &identity,
            &encryption,
            &mailbox,
            &DeviceSecrets::generate(rng),
        )
    }

    /// Keys from their 32-byte secrets, as stored in the data directory.
    pub fn from_secrets(
        identity: &[u8; 32],
        encryption: &[u8; 32],
        mailbox: &[u8; 32],
        device: &DeviceSecrets,
    ) -> Self {
        let identity = SigningKey::from_bytes(identity);
        let identity_public = identity.verifying_key().to_bytes();
        let mut keys = Self::from_device_secrets(identity_public, encryption, mailbox, device);
        keys.identity = Some(identity);
        keys
    }

    /// The keys of a device that does not hold its identity's key.
    pub fn from_device_secrets(
        identity_public: [u8; PUBLIC_KEY_LEN],
        encryption: &[u8; 32],
        mailbox: &[u8; 32],
        device: &DeviceSecrets,
    ) -> Self {
        ClientKeys {
            identity: None,
            identity_public,
            encryption: StaticSecret::from(*encryption),
            mailbox: SigningKey::from_bytes(mailbox),
            device: SigningKey::from_bytes(&device.device),
            content: StaticSecret::from(*device.content),
            kem: kem_from_secret(&device.kem),
            kem_secret: device.kem.clone(),
        }
    }

    /// The device secrets, for saving.
    pub fn device_secrets(&self) -> DeviceSecrets {
        DeviceSecrets {
            device: Zeroizing::new(self.device.to_bytes()),
            content: Zeroizing::new(self.content.to_bytes()),
            kem: self.kem_secret.clone(),
        }
    }

    /// Public Ed25519 device key: verifies the content layer.
    pub fn device_public(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.device.verifying_key().to_bytes()
    }

    /// Public X25519 content-layer key.
    pub fn content_public(&self) -> [u8; PUBLIC_KEY_LEN] {
        PublicKey::from(&self.content).to_bytes()
    }

    /// Public ML-KEM-768 encapsulation key.
    pub fn kem_public(&self) -> [u8; KEM_PUBLIC_LEN] {
        use ml_kem::KeyExport;
        let mut out = [0u8; KEM_PUBLIC_LEN];
        out.copy_from_slice(self.kem.encapsulation_key().to_bytes().as_slice());
        out
    }

    pub(crate) fn sign_device(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.device.sign(message).to_bytes()
    }

    pub(crate) fn content_secret(&self) -> &StaticSecret {
        &self.content
    }

    pub(crate) fn kem_secret(&self) -> &ml_kem::ml_kem_768::DecapsulationKey {
        &self.kem
    }

    pub(crate) fn envelope_secret(&self) -> &StaticSecret {
        &self.encryption
    }

    /// A 32-byte key for this device's local state (ratchet pickles), kept
    /// apart from every key that goes on the wire.
    pub(crate) fn storage_key(&self, context: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, self.device.as_bytes()))
    }

    /// The identity secret, for saving (on the device that holds it).
    pub fn identity_secret(&self) -> Option<Zeroizing<[u8; 32]>> {
        self.identity.as_ref().map(|k| Zeroizing::new(k.to_bytes()))
    }

    /// Whether this device holds its identity's key.
    pub fn has_identity_key(&self) -> bool {
        self.identity.is_some()
    }

    /// These keys as a device of the identity `identity_public`, without
    /// an identity key (after joining another identity).
    pub fn joined(&self, identity_public: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self::from_device_secrets(
            identity_public,
            &self.encryption_secret(),
            &self.mailbox_secret(),
            &self.device_secrets(),
        )
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
        self.identity_public
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

    /// Signs with the identity key, if this device holds it.
    pub(crate) fn sign_identity(&self, message: &[u8]) -> Option<[u8; SIGNATURE_LEN]> {
        self.identity.as_ref().map(|k| k.sign(message).to_bytes())
    }
}

/// Draws `N` random bytes (message ids and the like).
pub(crate) fn random_bytes<const N: usize, R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill_bytes(&mut out);
    out
}

pub(crate) fn random_secret<R: CryptoRng + ?Sized>(rng: &mut R) -> Zeroizing<[u8; 32]> {
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

/// The Ed25519 public key of the secret key `secret`.
pub(crate) fn ed25519_public(secret: &[u8; 32]) -> [u8; PUBLIC_KEY_LEN] {
    SigningKey::from_bytes(secret).verifying_key().to_bytes()
}

/// First four bytes of the BLAKE3 hash: the address checksum.
pub(crate) fn checksum(bytes: &[u8]) -> [u8; 4] {
    let hash = blake3::hash(bytes);
    let mut out = [0u8; 4];
    out.copy_from_slice(&hash.as_bytes()[..4]);
    out
}

/// An Ed25519 key for tests that build chains and cards by hand.
#[cfg(test)]
pub(crate) struct TestKey(SigningKey);

#[cfg(test)]
impl TestKey {
    pub(crate) fn generate() -> TestKey {
        TestKey(SigningKey::from_bytes(&random_secret(&mut rand::rng())))
    }

    pub(crate) fn public(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.0.verifying_key().to_bytes()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_their_secrets() {
        let keys = ClientKeys::generate(&mut rand::rng());
        let again = ClientKeys::from_secrets(
            &keys.identity_secret().unwrap(),
            &keys.encryption_secret(),
            &keys.mailbox_secret(),
            &keys.device_secrets(),
        );
        assert_eq!(keys.device_public(), again.device_public());
        assert_eq!(keys.content_public(), again.content_public());
        assert_eq!(keys.kem_public(), again.kem_public());
        assert_eq!(keys.identity_public(), again.identity_public());
        assert_eq!(keys.encryption_public(), again.encryption_public());
        assert_eq!(keys.mailbox_id(), again.mailbox_id());
        let joined = again.joined([7; 32]);
        assert!(!joined.has_identity_key());
        assert_eq!(joined.identity_public(), [7; 32]);
        assert_eq!(joined.device_public(), keys.device_public());
        assert!(joined.sign_identity(b"x").is_none());
    }

    #[test]
    fn signatures_verify_only_for_the_signed_message() {
        let keys = ClientKeys::generate(&mut rand::rng());
        let sig = keys.sign_identity(b"abc").unwrap();
        assert!(verify(&keys.identity_public(), b"abc", &sig));
        assert!(!verify(&keys.identity_public(), b"abd", &sig));
    }
}
