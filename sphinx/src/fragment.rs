//! Fragmentation of a sealed envelope into pieces that each fit one packet
//! next to an ack SURB, the final payload such a piece rides in, and
//! reassembly at the recipient. Sans-IO: bytes, an RNG and `now` in.
//!
//! Every fragment but the last carries exactly [`FRAGMENT_CAPACITY`] bytes of
//! the envelope, so a fragment's length follows from its header and each
//! fragment is checked on its own before it touches any state.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use rand::CryptoRng;

use crate::{Error, MAX_MESSAGE_LEN, Result, SURB_LEN, Surb};

/// Hard cap on an envelope's length: 4 MiB. [`ReassemblyLimits`] sets the
/// limit in force, at most this.
pub const MAX_ENVELOPE_LEN: usize = 4 << 20;
/// Version byte of the fragment encoding.
pub const FRAGMENT_VERSION: u8 = 1;
/// `version (1) || envelope id (16) || index (4) || count (4) || total length (4)`.
pub const FRAGMENT_HEADER_LEN: usize = 1 + 16 + 4 + 4 + 4;
/// Version byte of the final payload encoding.
pub const FINAL_PAYLOAD_VERSION: u8 = 1;
/// Final payload bytes besides the fragment, with an ack: version, flags,
/// ack id and ack SURB.
pub const FINAL_PAYLOAD_OVERHEAD: usize = 1 + 1 + 16 + SURB_LEN;
/// Longest encoded fragment: what is left of one packet's message after the
/// final payload's overhead.
pub const MAX_FRAGMENT_LEN: usize = MAX_MESSAGE_LEN - FINAL_PAYLOAD_OVERHEAD;
/// Envelope bytes in every fragment but the last.
pub const FRAGMENT_CAPACITY: usize = MAX_FRAGMENT_LEN - FRAGMENT_HEADER_LEN;

const FLAG_ACK: u8 = 1;

/// Names one fragmented envelope: 16 random bytes, fresh per envelope.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnvelopeId(pub [u8; 16]);

impl fmt::Debug for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvelopeId({})", hex::encode(&self.0[..4]))
    }
}

/// What the last hop sends back through the ack SURB, so that the sender
/// knows which fragment arrived.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckId(pub [u8; 16]);

impl fmt::Debug for AckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AckId({})", hex::encode(&self.0[..4]))
    }
}

/// Version byte of an ack body.
pub const ACK_BODY_VERSION: u8 = 1;
/// Length of an ack body: version and ack id.
pub const ACK_BODY_LEN: usize = 1 + 16;

impl AckId {
    /// What the last hop sends through the ack SURB once the fragment is
    /// stored: `version (1) || ack id (16)`.
    pub fn to_ack_body(&self) -> [u8; ACK_BODY_LEN] {
        let mut out = [0u8; ACK_BODY_LEN];
        out[0] = ACK_BODY_VERSION;
        out[1..].copy_from_slice(&self.0);
        out
    }

    /// Parses [`AckId::to_ack_body`] out of an opened reply.
    pub fn from_ack_body(bytes: &[u8]) -> Result<Self> {
        match bytes {
            [ACK_BODY_VERSION, id @ ..] if id.len() == 16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(id);
                Ok(AckId(a))
            }
            _ => Err(Error::MalformedEncoding {
                what: "ack body",
                reason: "not version 1 and a 16-byte id",
            }),
        }
    }
}

/// One piece of an envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct Fragment {
    envelope: EnvelopeId,
    index: u32,
    count: u32,
    total_len: u32,
    chunk: Box<[u8]>,
}

impl fmt::Debug for Fragment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Fragment({:?}, {}/{}, {} of {} bytes)",
            self.envelope,
            self.index,
            self.count,
            self.chunk.len(),
            self.total_len
        )
    }
}

/// Fragments an envelope of `total_len` bytes is cut into: at least one.
fn fragment_count(total_len: usize) -> usize {
    total_len.div_ceil(FRAGMENT_CAPACITY).max(1)
}

fn malformed(reason: &'static str) -> Error {
    Error::MalformedEncoding {
        what: "fragment",
        reason,
    }
}

impl Fragment {
    /// The envelope this is a piece of.
    pub fn envelope(&self) -> EnvelopeId {
        self.envelope
    }

    /// Position among the envelope's fragments, from 0.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How many fragments the envelope has.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The whole envelope's length.
    pub fn total_len(&self) -> usize {
        self.total_len as usize
    }

    /// This fragment's share of the envelope.
    pub fn chunk(&self) -> &[u8] {
        &self.chunk
    }

    /// The same fragment under another envelope id (a client tags its loop
    /// cover this way).
    pub fn with_envelope(mut self, envelope: EnvelopeId) -> Self {
        self.envelope = envelope;
        self
    }

