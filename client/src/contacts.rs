//! The contact book and the ratchet: this device's identity chain,
//! contacts (their cards and identity chains, the pair's pre-shared key,
//! the Olm sessions with each of their devices), the cards this device
//! made, and this device's Olm account. Seals and opens whole messages
//! through the four end-to-end layers (see [`crate::layers`]), one copy
//! per device of the recipient (Sesame-style fan-out).
//!
//! On disk, under `DATA_DIR/contacts/` (files mode 0600, written
//! atomically): `chain` (this identity's chain, see [`crate::identity`]),
//! `account` (the Olm account, a vodozemac pickle encrypted with a key
//! derived from the device key), `<name>.json` per contact (its chain, its
//! sessions pickled and encrypted the same way), `exports/<card id>.json`
//! per card made (its half of the pre-shared key), `pending/` for messages
//! from devices that are not contacts yet, and `held/` for messages from a
//! contact whose chain is behind the head they claim (opened, kept until
//! the missing links arrive), and `pairing` (the pairing codes this device
//! made, or the join it asked for; see [`crate::pairing`]). One process
//! changes these at a time: the
//! holder of the data dir's outbox lock (the daemon, or a command run
//! without one).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;

use bastet_sphinx::NodeId;
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};
use zeroize::Zeroizing;

use crate::calls::{CallSignal, ReceivedCall};
use crate::card::{CARD_ID_LEN, Card, MAX_NICKNAME_LEN, safety_number};
use crate::crypto::{self, ClientKeys, PUBLIC_KEY_LEN};
use crate::identity::{
    CAP_ADMIN, CAP_SEND, Chain, DeviceCert, HeadCheck, LinkKind, check_device_name, short_id,
};
use crate::layers::content::Recipient;
use crate::layers::psk::{self, Argon2Params, PSK_LEN};
use crate::layers::{content, envelope};
use crate::message::{Content, MessageId, ReceivedFile, ReceivedMessage, SealedMessage};
use crate::{Address, DataDir, Error, Result};

const CONTACTS: &str = "contacts";
const ACCOUNT: &str = "account";
const CHAIN: &str = "chain";
const EXPORTS: &str = "exports";
const PENDING: &str = "pending";
const HELD: &str = "held";
const OLD: &str = "v1";
/// The book's entry for this identity's own other devices (copies of
/// what this device sends, chain updates, re-keys): not a contact name.
const SELF: &str = "@self";
const PAIRING: &str = "pairing";
/// Pairing codes open at once on one device.
pub const MAX_PAIR_CODES: usize = 8;
const MAX_PAIRING_FILE: u64 = 64 * 1024;
const PICKLE_CONTEXT: &str = "bastet 2026 olm pickle key v1";
/// Most contacts in one book.
pub const MAX_CONTACTS: usize = 1000;
/// Most cards remembered (each holds its half of a pre-shared key until a
/// reply arrives).
pub const MAX_EXPORTS: usize = 1000;
/// Ratchet sessions kept per device of a contact (both may start one at
/// once; older ones are dropped).
pub const MAX_SESSIONS: usize = 4;
/// Messages from unknown devices kept for when their card is imported.
pub const MAX_PENDING: usize = 256;
/// Messages held until a contact's missing chain links arrive, per
/// contact.
pub const MAX_HELD_PER_CONTACT: usize = 64;
/// Call signals opened and not yet taken by [`Contacts::take_calls`], and
/// call signals held (in memory) for a contact's missing chain links, at
/// most each; beyond it the oldest is dropped.
pub const MAX_OPENED_CALLS: usize = crate::calls::MAX_RECEIVED_CALLS;
/// Ratchet sessions started with this device's fallback key that are
/// remembered, so a replayed first message cannot start one again.
const MAX_FALLBACK_SESSIONS: usize = 1024;
/// How often, at most, the chain links of one contact are asked for, or
/// sent to them unasked for.
const LINKS_INTERVAL_MS: u64 = 60_000;
/// Longest contact file (a chain, and sessions holding skipped keys).
const MAX_CONTACT_FILE: u64 = 4 << 20;
const MAX_ACCOUNT_FILE: u64 = 1 << 20;
const MAX_EXPORT_FILE: u64 = 4096;
const MAX_HELD_FILE: u64 = 4 << 20;
/// Longest contact name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
const CONTACT_VERSION: u32 = 2;
/// The name of the first device of an identity, unless told otherwise.
pub const FIRST_DEVICE_NAME: &str = "first device";

/// Where a contact's pre-shared key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PskSource {
    /// Both people's contact cards.
    Cards,
    /// A passphrase both people typed.
    Passphrase,
}

/// A contact as saved.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactFile {
    version: u32,
    name: String,
    /// Their card, text form.
    card: String,
    /// Their identity chain as it stands (base64), newer than the card's.
    chain: String,
    added_at_ms: u64,
    /// Our half of the pre-shared key (hex), once they have our card.
    my_secret: Option<String>,
    /// The pre-shared keys.
    keys: KeysFile,
    psk_source: PskSource,
    argon2: Option<Argon2Params>,
    /// Olm sessions per device of theirs (device key hex), newest use
    /// first, each a vodozemac pickle encrypted with the storage key.
    sessions: BTreeMap<String, Vec<String>>,
    /// Whether a one-time key of their card was used for a session already.
    used_their_one_time_key: bool,
    /// An equivocation alarm, once raised.
    #[serde(default)]
    alarm: Option<String>,
    /// The highest chain head they claimed beyond the chain held.
    #[serde(default)]
    awaiting: Option<u64>,
    /// The device that claimed it (hex).
    #[serde(default)]
    awaiting_device: Option<String>,
    /// A re-key of theirs for a link not held yet: seq, secret (hex), and
    /// the key it applies to (hex).
    #[serde(default)]
    deferred_rekey: Option<(u64, String, String)>,
    /// A re-key secret of ours (another of our devices made it) for a link
    /// of our chain not held yet: seq, secret (hex).
    #[serde(default)]
    deferred_rekey_ours: Option<(u64, String)>,
    /// Ids of the sessions their devices started with our fallback key.
    #[serde(default)]
    fallback_sessions: Vec<String>,
}

/// A contact's pre-shared keys as saved (and as a new device is given
/// them).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    /// The pre-shared key in force (hex), once both halves are known.
    psk: Option<String>,
    /// A re-keyed pre-shared key (hex) not yet used by them: accepted, and
    /// used for sending once they use it.
    #[serde(default)]
    pending: Option<String>,
    /// The pre-shared key before the last re-key (hex), still accepted.
    #[serde(default)]
    previous: Option<String>,
    /// Our chain's sequence number of the last re-key we made.
    #[serde(default)]
    rekey_seq_ours: u64,
    /// Their chain's sequence number of the last re-key they made.
    #[serde(default)]
    rekey_seq_theirs: u64,
}

type Psk = Zeroizing<[u8; PSK_LEN]>;

impl KeysFile {
    fn of(c: &Contact) -> KeysFile {
        let hex = |k: &Option<Psk>| k.as_ref().map(|k| hex::encode(k.as_ref()));
        KeysFile {
            psk: hex(&c.psk),
            pending: hex(&c.pending_psk),
            previous: hex(&c.previous_psk),
            rekey_seq_ours: c.rekey_seq_ours,
            rekey_seq_theirs: c.rekey_seq_theirs,
        }
    }

    /// (in force, pending, previous).
    fn read(&self) -> Result<(Option<Psk>, Option<Psk>, Option<Psk>)> {
        let key = |k: &Option<String>, what| k.as_deref().map(|s| hex32(s, what)).transpose();
        Ok((
            key(&self.psk, "psk")?,
            key(&self.pending, "pending psk")?,
            key(&self.previous, "previous psk")?,
        ))
    }
}

/// A contact in memory.
struct Contact {
    name: String,
    card: Card,
    card_text: String,
    chain: Chain,
    added_at_ms: u64,
    my_secret: Option<Zeroizing<[u8; PSK_LEN]>>,
    psk: Option<Zeroizing<[u8; PSK_LEN]>>,
    psk_source: PskSource,
    argon2: Option<Argon2Params>,
    sessions: BTreeMap<[u8; PUBLIC_KEY_LEN], Vec<Session>>,
    used_their_one_time_key: bool,
    alarm: Option<String>,
    awaiting: Option<u64>,
    awaiting_device: Option<[u8; PUBLIC_KEY_LEN]>,
    deferred_rekey: Option<(u64, [u8; PSK_LEN], Zeroizing<[u8; PSK_LEN]>)>,
    /// A re-key secret another of our devices sent this contact, for a
    /// revocation in our chain that this device does not hold yet.
    deferred_rekey_ours: Option<(u64, [u8; PSK_LEN])>,
    fallback_sessions: VecDeque<String>,
    pending_psk: Option<Zeroizing<[u8; PSK_LEN]>>,
    previous_psk: Option<Zeroizing<[u8; PSK_LEN]>>,
    rekey_seq_ours: u64,
    rekey_seq_theirs: u64,
}

impl Contact {
    /// A contact with no session, key or chain traffic yet.
    fn new(name: &str, card: Card, card_text: String, chain: Chain, added_at_ms: u64) -> Contact {
        Contact {
            name: name.to_string(),
            card,
            card_text,
            chain,
            added_at_ms,
            my_secret: None,
            psk: None,
            psk_source: PskSource::Cards,
            argon2: None,
            sessions: BTreeMap::new(),
            used_their_one_time_key: false,
            alarm: None,
            awaiting: None,
            awaiting_device: None,
            deferred_rekey: None,
            deferred_rekey_ours: None,
            fallback_sessions: VecDeque::new(),
            pending_psk: None,
            previous_psk: None,
            rekey_seq_ours: 0,
            rekey_seq_theirs: 0,
        }
    }
}

/// A card this device made, as saved.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportFile {
    card_id: String,
    secret: String,
    created_at_ms: u64,
    /// The contact it answers, for a reply card.
    for_contact: Option<String>,
}

/// A message held until its sender's chain links arrive, as saved.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeldFile {
    contact: String,
    /// The device that sent it (hex).
    device: String,
    message: crate::daemon::api::WireReceived,
}

/// One device of an identity, as `contact show` and `device list` print it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    /// Its short id (the first 8 bytes of its key, hex).
    pub id: String,
    /// Its device key (hex).
    pub key: String,
    /// Its name.
    pub name: String,
    /// Whether it may send.
    pub send: bool,
    /// Whether it may add and revoke devices.
    pub admin: bool,
    /// When it was added (unix ms, its adder's clock).
    pub added_ms: u64,
    /// Whether it is revoked.
    pub revoked: bool,
    /// Why, if revoked.
    #[serde(default)]
    pub revoked_reason: Option<String>,
    /// Whether this is the device answering.
    #[serde(default)]
    pub this_device: bool,
    /// When a message from it last arrived (unix ms), if known.
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
}

fn device_infos(
    chain: &Chain,
    this: Option<&[u8; PUBLIC_KEY_LEN]>,
    seen: &HashMap<[u8; PUBLIC_KEY_LEN], u64>,
) -> Vec<DeviceInfo> {
    chain
        .devices()
        .iter()
        .map(|d| DeviceInfo {
            id: short_id(&d.cert.device),
            key: hex::encode(d.cert.device),
            name: d.cert.name.clone(),
            send: d.cert.caps & CAP_SEND != 0,
            admin: d.cert.caps & CAP_ADMIN != 0,
            added_ms: d.added_ms,
            revoked: d.revoked.is_some(),
            revoked_reason: d.revoked.as_ref().map(|r| r.reason.clone()),
            this_device: this == Some(&d.cert.device),
            last_seen_ms: seen.get(&d.cert.device).copied(),
        })
        .collect()
}

/// What `contact list` and `contact show` print about one contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactInfo {
    /// The name given at import.
    pub name: String,
    /// The name they suggest on their card.
    pub nickname: String,
    /// Their identity key (hex).
    pub identity: String,
    /// The safety number of your two identities.
    pub safety_number: String,
    /// Whether they have your card too (messages can go both ways).
    pub complete: bool,
    /// "cards" or "passphrase" (empty until complete).
    pub psk_source: String,
    /// The mailbox server of the device whose card you imported (node id
    /// hex).
    pub mailbox_server: String,
    /// Ratchet sessions held with their devices.
    pub sessions: usize,
    /// When the contact was added (unix ms).
    pub added_at_ms: u64,
    /// Their devices, revoked ones included.
    #[serde(default)]
    pub devices: Vec<DeviceInfo>,
    /// The sequence number of their chain's last link held.
    #[serde(default)]
    pub chain_seq: u64,
    /// Set when they signed two histories of their devices.
    #[serde(default)]
    pub alarm: Option<String>,
    /// Set while their messages wait for chain links they have not sent
    /// yet: the head they claimed.
    #[serde(default)]
    pub awaiting_links: Option<u64>,
}

/// A contact-book operation, as the CLI asks it (of the daemon, or of the
/// book directly when no daemon runs).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContactRequest {
    /// Make a card (a reply to contact `for_contact`'s card, if given).
    Export {
        /// The contact whose card this answers.
        #[serde(default)]
        for_contact: Option<String>,
        /// The name suggested for this device's owner.
        #[serde(default)]
        nickname: String,
    },
    /// Import a card under a name.
    Import {
        /// The card, text form.
        card: String,
        /// The name to give the contact.
        name: String,
    },
    /// Every contact.
    List {},
    /// One contact.
    Show {
        /// Its name.
        name: String,
    },
    /// Replace a contact's pre-shared key with a passphrase-derived one
    /// (derived by the CLI: Argon2id is too slow for the daemon's loop).
    SetPsk {
        /// The contact.
        name: String,
        /// The key, hex.
        psk: String,
        /// The Argon2id cost it was derived with.
        argon2: Argon2Params,
    },
    /// Remove a contact.
    Remove {
        /// Its name.
        name: String,
    },
    /// This identity's devices.
    Devices {},
    /// Make a one-time pairing code for a new device of this identity.
    PairOffer {
        /// Whether the new device may add and revoke devices too.
        #[serde(default)]
        admin: bool,
    },
    /// Ask to join the identity of a pairing code (this device must be
    /// fresh).
    Join {
        /// The pairing code, text form.
        code: String,
        /// This device's name.
        name: String,
    },
    /// Revoke one of this identity's devices (by short id or full key).
    RevokeDevice {
        /// Its id.
        device: String,
        /// Why, for contacts.
        #[serde(default)]
        reason: String,
    },
}

/// The answer to a [`ContactRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContactResponse {
    /// A card made.
    Card {
        /// Its text form.
        text: String,
    },
    /// One contact.
    Info {
        /// The contact.
        contact: ContactInfo,
    },
    /// Every contact.
    List {
        /// The contacts, by name.
        contacts: Vec<ContactInfo>,
    },
    /// This identity's devices.
    Devices {
        /// The identity key (hex).
        identity: String,
        /// Its devices, revoked ones included.
        devices: Vec<DeviceInfo>,
        /// Whether this device holds the identity key.
        holds_identity_key: bool,
    },
    /// A pairing code made.
    PairCode {
        /// Its text form.
        code: String,
        /// When it expires (unix ms).
        expires_ms: u64,
    },
    /// Done.
    Done {},
}

/// Pairing codes this device made, and the join this device asked for.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairingFile {
    offers: Vec<PairOffer>,
    join: Option<PendingJoin>,
    /// The admin device's answer to this device's join, kept until the
    /// join is done (a crash in between finishes it at the next start).
    #[serde(default)]
    accepted: Option<AcceptedJoin>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptedJoin {
    /// The identity joined (hex).
    identity: String,
    bundle: DeviceBundle,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairOffer {
    /// The code's secret (hex).
    secret: String,
    caps: u8,
    expires_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingJoin {
    /// The identity asked to join (hex).
    identity: String,
    /// The code's secret (hex).
    secret: String,
    expires_ms: u64,
}

/// What a device joining an identity is given (see [`Contacts::bundle`]).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBundle {
    /// The identity's chain (base64), this device's link included.
    pub chain: String,
    /// The pre-shared key the identity's devices share (hex).
    #[serde(default)]
    pub own_psk: Option<String>,
    /// The identity's contacts.
    pub contacts: Vec<BundledContact>,
}

impl std::fmt::Debug for DeviceBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBundle({} contacts)", self.contacts.len())
    }
}

/// One contact in a [`DeviceBundle`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundledContact {
    name: String,
    card: String,
    chain: String,
    my_secret: Option<String>,
    keys: KeysFile,
    psk_source: PskSource,
    argon2: Option<Argon2Params>,
}

/// Chain traffic the book wants sent (see [`Contacts::take_actions`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainAction {
    /// Send this identity's chain to contact `contact` (to one device, or
    /// to all of its current devices).
    SendLinks {
        /// The contact.
        contact: String,
        /// One device, or all.
        device: Option<[u8; PUBLIC_KEY_LEN]>,
    },
    /// Send `content` (a re-key) to every current device of `contact`.
    Content {
        /// The contact (or this identity's other devices).
        contact: String,
        /// What to send.
        content: Content,
    },
    /// Ask a device of `contact` for their chain links after `after`.
    RequestLinks {
        /// The contact.
        contact: String,
        /// The device to ask.
        device: [u8; PUBLIC_KEY_LEN],
        /// The last link held.
        after: u64,
    },
}

/// The contact book of one device.
pub struct Contacts {
    dir: PathBuf,
    data_dir: DataDir,
    pickle_key: Zeroizing<[u8; 32]>,
    account: Account,
    own_chain: Chain,
    own_chain_dirty: bool,
    contacts: BTreeMap<String, Contact>,
    /// Contacts whose state changed since the last [`Contacts::save`].
    dirty: Vec<String>,
    account_dirty: bool,
    pending: Vec<(String, Vec<u8>)>,
    held: Vec<(String, Vec<u8>)>,
    /// Held messages released (opened or rejected), with their held files.
    released: Vec<(ReceivedMessage, Option<String>)>,
    actions: Vec<ChainAction>,
    /// When links were last asked of, or pushed to, each contact.
    links_sent: HashMap<String, u64>,
    last_seen: HashMap<[u8; PUBLIC_KEY_LEN], u64>,
    pairing: PairingFile,
    pairing_dirty: bool,
    /// Pairing messages to send.
    pairing_out: Vec<SealedMessage>,
    /// Call signals opened, for [`Contacts::take_calls`] (memory only: a
    /// call is over long before a restart matters).
    calls: VecDeque<ReceivedCall>,
    /// Call signals of a contact whose chain is behind the head they
    /// claim: judged again when the links arrive, like held messages.
    held_calls: VecDeque<ReceivedCall>,
}

/// A message decrypted by [`Contacts::open_message`], or what it did.
#[derive(Debug)]
pub enum Opened {
    /// Every layer opened and the sender is a contact's current device.
    Message(ReceivedMessage),
    /// From a device that is not a contact yet: kept under `pending/`.
    Pending(Error),
    /// Opened, but the contact claims a newer chain than the one held: kept
    /// under `held/` until the links arrive (asked for).
    Held,
    /// Chain links (or a request for ours): merged or answered; nothing to
    /// show but the notices.
    Chain(Vec<ReceivedMessage>),
    /// A call signal from a contact's current device: for the daemon's
    /// call queue, not the inbox ([`Contacts::receive`] keeps it for
    /// [`Contacts::take_calls`]).
    Call(Box<ReceivedCall>),
}

/// Appends `call` to `queue`, dropping the oldest beyond
/// [`MAX_OPENED_CALLS`] (logged).
fn push_bounded(queue: &mut VecDeque<ReceivedCall>, call: ReceivedCall, what: &str) {
    if queue.len() >= MAX_OPENED_CALLS {
        queue.pop_front();
        tracing::warn!(
            max = MAX_OPENED_CALLS,
            "too many call signals {what}: the oldest is dropped"
        );
    }
    queue.push_back(call);
}

fn contact_error(why: impl Into<String>) -> Error {
    Error::Contact(why.into())
}

/// Refuses the name of the entry of this identity's own devices where a
/// contact is meant.
fn not_self(name: &str) -> Result<()> {
    if name == SELF {
        return Err(Error::NoSuchContact(name.to_string()));
    }
    Ok(())
}

/// Checks a contact name: 1 to 64 bytes of letters, digits, `.`, `_`, `-`,
/// not starting with `.` or `-`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(contact_error(format!(
            "{name:?} is not a contact name: use 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-' (not first)"
        )))
    }
}

/// Decodes a ratchet (Olm) message, refusing any encoding but the one
/// vodozemac writes. Olm authenticates what it decodes, not the bytes: its
/// MAC is over a re-encoding, and X25519 keys that differ only in their
/// top bit compare equal. Without this check a pre-key message with a key's
/// top bit flipped, or any message with an unknown protobuf field added,
/// would decrypt as if unaltered.
fn parse_ratchet_message(message_type: u8, bytes: &[u8]) -> Result<OlmMessage> {
    let malformed = |why: String| Error::Layer {
        layer: "ratchet",
        why: format!("malformed message: {why}"),
    };
    let message = OlmMessage::from_parts(usize::from(message_type), bytes)
        .map_err(|e| malformed(e.to_string()))?;
    if let OlmMessage::PreKey(m) = &message {
        let k = m.session_keys();
        if [k.identity_key, k.base_key, k.one_time_key]
            .iter()
            .any(|key| key.as_bytes()[31] & 0x80 != 0)
        {
            return Err(malformed("a key is not in canonical form".into()));
        }
    }
    if message.to_parts().1 != bytes {
        return Err(malformed("not in canonical form".into()));
    }
    Ok(message)
}

