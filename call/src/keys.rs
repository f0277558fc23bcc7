//! The call's key schedule: a hybrid (X25519 + ML-KEM-768) secret and
//! the call's public transcript in, one traffic key per direction out,
//! each ratcheted forward in epochs.
//!
//! ```text
//! salt = SHA-256("bastet/call/v1/transcript" || call id (16)
//!                || caller identity (32) || caller device (32) || caller ephemeral X25519 (32)
//!                || callee identity (32) || callee device (32) || callee ephemeral X25519 (32)
//!                || ML-KEM-768 ciphertext (1088))
//! ikm  = X25519 shared secret (32) || ML-KEM-768 shared secret (32)
//! key(caller → callee, epoch 0) = HKDF-SHA256(salt, ikm, "bastet/call/v1/media/caller-to-callee")
//! key(callee → caller, epoch 0) = HKDF-SHA256(salt, ikm, "bastet/call/v1/media/callee-to-caller")
//! confirmation                  = HKDF-SHA256(salt, ikm, "bastet/call/v1/confirmation")
//! key(epoch n + 1)              = HKDF-SHA256("bastet/call/v1/ratchet", key(epoch n), "bastet/call/v1/ratchet")
//! ```
//!
//! Every field of the transcript has a fixed length, so the concatenation
//! is unambiguous; the caller always comes first, whichever end derives.

use std::fmt;

use zeroize::Zeroizing;

use crate::crypto::{self, KEY_LEN, SecretKey, X25519_PUBLIC_LEN};
use crate::{Error, Result};

/// Bytes of a call id (random, chosen by the caller in call setup).
pub const CALL_ID_LEN: usize = 16;
/// Bytes of an Ed25519 identity or device public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of an ML-KEM-768 ciphertext.
pub const KEM_CIPHERTEXT_LEN: usize = 1088;
/// Bytes of an ML-KEM-768 shared secret.
pub const KEM_SHARED_LEN: usize = 32;

const TRANSCRIPT_LABEL: &[u8] = b"bastet/call/v1/transcript";
const CALLER_TO_CALLEE: &[u8] = b"bastet/call/v1/media/caller-to-callee";
const CALLEE_TO_CALLER: &[u8] = b"bastet/call/v1/media/callee-to-caller";
const CONFIRMATION: &[u8] = b"bastet/call/v1/confirmation";
const RATCHET: &[u8] = b"bastet/call/v1/ratchet";

/// Which end of the call this device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The end that placed the call.
    Caller,
    /// The end that answered.
    Callee,
}

/// One end's public keys, as call setup authenticated them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    /// Ed25519 identity key.
    pub identity: [u8; PUBLIC_KEY_LEN],
    /// Ed25519 device key.
    pub device: [u8; PUBLIC_KEY_LEN],
    /// The ephemeral X25519 key this end sent for this call.
    pub ephemeral: [u8; X25519_PUBLIC_LEN],
}

/// Everything public both ends agree on, bound into the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transcript {
    /// The call's id.
    pub call_id: [u8; CALL_ID_LEN],
    /// The end that placed the call.
    pub caller: Party,
    /// The end that answered.
    pub callee: Party,
    /// The ML-KEM-768 ciphertext the callee encapsulated to the caller's
    /// per-call encapsulation key.
    pub kem_ciphertext: Box<[u8; KEM_CIPHERTEXT_LEN]>,
}

impl Transcript {
    /// SHA-256 of the canonical encoding: the HKDF salt.
    fn hash(&self) -> [u8; 32] {
        crypto::sha256(&[
            TRANSCRIPT_LABEL,
            &self.call_id,
            &self.caller.identity,
            &self.caller.device,
            &self.caller.ephemeral,
            &self.callee.identity,
            &self.callee.device,
            &self.callee.ephemeral,
            self.kem_ciphertext.as_slice(),
        ])
    }
}

/// The hybrid shared secret of call setup.
pub struct SharedSecrets {
    /// X25519 of the two ephemeral keys.
    pub x25519: SecretKey,
    /// The ML-KEM-768 shared secret.
    pub ml_kem: Zeroizing<[u8; KEM_SHARED_LEN]>,
}

/// The key of one direction in one epoch. Zeroizes on drop.
pub struct TrafficKey {
    epoch: u32,
    key: SecretKey,
}

impl TrafficKey {
    /// The key's epoch (0 at the start of the call).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub(crate) fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The key of the next epoch: replaces (and zeroizes) this one.
    pub fn ratchet(&mut self) -> Result<()> {
        let epoch = self.epoch.checked_add(1).ok_or(Error::EpochExhausted)?;
        self.key = crypto::derive_key(RATCHET, self.key.as_slice(), RATCHET)?;
        self.epoch = epoch;
        Ok(())
    }

    /// A copy for trying a later epoch without committing to it.
    pub(crate) fn duplicate(&self) -> TrafficKey {
        TrafficKey {
            epoch: self.epoch,
            key: self.key.clone(),
        }
    }
}

impl fmt::Debug for TrafficKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrafficKey")
            .field("epoch", &self.epoch)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The traffic keys of one end of a call.
pub struct CallKeys {
    /// Seals what this end sends.
    pub send: TrafficKey,
    /// Opens what the peer sends.
    pub receive: TrafficKey,
    confirmation: [u8; 32],
}

