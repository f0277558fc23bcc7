//! Identities with several devices: device certificates and the identity
//! chain (DESIGN.md §8).
//!
//! An identity is an Ed25519 key. Its **chain** is an append-only,
//! hash-linked log of signed links; folding it from the first link gives the
//! identity's devices, their keys, their capabilities and which are
//! revoked. Every message carries the sender's chain head (sequence number
//! and hash) inside its encryption, so a contact learns when it is behind.
//!
//! Rules a chain must follow (each checked by [`Chain::append`]):
//!
//! - link 0 is signed by the identity key, has an all-zero previous hash,
//!   and adds the first device;
//! - link *n* has sequence number *n* and the previous link's hash;
//! - a link is signed by the identity key or by a device that is current
//!   (added, not revoked) and has the [`CAP_ADMIN`] capability; a device
//!   may also change its own mailbox;
//! - an added device is new (never in the chain before), and its
//!   certificate carries the device's own signature over the identity key
//!   and the certificate (the back-signature: the device agreed to belong
//!   to this identity, and holds its key);
//! - a revoked device is current at the time; once revoked it stays
//!   revoked, its signatures count for nothing, and nothing can revoke the
//!   identity key itself;
//! - at most [`MAX_LINKS`] links and [`MAX_DEVICES`] current devices.
//!
//! Link wire form (version 1): `"BSTL" || version (1) || seq (u64 BE) ||
//! previous hash (32) || time_ms (u64 BE) || signer key (32) || kind (1) ||
//! body length (u16 BE) || body || Ed25519 signature (64)`, signed by the
//! signer over `"bastet 2026 identity link v1" || identity key ||`
//! everything before the signature. A link's hash is BLAKE3 (derive-key
//! context `"bastet 2026 identity link hash v1"`) over its whole encoding.
//!
//! Bodies: add device = certificate (see [`DeviceCert::to_bytes`]) ||
//! back-signature (64); revoke = device key (32) || reason length (1) ||
//! reason (UTF-8); change mailbox = device key (32) || envelope X25519 key
//! (32) || mailbox server (32) || mailbox id (32).
//!
//! A whole chain travels as `link count (u16 BE)` followed by each link as
//! `length (u16 BE) || link`.

use std::fmt;

use bastet_sphinx::{MailboxId, NodeId};

use crate::crypto::{self, KEM_PUBLIC_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::{Error, Result};

/// May send messages as the identity.
pub const CAP_SEND: u8 = 0b01;
/// May add and revoke devices (sign links).
pub const CAP_ADMIN: u8 = 0b10;
const KNOWN_CAPS: u8 = CAP_SEND | CAP_ADMIN;
/// Most links in one chain.
pub const MAX_LINKS: usize = 256;
/// Most current (not revoked) devices of one identity.
pub const MAX_DEVICES: usize = 16;
/// Longest device name, in bytes.
pub const MAX_DEVICE_NAME_LEN: usize = 32;
/// Longest revocation reason, in bytes.
pub const MAX_REASON_LEN: usize = 200;
/// Bytes of a link hash.
pub const HASH_LEN: usize = 32;

const MAGIC: &[u8; 4] = b"BSTL";
/// The link format this client writes and reads.
pub const LINK_VERSION: u8 = 1;
const LINK_CONTEXT: &[u8] = b"bastet 2026 identity link v1";
const HASH_CONTEXT: &str = "bastet 2026 identity link hash v1";
const CERT_CONTEXT: &[u8] = b"bastet 2026 device certificate v1";
const HEADER_LEN: usize = 4 + 1 + 8 + HASH_LEN + 8 + PUBLIC_KEY_LEN + 1 + 2;
const CERT_FIXED_LEN: usize = PUBLIC_KEY_LEN * 5 + KEM_PUBLIC_LEN + 32 + 32 + 1 + 1;
/// Longest certificate.
pub const MAX_CERT_LEN: usize = CERT_FIXED_LEN + MAX_DEVICE_NAME_LEN;
const MAX_BODY_LEN: usize = MAX_CERT_LEN + SIGNATURE_LEN;
/// Longest link.
pub const MAX_LINK_LEN: usize = HEADER_LEN + MAX_BODY_LEN + SIGNATURE_LEN;
/// Longest encoded chain.
pub const MAX_CHAIN_LEN: usize = 2 + MAX_LINKS * (2 + MAX_LINK_LEN);

const KIND_ADD: u8 = 1;
const KIND_REVOKE: u8 = 2;
const KIND_MAILBOX: u8 = 3;

fn chain_error(why: impl Into<String>) -> Error {
    Error::Chain(why.into())
}

/// A device's public keys and capabilities, as its identity certifies
/// them.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCert {
    /// Ed25519 device key: signs the content layer; the device's id.
    pub device: [u8; PUBLIC_KEY_LEN],
    /// X25519 content-layer key.
    pub content: [u8; PUBLIC_KEY_LEN],
    /// ML-KEM-768 content-layer key.
    pub kem: Box<[u8; KEM_PUBLIC_LEN]>,
    /// X25519 key the sealed envelope is sealed to.
    pub envelope: [u8; PUBLIC_KEY_LEN],
    /// The device's ratchet (Olm Curve25519) identity key.
    pub ratchet_identity: [u8; PUBLIC_KEY_LEN],
    /// The device's ratchet fallback key: starts a session with a device
    /// that gave no card (another device of a contact).
    pub ratchet_fallback: [u8; PUBLIC_KEY_LEN],
    /// The mailbox server holding the device's mailbox.
    pub mailbox_server: NodeId,
    /// The device's mailbox.
    pub mailbox: MailboxId,
    /// [`CAP_SEND`], [`CAP_ADMIN`].
    pub caps: u8,
    /// A name for people ("laptop"), at most 32 bytes.
    pub name: String,
}

impl fmt::Debug for DeviceCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCert")
            .field("device", &short_id(&self.device))
            .field("caps", &self.caps)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The short form of a device key people type: its first 8 bytes in hex.
pub fn short_id(device: &[u8; PUBLIC_KEY_LEN]) -> String {
    hex::encode(&device[..8])
}

