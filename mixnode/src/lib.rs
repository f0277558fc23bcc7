#![doc = include_str!("../README.md")]

mod config;
mod cover;
mod error;
mod metrics;
mod mixer;
mod node;

pub use config::{
    CONFIG_FILE, ENV_PREFIX, InitOptions, InitReport, MixnodeConfig, PacketWork, init,
};
pub use cover::{
    CoverPacket, CoverSkipped, LOOP_SLACK, LoopReply, LoopTracker, MAX_COVER_HOP_DELAY,
    MAX_PENDING_LOOPS, PendingLoop, cover_gap, cover_packet, loop_id,
};
pub use error::Error;
pub use mixer::{
    DropReason, Mixer, MixerConfig, MixerStats, Outcome, Transmit, Unwrapped, Unwrapper, route,
};
pub use node::{DRAIN_BOUND, Mixnode, run};

/// The `packet_log` file stops growing at this size.
pub use bastet_link::PACKET_LOG_LIMIT;

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
