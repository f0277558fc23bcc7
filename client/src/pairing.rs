//! Pairing a new device with an identity, over Bastet.
//!
//! 1. On an admin device, `bastet device add` makes a one-time **pairing
//!    code**: the identity key, where that device receives (envelope key,
//!    mailbox server, mailbox), a fresh 32-byte secret, the capabilities
//!    granted and an expiry (15 minutes). It is shown as text and as a QR
//!    code; whoever holds it may join until it is used or expires, so it
//!    is shown only to the person at the new device.
//! 2. On the new device (a fresh `bastet init`), `bastet device join CODE`
//!    sends a **request**: its certificate (its own keys, the granted
//!    capabilities, a name) with its back-signature, and where it receives.
//! 3. The admin device checks the certificate, appends it to the chain,
//!    sends the new chain to every contact, and **replies** with the
//!    bundle: the chain and the contacts (cards, chains, pre-shared keys).
//!    The new device never receives the identity key.
//!
//! Both messages travel like any other, fragmented in Sphinx packets to
//! the other device's mailbox, inside a sealed envelope (ratchet message
//! type 2), as `nonce (24) || XChaCha20-Poly1305(kind (1) || body)` under
//! BLAKE3 `derive_key("bastet 2026 device pairing v1", secret)`, with the
//! kind as associated data too. Request body: `reply envelope key (32) ||
//! reply mailbox server (32) || reply mailbox (32) || certificate length
//! (u16 BE) || certificate || back-signature (64)`. Reply body: the bundle
//! as JSON. Refusal body: why (UTF-8).
//!
//! Code, binary form: `"BSTP" || version (1) || identity key (32) ||
//! envelope key (32) || mailbox server (32) || mailbox (32) || secret (32)
//! || capabilities (1) || expires_ms (u64 BE) || checksum (4: BLAKE3 of
//! everything before)`; text form `BASTET-PAIR:` and base32.

use bastet_sphinx::{MailboxId, NodeId};
use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use data_encoding::BASE32_NOPAD;
use rand::CryptoRng;
use zeroize::Zeroizing;