    /// `version || envelope id || index || count || total length || chunk`,
    /// integers big-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAGMENT_HEADER_LEN + self.chunk.len());
        out.push(FRAGMENT_VERSION);
        out.extend_from_slice(&self.envelope.0);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.total_len.to_be_bytes());
        out.extend_from_slice(&self.chunk);
        out
    }

    /// Parses [`Fragment::to_bytes`], checking that the header is consistent
    /// with itself and with the chunk's length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_FRAGMENT_LEN {
            return Err(malformed("longer than a fragment can be"));
        }
        let Some((header, chunk)) = bytes.split_first_chunk::<FRAGMENT_HEADER_LEN>() else {
            return Err(malformed("shorter than its header"));
        };
        let [version, rest @ ..] = header;
        if *version != FRAGMENT_VERSION {
            return Err(malformed("unknown version"));
        }
        let (id, rest) = rest.split_at(16);
        let be = |b: &[u8]| -> u32 {
            let mut a = [0u8; 4];
            a.copy_from_slice(b);
            u32::from_be_bytes(a)
        };
        let (index, count, total_len) = (be(&rest[..4]), be(&rest[4..8]), be(&rest[8..12]));
        let total = total_len as usize;
        if total > MAX_ENVELOPE_LEN {
            return Err(malformed("envelope longer than the hard cap"));
        }
        if count as usize != fragment_count(total) {
            return Err(malformed("count does not match the total length"));
        }
        if index >= count {
            return Err(malformed("index beyond count"));
        }
        let start = index as usize * FRAGMENT_CAPACITY;
        if chunk.len() != (total - start).min(FRAGMENT_CAPACITY) {
            return Err(malformed("chunk length does not match its position"));
        }
        let mut envelope = [0u8; 16];
        envelope.copy_from_slice(id);
        Ok(Fragment {
            envelope: EnvelopeId(envelope),
            index,
            count,
            total_len,
            chunk: chunk.into(),
        })
    }
}

/// Cuts `envelope` (at most [`MAX_ENVELOPE_LEN`] bytes) into fragments under
/// a fresh random [`EnvelopeId`]; an envelope that fits one fragment, the
/// empty one included, gives exactly one.
pub fn fragment<R: CryptoRng + ?Sized>(envelope: &[u8], rng: &mut R) -> Result<Vec<Fragment>> {
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(Error::EnvelopeTooLong {
            len: envelope.len(),
            max: MAX_ENVELOPE_LEN,
        });
    }
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    // Both fit a u32: the hard cap is 4 MiB.
    let total_len = envelope.len() as u32;
    let count = fragment_count(envelope.len()) as u32;
    let chunks: Vec<&[u8]> = if envelope.is_empty() {
        vec![&[]]
    } else {
        envelope.chunks(FRAGMENT_CAPACITY).collect()
    };
    Ok(chunks
        .into_iter()
        .zip(0u32..)
        .map(|(chunk, index)| Fragment {
            envelope: EnvelopeId(id),
            index,
            count,
            total_len,
            chunk: chunk.into(),
        })
        .collect())
}

/// An ack SURB and the id to send back through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckRequest {
    /// What to send back.
    pub id: AckId,
    /// Where to send it.
    pub surb: Surb,
}

/// What the last hop (the recipient's mailbox server) reads out of a
/// forward packet: an optional ack request, which it uses, and a fragment,
/// which it stores for the recipient without parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalPayload {
    ack: Option<AckRequest>,
    fragment: Box<[u8]>,
}

impl FinalPayload {
    /// A final payload carrying `fragment` and, if given, an ack request.
    pub fn new(ack: Option<AckRequest>, fragment: &Fragment) -> Self {
        FinalPayload {
            ack,
            fragment: fragment.to_bytes().into(),
        }
    }

    /// The ack request, if the sender asked for one.
    pub fn ack(&self) -> Option<&AckRequest> {
        self.ack.as_ref()
    }

    /// The encoded fragment, for the recipient to parse with
    /// [`Fragment::from_bytes`].
    pub fn fragment_bytes(&self) -> &[u8] {
        &self.fragment
    }

    /// `version (1) || flags (1) || [ack id (16) || ack SURB (SURB_LEN)] ||
    /// fragment`, the bracketed part present when flag bit 0 is set. At most
    /// [`MAX_MESSAGE_LEN`] bytes: one packet's message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FINAL_PAYLOAD_OVERHEAD + self.fragment.len());
        out.push(FINAL_PAYLOAD_VERSION);
        match &self.ack {
            Some(ack) => {
                out.push(FLAG_ACK);
                out.extend_from_slice(&ack.id.0);
                out.extend_from_slice(ack.surb.as_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.fragment);
        out
    }

    /// Parses [`FinalPayload::to_bytes`]. Checks the SURB's length and
    /// structure and the fragment's length, not the fragment's contents.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |reason| Error::MalformedEncoding {
            what: "final payload",
            reason,
        };
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(bad("longer than one packet's message"));
        }
        let [version, flags, rest @ ..] = bytes else {
            return Err(bad("shorter than its header"));
        };
        if *version != FINAL_PAYLOAD_VERSION {
            return Err(bad("unknown version"));
        }
        let (ack, fragment) = match *flags {
            0 => (None, rest),
            FLAG_ACK => {
                let Some((id, rest)) = rest.split_first_chunk::<16>() else {
                    return Err(bad("truncated ack id"));
                };
                let Some((surb, fragment)) = rest.split_first_chunk::<SURB_LEN>() else {
                    return Err(bad("truncated ack SURB"));
                };
                let ack = AckRequest {
                    id: AckId(*id),
                    surb: Surb::from_bytes(surb)?,
                };
                (Some(ack), fragment)
            }
            _ => return Err(bad("unknown flags")),
        };
        if fragment.len() > MAX_FRAGMENT_LEN {
            return Err(bad("fragment longer than a fragment can be"));
        }
        Ok(FinalPayload {
            ack,
            fragment: fragment.into(),
        })
    }
}

