//! What a message is: its id, its content (text, file, call signal or
//! chain traffic), and what the recipient gets out of it. The bytes on the wire are made by
//! [`crate::Contacts::seal`] through the layers of [`crate::layers`].

use std::fmt;

use crate::layers::{content, envelope, psk};
use crate::{Error, Result};

const MESSAGE_ID_LEN: usize = 16;
/// Longest file name carried, in bytes.
pub const MAX_FILE_NAME_LEN: usize = 255;
/// Most bytes of text or file one message carries: 1 MiB.
pub const MAX_CONTENT_LEN: usize = 1 << 20;
/// Most bytes of UTF-8 text one message carries (the same limit as files).
pub const MAX_TEXT_LEN: usize = MAX_CONTENT_LEN;
/// A bound on what the ratchet (Olm) adds: its pre-key header, ratchet key,
/// chain index, MAC and AES-CBC padding (about 190 bytes).
pub const RATCHET_OVERHEAD: usize = 256;
/// Payload bytes besides the file name and content, all layers counted.
pub const MESSAGE_OVERHEAD: usize =
    content::OVERHEAD + psk::OVERHEAD + RATCHET_OVERHEAD + envelope::OVERHEAD;
/// Longest sealed payload: the envelope that is fragmented.
pub const MAX_SEALED_LEN: usize =
    MESSAGE_OVERHEAD + MAX_FILE_NAME_LEN + MAX_CONTENT_LEN + content::COPY_HEADER;
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
    /// Links of the sender's identity chain (see [`crate::identity`]),
    /// encoded as [`crate::identity::encode_links`] does: an update after a
    /// device was added or revoked, or the answer to a [`Content::LinksRequest`].
    /// Merged into the contact's chain, not shown as a message.
    Links(Vec<u8>),
    /// Asks for the recipient's chain links after sequence number `after`
    /// (the sender saw a newer head than it holds).
    LinksRequest {
        /// The last link the sender holds.
        after: u64,
    },
    /// A fresh secret for the pair's pre-shared key after the sender revoked
    /// a device that knew it (see [`crate::layers::psk::rekeyed`]); `seq` is
    /// the sender's chain head when it was made.
    Rekey {
        /// The sender's chain sequence number.
        seq: u64,
        /// The secret.
        r: [u8; 32],
    },
    /// From another of this identity's devices: the re-key secret it sent
    /// to the contact with identity `peer`.
    PeerRekey {
        /// The contact's identity key.
        peer: [u8; 32],
        /// This identity's chain sequence number.
        seq: u64,
        /// The secret.
        r: [u8; 32],
    },
    /// A copy of a text or file this identity sent to `to` from another of
    /// its devices, so that every device shows the conversation.
    Copy {
        /// The identity key it was sent to.
        to: [u8; 32],
        /// What was sent: text or a file.
        content: Box<Content>,
    },
    /// A call-setup signal (offer, answer or hangup; see [`crate::calls`]):
    /// handed to the daemon's call queue, not shown as a message.
    Call(crate::calls::CallSignal),
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Content::File { name, bytes } => write!(f, "File({name:?}, {} bytes)", bytes.len()),
            Content::Links(l) => write!(f, "Links({} bytes)", l.len()),
            Content::LinksRequest { after } => write!(f, "LinksRequest(after {after})"),
            Content::Copy { content, .. } => write!(f, "Copy({content:?})"),
            Content::Rekey { seq, .. } => write!(f, "Rekey(seq {seq})"),
            Content::PeerRekey { seq, .. } => write!(f, "PeerRekey(seq {seq})"),
            Content::Call(signal) => write!(f, "Call({} {})", signal.kind(), signal.call_id()),
        }
    }
}

impl Content {
    /// Bytes of text or file.
    pub fn len(&self) -> usize {
        match self {
            Content::Text(t) => t.len(),
            Content::File { bytes, .. } | Content::Links(bytes) => bytes.len(),
            Content::LinksRequest { .. } => 8,
            Content::Copy { content, .. } => 33 + content.len(),
            Content::Rekey { .. } => 40,
            Content::PeerRekey { .. } => 72,
            Content::Call(signal) => signal.encoded_len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the size limit and, for a file, the name.
    pub fn check(&self) -> Result<()> {
        let len = match self {
            Content::Copy { content, .. } => content.len(),
            other => other.len(),
        };
        if len > MAX_CONTENT_LEN {
            return Err(Error::MessageTooLong {
                len,
                max: MAX_CONTENT_LEN,
            });
        }
        match self {
            Content::File { name, .. } => check_file_name(name)?,
            Content::Copy { content, .. } => match content.as_ref() {
                Content::Text(_) | Content::File { .. } => content.check()?,
                _ => return Err(Error::MalformedMessage("a copy holds a text or a file")),
            },
            Content::Call(signal) => signal.check()?,
            _ => {}
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
    /// The recipient device it is sealed to (its device key).
    pub device: [u8; 32],
    /// Where it goes.
    pub to: crate::Address,
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

/// A message that arrived for this client: decrypted and verified, or
/// rejected (then `rejected` says why and there is no content).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The id the sender chose (for a rejected message, one derived from
    /// its bytes).
    pub message_id: MessageId,
    /// When the sender says it sent it (unix milliseconds, sender's clock;
    /// 0 if rejected).
    pub sent_at_ms: u64,
    /// The sender's Ed25519 identity key (zero if unknown).
    pub from: [u8; 32],
    /// The contact it is from, if known.
    pub contact: Option<String>,
    /// Whether every layer opened and the content layer's signature is by
    /// the contact's device, over this device's keys.
    pub verified: bool,
    /// The text (empty for a file).
    pub text: String,
    /// The file, if the message carries one.
    pub file: Option<ReceivedFile>,
    /// Why the message was rejected, if it was.
    pub rejected: Option<String>,
    /// A notice of this device about a contact (their devices changed, an
    /// alarm), not a message they wrote: `text` says what happened.
    pub notice: bool,
    /// A copy of a message this identity sent to `contact` from another of
    /// its devices.
    pub outgoing: bool,
}

impl ReceivedMessage {
    /// A message that arrived but could not be accepted: shown as such.
    pub fn rejected(payload: &[u8], contact: Option<String>, why: &Error) -> Self {
        let mut id = [0u8; MESSAGE_ID_LEN];
        id.copy_from_slice(&blake3::hash(payload).as_bytes()[..MESSAGE_ID_LEN]);
        ReceivedMessage {
            message_id: MessageId(id),
            sent_at_ms: 0,
            from: [0; 32],
            contact,
            verified: false,
            text: String::new(),
            file: None,
            rejected: Some(why.to_string()),
            notice: false,
            outgoing: false,
        }
    }

    /// A notice about contact `contact` (see [`ReceivedMessage::notice`]).
    pub fn notice(contact: &str, text: &str) -> Self {
        let id = blake3::hash(format!("{contact}\n{text}\n{}", crate::now_ms()).as_bytes());
        let mut message_id = [0u8; MESSAGE_ID_LEN];
        message_id.copy_from_slice(&id.as_bytes()[..MESSAGE_ID_LEN]);
        ReceivedMessage {
            message_id: MessageId(message_id),
            sent_at_ms: crate::now_ms(),
            from: [0; 32],
            contact: Some(contact.to_string()),
            verified: false,
            text: text.to_string(),
            file: None,
            rejected: None,
            notice: true,
            outgoing: false,
        }
    }
}

/// Checks that `text` fits one message ([`MAX_TEXT_LEN`] bytes).
pub fn check_text(text: &str) -> Result<()> {
    Content::Text(text.to_string()).check()
}
