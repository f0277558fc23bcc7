#![doc = include_str!("../README.md")]

mod delay;
mod error;
mod fragment;
mod packet;
mod replay;
mod surb;
mod types;

pub use delay::exp_delay;
pub use error::Error;
pub use fragment::{
    ACK_BODY_LEN, ACK_BODY_VERSION, AckId, AckRequest, EnvelopeId, FINAL_PAYLOAD_OVERHEAD,
    FINAL_PAYLOAD_VERSION, FRAGMENT_CAPACITY, FRAGMENT_HEADER_LEN, FRAGMENT_VERSION, FinalPayload,
    Fragment, MAX_ENVELOPE_LEN, MAX_FRAGMENT_LEN, Reassembler, Reassembly, ReassemblyLimits,
    fragment,
};
pub use packet::{
    Hop, HopSecret, MAX_HOPS, MAX_MESSAGE_LEN, PACKET_LEN, PAYLOAD_SIZE, Packet, Prepared,
    Processed, ReplayTag, build, build_with_hop_secrets, build_with_secret,
};
pub use replay::{REPLAY_FILTER_FP_RATE, ReplayFilter};
pub use surb::{
    MAX_SURB_KEYS_LEN, SEALED_REPLY_LEN, SURB_LEN, SealedReply, Surb, SurbId, SurbKeys,
};
pub use types::{MailboxId, NodeId};

/// Re-exported so that every crate names Sphinx keys with the same types.
pub use x25519_dalek::{PublicKey as SphinxPublicKey, StaticSecret as SphinxSecretKey};

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
