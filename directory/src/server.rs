//! The directory authority: admits nodes, collects their descriptors, and
//! serves one signed consensus per epoch.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bastet_link::TlsIdentity;
use bastet_sphinx::NodeId;
use ed25519_dalek::SigningKey;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::{
    Consensus, Error, MAX_DESCRIPTOR_LEN, Result, SignedDescriptor, epoch_of, read_key_file,
    unix_now, write_key_file,
};

/// `authority.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    /// Directory holding `identity.key` and the TLS certificate.
    pub data_dir: PathBuf,
    /// HTTPS API address.
    pub listen: SocketAddr,
    /// Plain-HTTP `/health` and `/metrics` address (keep it private).
    pub metrics_listen: Option<SocketAddr>,
    /// Epoch length in seconds.
    pub epoch_secs: u64,
    /// Node ids (hex) admitted.
    #[serde(default)]
    pub allowed_nodes: Vec<String>,
    /// Admit any node with a valid signature (for closed test networks only).
    #[serde(default)]
    pub open_admission: bool,
    /// Most nodes in one epoch.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: usize,
}

fn default_max_nodes() -> usize {
    1000
}

impl AuthorityConfig {
    fn validate(&self) -> Result<HashSet<NodeId>> {
        if self.epoch_secs < 10 {
            return Err(Error::Config("epoch_secs: must be at least 10".into()));
        }
        if self.max_nodes == 0 {
            return Err(Error::Config("max_nodes: must be at least 1".into()));
        }
        if self.allowed_nodes.is_empty() && !self.open_admission {
            return Err(Error::Config(
                "allowed_nodes: empty, so no node could join; list the node ids to admit \
                 (bastet-directory init --allow ID) or set open_admission = true"
                    .into(),
            ));
        }
        self.allowed_nodes
            .iter()
            .map(|s| {
                NodeId::from_hex(s).ok_or_else(|| {
                    Error::Config(format!(
                        "allowed_nodes: {s:?} is not a 64-hex-digit node id"
                    ))
                })
            })
            .collect()
    }
}

/// What `init` reports: what nodes and clients must pin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorityInfo {
    /// `https://` URL of the API.
    pub url: String,
    /// Ed25519 public key, hex.
    pub identity_key: String,
    /// TLS certificate pin, hex.
    pub tls_pin: String,
}

