//! Layer 1, content: the plaintext, signed by the sender's device key and
//! encrypted to the recipient device with a hybrid KEM.
//!
//! Wire: `version (1) || ephemeral X25519 public key (32) || ML-KEM-768
//! ciphertext (1088) || ChaCha20-Poly1305(plaintext)`, with the version
//! byte as associated data. The AEAD key is HKDF-SHA256 with salt
//! `"bastet 2026 content hybrid kem v1"` over `X25519 shared secret ||
//! ML-KEM shared secret`, info `ephemeral public key || ML-KEM ciphertext
//! || recipient X25519 key || recipient ML-KEM key` (both ciphertexts and
//! both recipient keys bound, as in X-Wing); it is used once, so the nonce
//! is zero.
//!
//! Plaintext: `message id (16) || sent_at_ms (u64 BE) || sender identity
//! key (32) || sender device key (32) || sender chain head (seq u64 BE ||
//! hash 32) || kind (1: 0 text, 1 file, 2 chain links, 3 chain links
//! request, 4 a copy for another device of the sender: content is the
//! identity it was sent to (32) || 0 text or 1 file (1) || the text or
//! file), 5 a re-key secret: seq (u64 BE) || secret (32), 6 a re-key
//! secret sent to a contact, for another device of the sender: contact
//! identity (32) || seq || secret), 7 a call signal: see crate::calls)
//! || name length (u8) || name || content
//! length (u32 BE) ||
//! content || Ed25519 signature (64)`, signed by the sender's device key
//! over `"bastet 2026 content v2" || recipient identity key || recipient
//! device key ||`
//! everything before the signature: the recipient is bound into the
//! signature, so a message cannot be re-addressed.

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce};
use hkdf::Hkdf;
use ml_kem::{Decapsulate, Encapsulate, TryKeyInit};
use rand::CryptoRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::{
    self, AEAD_TAG_LEN, ClientKeys, KEM_CIPHERTEXT_LEN, KEM_PUBLIC_LEN, PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
};
use crate::identity::{HEAD_LEN, Head};
use crate::message::{Content, MAX_CONTENT_LEN, MessageId, check_file_name};
use crate::{Error, Result};

/// The content-layer format this client writes and reads.
pub const CONTENT_VERSION: u8 = 2;
const HEADER_LEN: usize = 1 + PUBLIC_KEY_LEN + KEM_CIPHERTEXT_LEN;
const SIGNATURE_CONTEXT: &[u8] = b"bastet 2026 content v2";
const KDF_SALT: &[u8] = b"bastet 2026 content hybrid kem v1";
const KIND_TEXT: u8 = 0;
const KIND_FILE: u8 = 1;
const KIND_LINKS: u8 = 2;
const KIND_LINKS_REQUEST: u8 = 3;
const KIND_COPY: u8 = 4;
const KIND_REKEY: u8 = 5;
const KIND_PEER_REKEY: u8 = 6;
const KIND_CALL: u8 = 7;
const ID_LEN: usize = 16;
/// Plaintext bytes besides the name and content.
const PLAINTEXT_OVERHEAD: usize =
    ID_LEN + 8 + 2 * PUBLIC_KEY_LEN + HEAD_LEN + 1 + 1 + 4 + SIGNATURE_LEN;
/// Bytes the content layer adds to the name and content.
pub const OVERHEAD: usize = HEADER_LEN + PLAINTEXT_OVERHEAD + AEAD_TAG_LEN;
/// Longest content-layer ciphertext.
pub const MAX_LEN: usize =
    OVERHEAD + crate::message::MAX_FILE_NAME_LEN + MAX_CONTENT_LEN + COPY_HEADER;
/// Bytes a copy for another device of the sender adds to its text or file.
pub const COPY_HEADER: usize = PUBLIC_KEY_LEN + 1;

const LAYER: &str = "content";

fn layer_error(why: impl Into<String>) -> Error {
    Error::Layer {
        layer: LAYER,
        why: why.into(),
    }
}

