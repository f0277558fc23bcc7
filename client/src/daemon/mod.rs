//! `bastet daemon`: the long-running client. It owns the data directory
//! (holding the outbox lock), runs the traffic engine (Poisson payload and
//! loop streams, retransmission, polling) and answers the CLI on a Unix
//! socket, mode 0600, in the data directory.

pub mod api;
mod engine;
mod saver;

pub use self::api::{
    CallRoute, WireCircuitHop, call_route, send_call_signal, send_call_signal_except,
    take_call_signals,
};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use self::api::{MAX_REQUEST_LEN, Request, Response, read_line, socket_path};
use self::engine::{Call, Engine};
use crate::{Client, DataDir, Error, Result};

/// Requests waiting for the engine at once; more connections wait.
const CALL_QUEUE: usize = 64;
/// Pause between attempts to fetch a first consensus.
const CONSENSUS_RETRY: std::time::Duration = std::time::Duration::from_secs(5);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 32;

/// Runs the daemon for the client in `dir` until SIGTERM, SIGINT or a
/// `shutdown` request. `ready` is called once the socket accepts requests.
pub async fn run(dir: DataDir, ready: impl FnOnce(&Path, usize)) -> Result<()> {
    let client = Client::open(dir.clone())?;
    let lock = dir
        .try_lock_outbox()?
        .ok_or_else(|| Error::DaemonRunning(dir.path().to_path_buf()))?;
    let address = client.address()?.to_string();
    let (keys, config) = client.into_parts();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // Without a consensus nothing can be sent: wait for one (the
    // authorities may be restarting), saying so, until stopped.
    let consensus = loop {
        match engine::fetch_consensus(&config.directory).await {
            Ok(c) => break c,
            Err(e @ (Error::Directory(_) | Error::Link(_))) => {
                tracing::warn!(error = %e, "no consensus yet; trying again in {CONSENSUS_RETRY:?}");
                tokio::select! {
                    () = tokio::time::sleep(CONSENSUS_RETRY) => {}
                    () = &mut shutdown => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    };
    let (events_tx, events_rx) = mpsc::channel(64);
    let engine = Engine::start(dir.clone(), keys, config, address, consensus, events_tx).await?;

    // Holding the lock, any socket file left is stale (a crashed daemon).
    let path = socket_path(dir.path());
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::File {
                path,
                why: format!("cannot remove the stale socket: {e}"),
            });
        }
        _ => {}
    }
    let listener = UnixListener::bind(&path).map_err(|e| Error::File {
        path: path.clone(),
        why: format!("cannot listen: {e}"),
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        Error::File {
            path: path.clone(),
            why: e.to_string(),
        }
    })?;
    let (calls_tx, calls_rx) = mpsc::channel::<Call>(CALL_QUEUE);
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let acceptor = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let calls = calls_tx.clone();
            tokio::spawn(async move {
                serve(stream, calls).await;
                drop(permit);
            });
        }
    });
    ready(&path, engine.pending());
    let result = engine.run(calls_rx, events_rx, shutdown).await;
    acceptor.abort();
    let _ = std::fs::remove_file(&path);
    drop(lock);
    result
}

/// One connection: one request line, one response line.
async fn serve(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let response = match read_line(&mut BufReader::new(read), MAX_REQUEST_LEN).await {
        Ok(Some(line)) => match serde_json::from_slice::<Request>(&line) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((request, tx)).await.is_err() {
                    Response::Error {
                        error: "the daemon is stopping".into(),
                    }
                } else {
                    rx.await.unwrap_or(Response::Error {
                        error: "the daemon is stopping".into(),
                    })
                }
            }
            Err(e) => Response::Error {
                error: format!("bad request: {e}"),
            },
        },
        Ok(None) => return,
        Err(e) => Response::Error {
            error: format!("bad request: {e}"),
        },
    };
    if let Ok(mut line) = serde_json::to_vec(&response) {
        line.push(b'\n');
        let _ = write.write_all(&line).await;
        let _ = write.shutdown().await;
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, the default (exit) applies; wait forever.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
