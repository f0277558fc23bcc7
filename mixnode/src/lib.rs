#![doc = include_str!("../README.md")]

mod config;
mod error;
mod metrics;
mod mixer;
mod node;
mod replay;

pub use config::{
    CONFIG_FILE, ENV_PREFIX, InitOptions, InitReport, MixnodeConfig, PACKET_LOG_LIMIT, init,
};
pub use error::Error;
pub use mixer::{
    DropReason, Mixer, MixerConfig, MixerStats, Outcome, Transmit, Unwrapped, Unwrapper, route,
};
pub use node::{Mixnode, run};
pub use replay::GENERATION_FP_RATE;

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