/// The recipient device's public keys, from its contact card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// Ed25519 identity key.
    pub identity: [u8; PUBLIC_KEY_LEN],
    /// Ed25519 device key.
    pub device: [u8; PUBLIC_KEY_LEN],
    /// X25519 content key.
    pub content: [u8; PUBLIC_KEY_LEN],
    /// ML-KEM-768 encapsulation key.
    pub kem: Box<[u8; KEM_PUBLIC_LEN]>,
}

impl Recipient {
    /// The keys a sender encrypts to for the device holding `keys` (what
    /// its contact card carries).
    pub fn of(keys: &ClientKeys) -> Self {
        Recipient {
            identity: keys.identity_public(),
            device: keys.device_public(),
            content: keys.content_public(),
            kem: Box::new(keys.kem_public()),
        }
    }

    /// The keys of device `cert` of identity `identity`.
    pub fn of_cert(identity: &[u8; PUBLIC_KEY_LEN], cert: &crate::identity::DeviceCert) -> Self {
        Recipient {
            identity: *identity,
            device: cert.device,
            content: cert.content,
            kem: cert.kem.clone(),
        }
    }
}

/// A content layer that decrypted for this device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The sender's message id.
    pub message_id: MessageId,
    /// The sender's clock, unix milliseconds.
    pub sent_at_ms: u64,
    /// The identity key the sender claims.
    pub sender_identity: [u8; PUBLIC_KEY_LEN],
    /// The device key that signed.
    pub sender_device: [u8; PUBLIC_KEY_LEN],
    /// The sender's identity chain head when it sent.
    pub sender_head: Head,
    /// Text or file.
    pub content: Content,
    /// Whether the signature by `sender_device` over the message and this
    /// device's keys verifies (strict Ed25519).
    pub signature_ok: bool,
}

/// Signs `content` with `sender`'s device key for `recipient` and encrypts
/// it to the recipient device.
pub fn seal<R: CryptoRng + ?Sized>(
    sender: &ClientKeys,
    sender_head: &Head,
    recipient: &Recipient,
    message_id: MessageId,
    content: &Content,
    sent_at_ms: u64,
    rng: &mut R,
) -> Result<Vec<u8>> {
    seal_signed_for(
        sender,
        sender_head,
        recipient,
        (&recipient.identity, &recipient.device),
        message_id,
        content,
        sent_at_ms,
        rng,
    )
}

/// [`seal`] with the identity and device bound into the signature given
/// separately, so tests can forge a message signed for someone else.
#[allow(clippy::too_many_arguments)]
pub(crate) fn seal_signed_for<R: CryptoRng + ?Sized>(
    sender: &ClientKeys,
    sender_head: &Head,
    recipient: &Recipient,
    signed_for: (&[u8; PUBLIC_KEY_LEN], &[u8; PUBLIC_KEY_LEN]),
    message_id: MessageId,
    content: &Content,
    sent_at_ms: u64,
    rng: &mut R,
) -> Result<Vec<u8>> {
    content.check()?;
    let (kind, name, body) = kind_name_body(content);
    let body: &[u8] = &body;
    let mut plaintext = Zeroizing::new(Vec::with_capacity(
        PLAINTEXT_OVERHEAD + name.len() + body.len(),
    ));
    plaintext.extend_from_slice(&message_id.0);
    plaintext.extend_from_slice(&sent_at_ms.to_be_bytes());
    plaintext.extend_from_slice(&sender.identity_public());
    plaintext.extend_from_slice(&sender.device_public());
    plaintext.extend_from_slice(&sender_head.to_bytes());
    plaintext.push(kind);
    // Checked above: a name is at most 255 bytes, a body at most 1 MiB.
    plaintext.push(name.len() as u8);
    plaintext.extend_from_slice(name.as_bytes());
    plaintext.extend_from_slice(&(body.len() as u32).to_be_bytes());
    plaintext.extend_from_slice(body);
    let signature = sender.sign_device(&signed_bytes(signed_for.0, signed_for.1, &plaintext));
    plaintext.extend_from_slice(&signature);

    let ephemeral = StaticSecret::from(*crypto::random_secret(rng));
    let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&PublicKey::from(recipient.content));
    if !shared.was_contributory() {
        return Err(Error::Contact(
            "the contact's content key is invalid (a low-order point)".into(),
        ));
    }
    let ek = ml_kem::ml_kem_768::EncapsulationKey::new_from_slice(recipient.kem.as_slice())
        .map_err(|_| Error::Contact("the contact's ML-KEM-768 key is invalid".into()))?;
    let (kem_ct, kem_shared) = ek.encapsulate_with_rng(rng);
    let key = derive_key(
        shared.as_bytes(),
        kem_shared.as_slice(),
        &ephemeral_public,
        kem_ct.as_slice(),
        &recipient.content,
        recipient.kem.as_slice(),
    );
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + AEAD_TAG_LEN);
    out.push(CONTENT_VERSION);
    out.extend_from_slice(&ephemeral_public);
    out.extend_from_slice(kem_ct.as_slice());
    let mut body = plaintext.to_vec();
    ChaCha20Poly1305::new(&(*key).into())
        .encrypt_in_place(&Nonce::default(), &[CONTENT_VERSION], &mut body)
        .map_err(|_| layer_error("plaintext too long for the AEAD"))?;
    out.extend_from_slice(&body);
    zeroize::Zeroize::zeroize(&mut body);
    Ok(out)
}