impl DeviceCert {
    /// `device (32) || content (32) || ML-KEM (1184) || envelope (32) ||
    /// ratchet identity (32) || ratchet fallback (32) || mailbox server (32)
    /// || mailbox (32) || caps (1) || name length (1) || name`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CERT_FIXED_LEN + self.name.len());
        out.extend_from_slice(&self.device);
        out.extend_from_slice(&self.content);
        out.extend_from_slice(self.kem.as_slice());
        out.extend_from_slice(&self.envelope);
        out.extend_from_slice(&self.ratchet_identity);
        out.extend_from_slice(&self.ratchet_fallback);
        out.extend_from_slice(self.mailbox_server.as_bytes());
        out.extend_from_slice(self.mailbox.as_bytes());
        out.push(self.caps);
        // Checked by `check`: at most 32 bytes.
        out.push(self.name.len().min(255) as u8);
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    /// Parses a certificate that [`DeviceCert::to_bytes`] wrote (its
    /// fields checked; the back-signature is the chain's business).
    pub fn from_bytes(bytes: &[u8]) -> Result<DeviceCert> {
        if bytes.len() > MAX_CERT_LEN {
            return Err(chain_error("longer than any device certificate"));
        }
        let mut r = Reader(bytes);
        let cert = Self::parse(&mut r)?;
        if !r.0.is_empty() {
            return Err(chain_error("a certificate is longer than its fields"));
        }
        Ok(cert)
    }

    fn parse(r: &mut Reader<'_>) -> Result<DeviceCert> {
        let device = r.take()?;
        let content = r.take()?;
        let kem = Box::new(r.take::<KEM_PUBLIC_LEN>()?);
        let envelope = r.take()?;
        let ratchet_identity = r.take()?;
        let ratchet_fallback = r.take()?;
        let mailbox_server = NodeId(r.take()?);
        let mailbox = MailboxId(r.take()?);
        let [caps] = r.take()?;
        let [name_len] = r.take()?;
        let name = r.take_slice(usize::from(name_len))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| chain_error("a device name is not UTF-8"))?
            .to_string();
        let cert = DeviceCert {
            device,
            content,
            kem,
            envelope,
            ratchet_identity,
            ratchet_fallback,
            mailbox_server,
            mailbox,
            caps,
            name,
        };
        cert.check()?;
        Ok(cert)
    }

    /// Checks the fields a signature cannot vouch for: known capabilities,
    /// a short name, a valid ML-KEM-768 key.
    pub fn check(&self) -> Result<()> {
        if self.caps & !KNOWN_CAPS != 0 {
            return Err(chain_error(format!(
                "unknown device capabilities {:#04x}",
                self.caps
            )));
        }
        check_device_name(&self.name)?;
        use ml_kem::TryKeyInit;
        if ml_kem::ml_kem_768::EncapsulationKey::new_from_slice(self.kem.as_slice()).is_err() {
            return Err(chain_error("a device's ML-KEM-768 key is invalid"));
        }
        Ok(())
    }

    /// What the device signs to agree to belong to `identity`.
    pub fn back_signed(&self, identity: &[u8; PUBLIC_KEY_LEN]) -> Vec<u8> {
        let mut out = CERT_CONTEXT.to_vec();
        out.extend_from_slice(identity);
        out.extend_from_slice(&self.to_bytes());
        out
    }
}

impl DeviceCert {
    /// The certificate of the device holding `keys`, with the ratchet keys
    /// of its Olm account.
    pub fn of(
        keys: &crate::ClientKeys,
        ratchet_identity: [u8; PUBLIC_KEY_LEN],
        ratchet_fallback: [u8; PUBLIC_KEY_LEN],
        mailbox_server: NodeId,
        caps: u8,
        name: &str,
    ) -> Result<DeviceCert> {
        let cert = DeviceCert {
            device: keys.device_public(),
            content: keys.content_public(),
            kem: Box::new(keys.kem_public()),
            envelope: keys.encryption_public(),
            ratchet_identity,
            ratchet_fallback,
            mailbox_server,
            mailbox: keys.mailbox_id(),
            caps,
            name: name.to_string(),
        };
        cert.check()?;
        Ok(cert)
    }

    /// The back-signature of the device holding `keys` (which must be this
    /// certificate's) for identity `identity`.
    pub fn back_signature(
        &self,
        keys: &crate::ClientKeys,
        identity: &[u8; PUBLIC_KEY_LEN],
    ) -> Result<[u8; SIGNATURE_LEN]> {
        if keys.device_public() != self.device {
            return Err(chain_error("the certificate is of another device"));
        }
        Ok(keys.sign_device(&self.back_signed(identity)))
    }
}

/// Checks a device name: at most 32 bytes of printable text.
pub fn check_device_name(name: &str) -> Result<()> {
    check_printable(name, MAX_DEVICE_NAME_LEN, "a device name")
}

/// Checks that `text` is at most `max` bytes with no control characters.
fn check_printable(text: &str, max: usize, what: &str) -> Result<()> {
    if text.len() > max || text.chars().any(char::is_control) {
        return Err(chain_error(format!(
            "{text:?} is not {what}: at most {max} bytes, no control characters"
        )));
    }
    Ok(())
}

/// What a link does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// Adds a device, with its back-signature.
    AddDevice {
        /// Its certificate.
        cert: DeviceCert,
        /// The device's signature over [`DeviceCert::back_signed`].
        back_signature: [u8; SIGNATURE_LEN],
    },
    /// Revokes a device for good.
    RevokeDevice {
        /// Its device key.
        device: [u8; PUBLIC_KEY_LEN],
        /// Why, for people (at most 200 bytes).
        reason: String,
    },
    /// Moves a device's mailbox.
    ChangeMailbox {
        /// Its device key.
        device: [u8; PUBLIC_KEY_LEN],
        /// The new envelope key.
        envelope: [u8; PUBLIC_KEY_LEN],
        /// The new mailbox server.
        mailbox_server: NodeId,
        /// The new mailbox.
        mailbox: MailboxId,
    },
}

impl LinkKind {
    fn code(&self) -> u8 {
        match self {
            LinkKind::AddDevice { .. } => KIND_ADD,
            LinkKind::RevokeDevice { .. } => KIND_REVOKE,
            LinkKind::ChangeMailbox { .. } => KIND_MAILBOX,
        }
    }

    fn body(&self) -> Vec<u8> {
        match self {
            LinkKind::AddDevice {
                cert,
                back_signature,
            } => {
                let mut out = cert.to_bytes();
                out.extend_from_slice(back_signature);
                out
            }
            LinkKind::RevokeDevice { device, reason } => {
                let mut out = device.to_vec();
                out.push(reason.len().min(255) as u8);
                out.extend_from_slice(reason.as_bytes());
                out
            }
            LinkKind::ChangeMailbox {
                device,
                envelope,
                mailbox_server,
                mailbox,
            } => {
                let mut out = device.to_vec();
                out.extend_from_slice(envelope);
                out.extend_from_slice(mailbox_server.as_bytes());
                out.extend_from_slice(mailbox.as_bytes());
                out
            }
        }
    }

