use thiserror::Error;

/// What went wrong while building or processing a packet.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A route must have between 1 and [`crate::MAX_HOPS`] hops.
    #[error("a route must have 1 to {max} hops, got {got}")]
    BadRouteLength {
        /// Hops given.
        got: usize,
        /// Most hops allowed.
        max: usize,
    },
    /// The message does not fit in one packet.
    #[error("message of {len} bytes does not fit one packet (at most {max})")]
    MessageTooLong {
        /// Bytes given.
        len: usize,
        /// Bytes that fit.
        max: usize,
    },
    /// The bytes are not a packet of the one size class Bastet uses.
    #[error("packet has {got} bytes, expected exactly {expected}")]
    WrongPacketLength {
        /// Bytes received.
        got: usize,
        /// The only length accepted.
        expected: usize,
    },
    /// The packet did not decode, or failed a check after its header
    /// authenticated (payload, version, small-order group element).
    #[error("malformed or unauthenticated packet: {0}")]
    Malformed(String),
    /// The packet's header authenticates under none of the keys tried: it
    /// was built for a key this relay does not hold (an erased or unknown
    /// epoch's key, another node's), or it was corrupted on the way. The two
    /// cannot be told apart: a Sphinx header names no key.
    #[error("packet header authenticates under none of this node's Sphinx keys")]
    UnknownKey,
    /// A delay does not fit the wire encoding.
    #[error("delay of {0:?} is too long to encode")]
    DelayTooLong(std::time::Duration),
    /// The bytes are not a SURB of the one size Bastet uses.
    #[error("SURB has {got} bytes, expected exactly {expected}")]
    WrongSurbLength {
        /// Bytes received.
        got: usize,
        /// The only length accepted.
        expected: usize,
    },
    /// The reply was sealed under another SURB than these keys belong to.
    #[error("reply keys are for another SURB")]
    WrongReplyKeys,
    /// Bytes meant as a fragment, a final payload or stored reply keys do
    /// not decode; `what` names the structure, `reason` the defect.
    #[error("malformed {what}: {reason}")]
    MalformedEncoding {
        /// The structure being decoded.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An envelope is longer than the limit in force.
    #[error("envelope of {len} bytes exceeds the limit of {max}")]
    EnvelopeTooLong {
        /// Bytes given or announced.
        len: usize,
        /// Most bytes allowed.
        max: usize,
    },
    /// A fragment disagrees with earlier fragments of the same envelope.
    #[error("fragment disagrees with earlier fragments of its envelope: {field} differs")]
    InconsistentFragment {
        /// The header field that differs.
        field: &'static str,
    },
    /// A fragment index already received arrived again with other bytes.
    #[error("fragment {index} arrived twice with different contents")]
    ConflictingFragment {
        /// The index received twice.
        index: u32,
    },
    /// Reassembly already tracks as many incomplete envelopes as allowed.
    #[error("already reassembling {max} envelopes, the limit")]
    TooManyPartialEnvelopes {
        /// The limit.
        max: usize,
    },
    /// Buffering this fragment would exceed the reassembly memory limit.
    #[error("reassembly buffer would exceed its limit of {max} bytes")]
    ReassemblyBufferFull {
        /// The limit in bytes.
        max: usize,
    },
    /// A limit in a configuration is out of range; `key` names it.
    #[error("invalid limit {key}: {reason}")]
    InvalidLimit {
        /// The configuration field.
        key: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },
}

impl Error {
    pub(crate) fn malformed(e: impl std::fmt::Display) -> Self {
        Error::Malformed(e.to_string())
    }
}