/// Decrypts a content layer addressed to `keys`' device and checks its
/// signature (the result says whether it verified; the caller decides).
pub fn open(keys: &ClientKeys, bytes: &[u8]) -> Result<Opened> {
    if bytes.len() > MAX_LEN {
        return Err(layer_error("longer than any message"));
    }
    let (&version, rest) = bytes.split_first().ok_or_else(|| layer_error("empty"))?;
    if version != CONTENT_VERSION {
        return Err(layer_error(format!(
            "format version {version} is not supported by this version of bastet"
        )));
    }
    if rest.len() < HEADER_LEN - 1 + AEAD_TAG_LEN {
        return Err(layer_error("shorter than its header"));
    }
    let (ephemeral_public, rest) = rest.split_at(PUBLIC_KEY_LEN);
    let (kem_ct, ciphertext) = rest.split_at(KEM_CIPHERTEXT_LEN);
    let mut eph = [0u8; PUBLIC_KEY_LEN];
    eph.copy_from_slice(ephemeral_public);
    let shared = keys.content_secret().diffie_hellman(&PublicKey::from(eph));
    if !shared.was_contributory() {
        return Err(layer_error("does not decrypt for this device"));
    }
    let kem_shared = keys
        .kem_secret()
        .decapsulate_slice(kem_ct)
        .map_err(|_| layer_error("malformed ML-KEM ciphertext"))?;
    let key = derive_key(
        shared.as_bytes(),
        kem_shared.as_slice(),
        &eph,
        kem_ct,
        &keys.content_public(),
        &keys.kem_public(),
    );
    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    ChaCha20Poly1305::new(&(*key).into())
        .decrypt_in_place(&Nonce::default(), &[version], &mut *plaintext)
        .map_err(|_| {
            layer_error("does not decrypt for this device (altered, or not addressed to it)")
        })?;
    parse(keys, &plaintext)
}

