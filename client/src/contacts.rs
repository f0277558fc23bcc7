//! The contact book and the ratchet: contacts (their cards, the pair's
//! pre-shared key, the Olm sessions with them), the cards this device made,
//! and this device's Olm account. Seals and opens whole messages through
//! the four end-to-end layers (see [`crate::layers`]).
//!
//! On disk, under `DATA_DIR/contacts/` (files mode 0600, written
//! atomically): `account` (the Olm account, a vodozemac pickle encrypted
//! with a key derived from the device key), `<name>.json` per contact (its
//! sessions pickled and encrypted the same way), `exports/<card id>.json`
//! per card made (its half of the pre-shared key), and `pending/` for
//! messages from devices that are not contacts yet. One process changes
//! these at a time: the holder of the data dir's outbox lock (the daemon,
//! or a command run without one).

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};
use zeroize::Zeroizing;

use crate::card::{CARD_ID_LEN, Card, MAX_NICKNAME_LEN, safety_number};
use crate::crypto::{self, ClientKeys, PUBLIC_KEY_LEN};
use crate::layers::psk::{self, Argon2Params, PSK_LEN};
use crate::layers::{content, envelope};
use crate::message::{Content, MessageId, ReceivedFile, ReceivedMessage, SealedMessage};
use crate::{Address, DataDir, Error, Result};

const CONTACTS: &str = "contacts";
const ACCOUNT: &str = "account";
const EXPORTS: &str = "exports";
const PENDING: &str = "pending";
const PICKLE_CONTEXT: &str = "bastet 2026 olm pickle key v1";
/// Most contacts in one book.
pub const MAX_CONTACTS: usize = 1000;
/// Most cards remembered (each holds its half of a pre-shared key until a
/// reply arrives).
pub const MAX_EXPORTS: usize = 1000;
/// Ratchet sessions kept per contact (both people may start one at once;
/// older ones are dropped).
pub const MAX_SESSIONS: usize = 4;
/// Messages from unknown devices kept for when their card is imported.
pub const MAX_PENDING: usize = 256;
/// Longest contact file (sessions hold skipped message keys).
const MAX_CONTACT_FILE: u64 = 1 << 20;
const MAX_ACCOUNT_FILE: u64 = 1 << 20;
const MAX_EXPORT_FILE: u64 = 4096;
/// Longest contact name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
const CONTACT_VERSION: u32 = 1;

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
    added_at_ms: u64,
    /// Our half of the pre-shared key (hex), once they have our card.
    my_secret: Option<String>,
    /// The pre-shared key in force (hex), once both halves are known.
    psk: Option<String>,
    psk_source: PskSource,
    argon2: Option<Argon2Params>,
    /// Olm sessions, newest use first, each a vodozemac pickle encrypted
    /// with the device's storage key.
    sessions: Vec<String>,
    /// Whether a one-time key of their card was used for a session already.
    used_their_one_time_key: bool,
}

/// A contact in memory.
struct Contact {
    name: String,
    card: Card,
    card_text: String,
    added_at_ms: u64,
    my_secret: Option<Zeroizing<[u8; PSK_LEN]>>,
    psk: Option<Zeroizing<[u8; PSK_LEN]>>,
    psk_source: PskSource,
    argon2: Option<Argon2Params>,
    sessions: Vec<Session>,
    used_their_one_time_key: bool,
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
    /// Their mailbox server (node id hex).
    pub mailbox_server: String,
    /// Ratchet sessions held with them.
    pub sessions: usize,
    /// When the contact was added (unix ms).
    pub added_at_ms: u64,
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
    /// Done.
    Done {},
}

/// The contact book of one device.
pub struct Contacts {
    dir: PathBuf,
    data_dir: DataDir,
    pickle_key: Zeroizing<[u8; 32]>,
    account: Account,
    contacts: BTreeMap<String, Contact>,
    /// Contacts whose state changed since the last [`Contacts::save`].
    dirty: Vec<String>,
    account_dirty: bool,
    pending: Vec<(String, Vec<u8>)>,
}

/// A message decrypted by [`Contacts::open`], or why it was rejected.
#[derive(Debug)]
pub enum Opened {
    /// Every layer opened and the sender is a contact.
    Message(ReceivedMessage),
    /// From a device that is not a contact yet: kept under `pending/`.
    Pending(Error),
}

