//! End-to-end message payloads: the sealed envelope that is fragmented
//! into Sphinx packets and that the recipient reassembles. Pure functions:
//! keys, content, time and an RNG in, bytes out (and back).
//!
//! Wire payload: `version (1) || ephemeral X25519 public key (32) ||
//! ChaCha20-Poly1305 ciphertext`, with the version byte as associated data.
//!
//! Plaintext, version 2 (written): `version (1) || message id (16) ||
//! sent_at_ms (u64 BE) || sender identity key (32) || kind (1: 0 text,
//! 1 file) || name length (u8) || name (UTF-8, files only) || content length
//! (u32 BE) || content || Ed25519 signature (64)`, the signature by the
//! sender's identity over `"bastet 2026 message v2" || recipient identity
//! key || message id || sent_at_ms || kind || name length || name ||
//! content`.
//!
//! Version 1 (still read, no longer written): `version || message id ||
//! sent_at_ms || sender identity key || text length (u16 BE) || text ||
//! signature` over `"bastet 2026 message v1" || recipient identity key ||
//! message id || sent_at_ms || text`.

use std::fmt;

use rand::CryptoRng;

use crate::crypto::{self, AEAD_TAG_LEN, ClientKeys, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::{Address, Error, Result};

/// The payload format version this client writes.
pub const PAYLOAD_VERSION: u8 = 2;
/// The older single-packet text format, still read.
const PAYLOAD_VERSION_1: u8 = 1;
const SIGNATURE_CONTEXT_V1: &[u8] = b"bastet 2026 message v1";
const SIGNATURE_CONTEXT: &[u8] = b"bastet 2026 message v2";
const MESSAGE_ID_LEN: usize = 16;
const HEADER_LEN: usize = 1 + PUBLIC_KEY_LEN;
const KIND_TEXT: u8 = 0;
const KIND_FILE: u8 = 1;
/// Longest file name carried, in bytes.
pub const MAX_FILE_NAME_LEN: usize = 255;
/// Most bytes of text or file one message carries: 1 MiB.
pub const MAX_CONTENT_LEN: usize = 1 << 20;
/// Most bytes of UTF-8 text one message carries (the same limit as files).
pub const MAX_TEXT_LEN: usize = MAX_CONTENT_LEN;
/// Plaintext bytes besides the name and content.
const PLAINTEXT_OVERHEAD: usize =
    1 + MESSAGE_ID_LEN + 8 + PUBLIC_KEY_LEN + 1 + 1 + 4 + SIGNATURE_LEN;
/// Payload bytes besides the file name and content.
pub const MESSAGE_OVERHEAD: usize = HEADER_LEN + PLAINTEXT_OVERHEAD + AEAD_TAG_LEN;
/// Longest sealed payload: the envelope that is fragmented.
pub const MAX_SEALED_LEN: usize = MESSAGE_OVERHEAD + MAX_FILE_NAME_LEN + MAX_CONTENT_LEN;
// The longest envelope must be one the recipient can reassemble.
const _: () = assert!(MAX_SEALED_LEN <= bastet_sphinx::MAX_ENVELOPE_LEN);

/// A random 16-byte message id, chosen by the sender.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId(pub [u8; MESSAGE_ID_LEN]);

impl MessageId {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`MessageId::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut id = [0u8; MESSAGE_ID_LEN];
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(MessageId(id))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

/// What a message carries.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    /// UTF-8 text.
    Text(String),
    /// A file: its name (no directories) and bytes.
    File {
        /// The name the sender gave it.
        name: String,
        /// Its bytes.
        bytes: Vec<u8>,
    },
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Content::File { name, bytes } => write!(f, "File({name:?}, {} bytes)", bytes.len()),
        }
    }
}

impl Content {
    /// Bytes of text or file.
    pub fn len(&self) -> usize {
        match self {
            Content::Text(t) => t.len(),
            Content::File { bytes, .. } => bytes.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn kind_name_body(&self) -> (u8, &str, &[u8]) {
        match self {
            Content::Text(t) => (KIND_TEXT, "", t.as_bytes()),
            Content::File { name, bytes } => (KIND_FILE, name, bytes),
        }
    }

    /// Checks the size limit and, for a file, the name.
    pub fn check(&self) -> Result<()> {
        if self.len() > MAX_CONTENT_LEN {
            return Err(Error::MessageTooLong {
                len: self.len(),
                max: MAX_CONTENT_LEN,
            });
        }
        if let Content::File { name, .. } = self {
            check_file_name(name)?;
        }
        Ok(())
    }
}

/// A file name must be a plain, non-empty name: no directories, no `.` or
/// `..`, no control characters, at most [`MAX_FILE_NAME_LEN`] bytes. The
/// recipient checks it again before saving.
pub fn check_file_name(name: &str) -> Result<()> {
    let bad = |why| Err(Error::BadFileName(name.to_string(), why));
    if name.is_empty() || name.len() > MAX_FILE_NAME_LEN {
        return bad("must be 1 to 255 bytes");
    }
    if name == "." || name == ".." {
        return bad("not a file name");
    }
    if name.contains(['/', '\\']) {
        return bad("must not contain a directory separator");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("must not contain control characters");
    }
    Ok(())
}

/// A message ready to be fragmented.
#[derive(Clone, Debug)]
pub struct SealedMessage {
    /// Its id.
    pub message_id: MessageId,
    /// When it was sealed (unix milliseconds, sender's clock).
    pub sent_at_ms: u64,
    /// The end-to-end encrypted envelope, at most [`MAX_SEALED_LEN`] bytes.
    pub payload: Vec<u8>,
}

/// A file received.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceivedFile {
    /// The name the sender gave it (checked with [`check_file_name`]).
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for ReceivedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ReceivedFile({:?}, {} bytes)",
            self.name,
            self.bytes.len()
        )
    }
}

/// A message that decrypted for this client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The id the sender chose.
    pub message_id: MessageId,
    /// When the sender says it sent it (unix milliseconds, sender's clock).
    pub sent_at_ms: u64,
    /// The sender's Ed25519 identity key, as the message claims it.
    pub from: [u8; PUBLIC_KEY_LEN],
    /// Whether the signature by `from` over the message and this client's
    /// identity verifies. If false, `from` is only a claim.
    pub verified: bool,
    /// The text (empty for a file).
    pub text: String,
    /// The file, if the message carries one.
    pub file: Option<ReceivedFile>,
}

/// Checks that `text` fits one message ([`MAX_TEXT_LEN`] bytes).
pub fn check_text(text: &str) -> Result<()> {
    Content::Text(text.to_string()).check()
}

/// Encrypts `text` to `recipient` and signs it with `sender`'s identity.
pub fn seal_message<R: CryptoRng + ?Sized>(
    sender: &ClientKeys,
    recipient: &Address,
    text: &str,
    sent_at_ms: u64,
    rng: &mut R,
) -> Result<SealedMessage> {
    seal_content(
        sender,
        recipient,
        &Content::Text(text.to_string()),
        sent_at_ms,
        rng,
    )
}

/// Encrypts `content` to `recipient` and signs it with `sender`'s
/// identity. Fails with [`Error::MessageTooLong`] beyond
/// [`MAX_CONTENT_LEN`] bytes and [`Error::BadFileName`] for a file name
/// that is not a plain name.
pub fn seal_content<R: CryptoRng + ?Sized>(
    sender: &ClientKeys,
    recipient: &Address,
    content: &Content,
    sent_at_ms: u64,
    rng: &mut R,
) -> Result<SealedMessage> {
    seal_signed_for(
        sender,
        recipient,
        &recipient.identity_key,
        content,
        sent_at_ms,
        rng,
    )
}

/// [`seal_content`] with the identity bound into the signature given
/// separately, so tests can forge a message signed for someone else.
fn seal_signed_for<R: CryptoRng + ?Sized>(
    sender: &ClientKeys,
    recipient: &Address,
    signed_for: &[u8; PUBLIC_KEY_LEN],
    content: &Content,
    sent_at_ms: u64,
    rng: &mut R,
) -> Result<SealedMessage> {
    content.check()?;
    let (kind, name, body) = content.kind_name_body();
    // Both checked above: a name is at most 255 bytes, a body at most 1 MiB.
    let name_len = name.len() as u8;
    let body_len = body.len() as u32;
    let message_id = MessageId(crypto::random_bytes(rng));
    let signature = sender.sign(&signed_bytes(
        signed_for,
        &message_id,
        sent_at_ms,
        kind,
        name,
        body,
    ));

    let mut plaintext = zeroize::Zeroizing::new(Vec::with_capacity(
        PLAINTEXT_OVERHEAD + name.len() + body.len(),
    ));
    plaintext.push(PAYLOAD_VERSION);
    plaintext.extend_from_slice(&message_id.0);
    plaintext.extend_from_slice(&sent_at_ms.to_be_bytes());
    plaintext.extend_from_slice(&sender.identity_public());
    plaintext.push(kind);
    plaintext.push(name_len);
    plaintext.extend_from_slice(name.as_bytes());
    plaintext.extend_from_slice(&body_len.to_be_bytes());
    plaintext.extend_from_slice(body);
    plaintext.extend_from_slice(&signature);

    let (ephemeral, ciphertext) = crypto::seal(
        &recipient.encryption_key,
        &[PAYLOAD_VERSION],
        &plaintext,
        rng,
    )?;
    let mut payload = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    payload.push(PAYLOAD_VERSION);
    payload.extend_from_slice(&ephemeral);
    payload.extend_from_slice(&ciphertext);
    debug_assert!(payload.len() <= MAX_SEALED_LEN);
    Ok(SealedMessage {
        message_id,
        sent_at_ms,
        payload,
    })
}

/// Decrypts a payload addressed to `keys` and checks its signature. A
/// payload that does not authenticate is an error; a bad signature is not
/// (the message is returned with `verified: false`). Reads versions 1 and 2.
pub fn open_message(keys: &ClientKeys, payload: &[u8]) -> Result<ReceivedMessage> {
    let (&version, rest) = payload
        .split_first()
        .ok_or(Error::MalformedMessage("empty payload"))?;
    if version != PAYLOAD_VERSION && version != PAYLOAD_VERSION_1 {
        return Err(Error::MessageVersion(version));
    }
    if payload.len() > MAX_SEALED_LEN {
        return Err(Error::MalformedMessage("payload longer than any message"));
    }
    let (ephemeral, ciphertext) = split_array::<PUBLIC_KEY_LEN>(rest)
        .ok_or(Error::MalformedMessage("payload shorter than its header"))?;
    let plaintext = crypto::open(keys, &ephemeral, &[version], ciphertext)?;
    parse_plaintext(keys, version, &plaintext)
}

fn parse_plaintext(keys: &ClientKeys, outer: u8, plaintext: &[u8]) -> Result<ReceivedMessage> {
    let short = || Error::MalformedMessage("plaintext shorter than its fields");
    let (&version, rest) = plaintext.split_first().ok_or_else(short)?;
    if version != outer {
        return Err(Error::MessageVersion(version));
    }
    let (message_id, rest) = split_array::<MESSAGE_ID_LEN>(rest).ok_or_else(short)?;
    let (sent_at, rest) = split_array::<8>(rest).ok_or_else(short)?;
    let (from, rest) = split_array::<PUBLIC_KEY_LEN>(rest).ok_or_else(short)?;
    let message_id = MessageId(message_id);
    let sent_at_ms = u64::from_be_bytes(sent_at);
    let me = keys.identity_public();
    let (content, signature, signed) = if version == PAYLOAD_VERSION_1 {
        let (text_len, rest) = split_array::<2>(rest).ok_or_else(short)?;
        let text_len = usize::from(u16::from_be_bytes(text_len));
        if rest.len() != text_len + SIGNATURE_LEN {
            return Err(Error::MalformedMessage(
                "text length does not match the plaintext",
            ));
        }
        let (text, signature) = rest.split_at(text_len);
        let signed = signed_bytes_v1(&me, &message_id, sent_at_ms, text);
        (Content::Text(utf8(text)?), signature, signed)
    } else {
        let (&kind, rest) = rest.split_first().ok_or_else(short)?;
        let (&name_len, rest) = rest.split_first().ok_or_else(short)?;
        let name_len = usize::from(name_len);
        if rest.len() < name_len {
            return Err(short());
        }
        let (name, rest) = rest.split_at(name_len);
        let (body_len, rest) = split_array::<4>(rest).ok_or_else(short)?;
        let body_len = u32::from_be_bytes(body_len) as usize;
        if body_len > MAX_CONTENT_LEN || rest.len() != body_len + SIGNATURE_LEN {
            return Err(Error::MalformedMessage(
                "content length does not match the plaintext",
            ));
        }
        let (body, signature) = rest.split_at(body_len);
        let name = utf8(name)?;
        let signed = signed_bytes(&me, &message_id, sent_at_ms, kind, &name, body);
        let content = match kind {
            KIND_TEXT if name.is_empty() => Content::Text(utf8(body)?),
            KIND_FILE => {
                check_file_name(&name)?;
                Content::File {
                    name,
                    bytes: body.to_vec(),
                }
            }
            _ => return Err(Error::MalformedMessage("unknown content kind")),
        };
        (content, signature, signed)
    };
    let (signature, _) = split_array::<SIGNATURE_LEN>(signature).ok_or_else(short)?;
    let verified = crypto::verify(&from, &signed, &signature);
    let (text, file) = match content {
        Content::Text(t) => (t, None),
        Content::File { name, bytes } => (String::new(), Some(ReceivedFile { name, bytes })),
    };
    Ok(ReceivedMessage {
        message_id,
        sent_at_ms,
        from,
        verified,
        text,
        file,
    })
}

fn utf8(bytes: &[u8]) -> Result<String> {
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| Error::MalformedMessage("text is not UTF-8"))
}

fn signed_bytes(
    recipient_identity: &[u8; PUBLIC_KEY_LEN],
    message_id: &MessageId,
    sent_at_ms: u64,
    kind: u8,
    name: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        SIGNATURE_CONTEXT.len() + PUBLIC_KEY_LEN + MESSAGE_ID_LEN + 10 + name.len() + body.len(),
    );
    out.extend_from_slice(SIGNATURE_CONTEXT);
    out.extend_from_slice(recipient_identity);
    out.extend_from_slice(&message_id.0);
    out.extend_from_slice(&sent_at_ms.to_be_bytes());
    out.push(kind);
    // At most 255 bytes: checked before signing and after parsing.
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(body);
    out
}

fn signed_bytes_v1(
    recipient_identity: &[u8; PUBLIC_KEY_LEN],
    message_id: &MessageId,
    sent_at_ms: u64,
    text: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        SIGNATURE_CONTEXT_V1.len() + PUBLIC_KEY_LEN + MESSAGE_ID_LEN + 8 + text.len(),
    );
    out.extend_from_slice(SIGNATURE_CONTEXT_V1);
    out.extend_from_slice(recipient_identity);
    out.extend_from_slice(&message_id.0);
    out.extend_from_slice(&sent_at_ms.to_be_bytes());
    out.extend_from_slice(text);
    out
}

fn split_array<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let (head, tail) = bytes.split_first_chunk::<N>()?;
    Some((*head, tail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastet_sphinx::NodeId;

    fn address_of(keys: &ClientKeys) -> Address {
        Address {
            identity_key: keys.identity_public(),
            encryption_key: keys.encryption_public(),
            mailbox_server: NodeId([1; 32]),
            mailbox: keys.mailbox_id(),
        }
    }

    fn pair() -> (ClientKeys, ClientKeys) {
        let mut rng = rand::rng();
        (
            ClientKeys::generate(&mut rng),
            ClientKeys::generate(&mut rng),
        )
    }

    #[test]
    fn round_trip_verifies_and_keeps_every_field() {
        let (alice, bob) = pair();
        let sealed = seal_message(
            &alice,
            &address_of(&bob),
            "héllo bob",
            1_700_000_000_123,
            &mut rand::rng(),
        )
        .unwrap();
        assert_eq!(sealed.payload.len(), MESSAGE_OVERHEAD + "héllo bob".len());
        let got = open_message(&bob, &sealed.payload).unwrap();
        assert_eq!(
            got,
            ReceivedMessage {
                message_id: sealed.message_id,
                sent_at_ms: 1_700_000_000_123,
                from: alice.identity_public(),
                verified: true,
                text: "héllo bob".into(),
                file: None,
            }
        );
    }

    #[test]
    fn a_file_round_trips_with_its_name() {
        let (alice, bob) = pair();
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let content = Content::File {
            name: "report 2026.pdf".into(),
            bytes: bytes.clone(),
        };
        let sealed =
            seal_content(&alice, &address_of(&bob), &content, 9, &mut rand::rng()).unwrap();
        assert_eq!(
            sealed.payload.len(),
            MESSAGE_OVERHEAD + "report 2026.pdf".len() + bytes.len()
        );
        let got = open_message(&bob, &sealed.payload).unwrap();
        assert!(got.verified);
        assert_eq!(got.text, "");
        assert_eq!(
            got.file,
            Some(ReceivedFile {
                name: "report 2026.pdf".into(),
                bytes
            })
        );
    }

    #[test]
    fn file_names_must_be_plain_names() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a\\b",
            "x\ny",
            &"n".repeat(256),
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
            let content = Content::File {
                name: bad.to_string(),
                bytes: vec![1],
            };
            let (alice, bob) = pair();
            assert!(matches!(
                seal_content(&alice, &address_of(&bob), &content, 0, &mut rand::rng()),
                Err(Error::BadFileName(..))
            ));
        }
        for good in ["a", "x.tar.gz", "日本.txt", &"n".repeat(255)] {
            assert!(check_file_name(good).is_ok(), "{good:?}");
        }
    }

    /// A version-1 payload as the previous release sealed it.
    fn seal_v1(sender: &ClientKeys, to: &Address, text: &str) -> Vec<u8> {
        let id = MessageId([3; 16]);
        let signature = sender.sign(&signed_bytes_v1(&to.identity_key, &id, 77, text.as_bytes()));
        let mut plaintext = vec![PAYLOAD_VERSION_1];
        plaintext.extend_from_slice(&id.0);
        plaintext.extend_from_slice(&77u64.to_be_bytes());
        plaintext.extend_from_slice(&sender.identity_public());
        plaintext.extend_from_slice(&(text.len() as u16).to_be_bytes());
        plaintext.extend_from_slice(text.as_bytes());
        plaintext.extend_from_slice(&signature);
        let (e, ct) = crypto::seal(
            &to.encryption_key,
            &[PAYLOAD_VERSION_1],
            &plaintext,
            &mut rand::rng(),
        )
        .unwrap();
        let mut payload = vec![PAYLOAD_VERSION_1];
        payload.extend_from_slice(&e);
        payload.extend_from_slice(&ct);
        payload
    }

    #[test]
    fn version_1_payloads_are_still_read() {
        let (alice, bob) = pair();
        let payload = seal_v1(&alice, &address_of(&bob), "from the old client");
        let got = open_message(&bob, &payload).unwrap();
        assert!(got.verified);
        assert_eq!(got.text, "from the old client");
        assert_eq!(got.message_id, MessageId([3; 16]));
        assert_eq!(got.file, None);
        // The version byte is authenticated: relabelled, it does not open.
        let mut relabelled = payload.clone();
        relabelled[0] = PAYLOAD_VERSION;
        assert!(open_message(&bob, &relabelled).is_err());
    }

    #[test]
    fn the_largest_text_is_sealed_and_one_more_byte_is_refused() {
        let (alice, bob) = pair();
        let to = address_of(&bob);
        let max = "x".repeat(MAX_TEXT_LEN);
        let sealed = seal_message(&alice, &to, &max, 0, &mut rand::rng()).unwrap();
        assert_eq!(sealed.payload.len(), MESSAGE_OVERHEAD + MAX_TEXT_LEN);
        assert!(sealed.payload.len() <= MAX_SEALED_LEN);
        assert_eq!(open_message(&bob, &sealed.payload).unwrap().text, max);
        let err = seal_message(&alice, &to, &format!("{max}x"), 0, &mut rand::rng()).unwrap_err();
        assert!(matches!(
            err,
            Error::MessageTooLong {
                max: MAX_TEXT_LEN,
                ..
            }
        ));
        assert!(err.to_string().contains(&MAX_TEXT_LEN.to_string()), "{err}");
    }

    #[test]
    fn any_tampered_byte_fails_to_decrypt() {
        let (alice, bob) = pair();
        let sealed = seal_message(&alice, &address_of(&bob), "hi", 5, &mut rand::rng()).unwrap();
        for i in 0..sealed.payload.len() {
            let mut bad = sealed.payload.clone();
            bad[i] ^= 0x01;
            let err = open_message(&bob, &bad).unwrap_err();
            assert!(
                matches!(err, Error::Undecryptable | Error::MessageVersion(_)),
                "byte {i}: {err}"
            );
        }
        let truncated = &sealed.payload[..sealed.payload.len() - 1];
        assert!(matches!(
            open_message(&bob, truncated),
            Err(Error::Undecryptable)
        ));
        assert!(open_message(&bob, &sealed.payload[..10]).is_err());
        assert!(open_message(&bob, &[]).is_err());
    }

    #[test]
    fn another_recipient_cannot_decrypt() {
        let (alice, bob) = pair();
        let sealed =
            seal_message(&alice, &address_of(&bob), "for bob", 5, &mut rand::rng()).unwrap();
        assert!(matches!(
            open_message(&alice, &sealed.payload),
            Err(Error::Undecryptable)
        ));
    }

    #[test]
    fn a_signature_bound_to_another_recipient_is_reported_unverified() {
        let (alice, bob) = pair();
        let carol = ClientKeys::generate(&mut rand::rng());
        // Alice signed a message for Carol; someone re-encrypts it to Bob.
        let forged = seal_signed_for(
            &alice,
            &address_of(&bob),
            &carol.identity_public(),
            &Content::Text("meant for carol".into()),
            5,
            &mut rand::rng(),
        )
        .unwrap();
        let got = open_message(&bob, &forged.payload).unwrap();
        assert!(!got.verified);
        assert_eq!(got.from, alice.identity_public());
    }

    #[test]
    fn the_payload_never_contains_the_text_in_clear() {
        let (alice, bob) = pair();
        let marker = "MARKER-6f1e0c";
        let sealed = seal_message(&alice, &address_of(&bob), marker, 5, &mut rand::rng()).unwrap();
        assert!(
            !sealed
                .payload
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
        );
    }

    #[test]
    fn unknown_payload_versions_are_named() {
        let (alice, bob) = pair();
        let mut sealed = seal_message(&alice, &address_of(&bob), "x", 5, &mut rand::rng()).unwrap();
        sealed.payload[0] = 9;
        assert!(matches!(
            open_message(&bob, &sealed.payload),
            Err(Error::MessageVersion(9))
        ));
        sealed.payload[0] = PAYLOAD_VERSION_1;
        assert!(matches!(
            open_message(&bob, &sealed.payload),
            Err(Error::Undecryptable)
        ));
    }
}