fn parse(keys: &ClientKeys, plaintext: &[u8]) -> Result<Opened> {
    let short = || layer_error("plaintext shorter than its fields");
    if plaintext.len() < PLAINTEXT_OVERHEAD {
        return Err(short());
    }
    let (signed, signature) = plaintext.split_at(plaintext.len() - SIGNATURE_LEN);
    let (message_id, rest) = take::<ID_LEN>(signed).ok_or_else(short)?;
    let (sent_at, rest) = take::<8>(rest).ok_or_else(short)?;
    let (sender_identity, rest) = take::<PUBLIC_KEY_LEN>(rest).ok_or_else(short)?;
    let (sender_device, rest) = take::<PUBLIC_KEY_LEN>(rest).ok_or_else(short)?;
    let (sender_head, rest) = take::<HEAD_LEN>(rest).ok_or_else(short)?;
    let (&kind, rest) = rest.split_first().ok_or_else(short)?;
    let (&name_len, rest) = rest.split_first().ok_or_else(short)?;
    let name_len = usize::from(name_len);
    if rest.len() < name_len {
        return Err(short());
    }
    let (name, rest) = rest.split_at(name_len);
    let (body_len, body) = take::<4>(rest).ok_or_else(short)?;
    let body_len = u32::from_be_bytes(body_len) as usize;
    if body_len > MAX_CONTENT_LEN + COPY_HEADER || body.len() != body_len {
        return Err(layer_error("content length does not match the plaintext"));
    }
    let name = utf8(name)?;
    let content = match kind {
        KIND_TEXT if name.is_empty() => Content::Text(utf8(body)?),
        KIND_FILE => {
            check_file_name(&name)?;
            Content::File {
                name,
                bytes: body.to_vec(),
            }
        }
        KIND_LINKS if name.is_empty() => Content::Links(body.to_vec()),
        KIND_REKEY if name.is_empty() => {
            let (seq, r) = take::<8>(body).ok_or_else(short)?;
            let r: [u8; 32] = r
                .try_into()
                .map_err(|_| layer_error("a re-key is 40 bytes"))?;
            Content::Rekey {
                seq: u64::from_be_bytes(seq),
                r,
            }
        }
        KIND_PEER_REKEY if name.is_empty() => {
            let (peer, rest) = take::<PUBLIC_KEY_LEN>(body).ok_or_else(short)?;
            let (seq, r) = take::<8>(rest).ok_or_else(short)?;
            let r: [u8; 32] = r
                .try_into()
                .map_err(|_| layer_error("a re-key for a contact is 72 bytes"))?;
            Content::PeerRekey {
                peer,
                seq: u64::from_be_bytes(seq),
                r,
            }
        }
        KIND_COPY => {
            let (to, rest) = take::<PUBLIC_KEY_LEN>(body).ok_or_else(short)?;
            let (&inner, rest) = rest.split_first().ok_or_else(short)?;
            if rest.len() > MAX_CONTENT_LEN {
                return Err(layer_error("a copy longer than any message"));
            }
            let content = match inner {
                KIND_TEXT if name.is_empty() => Content::Text(utf8(rest)?),
                KIND_FILE => {
                    check_file_name(&name)?;
                    Content::File {
                        name,
                        bytes: rest.to_vec(),
                    }
                }
                _ => return Err(layer_error("unknown content kind in a copy")),
            };
            Content::Copy {
                to,
                content: Box::new(content),
            }
        }
        // Every failure of this parser is a content-layer error (the fuzz
        // target checks it), with the signal's own reason.
        KIND_CALL if name.is_empty() => Content::Call(
            crate::calls::CallSignal::decode(body).map_err(|e| layer_error(e.to_string()))?,
        ),
        KIND_LINKS_REQUEST if name.is_empty() => {
            let after: [u8; 8] = body
                .try_into()
                .map_err(|_| layer_error("a chain links request is 8 bytes"))?;
            Content::LinksRequest {
                after: u64::from_be_bytes(after),
            }
        }
        _ => return Err(layer_error("unknown content kind")),
    };
    let mut sig = [0u8; SIGNATURE_LEN];
    sig.copy_from_slice(signature);
    let signature_ok = crypto::verify(
        &sender_device,
        &signed_bytes(&keys.identity_public(), &keys.device_public(), signed),
        &sig,
    );
    Ok(Opened {
        message_id: MessageId(message_id),
        sent_at_ms: u64::from_be_bytes(sent_at),
        sender_identity,
        sender_device,
        sender_head: Head::from_bytes(&sender_head),
        content,
        signature_ok,
    })
}