/// Bounds on what a [`Reassembler`] holds; anyone who knows a mailbox can
/// send fragments to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Longest envelope accepted (at most [`MAX_ENVELOPE_LEN`]).
    pub max_envelope_len: usize,
    /// Most envelopes being reassembled at once. Single-fragment envelopes
    /// complete at once and do not count.
    pub max_partial: usize,
    /// Most fragment bytes buffered over all partial envelopes; at least
    /// `max_envelope_len`, or a maximal envelope could never complete.
    pub max_buffered_bytes: usize,
    /// How long after its first fragment a partial envelope is dropped, and
    /// how long a completed envelope's id is remembered to recognise late
    /// duplicates (retransmissions whose ack was lost).
    pub expiry: Duration,
    /// Most completed envelope ids remembered; the oldest are forgotten.
    pub remembered_complete: usize,
}

impl Default for ReassemblyLimits {
    /// 1 MiB envelopes, 32 in progress, 16 MiB buffered, a day to complete
    /// (a sender that goes offline mid-envelope resumes by retransmitting),
    /// 4096 completed ids remembered.
    fn default() -> Self {
        ReassemblyLimits {
            max_envelope_len: 1 << 20,
            max_partial: 32,
            max_buffered_bytes: 16 << 20,
            expiry: Duration::from_secs(24 * 3600),
            remembered_complete: 4096,
        }
    }
}

impl ReassemblyLimits {
    /// Checks each limit, naming the one out of range.
    pub fn validate(&self) -> Result<()> {
        let invalid = |key, reason| Err(Error::InvalidLimit { key, reason });
        if self.max_envelope_len > MAX_ENVELOPE_LEN {
            return invalid("max_envelope_len", "more than the 4 MiB hard cap");
        }
        if self.max_partial == 0 {
            return invalid("max_partial", "must be at least 1");
        }
        if self.max_buffered_bytes < self.max_envelope_len {
            return invalid("max_buffered_bytes", "less than max_envelope_len");
        }
        if self.expiry.is_zero() {
            return invalid("expiry", "must be more than zero");
        }
        Ok(())
    }
}

/// What a fragment did to its envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reassembly {
    /// It was the last missing piece: here is the envelope.
    Complete {
        /// Which envelope.
        envelope: EnvelopeId,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Stored; the envelope still misses pieces.
    Incomplete {
        /// Which envelope.
        envelope: EnvelopeId,
        /// Distinct fragments held.
        received: u32,
        /// Fragments in the envelope.
        count: u32,
    },
    /// Already held, or its envelope was already completed: ignored.
    Duplicate {
        /// Which envelope.
        envelope: EnvelopeId,
        /// Which piece.
        index: u32,
    },
}

struct Partial {
    total_len: u32,
    count: u32,
    chunks: BTreeMap<u32, Box<[u8]>>,
    bytes: usize,
    deadline: Option<Instant>,
}

/// Puts envelopes back together from fragments arriving in any order,
/// interleaved, duplicated, within [`ReassemblyLimits`].
pub struct Reassembler {
    limits: ReassemblyLimits,
    partial: HashMap<EnvelopeId, Partial>,
    buffered: usize,
    completed: HashSet<EnvelopeId>,
    completed_order: VecDeque<(Option<Instant>, EnvelopeId)>,
}

impl fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Reassembler({} partial, {} bytes buffered)",
            self.partial.len(),
            self.buffered
        )
    }
}

impl Reassembler {
    /// An empty reassembler; refuses limits that do not validate.
    pub fn new(limits: ReassemblyLimits) -> Result<Self> {
        limits.validate()?;
        Ok(Reassembler {
            limits,
            partial: HashMap::new(),
            buffered: 0,
            completed: HashSet::new(),
            completed_order: VecDeque::new(),
        })
    }

    /// Envelopes in progress.
    pub fn partial_envelopes(&self) -> usize {
        self.partial.len()
    }