    fn parse(code: u8, body: &[u8]) -> Result<LinkKind> {
        let mut r = Reader(body);
        let kind = match code {
            KIND_ADD => {
                let cert = DeviceCert::parse(&mut r)?;
                let back_signature = r.take()?;
                LinkKind::AddDevice {
                    cert,
                    back_signature,
                }
            }
            KIND_REVOKE => {
                let device = r.take()?;
                let [len] = r.take()?;
                let reason = std::str::from_utf8(r.take_slice(usize::from(len))?)
                    .map_err(|_| chain_error("a revocation reason is not UTF-8"))?
                    .to_string();
                check_reason(&reason)?;
                LinkKind::RevokeDevice { device, reason }
            }
            KIND_MAILBOX => LinkKind::ChangeMailbox {
                device: r.take()?,
                envelope: r.take()?,
                mailbox_server: NodeId(r.take()?),
                mailbox: MailboxId(r.take()?),
            },
            other => return Err(chain_error(format!("unknown link kind {other}"))),
        };
        if !r.0.is_empty() {
            return Err(chain_error("a link body is longer than its fields"));
        }
        Ok(kind)
    }
}

/// Checks a revocation reason: at most 200 bytes, no control characters.
pub fn check_reason(reason: &str) -> Result<()> {
    check_printable(reason, MAX_REASON_LEN, "a revocation reason")
}

/// One signed link of a chain (signature not yet checked against a
/// chain's rules: [`Chain::append`] does that).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its position, from 0.
    pub seq: u64,
    /// The hash of link `seq − 1` (zero for link 0).
    pub prev: [u8; HASH_LEN],
    /// When it was made (its signer's clock, unix ms).
    pub time_ms: u64,
    /// The key that signed: the identity key or a device key.
    pub signer: [u8; PUBLIC_KEY_LEN],
    /// What it does.
    pub kind: LinkKind,
    /// The signer's signature.
    pub signature: [u8; SIGNATURE_LEN],
    /// Its encoding (what the hash and the signature cover).
    bytes: Vec<u8>,
}

impl Link {
    /// Makes and signs a link. `sign` signs with the key `signer` names;
    /// `identity` is the chain's identity key.
    pub fn sign(
        identity: &[u8; PUBLIC_KEY_LEN],
        seq: u64,
        prev: [u8; HASH_LEN],
        time_ms: u64,
        signer: [u8; PUBLIC_KEY_LEN],
        kind: LinkKind,
        sign: &dyn Fn(&[u8]) -> [u8; SIGNATURE_LEN],
    ) -> Result<Link> {
        let body = kind.body();
        if body.len() > MAX_BODY_LEN {
            return Err(chain_error("a link body is too long"));
        }
        let mut bytes = Vec::with_capacity(HEADER_LEN + body.len() + SIGNATURE_LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.push(LINK_VERSION);
        bytes.extend_from_slice(&seq.to_be_bytes());
        bytes.extend_from_slice(&prev);
        bytes.extend_from_slice(&time_ms.to_be_bytes());
        bytes.extend_from_slice(&signer);
        bytes.push(kind.code());
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&body);
        let signature = sign(&link_signed(identity, &bytes));
        bytes.extend_from_slice(&signature);
        Ok(Link {
            seq,
            prev,
            time_ms,
            signer,
            kind,
            signature,
            bytes,
        })
    }

    /// Parses one link (its fields; the chain checks the rest).
    pub fn from_bytes(bytes: &[u8]) -> Result<Link> {
        if bytes.len() < HEADER_LEN + SIGNATURE_LEN || bytes.len() > MAX_LINK_LEN {
            return Err(chain_error(format!(
                "a link of {} bytes (a link has {} to {MAX_LINK_LEN})",
                bytes.len(),
                HEADER_LEN + SIGNATURE_LEN
            )));
        }
        let mut r = Reader(bytes);
        if r.take::<4>()? != *MAGIC {
            return Err(chain_error("not an identity chain link"));
        }
        let [version] = r.take()?;
        if version != LINK_VERSION {
            return Err(chain_error(format!(
                "link format version {version} is not supported by this version of bastet"
            )));
        }
        let seq = u64::from_be_bytes(r.take()?);
        let prev = r.take()?;
        let time_ms = u64::from_be_bytes(r.take()?);
        let signer = r.take()?;
        let [code] = r.take()?;
        let body_len = usize::from(u16::from_be_bytes(r.take()?));
        let body = r.take_slice(body_len)?;
        let signature = r.take()?;
        if !r.0.is_empty() {
            return Err(chain_error("a link is longer than its fields"));
        }
        let kind = LinkKind::parse(code, body)?;
        Ok(Link {
            seq,
            prev,
            time_ms,
            signer,
            kind,
            signature,
            bytes: bytes.to_vec(),
        })
    }

    /// Its encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its hash: what the next link names as its previous.
    pub fn hash(&self) -> [u8; HASH_LEN] {
        let mut hasher = blake3::Hasher::new_derive_key(HASH_CONTEXT);
        hasher.update(&self.bytes);
        *hasher.finalize().as_bytes()
    }

    fn signature_ok(&self, identity: &[u8; PUBLIC_KEY_LEN]) -> bool {
        let signed_len = self.bytes.len() - SIGNATURE_LEN;
        crypto::verify(
            &self.signer,
            &link_signed(identity, &self.bytes[..signed_len]),
            &self.signature,
        )
    }
}

fn link_signed(identity: &[u8; PUBLIC_KEY_LEN], bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LINK_CONTEXT.len() + PUBLIC_KEY_LEN + bytes.len());
    out.extend_from_slice(LINK_CONTEXT);
    out.extend_from_slice(identity);
    out.extend_from_slice(bytes);
    out
}

/// A chain head: what every message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Head {
    /// The last link's sequence number.
    pub seq: u64,
    /// The last link's hash.
    pub hash: [u8; HASH_LEN],
}

/// Bytes of an encoded head.
pub const HEAD_LEN: usize = 8 + HASH_LEN;

impl Head {
    /// `seq (u64 BE) || hash (32)`.
    pub fn to_bytes(&self) -> [u8; HEAD_LEN] {
        let mut out = [0u8; HEAD_LEN];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.hash);
        out
    }

    /// The inverse of [`Head::to_bytes`].
    pub fn from_bytes(bytes: &[u8; HEAD_LEN]) -> Head {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[..8]);
        let mut hash = [0u8; HASH_LEN];
        hash.copy_from_slice(&bytes[8..]);
        Head {
            seq: u64::from_be_bytes(seq),
            hash,
        }
    }
}

/// A device as the chain has it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Its certificate, with the latest mailbox.
    pub cert: DeviceCert,
    /// The link that added it.
    pub added_seq: u64,
    /// When it was added (the link's time).
    pub added_ms: u64,
    /// The revocation, if revoked.
    pub revoked: Option<Revocation>,
}

impl Device {
    /// Added and not revoked.
    pub fn is_current(&self) -> bool {
        self.revoked.is_none()
    }
}