fn kind_name_body(content: &Content) -> (u8, &str, std::borrow::Cow<'_, [u8]>) {
    use std::borrow::Cow;
    match content {
        Content::Text(t) => (KIND_TEXT, "", Cow::Borrowed(t.as_bytes())),
        Content::File { name, bytes } => (KIND_FILE, name, Cow::Borrowed(bytes)),
        Content::Links(links) => (KIND_LINKS, "", Cow::Borrowed(links)),
        Content::LinksRequest { after } => (
            KIND_LINKS_REQUEST,
            "",
            Cow::Owned(after.to_be_bytes().to_vec()),
        ),
        Content::Rekey { seq, r } => {
            let mut out = seq.to_be_bytes().to_vec();
            out.extend_from_slice(r);
            (KIND_REKEY, "", Cow::Owned(out))
        }
        Content::PeerRekey { peer, seq, r } => {
            let mut out = peer.to_vec();
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(r);
            (KIND_PEER_REKEY, "", Cow::Owned(out))
        }
        Content::Call(signal) => (KIND_CALL, "", Cow::Owned(signal.encode())),
        Content::Copy { to, content } => {
            let (inner, name, body) = kind_name_body(content);
            let mut out = Vec::with_capacity(PUBLIC_KEY_LEN + 1 + body.len());
            out.extend_from_slice(to);
            out.push(inner);
            out.extend_from_slice(&body);
            (KIND_COPY, name, Cow::Owned(out))
        }
    }
}

fn signed_bytes(
    recipient_identity: &[u8; PUBLIC_KEY_LEN],
    recipient_device: &[u8; PUBLIC_KEY_LEN],
    fields: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNATURE_CONTEXT.len() + 2 * PUBLIC_KEY_LEN + fields.len());
    out.extend_from_slice(SIGNATURE_CONTEXT);
    out.extend_from_slice(recipient_identity);
    out.extend_from_slice(recipient_device);
    out.extend_from_slice(fields);
    out
}

fn derive_key(
    x25519_shared: &[u8],
    kem_shared: &[u8],
    ephemeral_public: &[u8],
    kem_ct: &[u8],
    recipient_content: &[u8],
    recipient_kem: &[u8],
) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(64));
    ikm.extend_from_slice(x25519_shared);
    ikm.extend_from_slice(kem_shared);
    let mut info = Vec::with_capacity(PUBLIC_KEY_LEN * 2 + KEM_CIPHERTEXT_LEN + KEM_PUBLIC_LEN);
    info.extend_from_slice(ephemeral_public);
    info.extend_from_slice(kem_ct);
    info.extend_from_slice(recipient_content);
    info.extend_from_slice(recipient_kem);
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
    let _ = Hkdf::<Sha256>::new(Some(KDF_SALT), &ikm).expand(&info, key.as_mut());
    key
}

fn utf8(bytes: &[u8]) -> Result<String> {
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| layer_error("text is not UTF-8"))
}