fn contact_error(why: impl Into<String>) -> Error {
    Error::Contact(why.into())
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

impl Contacts {
    /// Opens (creating on first use) the contact book of `data_dir`.
    /// The caller holds the outbox lock.
    pub fn load(data_dir: &DataDir, keys: &ClientKeys) -> Result<Contacts> {
        let dir = data_dir.path().join(CONTACTS);
        for sub in [dir.clone(), dir.join(EXPORTS), dir.join(PENDING)] {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&sub)
                .map_err(|e| data_dir.file_error(&sub, e))?;
        }
        let pickle_key = keys.storage_key(PICKLE_CONTEXT);
        let account_path = dir.join(ACCOUNT);
        let (account, account_dirty) =
            match data_dir.read_bounded(&account_path, MAX_ACCOUNT_FILE)? {
                Some(bytes) => {
                    let text = String::from_utf8(bytes)
                        .map_err(|_| contact_error("the ratchet account file is corrupt"))?;
                    let pickle = AccountPickle::from_encrypted(text.trim(), &pickle_key)
                        .map_err(|e| {
                            contact_error(format!(
                                "the ratchet account does not decrypt with this device's key: {e}"
                            ))
                        })?;
                    (Account::from_pickle(pickle), false)
                }
                None => (Account::new(), true),
            };
        let mut book = Contacts {
            dir,
            data_dir: data_dir.clone(),
            pickle_key,
            account,
            contacts: BTreeMap::new(),
            dirty: Vec::new(),
            account_dirty,
            pending: Vec::new(),
        };
        book.load_contacts()?;
        book.save()?;
        Ok(book)
    }

    fn load_contacts(&mut self) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| self.data_dir.file_error(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.data_dir.file_error(&self.dir, e))?;
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if check_name(name).is_err() {
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
            let file: ContactFile =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            if file.version != CONTACT_VERSION || file.name != name {
                return Err(corrupt("unknown version, or a name that is not its file's".into()));
            }
            let card = Card::parse(&file.card)?;
            let mut sessions = Vec::with_capacity(file.sessions.len());
            for s in &file.sessions {
                let pickle = SessionPickle::from_encrypted(s, &self.pickle_key)
                    .map_err(|e| corrupt(format!("a ratchet session does not decrypt: {e}")))?;
                sessions.push(Session::from_pickle(pickle));
            }
            let contact = Contact {
                name: file.name.clone(),
                card,
                card_text: file.card,
                added_at_ms: file.added_at_ms,
                my_secret: file.my_secret.as_deref().map(|s| hex32(s, "my_secret")).transpose()?,
                psk: file.psk.as_deref().map(|s| hex32(s, "psk")).transpose()?,
                psk_source: file.psk_source,
                argon2: file.argon2,
                sessions,
                used_their_one_time_key: file.used_their_one_time_key,
            };
            self.contacts.insert(file.name, contact);
        }
        Ok(())
    }

    /// Writes every changed contact and the account (before anything that
    /// depends on them leaves the process: a ratchet key is never reused).
    pub fn save(&mut self) -> Result<()> {
        if self.account_dirty {
            let text = self.account.pickle().encrypt(&self.pickle_key);
            self.data_dir
                .write_atomic(&self.dir.join(ACCOUNT), text.as_bytes())?;
            self.account_dirty = false;
        }
        let dirty = std::mem::take(&mut self.dirty);
        for name in dirty {
            let path = self.dir.join(format!("{name}.json"));
            let Some(c) = self.contacts.get(&name) else {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.data_dir.file_error(&path, e)),
                }
                continue;
            };
            let file = ContactFile {
                version: CONTACT_VERSION,
                name: c.name.clone(),
                card: c.card_text.clone(),
                added_at_ms: c.added_at_ms,
                my_secret: c.my_secret.as_ref().map(|s| hex::encode(s.as_ref())),
                psk: c.psk.as_ref().map(|s| hex::encode(s.as_ref())),
                psk_source: c.psk_source,
                argon2: c.argon2,
                sessions: c
                    .sessions
                    .iter()
                    .map(|s| s.pickle().encrypt(&self.pickle_key))
                    .collect(),
                used_their_one_time_key: c.used_their_one_time_key,
            };
            let json = Zeroizing::new(
                serde_json::to_vec_pretty(&file).map_err(|e| contact_error(e.to_string()))?,
            );
            self.data_dir.write_atomic(&path, &json)?;
        }
        let pending = std::mem::take(&mut self.pending);
        for (name, bytes) in pending {
            self.data_dir
                .write_atomic(&self.dir.join(PENDING).join(name), &bytes)?;
        }
        Ok(())
    }

    fn mark(&mut self, name: &str) {
        if !self.dirty.iter().any(|n| n == name) {
            self.dirty.push(name.to_string());
        }
    }

    /// Makes a contact card for this device: a fresh ratchet one-time key
    /// and a fresh half of the pre-shared key. With `for_contact`, the card
    /// answers that contact's card and completes the contact here.
    pub fn export_card(
        &mut self,
        keys: &ClientKeys,
        mailbox_server: bastet_sphinx::NodeId,
        nickname: &str,
        for_contact: Option<&str>,
        now_ms: u64,
    ) -> Result<Card> {
        if nickname.len() > MAX_NICKNAME_LEN {
            return Err(contact_error(format!(
                "the nickname is longer than {MAX_NICKNAME_LEN} bytes"
            )));
        }
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
            identity: keys.identity_public(),
            device: keys.device_public(),
            content: keys.content_public(),
            kem: Box::new(keys.kem_public()),
            envelope: keys.encryption_public(),
            ratchet_identity: self.account.curve25519_key().to_bytes(),
            one_time_key: one_time_key.to_bytes(),
            mailbox_server,
            mailbox: keys.mailbox_id(),
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
            &self.dir.join(EXPORTS).join(format!("{}.json", export.card_id)),
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
        Ok(std::fs::read_dir(&dir)
            .map_err(|e| self.data_dir.file_error(&dir, e))?
            .count())
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
        if card.identity == keys.identity_public() {
            return Err(contact_error("this is your own card"));
        }
        if self.contacts.contains_key(name) {
            return Err(contact_error(format!(
                "a contact named {name} exists already: choose another name, or `bastet contact remove {name}` first"
            )));
        }
        if let Some(other) = self
            .contacts
            .values()
            .find(|c| c.card.identity == card.identity || c.card.ratchet_identity == card.ratchet_identity)
        {
            return Err(contact_error(format!(
                "this card's identity is your contact {} already: remove it first to replace it",
                other.name
            )));
        }
        if self.contacts.len() >= MAX_CONTACTS {
            return Err(contact_error(format!("{MAX_CONTACTS} contacts already")));
        }
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
        let contact = Contact {
            name: name.to_string(),
            card_text: crate::card::normalize(card_text),
            card,
            added_at_ms: now_ms,
            my_secret,
            psk,
            psk_source: PskSource::Cards,
            argon2: None,
            sessions: Vec::new(),
            used_their_one_time_key: false,
        };
        self.contacts.insert(name.to_string(), contact);
        self.mark(name);
        self.save()?;
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
        c.psk_source = PskSource::Passphrase;
        c.argon2 = Some(params);
        self.mark(name);
        self.save()
    }

    /// Carries out `request`. `mailbox_server` is this device's (for cards).
    pub fn handle(
        &mut self,
        keys: &ClientKeys,
        mailbox_server: bastet_sphinx::NodeId,
        request: ContactRequest,
        now_ms: u64,
    ) -> Result<ContactResponse> {
        Ok(match request {
            ContactRequest::Export {
                for_contact,
                nickname,
            } => {
                let card = self.export_card(
                    keys,
                    mailbox_server,
                    &nickname,
                    for_contact.as_deref(),
                    now_ms,
                )?;
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
        })
    }

    /// The identity key of contact `name`.
    pub fn identity_of(&self, name: &str) -> Result<[u8; PUBLIC_KEY_LEN]> {
        self.contacts
            .get(name)
            .map(|c| c.card.identity)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))
    }

    /// Removes contact `name` (its sessions and pre-shared key are gone).
    pub fn remove(&mut self, name: &str) -> Result<()> {
        self.contacts
            .remove(name)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
        self.mark(name);
        self.save()
    }

    /// Every contact, by name.
    pub fn list(&self, keys: &ClientKeys) -> Vec<ContactInfo> {
        self.contacts
            .keys()
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
            identity: hex::encode(c.card.identity),
            safety_number: safety_number(&keys.identity_public(), &c.card.identity),
            complete: c.psk.is_some(),
            psk_source: if c.psk.is_some() {
                match c.psk_source {
                    PskSource::Cards => "cards".into(),
                    PskSource::Passphrase => "passphrase".into(),
                }
            } else {
                String::new()
            },
            mailbox_server: c.card.mailbox_server.to_hex(),
            sessions: c.sessions.len(),
            added_at_ms: c.added_at_ms,
        })
    }

    /// Where messages to `name` go, checking that they can be sent.
    pub fn address_of(&self, name: &str) -> Result<Address> {
        let c = self
            .contacts
            .get(name)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
        if c.psk.is_none() {
            return Err(contact_error(format!(
                "{name} does not have your card yet: run `bastet contact export --for {name} --out FILE` and give them FILE"
            )));
        }
        Ok(c.card.address())
    }

    /// Seals `content` to contact `name` through all four layers. The
    /// ratchet state is saved before this returns.
    pub fn seal_message<R: CryptoRng + ?Sized>(
        &mut self,
        keys: &ClientKeys,
        name: &str,
        content: &Content,
        sent_at_ms: u64,
        rng: &mut R,
    ) -> Result<SealedMessage> {
        content.check()?;
        let ratchet_identity = self.account.curve25519_key().to_bytes();
        let c = self
            .contacts
            .get_mut(name)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
        let psk = c.psk.clone().ok_or_else(|| {
            contact_error(format!(
                "{name} does not have your card yet: run `bastet contact export --for {name} --out FILE` and give them FILE"
            ))
        })?;
        let message_id = MessageId(crypto::random_bytes(rng));
        let layer1 = content::seal(keys, &c.card.recipient(), message_id, content, sent_at_ms, rng)?;
        let layer2 = psk::seal(&psk, &keys.identity_public(), &c.card.identity, &layer1, rng)?;
        if c.sessions.is_empty() {
            if c.used_their_one_time_key {
                return Err(contact_error(format!(
                    "no ratchet session with {name} and the one-time key of their card is used: ask them for a fresh card"
                )));
            }
            let session = self
                .account
                .create_outbound_session(
                    SessionConfig::version_1(),
                    Curve25519PublicKey::from_bytes(c.card.ratchet_identity),
                    Curve25519PublicKey::from_bytes(c.card.one_time_key),
                )
                .map_err(|e| contact_error(format!("cannot start a ratchet session with {name}: {e}")))?;
            c.sessions.push(session);
            c.used_their_one_time_key = true;
        }
        let message = c.sessions[0]
            .encrypt(&layer2)
            .map_err(|e| Error::Layer {
                layer: "ratchet",
                why: e.to_string(),
            })?;
        let (message_type, message) = message.to_parts();
        let inner = envelope::Inner {
            sender_ratchet_key: ratchet_identity,
            message_type: u8::try_from(message_type).unwrap_or(u8::MAX),
            message,
        };
        let payload = envelope::seal(&c.card.envelope, &inner, rng)?;
        self.mark(name);
        self.save()?;
        Ok(SealedMessage {
            message_id,
            sent_at_ms,
            payload,
        })
    }

    /// [`Contacts::open_message`], with every failure made a rejected
    /// message to show (nothing is dropped silently).
    pub fn receive(&mut self, keys: &ClientKeys, payload: &[u8]) -> ReceivedMessage {
        match self.open_message(keys, payload) {
            Ok(Opened::Message(m)) => m,
            Ok(Opened::Pending(why)) | Err(why) => ReceivedMessage::rejected(payload, None, &why),
        }
    }

    /// Opens a payload through all four layers. The ratchet state changes
    /// in memory only: call [`Contacts::save`] once what was opened is
    /// safely stored (a crash before that decrypts it again).
    pub fn open_message(&mut self, keys: &ClientKeys, payload: &[u8]) -> Result<Opened> {
        let inner = envelope::open(keys, payload)?;
        let message = parse_ratchet_message(inner.message_type, &inner.message)?;
        let known = self
            .contacts
            .values()
            .find(|c| c.card.ratchet_identity == inner.sender_ratchet_key)
            .map(|c| (c.name.clone(), c.psk.is_some()));
        let name = match known {
            Some((name, true)) => name,
            other => {
                // Not opened further: the ratchet is left untouched, so the
                // message opens once the contact is complete.
                let why = match other {
                    Some((name, _)) => contact_error(format!(
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
        let layer2 = self.ratchet_decrypt(&name, &message)?;
        self.mark(&name);
        let c = self
            .contacts
            .get(&name)
            .ok_or_else(|| Error::NoSuchContact(name.clone()))?;
        let psk = c
            .psk
            .as_ref()
            .ok_or_else(|| contact_error(format!("{name} has no pre-shared key")))?;
        let layer1 = psk::open(psk, &c.card.identity, &keys.identity_public(), &layer2, &name)?;
        let opened = content::open(keys, &layer1)?;
        if opened.sender_identity != c.card.identity || opened.sender_device != c.card.device {
            return Err(Error::NotTheContact(name));
        }
        if !opened.signature_ok {
            return Err(Error::Layer {
                layer: "content",
                why: format!("the signature by {name}'s device does not verify; rejected"),
            });
        }
        let (text, file) = match opened.content {
            Content::Text(t) => (t, None),
            Content::File { name, bytes } => (String::new(), Some(ReceivedFile { name, bytes })),
        };
        Ok(Opened::Message(ReceivedMessage {
            message_id: opened.message_id,
            sent_at_ms: opened.sent_at_ms,
            from: opened.sender_identity,
            contact: Some(name),
            verified: true,
            text,
            file,
            rejected: None,
        }))
    }

    fn ratchet_decrypt(&mut self, name: &str, message: &OlmMessage) -> Result<Vec<u8>> {
        let c = self
            .contacts
            .get_mut(name)
            .ok_or_else(|| Error::NoSuchContact(name.to_string()))?;
        let ratchet_error = |why: String| Error::Layer {
            layer: "ratchet",
            why,
        };
        let mut last_error = None;
        let candidates: Vec<usize> = match message {
            OlmMessage::PreKey(m) => {
                let id = m.session_id();
                c.sessions
                    .iter()
                    .position(|s| s.session_id() == id)
                    .into_iter()
                    .collect()
            }
            OlmMessage::Normal(_) => (0..c.sessions.len()).collect(),
        };
        for i in candidates {
            match c.sessions[i].decrypt(message) {
                Ok(plaintext) => {
                    let s = c.sessions.remove(i);
                    c.sessions.insert(0, s);
                    return Ok(plaintext);
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            return Err(match e {
                vodozemac::olm::DecryptionError::MissingMessageKey(_) => Error::Replayed,
                e => ratchet_error(format!("does not decrypt with any session with {name}: {e}")),
            });
        }
        let OlmMessage::PreKey(m) = message else {
            return Err(ratchet_error(format!(
                "no ratchet session with {name} for this message"
            )));
        };
        let created = self
            .account
            .create_inbound_session(
                SessionConfig::version_1(),
                Curve25519PublicKey::from_bytes(c.card.ratchet_identity),
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
        c.sessions.insert(0, created.session);
        c.sessions.truncate(MAX_SESSIONS);
        Ok(created.plaintext)
    }

    fn pending_count(&self) -> usize {
        let dir = self.dir.join(PENDING);
        std::fs::read_dir(&dir).map_or(0, |d| d.count()) + self.pending.len()
    }

    /// Payloads kept from devices that were not contacts, for another try
    /// (after a card import): (file name, bytes).
    pub fn pending(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.dir.join(PENDING);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| self.data_dir.file_error(&dir, e))? {
            let entry = entry.map_err(|e| self.data_dir.file_error(&dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".tmp") {
                continue;
            }
            let max = crate::message::MAX_SEALED_LEN as u64;
            if let Some(bytes) = self.data_dir.read_bounded(&entry.path(), max)? {
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
            messages.push(crate::InboxMessage {
                seq: 0,
                received_at_ms: crate::now_ms(),
                fragments: 0,
                message,
            });
            files.push(file);
        }
        Ok((messages, files))
    }

    /// Forgets a pending payload (after it was opened and stored).
    pub fn drop_pending(&self, name: &str) -> Result<()> {
        let path = self.dir.join(PENDING).join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.data_dir.file_error(&path, e)),
        }
    }

    /// Whether `ratchet_key` belongs to a contact.
    pub fn knows_ratchet_key(&self, ratchet_key: &[u8; PUBLIC_KEY_LEN]) -> bool {
        self.contacts
            .values()
            .any(|c| &c.card.ratchet_identity == ratchet_key)
    }
}
