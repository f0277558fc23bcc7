//! Errors of circuits.

use crate::Reason;

/// What can go wrong building, relaying or using a circuit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The circuit's route is not usable.
    #[error("bad circuit route: {0}")]
    BadRoute(String),
    /// A peer sent bytes that are not a circuit message.
    #[error("malformed circuit message: {0}")]
    Malformed(String),
    /// A relay received a Sphinx packet that is not a circuit setup.
    #[error("not a circuit setup packet: {0}")]
    NotSetup(&'static str),
    /// A data cell did not authenticate under the circuit's keys.
    #[error("a circuit cell did not authenticate (altered on the way, or not of this circuit)")]
    CellAuthentication,
    /// Sealing a cell failed.
    #[error("sealing a circuit cell failed")]
    Seal,
    /// 2^64 cells in one direction: the circuit must be rebuilt.
    #[error("the circuit's cell counter is exhausted")]
    CircuitExhausted,
    /// The circuit ended.
    #[error("the circuit was closed: {0}")]
    Destroyed(Reason),
    /// A step did not finish in time.
    #[error("{what} did not happen within {secs} s")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// The limit.
        secs: u64,
    },
    /// The circuit's link failed.
    #[error("circuit link: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting to a relay failed.
    #[error(transparent)]
    Link(#[from] bastet_link::Error),
}

impl Error {
    pub(crate) fn malformed(e: impl std::fmt::Display) -> Self {
        Error::Malformed(e.to_string())
    }
}
