//! The HTTPS API: registration and authenticated polling.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bastet_directory::VerifyingKey;
use bastet_sphinx::MailboxId;
use serde::Deserialize;

use crate::api::{
    AuthError, DeleteResponse, ListResponse, MAX_LIST_LIMIT, MAX_REQUEST_BODY, RegisterRequest,
    RegisterResponse, ReplayCache, SignedRequest, verify_request,
};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::{Error, StoredMessage};

/// Messages per page when the request names no `limit`.
const DEFAULT_LIST_LIMIT: usize = 100;

/// What the API handlers share.
pub struct Api {
    store: Arc<Store>,
    replay: Mutex<ReplayCache>,
    metrics: Metrics,
    clock: fn() -> u64,
}

impl Api {
    /// An API over `store`, remembering up to `replay_capacity` recent
    /// signatures; `clock` gives unix seconds.
    pub fn new(
        store: Arc<Store>,
        replay_capacity: usize,
        metrics: Metrics,
        clock: fn() -> u64,
    ) -> Self {
        Api {
            store,
            replay: Mutex::new(ReplayCache::new(replay_capacity)),
            metrics,
            clock,
        }
    }
}

/// The API's routes.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/mailboxes", post(register))
        .route("/v1/mailboxes/{id}/messages", get(list).delete(delete))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint\n") })
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .with_state(api)
}

/// A refusal: status and a plain-text reason.
struct Refusal(StatusCode, String);

impl Refusal {
    fn new(status: StatusCode, why: impl std::fmt::Display) -> Self {
        Refusal(status, format!("{why}\n"))
    }
}

fn outcome(status: StatusCode) -> &'static str {
    match status {
        StatusCode::OK | StatusCode::CREATED => "ok",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "error",
    }
}

fn finish(api: &Api, result: Result<(StatusCode, String), Refusal>) -> Response {
    let (status, body, content_type) = match result {
        Ok((status, json)) => (status, json, "application/json"),
        Err(Refusal(status, why)) => (status, why, "text/plain; charset=utf-8"),
    };
    api.metrics.request(outcome(status));
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The request body, or the refusal of one that could not be read: larger
/// than [`MAX_REQUEST_BODY`] (413) or cut off. Taken by the handlers rather
/// than left to the extractor so that the refusal is counted too.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Refusal> {
    body.map_err(|e| Refusal::new(e.status(), e.body_text()))
}

fn json(
    status: StatusCode,
    value: &impl serde::Serialize,
) -> Result<(StatusCode, String), Refusal> {
    serde_json::to_string(value)
        .map(|body| (status, body))
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

impl Api {
    fn authenticate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<VerifyingKey, Refusal> {
        let authorization = match headers.get(header::AUTHORIZATION).map(|v| v.to_str()) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => return Err(self.auth_refusal(AuthError::Malformed)),
        };
        let request = SignedRequest {
            method: method.as_str(),
            path_and_query: uri.path_and_query().map_or(uri.path(), |pq| pq.as_str()),
            authorization,
            body,
        };
        let now = (self.clock)();
        let mut cache = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        verify_request(&request, now, &mut cache).map_err(|e| self.auth_refusal(e))
    }

    fn auth_refusal(&self, e: AuthError) -> Refusal {
        self.metrics.auth_failure(e.reason());
        let status = if e == AuthError::Busy {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::UNAUTHORIZED
        };
        Refusal::new(status, e)
    }

    /// The mailbox named in the path, if `signer` owns it.
    fn owned_mailbox(&self, id: &str, signer: &VerifyingKey) -> Result<MailboxId, Refusal> {
        let mailbox = MailboxId::from_hex(id).ok_or_else(|| {
            Refusal::new(StatusCode::BAD_REQUEST, "mailbox id must be 64 hex digits")
        })?;
        // The id is derived from the owner's key, so ownership needs no
        // lookup, and a stranger cannot probe which mailboxes exist.
        if MailboxId::from_owner_key(signer.as_bytes()) != mailbox {
            self.metrics.auth_failure("not_owner");
            return Err(Refusal::new(StatusCode::FORBIDDEN, Error::NotOwner));
        }
        Ok(mailbox)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, Refusal> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e @ Error::UnknownMailbox)) => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("{e}: register it first with POST /v1/mailboxes"),
            )),
            Ok(Err(e @ Error::TooManyMailboxes(_))) => {
                Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e))
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "message store failed");
                Err(Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "message store failed",
                ))
            }
            Err(_) => Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "request handler failed",
            )),
        }
    }
}

