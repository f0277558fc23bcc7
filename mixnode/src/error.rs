use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

/// What stopped the mixnode from starting or running.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is wrong; `key` names it as written in the file.
    #[error("configuration key `{key}`: {why}")]
    Config {
        /// The key at fault.
        key: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// `init` found keys already there and will not replace them.
    #[error("{0} already exists; refusing to overwrite a node's keys (use another --dir)")]
    KeysExist(PathBuf),
    /// Reading or writing a file of the node failed.
    #[error("cannot access {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr} (`{key}`): {source}")]
    Bind {
        /// The config key of the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A part of the node that must run forever stopped.
    #[error("the {what} stopped: {why}")]
    TaskFailed {
        /// Which part.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// The directory (config section, keys, descriptors, authorities).
    #[error(transparent)]
    Directory(#[from] bastet_directory::Error),
    /// The TLS link (certificate files, listeners).
    #[error(transparent)]
    Link(#[from] bastet_link::Error),
}
