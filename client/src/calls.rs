//! Call setup (signalling), sans IO: the three signals a call is placed
//! with, the hybrid key agreement they carry, and the daemon's bounded
//! queue of received signals.
//!
//! A call is set up by three ordinary layered messages between devices
//! ([`crate::Content::Call`]), through the mixnet like any text: signed by
//! the sender's device key and encrypted by the content layer, so both
//! ends know which identity and device they talk to before any key is
//! derived.
//!
//! 1. The caller sends a [`CallOffer`] to every current device of the
//!    callee: a fresh call id, an expiry at most [`MAX_OFFER_TTL`] ahead,
//!    the media profile, the rendezvous relay and cookie both ends' media
//!    circuits present there, an ephemeral X25519 key and a per-call
//!    ML-KEM-768 encapsulation key. The secrets stay in [`OfferSecrets`].
//! 2. The callee device that picks up [`answer`]s: an ephemeral X25519
//!    key, an ML-KEM-768 ciphertext to the offer's key, and the key
//!    confirmation of the [`bastet_call::CallKeys`] it derived from both
//!    shared secrets and the transcript (call id, both identities, both
//!    devices, both ephemeral keys, the ciphertext).
//! 3. The caller [`finish`]es: it derives the same keys and compares the
//!    confirmation in constant time. Any key swapped on the way (a man in
//!    the middle) gives other keys on one side: [`Error::CallKeyMismatch`],
//!    and the call does not start.
//!
//! Either end ends (or refuses, or cancels) a call with a [`Hangup`].
//!
//! Signal encoding (the body of a content-layer message of kind 7, see
//! [`crate::layers::content`]); integers big-endian, every field fixed
//! length except the profile name:
//!
//! ```text
//! version (1) = 1 || type (1) || call id (16) || fields of the type
//! offer  (0): expires_unix (u64) || profile length (u8, 1..=16) || profile
//!             || rendezvous (32) || cookie (32) || x25519 (32) || ML-KEM-768 ek (1184)
//! answer (1): x25519 (32) || ML-KEM-768 ciphertext (1088) || confirmation (32)
//! hangup (2): reason (1: 0 normal, 1 declined, 2 busy, 3 answered elsewhere, 4 failed)
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use bastet_call::{CallKeys, EphemeralKey, Party, Role, SharedSecrets, Transcript};
use ml_kem::{Decapsulate, Encapsulate, KeyExport, TryKeyInit};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::PUBLIC_KEY_LEN;
use crate::{Error, Result};

/// Bytes of a call id.
pub const CALL_ID_LEN: usize = bastet_call::CALL_ID_LEN;
/// Bytes of an ML-KEM-768 encapsulation key.
pub const KEM_EK_LEN: usize = crate::crypto::KEM_PUBLIC_LEN;
/// Bytes of an ML-KEM-768 ciphertext.
pub const KEM_CT_LEN: usize = bastet_call::KEM_CIPHERTEXT_LEN;
/// Bytes of an X25519 public key.
pub const X25519_LEN: usize = bastet_call::X25519_PUBLIC_LEN;
/// An offer expires at most this long after it is made.
pub const MAX_OFFER_TTL: Duration = Duration::from_secs(120);
/// How far the callee's clock may be behind the caller's: an offer
/// expiring more than [`MAX_OFFER_TTL`] plus this ahead is refused.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Longest profile name on the wire, in bytes.
pub const MAX_PROFILE_LEN: usize = 16;
/// The media profiles an offer may name ([`bastet_call::Profile::by_name`]).
pub const PROFILES: [&str; 3] = ["normal", "constrained", "video"];
/// The signal format this client writes and reads.
pub const SIGNAL_VERSION: u8 = 1;
/// Longest encoded signal (an offer with the longest profile name).
pub const MAX_SIGNAL_LEN: usize =
    HEADER_LEN + 8 + 1 + MAX_PROFILE_LEN + 3 * PUBLIC_KEY_LEN + X25519_LEN + KEM_EK_LEN;
/// Received signals the daemon keeps for `call_signals` at most; beyond
/// it the oldest is dropped (and counted).
pub const MAX_RECEIVED_CALLS: usize = 64;
/// (call id, kind, device) triples remembered to drop replays, at most.
pub const MAX_SEEN_SIGNALS: usize = 4096;
/// How long a signal is remembered to drop its replays: longer than any
/// offer lives ([`MAX_OFFER_TTL`] + [`CLOCK_SKEW`]).
pub const SEEN_FOR: Duration = Duration::from_secs(600);

const HEADER_LEN: usize = 2 + CALL_ID_LEN;
const TYPE_OFFER: u8 = 0;
const TYPE_ANSWER: u8 = 1;
const TYPE_HANGUP: u8 = 2;
const ANSWER_LEN: usize = HEADER_LEN + X25519_LEN + KEM_CT_LEN + 32;
const HANGUP_LEN: usize = HEADER_LEN + 1;

fn malformed(why: impl Into<String>) -> Error {
    Error::MalformedCallSignal(why.into())
}

/// A random 16-byte call id, chosen by the caller.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub [u8; CALL_ID_LEN]);

impl CallId {
    /// A fresh random id.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        CallId(crate::crypto::random_bytes(rng))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`CallId::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut id = [0u8; CALL_ID_LEN];
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(CallId(id))
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({})", self.to_hex())
    }
}

impl std::str::FromStr for CallId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        CallId::from_hex(s).ok_or_else(|| malformed(format!("call id {s:?} is not 32 hex digits")))
    }
}

