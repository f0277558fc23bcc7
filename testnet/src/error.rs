use std::path::PathBuf;

use thiserror::Error;

/// What went wrong while bringing up, using or stopping a testnet.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A Bastet binary the testnet runs is not where it looked.
    #[error(
        "cannot find `{name}` in {dir}; build the binaries first (`cargo build --workspace --bins`) \
         or point BASTET_BIN_DIR at the directory holding them"
    )]
    BinaryMissing {
        /// The binary's name.
        name: &'static str,
        /// Where it looked.
        dir: PathBuf,
    },
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the testnet was doing, with the path.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `--dir` names a directory that already holds files.
    #[error("{0} is not empty; choose a new or empty directory")]
    DirNotEmpty(PathBuf),
    /// An option is out of range.
    #[error("{0}")]
    InvalidOption(String),
    /// A command the testnet ran exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line, shortened.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of what it wrote to stderr.
        stderr: String,
        /// What it wrote to stdout (at most 64 KiB), e.g. the JSON report
        /// of a message that failed.
        stdout: String,
    },
    /// `bastet send` refused because the sender's route policy cannot be
    /// met by the consensus (its message names the hop class).
    #[error("the sender refused to send: {0}")]
    RouteRefused(String),
    /// A command the testnet ran did not finish in time.
    #[error("`{command}` did not finish within {secs} s")]
    CommandTimedOut {
        /// The command line, shortened.
        command: String,
        /// The time allowed.
        secs: u64,
    },
    /// A command printed something the testnet does not understand.
    #[error("`{command}` printed unexpected output ({why}): {output}")]
    UnexpectedOutput {
        /// The command line, shortened.
        command: String,
        /// What did not parse.
        why: String,
        /// The start of its output.
        output: String,
    },
    /// A node process stopped while the network was running.
    #[error("{name} exited ({status}); its log {log} ends with:\n{tail}")]
    NodeExited {
        /// The node's name in the testnet.
        name: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// The network did not come up in time.
    #[error(
        "the network was not ready within {secs} s: {waiting_for}; \
         see the node logs: {dir}/<node>/node.log"
    )]
    NotReady {
        /// Seconds waited.
        secs: u64,
        /// What was still missing (nodes absent from the consensus, health checks).
        waiting_for: String,
        /// The network directory.
        dir: PathBuf,
    },
    /// A node published something other than what the testnet set up.
    #[error("{name} published an unexpected descriptor: {why}")]
    WrongDescriptor {
        /// The node's name in the testnet.
        name: String,
        /// What differs.
        why: String,
    },
    /// A node's config file could not be read or rewritten.
    #[error("config {path}: {why}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A probe packet could not be built.
    #[error(transparent)]
    Sphinx(#[from] bastet_sphinx::Error),
    /// Talking to the directory authority failed.
    #[error(transparent)]
    Directory(#[from] bastet_directory::Error),
    /// The anonymity analysis refused the trace (`bastet-testnet anonymity`).
    #[error(transparent)]
    Anonymity(#[from] bastet_anonymity::Error),
    /// Ctrl-C or SIGTERM arrived.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
