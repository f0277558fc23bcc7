use thiserror::Error;

/// What went wrong in the mailbox server or while talking to one.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A TLS link or key-file problem.
    #[error(transparent)]
    Link(#[from] bastet_link::Error),
    /// A directory, key or configuration problem.
    #[error(transparent)]
    Directory(#[from] bastet_directory::Error),
    /// The mailbox server could not be reached or did not answer.
    #[error("mailbox server {url}: {why}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// What happened.
        why: String,
    },
    /// The mailbox server refused the request; `why` is its explanation.
    #[error("mailbox server refused the request ({status}): {why}")]
    Refused {
        /// HTTP status code.
        status: u16,
        /// The server's plain-text reason.
        why: String,
    },
    /// The mailbox server answered something that is not the API.
    #[error("mailbox server sent an invalid response: {0}")]
    BadResponse(String),
    /// A configuration value is wrong; the message names the key.
    #[error("configuration: {0}")]
    Config(String),
    /// The data directory or a file in it cannot be used.
    #[error("{path}: {why}")]
    File {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The message store failed (disk full, corruption, ...).
    #[cfg(feature = "server")]
    #[error("message store: {0}")]
    Store(#[from] rocksdb::Error),
    /// The message store holds data this version cannot read.
    #[error("message store is corrupt: {0}")]
    CorruptStore(String),
    /// A mailbox id is unknown to this server.
    #[error("no such mailbox")]
    UnknownMailbox,
    /// This server already holds `max_mailboxes` mailboxes.
    #[error("this server holds its maximum of {0} mailboxes")]
    TooManyMailboxes(u64),
    /// A mailbox id is registered to another owner key.
    #[error("the mailbox belongs to another key")]
    NotOwner,
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Which listener (`listen`, `api_listen`, `metrics_listen`).
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}