/// The caller's invitation, sent to every current device of the callee.
#[derive(Clone, PartialEq, Eq)]
pub struct CallOffer {
    /// The call's id.
    pub call_id: CallId,
    /// When the offer expires (unix seconds, caller's clock).
    pub expires_unix: u64,
    /// The media profile: one of [`PROFILES`].
    pub profile: String,
    /// Node id of the rendezvous relay (a mixnode), chosen by the caller.
    pub rendezvous: [u8; 32],
    /// Random; both ends' media circuits present it at the rendezvous
    /// relay.
    pub cookie: [u8; 32],
    /// The caller's ephemeral X25519 public key.
    pub x25519: [u8; X25519_LEN],
    /// The caller's per-call ML-KEM-768 encapsulation key.
    pub kem_ek: Box<[u8; KEM_EK_LEN]>,
}

impl fmt::Debug for CallOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallOffer")
            .field("call_id", &self.call_id)
            .field("expires_unix", &self.expires_unix)
            .field("profile", &self.profile)
            .field("rendezvous", &hex::encode(self.rendezvous))
            .finish_non_exhaustive()
    }
}

/// The callee device's acceptance of an offer.
#[derive(Clone, PartialEq, Eq)]
pub struct CallAnswer {
    /// The offer's call id.
    pub call_id: CallId,
    /// The callee's ephemeral X25519 public key.
    pub x25519: [u8; X25519_LEN],
    /// The ML-KEM-768 ciphertext to the offer's encapsulation key.
    pub kem_ct: Box<[u8; KEM_CT_LEN]>,
    /// [`CallKeys::confirmation`] as the callee derived it.
    pub confirmation: [u8; 32],
}

impl fmt::Debug for CallAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallAnswer")
            .field("call_id", &self.call_id)
            .finish_non_exhaustive()
    }
}

/// Why a call ended (or never started).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupReason {
    /// Hung up after (or instead of) talking.
    Normal,
    /// The callee refused the call.
    Declined,
    /// The callee is in another call.
    Busy,
    /// Another device of the callee answered: this one stops ringing.
    AnsweredElsewhere,
    /// Setup or media failed (keys did not match, no circuit).
    Failed,
}

impl HangupReason {
    const ALL: [HangupReason; 5] = [
        HangupReason::Normal,
        HangupReason::Declined,
        HangupReason::Busy,
        HangupReason::AnsweredElsewhere,
        HangupReason::Failed,
    ];

    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            HangupReason::Normal => 0,
            HangupReason::Declined => 1,
            HangupReason::Busy => 2,
            HangupReason::AnsweredElsewhere => 3,
            HangupReason::Failed => 4,
        }
    }

    /// The reason of a wire code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for HangupReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HangupReason::Normal => "hung up",
            HangupReason::Declined => "declined",
            HangupReason::Busy => "busy",
            HangupReason::AnsweredElsewhere => "answered on another device",
            HangupReason::Failed => "failed",
        })
    }
}

/// Ends a call, refuses an offer, or cancels one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hangup {
    /// The call's id.
    pub call_id: CallId,
    /// Why.
    pub reason: HangupReason,
}

/// Which of the three signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalKind {
    /// [`CallOffer`].
    Offer,
    /// [`CallAnswer`].
    Answer,
    /// [`Hangup`].
    Hangup,
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignalKind::Offer => "offer",
            SignalKind::Answer => "answer",
            SignalKind::Hangup => "hangup",
        })
    }
}

/// One call-setup message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallSignal {
    /// The caller's invitation.
    Offer(CallOffer),
    /// The callee's acceptance.
    Answer(CallAnswer),
    /// The end of a call.
    Hangup(Hangup),
}

impl CallSignal {
    /// The call it belongs to.
    pub fn call_id(&self) -> CallId {
        match self {
            CallSignal::Offer(o) => o.call_id,
            CallSignal::Answer(a) => a.call_id,
            CallSignal::Hangup(h) => h.call_id,
        }
    }

    /// Which signal it is.
    pub fn kind(&self) -> SignalKind {
        match self {
            CallSignal::Offer(_) => SignalKind::Offer,
            CallSignal::Answer(_) => SignalKind::Answer,
            CallSignal::Hangup(_) => SignalKind::Hangup,
        }
    }

    /// Bytes of [`CallSignal::encode`].
    pub fn encoded_len(&self) -> usize {
        match self {
            CallSignal::Offer(o) => {
                HEADER_LEN + 8 + 1 + o.profile.len() + 2 * 32 + X25519_LEN + KEM_EK_LEN
            }
            CallSignal::Answer(_) => ANSWER_LEN,
            CallSignal::Hangup(_) => HANGUP_LEN,
        }
    }

    /// Checks what encoding cannot: an offer's profile.
    pub fn check(&self) -> Result<()> {
        match self {
            CallSignal::Offer(o) => check_profile(&o.profile),
            _ => Ok(()),
        }
    }