fn hex32(s: &str, what: &str) -> Result<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(s, out.as_mut())
        .map_err(|_| contact_error(format!("{what}: expected 64 hex digits")))?;
    Ok(out)
}

fn remove_file(data_dir: &DataDir, path: &std::path::Path) -> Result<()> {
    data_dir.remove_file(path).map(|_| ())
}

/// Most files read from one directory of the contact book.
const MAX_LISTED: usize = 100_000;

fn chain_notice(name: &str, before: &Chain, after: &Chain) -> Option<String> {
    let mut changes = Vec::new();
    for d in after.devices() {
        match before.device(&d.cert.device) {
            None => changes.push(format!(
                "added device {} ({:?})",
                short_id(&d.cert.device),
                d.cert.name
            )),
            Some(old) if old.revoked.is_none() && d.revoked.is_some() => {
                let reason = d.revoked.as_ref().map(|r| r.reason.as_str()).unwrap_or("");
                changes.push(format!(
                    "revoked device {} ({:?}){}",
                    short_id(&d.cert.device),
                    d.cert.name,
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                ));
            }
            Some(old) if old.cert != d.cert => changes.push(format!(
                "device {} ({:?}) moved its mailbox",
                short_id(&d.cert.device),
                d.cert.name
            )),
            Some(_) => {}
        }
    }
    (!changes.is_empty()).then(|| format!("{name}'s devices changed: {}", changes.join("; ")))
}

impl Contacts {
    /// Opens (creating on first use) the contact book of `data_dir`, whose
    /// device keeps its mailbox on `mailbox_server`. A device holding its
    /// identity key and no chain yet starts one (it is the identity's first
    /// device). The caller holds the outbox lock.
    pub fn load(data_dir: &DataDir, keys: &ClientKeys, mailbox_server: NodeId) -> Result<Contacts> {
        let dir = data_dir.path().join(CONTACTS);
        for sub in [
            dir.clone(),
            dir.join(EXPORTS),
            dir.join(PENDING),
            dir.join(HELD),
        ] {
            data_dir.create_dir(&sub)?;
        }
        let pickle_key = keys.storage_key(PICKLE_CONTEXT);
        let account_path = dir.join(ACCOUNT);
        let (mut account, mut account_dirty) =
            match data_dir.read_bounded(&account_path, MAX_ACCOUNT_FILE)? {
                Some(bytes) => {
                    let text = String::from_utf8(bytes)
                        .map_err(|_| contact_error("the ratchet account file is corrupt"))?;
                    let pickle =
                        AccountPickle::from_encrypted(text.trim(), &pickle_key).map_err(|e| {
                            contact_error(format!(
                                "the ratchet account does not decrypt with this device's key: {e}"
                            ))
                        })?;
                    (Account::from_pickle(pickle), false)
                }
                None => (Account::new(), true),
            };
        let chain_path = dir.join(CHAIN);
        let (own_chain, own_chain_dirty) =
            match data_dir.read_bounded(&chain_path, crate::identity::MAX_CHAIN_LEN as u64)? {
                Some(bytes) => {
                    let chain =
                        Chain::from_bytes(&bytes, Some(&keys.identity_public())).map_err(|e| {
                            Error::File {
                                path: chain_path.clone(),
                                why: e.to_string(),
                            }
                        })?;
                    if chain.device(&keys.device_public()).is_none() {
                        return Err(Error::File {
                            path: chain_path,
                            why: "this device is not in its identity's chain".into(),
                        });
                    }
                    (chain, false)
                }
                None => {
                    let cert = Self::new_cert(
                        keys,
                        &mut account,
                        mailbox_server,
                        CAP_SEND | CAP_ADMIN,
                        FIRST_DEVICE_NAME,
                    )?;
                    account_dirty = true;
                    (Chain::genesis_of(keys, cert, crate::now_ms())?, true)
                }
            };
        let mut book = Contacts {
            dir,
            data_dir: data_dir.clone(),
            pickle_key,
            account,
            own_chain,
            own_chain_dirty,
            contacts: BTreeMap::new(),
            dirty: Vec::new(),
            account_dirty,
            pending: Vec::new(),
            held: Vec::new(),
            released: Vec::new(),
            actions: Vec::new(),
            links_sent: HashMap::new(),
            last_seen: HashMap::new(),
            pairing: PairingFile::default(),
            pairing_dirty: false,
            pairing_out: Vec::new(),
            calls: VecDeque::new(),
            held_calls: VecDeque::new(),
        };
        let pairing_path = book.dir.join(PAIRING);
        if let Some(bytes) = data_dir.read_bounded(&pairing_path, MAX_PAIRING_FILE)? {
            book.pairing = serde_json::from_slice(&bytes).map_err(|e| Error::File {
                path: pairing_path,
                why: e.to_string(),
            })?;
        }
        book.load_contacts(&keys.device_public())?;
        if !book.contacts.contains_key(SELF) && keys.has_identity_key() {
            // The identity's first device makes the key its devices share.
            let psk = Zeroizing::new(crypto::random_bytes(&mut rand::rng()));
            if let Some(me) = book.new_self(&keys.device_public(), psk, crate::now_ms()) {
                book.contacts.insert(SELF.to_string(), me);
                book.mark(SELF);
            }
        }
        book.follow_mailbox(keys, mailbox_server)?;
        // Held messages whose contact caught up before a crash (file names
        // say whose they are: `<id>+<contact>.json`).
        let held_dir = book.dir.join(HELD);
        let mut holding: Vec<String> = data_dir
            .list_files(&held_dir, MAX_LISTED)?
            .into_iter()
            .filter_map(|file| {
                let (_, name) = file.strip_suffix(".json")?.split_once('+')?;
                Some(name.to_string())
            })
            .collect();
        holding.sort();
        holding.dedup();
        let caught_up: Vec<String> = holding
            .into_iter()
            .filter(|n| book.contacts.get(n).is_some_and(|c| c.awaiting.is_none()))
            .collect();
        for name in caught_up {
            book.release_held(&name)?;
        }
        book.save()?;
        Ok(book)
    }

    /// A certificate for the device holding `keys`, with a fresh ratchet
    /// fallback key in `account`.
    fn new_cert(
        keys: &ClientKeys,
        account: &mut Account,
        mailbox_server: NodeId,
        caps: u8,
        name: &str,
    ) -> Result<DeviceCert> {
        account.generate_fallback_key();
        let fallback = account
            .fallback_key()
            .values()
            .next()
            .copied()
            .ok_or_else(|| contact_error("the ratchet made no fallback key"))?;
        account.mark_keys_as_published();
        DeviceCert::of(
            keys,
            account.curve25519_key().to_bytes(),
            fallback.to_bytes(),
            mailbox_server,
            caps,
            name,
        )
    }

    /// Records a move of this device's mailbox (a new server in the
    /// config) in the chain, signed by the device itself.
    fn follow_mailbox(&mut self, keys: &ClientKeys, mailbox_server: NodeId) -> Result<()> {
        let Some(me) = self.own_chain.device(&keys.device_public()) else {
            return Ok(());
        };
        if !me.is_current()
            || (me.cert.mailbox_server == mailbox_server
                && me.cert.mailbox == keys.mailbox_id()
                && me.cert.envelope == keys.encryption_public())
        {
            return Ok(());
        }
        self.own_chain.extend_signed(
            crate::now_ms(),
            keys.device_public(),
            LinkKind::ChangeMailbox {
                device: keys.device_public(),
                envelope: keys.encryption_public(),
                mailbox_server,
                mailbox: keys.mailbox_id(),
            },
            &|m| keys.sign_device(m),
        )?;
        self.own_chain_changed();
        self.push_links_to_all();
        Ok(())
    }

    /// A stand-in card for the [`SELF`] entry: this identity's chain, with
    /// no one-time key (sessions with own devices start from their
    /// fallback keys).
    fn self_card(&self, device: &[u8; PUBLIC_KEY_LEN]) -> Option<Card> {
        let cert = self.own_chain.device(device)?.cert.clone();
        Some(Card {
            card_id: [0; CARD_ID_LEN],
            created_at_ms: 0,
            chain: self.own_chain.clone(),
            cert,
            one_time_key: [0; PUBLIC_KEY_LEN],
            secret: Zeroizing::new([0; PSK_LEN]),
            reply_to: None,
            nickname: String::new(),
        })
    }

    /// A [`SELF`] entry with pre-shared key `psk`.
    fn new_self(
        &self,
        device: &[u8; PUBLIC_KEY_LEN],
        psk: Zeroizing<[u8; PSK_LEN]>,
        now_ms: u64,
    ) -> Option<Contact> {
        let mut me = Contact::new(
            SELF,
            self.self_card(device)?,
            String::new(),
            self.own_chain.clone(),
            now_ms,
        );
        me.psk = Some(psk);
        me.used_their_one_time_key = true;
        Some(me)
    }

    /// Copies the own chain into the [`SELF`] entry after it changed here.
    fn own_chain_changed(&mut self) {
        self.own_chain_dirty = true;
        let chain = self.own_chain.clone();
        if let Some(c) = self.contacts.get_mut(SELF) {
            c.chain = chain.clone();
            c.card.chain = chain;
            self.mark(SELF);
        }
    }

    fn load_contacts(&mut self, device: &[u8; PUBLIC_KEY_LEN]) -> Result<()> {
        for file in self.data_dir.list_files(&self.dir, MAX_LISTED)? {
            let path = self.dir.join(&file);
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            if check_name(name).is_err() && name != SELF {
                continue;
            }
            if self.contacts.len() >= MAX_CONTACTS {
                return Err(contact_error(format!(
                    "more than {MAX_CONTACTS} contacts in {}",
                    self.dir.display()
                )));
            }
            let bytes = self
                .data_dir
                .read_bounded(&path, MAX_CONTACT_FILE)?
                .unwrap_or_default();
            let corrupt = |why: String| Error::File {
                path: path.clone(),
                why,
            };
            #[derive(Deserialize)]
            struct Version {
                version: u32,
            }
            let version: Version =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            if version.version == 1 {
                // A contact from before identities had several devices: its
                // card has no chain. Kept aside, never deleted.
                let old = self.dir.join(OLD);
                self.data_dir.create_dir(&old)?;
                let to = old.join(format!("{name}.json"));
                self.data_dir.rename(&path, &to)?;
                tracing::warn!(contact = name, kept = %to.display(), "a contact made by an older bastet cannot be used: exchange cards again");
                continue;
            }
            let file: ContactFile =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            if file.version != CONTACT_VERSION || file.name != name {
                return Err(corrupt(
                    "unknown version, or a name that is not its file's".into(),
                ));
            }
            let (card, chain) = if name == SELF {
                // This identity's own chain is the one in `chain`.
                let Some(card) = self.self_card(device) else {
                    continue;
                };
                (card, self.own_chain.clone())
            } else {
                let card = Card::parse(&file.card)?;
                use data_encoding::BASE64;
                let chain_bytes = BASE64
                    .decode(file.chain.as_bytes())
                    .map_err(|_| corrupt("the chain is not base64".into()))?;
                let chain = Chain::from_bytes(&chain_bytes, Some(&card.identity()))?;
                (card, chain)
            };
            let mut sessions = BTreeMap::new();
            for (device, pickles) in &file.sessions {
                let device = *hex32(device, "a session's device")?;
                let mut list = Vec::with_capacity(pickles.len());
                for s in pickles {
                    let pickle = SessionPickle::from_encrypted(s, &self.pickle_key)
                        .map_err(|e| corrupt(format!("a ratchet session does not decrypt: {e}")))?;
                    list.push(Session::from_pickle(pickle));
                }
                sessions.insert(device, list);
            }
            let (psk, pending_psk, previous_psk) = file.keys.read()?;
            let contact = Contact {
                name: file.name.clone(),
                card,
                card_text: file.card,
                chain,
                added_at_ms: file.added_at_ms,
                my_secret: file
                    .my_secret
                    .as_deref()
                    .map(|s| hex32(s, "my_secret"))
                    .transpose()?,
                psk,
                psk_source: file.psk_source,
                argon2: file.argon2,
                sessions,
                used_their_one_time_key: file.used_their_one_time_key,
                alarm: file.alarm,
                awaiting: file.awaiting,
                awaiting_device: file
                    .awaiting_device
                    .as_deref()
                    .map(|d| hex32(d, "awaiting_device").map(|k| *k))
                    .transpose()?,
                deferred_rekey_ours: match &file.deferred_rekey_ours {
                    Some((seq, r)) => Some((*seq, *hex32(r, "deferred re-key")?)),
                    None => None,
                },
                deferred_rekey: match &file.deferred_rekey {
                    Some((seq, r, p)) => Some((
                        *seq,
                        *hex32(r, "deferred re-key")?,
                        hex32(p, "deferred re-key")?,
                    )),
                    None => None,
                },
                fallback_sessions: file.fallback_sessions.into(),
                pending_psk,
                previous_psk,
                rekey_seq_ours: file.keys.rekey_seq_ours,
                rekey_seq_theirs: file.keys.rekey_seq_theirs,
            };
            self.contacts.insert(file.name, contact);
        }
        Ok(())
    }

    /// Writes every changed contact, the chain and the account (before
    /// anything that depends on them leaves the process: a ratchet key is
    /// never reused).
    pub fn save(&mut self) -> Result<()> {
        // In an encrypted data dir, one commit for all of it; if it fails
        // nothing was written, so everything stays to be written.
        let data_dir = self.data_dir.clone();
        let before = (
            self.account_dirty,
            self.pairing_dirty,
            self.own_chain_dirty,
            self.dirty.clone(),
            self.pending.clone(),
            self.held.clone(),
        );
        let saved = data_dir.batch(|| self.save_files());
        if saved.is_err() {
            let (account, pairing, chain, dirty, pending, held) = before;
            self.account_dirty |= account;
            self.pairing_dirty |= pairing;
            self.own_chain_dirty |= chain;
            for name in dirty {
                self.mark(&name);
            }
            self.pending = pending;
            self.held = held;
        }
        saved
    }

    fn save_files(&mut self) -> Result<()> {
        if self.account_dirty {
            let text = self.account.pickle().encrypt(&self.pickle_key);
            self.data_dir
                .write_atomic(&self.dir.join(ACCOUNT), text.as_bytes())?;
            self.account_dirty = false;
        }
        if self.pairing_dirty {
            let json = Zeroizing::new(
                serde_json::to_vec_pretty(&self.pairing)
                    .map_err(|e| contact_error(e.to_string()))?,
            );
            self.data_dir.write_atomic(&self.dir.join(PAIRING), &json)?;
            self.pairing_dirty = false;
        }
        let dirty = std::mem::take(&mut self.dirty);
        for name in dirty {
            let path = self.dir.join(format!("{name}.json"));
            let Some(c) = self.contacts.get(&name) else {
                remove_file(&self.data_dir, &path)?;
                continue;
            };
            use data_encoding::BASE64;
            let file = ContactFile {
                version: CONTACT_VERSION,
                name: c.name.clone(),
                card: c.card_text.clone(),
                chain: BASE64.encode(&c.chain.to_bytes()),
                added_at_ms: c.added_at_ms,
                my_secret: c.my_secret.as_ref().map(|s| hex::encode(s.as_ref())),
                keys: KeysFile::of(c),
                psk_source: c.psk_source,
                argon2: c.argon2,
                sessions: c
                    .sessions
                    .iter()
                    .map(|(device, list)| {
                        (
                            hex::encode(device),
                            list.iter()
                                .map(|s| s.pickle().encrypt(&self.pickle_key))
                                .collect(),
                        )
                    })
                    .collect(),
                used_their_one_time_key: c.used_their_one_time_key,
                alarm: c.alarm.clone(),
                awaiting: c.awaiting,
                awaiting_device: c.awaiting_device.map(hex::encode),
                deferred_rekey_ours: c
                    .deferred_rekey_ours
                    .as_ref()
                    .map(|(seq, r)| (*seq, hex::encode(r))),
                deferred_rekey: c
                    .deferred_rekey
                    .as_ref()
                    .map(|(seq, r, p)| (*seq, hex::encode(r), hex::encode(p.as_ref()))),
                fallback_sessions: c.fallback_sessions.iter().cloned().collect(),
            };
            let json = Zeroizing::new(
                serde_json::to_vec_pretty(&file).map_err(|e| contact_error(e.to_string()))?,
            );
            self.data_dir.write_atomic(&path, &json)?;
        }
        // The chain last: after a join, a chain of another identity is what
        // makes the next start finish it (see `DataDir::load_keys`), so
        // the contacts it came with must be on disk first.
        if self.own_chain_dirty {
            self.data_dir
                .write_atomic(&self.dir.join(CHAIN), &self.own_chain.to_bytes())?;
            self.own_chain_dirty = false;
        }
        for (name, bytes) in std::mem::take(&mut self.pending) {
            self.data_dir
                .write_atomic(&self.dir.join(PENDING).join(name), &bytes)?;
        }
        for (name, bytes) in std::mem::take(&mut self.held) {
            self.data_dir
                .write_atomic(&self.dir.join(HELD).join(name), &bytes)?;
        }
        Ok(())
    }

    fn mark(&mut self, name: &str) {
        if !self.dirty.iter().any(|n| n == name) {
            self.dirty.push(name.to_string());
        }
    }

    /// This identity's chain.
    pub fn own_chain(&self) -> &Chain {
        &self.own_chain
    }

    /// Checks that this device may send as its identity.
    fn check_may_send(&self, keys: &ClientKeys) -> Result<&DeviceCert> {
        match self.own_chain.device(&keys.device_public()) {
            Some(d) if d.revoked.is_some() => Err(contact_error(format!(
                "this device was revoked by its identity ({}): it can no longer send or make cards",
                d.revoked.as_ref().map_or("", |r| r.reason.as_str())
            ))),
            Some(d) if d.cert.caps & CAP_SEND == 0 => {
                Err(contact_error("this device may not send for its identity"))
            }
            Some(d) => Ok(&d.cert),
            None => Err(contact_error("this device is not in its identity's chain")),
        }
    }

    /// Makes a contact card for this device: a fresh ratchet one-time key
    /// and a fresh half of the pre-shared key. With `for_contact`, the card
    /// answers that contact's card and completes the contact here.
    pub fn export_card(
        &mut self,
        keys: &ClientKeys,
        nickname: &str,
        for_contact: Option<&str>,
        now_ms: u64,
    ) -> Result<Card> {
        if nickname.len() > MAX_NICKNAME_LEN {
            return Err(contact_error(format!(
                "the nickname is longer than {MAX_NICKNAME_LEN} bytes"
            )));
        }
        let cert = self.check_may_send(keys)?.clone();
        let reply_to = match for_contact {
            Some(name) => {
                let c = self
                    .contacts
                    .get(name)
                    .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
                if c.my_secret.is_some() {
                    return Err(contact_error(format!(
                        "{name} already has your card (the contact is complete); a new one would change your pre-shared key on one side only"
                    )));
                }
                Some(c.card.card_id)
            }
            None => None,
        };
        if self.export_count()? >= MAX_EXPORTS {
            return Err(contact_error(format!(
                "{MAX_EXPORTS} cards made and not answered: remove old ones from {}",
                self.dir.join(EXPORTS).display()
            )));
        }
        let rng = &mut rand::rng();
        let created = self.account.generate_one_time_keys(1);
        let one_time_key = created
            .created
            .first()
            .copied()
            .ok_or_else(|| contact_error("the ratchet made no one-time key"))?;
        self.account.mark_keys_as_published();
        self.account_dirty = true;
        let card = Card {
            card_id: crypto::random_bytes(rng),
            created_at_ms: now_ms,
            chain: self.own_chain.clone(),
            cert,
            one_time_key: one_time_key.to_bytes(),
            secret: Zeroizing::new(crypto::random_bytes(rng)),
            reply_to,
            nickname: nickname.to_string(),
        };
        let export = ExportFile {
            card_id: hex::encode(card.card_id),
            secret: hex::encode(card.secret.as_ref()),
            created_at_ms: now_ms,
            for_contact: for_contact.map(str::to_string),
        };
        let json = Zeroizing::new(
            serde_json::to_vec_pretty(&export).map_err(|e| contact_error(e.to_string()))?,
        );
        // The account (with the one-time key's secret) and the card's
        // secret are on disk before the card is shown.
        self.save()?;
        self.data_dir.write_atomic(
            &self
                .dir
                .join(EXPORTS)
                .join(format!("{}.json", export.card_id)),
            &json,
        )?;
        if let Some(name) = for_contact {
            if let Some(c) = self.contacts.get_mut(name) {
                c.psk = Some(psk::psk_from_card_secrets(&c.card.secret, &card.secret));
                c.my_secret = Some(card.secret.clone());
                c.psk_source = PskSource::Cards;
            }
            self.mark(name);
            self.save()?;
        }
        Ok(card)
    }

