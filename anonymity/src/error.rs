//! What can go wrong, in the user's terms.

use std::path::PathBuf;

/// Errors of the simulator, the analysis and the CLI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A simulation or analysis parameter is out of range.
    #[error("{name}: {why}")]
    InvalidParameter {
        /// The parameter (as the CLI spells it).
        name: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A preset name that does not exist.
    #[error("unknown preset {0:?}; known presets: {known}", known = crate::PRESETS.join(", "))]
    UnknownPreset(String),
    /// Bastet's own code refused the simulated network (consensus, route
    /// policy, traffic parameters).
    #[error("the simulated network is not one Bastet accepts: {0}")]
    Network(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A trace file line that does not parse or breaks the format's rules.
    #[error("trace line {line}: {why}")]
    BadTrace {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A trace that is well formed but cannot be analysed.
    #[error("the trace cannot be analysed: {0}")]
    Unanalysable(String),
    /// Drawing a figure failed.
    #[error("plot {path}: {why}")]
    Plot {
        /// The SVG being written.
        path: PathBuf,
        /// The plotting library's complaint.
        why: String,
    },
}