    /// The wire form (see the module docs). An offer's profile is checked
    /// by [`CallSignal::check`]; this writes whatever it holds.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(SIGNAL_VERSION);
        let kind = match self {
            CallSignal::Offer(_) => TYPE_OFFER,
            CallSignal::Answer(_) => TYPE_ANSWER,
            CallSignal::Hangup(_) => TYPE_HANGUP,
        };
        out.push(kind);
        out.extend_from_slice(&self.call_id().0);
        match self {
            CallSignal::Offer(o) => {
                out.extend_from_slice(&o.expires_unix.to_be_bytes());
                // Checked to be at most 16 bytes before anything is sent.
                out.push(u8::try_from(o.profile.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(o.profile.as_bytes());
                out.extend_from_slice(&o.rendezvous);
                out.extend_from_slice(&o.cookie);
                out.extend_from_slice(&o.x25519);
                out.extend_from_slice(o.kem_ek.as_slice());
            }
            CallSignal::Answer(a) => {
                out.extend_from_slice(&a.x25519);
                out.extend_from_slice(a.kem_ct.as_slice());
                out.extend_from_slice(&a.confirmation);
            }
            CallSignal::Hangup(h) => out.push(h.reason.code()),
        }
        out
    }

    /// Parses [`CallSignal::encode`]: refuses another version, an unknown
    /// type or reason, a wrong length, and a profile that is not one of
    /// [`PROFILES`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_SIGNAL_LEN {
            return Err(malformed(format!(
                "{} bytes, longer than any signal ({MAX_SIGNAL_LEN})",
                bytes.len()
            )));
        }
        let mut r = Reader(bytes);
        let version = r.byte("version")?;
        if version != SIGNAL_VERSION {
            return Err(malformed(format!(
                "format version {version} is not supported by this version of bastet"
            )));
        }
        let kind = r.byte("type")?;
        let call_id = CallId(r.array("call id")?);
        let signal = match kind {
            TYPE_OFFER => {
                let expires_unix = u64::from_be_bytes(r.array("expiry")?);
                let profile_len = usize::from(r.byte("profile length")?);
                if profile_len == 0 || profile_len > MAX_PROFILE_LEN {
                    return Err(malformed(format!(
                        "a profile name of {profile_len} bytes (1 to {MAX_PROFILE_LEN})"
                    )));
                }
                let profile = std::str::from_utf8(r.take(profile_len, "profile")?)
                    .map_err(|_| malformed("the profile name is not UTF-8"))?
                    .to_string();
                check_profile(&profile)?;
                CallSignal::Offer(CallOffer {
                    call_id,
                    expires_unix,
                    profile,
                    rendezvous: r.array("rendezvous")?,
                    cookie: r.array("cookie")?,
                    x25519: r.array("X25519 key")?,
                    kem_ek: Box::new(r.array("ML-KEM-768 encapsulation key")?),
                })
            }
            TYPE_ANSWER => CallSignal::Answer(CallAnswer {
                call_id,
                x25519: r.array("X25519 key")?,
                kem_ct: Box::new(r.array("ML-KEM-768 ciphertext")?),
                confirmation: r.array("confirmation")?,
            }),
            TYPE_HANGUP => {
                let code = r.byte("reason")?;
                let reason = HangupReason::from_code(code)
                    .ok_or_else(|| malformed(format!("unknown hangup reason {code}")))?;
                CallSignal::Hangup(Hangup { call_id, reason })
            }
            other => return Err(malformed(format!("unknown signal type {other}"))),
        };
        if !r.0.is_empty() {
            return Err(malformed(format!(
                "{} bytes after the {}",
                r.0.len(),
                signal.kind()
            )));
        }
        Ok(signal)
    }
}

/// Reads fields off the front of a signal.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(malformed(format!("cut short in the {what}")));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
}

/// Refuses a profile name that is not one of [`PROFILES`].
pub fn check_profile(name: &str) -> Result<()> {
    if name.len() > MAX_PROFILE_LEN || bastet_call::Profile::by_name(name).is_none() {
        return Err(Error::UnknownCallProfile(
            name.chars().take(MAX_PROFILE_LEN * 2).collect(),
        ));
    }
    Ok(())
}

/// Refuses an offer that expired before `now_unix`, or that expires
/// further ahead than [`MAX_OFFER_TTL`] + [`CLOCK_SKEW`] (a clock far
/// off, or an offer meant to be replayed later).
pub fn check_offer_time(offer: &CallOffer, now_unix: u64) -> Result<()> {
    if offer.expires_unix < now_unix {
        return Err(Error::CallOfferExpired {
            call_id: offer.call_id.to_hex(),
            secs_ago: now_unix - offer.expires_unix,
        });
    }
    let max = (MAX_OFFER_TTL + CLOCK_SKEW).as_secs();
    let ahead = offer.expires_unix - now_unix;
    if ahead > max {
        return Err(Error::CallOfferTooFarAhead {
            call_id: offer.call_id.to_hex(),
            secs_ahead: ahead,
            max_secs: max,
        });
    }
    Ok(())
}

/// The caller's secrets for one offer: its ephemeral X25519 key and its
/// per-call ML-KEM-768 decapsulation key. Both zeroize on drop; they are
/// never serialized.
pub struct OfferSecrets {
    call_id: CallId,
    x25519: EphemeralKey,
    kem: ml_kem::ml_kem_768::DecapsulationKey,
}

impl OfferSecrets {
    /// The call these secrets belong to.
    pub fn call_id(&self) -> CallId {
        self.call_id
    }
}

impl fmt::Debug for OfferSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfferSecrets")
            .field("call_id", &self.call_id)
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// Public keys of one end as the content layer authenticated them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Ed25519 identity key.
    pub identity: [u8; PUBLIC_KEY_LEN],
    /// Ed25519 device key.
    pub device: [u8; PUBLIC_KEY_LEN],
}