    fn export_count(&self) -> Result<usize> {
        let dir = self.dir.join(EXPORTS);
        Ok(self.data_dir.list_files(&dir, MAX_LISTED)?.len())
    }

    fn load_export(&self, card_id: &[u8; CARD_ID_LEN]) -> Result<Option<ExportFile>> {
        let path = self
            .dir
            .join(EXPORTS)
            .join(format!("{}.json", hex::encode(card_id)));
        match self.data_dir.read_bounded(&path, MAX_EXPORT_FILE)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::File {
                    path,
                    why: e.to_string(),
                }),
        }
    }

    /// Imports a card under `name`. A reply to one of this device's cards
    /// completes the contact; any other card waits for `export_card` with
    /// `for_contact`. Returns the contact's summary.
    pub fn import_card(
        &mut self,
        keys: &ClientKeys,
        card_text: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<ContactInfo> {
        check_name(name)?;
        let card = Card::parse(card_text)?;
        if card.identity() == keys.identity_public() {
            return Err(contact_error("this is a card of your own identity"));
        }
        if self.contacts.contains_key(name) {
            return Err(contact_error(format!(
                "a contact named {name} exists already: choose another name, or `bastet contact remove {name}` first"
            )));
        }
        if let Some(other) = self
            .contacts
            .values()
            .find(|c| c.name != SELF && c.chain.identity() == card.chain.identity())
        {
            return Err(contact_error(format!(
                "this card's identity is your contact {} already: remove it first to replace it",
                other.name
            )));
        }
        if let Some(other) = card
            .chain
            .devices()
            .iter()
            .find_map(|d| self.key_in_use(name, &d.cert))
        {
            return Err(contact_error(format!(
                "this card names a device key of {other}: refused"
            )));
        }
        if self.contacts.len() >= MAX_CONTACTS {
            return Err(contact_error(format!("{MAX_CONTACTS} contacts already")));
        }
        let answered = card.reply_to;
        let (my_secret, psk) = match card.reply_to {
            Some(id) => {
                let export = self.load_export(&id)?.ok_or_else(|| {
                    contact_error(
                        "this card answers a card that this data dir did not make (or whose record was removed): ask for a fresh card",
                    )
                })?;
                let mine = hex32(&export.secret, "exported card secret")?;
                let psk = psk::psk_from_card_secrets(&mine, &card.secret);
                (Some(mine), Some(psk))
            }
            None => (None, None),
        };
        let chain = card.chain.clone();
        let mut contact =
            Contact::new(name, card, crate::card::normalize(card_text), chain, now_ms);
        contact.my_secret = my_secret;
        contact.psk = psk;
        self.contacts.insert(name.to_string(), contact);
        self.mark(name);
        self.save()?;
        if let Some(id) = answered {
            // One card, one person: its half of the key now lives only in
            // the contact, and a second answer to it is refused.
            let path = self
                .dir
                .join(EXPORTS)
                .join(format!("{}.json", hex::encode(id)));
            if let Err(e) = self.data_dir.remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove an answered card's record");
            }
        }
        self.info(keys, name)
    }

    /// Replaces a contact's pre-shared key with one from a passphrase
    /// (see [`psk::psk_from_passphrase`]); both people must do the same.
    pub fn set_passphrase_psk(
        &mut self,
        name: &str,
        psk: Zeroizing<[u8; PSK_LEN]>,
        params: Argon2Params,
    ) -> Result<()> {
        let c = self
            .contacts
            .get_mut(name)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
        c.psk = Some(psk);
        c.pending_psk = None;
        c.previous_psk = None;
        c.psk_source = PskSource::Passphrase;
        c.argon2 = Some(params);
        self.mark(name);
        self.save()
    }

    /// Carries out `request`.
    pub fn handle(
        &mut self,
        keys: &ClientKeys,
        request: ContactRequest,
        now_ms: u64,
    ) -> Result<ContactResponse> {
        // The entry of this identity's own devices is no contact.
        let named = match &request {
            ContactRequest::Export { for_contact, .. } => for_contact.as_deref(),
            ContactRequest::Show { name }
            | ContactRequest::SetPsk { name, .. }
            | ContactRequest::Remove { name } => Some(name.as_str()),
            _ => None,
        };
        if let Some(name) = named {
            not_self(name)?;
        }
        Ok(match request {
            ContactRequest::Export {
                for_contact,
                nickname,
            } => {
                let card = self.export_card(keys, &nickname, for_contact.as_deref(), now_ms)?;
                ContactResponse::Card {
                    text: card.to_text(keys)?,
                }
            }
            ContactRequest::Import { card, name } => ContactResponse::Info {
                contact: self.import_card(keys, &card, &name, now_ms)?,
            },
            ContactRequest::List {} => ContactResponse::List {
                contacts: self.list(keys),
            },
            ContactRequest::Show { name } => ContactResponse::Info {
                contact: self.info(keys, &name)?,
            },
            ContactRequest::SetPsk { name, psk, argon2 } => {
                self.set_passphrase_psk(&name, hex32(&psk, "psk")?, argon2)?;
                ContactResponse::Done {}
            }
            ContactRequest::Remove { name } => {
                self.remove(&name)?;
                ContactResponse::Done {}
            }
            ContactRequest::Devices {} => self.devices(keys),
            ContactRequest::PairOffer { admin } => {
                let code = self.pair_offer(keys, admin, now_ms)?;
                ContactResponse::PairCode {
                    code: code.to_text(),
                    expires_ms: code.expires_ms,
                }
            }
            ContactRequest::Join { code, name } => {
                check_device_name(&name)?;
                self.join_start(keys, &code, &name, now_ms)?;
                ContactResponse::Done {}
            }
            ContactRequest::RevokeDevice { device, reason } => {
                self.revoke_device(keys, &device, &reason, now_ms)?;
                self.devices(keys)
            }
        })
    }

    fn devices(&self, keys: &ClientKeys) -> ContactResponse {
        ContactResponse::Devices {
            identity: hex::encode(keys.identity_public()),
            devices: device_infos(
                &self.own_chain,
                Some(&keys.device_public()),
                &self.last_seen,
            ),
            holds_identity_key: keys.has_identity_key(),
        }
    }

    /// The device of this identity that `id` names (a short id, or a full
    /// key in hex).
    fn own_device_by_id(&self, id: &str) -> Result<[u8; PUBLIC_KEY_LEN]> {
        let id = id.trim().to_ascii_lowercase();
        let matches: Vec<[u8; PUBLIC_KEY_LEN]> = self
            .own_chain
            .devices()
            .iter()
            .map(|d| d.cert.device)
            .filter(|k| !id.is_empty() && hex::encode(k).starts_with(&id))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(contact_error(format!(
                "no device {id:?} in this identity: `bastet device list` shows them"
            ))),
            _ => Err(contact_error(format!(
                "{id:?} names several devices: give more of its key"
            ))),
        }
    }

    /// Revokes device `id` of this identity (signed by this device, which
    /// must be an admin, or by the identity key), and queues the new chain
    /// for every contact.
    pub fn revoke_device(
        &mut self,
        keys: &ClientKeys,
        id: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<()> {
        crate::identity::check_reason(reason)?;
        let device = self.own_device_by_id(id)?;
        let kind = LinkKind::RevokeDevice {
            device,
            reason: reason.to_string(),
        };
        self.sign_own_link(keys, kind, now_ms)?;
        self.push_links_to_all();
        self.rekey_all();
        self.save()
    }

    /// After a revocation: a fresh secret for the pre-shared key of every
    /// contact (and of this identity's own devices), sent to them and to
    /// this identity's other devices. The revoked device knew the old keys;
    /// it is never sent the secrets. Until a contact uses the new key,
    /// messages to them still go under the old one (both are accepted).
    fn rekey_all(&mut self) {
        let seq = self.own_chain.head().seq;
        let has_self = self.contacts.contains_key(SELF);
        let names: Vec<String> = self
            .contacts
            .values()
            .filter(|c| c.psk.is_some())
            .map(|c| c.name.clone())
            .collect();
        let rng = &mut rand::rng();
        for name in names {
            let r: [u8; PSK_LEN] = crypto::random_bytes(rng);
            let Some(c) = self.contacts.get_mut(&name) else {
                continue;
            };
            let Some(psk) = &c.psk else { continue };
            c.pending_psk = Some(psk::rekeyed(psk, &r));
            c.rekey_seq_ours = seq;
            let peer = *c.chain.identity();
            self.mark(&name);
            self.actions.push(ChainAction::Content {
                contact: name.clone(),
                content: Content::Rekey { seq, r },
            });
            if has_self && name != SELF {
                self.actions.push(ChainAction::Content {
                    contact: SELF.to_string(),
                    content: Content::PeerRekey { peer, seq, r },
                });
            }
        }
    }

    /// Adds a device to this identity (this device must be an admin, or
    /// hold the identity key), and queues the new chain for every contact.
    pub fn add_device(
        &mut self,
        keys: &ClientKeys,
        cert: DeviceCert,
        back_signature: [u8; crate::crypto::SIGNATURE_LEN],
        now_ms: u64,
    ) -> Result<()> {
        self.sign_own_link(
            keys,
            LinkKind::AddDevice {
                cert,
                back_signature,
            },
            now_ms,
        )?;
        self.save()?;
        self.push_links_to_all();
        Ok(())
    }

    fn sign_own_link(&mut self, keys: &ClientKeys, kind: LinkKind, now_ms: u64) -> Result<()> {
        let me = self.own_chain.device(&keys.device_public());
        let admin = me.is_some_and(|d| d.is_current() && d.cert.caps & CAP_ADMIN != 0);
        if admin {
            self.own_chain
                .extend_signed(now_ms, keys.device_public(), kind, &|m| keys.sign_device(m))?;
        } else if keys.has_identity_key() {
            self.own_chain
                .extend_signed(now_ms, keys.identity_public(), kind, &|m| {
                    keys.sign_identity(m)
                        .unwrap_or([0; crate::crypto::SIGNATURE_LEN])
                })?;
        } else {
            return Err(contact_error(
                "this device may not add or revoke devices (it is not an admin device of its identity)",
            ));
        }
        self.own_chain_changed();
        Ok(())
    }

    /// The certificate this device offers to join identity `identity` as
    /// device `name` (with `caps`), and its back-signature. Only a fresh
    /// device may join: one with no contacts and no other devices.
    pub fn join_request(
        &self,
        keys: &ClientKeys,
        identity: [u8; PUBLIC_KEY_LEN],
        name: &str,
        caps: u8,
    ) -> Result<(DeviceCert, [u8; crate::crypto::SIGNATURE_LEN])> {
        self.check_fresh()?;
        let me = self
            .own_chain
            .device(&keys.device_public())
            .ok_or_else(|| contact_error("this device is not in its own chain"))?;
        let cert = DeviceCert {
            caps,
            name: name.to_string(),
            ..me.cert.clone()
        };
        cert.check()?;
        let back_signature = cert.back_signature(keys, &identity)?;
        Ok((cert, back_signature))
    }

    fn check_fresh(&self) -> Result<()> {
        if self.contacts.keys().any(|n| n != SELF) || self.own_chain.links().len() > 1 {
            return Err(contact_error(
                "only a fresh device can join an identity (this one has contacts or devices of its own): run `bastet init` in a new data dir",
            ));
        }
        Ok(())
    }

    /// What a device joining this identity is given: the chain, and every
    /// contact (card, chain, pre-shared key). Secret: it travels only
    /// encrypted to the joining device.
    pub fn bundle(&self) -> DeviceBundle {
        use data_encoding::BASE64;
        DeviceBundle {
            chain: BASE64.encode(&self.own_chain.to_bytes()),
            own_psk: self
                .contacts
                .get(SELF)
                .and_then(|c| c.psk.as_ref())
                .map(|p| hex::encode(p.as_ref())),
            contacts: self
                .contacts
                .values()
                .filter(|c| c.name != SELF)
                .map(|c| BundledContact {
                    name: c.name.clone(),
                    card: c.card_text.clone(),
                    chain: BASE64.encode(&c.chain.to_bytes()),
                    my_secret: c.my_secret.as_ref().map(|s| hex::encode(s.as_ref())),
                    keys: KeysFile::of(c),
                    psk_source: c.psk_source,
                    argon2: c.argon2,
                })
                .collect(),
        }
    }

    /// Makes this fresh device one of the identity `identity` that `bundle`
    /// describes; the caller then makes the keys the identity's with
    /// [`DataDir::join_identity`] (a crash in between is finished by the
    /// next [`DataDir::load_keys`]). Sessions with contacts' devices start
    /// afresh, from the fallback keys in their chains.
    pub fn join(
        &mut self,
        keys: &ClientKeys,
        identity: &[u8; PUBLIC_KEY_LEN],
        bundle: &DeviceBundle,
        now_ms: u64,
    ) -> Result<()> {
        use data_encoding::BASE64;
        self.check_fresh()?;
        let bad = |why: &str| contact_error(format!("the device bundle: {why}"));
        let chain_bytes = BASE64
            .decode(bundle.chain.as_bytes())
            .map_err(|_| bad("the chain is not base64"))?;
        let chain = Chain::from_bytes(&chain_bytes, Some(identity))?;
        if !chain
            .device(&keys.device_public())
            .is_some_and(|d| d.is_current())
        {
            return Err(bad("this device is not a current device of the identity"));
        }
        if bundle.contacts.len() > MAX_CONTACTS {
            return Err(bad("too many contacts"));
        }
        let mut contacts = BTreeMap::new();
        for b in &bundle.contacts {
            check_name(&b.name)?;
            let card = Card::parse(&b.card)?;
            let their = BASE64
                .decode(b.chain.as_bytes())
                .map_err(|_| bad("a contact's chain is not base64"))?;
            let their = Chain::from_bytes(&their, Some(&card.identity()))?;
            let (psk, pending_psk, previous_psk) = b.keys.read()?;
            let mut c = Contact::new(&b.name, card, b.card.clone(), their, now_ms);
            c.my_secret = b
                .my_secret
                .as_deref()
                .map(|s| hex32(s, "my_secret"))
                .transpose()?;
            c.psk = psk;
            c.psk_source = b.psk_source;
            c.argon2 = b.argon2;
            // The card's one-time key was for the device that imported it.
            c.used_their_one_time_key = true;
            c.pending_psk = pending_psk;
            c.previous_psk = previous_psk;
            c.rekey_seq_ours = b.keys.rekey_seq_ours;
            c.rekey_seq_theirs = b.keys.rekey_seq_theirs;
            contacts.insert(b.name.clone(), c);
        }
        self.own_chain = chain;
        self.own_chain_dirty = true;
        self.pairing = PairingFile::default();
        self.pairing_dirty = true;
        if let Some(psk) = &bundle.own_psk
            && let Some(me) = self.new_self(&keys.device_public(), hex32(psk, "own_psk")?, now_ms)
        {
            contacts.insert(SELF.to_string(), me);
        }
        for name in contacts.keys() {
            self.dirty.push(name.clone());
        }
        // The stand-in entry of the identity this device had before goes.
        if !contacts.contains_key(SELF) {
            self.dirty.push(SELF.to_string());
        }
        self.contacts = contacts;
        self.save()
    }

    /// Makes a one-time pairing code for a new device of this identity
    /// (granted `send`, and `admin` if asked). This device must be a
    /// current admin device, or hold the identity key.
    pub fn pair_offer(
        &mut self,
        keys: &ClientKeys,
        admin: bool,
        now_ms: u64,
    ) -> Result<crate::pairing::PairCode> {
        let me = self.check_may_send(keys)?.clone();
        if me.caps & CAP_ADMIN == 0 && !keys.has_identity_key() {
            return Err(contact_error(
                "this device may not add devices (it is not an admin device of its identity)",
            ));
        }
        self.pairing.offers.retain(|o| o.expires_ms > now_ms);
        if self.pairing.offers.len() >= MAX_PAIR_CODES {
            return Err(contact_error(format!(
                "{MAX_PAIR_CODES} pairing codes are open already: use one, or wait 15 minutes"
            )));
        }
        let secret: Zeroizing<[u8; 32]> = Zeroizing::new(crypto::random_bytes(&mut rand::rng()));
        let caps = if admin {
            CAP_SEND | CAP_ADMIN
        } else {
            CAP_SEND
        };
        let expires_ms = now_ms + crate::pairing::CODE_LIFETIME_MS;
        self.pairing.offers.push(PairOffer {
            secret: hex::encode(secret.as_ref()),
            caps,
            expires_ms,
        });
        self.pairing_dirty = true;
        self.save()?;
        Ok(crate::pairing::PairCode {
            identity: keys.identity_public(),
            admin: Address::of_cert(&keys.identity_public(), &me),
            secret,
            caps,
            expires_ms,
        })
    }

    /// Asks to join the identity of pairing code `code` as device `name`:
    /// queues the request (see [`Contacts::take_pairing_outgoing`]); the
    /// admin device's reply, once received, makes
    /// [`Contacts::take_join`] return the bundle.
    pub fn join_start(
        &mut self,
        keys: &ClientKeys,
        code: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<()> {
        let code = crate::pairing::PairCode::parse(code)?;
        if code.expires_ms <= now_ms {
            return Err(contact_error(
                "this pairing code has expired: make a new one with `bastet device add`",
            ));
        }
        if code.identity == keys.identity_public() {
            return Err(contact_error("this device is already of that identity"));
        }
        let (cert, back_signature) = self.join_request(keys, code.identity, name, code.caps)?;
        let reply_to = Address::of_cert(&keys.identity_public(), &cert);
        let rng = &mut rand::rng();
        let message =
            crate::pairing::seal_request(&code.secret, &reply_to, &cert, &back_signature, rng)?;
        self.queue_pairing(&code.admin, message, now_ms)?;
        self.pairing.join = Some(PendingJoin {
            identity: hex::encode(code.identity),
            secret: hex::encode(code.secret.as_ref()),
            expires_ms: code.expires_ms,
        });
        self.pairing_dirty = true;
        self.save()
    }

    fn queue_pairing(&mut self, to: &Address, message: Vec<u8>, now_ms: u64) -> Result<()> {
        let rng = &mut rand::rng();
        let inner = envelope::Inner {
            sender_ratchet_key: self.account.curve25519_key().to_bytes(),
            message_type: crate::pairing::PAIRING_MESSAGE_TYPE,
            message,
        };
        let payload = envelope::seal(&to.encryption_key, &inner, rng)?;
        self.pairing_out.push(SealedMessage {
            message_id: MessageId(crypto::random_bytes(rng)),
            sent_at_ms: now_ms,
            payload,
            device: [0; PUBLIC_KEY_LEN],
            to: *to,
        });
        Ok(())
    }

    /// Pairing messages to send (requests, replies).
    pub fn take_pairing_outgoing(&mut self) -> Vec<SealedMessage> {
        std::mem::take(&mut self.pairing_out)
    }

    /// The identity this device was accepted into and its bundle, once the
    /// admin device's reply arrived: finish with [`Contacts::join`] and
    /// [`DataDir::join_identity`].
    pub fn take_join(&mut self) -> Option<([u8; PUBLIC_KEY_LEN], DeviceBundle)> {
        let accepted = self.pairing.accepted.as_ref()?;
        let identity = *hex32(&accepted.identity, "the identity joined").ok()?;
        Some((identity, accepted.bundle.clone()))
    }

    /// Gives up a join that cannot be finished (the error says why).
    pub fn drop_join(&mut self) -> Result<()> {
        self.pairing.accepted = None;
        self.pairing_dirty = true;
        self.save()
    }

    /// Whether this device waits for an admin device's answer to a join.
    pub fn joining(&self) -> bool {
        self.pairing.join.is_some()
    }

    /// A pairing message (sealed envelope type 2): a join request for one
    /// of this device's codes, or the answer to this device's request.
    fn open_pairing(&mut self, keys: &ClientKeys, message: &[u8]) -> Result<Opened> {
        use crate::pairing::{self, Message};
        let now = crate::now_ms();
        let offers = std::mem::take(&mut self.pairing.offers);
        let mut request = None;
        for offer in offers {
            let secret = hex32(&offer.secret, "a pairing secret")?;
            if request.is_none()
                && offer.expires_ms > now
                && let Ok(Some(m)) = pairing::open(&secret, message)
            {
                // One use: the code is gone whatever comes of it.
                self.pairing_dirty = true;
                request = Some((secret, offer.caps, m));
                continue;
            }
            if offer.expires_ms > now {
                self.pairing.offers.push(offer);
            } else {
                self.pairing_dirty = true;
            }
        }
        if let Some((secret, caps, m)) = request {
            let Message::Request {
                reply_to,
                cert,
                back_signature,
            } = m
            else {
                return Err(contact_error("a pairing answer for a code of this device"));
            };
            let id = short_id(&cert.device);
            let name = cert.name.clone();
            let result = if cert.caps != caps {
                Err(contact_error(
                    "the new device asked for other capabilities than the code grants",
                ))
            } else {
                self.add_device(keys, *cert, back_signature, now)
            };
            let rng = &mut rand::rng();
            let answer = match &result {
                Ok(()) => {
                    let bundle = serde_json::to_vec(&self.bundle())
                        .map(Zeroizing::new)
                        .map_err(|e| contact_error(e.to_string()))?;
                    pairing::seal_reply(&secret, &bundle, rng)?
                }
                Err(e) => pairing::seal_refusal(&secret, &e.to_string(), rng)?,
            };
            let reply_to = Address {
                identity_key: keys.identity_public(),
                ..reply_to
            };
            self.queue_pairing(&reply_to, answer, now)?;
            self.save()?;
            return match result {
                Ok(()) => Ok(Opened::Chain(vec![ReceivedMessage::notice(
                    "you",
                    &format!(
                        "device {id} ({name:?}) joined your identity; your contacts are sent the new device list"
                    ),
                )])),
                Err(e) => Err(contact_error(format!(
                    "a device asked to join with one of your pairing codes and was refused: {e}"
                ))),
            };
        }
        if let Some(join) = &self.pairing.join {
            let secret = hex32(&join.secret, "a pairing secret")?;
            let identity = *hex32(&join.identity, "the identity joined")?;
            match pairing::open(&secret, message)? {
                Some(Message::Reply(json)) => {
                    let bundle: DeviceBundle = serde_json::from_slice(&json).map_err(|e| {
                        contact_error(format!("the admin device's answer is malformed: {e}"))
                    })?;
                    self.pairing.accepted = Some(AcceptedJoin {
                        identity: hex::encode(identity),
                        bundle,
                    });
                    self.pairing.join = None;
                    self.pairing_dirty = true;
                    return Ok(Opened::Chain(vec![ReceivedMessage::notice(
                        "you",
                        &format!("this device joined identity {}", hex::encode(identity)),
                    )]));
                }
                Some(Message::Refusal(why)) => {
                    self.pairing.join = None;
                    self.pairing_dirty = true;
                    return Err(contact_error(format!(
                        "the admin device refused this device: {}",
                        why.chars().filter(|c| !c.is_control()).collect::<String>()
                    )));
                }
                Some(Message::Request { .. }) => {
                    return Err(contact_error("a join request for a device that is joining"));
                }
                None => {}
            }
        }
        Err(Error::Layer {
            layer: "pairing",
            why: "no pairing code of this device matches (expired, used, or made elsewhere)".into(),
        })
    }

    fn push_links_to_all(&mut self) {
        let names: Vec<String> = self
            .contacts
            .values()
            .filter(|c| c.psk.is_some())
            .map(|c| c.name.clone())
            .collect();
        for contact in names {
            self.actions.push(ChainAction::SendLinks {
                contact,
                device: None,
            });
        }
    }

    /// The chain traffic to send (links to push, links to ask for).
    pub fn take_actions(&mut self) -> Vec<ChainAction> {
        std::mem::take(&mut self.actions)
    }

    /// Seals the chain traffic [`Contacts::take_actions`] gives: (contact,
    /// sealed copy) to queue. A failure (a contact removed since, a
    /// revoked device) is logged and the action dropped.
    pub fn seal_actions<R: CryptoRng + ?Sized>(
        &mut self,
        keys: &ClientKeys,
        now_ms: u64,
        rng: &mut R,
    ) -> Vec<(String, SealedMessage)> {
        let mut out = Vec::new();
        for action in self.take_actions() {
            let (contact, device, content) = match action {
                ChainAction::SendLinks { contact, device } => {
                    (contact, device, Content::Links(self.own_chain.to_bytes()))
                }
                ChainAction::RequestLinks {
                    contact,
                    device,
                    after,
                } => (contact, Some(device), Content::LinksRequest { after }),
                ChainAction::Content { contact, content } => (contact, None, content),
            };
            match self.seal_to(keys, &contact, device, &content, now_ms, rng) {
                Ok(copies) => out.extend(copies.into_iter().map(|c| (contact.clone(), c))),
                Err(e) => {
                    tracing::warn!(contact, error = %e, "chain traffic for a contact could not be sealed; dropped");
                }
            }
        }
        out
    }

    /// The identity key of contact `name`.
    pub fn identity_of(&self, name: &str) -> Result<[u8; PUBLIC_KEY_LEN]> {
        self.contacts
            .get(name)
            .map(|c| *c.chain.identity())
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))
    }

    /// Removes contact `name` (its sessions and pre-shared key are gone).
    pub fn remove(&mut self, name: &str) -> Result<()> {
        self.contacts
            .remove(name)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
        // Their held messages go with them.
        let dir = self.dir.join(HELD);
        for file in self.data_dir.list_files(&dir, MAX_LISTED)? {
            if file
                .strip_suffix(".json")
                .and_then(|f| f.split_once('+'))
                .is_some_and(|(_, n)| n == name)
            {
                remove_file(&self.data_dir, &dir.join(&file))?;
            }
        }
        self.held
            .retain(|(f, _)| !f.ends_with(&format!("+{name}.json")));
        self.mark(name);
        self.save()
    }

    /// Every contact, by name.
    pub fn list(&self, keys: &ClientKeys) -> Vec<ContactInfo> {
        self.contacts
            .keys()
            .filter(|n| n.as_str() != SELF)
            .filter_map(|n| self.info(keys, n).ok())
            .collect()
    }

    /// One contact.
    pub fn info(&self, keys: &ClientKeys, name: &str) -> Result<ContactInfo> {
        let c = self
            .contacts
            .get(name)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
        Ok(ContactInfo {
            name: c.name.clone(),
            nickname: c.card.nickname.clone(),
            identity: hex::encode(c.chain.identity()),
            safety_number: safety_number(&keys.identity_public(), c.chain.identity()),
            complete: c.psk.is_some(),
            psk_source: if c.psk.is_some() {
                match c.psk_source {
                    PskSource::Cards => "cards".into(),
                    PskSource::Passphrase => "passphrase".into(),
                }
            } else {
                String::new()
            },
            mailbox_server: c.card.cert.mailbox_server.to_hex(),
            sessions: c.sessions.values().map(Vec::len).sum(),
            added_at_ms: c.added_at_ms,
            devices: device_infos(&c.chain, None, &self.last_seen),
            chain_seq: c.chain.head().seq,
            alarm: c.alarm.clone(),
            awaiting_links: c.awaiting,
        })
    }

    /// Where messages to `name` go, one address per current device,
    /// checking that they can be sent.
    pub fn addresses_of(&self, name: &str) -> Result<Vec<Address>> {
        not_self(name)?;
        let c = self.sendable(name)?;
        Ok(c.chain
            .current_devices()
            .map(|d| Address::of_cert(c.chain.identity(), &d.cert))
            .collect())
    }

    fn sendable(&self, name: &str) -> Result<&Contact> {
        let c = self
            .contacts
            .get(name)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
        if c.psk.is_none() {
            return Err(contact_error(format!(
                "{name} does not have your card yet: run `bastet contact export --for {name} --out FILE` and give them FILE"
            )));
        }
        if let Some(alarm) = &c.alarm {
            return Err(Error::Equivocation(alarm.clone()));
        }
        if c.chain.current_devices().next().is_none() {
            return Err(contact_error(format!(
                "{name} has no device that is not revoked"
            )));
        }
        Ok(c)
    }

    /// Seals `content` to contact `name` through all four layers, one copy
    /// per current device of theirs (in chain order). The ratchet state is
    /// saved before this returns.
    pub fn seal_message<R: CryptoRng + ?Sized>(
        &mut self,
        keys: &ClientKeys,
        name: &str,
        content: &Content,
        sent_at_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SealedMessage>> {
        not_self(name)?;
        if !matches!(content, Content::Text(_) | Content::File { .. }) {
            return Err(contact_error("only texts and files are sent as messages"));
        }
        self.seal_to(keys, name, None, content, sent_at_ms, rng)
    }

    /// [`Contacts::seal_message`] to one device of the contact, or to all.
    pub fn seal_to<R: CryptoRng + ?Sized>(
        &mut self,
        keys: &ClientKeys,
        name: &str,
        device: Option<[u8; PUBLIC_KEY_LEN]>,
        content: &Content,
        sent_at_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SealedMessage>> {
        content.check()?;
        self.check_may_send(keys)?;
        let head = self.own_chain.head();
        let ratchet_identity = self.account.curve25519_key().to_bytes();
        let c = self.sendable(name)?;
        let psk = c
            .psk
            .clone()
            .ok_or_else(|| contact_error("no pre-shared key"))?;
        let identity = *c.chain.identity();
        let targets: Vec<DeviceCert> = c
            .chain
            .current_devices()
            .filter(|d| d.cert.device != keys.device_public())
            .filter(|d| device.is_none_or(|k| k == d.cert.device))
            .map(|d| d.cert.clone())
            .collect();
        if targets.is_empty() {
            return Err(contact_error(format!("{name} has no such current device")));
        }
        let mut out = Vec::with_capacity(targets.len());
        for cert in targets {
            let message_id = MessageId(crypto::random_bytes(rng));
            let layer1 = content::seal(
                keys,
                &head,
                &Recipient::of_cert(&identity, &cert),
                message_id,
                content,
                sent_at_ms,
                rng,
            )?;
            let layer2 = psk::seal(&psk, &keys.identity_public(), &identity, &layer1, rng)?;
            let c = self
                .contacts
                .get_mut(name)
                .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
            let sessions = c.sessions.entry(cert.device).or_default();
            if sessions.is_empty() {
                // The card's one-time key for the card's device, once;
                // the fallback key of the chain's certificate otherwise.
                let one_time_key =
                    if cert.device == c.card.cert.device && !c.used_their_one_time_key {
                        c.used_their_one_time_key = true;
                        c.card.one_time_key
                    } else {
                        cert.ratchet_fallback
                    };
                let session = self
                    .account
                    .create_outbound_session(
                        SessionConfig::version_1(),
                        Curve25519PublicKey::from_bytes(cert.ratchet_identity),
                        Curve25519PublicKey::from_bytes(one_time_key),
                    )
                    .map_err(|e| {
                        contact_error(format!("cannot start a ratchet session with {name}: {e}"))
                    })?;
                sessions.push(session);
            }
            let message = sessions[0].encrypt(&layer2).map_err(|e| Error::Layer {
                layer: "ratchet",
                why: e.to_string(),
            })?;
            let (message_type, message) = message.to_parts();
            let inner = envelope::Inner {
                sender_ratchet_key: ratchet_identity,
                message_type: u8::try_from(message_type).unwrap_or(u8::MAX),
                message,
            };
            let payload = envelope::seal(&cert.envelope, &inner, rng)?;
            out.push(SealedMessage {
                message_id,
                sent_at_ms,
                payload,
                device: cert.device,
                to: Address::of_cert(&identity, &cert),
            });
        }
        self.mark(name);
        self.save()?;
        Ok(out)
    }

    /// Copies of `content`, just sent to contact `name`, for this
    /// identity's other current devices (none if it has no other, or no
    /// key shared between its devices).
    pub fn seal_copies<R: CryptoRng + ?Sized>(
        &mut self,
        keys: &ClientKeys,
        name: &str,
        content: &Content,
        sent_at_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SealedMessage>> {
        let others = self
            .own_chain
            .current_devices()
            .any(|d| d.cert.device != keys.device_public());
        if !others || !self.contacts.contains_key(SELF) {
            return Ok(Vec::new());
        }
        let to = self.identity_of(name)?;
        let copy = Content::Copy {
            to,
            content: Box::new(content.clone()),
        };
        self.seal_to(keys, SELF, None, &copy, sent_at_ms, rng)
    }

    /// [`Contacts::open_message`], with every failure made a rejected
    /// message to show (nothing is dropped silently). `None`: nothing to
    /// show now (chain traffic, a call signal, kept for
    /// [`Contacts::take_calls`], or a message held for missing links; see
    /// [`Contacts::take_released`]).
    pub fn receive(&mut self, keys: &ClientKeys, payload: &[u8]) -> Option<ReceivedMessage> {
        match self.open_message(keys, payload) {
            Ok(Opened::Message(m)) => Some(m),
            Ok(Opened::Held) => None,
            Ok(Opened::Call(call)) => {
                push_bounded(&mut self.calls, *call, "opened");
                None
            }
            Ok(Opened::Chain(notices)) => {
                self.released.extend(notices.into_iter().map(|n| (n, None)));
                None
            }
            Ok(Opened::Pending(why)) | Err(why) => {
                Some(ReceivedMessage::rejected(payload, None, &why))
            }
        }
    }

    /// Opens a payload through all four layers. The ratchet state changes
    /// in memory only: call [`Contacts::save`] once what was opened is
    /// safely stored (a crash before that decrypts it again).
    pub fn open_message(&mut self, keys: &ClientKeys, payload: &[u8]) -> Result<Opened> {
        let inner = envelope::open(keys, payload)?;
        if inner.message_type == crate::pairing::PAIRING_MESSAGE_TYPE {
            return self.open_pairing(keys, &inner.message);
        }
        let message = parse_ratchet_message(inner.message_type, &inner.message)?;
        let known = self.contacts.values().find_map(|c| {
            c.chain
                .device_by_ratchet_key(&inner.sender_ratchet_key)
                .map(|d| (c.name.clone(), c.psk.is_some(), d.clone()))
        });
        let (name, device) = match known {
            Some((name, true, device)) => (name, device),
            other => {
                // Not opened further: the ratchet is left untouched, so the
                // message opens once the contact is complete.
                let why = match other {
                    Some((name, _, _)) => contact_error(format!(
                        "a message from {name}, who does not have your card yet: it is kept; run `bastet contact export --for {name}` and give them the card"
                    )),
                    None => Error::UnknownSender(hex::encode(inner.sender_ratchet_key)),
                };
                if self.pending_count() < MAX_PENDING {
                    let id = hex::encode(&blake3::hash(payload).as_bytes()[..16]);
                    self.pending.push((id, payload.to_vec()));
                }
                return Ok(Opened::Pending(why));
            }
        };
        if device.cert.caps & CAP_SEND == 0 && device.revoked.is_none() {
            return Err(contact_error(format!(
                "{name}'s device {} may not send (its identity did not give it the capability); rejected",
                short_id(&device.cert.device)
            )));
        }
        if let Some(r) = &device.revoked {
            return Err(Error::RevokedDevice {
                contact: name,
                device: short_id(&device.cert.device),
                reason: r.reason.clone(),
            });
        }
        if let Some(alarm) = self.contacts.get(&name).and_then(|c| c.alarm.clone()) {
            return Err(Error::Equivocation(alarm));
        }
        let layer2 = self.ratchet_decrypt(&name, &device.cert, &message)?;
        self.mark(&name);
        let c = self
            .contacts
            .get(&name)
            .ok_or_else(|| Error::NoSuchContact(name.clone()))?;
        let psk = c
            .psk
            .as_ref()
            .ok_or_else(|| contact_error(format!("{name} has no pre-shared key")))?;
        // The key in force, then one re-keyed and not yet used by them,
        // then the one before the last re-key.
        let mut layer1 = None;
        for (i, key) in [Some(psk), c.pending_psk.as_ref(), c.previous_psk.as_ref()]
            .into_iter()
            .enumerate()
        {
            let Some(key) = key else { continue };
            match psk::open(
                key,
                c.chain.identity(),
                &keys.identity_public(),
                &layer2,
                &name,
            ) {
                Ok(l) => {
                    layer1 = Some((i, key.clone(), l));
                    break;
                }
                Err(Error::PskMismatch(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        let (which, opened_psk, layer1) = layer1.ok_or_else(|| Error::PskMismatch(name.clone()))?;
        let opened = content::open(keys, &layer1)?;
        if &opened.sender_identity != c.chain.identity()
            || opened.sender_device != device.cert.device
        {
            return Err(Error::NotTheContact(name));
        }
        if !opened.signature_ok {
            return Err(Error::Layer {
                layer: "content",
                why: format!("the signature by {name}'s device does not verify; rejected"),
            });
        }
        let head_check = c.chain.check_head(&opened.sender_head);
        let c_head_seq = c.chain.head().seq;
        self.last_seen.insert(device.cert.device, crate::now_ms());
        if which == 1
            && let Some(c) = self.contacts.get_mut(&name)
        {
            // They use the re-keyed key: it is the one in force now.
            c.previous_psk = c.psk.take();
            c.psk = c.pending_psk.take();
        }
        match head_check {
            HeadCheck::Known => {}
            // Links prove themselves: the merge finds a second history.
            HeadCheck::Conflict if matches!(opened.content, Content::Links(_)) => {}
            HeadCheck::Conflict => {
                // A bare claim proves nothing (any device can write any
                // head): ask for the links; a second, validly signed
                // history among them raises the alarm.
                self.ask_links(&name, &device.cert.device);
                return Err(contact_error(format!(
                    "{name}'s device {} claims a version {} of their device list that differs from yours; the message is refused and their list was asked for (if they signed two, you will see an alarm)",
                    short_id(&device.cert.device),
                    opened.sender_head.seq
                )));
            }
            HeadCheck::Ahead => {
                let held = c_head_seq;
                if opened.sender_head.seq > held + crate::identity::MAX_LINKS as u64
                    || opened.sender_head.seq >= crate::identity::MAX_LINKS as u64
                {
                    return Err(contact_error(format!(
                        "{name}'s device {} claims a device list longer than any can be; rejected",
                        short_id(&device.cert.device)
                    )));
                }
                if let Some(c) = self.contacts.get_mut(&name)
                    && c.awaiting.is_none_or(|a| a < opened.sender_head.seq)
                {
                    c.awaiting = Some(opened.sender_head.seq);
                    c.awaiting_device = Some(device.cert.device);
                }
            }
        }
        match opened.content {
            Content::Links(bytes) => {
                let notices = self.merge_links(&name, &bytes)?;
                Ok(Opened::Chain(notices))
            }
            Content::Rekey { seq, r } => {
                // Only for a revocation in their chain: applied once the
                // link is held, kept until then.
                if let Some(c) = self.contacts.get_mut(&name)
                    && seq > c.rekey_seq_theirs
                {
                    if c.chain.is_revocation(seq) {
                        c.previous_psk = Some(opened_psk.clone());
                        c.psk = Some(psk::rekeyed(&opened_psk, &r));
                        c.pending_psk = None;
                        c.rekey_seq_theirs = seq;
                    } else if seq > c.chain.head().seq
                        && seq < c.chain.head().seq + crate::identity::MAX_LINKS as u64
                    {
                        c.deferred_rekey = Some((seq, r, opened_psk.clone()));
                    }
                }
                Ok(Opened::Chain(Vec::new()))
            }
            Content::PeerRekey { peer, seq, r } => {
                if name != SELF {
                    return Err(Error::Layer {
                        layer: "content",
                        why: format!("{name} sent a re-key meant for your own devices; rejected"),
                    });
                }
                let revocation = self.own_chain.is_revocation(seq);
                let own_head = self.own_chain.head().seq;
                if let Some(c) = self
                    .contacts
                    .values_mut()
                    .find(|c| c.name != SELF && c.chain.identity() == &peer)
                    && seq > c.rekey_seq_ours
                {
                    if revocation && let Some(psk) = &c.psk {
                        c.pending_psk = Some(psk::rekeyed(psk, &r));
                        c.rekey_seq_ours = seq;
                    } else if seq > own_head && seq < own_head + crate::identity::MAX_LINKS as u64 {
                        // The revocation has not reached this device yet.
                        c.deferred_rekey_ours = Some((seq, r));
                    }
                    let n = c.name.clone();
                    self.mark(&n);
                }
                Ok(Opened::Chain(Vec::new()))
            }
            Content::Call(signal) => {
                if name == SELF {
                    return Err(Error::Layer {
                        layer: "content",
                        why: "a call signal from another device of your own identity; rejected"
                            .into(),
                    });
                }
                let call = ReceivedCall {
                    contact: name.clone(),
                    identity: opened.sender_identity,
                    device: opened.sender_device,
                    signal,
                    received_at_ms: crate::now_ms(),
                };
                let behind = self
                    .contacts
                    .get(&name)
                    .is_some_and(|c| c.awaiting.is_some());
                if behind {
                    // As for messages: the missing links may revoke the
                    // device. Asked for at most once a minute.
                    push_bounded(&mut self.held_calls, call, "held");
                    self.ask_links(&name, &device.cert.device);
                    return Ok(Opened::Held);
                }
                Ok(Opened::Call(Box::new(call)))
            }
            Content::LinksRequest { .. } => {
                let now = crate::now_ms();
                // Answers are limited apart from requests (both sides may ask
                // within the same minute).
                let key = format!("answer {name}");
                if self
                    .links_sent
                    .get(&key)
                    .is_none_or(|t| now.saturating_sub(*t) >= LINKS_INTERVAL_MS)
                {
                    self.links_sent.insert(key, now);
                    self.actions.push(ChainAction::SendLinks {
                        contact: name,
                        device: Some(device.cert.device),
                    });
                }
                Ok(Opened::Chain(Vec::new()))
            }
            content => {
                // A copy of what another of this identity's devices sent is
                // shown as sent to that contact; only own devices send one.
                let (contact, outgoing, content) = match content {
                    Content::Copy { to, content } if name == SELF => {
                        let peer = self
                            .contacts
                            .values()
                            .find(|c| c.name != SELF && c.chain.identity() == &to)
                            .map(|c| c.name.clone());
                        (peer, true, *content)
                    }
                    Content::Copy { .. } => {
                        return Err(Error::Layer {
                            layer: "content",
                            why: format!("{name} sent a copy meant for your own devices; rejected"),
                        });
                    }
                    other => (Some(name.clone()), false, other),
                };
                let (text, file) = match content {
                    Content::File { name, bytes } => {
                        (String::new(), Some(ReceivedFile { name, bytes }))
                    }
                    Content::Text(t) => (t, None),
                    _ => (String::new(), None),
                };
                let message = ReceivedMessage {
                    message_id: opened.message_id,
                    sent_at_ms: opened.sent_at_ms,
                    from: opened.sender_identity,
                    contact: if outgoing || name != SELF {
                        contact
                    } else {
                        Some("you".into())
                    },
                    verified: true,
                    text,
                    file,
                    rejected: None,
                    notice: false,
                    outgoing,
                };
                let behind = self
                    .contacts
                    .get(&name)
                    .and_then(|c| c.awaiting.map(|a| (a, c.chain.head().seq)));
                match behind {
                    Some((_, held)) => {
                        self.hold_message(&name, &device.cert.device, &message, held)?;
                        Ok(Opened::Held)
                    }
                    None => Ok(Opened::Message(message)),
                }
            }
        }
    }

    /// Which other entry (or this identity) already has a device with one
    /// of `cert`'s keys: a device's keys belong to one identity only, so
    /// that a message is never credited to the wrong one.
    fn key_in_use(&self, except: &str, cert: &DeviceCert) -> Option<String> {
        let clash = |chain: &Chain| {
            chain.devices().iter().any(|d| {
                d.cert.device == cert.device
                    || d.cert.ratchet_identity == cert.ratchet_identity
                    || d.cert.envelope == cert.envelope
            })
        };
        if except != SELF && clash(&self.own_chain) {
            return Some("your own identity".into());
        }
        self.contacts
            .values()
            .filter(|c| c.name != except && c.name != SELF)
            .find(|c| clash(&c.chain))
            .map(|c| c.name.clone())
    }

    fn raise_alarm(&mut self, name: &str, alarm: &str) {
        if let Some(c) = self.contacts.get_mut(name) {
            c.alarm.get_or_insert_with(|| alarm.to_string());
        }
        self.mark(name);
        self.released.push((
            ReceivedMessage::notice(name, &Error::Equivocation(alarm.to_string()).to_string()),
            None,
        ));
    }

    /// Keeps an opened message until the contact's chain catches up, and
    /// asks the sending device for the links (at most once a minute).
    fn hold_message(
        &mut self,
        name: &str,
        device: &[u8; PUBLIC_KEY_LEN],
        message: &ReceivedMessage,
        held_seq: u64,
    ) -> Result<()> {
        if self.held_count(name) >= MAX_HELD_PER_CONTACT {
            return Err(contact_error(format!(
                "{name} claims devices you have not heard of, and {MAX_HELD_PER_CONTACT} of their messages wait for them already: this one is refused"
            )));
        }
        let file = HeldFile {
            contact: name.to_string(),
            device: hex::encode(device),
            message: crate::daemon::api::WireReceived::new(message, crate::now_ms(), 0),
        };
        let json =
            Zeroizing::new(serde_json::to_vec(&file).map_err(|e| contact_error(e.to_string()))?);
        let id = format!("{}+{name}.json", message.message_id.to_hex());
        self.held.push((id, json.to_vec()));
        let _ = held_seq;
        self.ask_links(name, device);
        Ok(())
    }

    /// Asks `device` of contact `name` for their chain links (at most once
    /// a minute per contact).
    fn ask_links(&mut self, name: &str, device: &[u8; PUBLIC_KEY_LEN]) {
        let now = crate::now_ms();
        let after = self.contacts.get(name).map_or(0, |c| c.chain.head().seq);
        if self
            .links_sent
            .get(name)
            .is_none_or(|t| now.saturating_sub(*t) >= LINKS_INTERVAL_MS)
        {
            self.links_sent.insert(name.to_string(), now);
            self.actions.push(ChainAction::RequestLinks {
                contact: name.to_string(),
                device: *device,
                after,
            });
        }
    }

    /// Messages held for contact `name` (files are named `<id>+<name>.json`;
    /// `+` is in no contact name).
    fn held_count(&self, name: &str) -> usize {
        let of = |file: &str| {
            file.strip_suffix(".json")
                .and_then(|f| f.split_once('+'))
                .is_some_and(|(_, n)| n == name)
        };
        let dir = self.dir.join(HELD);
        let on_disk = self
            .data_dir
            .list_files(&dir, MAX_LISTED)
            .map_or(0, |files| files.iter().filter(|f| of(f)).count());
        on_disk + self.held.iter().filter(|(f, _)| of(f)).count()
    }

    /// Merges links a contact sent: returns the notices to show (what
    /// changed, or an equivocation alarm), and releases held messages.
    fn merge_links(&mut self, name: &str, bytes: &[u8]) -> Result<Vec<ReceivedMessage>> {
        let links = crate::identity::decode_links(bytes)?;
        let before = self
            .contacts
            .get(name)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))?
            .chain
            .clone();
        let mut candidate = before.clone();
        match candidate.merge(&links) {
            Ok(_) => {}
            Err(Error::Equivocation(why)) => {
                let alarm = format!("{name}: {why}");
                self.raise_alarm(name, &alarm);
                return Err(Error::Equivocation(alarm));
            }
            Err(e) => return Err(e),
        }
        for d in candidate.devices() {
            if before.device(&d.cert.device).is_none()
                && let Some(other) = self.key_in_use(name, &d.cert)
            {
                return Err(contact_error(format!(
                    "{name}'s new device {} uses a key of {other}: refused",
                    short_id(&d.cert.device)
                )));
            }
        }
        let mut notices = Vec::new();
        let c = self
            .contacts
            .get_mut(name)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
        c.chain = candidate;
        let claimant_revoked = c
            .awaiting_device
            .and_then(|d| c.chain.device(&d).map(|d| d.revoked.is_some()))
            .unwrap_or(false);
        if c.awaiting.is_some_and(|a| a <= c.chain.head().seq) || claimant_revoked {
            // Caught up, or the claim came from a device now revoked.
            c.awaiting = None;
            c.awaiting_device = None;
        }
        if let Some((seq, r, opened)) = c.deferred_rekey.take() {
            if c.chain.is_revocation(seq) && seq > c.rekey_seq_theirs {
                c.previous_psk = Some(opened.clone());
                c.psk = Some(psk::rekeyed(&opened, &r));
                c.pending_psk = None;
                c.rekey_seq_theirs = seq;
            } else if seq > c.chain.head().seq {
                c.deferred_rekey = Some((seq, r, opened));
            }
        }
        let merged = c.chain.clone();
        c.card.chain = merged.clone();
        if let Some(text) = chain_notice(
            if name == SELF { "your identity" } else { name },
            &before,
            &merged,
        ) {
            notices.push(ReceivedMessage::notice(name, &text));
        }
        if name == SELF && merged.head().seq > self.own_chain.head().seq {
            // Another of this identity's devices changed the chain.
            self.own_chain = merged;
            self.own_chain_dirty = true;
            let own = &self.own_chain;
            let mut touched = Vec::new();
            for c in self.contacts.values_mut() {
                if let Some((seq, r)) = c.deferred_rekey_ours
                    && own.is_revocation(seq)
                {
                    c.deferred_rekey_ours = None;
                    if seq > c.rekey_seq_ours
                        && let Some(psk) = &c.psk
                    {
                        c.pending_psk = Some(psk::rekeyed(psk, &r));
                        c.rekey_seq_ours = seq;
                    }
                    touched.push(c.name.clone());
                }
            }
            for n in touched {
                self.mark(&n);
            }
        }
        self.mark(name);
        self.release_held(name)?;
        Ok(notices)
    }

    /// Judges again the messages held for `name`: released (to
    /// [`Contacts::take_released`]) once the chain caught up, rejected if
    /// their device turned out revoked.
    fn release_held(&mut self, name: &str) -> Result<()> {
        let Some(c) = self.contacts.get(name) else {
            return Ok(());
        };
        if c.awaiting.is_some() {
            return Ok(());
        }
        let chain = c.chain.clone();
        let (theirs, others): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.held_calls)
            .into_iter()
            .partition(|call| call.contact == name);
        self.held_calls = others;
        for call in theirs {
            match chain.device(&call.device) {
                Some(d) if d.is_current() => push_bounded(&mut self.calls, call, "opened"),
                Some(_) => tracing::warn!(
                    contact = name,
                    device = %short_id(&call.device),
                    "a call signal from a device its identity revoked is refused"
                ),
                // Not in the chain: it stays held.
                None => self.held_calls.push_back(call),
            }
        }
        // (file, bytes, whether it is only in memory yet)
        let mut files: Vec<(String, Vec<u8>, bool)> = self
            .held
            .iter()
            .map(|(f, b)| (f.clone(), b.clone(), true))
            .collect();
        let dir = self.dir.join(HELD);
        for file in self.data_dir.list_files(&dir, MAX_LISTED)? {
            if file.ends_with(".tmp") || files.iter().any(|(f, _, _)| *f == file) {
                continue;
            }
            if let Some(bytes) = self
                .data_dir
                .read_bounded(&dir.join(&file), MAX_HELD_FILE)?
            {
                files.push((file, bytes, false));
            }
        }
        let mut released = Vec::new();
        for (file, bytes, unsaved) in files {
            let held: Option<HeldFile> = serde_json::from_slice(&bytes).ok();
            let Some(held) = held.filter(|h| h.contact == name) else {
                continue;
            };
            let parsed = hex32(&held.device, "held message device")
                .and_then(|d| held.message.to_inbox_message().map(|m| (*d, m.message)));
            let (device, mut message) = match parsed {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(file, error = %e, "a held message is corrupt; it stays");
                    continue;
                }
            };
            match chain.device(&device) {
                Some(d) if d.is_current() => {}
                Some(d) => {
                    let why = Error::RevokedDevice {
                        contact: name.to_string(),
                        device: short_id(&device),
                        reason: d
                            .revoked
                            .as_ref()
                            .map_or(String::new(), |r| r.reason.clone()),
                    };
                    message.text.clear();
                    message.file = None;
                    message.verified = false;
                    message.rejected = Some(why.to_string());
                }
                // A device not in the chain: it stays held.
                None => continue,
            }
            // One only in memory has no file to drop once shown.
            released.push((file.clone(), unsaved));
            self.released.push((message, (!unsaved).then_some(file)));
        }
        self.held
            .retain(|(f, _)| !released.iter().any(|(r, unsaved)| *unsaved && r == f));
        Ok(())
    }

    /// Messages that were held and are now released (or rejected), and
    /// notices of chain changes, to show; then drop their held files with
    /// [`Contacts::drop_held`] once they are stored.
    pub fn take_released(&mut self) -> (Vec<ReceivedMessage>, Vec<String>) {
        let mut messages = Vec::new();
        let mut files = Vec::new();
        for (m, f) in std::mem::take(&mut self.released) {
            messages.push(m);
            files.extend(f);
        }
        (messages, files)
    }

    /// Call signals opened by [`Contacts::receive`] (or released once a
    /// contact's missing links arrived), oldest first.
    pub fn take_calls(&mut self) -> Vec<ReceivedCall> {
        std::mem::take(&mut self.calls).into()
    }

    /// Seals call signal `signal` to contact `name`: to its device
    /// `device`, or to every current device (an offer rings them all).
    pub fn seal_call<R: CryptoRng + ?Sized>(
        &mut self,
        keys: &ClientKeys,
        name: &str,
        device: Option<[u8; PUBLIC_KEY_LEN]>,
        signal: &CallSignal,
        sent_at_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SealedMessage>> {
        not_self(name)?;
        self.seal_to(
            keys,
            name,
            device,
            &Content::Call(signal.clone()),
            sent_at_ms,
            rng,
        )
    }

    /// Forgets a held message (after it was released and stored).
    pub fn drop_held(&self, file: &str) -> Result<()> {
        remove_file(&self.data_dir, &self.dir.join(HELD).join(file))
    }

    fn ratchet_decrypt(
        &mut self,
        name: &str,
        cert: &DeviceCert,
        message: &OlmMessage,
    ) -> Result<Vec<u8>> {
        let c = self
            .contacts
            .get_mut(name)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
        let ratchet_error = |why: String| Error::Layer {
            layer: "ratchet",
            why,
        };
        let sessions = c.sessions.entry(cert.device).or_default();
        let mut last_error = None;
        let candidates: Vec<usize> = match message {
            OlmMessage::PreKey(m) => {
                let id = m.session_id();
                if c.fallback_sessions.contains(&id)
                    && !sessions.iter().any(|s| s.session_id() == id)
                {
                    return Err(Error::Replayed);
                }
                sessions
                    .iter()
                    .position(|s| s.session_id() == id)
                    .into_iter()
                    .collect()
            }
            OlmMessage::Normal(_) => (0..sessions.len()).collect(),
        };
        for i in candidates {
            match sessions[i].decrypt(message) {
                Ok(plaintext) => {
                    let s = sessions.remove(i);
                    sessions.insert(0, s);
                    return Ok(plaintext);
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            return Err(match e {
                vodozemac::olm::DecryptionError::MissingMessageKey(_) => Error::Replayed,
                e => ratchet_error(format!(
                    "does not decrypt with any session with {name}: {e}"
                )),
            });
        }
        let OlmMessage::PreKey(m) = message else {
            return Err(ratchet_error(format!(
                "no ratchet session with this device of {name} for this message"
            )));
        };
        let created = self
            .account
            .create_inbound_session(
                SessionConfig::version_1(),
                Curve25519PublicKey::from_bytes(cert.ratchet_identity),
                m,
            )
            .map_err(|e| match e {
                vodozemac::olm::SessionCreationError::MissingOneTimeKey(_) => ratchet_error(
                    "its one-time key is used or unknown: a replayed first message, or a card used twice"
                        .into(),
                ),
                e => ratchet_error(e.to_string()),
            })?;
        self.account_dirty = true;
        let id = created.session.session_id();
        if self
            .own_chain
            .devices()
            .iter()
            .any(|d| d.cert.ratchet_fallback == m.one_time_key().to_bytes())
        {
            // Made with the fallback key, which stays: remember the
            // session so that its first message cannot start it again.
            c.fallback_sessions.push_back(id);
            while c.fallback_sessions.len() > MAX_FALLBACK_SESSIONS {
                c.fallback_sessions.pop_front();
            }
        }
        sessions.insert(0, created.session);
        sessions.truncate(MAX_SESSIONS);
        Ok(created.plaintext)
    }

    fn pending_count(&self) -> usize {
        let dir = self.dir.join(PENDING);
        self.data_dir
            .list_files(&dir, MAX_LISTED)
            .map_or(0, |d| d.len())
            + self.pending.len()
    }

    /// Payloads kept from devices that were not contacts, for another try
    /// (after a card import): (file name, bytes).
    pub fn pending(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.dir.join(PENDING);
        let mut out = Vec::new();
        for name in self.data_dir.list_files(&dir, MAX_LISTED)? {
            if name.ends_with(".tmp") {
                continue;
            }
            let max = crate::message::MAX_SEALED_LEN as u64;
            if let Some(bytes) = self.data_dir.read_bounded(&dir.join(&name), max)? {
                out.push((name, bytes));
            }
        }
        Ok(out)
    }

    /// Opens again the payloads kept from devices that were not contacts
    /// then: returns the messages that now open (as [`crate::InboxMessage`]s
    /// with seq 0) and the pending files they came from, to drop with
    /// [`Contacts::drop_pending`] once the messages are stored.
    pub fn retry_pending(
        &mut self,
        keys: &ClientKeys,
    ) -> Result<(Vec<crate::InboxMessage>, Vec<String>)> {
        let mut messages = Vec::new();
        let mut files = Vec::new();
        for (file, bytes) in self.pending()? {
            let Ok(inner) = envelope::open(keys, &bytes) else {
                continue;
            };
            if !self.knows_ratchet_key(&inner.sender_ratchet_key) {
                continue;
            }
            let before = self.pending.len();
            let message = self.receive(keys, &bytes);
            if self.pending.len() > before {
                // Still not complete: it stays pending.
                self.pending.truncate(before);
                continue;
            }
            if let Some(message) = message {
                messages.push(crate::InboxMessage {
                    seq: 0,
                    received_at_ms: crate::now_ms(),
                    fragments: 0,
                    message,
                });
            }
            files.push(file);
        }
        Ok((messages, files))
    }

    /// Forgets a pending payload (after it was opened and stored).
    pub fn drop_pending(&self, name: &str) -> Result<()> {
        remove_file(&self.data_dir, &self.dir.join(PENDING).join(name))
    }

    /// Whether `ratchet_key` belongs to a device of a contact.
    pub fn knows_ratchet_key(&self, ratchet_key: &[u8; PUBLIC_KEY_LEN]) -> bool {
        self.contacts
            .values()
            .any(|c| c.chain.device_by_ratchet_key(ratchet_key).is_some())
    }
}

/// Two (or more) befriended devices in temporary data dirs, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The mailbox server every test card names.
    pub(crate) const SERVER: bastet_sphinx::NodeId = bastet_sphinx::NodeId([7; 32]);

    /// One device: its data dir, keys and contact book.
    pub(crate) struct Party {
        pub(crate) tmp: tempfile::TempDir,
        pub(crate) dir: DataDir,
        pub(crate) keys: ClientKeys,
        pub(crate) book: Contacts,
    }

    impl Party {
        /// A fresh device with an empty contact book.
        pub(crate) fn new() -> Party {
            let tmp = tempfile::tempdir().unwrap();
            let dir = DataDir::new(tmp.path().join("client"));
            dir.create().unwrap();
            let keys = ClientKeys::generate(&mut rand::rng());
            let book = Contacts::load(&dir, &keys, SERVER).unwrap();
            Party {
                tmp,
                dir,
                keys,
                book,
            }
        }

        /// Saves the book, drops it and the keys, and loads both again
        /// (the keys from their secrets, the book from disk).
        pub(crate) fn restart(&mut self) {
            self.book.save().unwrap();
            self.keys = match self.keys.identity_secret() {
                Some(identity) => ClientKeys::from_secrets(
                    &identity,
                    &self.keys.encryption_secret(),
                    &self.keys.mailbox_secret(),
                    &self.keys.device_secrets(),
                ),
                None => ClientKeys::from_device_secrets(
                    self.keys.identity_public(),
                    &self.keys.encryption_secret(),
                    &self.keys.mailbox_secret(),
                    &self.keys.device_secrets(),
                ),
            };
            self.book = Contacts::load(&self.dir, &self.keys, SERVER).unwrap();
        }

        /// A card of this device (a reply to `for_contact`'s, if given),
        /// text form.
        pub(crate) fn card(&mut self, for_contact: Option<&str>) -> String {
            self.book
                .export_card(&self.keys, "nick", for_contact, 1)
                .unwrap()
                .to_text(&self.keys)
                .unwrap()
        }

        /// Seals `text` to contact `to`, who has one device: the payload.
        pub(crate) fn send(&mut self, to: &str, text: &str) -> Vec<u8> {
            let mut copies = self.send_all(to, text);
            assert_eq!(copies.len(), 1, "{to} has several devices");
            copies.remove(0).payload
        }

        /// Seals `text` to contact `to`: a copy per device.
        pub(crate) fn send_all(&mut self, to: &str, text: &str) -> Vec<SealedMessage> {
            self.book
                .seal_message(
                    &self.keys,
                    to,
                    &Content::Text(text.to_string()),
                    1000,
                    &mut rand::rng(),
                )
                .unwrap()
        }

        /// Opens `payload`; a pending message is an error.
        pub(crate) fn open(&mut self, payload: &[u8]) -> Result<ReceivedMessage> {
            match self.book.open_message(&self.keys, payload)? {
                Opened::Message(m) => Ok(m),
                Opened::Pending(why) => Err(why),
                other => Err(contact_error(format!("not a message: {other:?}"))),
            }
        }

        /// Opens `payload`, which must open: its text.
        pub(crate) fn open_text(&mut self, payload: &[u8]) -> String {
            let m = self.open(payload).unwrap();
            assert!(m.verified);
            assert!(m.rejected.is_none());
            m.text
        }
    }

    /// Card exchange: `a` exports, `b` imports it as `name_of_a` and
    /// answers, `a` imports the answer as `name_of_b`.
    pub(crate) fn befriend(a: &mut Party, name_of_a: &str, b: &mut Party, name_of_b: &str) {
        let card = a.card(None);
        b.book.import_card(&b.keys, &card, name_of_a, 2).unwrap();
        let reply = b.card(Some(name_of_a));
        a.book.import_card(&a.keys, &reply, name_of_b, 3).unwrap();
    }

    /// Alice and Bob, each the other's complete contact ("bob" in Alice's
    /// book, "alice" in Bob's).
    pub(crate) fn pair() -> (Party, Party) {
        let mut alice = Party::new();
        let mut bob = Party::new();
        befriend(&mut alice, "alice", &mut bob, "bob");
        (alice, bob)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Party, befriend, pair};
    use super::*;

    fn rng() -> rand::rngs::ThreadRng {
        rand::rng()
    }

    /// Seals `layer2` (a pre-shared-key layer, genuine or not) from `from`
    /// to contact `to` through the ratchet and the envelope, as
    /// [`Contacts::seal_message`] does.
    pub(super) fn seal_ratchet(from: &mut Party, to: &str, layer2: &[u8]) -> Vec<u8> {
        let ratchet_identity = from.book.account.curve25519_key().to_bytes();
        let c = from.book.contacts.get_mut(to).unwrap();
        let cert = c.card.cert.clone();
        let sessions = c.sessions.entry(cert.device).or_default();
        if sessions.is_empty() {
            let session = from
                .book
                .account
                .create_outbound_session(
                    SessionConfig::version_1(),
                    Curve25519PublicKey::from_bytes(cert.ratchet_identity),
                    Curve25519PublicKey::from_bytes(c.card.one_time_key),
                )
                .unwrap();
            sessions.push(session);
            c.used_their_one_time_key = true;
        }
        let (message_type, message) = sessions[0].encrypt(layer2).unwrap().to_parts();
        let inner = envelope::Inner {
            sender_ratchet_key: ratchet_identity,
            message_type: u8::try_from(message_type).unwrap(),
            message,
        };
        envelope::seal(&cert.envelope, &inner, &mut rng()).unwrap()
    }

    /// Seals `layer1` (a content layer, genuine or not) from `from` to
    /// contact `to` through the genuine pre-shared-key, ratchet and
    /// envelope layers.
    pub(super) fn seal_layers(from: &mut Party, to: &str, layer1: &[u8]) -> Vec<u8> {
        let c = &from.book.contacts[to];
        let layer2 = psk::seal(
            c.psk.as_ref().unwrap(),
            &from.keys.identity_public(),
            &c.card.identity(),
            layer1,
            &mut rng(),
        )
        .unwrap();
        seal_ratchet(from, to, &layer2)
    }

    /// A genuine content layer from `from` to its contact `to`.
    fn content_layer(from: &Party, to: &str, text: &str) -> Vec<u8> {
        content::seal(
            &from.keys,
            &from.book.own_chain.head(),
            &from.book.contacts[to].card.recipient(),
            MessageId([5; 16]),
            &Content::Text(text.to_string()),
            77,
            &mut rng(),
        )
        .unwrap()
    }

    fn is_ratchet_error(e: &Error) -> bool {
        matches!(
            e,
            Error::Layer {
                layer: "ratchet",
                ..
            } | Error::Replayed
        ) && e.to_string().starts_with("ratchet layer")
    }

    #[test]
    fn messages_go_both_ways_with_text_and_files() {
        let (mut alice, mut bob) = pair();
        let payload = alice.send("bob", "hello bob");
        let m = bob.open(&payload).unwrap();
        assert_eq!(m.text, "hello bob");
        assert_eq!(m.contact.as_deref(), Some("alice"));
        assert_eq!(m.from, alice.keys.identity_public());
        assert_eq!(m.sent_at_ms, 1000);
        assert!(m.verified);
        let file = Content::File {
            name: "a.bin".into(),
            bytes: vec![0, 1, 2, 255],
        };
        let sealed = bob
            .book
            .seal_message(&bob.keys, "alice", &file, 5, &mut rng())
            .unwrap()
            .remove(0);
        let m = alice.open(&sealed.payload).unwrap();
        assert_eq!(m.message_id, sealed.message_id);
        assert_eq!(m.contact.as_deref(), Some("bob"));
        let f = m.file.unwrap();
        assert_eq!(
            (f.name.as_str(), f.bytes.as_slice()),
            ("a.bin", &[0, 1, 2, 255][..])
        );
        assert_eq!(bob.open_text(&alice.send("bob", "again")), "again");
        assert_eq!(alice.book.info(&alice.keys, "bob").unwrap().sessions, 1);
        assert_eq!(bob.book.info(&bob.keys, "alice").unwrap().sessions, 1);
    }

    #[test]
    fn any_altered_byte_of_the_sealed_envelope_is_detected() {
        let (mut alice, mut bob) = pair();
        let payload = alice.send("bob", "envelope");
        for i in 0..payload.len() {
            for mask in [0x01u8, 0x80] {
                let mut bad = payload.clone();
                bad[i] ^= mask;
                match bob.open(&bad) {
                    Err(Error::Layer {
                        layer: "sealed envelope",
                        ..
                    }) => {}
                    other => panic!("byte {i} ^ {mask:#x}: {other:?}"),
                }
            }
        }
        assert!(matches!(
            bob.open(&payload[..payload.len() - 1]),
            Err(Error::Layer {
                layer: "sealed envelope",
                ..
            })
        ));
        assert_eq!(bob.open_text(&payload), "envelope");
    }

    /// Every byte of the ratchet message, altered and sealed again in a
    /// fresh envelope: a ratchet-layer error, and the genuine message still
    /// opens afterwards (a failed decryption changes no state).
    fn ratchet_tampering(sender: &mut Party, receiver: &mut Party, payload: &[u8], text: &str) {
        let inner = envelope::open(&receiver.keys, payload).unwrap();
        let to = receiver.keys.encryption_public();
        let reseal = |message: Vec<u8>, message_type: u8| {
            envelope::seal(
                &to,
                &envelope::Inner {
                    sender_ratchet_key: inner.sender_ratchet_key,
                    message_type,
                    message,
                },
                &mut rng(),
            )
            .unwrap()
        };
        for i in 0..inner.message.len() {
            for mask in [0x01u8, 0x80] {
                let mut bad = inner.message.clone();
                bad[i] ^= mask;
                match receiver.open(&reseal(bad, inner.message_type)) {
                    Err(e) if is_ratchet_error(&e) => {}
                    other => panic!("ratchet byte {i} ^ {mask:#x}: {other:?}"),
                }
            }
        }
        for cut in [0, 1, inner.message.len() / 2, inner.message.len() - 1] {
            match receiver.open(&reseal(inner.message[..cut].to_vec(), inner.message_type)) {
                Err(e) if is_ratchet_error(&e) => {}
                other => panic!("ratchet message cut to {cut} bytes: {other:?}"),
            }
        }
        match receiver.open(&reseal(inner.message.clone(), 1 - inner.message_type)) {
            Err(e) if is_ratchet_error(&e) => {}
            other => panic!("ratchet message of the other type: {other:?}"),
        }
        // The genuine message, and the conversation, go on.
        assert_eq!(receiver.open_text(payload), text);
        let _ = sender;
    }

    #[test]
    fn any_altered_byte_of_a_first_ratchet_message_is_detected() {
        let (mut alice, mut bob) = pair();
        let payload = alice.send("bob", "first");
        let inner = envelope::open(&bob.keys, &payload).unwrap();
        assert_eq!(inner.message_type, 0, "a pre-key message");
        ratchet_tampering(&mut alice, &mut bob, &payload, "first");
        let reply = bob.send("alice", "reply");
        assert_eq!(alice.open_text(&reply), "reply");
        assert_eq!(bob.open_text(&alice.send("bob", "more")), "more");
    }

    #[test]
    fn any_altered_byte_of_a_later_ratchet_message_is_detected() {
        let (mut alice, mut bob) = pair();
        assert_eq!(bob.open_text(&alice.send("bob", "first")), "first");
        assert_eq!(alice.open_text(&bob.send("alice", "reply")), "reply");
        let payload = alice.send("bob", "second");
        let inner = envelope::open(&bob.keys, &payload).unwrap();
        assert_eq!(inner.message_type, 1, "a normal message");
        ratchet_tampering(&mut alice, &mut bob, &payload, "second");
        assert_eq!(alice.open_text(&bob.send("alice", "after")), "after");
    }

    #[test]
    fn a_ratchet_message_in_another_encoding_is_refused() {
        let (mut alice, mut bob) = pair();
        let first = alice.send("bob", "first");
        let inner = envelope::open(&bob.keys, &first).unwrap();
        let reseal = |message: Vec<u8>, message_type: u8| {
            envelope::seal(
                &bob.keys.encryption_public(),
                &envelope::Inner {
                    sender_ratchet_key: inner.sender_ratchet_key,
                    message_type,
                    message,
                },
                &mut rng(),
            )
            .unwrap()
        };
        // An unknown protobuf field (7, varint 1) after the pre-key fields.
        let mut longer = inner.message.clone();
        longer.extend_from_slice(&[0x38, 0x01]);
        let extended = reseal(longer, 0);
        match bob.open(&extended) {
            Err(
                e @ Error::Layer {
                    layer: "ratchet", ..
                },
            ) => assert!(e.to_string().contains("canonical"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(bob.open_text(&first), "first");
        assert_eq!(alice.open_text(&bob.send("alice", "reply")), "reply");
        // The same in a normal message, before its 8-byte MAC.
        let second = alice.send("bob", "second");
        let inner = envelope::open(&bob.keys, &second).unwrap();
        assert_eq!(inner.message_type, 1);
        let mut longer = inner.message.clone();
        let at = longer.len() - 8;
        longer.splice(at..at, [0x38, 0x01]);
        let extended = envelope::seal(
            &bob.keys.encryption_public(),
            &envelope::Inner {
                sender_ratchet_key: inner.sender_ratchet_key,
                message_type: 1,
                message: longer,
            },
            &mut rng(),
        )
        .unwrap();
        match bob.open(&extended) {
            Err(e) if is_ratchet_error(&e) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(bob.open_text(&second), "second");
    }

    #[test]
    fn any_altered_byte_of_the_psk_layer_is_detected() {
        let (mut alice, mut bob) = pair();
        let layer1 = content_layer(&alice, "bob", "psk layer");
        let c = &alice.book.contacts["bob"];
        let layer2 = psk::seal(
            c.psk.as_ref().unwrap(),
            &alice.keys.identity_public(),
            &c.card.identity(),
            &layer1,
            &mut rng(),
        )
        .unwrap();
        for i in 0..layer2.len() {
            let mut bad = layer2.clone();
            bad[i] ^= 1 << (i % 8);
            let payload = seal_ratchet(&mut alice, "bob", &bad);
            match bob.open(&payload) {
                Err(Error::PskMismatch(name)) => assert_eq!(name, "alice"),
                other => panic!("psk byte {i}: {other:?}"),
            }
        }
        let payload = seal_ratchet(&mut alice, "bob", &layer2[..psk::OVERHEAD - 1]);
        assert!(matches!(
            bob.open(&payload),
            Err(Error::Layer {
                layer: "pre-shared-key",
                ..
            })
        ));
        let payload = seal_ratchet(&mut alice, "bob", &layer2);
        assert_eq!(bob.open_text(&payload), "psk layer");
        assert_eq!(bob.open_text(&alice.send("bob", "next")), "next");
    }

    #[test]
    fn any_altered_byte_of_the_content_layer_is_detected_through_every_layer() {
        let (mut alice, mut bob) = pair();
        let layer1 = content_layer(&alice, "bob", "content layer");
        // Every byte is checked in layers::content; here every byte of the
        // version and ephemeral key, and one in seven after them.
        let positions = (0..40).chain((40..layer1.len()).step_by(7));
        for i in positions {
            let mut bad = layer1.clone();
            bad[i] ^= 1 << (i % 8);
            let payload = seal_layers(&mut alice, "bob", &bad);
            match bob.open(&payload) {
                Err(Error::Layer {
                    layer: "content", ..
                }) => {}
                other => panic!("content byte {i}: {other:?}"),
            }
        }
        let payload = seal_layers(&mut alice, "bob", &layer1);
        assert_eq!(bob.open_text(&payload), "content layer");
    }

    #[test]
    fn a_wrong_psk_is_rejected() {
        let (mut alice, mut bob) = pair();
        assert_eq!(bob.open_text(&alice.send("bob", "before")), "before");
        let random = Zeroizing::new(crypto::random_bytes::<PSK_LEN, _>(&mut rng()));
        alice
            .book
            .set_passphrase_psk("bob", random, Argon2Params::default())
            .unwrap();
        match bob.open(&alice.send("bob", "wrong key")) {
            Err(Error::PskMismatch(name)) => assert_eq!(name, "alice"),
            other => panic!("{other:?}"),
        }
        // Both set the same passphrase: messages open again.
        let params = Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let ids = (alice.keys.identity_public(), bob.keys.identity_public());
        let key =
            psk::psk_from_passphrase("correct horse battery", &ids.0, &ids.1, params).unwrap();
        alice
            .book
            .set_passphrase_psk("bob", key.clone(), params)
            .unwrap();
        bob.book.set_passphrase_psk("alice", key, params).unwrap();
        assert_eq!(
            bob.open_text(&alice.send("bob", "same passphrase")),
            "same passphrase"
        );
        assert_eq!(
            alice.open_text(&bob.send("alice", "both ways")),
            "both ways"
        );
        let info = bob.book.info(&bob.keys, "alice").unwrap();
        assert_eq!(info.psk_source, "passphrase");
        // One side types another passphrase.
        let other =
            psk::psk_from_passphrase("correct horse battery!", &ids.0, &ids.1, params).unwrap();
        bob.book.set_passphrase_psk("alice", other, params).unwrap();
        assert!(matches!(
            alice.open(&bob.send("alice", "mismatch")),
            Err(Error::PskMismatch(_))
        ));
        // And it survives a restart.
        bob.restart();
        assert!(matches!(
            alice.open(&bob.send("alice", "mismatch")),
            Err(Error::PskMismatch(_))
        ));
    }

    #[test]
    fn a_message_for_bob_does_not_open_for_carol() {
        let (mut alice, mut bob) = pair();
        let mut carol = Party::new();
        befriend(&mut alice, "alice", &mut carol, "carol");
        let payload = alice.send("bob", "for bob only");
        match carol.open(&payload) {
            Err(Error::Layer {
                layer: "sealed envelope",
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let message = carol.book.receive(&carol.keys, &payload).unwrap();
        assert!(message.rejected.is_some() && !message.verified && message.text.is_empty());
        assert_eq!(bob.open_text(&payload), "for bob only");
        // Carol's own messages from alice open.
        assert_eq!(
            carol.open_text(&alice.send("carol", "hi carol")),
            "hi carol"
        );
    }

    #[test]
    fn content_signed_for_someone_else_is_rejected() {
        let (mut alice, mut bob) = pair();
        let carol = Party::new();
        let layer1 = content::seal_signed_for(
            &alice.keys,
            &alice.book.own_chain.head(),
            &alice.book.contacts["bob"].card.recipient(),
            (&carol.keys.identity_public(), &carol.keys.device_public()),
            MessageId([9; 16]),
            &Content::Text("re-addressed".into()),
            1,
            &mut rng(),
        )
        .unwrap();
        let payload = seal_layers(&mut alice, "bob", &layer1);
        match bob.open(&payload) {
            Err(
                e @ Error::Layer {
                    layer: "content", ..
                },
            ) => assert!(e.to_string().contains("signature"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(bob.open_text(&alice.send("bob", "genuine")), "genuine");
    }

    #[test]
    fn content_signed_by_a_key_that_is_not_the_contacts_is_rejected() {
        let (mut alice, mut bob) = pair();
        let mallory = Party::new();
        let recipient = alice.book.contacts["bob"].card.recipient();
        // Mallory's own keys, inside the genuine pair's psk and ratchet.
        let forged = content::seal(
            &mallory.keys,
            &mallory.book.own_chain.head(),
            &recipient,
            MessageId([1; 16]),
            &Content::Text("from mallory".into()),
            1,
            &mut rng(),
        )
        .unwrap();
        let payload = seal_layers(&mut alice, "bob", &forged);
        match bob.open(&payload) {
            Err(Error::NotTheContact(name)) => assert_eq!(name, "alice"),
            other => panic!("{other:?}"),
        }
        // Alice's identity key but Mallory's device key.
        let half = ClientKeys::from_secrets(
            &alice.keys.identity_secret().unwrap(),
            &mallory.keys.encryption_secret(),
            &mallory.keys.mailbox_secret(),
            &mallory.keys.device_secrets(),
        );
        let forged = content::seal(
            &half,
            &alice.book.own_chain.head(),
            &recipient,
            MessageId([2; 16]),
            &Content::Text("from mallory".into()),
            1,
            &mut rng(),
        )
        .unwrap();
        let payload = seal_layers(&mut alice, "bob", &forged);
        assert!(matches!(bob.open(&payload), Err(Error::NotTheContact(_))));
        assert_eq!(bob.open_text(&alice.send("bob", "genuine")), "genuine");
    }

    #[test]
    fn replayed_messages_are_rejected() {
        let (mut alice, mut bob) = pair();
        let first = alice.send("bob", "first");
        let second = alice.send("bob", "second");
        assert_eq!(bob.open_text(&first), "first");
        assert!(
            matches!(bob.open(&first), Err(Error::Replayed)),
            "a replayed pre-key message"
        );
        assert_eq!(bob.open_text(&second), "second");
        assert!(matches!(bob.open(&second), Err(Error::Replayed)));
        assert!(matches!(bob.open(&first), Err(Error::Replayed)));
        let reply = bob.send("alice", "reply");
        assert_eq!(alice.open_text(&reply), "reply");
        assert!(matches!(alice.open(&reply), Err(Error::Replayed)));
        // After a restart.
        bob.restart();
        alice.restart();
        assert!(matches!(bob.open(&first), Err(Error::Replayed)));
        assert!(matches!(bob.open(&second), Err(Error::Replayed)));
        assert!(matches!(alice.open(&reply), Err(Error::Replayed)));
        // After the ratchet turned a few times: still rejected.
        for i in 0..3 {
            let text = format!("turn {i}");
            assert_eq!(bob.open_text(&alice.send("bob", &text)), text);
            assert_eq!(alice.open_text(&bob.send("alice", &text)), text);
        }
        for p in [&first, &second] {
            match bob.open(p) {
                Err(e) if is_ratchet_error(&e) => {}
                other => panic!("{other:?}"),
            }
        }
        match alice.open(&reply) {
            Err(e) if is_ratchet_error(&e) => {}
            other => panic!("{other:?}"),
        }
        let m = bob.book.receive(&bob.keys, &first);
        assert!(m.unwrap().rejected.unwrap().contains("ratchet layer"));
    }

    #[test]
    fn a_replayed_first_message_is_rejected_even_with_a_new_session() {
        // Bob answers alice's first message, then both start over once:
        // the first pre-key message must still not open again.
        let (mut alice, mut bob) = pair();
        let first = alice.send("bob", "first");
        assert_eq!(bob.open_text(&first), "first");
        // Drop Bob's session: the replayed pre-key message then needs the
        // one-time key, which is used up.
        bob.book.contacts.get_mut("alice").unwrap().sessions.clear();
        match bob.open(&first) {
            Err(
                e @ Error::Layer {
                    layer: "ratchet", ..
                },
            ) => assert!(e.to_string().contains("one-time key"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_open_out_of_order() {
        let (mut alice, mut bob) = pair();
        let sent: Vec<Vec<u8>> = (1..=5)
            .map(|i| alice.send("bob", &format!("m{i}")))
            .collect();
        for i in [3, 1, 5, 2, 4] {
            assert_eq!(bob.open_text(&sent[i - 1]), format!("m{i}"));
        }
        for p in &sent {
            assert!(matches!(bob.open(p), Err(Error::Replayed)));
        }
        assert_eq!(alice.open_text(&bob.send("alice", "all five")), "all five");
    }

    #[test]
    fn messages_open_out_of_order_across_ratchet_turns() {
        let (mut alice, mut bob) = pair();
        let mut sent = vec![Vec::new()];
        for i in 1..=3 {
            sent.push(alice.send("bob", &format!("m{i}")));
        }
        assert_eq!(bob.open_text(&sent[2]), "m2");
        let r1 = bob.send("alice", "r1");
        for i in 4..=5 {
            sent.push(alice.send("bob", &format!("m{i}")));
        }
        assert_eq!(alice.open_text(&r1), "r1");
        // Alice's ratchet turned: a new chain.
        for i in 6..=7 {
            sent.push(alice.send("bob", &format!("m{i}")));
        }
        let r2 = bob.send("alice", "r2");
        for i in [7, 1, 5, 3, 6, 4] {
            assert_eq!(bob.open_text(&sent[i]), format!("m{i}"));
        }
        let r3 = bob.send("alice", "r3");
        assert_eq!(alice.open_text(&r3), "r3");
        assert_eq!(alice.open_text(&r2), "r2");
        // And across a restart, out of order again.
        let later: Vec<Vec<u8>> = (8..=10)
            .map(|i| alice.send("bob", &format!("m{i}")))
            .collect();
        bob.restart();
        for i in [10, 8, 9] {
            assert_eq!(bob.open_text(&later[i - 8]), format!("m{i}"));
        }
    }

    #[test]
    fn a_session_survives_a_restart() {
        let (mut alice, mut bob) = pair();
        assert_eq!(bob.open_text(&alice.send("bob", "one")), "one");
        let in_flight = alice.send("bob", "in flight");
        alice.restart();
        bob.restart();
        assert_eq!(bob.open_text(&in_flight), "in flight");
        assert_eq!(alice.open_text(&bob.send("alice", "two")), "two");
        alice.restart();
        bob.restart();
        assert_eq!(bob.open_text(&alice.send("bob", "three")), "three");
        assert_eq!(alice.open_text(&bob.send("alice", "four")), "four");
        assert_eq!(alice.book.info(&alice.keys, "bob").unwrap().sessions, 1);
        assert!(alice.book.info(&alice.keys, "bob").unwrap().complete);
    }

    #[test]
    fn an_open_not_saved_opens_again_after_a_crash() {
        let (mut alice, mut bob) = pair();
        let payload = alice.send("bob", "unsaved");
        assert_eq!(bob.open_text(&payload), "unsaved");
        // Crash: the book is dropped without save().
        bob.book = Contacts::load(&bob.dir, &bob.keys, testing::SERVER).unwrap();
        assert_eq!(bob.open_text(&payload), "unsaved");
        bob.book.save().unwrap();
        bob.book = Contacts::load(&bob.dir, &bob.keys, testing::SERVER).unwrap();
        assert!(matches!(bob.open(&payload), Err(Error::Replayed)));
    }

    /// Every file under `dir`, recursively.
    fn files(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(files(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn earlier_messages_stay_secret_from_the_whole_later_state() {
        const MARKER: &str = "FORWARD-SECRECY-MARKER-7f3a";
        let (mut alice, mut bob) = pair();
        let mut captured = Vec::new();
        for i in 0..2 {
            let p = alice.send("bob", &format!("{MARKER} a{i}"));
            assert_eq!(bob.open_text(&p), format!("{MARKER} a{i}"));
            captured.push((p, "bob"));
            let p = bob.send("alice", &format!("{MARKER} b{i}"));
            assert_eq!(alice.open_text(&p), format!("{MARKER} b{i}"));
            captured.push((p, "alice"));
        }
        // Several more round trips.
        for i in 0..4 {
            assert_eq!(
                bob.open_text(&alice.send("bob", &format!("later a{i}"))),
                format!("later a{i}")
            );
            assert_eq!(
                alice.open_text(&bob.send("alice", &format!("later b{i}"))),
                format!("later b{i}")
            );
        }
        // The whole current state of both: keys and books, from disk.
        alice.restart();
        bob.restart();
        let marker = MARKER.as_bytes();
        for party in [&alice, &bob] {
            for file in files(party.tmp.path()) {
                assert!(
                    !contains(&std::fs::read(&file).unwrap(), marker),
                    "{}",
                    file.display()
                );
            }
        }
        for (payload, to) in &captured {
            for party in [&mut alice, &mut bob] {
                let result = party.book.open_message(&party.keys, payload);
                let shown = format!("{result:?}");
                assert!(!shown.contains(MARKER), "{shown}");
                assert!(!matches!(result, Ok(Opened::Message(_))), "{shown}");
                let received = party.book.receive(&party.keys, payload).unwrap();
                assert!(!format!("{received:?}").contains(MARKER));
                assert!(received.rejected.is_some());
            }
            // Past the API: the envelope opens with the recipient's
            // long-term key, but no ratchet session, nor the account, of
            // either party decrypts the ratchet message.
            let receiver = if *to == "bob" { &mut bob } else { &mut alice };
            let inner = envelope::open(&receiver.keys, payload).unwrap();
            let message =
                OlmMessage::from_parts(usize::from(inner.message_type), &inner.message).unwrap();
            for party in [&mut alice, &mut bob] {
                for c in party.book.contacts.values_mut() {
                    for s in c.sessions.values_mut().flatten() {
                        if let Ok(plain) = s.decrypt(&message) {
                            panic!("a session decrypted an old message ({} bytes)", plain.len());
                        }
                    }
                    if let OlmMessage::PreKey(m) = &message {
                        assert!(
                            party
                                .book
                                .account
                                .create_inbound_session(
                                    SessionConfig::version_1(),
                                    Curve25519PublicKey::from_bytes(c.card.cert.ratchet_identity,),
                                    m,
                                )
                                .is_err()
                        );
                    }
                }
            }
        }
        // The conversation itself goes on.
        assert_eq!(
            bob.open_text(&alice.send("bob", "still here")),
            "still here"
        );
    }

    #[test]
    fn the_psk_layer_alone_keeps_the_content_secret() {
        const MARKER: &str = "PSK-ONLY-MARKER-c01d";
        let (mut alice, mut bob) = pair();
        assert_eq!(bob.open_text(&alice.send("bob", "warm up")), "warm up");
        let payload = alice.send("bob", &format!("{MARKER} secret"));
        // The attacker has every public-key secret of Bob (his keys and his
        // whole contact book, ratchet sessions included) but not the
        // pre-shared key: it is replaced by a random one.
        bob.restart();
        let random = Zeroizing::new(crypto::random_bytes::<PSK_LEN, _>(&mut rng()));
        bob.book
            .set_passphrase_psk("alice", random.clone(), Argon2Params::default())
            .unwrap();
        let result = bob.book.open_message(&bob.keys, &payload);
        let shown = format!("{result:?}");
        assert!(!shown.contains(MARKER), "{shown}");
        match result {
            Err(Error::PskMismatch(name)) => assert_eq!(name, "alice"),
            other => panic!("{other:?}"),
        }
        // Layer by layer: the envelope and the ratchet open with Bob's
        // state, and what they yield shows nothing.
        let inner = envelope::open(&bob.keys, &payload).unwrap();
        let message =
            OlmMessage::from_parts(usize::from(inner.message_type), &inner.message).unwrap();
        assert!(!contains(&inner.message, MARKER.as_bytes()));
        // Bob's state as saved (the failed open above is not).
        bob.book = Contacts::load(&bob.dir, &bob.keys, testing::SERVER).unwrap();
        let cert = bob.book.contacts["alice"].card.cert.clone();
        let layer2 = bob.book.ratchet_decrypt("alice", &cert, &message).unwrap();
        assert!(!contains(&layer2, MARKER.as_bytes()));
        assert!(content::open(&bob.keys, &layer2).is_err());
        assert!(content::open(&bob.keys, &layer2[24..]).is_err());
        let alice_id = alice.keys.identity_public();
        let bob_id = bob.keys.identity_public();
        for key in [random, Zeroizing::new([0u8; PSK_LEN])] {
            match psk::open(&key, &alice_id, &bob_id, &layer2, "alice") {
                Err(Error::PskMismatch(_)) => {}
                other => panic!("{:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn a_reply_card_must_answer_a_card_of_this_device() {
        let mut alice = Party::new();
        let mut bob = Party::new();
        let mut carol = Party::new();
        let card = alice.card(None);
        bob.book.import_card(&bob.keys, &card, "alice", 1).unwrap();
        let reply = bob.card(Some("alice"));
        // Carol never made the card Bob answers.
        match carol.book.import_card(&carol.keys, &reply, "bob", 1) {
            Err(e @ Error::Contact(_)) => assert!(e.to_string().contains("did not make"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Alice's own card, and a name taken twice, are refused.
        assert!(matches!(
            alice.book.import_card(&alice.keys, &card, "me", 1),
            Err(Error::Contact(_))
        ));
        alice
            .book
            .import_card(&alice.keys, &reply, "bob", 1)
            .unwrap();
        assert!(
            alice
                .book
                .import_card(&alice.keys, &carol.card(None), "bob", 1)
                .is_err()
        );
        // The same card twice under another name.
        assert!(
            alice
                .book
                .import_card(&alice.keys, &reply, "bob2", 1)
                .is_err()
        );
        // A bad name.
        assert!(
            alice
                .book
                .import_card(&alice.keys, &carol.card(None), "-x", 1)
                .is_err()
        );
        // A second answer to the same card: refused (a card is for one
        // person).
        let mut dave = Party::new();
        dave.book
            .import_card(&dave.keys, &card, "alice", 1)
            .unwrap();
        let second = dave.card(Some("alice"));
        match alice.book.import_card(&alice.keys, &second, "dave", 1) {
            Err(e @ Error::Contact(_)) => assert!(e.to_string().contains("did not make"), "{e}"),
            other => panic!("{other:?}"),
        }
        // A second answer to a complete contact would change one side only.
        assert!(
            bob.book
                .export_card(&bob.keys, "", Some("alice"), 1)
                .is_err()
        );
        // Both have the same pre-shared key and safety number.
        let a = alice.book.info(&alice.keys, "bob").unwrap();
        let b = bob.book.info(&bob.keys, "alice").unwrap();
        assert!(a.complete && b.complete);
        assert_eq!(a.safety_number, b.safety_number);
        assert_eq!(
            alice.book.contacts["bob"].psk.as_deref(),
            bob.book.contacts["alice"].psk.as_deref()
        );
    }

    #[test]
    fn a_message_before_the_reply_card_waits_until_it_is_imported() {
        let mut alice = Party::new();
        let mut bob = Party::new();
        let card = alice.card(None);
        bob.book.import_card(&bob.keys, &card, "alice", 1).unwrap();
        let reply = bob.card(Some("alice"));
        // Bob writes at once; Alice does not know him yet.
        let early = bob.send("alice", "early");
        match alice.book.open_message(&alice.keys, &early).unwrap() {
            Opened::Pending(Error::UnknownSender(_)) => {}
            other => panic!("{other:?}"),
        }
        alice.book.save().unwrap();
        assert_eq!(alice.book.pending().unwrap().len(), 1);
        alice
            .book
            .import_card(&alice.keys, &reply, "bob", 1)
            .unwrap();
        let (messages, files) = alice.book.retry_pending(&alice.keys).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].message.text, "early");
        assert_eq!(messages[0].message.contact.as_deref(), Some("bob"));
        for f in files {
            alice.book.drop_pending(&f).unwrap();
        }
        assert!(alice.book.pending().unwrap().is_empty());
        assert_eq!(bob.open_text(&alice.send("bob", "got it")), "got it");
    }
}

/// Identities with several devices: fan-out, revocation, withholding and
/// equivocation, between in-process devices.
#[cfg(test)]
mod device_tests {
    use super::testing::{Party, befriend};
    use super::*;

    /// `new` (a fresh device) joins `admin`'s identity as device `name`.
    pub(super) fn join(admin: &mut Party, new: &mut Party, name: &str) {
        let identity = admin.keys.identity_public();
        let (cert, sig) = new
            .book
            .join_request(&new.keys, identity, name, CAP_SEND)
            .unwrap();
        admin.book.add_device(&admin.keys, cert, sig, 10).unwrap();
        let bundle = admin.book.bundle();
        new.book.join(&new.keys, &identity, &bundle, 11).unwrap();
        new.keys = new.dir.join_identity(&new.keys, identity).unwrap();
        assert!(!new.keys.has_identity_key());
    }

    /// Seals `from`'s queued chain traffic; returns the copies for `to`'s
    /// device.
    pub(super) fn chain_traffic_for(from: &mut Party, to: &Party) -> Vec<Vec<u8>> {
        from.book
            .seal_actions(&from.keys, 20, &mut rand::rng())
            .into_iter()
            .filter(|(_, c)| c.device == to.keys.device_public())
            .map(|(_, c)| c.payload)
            .collect()
    }

    /// Delivers `from`'s chain traffic to `to`: the notices it gives.
    pub(super) fn deliver_chain(from: &mut Party, to: &mut Party) -> Vec<ReceivedMessage> {
        let mut notices = Vec::new();
        for payload in chain_traffic_for(from, to) {
            match to.book.open_message(&to.keys, &payload).unwrap() {
                Opened::Chain(n) => notices.extend(n),
                other => panic!("{other:?}"),
            }
        }
        notices
    }

    fn copy_for(copies: &[SealedMessage], party: &Party) -> Vec<u8> {
        copies
            .iter()
            .find(|c| c.device == party.keys.device_public())
            .unwrap()
            .payload
            .clone()
    }

    /// Opens `payload` at `to`, which must be pairing traffic: the
    /// notices.
    fn open_pairing(to: &mut Party, payload: &[u8]) -> Result<Vec<ReceivedMessage>> {
        match to.book.open_message(&to.keys, payload)? {
            Opened::Chain(notices) => Ok(notices),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_device_pairs_with_a_one_time_code() {
        let (mut a1, mut b) = (Party::new(), Party::new());
        befriend(&mut a1, "alice", &mut b, "bob");
        let code = a1
            .book
            .pair_offer(&a1.keys, false, crate::now_ms())
            .unwrap();
        let text = code.to_text();
        let mut a2 = Party::new();
        let old_identity = a2.keys.identity_public();
        a2.book
            .join_start(&a2.keys, &text, "laptop", crate::now_ms())
            .unwrap();
        assert!(a2.book.joining());
        let request = a2.book.take_pairing_outgoing();
        assert_eq!(request.len(), 1);
        assert_eq!(request[0].to.mailbox, a1.keys.mailbox_id());
        // A replay of the request after the code is used is refused.
        let notices = open_pairing(&mut a1, &request[0].payload).unwrap();
        assert!(
            notices[0].text.contains("joined your identity"),
            "{notices:?}"
        );
        assert!(open_pairing(&mut a1, &request[0].payload).is_err());
        let reply = a1.book.take_pairing_outgoing();
        assert_eq!(reply.len(), 1);
        assert_eq!(reply[0].to.mailbox, a2.keys.mailbox_id());
        // The reply opens only at A2.
        assert!(b.book.open_message(&b.keys, &reply[0].payload).is_err());
        open_pairing(&mut a2, &reply[0].payload).unwrap();
        let (identity, bundle) = a2.book.take_join().unwrap();
        assert_eq!(identity, a1.keys.identity_public());
        a2.book
            .join(&a2.keys, &identity, &bundle, crate::now_ms())
            .unwrap();
        a2.keys = a2.dir.join_identity(&a2.keys, identity).unwrap();
        assert!(!a2.book.joining());
        assert_ne!(a2.keys.identity_public(), old_identity);
        assert!(!a2.keys.has_identity_key());
        a2.restart();
        // A2 knows bob, and bob (once the chain reaches him) knows A2.
        deliver_chain(&mut a1, &mut b);
        let m = b.open(&a2.send("bob", "hello from the laptop")).unwrap();
        assert_eq!(m.text, "hello from the laptop");
        assert_eq!(m.from, a1.keys.identity_public());
        let copies = b.send_all("alice", "to both");
        assert_eq!(copies.len(), 2);
        let payload = copy_for(&copies, &a2);
        assert_eq!(a2.open_text(&payload), "to both");
        // A2 (not an admin) makes no codes; a joined device cannot join
        // again.
        assert!(
            a2.book
                .pair_offer(&a2.keys, false, crate::now_ms())
                .is_err()
        );
        let code = a1.book.pair_offer(&a1.keys, true, crate::now_ms()).unwrap();
        assert!(
            a2.book
                .join_start(&a2.keys, &code.to_text(), "x", crate::now_ms())
                .is_err()
        );
        // An expired code is refused by the joining device.
        let mut a3 = Party::new();
        let old = a1.book.pair_offer(&a1.keys, false, 1).unwrap();
        match a3
            .book
            .join_start(&a3.keys, &old.to_text(), "x", crate::now_ms())
        {
            Err(e) => assert!(e.to_string().contains("expired"), "{e}"),
            other => panic!("{other:?}"),
        }
        // A request for an admin code claiming other capabilities: refused
        // with an answer that says so, and the code is used up.
        let text = code.to_text();
        let (cert, sig) = a3
            .book
            .join_request(&a3.keys, code.identity, "x", CAP_SEND)
            .unwrap();
        let reply_to = Address::of_cert(&a3.keys.identity_public(), &cert);
        let forged =
            crate::pairing::seal_request(&code.secret, &reply_to, &cert, &sig, &mut rand::rng())
                .unwrap();
        a3.book
            .queue_pairing(&code.admin, forged, crate::now_ms())
            .unwrap();
        a3.book.pairing.join = Some(PendingJoin {
            identity: hex::encode(code.identity),
            secret: hex::encode(code.secret.as_ref()),
            expires_ms: code.expires_ms,
        });
        let request = a3.book.take_pairing_outgoing();
        match open_pairing(&mut a1, &request[0].payload) {
            Err(e) => assert!(e.to_string().contains("capabilities"), "{e}"),
            other => panic!("{other:?}"),
        }
        let refusal = a1.book.take_pairing_outgoing();
        match open_pairing(&mut a3, &refusal[0].payload) {
            Err(e) => assert!(e.to_string().contains("refused"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(!a3.book.joining());
        assert!(
            a3.book
                .join_start(&a3.keys, &text, "x", crate::now_ms())
                .is_ok(),
            "the joining side cannot know the code is used"
        );
        let again = a3.book.take_pairing_outgoing();
        assert!(open_pairing(&mut a1, &again[0].payload).is_err());
        assert_eq!(a1.book.own_chain().current_devices().count(), 2);
    }

    /// The copies for `from`'s other devices of `text` sent to `to`.
    fn own_copies(from: &mut Party, to: &str, text: &str) -> Vec<SealedMessage> {
        from.book
            .seal_copies(
                &from.keys,
                to,
                &Content::Text(text.into()),
                5,
                &mut rand::rng(),
            )
            .unwrap()
    }

    /// Seals `from`'s queued chain traffic and opens each copy at the
    /// party it is for (among `to`): the notices.
    fn deliver_chain_all(from: &mut Party, to: &mut [&mut Party]) -> Vec<ReceivedMessage> {
        deliver_chain_in_order(from, to, false)
    }

    /// [`deliver_chain_all`], last sent first if `reversed` (the mixnet
    /// does not keep order).
    fn deliver_chain_in_order(
        from: &mut Party,
        to: &mut [&mut Party],
        reversed: bool,
    ) -> Vec<ReceivedMessage> {
        let mut notices = Vec::new();
        let mut sealed = from.book.seal_actions(&from.keys, 20, &mut rand::rng());
        if reversed {
            sealed.reverse();
        }
        for (_, copy) in sealed {
            let Some(p) = to
                .iter_mut()
                .find(|p| p.keys.device_public() == copy.device)
            else {
                continue;
            };
            match p.book.open_message(&p.keys, &copy.payload).unwrap() {
                Opened::Chain(n) => notices.extend(n),
                other => panic!("{other:?}"),
            }
        }
        notices
    }

    #[test]
    fn own_devices_see_what_each_sends_follow_the_chain_and_rekey_after_a_revocation() {
        let (mut a1, mut b) = (Party::new(), Party::new());
        befriend(&mut a1, "alice", &mut b, "bob");
        let (mut a2, mut a3) = (Party::new(), Party::new());
        join(&mut a1, &mut a2, "laptop");
        join(&mut a1, &mut a3, "tablet");
        deliver_chain_all(&mut a1, &mut [&mut b, &mut a2, &mut a3]);
        // A2 joined before A3, and learned of it from A1.
        assert_eq!(a2.book.own_chain().current_devices().count(), 3);
        // What A1 sends to bob, A2 and A3 see as sent.
        let copies = own_copies(&mut a1, "bob", "hi bob");
        assert_eq!(copies.len(), 2);
        for p in [&mut a2, &mut a3] {
            let payload = copy_for(&copies, p);
            let m = p.open(&payload).unwrap();
            assert!(m.outgoing && m.verified, "{m:?}");
            assert_eq!(m.contact.as_deref(), Some("bob"));
            assert_eq!(m.text, "hi bob");
        }
        // A contact cannot pass a message off as alice's own copy.
        let forged = b
            .book
            .seal_to(
                &b.keys,
                "alice",
                None,
                &Content::Copy {
                    to: b.keys.identity_public(),
                    content: Box::new(Content::Text("fake".into())),
                },
                1,
                &mut rand::rng(),
            )
            .unwrap();
        assert!(a1.open(&copy_for(&forged, &a1)).is_err());

        let old_psk = a1.book.contacts["bob"].psk.clone().unwrap();
        let early = b.send_all("alice", "under the old key");
        // A1 revokes the tablet: the chain and fresh secrets go to bob and
        // to A2, never to A3.
        let a3_id = short_id(&a3.keys.device_public());
        a1.book.revoke_device(&a1.keys, &a3_id, "lost", 30).unwrap();
        let before = a3.book.contacts["bob"].psk.clone();
        // The re-keys arrive before the new chain.
        deliver_chain_in_order(&mut a1, &mut [&mut b, &mut a2, &mut a3], true);
        assert_eq!(a3.book.contacts["bob"].psk, before, "A3 learns nothing");
        assert!(
            a2.book
                .own_chain()
                .device(&a3.keys.device_public())
                .unwrap()
                .revoked
                .is_some()
        );
        // Bob now seals under the new key; A1 and A2 take it up on use.
        let new_psk = b.book.contacts["alice"].psk.clone().unwrap();
        assert_ne!(new_psk, old_psk);
        let copies = b.send_all("alice", "under the new key");
        assert_eq!(copies.len(), 2);
        for p in [&mut a1, &mut a2] {
            let payload = copy_for(&copies, p);
            assert_eq!(p.open_text(&payload), "under the new key");
            assert_eq!(p.book.contacts["bob"].psk.as_ref(), Some(&new_psk));
            // A message sealed before the re-key still opens.
            let payload = copy_for(&early, p);
            assert_eq!(p.open_text(&payload), "under the old key");
        }
        // A1's and A2's messages to bob go under the new key.
        assert_eq!(b.open_text(&a1.send("bob", "ok")), "ok");
        assert_eq!(b.open_text(&a2.send("bob", "ok too")), "ok too");
        // The key between alice's own devices was re-keyed as well: A2's
        // copy for A1 opens there, and A1 then uses the new key.
        let copies = own_copies(&mut a2, "bob", "x");
        assert_eq!(copies.len(), 1, "A1 only: A3 is revoked");
        let payload = copy_for(&copies, &a1);
        assert!(a1.open(&payload).unwrap().outgoing);
        assert_eq!(
            a1.book.contacts[SELF].psk, a2.book.contacts[SELF].psk,
            "both on the new own key"
        );
        assert_ne!(a1.book.contacts[SELF].psk, a3.book.contacts[SELF].psk);
        // Everything survives a restart.
        for p in [&mut a1, &mut a2, &mut b] {
            p.restart();
        }
        assert_eq!(
            b.open_text(&a2.send("bob", "after restarts")),
            "after restarts"
        );
    }

    #[test]
    fn hostile_chain_traffic_is_refused() {
        let (mut a1, mut b) = (Party::new(), Party::new());
        befriend(&mut a1, "alice", &mut b, "bob");
        let mut m = Party::new();
        befriend(&mut m, "0mallory", &mut b, "bob");
        let mut a2 = Party::new();
        join(&mut a1, &mut a2, "laptop");
        deliver_chain(&mut a1, &mut b);
        // Mallory certifies a device carrying alice's ratchet key (no proof
        // of it is needed in a certificate): bob refuses the new chain, and
        // alice's messages still reach him as hers.
        let thief = ClientKeys::generate(&mut rand::rng());
        let alice_ratchet = a1.book.own_chain().devices()[0].cert.ratchet_identity;
        let cert = DeviceCert::of(
            &thief,
            alice_ratchet,
            [3; 32],
            testing::SERVER,
            CAP_SEND,
            "x",
        )
        .unwrap();
        let sig = cert
            .back_signature(&thief, &m.keys.identity_public())
            .unwrap();
        m.book.add_device(&m.keys, cert, sig, 5).unwrap();
        for payload in chain_traffic_for(&mut m, &b) {
            match b.book.open_message(&b.keys, &payload) {
                Err(e) => assert!(e.to_string().contains("uses a key of alice"), "{e}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(b.open_text(&a1.send("bob", "still me")), "still me");

        // A claimed head no chain can reach is refused, and blocks nothing.
        let recipient = b.book.own_chain().devices()[0].cert.clone();
        let far = crate::identity::Head {
            seq: 1_000_000,
            hash: [9; 32],
        };
        let layer1 = content::seal(
            &a1.keys,
            &far,
            &Recipient::of_cert(&b.keys.identity_public(), &recipient),
            MessageId([1; 16]),
            &Content::Text("far".into()),
            1,
            &mut rand::rng(),
        )
        .unwrap();
        let payload = super::tests::seal_layers(&mut a1, "bob", &layer1);
        match b.open(&payload) {
            Err(e) => assert!(e.to_string().contains("longer than any"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.book.info(&b.keys, "alice").unwrap().awaiting_links, None);
        assert_eq!(b.open_text(&a1.send("bob", "next")), "next");

        // A re-key for a link that is not a revocation, or far ahead, is
        // ignored: the key stays.
        let before = b.book.contacts["alice"].psk.clone();
        for seq in [1, 1_000] {
            let copies = a1
                .book
                .seal_to(
                    &a1.keys,
                    "bob",
                    None,
                    &Content::Rekey { seq, r: [5; 32] },
                    1,
                    &mut rand::rng(),
                )
                .unwrap();
            assert!(matches!(
                b.book.open_message(&b.keys, &copies[0].payload).unwrap(),
                Opened::Chain(_)
            ));
        }
        assert_eq!(b.book.contacts["alice"].psk, before);
        assert!(b.book.contacts["alice"].deferred_rekey.is_none());

        // A malformed pairing message wipes no code.
        let code = a1
            .book
            .pair_offer(&a1.keys, false, crate::now_ms())
            .unwrap();
        let junk = envelope::seal(
            &a1.keys.encryption_public(),
            &envelope::Inner {
                sender_ratchet_key: [1; 32],
                message_type: crate::pairing::PAIRING_MESSAGE_TYPE,
                message: vec![0; 10],
            },
            &mut rand::rng(),
        )
        .unwrap();
        assert!(a1.book.open_message(&a1.keys, &junk).is_err());
        a1.restart();
        let mut a3 = Party::new();
        a3.book
            .join_start(&a3.keys, &code.to_text(), "tablet", crate::now_ms())
            .unwrap();
        let request = a3.book.take_pairing_outgoing();
        assert!(a1.book.open_message(&a1.keys, &request[0].payload).is_ok());

        // The entry of one's own devices is no contact.
        assert!(matches!(
            b.book.seal_message(
                &b.keys,
                "@self",
                &Content::Text("x".into()),
                1,
                &mut rand::rng()
            ),
            Err(Error::NoSuchContact(_))
        ));
        for request in [
            ContactRequest::Show { name: SELF.into() },
            ContactRequest::Remove { name: SELF.into() },
        ] {
            assert!(matches!(
                a1.book.handle(&a1.keys, request, 1),
                Err(Error::NoSuchContact(_))
            ));
        }
        assert!(a1.book.list(&a1.keys).iter().all(|c| c.name != SELF));
    }

    #[test]
    fn a_contact_reaches_every_device_and_a_revoked_one_is_cut_off() {
        let (mut a1, mut b) = (Party::new(), Party::new());
        befriend(&mut a1, "alice", &mut b, "bob");
        let (mut a2, mut a3) = (Party::new(), Party::new());
        join(&mut a1, &mut a2, "laptop");
        join(&mut a1, &mut a3, "tablet");
        let notices = deliver_chain(&mut a1, &mut b);
        assert!(
            notices
                .iter()
                .any(|n| n.notice && n.text.contains("added device")),
            "{notices:?}"
        );
        let info = b.book.info(&b.keys, "alice").unwrap();
        assert_eq!(info.devices.len(), 3);
        assert_eq!(info.chain_seq, 2);
        assert_eq!(
            info.safety_number,
            a1.book.info(&a1.keys, "bob").unwrap().safety_number
        );

        // B's messages reach all three devices of A.
        let copies = b.send_all("alice", "to all of you");
        assert_eq!(copies.len(), 3);
        for p in [&mut a1, &mut a2, &mut a3] {
            let payload = copy_for(&copies, p);
            assert_eq!(p.open_text(&payload), "to all of you");
        }
        // Each device of A writes as A.
        for p in [&mut a2, &mut a3] {
            let m = b.open(&p.send("bob", "from a device")).unwrap();
            assert_eq!(m.contact.as_deref(), Some("alice"));
            assert_eq!(m.from, a1.keys.identity_public());
            assert!(m.verified);
        }
        // A message of A3 that B has not read yet.
        let early = a3.send("bob", "early");

        // A1 revokes A3; B learns it.
        let a3_id = short_id(&a3.keys.device_public());
        a1.book
            .revoke_device(&a1.keys, &a3_id, "stolen", 30)
            .unwrap();
        let notices = deliver_chain_all(&mut a1, &mut [&mut b, &mut a2]);
        assert!(
            notices
                .iter()
                .any(|n| n.text.contains("revoked device") && n.text.contains("stolen")),
            "{notices:?}"
        );
        // B's next message goes to A1 and A2 only; nothing to A3's mailbox.
        let copies = b.send_all("alice", "after the revocation");
        assert_eq!(copies.len(), 2);
        assert!(copies.iter().all(|c| c.device != a3.keys.device_public()));
        assert!(copies.iter().all(|c| c.to.mailbox != a3.keys.mailbox_id()));
        // A3, with all of its state, opens none of the copies.
        a3.restart();
        for c in &copies {
            assert!(a3.book.open_message(&a3.keys, &c.payload).is_err());
            assert!(
                crate::layers::envelope::open(&a3.keys, &c.payload).is_err(),
                "the envelope is not sealed to A3"
            );
        }
        for p in [&mut a1, &mut a2] {
            let payload = copy_for(&copies, p);
            assert_eq!(p.open_text(&payload), "after the revocation");
        }
        // What A3 sends now is refused, and so is its older message, which
        // claims the older chain head.
        for payload in [a3.send("bob", "still me"), early] {
            match b.open(&payload) {
                Err(e @ Error::RevokedDevice { .. }) => {
                    assert!(e.to_string().contains("revoked device"), "{e}");
                    assert!(e.to_string().contains("stolen"), "{e}");
                }
                other => panic!("{other:?}"),
            }
        }
        // A3 cannot revoke the admin that revoked it, nor add a device.
        let a1_id = short_id(&a1.keys.device_public());
        assert!(a3.book.revoke_device(&a3.keys, &a1_id, "", 40).is_err());
        // A2 (no admin capability) cannot revoke either.
        assert!(a2.book.revoke_device(&a2.keys, &a1_id, "", 40).is_err());
        // Both sides survive restarts.
        b.restart();
        a2.restart();
        let copies = b.send_all("alice", "after restarts");
        assert_eq!(copies.len(), 2);
        let payload = copy_for(&copies, &a2);
        assert_eq!(a2.open_text(&payload), "after restarts");
    }

    #[test]
    fn messages_wait_for_missing_links_and_a_revoked_devices_are_then_refused() {
        let (mut a1, mut b) = (Party::new(), Party::new());
        befriend(&mut a1, "alice", &mut b, "bob");
        let mut a2 = Party::new();
        join(&mut a1, &mut a2, "laptop");
        deliver_chain(&mut a1, &mut b);
        // A1 revokes A2, but the new chain does not reach B.
        let a2_id = short_id(&a2.keys.device_public());
        a1.book.revoke_device(&a1.keys, &a2_id, "lost", 30).unwrap();
        // The new chain and the re-key secret are lost on the way.
        assert_eq!(chain_traffic_for(&mut a1, &b).len(), 2);
        // A1's next message claims the newer head: B holds it.
        let from_a1 = a1.send("bob", "after revoking the laptop");
        assert!(matches!(
            b.book.open_message(&b.keys, &from_a1).unwrap(),
            Opened::Held
        ));
        assert_eq!(
            b.book.info(&b.keys, "alice").unwrap().awaiting_links,
            Some(2)
        );
        // A2's message claims the old head, where A2 is current: held too
        // until B has the missing links.
        let from_a2 = a2.send("bob", "from the lost laptop");
        assert!(matches!(
            b.book.open_message(&b.keys, &from_a2).unwrap(),
            Opened::Held
        ));
        b.book.save().unwrap();
        // B asks A1 (the device that claimed the head) for the links.
        let asks = chain_traffic_for(&mut b, &a1);
        assert_eq!(asks.len(), 1, "one request, not one per held message");
        match a1.book.open_message(&a1.keys, &asks[0]).unwrap() {
            Opened::Chain(notices) => assert!(notices.is_empty()),
            other => panic!("{other:?}"),
        }
        let notices = deliver_chain(&mut a1, &mut b);
        assert!(notices.iter().any(|n| n.text.contains("revoked")));
        // A crash before the released messages were shown: the next start
        // releases them again from their files.
        b.restart();
        let (released, files) = b.book.take_released();
        assert_eq!(released.len(), 2, "{released:?}");
        let kept = released.iter().find(|m| m.rejected.is_none()).unwrap();
        assert_eq!(kept.text, "after revoking the laptop");
        assert!(kept.verified);
        let refused = released.iter().find(|m| m.rejected.is_some()).unwrap();
        assert!(
            refused
                .rejected
                .as_ref()
                .unwrap()
                .contains("revoked device")
        );
        assert!(refused.text.is_empty());
        assert_eq!(files.len(), 2);
        for f in &files {
            b.book.drop_held(f).unwrap();
        }
        assert_eq!(b.book.info(&b.keys, "alice").unwrap().awaiting_links, None);
        assert_eq!(b.book.held_count("alice"), 0);
        // From now on A2 is refused at once.
        assert!(matches!(
            b.open(&a2.send("bob", "again")),
            Err(Error::RevokedDevice { .. })
        ));
        assert_eq!(b.open_text(&a1.send("bob", "normal again")), "normal again");
    }

    #[test]
    fn two_histories_of_one_identity_raise_the_alarm() {
        let (mut a1, mut b) = (Party::new(), Party::new());
        befriend(&mut a1, "alice", &mut b, "bob");
        let mut fork = a1.book.own_chain.clone();
        let mut a2 = Party::new();
        join(&mut a1, &mut a2, "laptop");
        deliver_chain(&mut a1, &mut b);
        // The identity key also signs a different link 1.
        let x = Party::new();
        let (cert, sig) = x
            .book
            .join_request(
                &x.keys,
                a1.keys.identity_public(),
                "x",
                CAP_SEND | CAP_ADMIN,
            )
            .unwrap();
        fork.extend_signed(
            5,
            a1.keys.identity_public(),
            LinkKind::AddDevice {
                cert,
                back_signature: sig,
            },
            &|m| a1.keys.sign_identity(m).unwrap(),
        )
        .unwrap();
        let real = std::mem::replace(&mut a1.book.own_chain, fork);
        a1.book.actions.push(ChainAction::SendLinks {
            contact: "bob".into(),
            device: None,
        });
        let forked = chain_traffic_for(&mut a1, &b);
        match b.book.open_message(&b.keys, &forked[0]) {
            Err(e @ Error::Equivocation(_)) => {
                assert!(e.to_string().contains("EQUIVOCATION ALARM"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let info = b.book.info(&b.keys, "alice").unwrap();
        assert!(info.alarm.is_some());
        let (notices, _) = b.book.take_released();
        assert!(
            notices
                .iter()
                .any(|n| n.notice && n.text.contains("EQUIVOCATION"))
        );
        // The alarm stays across a restart; nothing goes to or comes from
        // the identity until the user resolves it.
        b.restart();
        assert!(b.book.info(&b.keys, "alice").unwrap().alarm.is_some());
        assert!(matches!(
            b.book.seal_message(
                &b.keys,
                "alice",
                &Content::Text("x".into()),
                1,
                &mut rand::rng()
            ),
            Err(Error::Equivocation(_))
        ));
        a1.book.own_chain = real;
        assert!(matches!(
            b.open(&a1.send("bob", "hello")),
            Err(Error::Equivocation(_))
        ));
        // A head that conflicts, inside an ordinary message, raises it too.
        let (mut c1, mut d) = (Party::new(), Party::new());
        befriend(&mut c1, "carol", &mut d, "dave");
        let mut c2 = Party::new();
        join(&mut c1, &mut c2, "laptop");
        let mut fork = c1.book.own_chain.clone();
        let mut c3 = Party::new();
        join(&mut c1, &mut c3, "tablet");
        deliver_chain(&mut c1, &mut d);
        fork.extend_signed(
            5,
            c1.keys.identity_public(),
            LinkKind::RevokeDevice {
                device: c1.keys.device_public(),
                reason: "fork".into(),
            },
            &|m| c1.keys.sign_identity(m).unwrap(),
        )
        .unwrap();
        // C2 was shown the other history; its messages claim its head.
        // The claim alone raises no alarm (any device can write any head):
        // the message is refused and the list asked for; C2's answer, a
        // validly signed second history, raises it.
        c2.book.own_chain = fork;
        match d.open(&c2.send("dave", "x")) {
            Err(e @ Error::Contact(_)) => assert!(e.to_string().contains("differs"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(d.book.info(&d.keys, "carol").unwrap().alarm.is_none());
        let ask = chain_traffic_for(&mut d, &c2);
        assert_eq!(ask.len(), 1);
        assert!(matches!(
            c2.book.open_message(&c2.keys, &ask[0]).unwrap(),
            Opened::Chain(_)
        ));
        let answer = chain_traffic_for(&mut c2, &d);
        assert!(matches!(
            d.book.open_message(&d.keys, &answer[0]),
            Err(Error::Equivocation(_))
        ));
        assert!(d.book.info(&d.keys, "carol").unwrap().alarm.is_some());
    }
}

#[cfg(test)]
mod call_tests {
    use std::time::Duration;

    use super::device_tests::{deliver_chain, join};
    use super::testing::{Party, befriend};
    use super::*;
    use crate::calls::{self, Hangup, HangupReason};

    fn offer() -> CallSignal {
        let now = crate::now_ms() / 1000;
        let (offer, _) = calls::new_offer(
            &mut rand::rng(),
            "normal",
            [9; 32],
            now,
            Duration::from_secs(60),
        )
        .unwrap();
        CallSignal::Offer(offer)
    }

    fn seal(from: &mut Party, to: &str, device: Option<[u8; 32]>, s: &CallSignal) -> Vec<Vec<u8>> {
        from.book
            .seal_call(&from.keys, to, device, s, 1000, &mut rand::rng())
            .unwrap()
            .into_iter()
            .map(|c| c.payload)
            .collect()
    }

    fn open_call(to: &mut Party, payload: &[u8]) -> ReceivedCall {
        match to.book.open_message(&to.keys, payload).unwrap() {
            Opened::Call(call) => *call,
            other => panic!("not a call signal: {other:?}"),
        }
    }

    #[test]
    fn call_signals_open_as_calls_and_a_revoked_devices_are_refused() {
        let (mut a1, mut b) = (Party::new(), Party::new());
        befriend(&mut a1, "alice", &mut b, "bob");
        let mut a2 = Party::new();
        join(&mut a1, &mut a2, "laptop");
        deliver_chain(&mut a1, &mut b);
        let alice = a1.keys.identity_public();

        // An offer sealed by A1's device opens at B as a call signal from
        // Alice's identity and that device, not as a message.
        let signal = offer();
        let payloads = seal(&mut a1, "bob", None, &signal);
        assert_eq!(payloads.len(), 1);
        let call = open_call(&mut b, &payloads[0]);
        assert_eq!(call.contact, "alice");
        assert_eq!(call.identity, alice);
        assert_eq!(call.device, a1.keys.device_public());
        assert_eq!(call.signal, signal);
        assert!(call.received_at_ms > 0);

        // Through `receive`: nothing for the inbox; kept for take_calls.
        let payloads = seal(&mut a2, "bob", None, &signal);
        assert!(b.book.receive(&b.keys, &payloads[0]).is_none());
        let calls = b.book.take_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].identity, alice);
        assert_eq!(calls[0].device, a2.keys.device_public());
        assert!(b.book.take_calls().is_empty());

        // An offer rings every device of the callee; an answer goes to one.
        let to_all = seal(&mut b, "alice", None, &signal);
        assert_eq!(to_all.len(), 2);
        let hangup = CallSignal::Hangup(Hangup {
            call_id: signal.call_id(),
            reason: HangupReason::Declined,
        });
        let to_one = seal(&mut b, "alice", Some(a1.keys.device_public()), &hangup);
        assert_eq!(to_one.len(), 1);
        let call = open_call(&mut a1, &to_one[0]);
        assert_eq!(call.contact, "bob");
        assert_eq!(call.device, b.keys.device_public());
        assert_eq!(call.signal, hangup);
        assert!(
            b.book
                .seal_call(&b.keys, SELF, None, &hangup, 1, &mut rand::rng())
                .is_err()
        );

        // A1 revokes A2 and B learns it: A2's offers are refused.
        let a2_id = short_id(&a2.keys.device_public());
        a1.book
            .revoke_device(&a1.keys, &a2_id, "stolen", 30)
            .unwrap();
        deliver_chain(&mut a1, &mut b);
        let payloads = seal(&mut a2, "bob", None, &offer());
        match b.book.open_message(&b.keys, &payloads[0]) {
            Err(e @ Error::RevokedDevice { .. }) => assert!(e.to_string().contains("stolen")),
            other => panic!("{other:?}"),
        }
        let payloads = seal(&mut a2, "bob", None, &offer());
        let shown = b.book.receive(&b.keys, &payloads[0]).unwrap();
        assert!(shown.rejected.unwrap().contains("revoked device"));
        assert!(b.book.take_calls().is_empty());
        // A1 still calls.
        let payloads = seal(&mut a1, "bob", None, &signal);
        assert_eq!(
            open_call(&mut b, &payloads[0]).device,
            a1.keys.device_public()
        );
    }

    #[test]
    fn call_signals_wait_for_missing_links_like_messages() {
        let (mut a1, mut b) = (Party::new(), Party::new());
        befriend(&mut a1, "alice", &mut b, "bob");
        let mut a2 = Party::new();
        join(&mut a1, &mut a2, "laptop");
        deliver_chain(&mut a1, &mut b);
        // A1 revokes A2; the new chain does not reach B yet.
        let a2_id = short_id(&a2.keys.device_public());
        a1.book.revoke_device(&a1.keys, &a2_id, "lost", 30).unwrap();
        let links = super::device_tests::chain_traffic_for(&mut a1, &b);
        // A1's offer claims the newer head: held; so is A2's.
        let from_a1 = seal(&mut a1, "bob", None, &offer());
        let from_a2 = seal(&mut a2, "bob", None, &offer());
        for p in [&from_a1[0], &from_a2[0]] {
            assert!(matches!(
                b.book.open_message(&b.keys, p).unwrap(),
                Opened::Held
            ));
        }
        assert!(b.book.take_calls().is_empty());
        // The links arrive: A1's offer is released, A2's refused.
        for p in links {
            assert!(matches!(
                b.book.open_message(&b.keys, &p).unwrap(),
                Opened::Chain(_)
            ));
        }
        let calls = b.book.take_calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].device, a1.keys.device_public());
        assert!(b.book.held_calls.is_empty());
    }
}