fn take<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<N>()?;
    Some((*head, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Head = Head {
        seq: 3,
        hash: [0x5a; 32],
    };

    fn recipient(keys: &ClientKeys) -> Recipient {
        Recipient::of(keys)
    }

    fn keys() -> ClientKeys {
        ClientKeys::generate(&mut rand::rng())
    }

    fn is_content_error(r: &Result<Opened>) -> bool {
        matches!(
            r,
            Err(Error::Layer {
                layer: "content",
                ..
            })
        )
    }

    #[test]
    fn text_and_files_round_trip_signed() {
        let (alice, bob) = (keys(), keys());
        for content in [
            Content::Text("hello".into()),
            Content::Text(String::new()),
            Content::File {
                name: "a b.txt".into(),
                bytes: vec![1, 2, 3],
            },
            Content::Links(vec![0, 1, 9]),
            Content::LinksRequest { after: 7 },
            Content::Rekey { seq: 3, r: [8; 32] },
            Content::PeerRekey {
                peer: [1; 32],
                seq: 4,
                r: [9; 32],
            },
            Content::Copy {
                to: [4; 32],
                content: Box::new(Content::Text("sent".into())),
            },
            Content::Call(crate::calls::CallSignal::Hangup(crate::calls::Hangup {
                call_id: crate::CallId([6; 16]),
                reason: crate::calls::HangupReason::Busy,
            })),
            Content::Call(crate::calls::CallSignal::Offer(
                crate::calls::new_offer(
                    &mut rand::rng(),
                    "constrained",
                    [1; 32],
                    5,
                    std::time::Duration::from_secs(9),
                )
                .unwrap()
                .0,
            )),
            Content::Copy {
                to: [4; 32],
                content: Box::new(Content::File {
                    name: "f.txt".into(),
                    bytes: vec![7; 9],
                }),
            },
        ] {
            let sealed = seal(
                &alice,
                &HEAD,
                &recipient(&bob),
                MessageId([3; 16]),
                &content,
                42,
                &mut rand::rng(),
            )
            .unwrap();
            let name_len = match &content {
                Content::File { name, .. } => name.len(),
                Content::Copy { content, .. } => match content.as_ref() {
                    Content::File { name, .. } => name.len(),
                    _ => 0,
                },
                _ => 0,
            };
            assert_eq!(sealed.len(), OVERHEAD + name_len + content.len());
            let opened = open(&bob, &sealed).unwrap();
            assert_eq!(opened.message_id, MessageId([3; 16]));
            assert_eq!(opened.sent_at_ms, 42);
            assert_eq!(opened.sender_identity, alice.identity_public());
            assert_eq!(opened.sender_device, alice.device_public());
            assert_eq!(opened.content, content);
            assert_eq!(opened.sender_head, HEAD);
            assert!(opened.signature_ok);
        }
    }

    #[test]
    fn any_altered_byte_is_detected() {
        let (alice, bob) = (keys(), keys());
        let sealed = seal(
            &alice,
            &HEAD,
            &recipient(&bob),
            MessageId([3; 16]),
            &Content::Text("tamper with me".into()),
            1,
            &mut rand::rng(),
        )
        .unwrap();
        // Every byte, each time another bit (the top bit of the ephemeral
        // key's last byte included: X25519 ignores it, the KDF does not).
        for i in 0..sealed.len() {
            let mask = 1u8 << (i % 8);
            let mut bad = sealed.clone();
            bad[i] ^= mask;
            let r = open(&bob, &bad);
            assert!(is_content_error(&r), "byte {i} ^ {mask:#x}: {r:?}");
        }
        let mut bad = sealed.clone();
        bad[PUBLIC_KEY_LEN] ^= 0x80;
        assert!(is_content_error(&open(&bob, &bad)));
        for len in [
            0,
            1,
            HEADER_LEN,
            HEADER_LEN + AEAD_TAG_LEN,
            sealed.len() - 1,
        ] {
            let r = open(&bob, &sealed[..len]);
            assert!(is_content_error(&r), "cut to {len}: {r:?}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(is_content_error(&open(&bob, &longer)));
        assert!(is_content_error(&open(
            &bob,
            &vec![CONTENT_VERSION; MAX_LEN + 1]
        )));
        assert!(open(&bob, &sealed).unwrap().signature_ok);
    }

    #[test]
    fn a_layer_for_someone_else_does_not_open() {
        let (alice, bob, carol) = (keys(), keys(), keys());
        let sealed = seal(
            &alice,
            &HEAD,
            &recipient(&bob),
            MessageId([3; 16]),
            &Content::Text("for bob".into()),
            1,
            &mut rand::rng(),
        )
        .unwrap();
        assert!(is_content_error(&open(&carol, &sealed)));
        assert!(is_content_error(&open(&alice, &sealed)));
        // Bob's X25519 key with Carol's ML-KEM key: neither half alone
        // suffices.
        let mut mixed = recipient(&bob);
        *mixed.kem = carol.kem_public();
        let sealed = seal(
            &alice,
            &HEAD,
            &mixed,
            MessageId([3; 16]),
            &Content::Text("x".into()),
            1,
            &mut rand::rng(),
        )
        .unwrap();
        assert!(is_content_error(&open(&bob, &sealed)));
        assert!(is_content_error(&open(&carol, &sealed)));
    }

    #[test]
    fn a_signature_for_someone_else_does_not_verify() {
        let (alice, bob, carol) = (keys(), keys(), keys());
        let sealed = seal_signed_for(
            &alice,
            &HEAD,
            &recipient(&bob),
            (&carol.identity_public(), &carol.device_public()),
            MessageId([3; 16]),
            &Content::Text("re-addressed".into()),
            1,
            &mut rand::rng(),
        )
        .unwrap();
        let opened = open(&bob, &sealed).unwrap();
        assert!(!opened.signature_ok);
        // Bound to the device key as well as the identity key.
        let sealed = seal_signed_for(
            &alice,
            &HEAD,
            &recipient(&bob),
            (&bob.identity_public(), &carol.device_public()),
            MessageId([3; 16]),
            &Content::Text("re-addressed".into()),
            1,
            &mut rand::rng(),
        )
        .unwrap();
        assert!(!open(&bob, &sealed).unwrap().signature_ok);
    }

    #[test]
    fn invalid_recipient_keys_and_content_are_refused() {
        let (alice, bob) = (keys(), keys());
        let mut low_order = recipient(&bob);
        low_order.content = [0; PUBLIC_KEY_LEN];
        assert!(matches!(
            seal(
                &alice,
                &HEAD,
                &low_order,
                MessageId([0; 16]),
                &Content::Text("x".into()),
                1,
                &mut rand::rng()
            ),
            Err(Error::Contact(_))
        ));
        let bad_name = Content::File {
            name: "../x".into(),
            bytes: vec![],
        };
        assert!(matches!(
            seal(
                &alice,
                &HEAD,
                &recipient(&bob),
                MessageId([0; 16]),
                &bad_name,
                1,
                &mut rand::rng()
            ),
            Err(Error::BadFileName(..))
        ));
        // A call offer naming no known profile.
        let (mut offer, _) = crate::calls::new_offer(
            &mut rand::rng(),
            "normal",
            [1; 32],
            5,
            std::time::Duration::from_secs(9),
        )
        .unwrap();
        offer.profile = "x".repeat(200);
        assert!(matches!(
            seal(
                &alice,
                &HEAD,
                &recipient(&bob),
                MessageId([0; 16]),
                &Content::Call(crate::calls::CallSignal::Offer(offer)),
                1,
                &mut rand::rng()
            ),
            Err(Error::UnknownCallProfile(..))
        ));
        // A low-order ephemeral key on the wire.
        let mut sealed = seal(
            &alice,
            &HEAD,
            &recipient(&bob),
            MessageId([0; 16]),
            &Content::Text("x".into()),
            1,
            &mut rand::rng(),
        )
        .unwrap();
        sealed[1..1 + PUBLIC_KEY_LEN].fill(0);
        assert!(is_content_error(&open(&bob, &sealed)));
    }

    #[test]
    fn key_derivation_is_pinned() {
        // A regression vector of our own: HKDF-SHA256 over fixed inputs.
        let key = derive_key(
            &[1; 32],
            &[2; 32],
            &[3; 32],
            &[4; KEM_CIPHERTEXT_LEN],
            &[5; 32],
            &[6; KEM_PUBLIC_LEN],
        );
        assert_eq!(
            hex::encode(*key),
            "fc9dc7bd7877ecc94a5616045ec3de45d6fa25a217ca9c623975000891cf9341"
        );
        // Every input matters.
        let other = derive_key(
            &[1; 32],
            &[2; 32],
            &[3; 32],
            &[4; KEM_CIPHERTEXT_LEN],
            &[5; 32],
            &[7; KEM_PUBLIC_LEN],
        );
        assert_ne!(*key, *other);
        let other = derive_key(
            &[1; 32],
            &[9; 32],
            &[3; 32],
            &[4; KEM_CIPHERTEXT_LEN],
            &[5; 32],
            &[6; KEM_PUBLIC_LEN],
        );
        assert_ne!(*key, *other);
    }
}
