use std::path::PathBuf;

use thiserror::Error;

/// What went wrong with a directory document, key or request.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A document is larger than its bound.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which document.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A document does not decode.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which document.
        what: &'static str,
        /// The decoder's complaint.
        why: String,
    },
    /// A descriptor field is out of range.
    #[error("invalid descriptor field `{field}`: {why}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A signature does not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// The descriptor's node id is not the hash of its identity key.
    #[error("descriptor node id does not match its identity key")]
    NodeIdMismatch,
    /// Fewer than the required number of pinned authorities signed.
    #[error("consensus has {valid} valid signatures from pinned authorities, {required} required")]
    NotEnoughSignatures {
        /// Valid signatures by distinct pinned keys.
        valid: usize,
        /// The threshold.
        required: usize,
    },
    /// The consensus is not valid at this time.
    #[error(
        "consensus for epoch {epoch} is valid from {valid_after} to {valid_until} (unix seconds), now is {now}"
    )]
    ConsensusNotValidNow {
        /// Its epoch.
        epoch: u64,
        /// Start of validity.
        valid_after: u64,
        /// End of validity.
        valid_until: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// A key file is missing, unreadable or malformed.
    #[error("key file {path}: {why}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The node holds no Sphinx key for an epoch it was asked to publish.
    #[error("no Sphinx key for epoch {epoch}")]
    NoSphinxKey {
        /// The epoch.
        epoch: u64,
    },
    /// A configuration file or value is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// No authority served a consensus for the epoch that the client
    /// accepts.
    #[error(
        "no consensus for epoch {epoch} signed by at least {threshold} of the pinned authorities \
         is available (they may be unreachable or unable to agree); nothing can be sent until \
         one is. The authorities said: {details}"
    )]
    NoConsensus {
        /// The epoch asked for.
        epoch: u64,
        /// Signatures required.
        threshold: usize,
        /// Each authority's answer.
        details: String,
    },
    /// Talking to an authority failed.
    #[error("directory authority {url}: {why}")]
    Authority {
        /// The authority's URL.
        url: String,
        /// What happened.
        why: String,
    },
    /// A link (TLS) problem.
    #[error(transparent)]
    Link(#[from] bastet_link::Error),
}

impl Error {
    pub(crate) fn malformed(what: &'static str, why: impl std::fmt::Display) -> Self {
        Error::Malformed {
            what,
            why: why.to_string(),
        }
    }
}
