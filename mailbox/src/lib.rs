#![doc = include_str!("../README.md")]

pub mod api;
mod error;

pub use api::{MailboxClient, StoredMessage};
pub use error::Error;

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;