/// Why and when a device was revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The revoking link.
    pub seq: u64,
    /// Its time.
    pub time_ms: u64,
    /// The key that signed it.
    pub by: [u8; PUBLIC_KEY_LEN],
    /// The reason given.
    pub reason: String,
}

/// How a head someone claims compares with the chain held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadCheck {
    /// A link of this chain (the head, or an earlier one).
    Known,
    /// Past this chain's head: links are missing.
    Ahead,
    /// A different link at a sequence number this chain has: the identity
    /// signed two histories (equivocation).
    Conflict,
}

/// A verified identity chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    identity: [u8; PUBLIC_KEY_LEN],
    links: Vec<Link>,
    hashes: Vec<[u8; HASH_LEN]>,
    devices: Vec<Device>,
}

impl Chain {
    /// A chain of one link: `identity` (signing with `sign_identity`) adds
    /// its first device, whose back-signature `back_signature` is.
    pub fn genesis(
        identity: &[u8; PUBLIC_KEY_LEN],
        cert: DeviceCert,
        back_signature: [u8; SIGNATURE_LEN],
        time_ms: u64,
        sign_identity: &dyn Fn(&[u8]) -> [u8; SIGNATURE_LEN],
    ) -> Result<Chain> {
        let link = Link::sign(
            identity,
            0,
            [0; HASH_LEN],
            time_ms,
            *identity,
            LinkKind::AddDevice {
                cert,
                back_signature,
            },
            sign_identity,
        )?;
        let mut chain = Chain::empty(*identity);
        chain.append(link)?;
        Ok(chain)
    }

    /// A new identity's chain: the identity key of `keys` adds the device
    /// `cert` (which must be that of `keys`), as an admin that may send.
    pub fn genesis_of(
        keys: &crate::ClientKeys,
        mut cert: DeviceCert,
        time_ms: u64,
    ) -> Result<Chain> {
        let identity = keys.identity_public();
        if !keys.has_identity_key() {
            return Err(chain_error(
                "this device does not hold its identity key, so it cannot start a chain",
            ));
        }
        cert.caps = CAP_SEND | CAP_ADMIN;
        let back_signature = cert.back_signature(keys, &identity)?;
        Chain::genesis(&identity, cert, back_signature, time_ms, &|m| {
            keys.sign_identity(m).unwrap_or([0; SIGNATURE_LEN])
        })
    }

    fn empty(identity: [u8; PUBLIC_KEY_LEN]) -> Chain {
        Chain {
            identity,
            links: Vec::new(),
            hashes: Vec::new(),
            devices: Vec::new(),
        }
    }

    /// The identity key.
    pub fn identity(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.identity
    }

    /// Every link, in order.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The links after sequence number `seq` (all of them for `None`).
    pub fn links_after(&self, seq: Option<u64>) -> &[Link] {
        let from = seq.map_or(0, |s| usize::try_from(s).map_or(usize::MAX, |s| s + 1));
        self.links.get(from..).unwrap_or(&[])
    }

    /// The head: the last link's sequence number and hash.
    pub fn head(&self) -> Head {
        // A chain is never empty: it is built by `genesis` or `from_bytes`.
        let seq = self.links.len().saturating_sub(1) as u64;
        Head {
            seq,
            hash: self.hashes.last().copied().unwrap_or([0; HASH_LEN]),
        }
    }