    /// Fragment bytes held for envelopes in progress.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// When the next partial envelope expires, if any: call
    /// [`Reassembler::expire`] then.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.partial.values().filter_map(|p| p.deadline).min()
    }

    /// Drops partial envelopes and remembered ids whose time is up at `now`;
    /// returns the envelopes dropped incomplete.
    pub fn expire(&mut self, now: Instant) -> Vec<EnvelopeId> {
        let due = |deadline: &Option<Instant>| deadline.is_some_and(|d| d <= now);
        let expired: Vec<EnvelopeId> = self
            .partial
            .iter()
            .filter(|(_, p)| due(&p.deadline))
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            if let Some(p) = self.partial.remove(id) {
                self.buffered -= p.bytes;
            }
        }
        while let Some((deadline, id)) = self.completed_order.front() {
            if !due(deadline) {
                break;
            }
            self.completed.remove(id);
            self.completed_order.pop_front();
        }
        expired
    }

    /// Takes one fragment received at `now`. Refuses (and forgets nothing
    /// already held) a fragment that contradicts earlier ones, an envelope
    /// over the length limit, and one that would exceed the other limits.
    pub fn insert(&mut self, fragment: Fragment, now: Instant) -> Result<Reassembly> {
        self.expire(now);
        let Fragment {
            envelope,
            index,
            count,
            total_len,
            chunk,
        } = fragment;
        if total_len as usize > self.limits.max_envelope_len {
            return Err(Error::EnvelopeTooLong {
                len: total_len as usize,
                max: self.limits.max_envelope_len,
            });
        }
        if self.completed.contains(&envelope) {
            return Ok(Reassembly::Duplicate { envelope, index });
        }
        let over_budget = |buffered: usize| {
            buffered
                .checked_add(chunk.len())
                .is_none_or(|b| b > self.limits.max_buffered_bytes)
        };
        match self.partial.get_mut(&envelope) {
            Some(p) => {
                if p.total_len != total_len {
                    return Err(Error::InconsistentFragment {
                        field: "total length",
                    });
                }
                if p.count != count {
                    return Err(Error::InconsistentFragment { field: "count" });
                }
                match p.chunks.get(&index) {
                    Some(held) if *held == chunk => {
                        return Ok(Reassembly::Duplicate { envelope, index });
                    }
                    Some(_) => return Err(Error::ConflictingFragment { index }),
                    None => {}
                }
                if over_budget(self.buffered) {
                    return Err(Error::ReassemblyBufferFull {
                        max: self.limits.max_buffered_bytes,
                    });
                }
                self.buffered += chunk.len();
                p.bytes += chunk.len();
                p.chunks.insert(index, chunk);
                let received = p.chunks.len() as u32;
                if received < count {
                    return Ok(Reassembly::Incomplete {
                        envelope,
                        received,
                        count,
                    });
                }
            }
            None if count == 1 => {
                self.remember(envelope, now);
                return Ok(Reassembly::Complete {
                    envelope,
                    bytes: chunk.into_vec(),
                });
            }
            None => {
                if self.partial.len() >= self.limits.max_partial {
                    return Err(Error::TooManyPartialEnvelopes {
                        max: self.limits.max_partial,
                    });
                }
                if over_budget(self.buffered) {
                    return Err(Error::ReassemblyBufferFull {
                        max: self.limits.max_buffered_bytes,
                    });
                }
                self.buffered += chunk.len();
                let bytes = chunk.len();
                self.partial.insert(
                    envelope,
                    Partial {
                        total_len,
                        count,
                        chunks: BTreeMap::from([(index, chunk)]),
                        bytes,
                        deadline: now.checked_add(self.limits.expiry),
                    },
                );
                return Ok(Reassembly::Incomplete {
                    envelope,
                    received: 1,
                    count,
                });
            }
        }
        // Every piece is here.
        let Some(p) = self.partial.remove(&envelope) else {
            return Err(Error::InconsistentFragment {
                field: "envelope id",
            });
        };
        self.buffered -= p.bytes;
        self.remember(envelope, now);
        let mut bytes = Vec::with_capacity(p.total_len as usize);
        for chunk in p.chunks.into_values() {
            bytes.extend_from_slice(&chunk);
        }
        Ok(Reassembly::Complete { envelope, bytes })
    }

    fn remember(&mut self, envelope: EnvelopeId, now: Instant) {
        if self.limits.remembered_complete == 0 {
            return;
        }
        while self.completed_order.len() >= self.limits.remembered_complete {
            if let Some((_, old)) = self.completed_order.pop_front() {
                self.completed.remove(&old);
            }
        }
        self.completed.insert(envelope);
        self.completed_order
            .push_back((now.checked_add(self.limits.expiry), envelope));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, RngExt, SeedableRng};
    use x25519_dalek::{PublicKey, StaticSecret};

    use super::*;
    use crate::{Hop, MailboxId, NodeId, PACKET_LEN, build};

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    fn envelope(len: usize, rng: &mut StdRng) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rng.fill_bytes(&mut v);
        v
    }

    fn reassembler() -> Reassembler {
        Reassembler::new(ReassemblyLimits::default()).unwrap()
    }

    /// Re-encodes `f` with header fields changed, bypassing the checks a
    /// fragment made by [`fragment`] satisfies.
    fn forge(f: &Fragment, id: [u8; 16], total_len: u32, chunk: &[u8]) -> Fragment {
        Fragment {
            envelope: EnvelopeId(id),
            index: f.index,
            count: fragment_count(total_len as usize) as u32,
            total_len,
            chunk: chunk.into(),
        }
    }

    fn surb() -> Surb {
        let sk = StaticSecret::from([1; 32]);
        let hop = Hop {
            node: NodeId([1; 32]),
            sphinx_key: PublicKey::from(&sk),
            delay: Duration::ZERO,
        };
        Surb::build(&[hop], &MailboxId([2; 32])).unwrap().0
    }

    #[test]
    fn a_full_fragment_and_an_ack_surb_fill_exactly_one_packet() {
        assert_eq!(SURB_LEN, 396);
        assert_eq!(FINAL_PAYLOAD_OVERHEAD, 414);
        assert_eq!(MAX_FRAGMENT_LEN, 1617);
        assert_eq!(FRAGMENT_CAPACITY, 1588);
        let fragments = fragment(&[7u8; 3 * FRAGMENT_CAPACITY], &mut rng(1)).unwrap();
        let payload = FinalPayload::new(
            Some(AckRequest {
                id: AckId([3; 16]),
                surb: surb(),
            }),
            &fragments[0],
        );
        let bytes = payload.to_bytes();
        assert_eq!(bytes.len(), MAX_MESSAGE_LEN);
        let sk = StaticSecret::from([4; 32]);
        let hop = Hop {
            node: NodeId([4; 32]),
            sphinx_key: PublicKey::from(&sk),
            delay: Duration::ZERO,
        };
        let packet = build(&[hop], &MailboxId([5; 32]), &bytes).unwrap();
        assert_eq!(packet.as_bytes().len(), PACKET_LEN);
        let back = FinalPayload::from_bytes(&bytes).unwrap();
        assert_eq!(back, payload);
        assert_eq!(
            Fragment::from_bytes(back.fragment_bytes()).unwrap(),
            fragments[0]
        );
    }

    #[test]
    fn ack_bodies_round_trip_and_anything_else_is_refused() {
        let id = AckId([9; 16]);
        let body = id.to_ack_body();
        assert_eq!(body.len(), ACK_BODY_LEN);
        assert_eq!(AckId::from_ack_body(&body).unwrap(), id);
        assert!(AckId::from_ack_body(&body[..16]).is_err());
        let mut longer = body.to_vec();
        longer.push(0);
        assert!(AckId::from_ack_body(&longer).is_err());
        let mut other_version = body;
        other_version[0] = 2;
        assert!(AckId::from_ack_body(&other_version).is_err());
    }

    #[test]
    fn an_envelope_that_fits_is_one_fragment() {
        let mut r = rng(2);
        for len in [0, 1, FRAGMENT_CAPACITY] {
            let env = envelope(len, &mut r);
            let f = fragment(&env, &mut r).unwrap();
            assert_eq!(f.len(), 1, "{len}");
            assert_eq!((f[0].index(), f[0].count()), (0, 1));
            assert_eq!(f[0].chunk(), &env[..]);
        }
        let f = fragment(&[0; FRAGMENT_CAPACITY + 1], &mut r).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].chunk().len(), 1);
        assert_eq!(f[0].envelope(), f[1].envelope());
        assert_ne!(
            fragment(b"x", &mut r).unwrap()[0].envelope(),
            fragment(b"x", &mut r).unwrap()[0].envelope()
        );
    }

    #[test]
    fn encodings_are_pinned() {
        let f = Fragment {
            envelope: EnvelopeId([0xee; 16]),
            index: 1,
            count: 2,
            total_len: FRAGMENT_CAPACITY as u32 + 3,
            chunk: b"abc".to_vec().into(),
        };
        let bytes = f.to_bytes();
        assert_eq!(
            hex::encode(&bytes),
            "01eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee000000010000000200000637616263"
        );
        assert_eq!(Fragment::from_bytes(&bytes).unwrap(), f);
        let p = FinalPayload::new(None, &f).to_bytes();
        assert_eq!(hex::encode(&p[..2]), "0100");
        assert_eq!(&p[2..], &bytes[..]);
        let s = surb();
        let p = FinalPayload::new(
            Some(AckRequest {
                id: AckId([0xaa; 16]),
                surb: s.clone(),
            }),
            &f,
        )
        .to_bytes();
        assert_eq!(hex::encode(&p[..18]), format!("0101{}", "aa".repeat(16)));
        assert_eq!(&p[18..18 + SURB_LEN], s.as_bytes());
        assert_eq!(&p[18 + SURB_LEN..], &bytes[..]);
    }

    /// Many envelopes of random sizes, their fragments shuffled together
    /// with random duplicates: each completes exactly once, intact, on its
    /// last distinct fragment, and every repeat is reported as a duplicate.
    #[test]
    fn shuffled_interleaved_duplicated_fragments_reassemble_exactly_once() {
        for seed in 0..20 {
            let mut r = rng(seed);
            let envelopes: Vec<Vec<u8>> = (0..8)
                .map(|_| {
                    let len = match r.random_range(0..4) {
                        0 => r.random_range(0..=FRAGMENT_CAPACITY),
                        1 => r.random_range(FRAGMENT_CAPACITY..4 * FRAGMENT_CAPACITY),
                        _ => r.random_range(0..40_000),
                    };
                    envelope(len, &mut r)
                })
                .collect();
            let mut all: Vec<Fragment> = Vec::new();
            let mut by_id = HashMap::new();
            for env in &envelopes {
                let f = fragment(env, &mut r).unwrap();
                by_id.insert(f[0].envelope(), (env.clone(), f.len()));
                all.extend(f);
            }
            let distinct = all.len();
            let extra: Vec<Fragment> = (0..distinct / 3)
                .map(|_| all[r.random_range(0..distinct)].clone())
                .collect();
            all.extend(extra);
            all.shuffle(&mut r);

            let mut reasm = reassembler();
            let now = Instant::now();
            let mut seen = HashSet::new();
            let mut done = HashMap::new();
            for f in all {
                let key = (f.envelope(), f.index());
                match reasm.insert(f, now).unwrap() {
                    Reassembly::Complete { envelope, bytes } => {
                        assert!(seen.insert(key));
                        let (expected, count) = &by_id[&envelope];
                        assert_eq!(&bytes, expected);
                        let got = seen.iter().filter(|(e, _)| *e == envelope).count();
                        assert_eq!(got, *count, "completed before every piece arrived");
                        assert!(done.insert(envelope, ()).is_none(), "completed twice");
                    }
                    Reassembly::Incomplete {
                        envelope, received, ..
                    } => {
                        assert!(seen.insert(key));
                        let got = seen.iter().filter(|(e, _)| *e == envelope).count();
                        assert_eq!(received as usize, got);
                    }
                    Reassembly::Duplicate { .. } => assert!(!seen.insert(key)),
                }
            }
            assert_eq!(done.len(), envelopes.len(), "seed {seed}");
            assert_eq!(seen.len(), distinct);
            assert_eq!(reasm.partial_envelopes(), 0);
            assert_eq!(reasm.buffered_bytes(), 0);
        }
    }

    #[test]
    fn one_mebibyte_round_trips_and_the_limits_are_enforced() {
        let mut r = rng(3);
        let env = envelope(1 << 20, &mut r);
        let mut frags = fragment(&env, &mut r).unwrap();
        assert_eq!(frags.len(), (1usize << 20).div_ceil(FRAGMENT_CAPACITY));
        frags.reverse();
        let mut reasm = reassembler();
        let now = Instant::now();
        let mut out = None;
        for f in frags {
            if let Reassembly::Complete { bytes, .. } = reasm.insert(f, now).unwrap() {
                out = Some(bytes);
            }
        }
        assert_eq!(out.as_deref(), Some(&env[..]));

        // The hard cap: fragmenting refuses more, the decoder too.
        assert_eq!(
            fragment(&vec![0; MAX_ENVELOPE_LEN], &mut r).unwrap().len(),
            MAX_ENVELOPE_LEN.div_ceil(FRAGMENT_CAPACITY)
        );
        assert!(matches!(
            fragment(&vec![0; MAX_ENVELOPE_LEN + 1], &mut r),
            Err(Error::EnvelopeTooLong { .. })
        ));
        // The configured limit (1 MiB by default) refuses an envelope one
        // byte longer, whichever of its fragments comes first.
        let big = fragment(&vec![0; (1 << 20) + 1], &mut r).unwrap();
        for f in [&big[0], &big[big.len() - 1]] {
            assert!(matches!(
                reasm.insert(f.clone(), now),
                Err(Error::EnvelopeTooLong { len, max }) if len == (1 << 20) + 1 && max == 1 << 20
            ));
        }
        assert_eq!(reasm.partial_envelopes(), 0);
    }

    #[test]
    fn inconsistent_and_conflicting_fragments_are_refused() {
        let mut r = rng(4);
        let frags = fragment(&envelope(3 * FRAGMENT_CAPACITY, &mut r), &mut r).unwrap();
        let id = frags[0].envelope().0;
        let mut reasm = reassembler();
        let now = Instant::now();
        reasm.insert(frags[0].clone(), now).unwrap();
        let before = reasm.buffered_bytes();

        // Same id, another total length (and so another count).
        let other_len = forge(
            &frags[1],
            id,
            2 * FRAGMENT_CAPACITY as u32 + 1,
            frags[1].chunk(),
        );
        assert!(matches!(
            reasm.insert(other_len, now),
            Err(Error::InconsistentFragment {
                field: "total length"
            })
        ));
        // Same length, one byte more: count differs from the first fragment.
        let longer = forge(
            &frags[1],
            id,
            3 * FRAGMENT_CAPACITY as u32 + 1,
            frags[1].chunk(),
        );
        assert!(reasm.insert(longer, now).is_err());
        // The same piece again with other bytes.
        let mut chunk = frags[0].chunk().to_vec();
        chunk[0] ^= 1;
        assert!(matches!(
            reasm.insert(forge(&frags[0], id, frags[0].total_len, &chunk), now),
            Err(Error::ConflictingFragment { index: 0 })
        ));
        assert_eq!(reasm.buffered_bytes(), before);
        // The honest pieces still complete the envelope.
        assert!(matches!(
            reasm.insert(frags[0].clone(), now).unwrap(),
            Reassembly::Duplicate { index: 0, .. }
        ));
        reasm.insert(frags[1].clone(), now).unwrap();
        assert!(matches!(
            reasm.insert(frags[2].clone(), now).unwrap(),
            Reassembly::Complete { .. }
        ));
    }

    #[test]
    fn a_retransmission_after_completion_is_a_duplicate_not_a_second_delivery() {
        let mut r = rng(5);
        let mut reasm = reassembler();
        let now = Instant::now();
        let single = fragment(b"short", &mut r).unwrap().remove(0);
        assert!(matches!(
            reasm.insert(single.clone(), now).unwrap(),
            Reassembly::Complete { .. }
        ));
        assert!(matches!(
            reasm.insert(single.clone(), now).unwrap(),
            Reassembly::Duplicate { index: 0, .. }
        ));
        let multi = fragment(&[1; 2 * FRAGMENT_CAPACITY], &mut r).unwrap();
        reasm.insert(multi[0].clone(), now).unwrap();
        reasm.insert(multi[1].clone(), now).unwrap();
        assert!(matches!(
            reasm.insert(multi[1].clone(), now).unwrap(),
            Reassembly::Duplicate { index: 1, .. }
        ));
        // A late piece must not start a partial envelope that never ends.
        assert_eq!(reasm.partial_envelopes(), 0);
        // Once the memory expires, the id is forgotten.
        let later = now + ReassemblyLimits::default().expiry;
        assert!(matches!(
            reasm.insert(single, later).unwrap(),
            Reassembly::Complete { .. }
        ));
    }

    #[test]
    fn remembered_ids_are_bounded() {
        let mut r = rng(6);
        let mut reasm = Reassembler::new(ReassemblyLimits {
            remembered_complete: 2,
            ..ReassemblyLimits::default()
        })
        .unwrap();
        let now = Instant::now();
        let f: Vec<Fragment> = (0..3)
            .map(|_| fragment(b"m", &mut r).unwrap().remove(0))
            .collect();
        for x in &f {
            reasm.insert(x.clone(), now).unwrap();
        }
        // The oldest was forgotten; the two latest are still recognised.
        assert!(matches!(
            reasm.insert(f[2].clone(), now).unwrap(),
            Reassembly::Duplicate { .. }
        ));
        assert!(matches!(
            reasm.insert(f[1].clone(), now).unwrap(),
            Reassembly::Duplicate { .. }
        ));
        assert!(matches!(
            reasm.insert(f[0].clone(), now).unwrap(),
            Reassembly::Complete { .. }
        ));
    }

    #[test]
    fn partial_and_buffer_limits_hold_and_single_fragments_still_pass() {
        let mut r = rng(7);
        let now = Instant::now();
        let mut reasm = Reassembler::new(ReassemblyLimits {
            max_envelope_len: 3 * FRAGMENT_CAPACITY,
            max_partial: 2,
            max_buffered_bytes: 3 * FRAGMENT_CAPACITY,
            ..ReassemblyLimits::default()
        })
        .unwrap();
        let envs: Vec<Vec<Fragment>> = (0..3)
            .map(|_| fragment(&[9; 3 * FRAGMENT_CAPACITY], &mut r).unwrap())
            .collect();
        reasm.insert(envs[0][0].clone(), now).unwrap();
        reasm.insert(envs[1][0].clone(), now).unwrap();
        assert!(matches!(
            reasm.insert(envs[2][0].clone(), now),
            Err(Error::TooManyPartialEnvelopes { max: 2 })
        ));
        reasm.insert(envs[0][1].clone(), now).unwrap();
        assert_eq!(reasm.buffered_bytes(), 3 * FRAGMENT_CAPACITY);
        assert!(matches!(
            reasm.insert(envs[1][1].clone(), now),
            Err(Error::ReassemblyBufferFull { .. })
        ));
        // Needing no buffer, a single-fragment envelope completes anyway.
        let single = fragment(b"hi", &mut r).unwrap().remove(0);
        assert!(matches!(
            reasm.insert(single, now).unwrap(),
            Reassembly::Complete { bytes, .. } if bytes == b"hi"
        ));
        assert_eq!(reasm.partial_envelopes(), 2);
        assert_eq!(reasm.buffered_bytes(), 3 * FRAGMENT_CAPACITY);
    }

    #[test]
    fn partial_envelopes_expire_and_free_their_buffer() {
        let mut r = rng(8);
        let expiry = Duration::from_secs(600);
        let mut reasm = Reassembler::new(ReassemblyLimits {
            expiry,
            ..ReassemblyLimits::default()
        })
        .unwrap();
        let t0 = Instant::now();
        let frags = fragment(&[1; 2 * FRAGMENT_CAPACITY + 5], &mut r).unwrap();
        let id = frags[0].envelope();
        assert_eq!(reasm.next_expiry(), None);
        reasm.insert(frags[0].clone(), t0).unwrap();
        reasm
            .insert(frags[1].clone(), t0 + Duration::from_secs(300))
            .unwrap();
        // The deadline counts from the first fragment.
        assert_eq!(reasm.next_expiry(), Some(t0 + expiry));
        assert!(
            reasm
                .expire(t0 + expiry - Duration::from_nanos(1))
                .is_empty()
        );
        assert_eq!(reasm.buffered_bytes(), 2 * FRAGMENT_CAPACITY);
        assert_eq!(reasm.expire(t0 + expiry), vec![id]);
        assert_eq!(reasm.buffered_bytes(), 0);
        assert_eq!(reasm.partial_envelopes(), 0);
        assert_eq!(reasm.next_expiry(), None);
        // The last piece arriving after expiry starts over instead of
        // completing from forgotten pieces.
        assert!(matches!(
            reasm.insert(frags[2].clone(), t0 + expiry).unwrap(),
            Reassembly::Incomplete { received: 1, .. }
        ));
        // insert expires on its own too.
        let t1 = t0 + 3 * expiry;
        reasm.insert(frags[0].clone(), t1).unwrap();
        assert!(matches!(
            reasm.insert(frags[1].clone(), t1).unwrap(),
            Reassembly::Incomplete { received: 2, .. }
        ));
    }

    #[test]
    fn limits_are_validated_by_name() {
        let bad = [
            ReassemblyLimits {
                max_envelope_len: MAX_ENVELOPE_LEN + 1,
                max_buffered_bytes: usize::MAX,
                ..ReassemblyLimits::default()
            },
            ReassemblyLimits {
                max_partial: 0,
                ..ReassemblyLimits::default()
            },
            ReassemblyLimits {
                max_buffered_bytes: 1,
                ..ReassemblyLimits::default()
            },
            ReassemblyLimits {
                expiry: Duration::ZERO,
                ..ReassemblyLimits::default()
            },
        ];
        let keys: Vec<&str> = bad
            .iter()
            .map(|l| match Reassembler::new(l.clone()) {
                Err(Error::InvalidLimit { key, .. }) => key,
                other => panic!("accepted {l:?}: {other:?}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "max_envelope_len",
                "max_partial",
                "max_buffered_bytes",
                "expiry"
            ]
        );
        // A huge expiry means "never", not an overflow.
        let mut reasm = Reassembler::new(ReassemblyLimits {
            expiry: Duration::MAX,
            ..ReassemblyLimits::default()
        })
        .unwrap();
        let f = fragment(&[0; FRAGMENT_CAPACITY + 1], &mut rng(9)).unwrap();
        reasm.insert(f[0].clone(), Instant::now()).unwrap();
        assert_eq!(reasm.next_expiry(), None);
    }

    #[test]
    fn decoders_reject_malformed_input_with_reasons() {
        let mut r = rng(10);
        let f = fragment(&[5; FRAGMENT_CAPACITY + 10], &mut r).unwrap();
        let good = f[1].to_bytes();
        let reason = |bytes: &[u8]| match Fragment::from_bytes(bytes) {
            Err(Error::MalformedEncoding { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(&good[..FRAGMENT_HEADER_LEN - 1]),
            "shorter than its header"
        );
        assert_eq!(
            reason(&[0; MAX_FRAGMENT_LEN + 1]),
            "longer than a fragment can be"
        );
        let edit = |at: usize, v: &[u8]| {
            let mut b = good.clone();
            b[at..at + v.len()].copy_from_slice(v);
            b
        };
        assert_eq!(reason(&edit(0, &[2])), "unknown version");
        assert_eq!(reason(&edit(17, &2u32.to_be_bytes())), "index beyond count");
        assert_eq!(
            reason(&edit(21, &3u32.to_be_bytes())),
            "count does not match the total length"
        );
        assert_eq!(
            reason(&edit(25, &(MAX_ENVELOPE_LEN as u32 + 1).to_be_bytes())),
            "envelope longer than the hard cap"
        );
        assert_eq!(
            reason(&good[..good.len() - 1]),
            "chunk length does not match its position"
        );
        assert_eq!(
            reason(&edit(17, &0u32.to_be_bytes())),
            "chunk length does not match its position"
        );

        let payload = FinalPayload::new(
            Some(AckRequest {
                id: AckId([1; 16]),
                surb: surb(),
            }),
            &f[0],
        )
        .to_bytes();
        let reason = |bytes: &[u8]| match FinalPayload::from_bytes(bytes) {
            Err(Error::MalformedEncoding { reason, .. }) => reason,
            Err(Error::WrongSurbLength { .. }) => "surb",
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(&[]), "shorter than its header");
        assert_eq!(reason(&[1]), "shorter than its header");
        assert_eq!(reason(&[2, 0]), "unknown version");
        assert_eq!(reason(&[1, 2]), "unknown flags");
        assert_eq!(reason(&[1, 3]), "unknown flags");
        assert_eq!(reason(&payload[..10]), "truncated ack id");
        assert_eq!(reason(&payload[..100]), "truncated ack SURB");
        let mut long = payload.clone();
        long.push(0);
        assert_eq!(reason(&long), "longer than one packet's message");
        let mut no_ack = vec![1, 0];
        no_ack.extend(vec![0; MAX_FRAGMENT_LEN + 1]);
        assert_eq!(reason(&no_ack), "fragment longer than a fragment can be");
        assert_eq!(
            FinalPayload::from_bytes(&payload[..18 + SURB_LEN])
                .unwrap()
                .fragment_bytes(),
            b""
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn header(id: u8, index: u32, count: u32, total: u32) -> Vec<u8> {
            let mut b = vec![FRAGMENT_VERSION];
            b.extend_from_slice(&[id; 16]);
            b.extend_from_slice(&index.to_be_bytes());
            b.extend_from_slice(&count.to_be_bytes());
            b.extend_from_slice(&total.to_be_bytes());
            b
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn decoders_never_panic_and_accept_only_canonical_bytes(
                bytes in proptest::collection::vec(any::<u8>(), 0..MAX_MESSAGE_LEN + 2),
            ) {
                if let Ok(f) = Fragment::from_bytes(&bytes) {
                    prop_assert_eq!(f.to_bytes(), bytes.clone());
                }
                if let Ok(p) = FinalPayload::from_bytes(&bytes) {
                    prop_assert_eq!(p.to_bytes(), bytes);
                }
            }

            /// Fragments with plausible headers (small ids so that they
            /// collide) in any order: the reassembler never panics, its
            /// buffer stays within the limit and is empty once expired.
            #[test]
            fn reassembler_survives_arbitrary_fragments(
                inputs in proptest::collection::vec(
                    (0u8..3, 0u32..4, 0u32..5, 0u32..(4 * FRAGMENT_CAPACITY as u32), any::<u8>()),
                    0..40,
                ),
            ) {
                let limits = ReassemblyLimits {
                    max_envelope_len: 3 * FRAGMENT_CAPACITY,
                    max_partial: 2,
                    max_buffered_bytes: 4 * FRAGMENT_CAPACITY,
                    ..ReassemblyLimits::default()
                };
                let mut reasm = Reassembler::new(limits.clone()).unwrap();
                let now = Instant::now();
                for (id, index, count, total, fill) in inputs {
                    let start = (index as usize).saturating_mul(FRAGMENT_CAPACITY);
                    let len = (total as usize).saturating_sub(start).min(FRAGMENT_CAPACITY);
                    let mut b = header(id, index, count, total);
                    b.extend(std::iter::repeat_n(fill, len));
                    if let Ok(f) = Fragment::from_bytes(&b) {
                        let _ = reasm.insert(f, now);
                    }
                    prop_assert!(reasm.buffered_bytes() <= limits.max_buffered_bytes);
                    prop_assert!(reasm.partial_envelopes() <= limits.max_partial);
                }
                reasm.expire(now + limits.expiry);
                prop_assert_eq!(reasm.buffered_bytes(), 0);
            }
        }
    }
}
