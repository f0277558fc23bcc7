//! What every Bastet binary does the same way around its real work: logging,
//! the exit code, and stopping on a signal.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};

/// Logs to stderr, filtered by `BASTET_LOG` (a `tracing` filter such as
/// `debug` or `bastet_link=trace`), or by `default` when it is unset or
/// invalid.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BASTET_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .init();
}

/// Success, or failure after printing `{prefix}: {error}` to stderr.
pub fn exit_code<E: Display>(prefix: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{prefix}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Watches SIGTERM and SIGINT from now on (so that a signal arriving while a
/// node starts is not lost) and returns a future that completes at the first
/// of them. Must be called inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