/// A fresh offer for media `profile`, rendezvous relay `rendezvous`,
/// expiring `ttl` after `now_unix` (rounded up to a second, at most
/// [`MAX_OFFER_TTL`]), and the secrets the caller keeps for [`finish`].
pub fn new_offer<R: CryptoRng + ?Sized>(
    rng: &mut R,
    profile: &str,
    rendezvous: [u8; 32],
    now_unix: u64,
    ttl: Duration,
) -> Result<(CallOffer, OfferSecrets)> {
    check_profile(profile)?;
    if ttl.is_zero() || ttl > MAX_OFFER_TTL {
        return Err(Error::CallOfferTtl {
            secs: ttl.as_secs_f64(),
            max_secs: MAX_OFFER_TTL.as_secs(),
        });
    }
    let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let call_id = CallId::random(rng);
    let x25519 = EphemeralKey::generate(rng);
    // FIPS 203 key generation from a fresh 64-byte seed (d || z).
    let mut seed = ml_kem::Seed::default();
    rng.fill_bytes(seed.as_mut_slice());
    let kem = ml_kem::ml_kem_768::DecapsulationKey::from_seed(seed);
    zeroize::Zeroize::zeroize(seed.as_mut_slice());
    let mut kem_ek = Box::new([0u8; KEM_EK_LEN]);
    kem_ek.copy_from_slice(kem.encapsulation_key().to_bytes().as_slice());
    let offer = CallOffer {
        call_id,
        expires_unix: now_unix.saturating_add(ttl_secs),
        profile: profile.to_string(),
        rendezvous,
        cookie: crate::crypto::random_bytes(rng),
        x25519: x25519.public(),
        kem_ek,
    };
    Ok((
        offer,
        OfferSecrets {
            call_id,
            x25519,
            kem,
        },
    ))
}

/// The callee's side: checks the offer (expiry, profile, keys),
/// encapsulates to its ML-KEM key, agrees on X25519 with a fresh
/// ephemeral key, and derives the callee's [`CallKeys`] over the
/// transcript of `caller` (the offer's sender, as the content layer
/// authenticated it) and `callee` (this device).
pub fn answer<R: CryptoRng + ?Sized>(
    rng: &mut R,
    offer: &CallOffer,
    caller: &Peer,
    callee: &Peer,
    now_unix: u64,
) -> Result<(CallAnswer, CallKeys)> {
    check_offer_time(offer, now_unix)?;
    check_profile(&offer.profile)?;
    let ek = ml_kem::ml_kem_768::EncapsulationKey::new_from_slice(offer.kem_ek.as_slice())
        .map_err(|_| Error::InvalidCallKey("ML-KEM-768 encapsulation key"))?;
    let x25519 = EphemeralKey::generate(rng);
    let x25519_shared = x25519.agree(&offer.x25519)?;
    let (ct, kem_shared) = ek.encapsulate_with_rng(rng);
    let mut kem_ct = Box::new([0u8; KEM_CT_LEN]);
    kem_ct.copy_from_slice(ct.as_slice());
    let mut ml_kem = Zeroizing::new([0u8; bastet_call::KEM_SHARED_LEN]);
    ml_kem.copy_from_slice(kem_shared.as_slice());
    let secrets = SharedSecrets {
        x25519: x25519_shared,
        ml_kem,
    };
    let transcript = transcript(
        offer.call_id,
        (caller, offer.x25519),
        (callee, x25519.public()),
        &kem_ct,
    );
    let keys = CallKeys::derive(Role::Callee, &secrets, &transcript)?;
    let answer = CallAnswer {
        call_id: offer.call_id,
        x25519: x25519.public(),
        kem_ct,
        confirmation: keys.confirmation(),
    };
    Ok((answer, keys))
}

/// The caller's side: decapsulates the answer's ciphertext, agrees on
/// X25519, derives the caller's [`CallKeys`] and compares the answer's
/// confirmation with its own in constant time. A mismatch means the offer
/// or the answer was altered on the way ([`Error::CallKeyMismatch`]): the
/// call must not start.
///
/// The caller's own keys come from `secrets`, never from `offer`, which
/// only names the call.
pub fn finish(
    secrets: &OfferSecrets,
    offer: &CallOffer,
    answer: &CallAnswer,
    caller: &Peer,
    callee: &Peer,
) -> Result<CallKeys> {
    for got in [offer.call_id, answer.call_id] {
        if got != secrets.call_id {
            return Err(Error::CallIdMismatch {
                expected: secrets.call_id.to_hex(),
                got: got.to_hex(),
            });
        }
    }
    let x25519_shared = secrets.x25519.agree(&answer.x25519)?;
    // The ciphertext has the one length ML-KEM-768 takes; a tampered one
    // decapsulates to an unrelated secret (implicit rejection) and fails
    // the confirmation below.
    let kem_shared = secrets
        .kem
        .decapsulate_slice(answer.kem_ct.as_slice())
        .map_err(|_| malformed("the ML-KEM-768 ciphertext has the wrong length"))?;
    let mut ml_kem = Zeroizing::new([0u8; bastet_call::KEM_SHARED_LEN]);
    ml_kem.copy_from_slice(kem_shared.as_slice());
    let shared = SharedSecrets {
        x25519: x25519_shared,
        ml_kem,
    };
    let transcript = transcript(
        secrets.call_id,
        (caller, secrets.x25519.public()),
        (callee, answer.x25519),
        &answer.kem_ct,
    );
    let keys = CallKeys::derive(Role::Caller, &shared, &transcript)?;
    if !bool::from(keys.confirmation().ct_eq(&answer.confirmation)) {
        return Err(Error::CallKeyMismatch {
            call_id: secrets.call_id.to_hex(),
        });
    }
    Ok(keys)
}

