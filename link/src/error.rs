use std::path::PathBuf;

use thiserror::Error;

/// What went wrong on a link.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a key or certificate file failed.
    #[error("cannot access {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate or key file does not hold what it should.
    #[error("{path} is not a valid {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was expected in it.
        what: &'static str,
    },
    /// Generating a certificate failed.
    #[error("cannot generate TLS certificate: {0}")]
    CertGen(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    /// A pin is not 64 hex digits.
    #[error("certificate pin must be 64 hex digits, got {0:?}")]
    BadPin(String),
    /// Connecting to a peer failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The peer's address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Building the HTTPS client failed.
    #[error("cannot build HTTPS client: {0}")]
    Http(#[from] reqwest::Error),
    /// Serving HTTPS failed.
    #[error("HTTPS server on {addr} failed: {source}")]
    Serve {
        /// The listen address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}
