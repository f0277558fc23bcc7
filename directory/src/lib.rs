#![doc = include_str!("../README.md")]

pub mod backup;
mod client;
mod config;
mod consensus;
mod descriptor;
mod error;
mod keys;
mod rotation;
pub mod server;
mod vote;

pub use client::{ConsensusWatch, DirectoryClient, publish_forever};
pub use config::{AuthorityRef, DirectoryConfig, load_config, parse_config};
pub use consensus::{
    AuthoritySignature, Consensus, MIX_LAYERS, SignedConsensus, VerifiedConsensus,
};
pub use descriptor::{
    Descriptor, MAX_DESCRIPTOR_LEN, Role, SignedDescriptor, epoch_bounds, epoch_of, unix_now,
};
pub use error::Error;
pub use keys::{NodeKeys, read_key_file, relay_check_report, write_key_file};
pub use rotation::{
    EpochKey, Rotation, SPHINX_KEYS_DIR, SphinxKeyRing, default_sphinx_key_grace_secs,
    publish_rotating_forever, relay_readiness, rotate_forever, sphinx_key_path,
};
pub use vote::{MAX_VOTE_LEN, SignedVote, Vote, consensus_from_votes, majority};

/// Ed25519 types every crate uses for identities and signatures.
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
