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
    /// The packet did not decode or authenticate under this node's key: it is
    /// corrupt, truncated, forged, or built for another node or key.
    #[error("malformed or unauthenticated packet: {0}")]
    Malformed(String),
    /// A delay does not fit the wire encoding.
    #[error("delay of {0:?} is too long to encode")]
    DelayTooLong(std::time::Duration),
}

impl Error {
    pub(crate) fn malformed(e: impl std::fmt::Display) -> Self {
        Error::Malformed(e.to_string())
    }
}