use crate::crypto::{self, AEAD_TAG_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::identity::{DeviceCert, MAX_CERT_LEN};
use crate::{Address, Error, Result};

/// Every pairing code's text form starts with this.
pub const PAIR_PREFIX: &str = "BASTET-PAIR:";
const MAGIC: &[u8; 4] = b"BSTP";
const VERSION: u8 = 1;
const CODE_LEN: usize = 4 + 1 + 5 * 32 + 1 + 8 + 4;
/// How long a pairing code is valid.
pub const CODE_LIFETIME_MS: u64 = 15 * 60 * 1000;
/// The sealed envelope's message type of pairing messages.
pub const PAIRING_MESSAGE_TYPE: u8 = 2;
const KEY_CONTEXT: &str = "bastet 2026 device pairing v1";
const NONCE_LEN: usize = 24;
const KIND_REQUEST: u8 = 1;
const KIND_REPLY: u8 = 2;
const KIND_REFUSAL: u8 = 3;
/// Longest pairing message (a reply carries a whole contact book).
pub const MAX_MESSAGE_LEN: usize = crate::message::MAX_CONTENT_LEN;

fn pairing_error(why: impl Into<String>) -> Error {
    Error::Layer {
        layer: "pairing",
        why: why.into(),
    }
}

/// A pairing code.
#[derive(Clone, PartialEq, Eq)]
pub struct PairCode {
    /// The identity to join.
    pub identity: [u8; PUBLIC_KEY_LEN],
    /// Where the admin device receives.
    pub admin: Address,
    /// The one-time secret.
    pub secret: Zeroizing<[u8; 32]>,
    /// The capabilities the new device is granted.
    pub caps: u8,
    /// When the code expires (unix ms, the admin device's clock).
    pub expires_ms: u64,
}

impl std::fmt::Debug for PairCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairCode")
            .field("identity", &hex::encode(self.identity))
            .field("caps", &self.caps)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

impl PairCode {
    /// The text form.
    pub fn to_text(&self) -> String {
        let mut out = Vec::with_capacity(CODE_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.identity);
        out.extend_from_slice(&self.admin.encryption_key);
        out.extend_from_slice(self.admin.mailbox_server.as_bytes());
        out.extend_from_slice(self.admin.mailbox.as_bytes());
        out.extend_from_slice(self.secret.as_ref());
        out.push(self.caps);
        out.extend_from_slice(&self.expires_ms.to_be_bytes());
        let sum = crypto::checksum(&out);
        out.extend_from_slice(&sum);
        format!("{PAIR_PREFIX}{}", BASE32_NOPAD.encode(&out))
    }

    /// Parses the text form (whitespace ignored, any case).
    pub fn parse(text: &str) -> Result<PairCode> {
        let bad = |why: &str| Error::Contact(format!("pairing code: {why}"));
        if text.len() > 4 * CODE_LEN {
            return Err(bad("far longer than a pairing code"));
        }
        let compact = crate::card::normalize(text);
        let body = compact
            .strip_prefix(PAIR_PREFIX)
            .ok_or_else(|| bad("a pairing code starts with BASTET-PAIR:"))?;
        let bytes = BASE32_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| bad("not base32: was it copied whole?"))?;
        if bytes.len() != CODE_LEN {
            return Err(bad("wrong length: was it copied whole?"));
        }
        let (data, sum) = bytes.split_at(CODE_LEN - 4);
        if crypto::checksum(data) != sum {
            return Err(bad("checksum mismatch: check for a typo"));
        }
        if &data[..4] != MAGIC {
            return Err(bad("not a Bastet pairing code"));
        }
        if data[4] != VERSION {
            return Err(bad("made by another version of bastet"));
        }
        let take = |i: usize| -> [u8; 32] {
            let mut out = [0u8; 32];
            out.copy_from_slice(&data[5 + 32 * i..5 + 32 * (i + 1)]);
            out
        };
        let identity = take(0);
        let caps = data[5 + 5 * 32];
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&data[5 + 5 * 32 + 1..]);
        Ok(PairCode {
            identity,
            admin: Address {
                identity_key: identity,
                encryption_key: take(1),
                mailbox_server: NodeId(take(2)),
                mailbox: MailboxId(take(3)),
            },
            secret: Zeroizing::new(take(4)),
            caps,
            expires_ms: u64::from_be_bytes(expires),
        })
    }
}

/// A pairing message, decrypted.
#[derive(Debug)]
pub enum Message {
    /// A new device asks to join.
    Request {
        /// Where it receives.
        reply_to: Address,
        /// Its certificate.
        cert: Box<DeviceCert>,
        /// Its back-signature.
        back_signature: [u8; SIGNATURE_LEN],
    },
    /// The admin device's answer: the bundle, JSON.
    Reply(Zeroizing<Vec<u8>>),
    /// The admin device refused.
    Refusal(String),
}

fn cipher(secret: &[u8; 32]) -> XChaCha20Poly1305 {
    let key = Zeroizing::new(blake3::derive_key(KEY_CONTEXT, secret));
    XChaCha20Poly1305::new(&(*key).into())
}

