//! The end-to-end layers of a message (DESIGN.md §4), inside out:
//!
//! 1. [`content`]: the signed plaintext, encrypted to the recipient device
//!    with a hybrid KEM (X25519 + ML-KEM-768 through HKDF-SHA256) and
//!    ChaCha20-Poly1305.
//! 2. [`psk`]: XChaCha20-Poly1305 under the pair's pre-shared key, so the
//!    content stays confidential if public-key cryptography falls.
//! 3. The double ratchet (vodozemac's Olm), in [`crate::contacts`]: it holds
//!    per-pair state.
//! 4. [`envelope`]: the ratchet message sealed to the recipient device's
//!    mailbox key under an ephemeral X25519 key, so the mailbox server
//!    stores bytes with no session identifier or counter.
//!
//! Layers 1, 2 and 4 are pure functions: keys, bytes and an RNG in, bytes
//! out. Each decoder is bounded, fuzzed, and fails with an error naming its
//! layer.

pub mod content;
pub mod envelope;
pub mod psk;
