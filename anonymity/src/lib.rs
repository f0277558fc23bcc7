#![doc = include_str!("../README.md")]

mod analysis;
pub mod attack;
pub mod entropy;
mod error;
mod network;
pub mod plot;
mod preset;
mod sim;
pub mod sweep;
mod trace;

pub use analysis::{AnalysisConfig, AnalysisReport, Summary, analyse, latencies_ms};
pub use attack::AttackReport;
pub use entropy::{Attribution, Attributor, Pruning, entropy_bits};
pub use error::Error;
pub use network::Network;
pub use preset::{DEFAULT_MIX_COVER_RATE, PRESETS, Preset};
pub use sim::{Crypto, MAX_CLIENTS, MAX_DURATION, SimConfig, SimOutput, SimStats, simulate};
pub use trace::{
    Endpoint, GroundTruth, LinkEvent, MAX_TRACE_LINE, MessageTruth, Observation, TRACE_VERSION,
    Trace, TraceMeta,
};

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