/// Creates `dir` with a fresh identity key, TLS certificate and a commented
/// `authority.toml`.
pub fn init(
    dir: &Path,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    epoch_secs: u64,
    allowed_nodes: &[NodeId],
) -> Result<AuthorityInfo> {
    let io = |e: std::io::Error| Error::Config(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let key_path = dir.join("identity.key");
    if key_path.exists() {
        return Err(Error::Config(format!(
            "{} already exists; refusing to overwrite an authority key",
            key_path.display()
        )));
    }
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::Rng::fill_bytes(&mut rand::rng(), seed.as_mut());
    let key = SigningKey::from_bytes(&seed);
    write_key_file(&key_path, &key.to_bytes())?;
    let tls = TlsIdentity::generate()?;
    tls.save(dir)?;
    let config = AuthorityConfig {
        data_dir: dir.to_path_buf(),
        listen,
        metrics_listen,
        epoch_secs,
        allowed_nodes: allowed_nodes.iter().map(NodeId::to_hex).collect(),
        open_admission: false,
        max_nodes: default_max_nodes(),
    };
    let body = toml::to_string(&config).map_err(|e| Error::Config(e.to_string()))?;
    let text = format!(
        "# Bastet directory authority.\n\
         # data_dir: identity.key (Ed25519, keep secret) and the TLS certificate.\n\
         # listen: HTTPS API for nodes (POST /v1/descriptors) and clients (GET /v1/consensus).\n\
         # metrics_listen: plain HTTP /health and /metrics; keep it on loopback.\n\
         # epoch_secs: epoch length; every node and client must use the same.\n\
         # allowed_nodes: node ids admitted; nothing else may join.\n\
         # open_admission: admit any validly signed node (closed test networks only).\n\
         # max_nodes: most nodes in one epoch's consensus.\n\
         # Environment overrides: BASTET_DIRECTORY__<KEY>.\n\n{body}"
    );
    std::fs::write(dir.join("authority.toml"), text).map_err(io)?;
    Ok(AuthorityInfo {
        url: format!("https://{listen}"),
        identity_key: hex::encode(key.verifying_key().as_bytes()),
        tls_pin: tls.pin().to_hex(),
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

struct Metrics {
    accepted: Counter,
    rejected: Family<Reason, Counter>,
    nodes: Gauge,
}

/// One epoch's descriptors and, once asked for, its signed consensus. Both
/// live under one lock so that a consensus is never cached over a stale set.
#[derive(Default)]
struct EpochState {
    nodes: BTreeMap<NodeId, SignedDescriptor>,
    signed: Option<Bytes>,
}

struct Authority {
    key: SigningKey,
    epoch_secs: u64,
    allowed: HashSet<NodeId>,
    open_admission: bool,
    max_nodes: usize,
    epochs: Mutex<BTreeMap<u64, EpochState>>,
    metrics: Metrics,
}

/// Runs the authority until the process is stopped.
pub async fn run(config: AuthorityConfig) -> Result<()> {
    let allowed = config.validate()?;
    let key = SigningKey::from_bytes(&*read_key_file(&config.data_dir.join("identity.key"))?);
    let tls = TlsIdentity::load(&config.data_dir)?;
    let mut registry = Registry::with_prefix("bastet_directory");
    let metrics = Metrics {
        accepted: Counter::default(),
        rejected: Family::default(),
        nodes: Gauge::default(),
    };
    registry.register(
        "descriptors_accepted",
        "Descriptors accepted",
        metrics.accepted.clone(),
    );
    registry.register(
        "descriptors_rejected",
        "Descriptors refused, by reason",
        metrics.rejected.clone(),
    );
    registry.register(
        "consensus_nodes",
        "Nodes in the current consensus",
        metrics.nodes.clone(),
    );
    let state = Arc::new(Authority {
        key,
        epoch_secs: config.epoch_secs,
        allowed,
        open_admission: config.open_admission,
        max_nodes: config.max_nodes,
        epochs: Mutex::default(),
        metrics,
    });
    let app = router(state);
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Config(format!("metrics_listen {addr}: {e}")))?;
        let registry = Arc::new(registry);
        tokio::spawn(async move {
            if let Err(e) = bastet_link::serve_metrics(listener, registry).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| Error::Config(format!("listen {}: {e}", config.listen)))?;
    tracing::info!(listen = %config.listen, "directory authority serving");
    Ok(bastet_link::serve_https(listener, &tls, app).await?)
}

fn router(state: Arc<Authority>) -> Router {
    Router::new()
        .route("/v1/descriptors", post(post_descriptor))
        .route("/v1/consensus", get(get_current))
        .route("/v1/consensus/{epoch}", get(get_epoch))
        .layer(DefaultBodyLimit::max(MAX_DESCRIPTOR_LEN))
        .with_state(state)
}

fn refuse(state: &Authority, status: StatusCode, reason: &str, detail: String) -> Response {
    state
        .metrics
        .rejected
        .get_or_create(&Reason {
            reason: reason.into(),
        })
        .inc();
    tracing::info!(reason, %detail, "descriptor refused");
    (status, format!("{detail}\n")).into_response()
}

async fn post_descriptor(State(state): State<Arc<Authority>>, body: Bytes) -> Response {
    let signed = match SignedDescriptor::from_bytes(&body) {
        Ok(s) => s,
        Err(e) => return refuse(&state, StatusCode::BAD_REQUEST, "malformed", e.to_string()),
    };
    let d = match signed.verify() {
        Ok(d) => d,
        Err(e @ Error::BadSignature(_)) => {
            return refuse(
                &state,
                StatusCode::FORBIDDEN,
                "bad_signature",
                e.to_string(),
            );
        }
        Err(e) => return refuse(&state, StatusCode::BAD_REQUEST, "invalid", e.to_string()),
    };
    let node = d.node_id();
    if !state.open_admission && !state.allowed.contains(&node) {
        return refuse(
            &state,
            StatusCode::FORBIDDEN,
            "not_admitted",
            format!(
                "node {node} is not on this authority's allow-list; ask its operator to admit it"
            ),
        );
    }
    let current = epoch_of(unix_now(), state.epoch_secs);
    if d.epoch != current && d.epoch != current + 1 {
        return refuse(
            &state,
            StatusCode::BAD_REQUEST,
            "wrong_epoch",
            format!(
                "descriptor is for epoch {}, this authority accepts {current} and {} (epoch_secs = {})",
                d.epoch,
                current + 1,
                state.epoch_secs
            ),
        );
    }
    {
        let mut epochs = state.epochs.lock().unwrap_or_else(|e| e.into_inner());
        epochs.retain(|e, _| *e + 1 >= current);
        let epoch = epochs.entry(d.epoch).or_default();
        if epoch.nodes.get(&node) == Some(&signed) {
            return StatusCode::NO_CONTENT.into_response();
        }
        if !epoch.nodes.contains_key(&node) && epoch.nodes.len() >= state.max_nodes {
            drop(epochs);
            return refuse(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "full",
                format!("epoch {} already has {} nodes", d.epoch, state.max_nodes),
            );
        }
        epoch.nodes.insert(node, signed);
        epoch.signed = None;
    }
    state.metrics.accepted.inc();
    tracing::info!(node = %node.short(), epoch = d.epoch, role = %d.role, "descriptor accepted");
    StatusCode::NO_CONTENT.into_response()
}

async fn get_current(State(state): State<Arc<Authority>>) -> Response {
    let epoch = epoch_of(unix_now(), state.epoch_secs);
    consensus_response(&state, epoch)
}

async fn get_epoch(State(state): State<Arc<Authority>>, UrlPath(epoch): UrlPath<u64>) -> Response {
    consensus_response(&state, epoch)
}

fn consensus_response(state: &Authority, epoch: u64) -> Response {
    match consensus_bytes(state, epoch) {
        Ok(Some(bytes)) => ([("content-type", "application/octet-stream")], bytes).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("no nodes have published descriptors for epoch {epoch} yet\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The signed consensus for `epoch`, built and signed once per change of its
/// descriptor set (under the same lock as the set, so no insert is missed).
fn consensus_bytes(state: &Authority, epoch: u64) -> Result<Option<Bytes>> {
    let mut epochs = state.epochs.lock().unwrap_or_else(|e| e.into_inner());
    let Some(entry) = epochs.get_mut(&epoch).filter(|e| !e.nodes.is_empty()) else {
        return Ok(None);
    };
    if let Some(b) = &entry.signed {
        return Ok(Some(b.clone()));
    }
    let nodes: Vec<_> = entry.nodes.iter().map(|(k, v)| (*k, v.clone())).collect();
    if epoch == epoch_of(unix_now(), state.epoch_secs) {
        state
            .metrics
            .nodes
            .set(i64::try_from(nodes.len()).unwrap_or(i64::MAX));
    }
    let bytes = Bytes::from(
        Consensus::new(epoch, state.epoch_secs, nodes)
            .sign(&state.key)?
            .to_bytes(),
    );
    entry.signed = Some(bytes.clone());
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allowed: Vec<String>, open: bool) -> AuthorityConfig {
        AuthorityConfig {
            data_dir: PathBuf::from("/nonexistent"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: None,
            epoch_secs: 60,
            allowed_nodes: allowed,
            open_admission: open,
            max_nodes: 10,
        }
    }

    #[test]
    fn an_authority_admitting_nobody_refuses_to_start() {
        let err = config(vec![], false).validate().unwrap_err().to_string();
        assert!(err.contains("allowed_nodes"), "{err}");
        assert!(config(vec![], true).validate().is_ok());
        let err = config(vec!["nope".into()], false).validate().unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
        assert!(
            config(vec![NodeId([1; 32]).to_hex()], false)
                .validate()
                .is_ok()
        );
    }
}
