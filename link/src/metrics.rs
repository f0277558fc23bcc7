//! `/health` and Prometheus `/metrics`, served in plain HTTP on the
//! operator's metrics address (keep it on loopback or a management network).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::{Error, Result};

/// Whether a node is ready to serve: `Err(why)` if not (e.g. no consensus
/// for the current epoch, no key for it, a full disk).
pub type Readiness = Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// Least free space a node's data directory must have to be ready.
pub const MIN_FREE_BYTES: u64 = 64 << 20;

/// Bytes free (for an unprivileged user) on the file system holding `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// `Err` naming the shortage if `path`'s file system has less than `min`
/// bytes free (or cannot be asked).
pub fn check_free_space(path: &std::path::Path, min: u64) -> std::result::Result<(), String> {
    match free_bytes(path) {
        Ok(free) if free >= min => Ok(()),
        Ok(free) => Err(format!(
            "{} has {} MiB free, less than {} MiB",
            path.display(),
            free >> 20,
            min >> 20
        )),
        Err(e) => Err(format!("free space of {}: {e}", path.display())),
    }
}

/// How often readiness is evaluated, off the request path.
const READY_EVERY: Duration = Duration::from_secs(1);
/// A readiness older than this is reported as not ready (its check hangs).
const READY_STALE: Duration = Duration::from_secs(10);

/// The last readiness and when it was evaluated.
type Cached = Arc<Mutex<(Instant, std::result::Result<(), String>)>>;

/// Evaluates `ready` every [`READY_EVERY`] on a blocking thread, one at a
/// time (a check stuck on a hung disk pins one thread, not one per
/// request), into `cache`.
async fn keep_ready(ready: Readiness, cache: Cached) {
    loop {
        let check = ready.clone();
        let outcome = match tokio::task::spawn_blocking(move || check()).await {
            Ok(r) => r,
            Err(_) => Err("the readiness check panicked (a bug: see the log)".into()),
        };
        *cache.lock().unwrap_or_else(PoisonError::into_inner) = (Instant::now(), outcome);
        tokio::time::sleep(READY_EVERY).await;
    }
}

/// What `/health` answers from `cache` at `now`.
fn health_answer(cache: &Cached, now: Instant) -> (axum::http::StatusCode, String) {
    let (at, outcome) = cache.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let age = now.saturating_duration_since(at);
    match outcome {
        _ if age > READY_STALE => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: readiness not checked for {} s (its check has not returned: a hung disk?)\n",
                age.as_secs()
            ),
        ),
        Ok(()) => (axum::http::StatusCode::OK, "ok\n".to_string()),
        Err(why) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `/health` (`200 ok` when `ready` says so, `503 not ready: WHY`
/// otherwise) and `/metrics` (the registry in Prometheus text format) on
/// `listener`. `ready` runs every second off the request path (it may
/// read the disk); `/health` answers the last result, or 503 if the check
/// has not returned for 10 s.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
) -> Result<()> {
    let addr = listener.local_addr().map_err(|source| Error::Serve {
        addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let cache: Cached = Arc::new(Mutex::new((
        Instant::now(),
        Err("starting: readiness not checked yet".into()),
    )));
    let _checker = AbortOnDrop(tokio::spawn(keep_ready(ready, cache.clone())));
    let app = Router::new()
        .route(
            "/health",
            get(move || {
                let cache = cache.clone();
                async move { health_answer(&cache, Instant::now()) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            [(
                                CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                            .into_response(),
                        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .await
        .map_err(|source| Error::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_answers_the_last_check_and_a_stale_one_is_not_ready() {
        let cache: Cached = Arc::new(Mutex::new((Instant::now(), Err("starting".into()))));
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let ready: Readiness = {
            let flag = flag.clone();
            Arc::new(move || {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("no consensus".into())
                }
            })
        };
        let _checker = AbortOnDrop(tokio::spawn(keep_ready(ready, cache.clone())));
        let answer = || health_answer(&cache, Instant::now());
        for _ in 0..100 {
            if answer().0 == axum::http::StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(answer(), (axum::http::StatusCode::OK, "ok\n".into()));
        flag.store(false, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(READY_EVERY * 2 + Duration::from_millis(200)).await;
        assert_eq!(
            answer(),
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no consensus\n".into()
            )
        );
        // A check that stopped returning: the answer goes stale.
        let later = Instant::now() + READY_STALE + Duration::from_secs(1);
        let (status, body) = health_answer(&cache, later);
        assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("readiness not checked for"), "{body}");
    }

    #[test]
    fn free_space_is_measured_and_a_shortage_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(check_free_space(dir.path(), 1).is_ok());
        let short = check_free_space(dir.path(), u64::MAX).unwrap_err();
        assert!(short.contains("MiB free, less than"), "{short}");
        let missing = check_free_space(&dir.path().join("nowhere"), 1).unwrap_err();
        assert!(missing.contains("nowhere"), "{missing}");
    }
}