    /// Every device ever added, in order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The devices not revoked.
    pub fn current_devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.iter().filter(|d| d.is_current())
    }

    /// The device with key `device`, revoked or not.
    pub fn device(&self, device: &[u8; PUBLIC_KEY_LEN]) -> Option<&Device> {
        self.devices.iter().find(|d| &d.cert.device == device)
    }

    /// The device whose ratchet identity key is `key`, revoked or not.
    pub fn device_by_ratchet_key(&self, key: &[u8; PUBLIC_KEY_LEN]) -> Option<&Device> {
        self.devices
            .iter()
            .find(|d| &d.cert.ratchet_identity == key)
    }

    /// Checks `link` against the chain's rules and appends it.
    pub fn append(&mut self, link: Link) -> Result<()> {
        let seq = self.links.len() as u64;
        if self.links.len() >= MAX_LINKS {
            return Err(chain_error(format!("more than {MAX_LINKS} links")));
        }
        if link.seq != seq {
            return Err(chain_error(format!(
                "link {} where link {seq} was due (a gap, or a link out of order)",
                link.seq
            )));
        }
        let prev = self.hashes.last().copied().unwrap_or([0; HASH_LEN]);
        if link.prev != prev {
            return Err(chain_error(format!(
                "link {seq} does not name the hash of link {} before it",
                seq.wrapping_sub(1)
            )));
        }
        if !self.authorised(&link) {
            return Err(chain_error(format!(
                "link {seq} is signed by {}, which may not sign it (not the identity key, nor a current admin device)",
                short_id(&link.signer)
            )));
        }
        if !link.signature_ok(&self.identity) {
            return Err(chain_error(format!(
                "the signature of link {seq} does not verify"
            )));
        }
        match &link.kind {
            LinkKind::AddDevice {
                cert,
                back_signature,
            } => {
                cert.check()?;
                if self.devices.iter().any(|d| {
                    d.cert.device == cert.device || d.cert.ratchet_identity == cert.ratchet_identity
                }) {
                    return Err(chain_error(format!(
                        "link {seq} adds device {} a second time",
                        short_id(&cert.device)
                    )));
                }
                if cert.device == self.identity {
                    return Err(chain_error(
                        "a device key may not be the identity key itself",
                    ));
                }
                if !crypto::verify(
                    &cert.device,
                    &cert.back_signed(&self.identity),
                    back_signature,
                ) {
                    return Err(chain_error(format!(
                        "device {} of link {seq} did not sign its certificate (bad back-signature)",
                        short_id(&cert.device)
                    )));
                }
                if self.current_devices().count() >= MAX_DEVICES {
                    return Err(chain_error(format!(
                        "more than {MAX_DEVICES} current devices"
                    )));
                }
                self.devices.push(Device {
                    cert: cert.clone(),
                    added_seq: seq,
                    added_ms: link.time_ms,
                    revoked: None,
                });
            }
            LinkKind::RevokeDevice { device, reason } => {
                if seq == 0 {
                    return Err(chain_error("the first link must add a device"));
                }
                let target = self
                    .devices
                    .iter_mut()
                    .find(|d| &d.cert.device == device)
                    .ok_or_else(|| {
                        chain_error(format!(
                            "link {seq} revokes {}, which is not a device of this identity",
                            short_id(device)
                        ))
                    })?;
                if target.revoked.is_some() {
                    return Err(chain_error(format!(
                        "link {seq} revokes {} again",
                        short_id(device)
                    )));
                }
                target.revoked = Some(Revocation {
                    seq,
                    time_ms: link.time_ms,
                    by: link.signer,
                    reason: reason.clone(),
                });
            }
            LinkKind::ChangeMailbox {
                device,
                envelope,
                mailbox_server,
                mailbox,
            } => {
                if seq == 0 {
                    return Err(chain_error("the first link must add a device"));
                }
                let target = self
                    .devices
                    .iter_mut()
                    .find(|d| &d.cert.device == device && d.is_current())
                    .ok_or_else(|| {
                        chain_error(format!(
                            "link {seq} moves the mailbox of {}, which is not a current device",
                            short_id(device)
                        ))
                    })?;
                target.cert.envelope = *envelope;
                target.cert.mailbox_server = *mailbox_server;
                target.cert.mailbox = *mailbox;
            }
        }
        self.hashes.push(link.hash());
        self.links.push(link);
        Ok(())
    }

    /// Whether `link`'s signer may sign it here.
    fn authorised(&self, link: &Link) -> bool {
        if link.signer == self.identity {
            return true;
        }
        if self.links.is_empty() {
            return false;
        }
        let Some(signer) = self.device(&link.signer).filter(|d| d.is_current()) else {
            return false;
        };
        if signer.cert.caps & CAP_ADMIN != 0 {
            return true;
        }
        matches!(&link.kind, LinkKind::ChangeMailbox { device, .. } if device == &link.signer)
    }

    /// Signs and appends a link with the next sequence number.
    pub fn extend_signed(
        &mut self,
        time_ms: u64,
        signer: [u8; PUBLIC_KEY_LEN],
        kind: LinkKind,
        sign: &dyn Fn(&[u8]) -> [u8; SIGNATURE_LEN],
    ) -> Result<&Link> {
        let head = self.head();
        let link = Link::sign(
            &self.identity,
            head.seq + 1,
            head.hash,
            time_ms,
            signer,
            kind,
            sign,
        )?;
        self.append(link)?;
        self.links
            .last()
            .ok_or_else(|| chain_error("the chain is empty"))
    }

    /// How `head` compares with this chain.
    pub fn check_head(&self, head: &Head) -> HeadCheck {
        match usize::try_from(head.seq)
            .ok()
            .and_then(|i| self.hashes.get(i))
        {
            Some(hash) if *hash == head.hash => HeadCheck::Known,
            Some(_) => HeadCheck::Conflict,
            None => HeadCheck::Ahead,
        }
    }

    /// Takes `links` (a suffix of the same identity's chain, possibly
    /// overlapping what is held): links already held must be identical,
    /// new ones are checked and appended. Returns how many were new. A
    /// different link at a held sequence number that is valid there (signed
    /// by a key allowed to sign it after the links before it) is an
    /// equivocation error; one that is not valid is an ordinary chain error
    /// (anyone can make a bad link; only a key of the identity can make a
    /// second history). Nothing is changed by a batch that fails.
    pub fn merge(&mut self, links: &[Link]) -> Result<usize> {
        let mut next = self.clone();
        let mut added = 0;
        for link in links {
            match usize::try_from(link.seq)
                .ok()
                .and_then(|i| next.links.get(i))
            {
                Some(held) if held == link => {}
                Some(_) => {
                    let mut prefix = Chain::empty(self.identity);
                    for held in &self.links[..usize::try_from(link.seq).unwrap_or(0)] {
                        prefix.append(held.clone())?;
                    }
                    prefix.append(link.clone()).map_err(|e| {
                        chain_error(format!(
                            "link {} differs from the one held and is not valid: {e}",
                            link.seq
                        ))
                    })?;
                    return Err(Error::Equivocation(format!(
                        "two different, validly signed links {} of identity {}",
                        link.seq,
                        hex::encode(self.identity)
                    )));
                }
                None => {
                    next.append(link.clone())?;
                    added += 1;
                }
            }
        }
        *self = next;
        Ok(added)
    }

    /// Whether link `seq` revokes a device.
    pub fn is_revocation(&self, seq: u64) -> bool {
        usize::try_from(seq)
            .ok()
            .and_then(|i| self.links.get(i))
            .is_some_and(|l| matches!(l.kind, LinkKind::RevokeDevice { .. }))
    }

    /// The encoded chain (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_links(&self.links, &mut out);
        out
    }

    /// Parses and verifies a whole chain. With `identity`, link 0 must be
    /// signed by that key.
    pub fn from_bytes(bytes: &[u8], identity: Option<&[u8; PUBLIC_KEY_LEN]>) -> Result<Chain> {
        let links = decode_links(bytes)?;
        let first = links
            .first()
            .ok_or_else(|| chain_error("a chain has at least one link"))?;
        let id = first.signer;
        if identity.is_some_and(|i| i != &id) {
            return Err(chain_error("the chain is of another identity"));
        }
        let mut chain = Chain::empty(id);
        for link in links {
            chain.append(link)?;
        }
        Ok(chain)
    }
}

