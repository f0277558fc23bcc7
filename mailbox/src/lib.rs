#![doc = include_str!("../README.md")]

pub mod api;
#[cfg(feature = "server")]
mod config;
mod error;
#[cfg(feature = "server")]
mod hop;
#[cfg(feature = "server")]
mod http;
#[cfg(feature = "server")]
mod metrics;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod store;

pub use api::{MailboxClient, StoredMessage};
#[cfg(feature = "server")]
pub use config::{ENV_PREFIX, InitInfo, InitOptions, MailboxConfig, init, read_directory_file};
pub use error::Error;
#[cfg(feature = "server")]
pub use hop::{AckDropped, FinalHop, Opened, Rejected, ack_packet};
#[cfg(feature = "server")]
pub use server::{run, run_until};
#[cfg(feature = "server")]
pub use store::{Delivery, Store, StoreLimits};

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