fn seal<R: CryptoRng + ?Sized>(
    secret: &[u8; 32],
    kind: u8,
    body: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>> {
    let nonce: [u8; NONCE_LEN] = crypto::random_bytes(rng);
    let mut plain = Zeroizing::new(Vec::with_capacity(1 + body.len() + AEAD_TAG_LEN));
    plain.push(kind);
    plain.extend_from_slice(body);
    let mut sealed = plain.to_vec();
    cipher(secret)
        .encrypt_in_place(&XNonce::from(nonce), &[kind], &mut sealed)
        .map_err(|_| pairing_error("too long"))?;
    let mut out = nonce.to_vec();
    out.append(&mut sealed);
    Ok(out)
}

/// The request of a new device with `cert` (and its back-signature) that
/// receives at `reply_to`.
pub fn seal_request<R: CryptoRng + ?Sized>(
    secret: &[u8; 32],
    reply_to: &Address,
    cert: &DeviceCert,
    back_signature: &[u8; SIGNATURE_LEN],
    rng: &mut R,
) -> Result<Vec<u8>> {
    let cert = cert.to_bytes();
    let mut body = Vec::with_capacity(3 * 32 + 2 + cert.len() + SIGNATURE_LEN);
    body.extend_from_slice(&reply_to.encryption_key);
    body.extend_from_slice(reply_to.mailbox_server.as_bytes());
    body.extend_from_slice(reply_to.mailbox.as_bytes());
    body.extend_from_slice(&(cert.len() as u16).to_be_bytes());
    body.extend_from_slice(&cert);
    body.extend_from_slice(back_signature);
    seal(secret, KIND_REQUEST, &body, rng)
}

/// The admin device's reply carrying `bundle` (JSON).
pub fn seal_reply<R: CryptoRng + ?Sized>(
    secret: &[u8; 32],
    bundle: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>> {
    seal(secret, KIND_REPLY, bundle, rng)
}

/// The admin device's refusal.
pub fn seal_refusal<R: CryptoRng + ?Sized>(
    secret: &[u8; 32],
    why: &str,
    rng: &mut R,
) -> Result<Vec<u8>> {
    seal(secret, KIND_REFUSAL, why.as_bytes(), rng)
}

/// Decrypts a pairing message under `secret`; `Ok(None)` if it is not
/// for this secret.
pub fn open(secret: &[u8; 32], bytes: &[u8]) -> Result<Option<Message>> {
    if bytes.len() > MAX_MESSAGE_LEN + NONCE_LEN + 1 + AEAD_TAG_LEN {
        return Err(pairing_error("longer than any pairing message"));
    }
    let Some((nonce, sealed)) = bytes.split_first_chunk::<NONCE_LEN>() else {
        return Err(pairing_error("shorter than its nonce"));
    };
    let Some(&_) = sealed.first() else {
        return Err(pairing_error("empty"));
    };
    // The kind is inside and bound as associated data: try each.
    for kind in [KIND_REQUEST, KIND_REPLY, KIND_REFUSAL] {
        let mut plain = Zeroizing::new(sealed.to_vec());
        if cipher(secret)
            .decrypt_in_place(&XNonce::from(*nonce), &[kind], &mut *plain)
            .is_err()
        {
            continue;
        }
        let Some((&inner_kind, body)) = plain.split_first() else {
            return Err(pairing_error("empty"));
        };
        if inner_kind != kind {
            return Err(pairing_error("the kind does not match"));
        }
        return parse(kind, body).map(Some);
    }
    Ok(None)
}

/// Parses a decrypted pairing message: `kind (1) || body` (what
/// [`open`] yields after the AEAD; public for the fuzzer).
pub fn parse_plaintext(plaintext: &[u8]) -> Result<Message> {
    let (&kind, body) = plaintext
        .split_first()
        .ok_or_else(|| pairing_error("empty"))?;
    if !(KIND_REQUEST..=KIND_REFUSAL).contains(&kind) {
        return Err(pairing_error("unknown kind"));
    }
    parse(kind, body)
}

fn parse(kind: u8, body: &[u8]) -> Result<Message> {
    match kind {
        KIND_REQUEST => {
            let short = || pairing_error("a request shorter than its fields");
            let (fixed, rest) = body.split_at_checked(3 * 32 + 2).ok_or_else(short)?;
            let take = |i: usize| -> [u8; 32] {
                let mut out = [0u8; 32];
                out.copy_from_slice(&fixed[32 * i..32 * (i + 1)]);
                out
            };
            let cert_len = usize::from(u16::from_be_bytes([fixed[96], fixed[97]]));
            if cert_len > MAX_CERT_LEN || rest.len() != cert_len + SIGNATURE_LEN {
                return Err(pairing_error("a request's certificate length is wrong"));
            }
            let (cert_bytes, sig) = rest.split_at(cert_len);
            let cert = Box::new(DeviceCert::from_bytes(cert_bytes)?);
            let mut back_signature = [0u8; SIGNATURE_LEN];
            back_signature.copy_from_slice(sig);
            Ok(Message::Request {
                reply_to: Address {
                    identity_key: [0; PUBLIC_KEY_LEN],
                    encryption_key: take(0),
                    mailbox_server: NodeId(take(1)),
                    mailbox: MailboxId(take(2)),
                },
                cert,
                back_signature,
            })
        }
        KIND_REPLY => Ok(Message::Reply(Zeroizing::new(body.to_vec()))),
        _ => Ok(Message::Refusal(
            String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientKeys;
    use crate::identity::CAP_SEND;

    fn code() -> PairCode {
        PairCode {
            identity: [1; 32],
            admin: Address {
                identity_key: [1; 32],
                encryption_key: [2; 32],
                mailbox_server: NodeId([3; 32]),
                mailbox: MailboxId([4; 32]),
            },
            secret: Zeroizing::new([5; 32]),
            caps: CAP_SEND,
            expires_ms: 1_800_000_000_000,
        }
    }

    #[test]
    fn codes_round_trip_and_typos_are_caught() {
        let c = code();
        let text = c.to_text();
        assert!(text.starts_with(PAIR_PREFIX));
        assert_eq!(PairCode::parse(&text).unwrap(), c);
        assert_eq!(PairCode::parse(&text.to_lowercase()).unwrap(), c);
        let wrapped: String = text
            .as_bytes()
            .chunks(30)
            .map(|l| format!("{}\n", std::str::from_utf8(l).unwrap()))
            .collect();
        assert_eq!(PairCode::parse(&wrapped).unwrap(), c);
        // Any changed character: refused.
        for i in PAIR_PREFIX.len()..text.len() {
            let mut bad = text.clone().into_bytes();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(PairCode::parse(&bad).is_err(), "char {i}");
        }
        for cut in [0, PAIR_PREFIX.len(), text.len() - 1] {
            assert!(PairCode::parse(&text[..cut]).is_err());
        }
        assert!(PairCode::parse(&"A".repeat(10_000)).is_err());
    }

    #[test]
    fn messages_open_only_under_their_secret_and_unaltered() {
        let keys = ClientKeys::generate(&mut rand::rng());
        let cert =
            DeviceCert::of(&keys, [6; 32], [7; 32], NodeId([8; 32]), CAP_SEND, "new").unwrap();
        let sig = cert.back_signature(&keys, &[1; 32]).unwrap();
        let reply_to = Address {
            identity_key: [0; 32],
            encryption_key: [9; 32],
            mailbox_server: NodeId([10; 32]),
            mailbox: MailboxId([11; 32]),
        };
        let secret = [5u8; 32];
        let sealed = seal_request(&secret, &reply_to, &cert, &sig, &mut rand::rng()).unwrap();
        match open(&secret, &sealed).unwrap() {
            Some(Message::Request {
                reply_to: r,
                cert: c,
                back_signature,
            }) => {
                assert_eq!(r, reply_to);
                assert_eq!(*c, cert);
                assert_eq!(back_signature, sig);
            }
            other => panic!("{other:?}"),
        }
        assert!(open(&[6; 32], &sealed).unwrap().is_none());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(!matches!(open(&secret, &bad), Ok(Some(_))), "byte {i}");
        }
        let reply = seal_reply(&secret, b"{}", &mut rand::rng()).unwrap();
        assert!(matches!(open(&secret, &reply), Ok(Some(Message::Reply(b))) if &b[..] == b"{}"));
        let no = seal_refusal(&secret, "expired", &mut rand::rng()).unwrap();
        assert!(matches!(open(&secret, &no), Ok(Some(Message::Refusal(w))) if w == "expired"));
        assert!(open(&secret, &[0; 10]).is_err());
    }
}
