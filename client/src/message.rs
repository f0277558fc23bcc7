//! End-to-end message payloads: what travels inside one Sphinx packet and
//! what the mailbox stores. Pure functions: keys, text, time and an RNG in,
//! bytes out (and back).
//!
//! Wire payload: `version (1) || ephemeral X25519 public key (32) ||
//! ChaCha20-Poly1305 ciphertext`, with the version byte as associated data.
//! Plaintext: `version (1) || message id (16) || sent_at_ms (u64 BE) ||
//! sender identity key (32) || text length (u16 BE) || text (UTF-8) ||
//! Ed25519 signature (64)`, the signature by the sender's identity over
//! `"bastet 2026 message v1" || recipient identity key || message id ||
//! sent_at_ms || text`.

use std::fmt;

use bastet_sphinx::MAX_MESSAGE_LEN;
use rand::CryptoRng;

use crate::crypto::{self, AEAD_TAG_LEN, ClientKeys, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::{Address, Error, Result};

/// The payload format version this client writes and reads.
pub const PAYLOAD_VERSION: u8 = 1;
const SIGNATURE_CONTEXT: &[u8] = b"bastet 2026 message v1";
const MESSAGE_ID_LEN: usize = 16;
const HEADER_LEN: usize = 1 + PUBLIC_KEY_LEN;
/// Plaintext bytes besides the text itself.
const PLAINTEXT_OVERHEAD: usize = 1 + MESSAGE_ID_LEN + 8 + PUBLIC_KEY_LEN + 2 + SIGNATURE_LEN;
/// Payload bytes besides the text itself.
pub const MESSAGE_OVERHEAD: usize = HEADER_LEN + PLAINTEXT_OVERHEAD + AEAD_TAG_LEN;
/// Most bytes of UTF-8 text one message carries (one Sphinx packet).
pub const MAX_TEXT_LEN: usize = MAX_MESSAGE_LEN - MESSAGE_OVERHEAD;

/// A random 16-byte message id, chosen by the sender.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId(pub [u8; MESSAGE_ID_LEN]);

impl MessageId {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

/// A message ready to go into a Sphinx packet.
#[derive(Clone, Debug)]
pub struct SealedMessage {
    /// Its id.
    pub message_id: MessageId,
    /// When it was sealed (unix milliseconds, sender's clock).
    pub sent_at_ms: u64,
    /// The end-to-end encrypted payload, at most
    /// [`bastet_sphinx::MAX_MESSAGE_LEN`] bytes.
    pub payload: Vec<u8>,
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
    /// The text.
    pub text: String,
}

/// Checks that `text` fits one message ([`MAX_TEXT_LEN`] bytes).
pub fn check_text(text: &str) -> Result<()> {
    if text.len() > MAX_TEXT_LEN {
        return Err(Error::MessageTooLong {
            len: text.len(),
            max: MAX_TEXT_LEN,
            payload_max: MAX_MESSAGE_LEN,
        });
    }
    Ok(())
}

/// Encrypts `text` to `recipient` and signs it with `sender`'s identity.
/// Fails with [`Error::MessageTooLong`] if the text exceeds [`MAX_TEXT_LEN`].
pub fn seal_message<R: CryptoRng + ?Sized>(
    sender: &ClientKeys,
    recipient: &Address,
    text: &str,
    sent_at_ms: u64,
    rng: &mut R,
) -> Result<SealedMessage> {
    seal_signed_for(
        sender,
        recipient,
        &recipient.identity_key,
        text,
        sent_at_ms,
        rng,
    )
}

/// [`seal_message`] with the identity bound into the signature given
/// separately, so tests can forge a message signed for someone else.
fn seal_signed_for<R: CryptoRng + ?Sized>(
    sender: &ClientKeys,
    recipient: &Address,
    signed_for: &[u8; PUBLIC_KEY_LEN],
    text: &str,
    sent_at_ms: u64,
    rng: &mut R,
) -> Result<SealedMessage> {
    check_text(text)?;
    let text_len = u16::try_from(text.len()).map_err(|_| Error::MessageTooLong {
        len: text.len(),
        max: MAX_TEXT_LEN,
        payload_max: MAX_MESSAGE_LEN,
    })?;
    let message_id = MessageId(crypto::random_bytes(rng));
    let signature = sender.sign(&signed_bytes(
        signed_for,
        &message_id,
        sent_at_ms,
        text.as_bytes(),
    ));

    let mut plaintext =
        zeroize::Zeroizing::new(Vec::with_capacity(PLAINTEXT_OVERHEAD + text.len()));
    plaintext.push(PAYLOAD_VERSION);
    plaintext.extend_from_slice(&message_id.0);
    plaintext.extend_from_slice(&sent_at_ms.to_be_bytes());
    plaintext.extend_from_slice(&sender.identity_public());
    plaintext.extend_from_slice(&text_len.to_be_bytes());
    plaintext.extend_from_slice(text.as_bytes());
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
    debug_assert!(payload.len() <= MAX_MESSAGE_LEN);
    Ok(SealedMessage {
        message_id,
        sent_at_ms,
        payload,
    })
}

/// Decrypts a payload addressed to `keys` and checks its signature. A
/// payload that does not authenticate is an error; a bad signature is not
/// (the message is returned with `verified: false`).
pub fn open_message(keys: &ClientKeys, payload: &[u8]) -> Result<ReceivedMessage> {
    let (&version, rest) = payload
        .split_first()
        .ok_or(Error::MalformedMessage("empty payload"))?;
    if version != PAYLOAD_VERSION {
        return Err(Error::MessageVersion(version));
    }
    let (ephemeral, ciphertext) = split_array::<PUBLIC_KEY_LEN>(rest)
        .ok_or(Error::MalformedMessage("payload shorter than its header"))?;
    let plaintext = crypto::open(keys, &ephemeral, &[PAYLOAD_VERSION], ciphertext)?;
    parse_plaintext(keys, &plaintext)
}

fn parse_plaintext(keys: &ClientKeys, plaintext: &[u8]) -> Result<ReceivedMessage> {
    let short = || Error::MalformedMessage("plaintext shorter than its fields");
    let (&version, rest) = plaintext.split_first().ok_or_else(short)?;
    if version != PAYLOAD_VERSION {
        return Err(Error::MessageVersion(version));
    }
    let (message_id, rest) = split_array::<MESSAGE_ID_LEN>(rest).ok_or_else(short)?;
    let (sent_at, rest) = split_array::<8>(rest).ok_or_else(short)?;
    let (from, rest) = split_array::<PUBLIC_KEY_LEN>(rest).ok_or_else(short)?;
    let (text_len, rest) = split_array::<2>(rest).ok_or_else(short)?;
    let text_len = usize::from(u16::from_be_bytes(text_len));
    if rest.len() != text_len + SIGNATURE_LEN {
        return Err(Error::MalformedMessage(
            "text length does not match the plaintext",
        ));
    }
    let (text, signature) = rest.split_at(text_len);
    let (signature, _) = split_array::<SIGNATURE_LEN>(signature).ok_or_else(short)?;
    let text = std::str::from_utf8(text)
        .map_err(|_| Error::MalformedMessage("text is not UTF-8"))?
        .to_string();
    let message_id = MessageId(message_id);
    let sent_at_ms = u64::from_be_bytes(sent_at);
    let verified = crypto::verify(
        &from,
        &signed_bytes(
            &keys.identity_public(),
            &message_id,
            sent_at_ms,
            text.as_bytes(),
        ),
        &signature,
    );
    Ok(ReceivedMessage {
        message_id,
        sent_at_ms,
        from,
        verified,
        text,
    })
}

fn signed_bytes(
    recipient_identity: &[u8; PUBLIC_KEY_LEN],
    message_id: &MessageId,
    sent_at_ms: u64,
    text: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        SIGNATURE_CONTEXT.len() + PUBLIC_KEY_LEN + MESSAGE_ID_LEN + 8 + text.len(),
    );
    out.extend_from_slice(SIGNATURE_CONTEXT);
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
            }
        );
    }

    #[test]
    fn the_largest_text_fits_one_packet_and_one_more_byte_is_refused() {
        let (alice, bob) = pair();
        let to = address_of(&bob);
        let max = "x".repeat(MAX_TEXT_LEN);
        let sealed = seal_message(&alice, &to, &max, 0, &mut rand::rng()).unwrap();
        assert_eq!(sealed.payload.len(), MAX_MESSAGE_LEN);
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
        let huge = "y".repeat(70_000);
        assert!(matches!(
            seal_message(&alice, &to, &huge, 0, &mut rand::rng()),
            Err(Error::MessageTooLong { .. })
        ));
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
            "meant for carol",
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
    }
}