fn transcript(
    call_id: CallId,
    (caller, caller_ephemeral): (&Peer, [u8; X25519_LEN]),
    (callee, callee_ephemeral): (&Peer, [u8; X25519_LEN]),
    kem_ct: &[u8; KEM_CT_LEN],
) -> Transcript {
    Transcript {
        call_id: call_id.0,
        caller: Party {
            identity: caller.identity,
            device: caller.device,
            ephemeral: caller_ephemeral,
        },
        callee: Party {
            identity: callee.identity,
            device: callee.device,
            ephemeral: callee_ephemeral,
        },
        kem_ciphertext: Box::new(*kem_ct),
    }
}

/// A call signal that arrived from a contact's current device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedCall {
    /// The contact's name in this device's book.
    pub contact: String,
    /// The sender's identity key.
    pub identity: [u8; PUBLIC_KEY_LEN],
    /// The sender's device key (it signed the signal).
    pub device: [u8; PUBLIC_KEY_LEN],
    /// The signal.
    pub signal: CallSignal,
    /// When this device opened it (unix milliseconds, its own clock).
    pub received_at_ms: u64,
}

impl ReceivedCall {
    /// The sender as [`answer`] and [`finish`] take it.
    pub fn peer(&self) -> Peer {
        Peer {
            identity: self.identity,
            device: self.device,
        }
    }
}

/// What makes a signal a replay of another: its call, kind and sending
/// device.
type SeenKey = (CallId, SignalKind, [u8; PUBLIC_KEY_LEN]);

/// The daemon's received call signals: bounded, fresh, without replays.
///
/// A signal is kept until taken; beyond [`MAX_RECEIVED_CALLS`] the oldest
/// is dropped and counted. Offers that expired, or expire too far ahead,
/// are refused, and so is a second signal of the same call, kind and
/// sending device within [`SEEN_FOR`] (the device is part of the key so
/// that two devices of the callee answering the same offer are both
/// heard: the caller keeps one and hangs up on the other).
#[derive(Debug, Default)]
pub struct CallInbox {
    queue: VecDeque<ReceivedCall>,
    /// When each signal was first accepted (unix ms).
    seen: HashMap<SeenKey, u64>,
    /// The same keys, oldest first, to forget in order.
    seen_order: VecDeque<(SeenKey, u64)>,
    dropped: u64,
    refused: u64,
}

