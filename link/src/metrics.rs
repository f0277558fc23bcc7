//! `/health` and Prometheus `/metrics`, served in plain HTTP on the
//! operator's metrics address (keep it on loopback or a management network).

use std::sync::Arc;

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

/// Serves `/health` (`200 ok` when `ready` says so, `503 not ready: WHY`
/// otherwise) and `/metrics` (the registry in Prometheus text format) on
/// `listener`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
) -> Result<()> {
    let addr = listener.local_addr().map_err(|source| Error::Serve {
        addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let app = Router::new()
        .route(
            "/health",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(()) => (axum::http::StatusCode::OK, "ok\n".to_string()),
                        Err(why) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
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