impl CallKeys {
    /// Derives this end's keys; both ends derive matching keys from the
    /// same secrets and transcript.
    pub fn derive(role: Role, secrets: &SharedSecrets, transcript: &Transcript) -> Result<Self> {
        let salt = transcript.hash();
        let mut ikm = Zeroizing::new([0u8; KEY_LEN + KEM_SHARED_LEN]);
        ikm[..KEY_LEN].copy_from_slice(secrets.x25519.as_slice());
        ikm[KEY_LEN..].copy_from_slice(secrets.ml_kem.as_slice());
        let caller_to_callee = crypto::derive_key(&salt, ikm.as_slice(), CALLER_TO_CALLEE)?;
        let callee_to_caller = crypto::derive_key(&salt, ikm.as_slice(), CALLEE_TO_CALLER)?;
        let mut confirmation = [0u8; 32];
        crypto::hkdf_sha256(&salt, ikm.as_slice(), CONFIRMATION, &mut confirmation)?;
        let (send, receive) = match role {
            Role::Caller => (caller_to_callee, callee_to_caller),
            Role::Callee => (callee_to_caller, caller_to_callee),
        };
        Ok(CallKeys {
            send: TrafficKey {
                epoch: 0,
                key: send,
            },
            receive: TrafficKey {
                epoch: 0,
                key: receive,
            },
            confirmation,
        })
    }

    /// A value both ends compute alike only if they derived the same keys:
    /// call setup can exchange it (MACed) for key confirmation, or show a
    /// short form of it to the users.
    pub fn confirmation(&self) -> [u8; 32] {
        self.confirmation
    }
}

impl fmt::Debug for CallKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallKeys")
            .field("send", &self.send)
            .field("receive", &self.receive)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn transcript(seed: u8) -> Transcript {
        Transcript {
            call_id: [seed; CALL_ID_LEN],
            caller: Party {
                identity: [1; 32],
                device: [2; 32],
                ephemeral: [3; 32],
            },
            callee: Party {
                identity: [4; 32],
                device: [5; 32],
                ephemeral: [6; 32],
            },
            kem_ciphertext: Box::new([7; KEM_CIPHERTEXT_LEN]),
        }
    }

    pub(crate) fn secrets() -> SharedSecrets {
        SharedSecrets {
            x25519: Zeroizing::new([8; 32]),
            ml_kem: Zeroizing::new([9; 32]),
        }
    }

    /// A matched pair of keys (caller, callee) for tests.
    pub(crate) fn pair() -> (CallKeys, CallKeys) {
        let t = transcript(0);
        (
            CallKeys::derive(Role::Caller, &secrets(), &t).unwrap(),
            CallKeys::derive(Role::Callee, &secrets(), &t).unwrap(),
        )
    }

    #[test]
    fn both_ends_derive_matching_keys() {
        let (caller, callee) = pair();
        assert_eq!(caller.send.key(), callee.receive.key());
        assert_eq!(caller.receive.key(), callee.send.key());
        assert_ne!(caller.send.key(), caller.receive.key());
        assert_eq!(caller.confirmation(), callee.confirmation());
        assert_eq!(caller.send.epoch(), 0);
    }

    #[test]
    fn every_bound_input_changes_the_keys() {
        let base = CallKeys::derive(Role::Caller, &secrets(), &transcript(0)).unwrap();
        let mut variants: Vec<(&str, Transcript, SharedSecrets)> = Vec::new();
        let t = || transcript(0);
        variants.push(("call id", transcript(1), secrets()));
        let mut v = t();
        v.caller.identity[0] ^= 1;
        variants.push(("caller identity", v, secrets()));
        let mut v = t();
        v.caller.device[0] ^= 1;
        variants.push(("caller device", v, secrets()));
        let mut v = t();
        v.caller.ephemeral[0] ^= 1;
        variants.push(("caller ephemeral", v, secrets()));
        let mut v = t();
        v.callee.identity[31] ^= 1;
        variants.push(("callee identity", v, secrets()));
        let mut v = t();
        v.callee.device[31] ^= 1;
        variants.push(("callee device", v, secrets()));
        let mut v = t();
        v.callee.ephemeral[31] ^= 1;
        variants.push(("callee ephemeral", v, secrets()));
        let mut v = t();
        v.kem_ciphertext[500] ^= 1;
        variants.push(("kem ciphertext", v, secrets()));
        let mut v = t();
        std::mem::swap(&mut v.caller, &mut v.callee);
        variants.push(("caller and callee swapped", v, secrets()));
        let mut s = secrets();
        s.x25519[0] ^= 1;
        variants.push(("x25519 secret", t(), s));
        let mut s = secrets();
        s.ml_kem[0] ^= 1;
        variants.push(("ml-kem secret", t(), s));
        for (what, transcript, secrets) in variants {
            let keys = CallKeys::derive(Role::Caller, &secrets, &transcript).unwrap();
            assert_ne!(keys.send.key(), base.send.key(), "{what}");
            assert_ne!(keys.receive.key(), base.receive.key(), "{what}");
            assert_ne!(keys.confirmation(), base.confirmation(), "{what}");
        }
    }

    #[test]
    fn the_ratchet_moves_forward_and_matches_on_both_ends() {
        let (mut caller, mut callee) = pair();
        let before = *caller.send.key();
        caller.send.ratchet().unwrap();
        assert_eq!(caller.send.epoch(), 1);
        assert_ne!(*caller.send.key(), before);
        assert_ne!(caller.send.key(), callee.receive.key());
        callee.receive.ratchet().unwrap();
        assert_eq!(caller.send.key(), callee.receive.key());
        let mut last = TrafficKey {
            epoch: u32::MAX,
            key: Zeroizing::new([0; 32]),
        };
        assert!(matches!(last.ratchet(), Err(Error::EpochExhausted)));
        assert!(format!("{caller:?}").contains("<redacted>"));
    }
}