impl CallInbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `call` unless it is stale or a replay (then the error says
    /// why and nothing changes but the count of refused signals). `now_ms`
    /// is this device's clock, unix milliseconds.
    pub fn accept(&mut self, call: ReceivedCall, now_ms: u64) -> Result<()> {
        self.forget_before(now_ms.saturating_sub(SEEN_FOR.as_millis() as u64));
        if let CallSignal::Offer(offer) = &call.signal
            && let Err(e) = check_offer_time(offer, now_ms / 1000)
        {
            self.refused += 1;
            return Err(e);
        }
        let key = (call.signal.call_id(), call.signal.kind(), call.device);
        if self.seen.contains_key(&key) {
            self.refused += 1;
            return Err(Error::CallReplay {
                call_id: key.0.to_hex(),
                kind: key.1.to_string(),
            });
        }
        if self.seen_order.len() >= MAX_SEEN_SIGNALS
            && let Some((old, _)) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(key, now_ms);
        self.seen_order.push_back((key, now_ms));
        if self.queue.len() >= MAX_RECEIVED_CALLS {
            self.queue.pop_front();
            self.dropped += 1;
            tracing::warn!(
                max = MAX_RECEIVED_CALLS,
                dropped = self.dropped,
                "too many call signals waiting: the oldest is dropped"
            );
        }
        self.queue.push_back(call);
        Ok(())
    }

    fn forget_before(&mut self, cutoff_ms: u64) {
        while let Some((key, at)) = self.seen_order.front() {
            if *at >= cutoff_ms {
                break;
            }
            self.seen.remove(key);
            self.seen_order.pop_front();
        }
    }

    /// Takes the signals waiting (of call `call_id` only, if given),
    /// oldest first.
    pub fn take(&mut self, call_id: Option<CallId>) -> Vec<ReceivedCall> {
        let (taken, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|c| call_id.is_none_or(|id| c.signal.call_id() == id));
        self.queue = kept;
        taken.into()
    }

    /// Puts back signals taken but not delivered (the asker went away),
    /// ahead of those that came since; the bound still holds.
    pub fn put_back(&mut self, calls: Vec<ReceivedCall>) {
        for call in calls.into_iter().rev() {
            self.queue.push_front(call);
        }
        while self.queue.len() > MAX_RECEIVED_CALLS {
            self.queue.pop_front();
            self.dropped += 1;
        }
    }

    /// Whether a signal (of call `call_id`, if given) is waiting.
    pub fn has(&self, call_id: Option<CallId>) -> bool {
        self.queue
            .iter()
            .any(|c| call_id.is_none_or(|id| c.signal.call_id() == id))
    }

    /// Signals waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Signals dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Signals refused (stale offers and replays).
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bastet_call::{FrameOpener, FrameSealer, PLAINTEXT_LEN};
    use ml_kem::Kem;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn peers() -> (Peer, Peer) {
        (
            Peer {
                identity: [1; 32],
                device: [2; 32],
            },
            Peer {
                identity: [3; 32],
                device: [4; 32],
            },
        )
    }

    fn offer() -> (CallOffer, OfferSecrets) {
        new_offer(
            &mut rand::rng(),
            "normal",
            [9; 32],
            NOW,
            Duration::from_secs(60),
        )
        .unwrap()
    }

    /// A cell sealed by one end opens at the other, in both directions.
    fn assert_keys_match(caller: CallKeys, callee: CallKeys) {
        let cell = [0x5a; PLAINTEXT_LEN];
        let mut sealer = FrameSealer::new(caller.send);
        let mut opener = FrameOpener::new(callee.receive);
        let sealed = sealer.seal(Duration::ZERO, &cell).unwrap();
        assert_eq!(*opener.open(&sealed).unwrap().1, cell);
        let mut sealer = FrameSealer::new(callee.send);
        let mut opener = FrameOpener::new(caller.receive);
        let sealed = sealer.seal(Duration::ZERO, &cell).unwrap();
        assert_eq!(*opener.open(&sealed).unwrap().1, cell);
    }

    fn is_mitm(r: &Result<CallKeys>) -> bool {
        match r {
            Err(e @ Error::CallKeyMismatch { .. }) => {
                let text = e.to_string();
                text.contains("call keys do not match")
                    && text.contains("man-in-the-middle")
                    && text.contains("must not start")
            }
            _ => false,
        }
    }

    #[test]
    fn both_ends_derive_the_same_call_keys() {
        let (caller, callee) = peers();
        let (offer, secrets) = offer();
        assert_eq!(offer.expires_unix, NOW + 60);
        assert_eq!(secrets.call_id(), offer.call_id);
        let (answer, callee_keys) =
            answer(&mut rand::rng(), &offer, &caller, &callee, NOW).unwrap();
        assert_eq!(answer.call_id, offer.call_id);
        let caller_keys = finish(&secrets, &offer, &answer, &caller, &callee).unwrap();
        assert_eq!(caller_keys.confirmation(), callee_keys.confirmation());
        assert_keys_match(caller_keys, callee_keys);
        // Each offer is fresh.
        let (other, _) = new_offer(&mut rand::rng(), "video", [9; 32], NOW, MAX_OFFER_TTL).unwrap();
        assert_ne!(other.call_id, offer.call_id);
        assert_ne!(other.x25519, offer.x25519);
        assert_ne!(other.kem_ek, offer.kem_ek);
        assert_ne!(other.cookie, offer.cookie);
        assert!(format!("{secrets:?}").contains("<redacted>"));
    }

    #[test]
    fn a_swapped_ephemeral_key_stops_the_call() {
        let (caller, callee) = peers();
        let (offer, secrets) = offer();
        let mallory = EphemeralKey::generate(&mut rand::rng());

        // The offer's X25519 key replaced on the way to the callee.
        let mut swapped = offer.clone();
        swapped.x25519 = mallory.public();
        let (answer_to_swapped, _) =
            answer(&mut rand::rng(), &swapped, &caller, &callee, NOW).unwrap();
        let r = finish(&secrets, &offer, &answer_to_swapped, &caller, &callee);
        assert!(is_mitm(&r), "{r:?}");

        // The answer's X25519 key replaced on the way back.
        let (mut answer, _) = answer(&mut rand::rng(), &offer, &caller, &callee, NOW).unwrap();
        answer.x25519 = mallory.public();
        let r = finish(&secrets, &offer, &answer, &caller, &callee);
        assert!(is_mitm(&r), "{r:?}");
    }

    #[test]
    fn any_altered_answer_or_other_peer_stops_the_call() {
        let (caller, callee) = peers();
        let (offer, secrets) = offer();
        let (good, _) = answer(&mut rand::rng(), &offer, &caller, &callee, NOW).unwrap();
        let mut altered = Vec::new();
        let mut a = good.clone();
        a.kem_ct[100] ^= 1;
        altered.push(a);
        let mut a = good.clone();
        a.confirmation[0] ^= 1;
        altered.push(a);
        for a in altered {
            assert!(is_mitm(&finish(&secrets, &offer, &a, &caller, &callee)));
        }
        // The caller believes it talks to another device than the one
        // that answered.
        let other = Peer {
            device: [5; 32],
            ..callee
        };
        assert!(is_mitm(&finish(&secrets, &offer, &good, &caller, &other)));
        // A replaced ML-KEM key: the callee encapsulates to someone else.
        let mut swapped = offer.clone();
        let (_, ek) = ml_kem::MlKem768::generate_keypair_from_rng(&mut rand::rng());
        swapped
            .kem_ek
            .copy_from_slice(ml_kem::KeyExport::to_bytes(&ek).as_slice());
        let (a, _) = answer(&mut rand::rng(), &swapped, &caller, &callee, NOW).unwrap();
        assert!(is_mitm(&finish(&secrets, &offer, &a, &caller, &callee)));
        // An answer to another call.
        let mut a = good.clone();
        a.call_id = CallId([0; 16]);
        assert!(matches!(
            finish(&secrets, &offer, &a, &caller, &callee),
            Err(Error::CallIdMismatch { .. })
        ));
        // A low-order key is refused outright.
        let mut a = good;
        a.x25519 = [0; 32];
        assert!(matches!(
            finish(&secrets, &offer, &a, &caller, &callee),
            Err(Error::Call(bastet_call::Error::LowOrderPoint))
        ));
    }

    #[test]
    fn ml_kem_768_decapsulates_what_was_encapsulated() {
        // FIPS 203 correctness: Decaps(dk, c) = K for (c, K) = Encaps(ek).
        let (_, secrets) = offer();
        let ek = secrets.kem.encapsulation_key();
        for _ in 0..8 {
            let (ct, k) = ek.encapsulate_with_rng(&mut rand::rng());
            assert_eq!(ct.as_slice().len(), KEM_CT_LEN);
            assert_eq!(secrets.kem.decapsulate(&ct), k);
        }
        assert_eq!(ek.to_bytes().as_slice().len(), KEM_EK_LEN);
    }

    #[test]
    fn the_callee_refuses_stale_or_odd_offers() {
        let (caller, callee) = peers();
        let (offer, _) = offer();
        let late = NOW + 60 + 75;
        match answer(&mut rand::rng(), &offer, &caller, &callee, late) {
            Err(e @ Error::CallOfferExpired { secs_ago: 75, .. }) => {
                assert!(e.to_string().contains("expired 75 s ago"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // Right at its expiry it is still good.
        assert!(answer(&mut rand::rng(), &offer, &caller, &callee, NOW + 60).is_ok());
        let mut far = offer.clone();
        far.expires_unix = NOW + 151;
        assert!(matches!(
            answer(&mut rand::rng(), &far, &caller, &callee, NOW),
            Err(Error::CallOfferTooFarAhead {
                secs_ahead: 151,
                max_secs: 150,
                ..
            })
        ));
        far.expires_unix = NOW + 150;
        assert!(answer(&mut rand::rng(), &far, &caller, &callee, NOW).is_ok());
        let mut odd = offer.clone();
        odd.profile = "loud".into();
        assert!(matches!(
            answer(&mut rand::rng(), &odd, &caller, &callee, NOW),
            Err(Error::UnknownCallProfile(_))
        ));
        let mut odd = offer.clone();
        odd.x25519 = [0; 32];
        assert!(matches!(
            answer(&mut rand::rng(), &odd, &caller, &callee, NOW),
            Err(Error::Call(bastet_call::Error::LowOrderPoint))
        ));
        let mut odd = offer;
        odd.kem_ek.fill(0xff);
        assert!(matches!(
            answer(&mut rand::rng(), &odd, &caller, &callee, NOW),
            Err(Error::InvalidCallKey(_))
        ));
        // And the caller cannot make one.
        for (profile, ttl) in [
            ("normal", Duration::ZERO),
            ("normal", MAX_OFFER_TTL + Duration::from_millis(1)),
            ("stereo", Duration::from_secs(5)),
        ] {
            assert!(new_offer(&mut rand::rng(), profile, [0; 32], NOW, ttl).is_err());
        }
        let (o, _) = new_offer(
            &mut rand::rng(),
            "constrained",
            [0; 32],
            NOW,
            Duration::from_millis(1500),
        )
        .unwrap();
        assert_eq!(o.expires_unix, NOW + 2);
    }

    fn signals() -> Vec<CallSignal> {
        let (caller, callee) = peers();
        let (offer, _) = offer();
        let (answer, _) = answer(&mut rand::rng(), &offer, &caller, &callee, NOW).unwrap();
        let mut out = vec![CallSignal::Offer(offer.clone()), CallSignal::Answer(answer)];
        for profile in PROFILES {
            out.push(CallSignal::Offer(CallOffer {
                profile: profile.into(),
                ..offer.clone()
            }));
        }
        for reason in HangupReason::ALL {
            out.push(CallSignal::Hangup(Hangup {
                call_id: offer.call_id,
                reason,
            }));
        }
        out
    }

    #[test]
    fn signals_round_trip_and_every_cut_is_refused() {
        for signal in signals() {
            let bytes = signal.encode();
            assert_eq!(bytes.len(), signal.encoded_len());
            assert!(bytes.len() <= MAX_SIGNAL_LEN);
            assert_eq!(CallSignal::decode(&bytes).unwrap(), signal);
            for len in 0..bytes.len() {
                assert!(
                    matches!(
                        CallSignal::decode(&bytes[..len]),
                        Err(Error::MalformedCallSignal(_))
                    ),
                    "{signal:?} cut to {len}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(CallSignal::decode(&longer).is_err());
        }
        // The pinned layout of a hangup.
        let hangup = CallSignal::Hangup(Hangup {
            call_id: CallId([0xab; 16]),
            reason: HangupReason::AnsweredElsewhere,
        });
        assert_eq!(
            hex::encode(hangup.encode()),
            "0102abababababababababababababababab03"
        );
    }

    #[test]
    fn malformed_signals_are_refused_with_a_reason() {
        let (offer, _) = offer();
        let good = CallSignal::Offer(offer).encode();
        let why = |bytes: &[u8]| match CallSignal::decode(bytes) {
            Err(Error::MalformedCallSignal(why)) => why,
            Err(e @ Error::UnknownCallProfile(_)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        let mut b = good.clone();
        b[0] = 2;
        assert!(why(&b).contains("version 2"));
        let mut b = good.clone();
        b[1] = 9;
        assert!(why(&b).contains("unknown signal type 9"));
        let hangup = CallSignal::Hangup(Hangup {
            call_id: CallId([1; 16]),
            reason: HangupReason::Busy,
        })
        .encode();
        for code in [5u8, 0x80, 0xff] {
            let mut b = hangup.clone();
            *b.last_mut().unwrap() = code;
            assert!(why(&b).contains(&format!("unknown hangup reason {code}")));
        }
        // The profile length byte follows the header and the expiry.
        let at = HEADER_LEN + 8;
        for len in [0u8, 17, 255] {
            let mut b = good.clone();
            b[at] = len;
            assert!(why(&b).contains("profile name of"), "{len}");
        }
        // "normal" -> "nor\xffal": not UTF-8; "normal" -> "formal": unknown.
        let mut b = good.clone();
        b[at + 4] = 0xff;
        assert!(why(&b).contains("not UTF-8"));
        let mut b = good.clone();
        b[at + 1] = b'f';
        assert!(why(&b).contains("unknown call profile \"formal\""));
        assert!(why(&vec![1; MAX_SIGNAL_LEN + 1]).contains("longer than any signal"));
        // A 16-byte profile name that is not a profile.
        let mut b = good[..at].to_vec();
        b.push(16);
        b.extend_from_slice(b"constrainedconst");
        b.extend_from_slice(&good[at + 1 + 6..]);
        assert!(why(&b).contains("unknown call profile"));
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = CallSignal::decode(&bytes);
        }

        #[test]
        fn decoding_a_mutated_signal_never_panics(i in 0usize..1400, x in 1u8..=255, which in 0usize..9) {
            let signals = signals();
            let mut bytes = signals[which % signals.len()].encode();
            let i = i % bytes.len();
            bytes[i] ^= x;
            if let Ok(s) = CallSignal::decode(&bytes) {
                // Whatever decodes encodes back to the same bytes.
                prop_assert_eq!(s.encode(), bytes);
            }
        }
    }

    fn received(signal: CallSignal, device: u8) -> ReceivedCall {
        ReceivedCall {
            contact: "alice".into(),
            identity: [1; 32],
            device: [device; 32],
            signal,
            received_at_ms: NOW * 1000,
        }
    }

    #[test]
    fn the_call_inbox_refuses_stale_offers_and_replays() {
        let (offer, _) = offer();
        let id = offer.call_id;
        let now_ms = NOW * 1000;
        let mut inbox = CallInbox::new();
        let offer_signal = CallSignal::Offer(offer.clone());
        inbox
            .accept(received(offer_signal.clone(), 2), now_ms)
            .unwrap();
        // The same offer again is a replay, even much later (while
        // remembered) and whatever the clock says.
        match inbox.accept(received(offer_signal.clone(), 2), now_ms + 1000) {
            Err(e @ Error::CallReplay { .. }) => assert!(e.to_string().contains("offer"), "{e}"),
            other => panic!("{other:?}"),
        }
        let hangup = CallSignal::Hangup(Hangup {
            call_id: id,
            reason: HangupReason::Normal,
        });
        inbox.accept(received(hangup.clone(), 2), now_ms).unwrap();
        assert!(inbox.accept(received(hangup.clone(), 2), now_ms).is_err());
        // Another device's hangup of the same call is not a replay.
        inbox.accept(received(hangup.clone(), 3), now_ms).unwrap();
        // Expired, and too far ahead.
        let mut late = offer.clone();
        late.call_id = CallId([7; 16]);
        assert!(matches!(
            inbox.accept(
                received(CallSignal::Offer(late.clone()), 2),
                (NOW + 61) * 1000
            ),
            Err(Error::CallOfferExpired { secs_ago: 1, .. })
        ));
        late.expires_unix = NOW + 1000;
        assert!(matches!(
            inbox.accept(received(CallSignal::Offer(late), 2), now_ms),
            Err(Error::CallOfferTooFarAhead { .. })
        ));
        assert_eq!(inbox.refused(), 4);
        assert_eq!(inbox.len(), 3);
        // Taking one call's signals leaves the others.
        let other = CallSignal::Hangup(Hangup {
            call_id: CallId([8; 16]),
            reason: HangupReason::Busy,
        });
        inbox.accept(received(other, 2), now_ms).unwrap();
        assert!(inbox.has(Some(id)));
        let taken = inbox.take(Some(id));
        assert_eq!(taken.len(), 3);
        assert_eq!(taken[0].signal, offer_signal);
        assert_eq!(taken[0].peer().device, [2; 32]);
        assert!(!inbox.has(Some(id)));
        // Taken but not delivered: back in front, in order.
        inbox.put_back(taken.clone());
        assert_eq!(inbox.take(Some(id)), taken);
        assert_eq!(inbox.take(None).len(), 1);
        assert!(inbox.is_empty());
        // Forgotten after SEEN_FOR: then only the expiry guards an offer.
        let later = now_ms + SEEN_FOR.as_millis() as u64 + 1;
        inbox.accept(received(hangup, 2), later).unwrap();
    }

    #[test]
    fn the_call_inbox_is_bounded() {
        let mut inbox = CallInbox::new();
        let now_ms = NOW * 1000;
        for i in 0..MAX_RECEIVED_CALLS + 3 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let signal = CallSignal::Hangup(Hangup {
                call_id: CallId(id),
                reason: HangupReason::Normal,
            });
            inbox.accept(received(signal, 2), now_ms).unwrap();
        }
        assert_eq!(inbox.len(), MAX_RECEIVED_CALLS);
        assert_eq!(inbox.dropped(), 3);
        // The oldest went first.
        let first = inbox.take(None).remove(0);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&3u64.to_be_bytes());
        assert_eq!(first.signal.call_id(), CallId(id));
        // The replay memory is bounded too.
        for i in 0..MAX_SEEN_SIGNALS + 10 {
            let mut id = [0xffu8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let signal = CallSignal::Hangup(Hangup {
                call_id: CallId(id),
                reason: HangupReason::Normal,
            });
            inbox.accept(received(signal, 2), now_ms).unwrap();
        }
        assert!(inbox.seen.len() <= MAX_SEEN_SIGNALS);
        assert_eq!(inbox.seen.len(), inbox.seen_order.len());
    }

    #[test]
    fn call_ids_print_and_parse_as_hex() {
        let id = CallId([0x0f; 16]);
        assert_eq!(id.to_string(), "0f".repeat(16));
        assert_eq!(id.to_string().parse::<CallId>().unwrap(), id);
        assert_eq!(CallId::from_hex(&id.to_hex()), Some(id));
        assert!("0f".parse::<CallId>().is_err());
        assert!(CallId::from_hex(&"zz".repeat(16)).is_none());
        assert_eq!(format!("{id:?}"), format!("CallId({})", "0f".repeat(16)));
    }
}