async fn register(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = read_body(body)?;
        let signer = api.authenticate(&method, &uri, &headers, &body)?;
        let request: RegisterRequest = serde_json::from_slice(&body).map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"owner_key\":\"<64 hex digits>\"}}: {e}"),
            )
        })?;
        let mut owner = [0u8; 32];
        hex::decode_to_slice(request.owner_key.trim(), &mut owner)
            .ok()
            .and_then(|()| VerifyingKey::from_bytes(&owner).ok())
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "owner_key is not an Ed25519 public key in hex",
                )
            })?;
        if signer.as_bytes() != &owner {
            api.metrics.auth_failure("not_owner");
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "the request must be signed by owner_key",
            ));
        }
        let (id, created) = api.blocking(move |s| s.register(&owner)).await?;
        if created {
            api.metrics.mailboxes.inc();
            tracing::debug!("mailbox registered");
        }
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        json(
            status,
            &RegisterResponse {
                mailbox_id: id.to_hex(),
            },
        )
    }
    .await;
    finish(&api, result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn list(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = read_body(body)?;
        let signer = api.authenticate(&method, &uri, &headers, &body)?;
        let mailbox = api.owned_mailbox(&id, &signer)?;
        let Query(q) = Query::<ListQuery>::try_from_uri(&uri).map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("query must be ?after=<seq>&limit=<n>: {e}"),
            )
        })?;
        let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
            ));
        }
        let (messages, next) = api
            .blocking(move |s| s.list(&mailbox, q.after, limit))
            .await?;
        json(
            StatusCode::OK,
            &ListResponse {
                messages: messages.iter().map(StoredMessage::to_json).collect(),
                next,
            },
        )
    }
    .await;
    finish(&api, result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    upto: u64,
}

async fn delete(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = read_body(body)?;
        let signer = api.authenticate(&method, &uri, &headers, &body)?;
        let mailbox = api.owned_mailbox(&id, &signer)?;
        let Query(q) = Query::<DeleteQuery>::try_from_uri(&uri).map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("query must be ?upto=<seq>: {e}"),
            )
        })?;
        let deleted = api
            .blocking(move |s| s.delete_upto(&mailbox, q.upto))
            .await?;
        json(StatusCode::OK, &DeleteResponse { deleted })
    }
    .await;
    finish(&api, result)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bastet_directory::SigningKey;

    use super::*;
    use crate::api::authorization_header;
    use crate::store::StoreLimits;

    fn api(dir: &std::path::Path) -> Api {
        let limits = StoreLimits {
            quota_messages: 10,
            max_mailboxes: 10,
        };
        let store = Arc::new(Store::open(dir, limits).unwrap());
        Api::new(store, 100, Metrics::default(), || 1000)
    }

    #[test]
    fn only_the_owner_key_reaches_a_mailbox() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let owner = SigningKey::from_bytes(&[1; 32]);
        let stranger = SigningKey::from_bytes(&[2; 32]);
        let id = MailboxId::from_owner_key(owner.verifying_key().as_bytes()).to_hex();
        assert!(api.owned_mailbox(&id, &owner.verifying_key()).is_ok());
        let Err(Refusal(status, _)) = api.owned_mailbox(&id, &stranger.verifying_key()) else {
            panic!("a stranger's key was accepted");
        };
        assert_eq!(status, StatusCode::FORBIDDEN);
        let Err(Refusal(status, _)) = api.owned_mailbox("zz", &owner.verifying_key()) else {
            panic!("a malformed id was accepted");
        };
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn authentication_failures_are_401_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let key = SigningKey::from_bytes(&[1; 32]);
        let uri: Uri = "/v1/mailboxes/ab/messages?limit=5".parse().unwrap();
        let headers = |ts| {
            let mut h = HeaderMap::new();
            let v = authorization_header(&key, "GET", "/v1/mailboxes/ab/messages?limit=5", b"", ts);
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        let fresh = headers(1000);
        assert!(api.authenticate(&Method::GET, &uri, &fresh, b"").is_ok());
        for (method, h, expected) in [
            (Method::GET, fresh.clone(), "replayed"),
            (Method::DELETE, headers(1001), "bad signature"),
            (Method::GET, headers(2000), "stale"),
            (Method::GET, HeaderMap::new(), "missing"),
        ] {
            let Err(Refusal(status, why)) = api.authenticate(&method, &uri, &h, b"") else {
                panic!("accepted, expected {expected}");
            };
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(why.contains(expected), "{why}");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_with_413_and_counted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let api = Arc::new(api(dir.path()));
        let metrics = api.metrics.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(api)).await });

        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/mailboxes HTTP/1.1\r\nHost: bastet\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n",
            MAX_REQUEST_BODY + 1
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&vec![b'x'; MAX_REQUEST_BODY + 1])
            .await
            .unwrap();
        // Closed after the answer; the timeout only keeps a regression from
        // hanging the test.
        let mut response = Vec::new();
        let read = tcp.read_to_end(&mut response);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        let counted = |outcome: &str| {
            metrics
                .api_requests
                .get_or_create(&crate::metrics::Outcome {
                    outcome: outcome.into(),
                })
                .get()
        };
        assert_eq!(counted("too_large"), 1);
        assert_eq!(counted("ok"), 0);
    }
}