/// Encodes links as a chain is encoded (a count, then each with its
/// length).
pub fn encode_links(links: &[Link], out: &mut Vec<u8>) {
    out.extend_from_slice(&(links.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    for link in links {
        out.extend_from_slice(&(link.bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&link.bytes);
    }
}

/// Decodes what [`encode_links`] wrote: at most [`MAX_LINKS`] links, each
/// parsed (not checked against a chain).
pub fn decode_links(bytes: &[u8]) -> Result<Vec<Link>> {
    if bytes.len() > MAX_CHAIN_LEN {
        return Err(chain_error("longer than any chain"));
    }
    let mut r = Reader(bytes);
    let count = usize::from(u16::from_be_bytes(r.take()?));
    if count > MAX_LINKS {
        return Err(chain_error(format!("{count} links, more than {MAX_LINKS}")));
    }
    let mut links = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(u16::from_be_bytes(r.take()?));
        links.push(Link::from_bytes(r.take_slice(len)?)?);
    }
    if !r.0.is_empty() {
        return Err(chain_error("bytes after the last link"));
    }
    Ok(links)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| chain_error("shorter than its fields"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn take_slice(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(chain_error("shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Keys and chains for tests.
    use super::*;
    use crate::crypto::TestKey;

    /// A device's keys for tests: its signing key and a certificate.
    pub(crate) struct TestDevice {
        pub(crate) key: TestKey,
        pub(crate) cert: DeviceCert,
    }

    impl TestDevice {
        pub(crate) fn new(caps: u8, name: &str) -> TestDevice {
            let key = TestKey::generate();
            let kem = crate::ClientKeys::generate(&mut rand::rng()).kem_public();
            let cert = DeviceCert {
                device: key.public(),
                content: TestKey::generate().public(),
                kem: Box::new(kem),
                envelope: TestKey::generate().public(),
                ratchet_identity: TestKey::generate().public(),
                ratchet_fallback: TestKey::generate().public(),
                mailbox_server: NodeId([9; 32]),
                mailbox: MailboxId([8; 32]),
                caps,
                name: name.to_string(),
            };
            TestDevice { key, cert }
        }

        pub(crate) fn add(&self, identity: &[u8; PUBLIC_KEY_LEN]) -> LinkKind {
            LinkKind::AddDevice {
                cert: self.cert.clone(),
                back_signature: self.key.sign(&self.cert.back_signed(identity)),
            }
        }
    }

    /// An identity key and a chain whose first device is `first`.
    pub(crate) fn new_chain(identity: &TestKey, first: &TestDevice) -> Chain {
        let id = identity.public();
        let back_signature = first.key.sign(&first.cert.back_signed(&id));
        Chain::genesis(&id, first.cert.clone(), back_signature, 1, &|m| {
            identity.sign(m)
        })
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::crypto::TestKey;
    use proptest::prelude::*;

    fn is_chain_error<T: fmt::Debug>(r: &Result<T>) -> bool {
        matches!(r, Err(Error::Chain(_)))
    }

    fn expect_chain_error<T: fmt::Debug>(r: Result<T>, contains: &str) {
        match r {
            Err(Error::Chain(why)) => assert!(why.contains(contains), "{why}"),
            other => panic!("expected a chain error with {contains:?}: {other:?}"),
        }
    }

    struct World {
        identity: TestKey,
        devices: Vec<TestDevice>,
        chain: Chain,
    }

    impl World {
        fn new() -> World {
            let identity = TestKey::generate();
            let first = TestDevice::new(CAP_SEND | CAP_ADMIN, "one");
            let chain = new_chain(&identity, &first);
            World {
                identity,
                devices: vec![first],
                chain,
            }
        }

        fn id(&self) -> [u8; PUBLIC_KEY_LEN] {
            self.identity.public()
        }

        /// Signs `kind` as link `seq` after `prev` with `signer`.
        fn link(&self, seq: u64, prev: [u8; HASH_LEN], signer: &TestKey, kind: LinkKind) -> Link {
            Link::sign(&self.id(), seq, prev, 7, signer.public(), kind, &|m| {
                signer.sign(m)
            })
            .unwrap()
        }

        fn next(&self, signer: &TestKey, kind: LinkKind) -> Link {
            let head = self.chain.head();
            self.link(head.seq + 1, head.hash, signer, kind)
        }

        /// Device `by` adds a new device with `caps`; returns its index.
        fn add_by(&mut self, by: usize, caps: u8) -> usize {
            let d = TestDevice::new(caps, "d");
            let link = self.next(&self.devices[by].key, d.add(&self.id()));
            self.chain.append(link).unwrap();
            self.devices.push(d);
            self.devices.len() - 1
        }

        fn revoke_by(&mut self, by: usize, target: usize) -> Result<()> {
            let link = self.next(
                &self.devices[by].key,
                LinkKind::RevokeDevice {
                    device: self.devices[target].cert.device,
                    reason: "lost".into(),
                },
            );
            self.chain.append(link)
        }
    }

    #[test]
    fn a_chain_round_trips_and_folds_to_its_devices() {
        let mut w = World::new();
        let two = w.add_by(0, CAP_SEND);
        let three = w.add_by(0, CAP_SEND | CAP_ADMIN);
        w.revoke_by(three, two).unwrap();
        let moved = w.next(
            &w.devices[0].key,
            LinkKind::ChangeMailbox {
                device: w.devices[three].cert.device,
                envelope: [5; 32],
                mailbox_server: NodeId([6; 32]),
                mailbox: MailboxId([7; 32]),
            },
        );
        w.chain.append(moved).unwrap();
        let bytes = w.chain.to_bytes();
        let again = Chain::from_bytes(&bytes, Some(&w.id())).unwrap();
        assert_eq!(again, w.chain);
        assert_eq!(again.head().seq, 4);
        assert_eq!(again.devices().len(), 3);
        let current: Vec<_> = again.current_devices().map(|d| d.cert.device).collect();
        assert_eq!(
            current,
            vec![w.devices[0].cert.device, w.devices[three].cert.device]
        );
        let revoked = again.device(&w.devices[two].cert.device).unwrap();
        assert_eq!(revoked.revoked.as_ref().unwrap().seq, 3);
        assert_eq!(revoked.revoked.as_ref().unwrap().reason, "lost");
        let d3 = again.device(&w.devices[three].cert.device).unwrap();
        assert_eq!(d3.cert.mailbox, MailboxId([7; 32]));
        // Another identity's chain is refused.
        expect_chain_error(
            Chain::from_bytes(&bytes, Some(&[1; 32])),
            "another identity",
        );
        assert_eq!(again.check_head(&again.head()), HeadCheck::Known);
    }

    #[test]
    fn a_wrong_previous_hash_or_a_gap_is_refused() {
        let mut w = World::new();
        let d = TestDevice::new(CAP_SEND, "x");
        let head = w.chain.head();
        let bad_prev = w.link(1, [0xAA; HASH_LEN], &w.identity, d.add(&w.id()));
        expect_chain_error(w.chain.append(bad_prev), "hash");
        let gap = w.link(2, head.hash, &w.identity, d.add(&w.id()));
        expect_chain_error(w.chain.append(gap), "gap");
        let replayed = w.link(0, [0; HASH_LEN], &w.identity, d.add(&w.id()));
        expect_chain_error(w.chain.append(replayed), "gap");
        assert_eq!(w.chain.head(), head);
    }

    #[test]
    fn only_the_identity_or_a_current_admin_device_signs() {
        let mut w = World::new();
        let sender = w.add_by(0, CAP_SEND);
        let admin = w.add_by(0, CAP_SEND | CAP_ADMIN);
        // A device without the admin capability adds nothing.
        let d = TestDevice::new(CAP_SEND, "x");
        let link = w.next(&w.devices[sender].key, d.add(&w.id()));
        expect_chain_error(w.chain.append(link), "may not sign");
        // A stranger's key.
        let stranger = TestKey::generate();
        let link = w.next(&stranger, d.add(&w.id()));
        expect_chain_error(w.chain.append(link), "may not sign");
        // A signature that does not verify, by an allowed key.
        let mut link = w.next(&w.devices[admin].key, d.add(&w.id()));
        link.bytes[10] ^= 1;
        let link = Link::from_bytes(&link.bytes).unwrap();
        assert!(is_chain_error(&w.chain.append(link)));
        // The admin revokes device 0 (the first admin): from then on
        // device 0's signatures count for nothing, and it cannot revoke
        // the admin that revoked it.
        w.revoke_by(admin, 0).unwrap();
        expect_chain_error(w.revoke_by(0, admin), "may not sign");
        let link = w.next(&w.devices[0].key, d.add(&w.id()));
        expect_chain_error(w.chain.append(link), "may not sign");
        // The identity key still signs.
        let link = w.next(&w.identity, d.add(&w.id()));
        w.chain.append(link).unwrap();
        // A device cannot be revoked twice, nor an unknown one, nor the
        // identity key.
        expect_chain_error(w.revoke_by(admin, 0), "again");
        let unknown = w.next(
            &w.identity,
            LinkKind::RevokeDevice {
                device: TestKey::generate().public(),
                reason: String::new(),
            },
        );
        expect_chain_error(w.chain.append(unknown), "not a device");
        let identity = w.next(
            &w.identity,
            LinkKind::RevokeDevice {
                device: w.id(),
                reason: String::new(),
            },
        );
        expect_chain_error(w.chain.append(identity), "not a device");
        // A non-admin device may move its own mailbox, not another's.
        let own = w.next(
            &w.devices[sender].key,
            LinkKind::ChangeMailbox {
                device: w.devices[sender].cert.device,
                envelope: [1; 32],
                mailbox_server: NodeId([2; 32]),
                mailbox: MailboxId([3; 32]),
            },
        );
        w.chain.append(own).unwrap();
        let other = w.next(
            &w.devices[sender].key,
            LinkKind::ChangeMailbox {
                device: w.devices[admin].cert.device,
                envelope: [1; 32],
                mailbox_server: NodeId([2; 32]),
                mailbox: MailboxId([3; 32]),
            },
        );
        expect_chain_error(w.chain.append(other), "may not sign");
    }

    #[test]
    fn a_certificate_needs_the_devices_back_signature() {
        let mut w = World::new();
        let d = TestDevice::new(CAP_SEND, "x");
        // Signed by someone else than the device.
        let forged = LinkKind::AddDevice {
            cert: d.cert.clone(),
            back_signature: TestKey::generate().sign(&d.cert.back_signed(&w.id())),
        };
        expect_chain_error(
            w.chain.append(w.next(&w.identity, forged)),
            "back-signature",
        );
        // Signed by the device for another identity.
        let other = LinkKind::AddDevice {
            cert: d.cert.clone(),
            back_signature: d.key.sign(&d.cert.back_signed(&[3; 32])),
        };
        expect_chain_error(w.chain.append(w.next(&w.identity, other)), "back-signature");
        // No back-signature at all (zeros).
        let none = LinkKind::AddDevice {
            cert: d.cert.clone(),
            back_signature: [0; SIGNATURE_LEN],
        };
        expect_chain_error(w.chain.append(w.next(&w.identity, none)), "back-signature");
        // Over a different certificate (caps raised after signing).
        let mut raised = d.cert.clone();
        raised.caps |= CAP_ADMIN;
        let swapped = LinkKind::AddDevice {
            cert: raised,
            back_signature: d.key.sign(&d.cert.back_signed(&w.id())),
        };
        expect_chain_error(
            w.chain.append(w.next(&w.identity, swapped)),
            "back-signature",
        );
        // The device twice.
        w.chain.append(w.next(&w.identity, d.add(&w.id()))).unwrap();
        expect_chain_error(
            w.chain.append(w.next(&w.identity, d.add(&w.id()))),
            "second time",
        );
    }

    #[test]
    fn the_first_link_is_the_identitys_and_adds_a_device() {
        let identity = TestKey::generate();
        let d = TestDevice::new(CAP_SEND | CAP_ADMIN, "one");
        let id = identity.public();
        // Signed by the device, not the identity.
        let link = Link::sign(&id, 0, [0; HASH_LEN], 1, d.key.public(), d.add(&id), &|m| {
            d.key.sign(m)
        })
        .unwrap();
        let mut bytes = Vec::new();
        encode_links(&[link], &mut bytes);
        // Read without an expected identity, the device key becomes the
        // identity: its back-signature (made for `id`) then fails.
        assert!(is_chain_error(&Chain::from_bytes(&bytes, None)));
        expect_chain_error(Chain::from_bytes(&bytes, Some(&id)), "another identity");
        // A revocation first.
        let link = Link::sign(
            &id,
            0,
            [0; HASH_LEN],
            1,
            id,
            LinkKind::RevokeDevice {
                device: d.key.public(),
                reason: String::new(),
            },
            &|m| identity.sign(m),
        )
        .unwrap();
        let mut bytes = Vec::new();
        encode_links(&[link], &mut bytes);
        expect_chain_error(Chain::from_bytes(&bytes, Some(&id)), "first link");
        // No links.
        let mut bytes = Vec::new();
        encode_links(&[], &mut bytes);
        expect_chain_error(Chain::from_bytes(&bytes, None), "at least one");
    }

    #[test]
    fn merge_takes_new_links_and_detects_equivocation() {
        let mut w = World::new();
        w.add_by(0, CAP_SEND);
        let mut contact_view = w.chain.clone();
        w.add_by(0, CAP_SEND);
        let admin_head = w.chain.head();
        assert_eq!(contact_view.check_head(&admin_head), HeadCheck::Ahead);
        assert_eq!(contact_view.merge(w.chain.links()).unwrap(), 1);
        assert_eq!(contact_view, w.chain);
        assert_eq!(contact_view.merge(w.chain.links_after(Some(1))).unwrap(), 0);
        // The identity signs a second link 2.
        let at = w.chain.links()[1].hash();
        let fork = w.link(
            2,
            at,
            &w.identity,
            TestDevice::new(CAP_SEND, "f").add(&w.id()),
        );
        let fork_head = Head {
            seq: 2,
            hash: fork.hash(),
        };
        assert_eq!(contact_view.check_head(&fork_head), HeadCheck::Conflict);
        match contact_view.merge(std::slice::from_ref(&fork)) {
            Err(Error::Equivocation(_)) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(contact_view, w.chain);
        // A differing link 2 that is not validly signed is refused as bad,
        // not as a second history.
        let stranger = TestKey::generate();
        let forged = w.link(
            2,
            at,
            &stranger,
            TestDevice::new(CAP_SEND, "z").add(&w.id()),
        );
        expect_chain_error(
            contact_view.merge(std::slice::from_ref(&forged)),
            "not valid",
        );
        // A bad batch changes nothing.
        let good = w.next(&w.identity, TestDevice::new(CAP_SEND, "g").add(&w.id()));
        let mut bad = w.link(
            4,
            [1; 32],
            &w.identity,
            TestDevice::new(0, "h").add(&w.id()),
        );
        bad.seq = 4;
        assert!(contact_view.merge(&[good, bad]).is_err());
        assert_eq!(contact_view, w.chain);
    }

    #[test]
    fn bounds_are_enforced() {
        let mut w = World::new();
        for _ in 1..MAX_DEVICES {
            w.add_by(0, CAP_SEND);
        }
        let d = TestDevice::new(CAP_SEND, "x");
        expect_chain_error(
            w.chain.append(w.next(&w.identity, d.add(&w.id()))),
            "current devices",
        );
        // Unknown capabilities, long names.
        let mut bad = TestDevice::new(CAP_SEND, "y");
        bad.cert.caps = 0x80;
        assert!(is_chain_error(&bad.cert.check()));
        bad.cert.caps = CAP_SEND;
        bad.cert.name = "n".repeat(MAX_DEVICE_NAME_LEN + 1);
        assert!(is_chain_error(&bad.cert.check()));
        bad.cert.name = "a\nb".into();
        assert!(is_chain_error(&bad.cert.check()));
        assert!(is_chain_error(&check_reason(
            &"r".repeat(MAX_REASON_LEN + 1)
        )));
        // Oversized inputs.
        assert!(is_chain_error(&decode_links(&vec![0; MAX_CHAIN_LEN + 1])));
        assert!(is_chain_error(&decode_links(&[0xff, 0xff])));
        assert!(is_chain_error(&Link::from_bytes(&vec![
            0;
            MAX_LINK_LEN + 1
        ])));
    }

    #[test]
    fn any_altered_byte_of_a_chain_is_refused() {
        let mut w = World::new();
        let two = w.add_by(0, CAP_SEND);
        w.revoke_by(0, two).unwrap();
        let bytes = w.chain.to_bytes();
        // Every byte of the short links, and a sample of the long ones.
        for i in (0..bytes.len()).filter(|i| i % 7 == 0 || *i > bytes.len() - 400) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                Chain::from_bytes(&bad, Some(&w.id())).is_err(),
                "byte {i} of {}",
                bytes.len()
            );
        }
        for len in [0, 1, 2, 100, bytes.len() - 1] {
            assert!(Chain::from_bytes(&bytes[..len], None).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Chain::from_bytes(&longer, None).is_err());
    }

    /// An operation of a random history.
    #[derive(Clone, Debug)]
    enum Op {
        Add { by: usize, admin: bool },
        Revoke { by: usize, target: usize },
        Move { by: usize, target: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..8usize, any::<bool>()).prop_map(|(by, admin)| Op::Add { by, admin }),
            (0..8usize, 0..8usize).prop_map(|(by, target)| Op::Revoke { by, target }),
            (0..8usize, 0..8usize).prop_map(|(by, target)| Op::Move { by, target }),
        ]
    }

    /// What a history does to a chain, by the rules in the module docs
    /// (device `usize::MAX` is the identity key).
    fn expected_ok(w: &World, by: usize, op: &Op) -> bool {
        let signer = if by == usize::MAX {
            None
        } else {
            w.chain.device(&w.devices[by].cert.device)
        };
        let admin = by == usize::MAX
            || signer.is_some_and(|d| d.is_current() && d.cert.caps & CAP_ADMIN != 0);
        match op {
            Op::Add { .. } => admin,
            Op::Revoke { target, .. } => {
                admin
                    && w.chain
                        .device(&w.devices[*target].cert.device)
                        .unwrap()
                        .is_current()
            }
            Op::Move { target, .. } => {
                let current = w
                    .chain
                    .device(&w.devices[*target].cert.device)
                    .unwrap()
                    .is_current();
                current && (admin || (*target == by && signer.is_some_and(Device::is_current)))
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Random histories: every link the rules allow is accepted, every
        /// other one refused, and the chain always re-verifies from bytes.
        #[test]
        fn random_histories_follow_the_rules(ops in proptest::collection::vec(op(), 1..12), identity_signs in proptest::collection::vec(any::<bool>(), 12)) {
            let mut w = World::new();
            for (i, op) in ops.iter().enumerate() {
                let n = w.devices.len();
                let by = if identity_signs[i] { usize::MAX } else {
                    match op { Op::Add { by, .. } | Op::Revoke { by, .. } | Op::Move { by, .. } => by % n }
                };
                let op = match op.clone() {
                    Op::Revoke { target, by: b } => Op::Revoke { target: target % n, by: b },
                    Op::Move { target, by: b } => Op::Move { target: target % n, by: b },
                    add => add,
                };
                let ok = expected_ok(&w, by, &op);
                let key = if by == usize::MAX { &w.identity } else { &w.devices[by].key };
                let (kind, new_device) = match &op {
                    Op::Add { admin, .. } => {
                        let caps = if *admin { CAP_SEND | CAP_ADMIN } else { CAP_SEND };
                        let d = TestDevice::new(caps, "p");
                        (d.add(&w.id()), Some(d))
                    }
                    Op::Revoke { target, .. } => (LinkKind::RevokeDevice { device: w.devices[*target].cert.device, reason: "r".into() }, None),
                    Op::Move { target, .. } => (LinkKind::ChangeMailbox { device: w.devices[*target].cert.device, envelope: [4; 32], mailbox_server: NodeId([4; 32]), mailbox: MailboxId([4; 32]) }, None),
                };
                let link = w.next(key, kind);
                let before = w.chain.clone();
                let result = w.chain.append(link);
                prop_assert_eq!(result.is_ok(), ok, "{:?} by {} -> {:?}", op, by, result);
                if result.is_err() {
                    prop_assert_eq!(&w.chain, &before);
                } else if let Some(d) = new_device {
                    w.devices.push(d);
                }
                let again = Chain::from_bytes(&w.chain.to_bytes(), Some(&w.id())).unwrap();
                prop_assert_eq!(&again, &w.chain);
            }
        }

        /// Any link of a valid chain, re-signed with a wrong previous hash
        /// or sequence number, breaks the chain.
        #[test]
        fn a_relinked_link_breaks_the_chain(at in 1..4usize, seq_shift in 1..3u64, use_seq in any::<bool>()) {
            let mut w = World::new();
            for _ in 0..4 { w.add_by(0, CAP_SEND); }
            let mut links = w.chain.links().to_vec();
            let l = links[at].clone();
            let (seq, prev) = if use_seq { (l.seq + seq_shift, l.prev) } else { (l.seq, [seq_shift as u8; 32]) };
            links[at] = w.link(seq, prev, &w.identity, l.kind.clone());
            let mut bytes = Vec::new();
            encode_links(&links, &mut bytes);
            prop_assert!(is_chain_error(&Chain::from_bytes(&bytes, Some(&w.id()))));
        }
    }
}
