//! The directory authority: admits nodes, collects their descriptors,
//! votes with its peers, and serves each epoch's consensus once a threshold
//! of authorities signed it.
//!
//! Schedule of epoch `E` (length `L`), run by every authority:
//! 1. Nodes upload descriptors for `E` during `E-1` (and `E`).
//! 2. At `start(E) - L/2` (or, when the network or this authority starts
//!    late, a settling delay after the first descriptor for `E` arrived)
//!    the authority freezes and signs its vote: every admitted descriptor
//!    it holds for `E`. Served at `GET /v1/votes/{E}`, persisted first.
//! 3. It fetches its peers' votes until all are in, or until the collection
//!    window (`L/4`, 2 s to 60 s) closes with a majority of all authorities'
//!    votes; then computes the canonical consensus ([`crate::consensus_from_votes`])
//!    and signs it.
//! 4. It fetches peers' documents (`GET /v1/consensus/{E}/pending`) and adds
//!    their signatures over the same bytes; if peers agreed on a document
//!    with the threshold of signatures that differs from its own, it serves
//!    theirs.
//! 5. `GET /v1/consensus/{E}` serves the document only once it carries the
//!    threshold of signatures; otherwise it says what is missing.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bastet_link::TlsIdentity;
use bastet_sphinx::NodeId;
use ed25519_dalek::{SigningKey, VerifyingKey};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::client::unix_now_ms as now_ms;
use crate::consensus::MAX_CONSENSUS_LEN;
use crate::{
    AuthorityRef, Error, MAX_DESCRIPTOR_LEN, MAX_VOTE_LEN, Result, SignedConsensus,
    SignedDescriptor, SignedVote, Vote, consensus_from_votes, epoch_bounds, epoch_of, majority,
    read_key_file, unix_now, write_key_file,
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
    /// The other authorities of the network (`[[peers]]` tables with `url`,
    /// `identity_key`, `tls_pin`, as each one's `init` printed them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<AuthorityRef>,
    /// Signatures a consensus needs before it is served; default a
    /// majority of all authorities, ⌊n/2⌋+1.
    #[serde(default)]
    pub threshold: Option<usize>,
}

fn default_max_nodes() -> usize {
    1000
}

impl AuthorityConfig {
    /// Signatures required: the configured threshold, or a majority of this
    /// authority and its peers.
    pub fn threshold(&self) -> usize {
        self.threshold.unwrap_or(majority(self.peers.len() + 1))
    }

    fn validate(&self) -> Result<HashSet<NodeId>> {
        let n = self.peers.len() + 1;
        let t = self.threshold();
        if t == 0 || t > n {
            return Err(Error::Config(format!(
                "threshold: {t} must be between 1 and the number of authorities ({n}: this one \
                 and {} peers)",
                self.peers.len()
            )));
        }
        if t < majority(n) {
            tracing::warn!(
                threshold = t,
                authorities = n,
                "threshold below a majority: a minority of authorities can publish a consensus"
            );
        }
        for p in &self.peers {
            p.key()?;
            p.pin()?;
            if !p.url.starts_with("https://") {
                return Err(Error::Config(format!(
                    "peers: url {:?} must start with https://",
                    p.url
                )));
            }
        }
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
    // An absolute data_dir: the authority may run from another directory
    // (a service manager starts it in /).
    let dir = &std::fs::canonicalize(dir).map_err(io)?;
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
        peers: Vec::new(),
        threshold: None,
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
         # peers: the other authorities, one [[peers]] table each (url, identity_key,\n\
         #   tls_pin: what their `init` printed). A node enters an epoch's consensus\n\
         #   only if a majority of all authorities saw it.\n\
         # threshold: signatures a consensus needs before it is served (default: a\n\
         #   majority of this authority and its peers).\n\
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
    signatures: Gauge,
    votes: Gauge,
}

/// Another authority this one exchanges votes and signatures with.
struct Peer {
    key: VerifyingKey,
    url: String,
    http: reqwest::Client,
}

/// Everything about one epoch, under one lock.
#[derive(Default)]
struct EpochState {
    /// Admitted descriptors received for the epoch.
    descriptors: BTreeMap<NodeId, SignedDescriptor>,
    /// When the first of them arrived (unix ms).
    first_seen_ms: Option<u64>,
    /// When the latest new or changed one arrived (unix ms).
    last_seen_ms: u64,
    /// This authority's signed vote, once frozen.
    own_vote: Option<Bytes>,
    /// When the vote was frozen (unix ms).
    frozen_at_ms: Option<u64>,
    /// Verified votes by authority key, this one's included.
    votes: BTreeMap<[u8; 32], Vote>,
    /// Whether this authority computed (and signed) its own consensus.
    computed: bool,
    /// The consensus held: computed here, or adopted from peers.
    doc: Option<SignedConsensus>,
}

/// Fixed points of an epoch's schedule, in unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Schedule {
    epoch_ms: u64,
}

impl Schedule {
    /// When the vote on `epoch` is frozen: half an epoch before it starts,
    /// and, when descriptors for it only began arriving late (a network
    /// starting up, an authority restarting), once they stopped arriving
    /// for a second, or a settling delay after the first at the latest, so
    /// that the descriptors nodes publish together land in one vote.
    fn freeze_at(self, epoch: u64, first_seen_ms: u64, last_seen_ms: u64) -> u64 {
        let start = epoch.saturating_mul(self.epoch_ms);
        let settled = (last_seen_ms + QUIET_MS).min(first_seen_ms + self.settle_ms());
        start.saturating_sub(self.epoch_ms / 2).max(settled)
    }

    fn settle_ms(self) -> u64 {
        (self.epoch_ms / 10).clamp(1_000, 10_000)
    }

    /// How long after freezing its own vote an authority waits for missing
    /// peers' votes before computing the consensus from those it has.
    fn collect_ms(self) -> u64 {
        (self.epoch_ms / 4).clamp(2_000, 60_000)
    }
}

struct Authority {
    key: SigningKey,
    epoch_secs: u64,
    schedule: Schedule,
    threshold: usize,
    /// This authority first, then its peers.
    pinned: Vec<VerifyingKey>,
    peers: Vec<Peer>,
    allowed: HashSet<NodeId>,
    open_admission: bool,
    max_nodes: usize,
    data_dir: PathBuf,
    epochs: Mutex<BTreeMap<u64, EpochState>>,
    metrics: Metrics,
}

/// How long one request to a peer may take before the schedule moves on.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// A late vote is cast once no new descriptor came for this long.
const QUIET_MS: u64 = 1_000;
/// How often the schedule runs.
const TICK: Duration = Duration::from_millis(500);

/// What `check-config` found in a valid authority config.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// Always true (a bad config is an error instead).
    pub ok: bool,
    /// The authority's identity key (hex).
    pub identity_key: String,
    /// Its TLS certificate pin (hex).
    pub tls_pin: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Peer authorities configured.
    pub peers: usize,
    /// Signatures a consensus needs.
    pub threshold: usize,
    /// Relays admitted (`allowed_nodes`).
    pub allowed_nodes: usize,
}

/// Checks `config` as `run` would before starting, without starting: every
/// value, the peers' keys, the identity key and the TLS identity (present,
/// parseable, mode 0600).
pub fn check(config: &AuthorityConfig) -> Result<CheckReport> {
    let allowed = config.validate()?;
    for p in &config.peers {
        p.key()?;
    }
    let key = SigningKey::from_bytes(&*read_key_file(&config.data_dir.join("identity.key"))?);
    let tls = TlsIdentity::load(&config.data_dir)?;
    Ok(CheckReport {
        ok: true,
        identity_key: hex::encode(key.verifying_key().as_bytes()),
        tls_pin: tls.pin().to_hex(),
        listen: config.listen,
        peers: config.peers.len(),
        threshold: config.threshold(),
        allowed_nodes: allowed.len(),
    })
}

/// Runs the authority until the process is stopped.
pub async fn run(config: AuthorityConfig) -> Result<()> {
    let allowed = config.validate()?;
    let key = SigningKey::from_bytes(&*read_key_file(&config.data_dir.join("identity.key"))?);
    let tls = TlsIdentity::load(&config.data_dir)?;
    let mut pinned = vec![key.verifying_key()];
    let mut peers = Vec::new();
    for p in &config.peers {
        let peer_key = p.key()?;
        if pinned.contains(&peer_key) {
            return Err(Error::Config(format!(
                "peers: {} is this authority's own key or listed twice",
                p.identity_key
            )));
        }
        pinned.push(peer_key);
        peers.push(Peer {
            key: peer_key,
            url: p.url.trim_end_matches('/').to_string(),
            http: bastet_link::https_client(p.pin()?)?,
        });
    }
    let mut registry = Registry::with_prefix("bastet_directory");
    let metrics = Metrics {
        accepted: Counter::default(),
        rejected: Family::default(),
        nodes: Gauge::default(),
        signatures: Gauge::default(),
        votes: Gauge::default(),
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
        "Nodes in the current epoch's consensus",
        metrics.nodes.clone(),
    );
    registry.register(
        "consensus_signatures",
        "Valid authority signatures on the current epoch's consensus",
        metrics.signatures.clone(),
    );
    registry.register(
        "votes",
        "Authorities' votes held for the current epoch, this one's included",
        metrics.votes.clone(),
    );
    let api_connections = Arc::new(bastet_link::ConnectionStats::default());
    bastet_link::register_peer_connections(
        &mut registry,
        [(bastet_link::Direction::Api, api_connections.clone())],
    );
    let state = Arc::new(Authority {
        threshold: config.threshold(),
        key,
        epoch_secs: config.epoch_secs,
        schedule: Schedule {
            epoch_ms: config.epoch_secs.saturating_mul(1000),
        },
        pinned,
        peers,
        allowed,
        open_admission: config.open_admission,
        max_nodes: config.max_nodes,
        data_dir: config.data_dir.clone(),
        epochs: Mutex::default(),
        metrics,
    });
    state.load_persisted();
    let app = router(state.clone());
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Config(format!("metrics_listen {addr}: {e}")))?;
        let registry = Arc::new(registry);
        let data_dir = config.data_dir.clone();
        let ready: bastet_link::Readiness =
            Arc::new(move || bastet_link::check_free_space(&data_dir, bastet_link::MIN_FREE_BYTES));
        tokio::spawn(async move {
            if let Err(e) = bastet_link::serve_metrics(listener, registry, ready).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| Error::Config(format!("listen {}: {e}", config.listen)))?;
    tracing::info!(
        listen = %config.listen,
        authorities = state.pinned.len(),
        threshold = state.threshold,
        "directory authority serving"
    );
    let schedule = tokio::spawn(async move {
        loop {
            state.tick().await;
            tokio::time::sleep(TICK).await;
        }
    });
    let served = bastet_link::serve_https_counted(listener, &tls, app, api_connections).await;
    schedule.abort();
    Ok(served?)
}

fn router(state: Arc<Authority>) -> Router {
    Router::new()
        .route("/v1/descriptors", post(post_descriptor))
        .route("/v1/consensus", get(get_current))
        .route("/v1/consensus/{epoch}", get(get_epoch))
        .route("/v1/consensus/{epoch}/pending", get(get_pending))
        .route("/v1/votes/{epoch}", get(get_vote))
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

async fn post_descriptor(
    State(state): State<Arc<Authority>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    // Read here rather than by the extractor so that the refusal is counted.
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            let reason = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "unreadable"
            };
            return refuse(&state, e.status(), reason, e.body_text());
        }
    };
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
        let mut epochs = state.lock();
        epochs.retain(|e, _| *e + 1 >= current);
        let epoch = epochs.entry(d.epoch).or_default();
        if epoch.descriptors.get(&node) == Some(&signed) {
            return StatusCode::NO_CONTENT.into_response();
        }
        if !epoch.descriptors.contains_key(&node) && epoch.descriptors.len() >= state.max_nodes {
            drop(epochs);
            return refuse(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "full",
                format!("epoch {} already has {} nodes", d.epoch, state.max_nodes),
            );
        }
        if epoch.own_vote.is_some() {
            tracing::debug!(
                node = %node.short(),
                epoch = d.epoch,
                "descriptor arrived after this authority voted; it counts from the next epoch"
            );
        }
        let now = now_ms();
        epoch.first_seen_ms.get_or_insert(now);
        epoch.last_seen_ms = now;
        epoch.descriptors.insert(node, signed);
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

fn octets(bytes: Vec<u8>) -> Response {
    ([("content-type", "application/octet-stream")], bytes).into_response()
}

/// The consensus of `epoch`, only once it carries the threshold of
/// signatures: a document fewer authorities agree on is never published.
fn consensus_response(state: &Authority, epoch: u64) -> Response {
    let epochs = state.lock();
    let Some(st) = epochs.get(&epoch) else {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no consensus for epoch {epoch}: no node has published a descriptor for it here\n"
            ),
        )
            .into_response();
    };
    match &st.doc {
        Some(doc) if doc.signers(&state.pinned).len() >= state.threshold => octets(doc.to_bytes()),
        Some(doc) => (
            StatusCode::NOT_FOUND,
            format!(
                "no consensus for epoch {epoch} yet: {} of the {} required authority signatures \
                 ({} of {} votes held)\n",
                doc.signers(&state.pinned).len(),
                state.threshold,
                st.votes.len(),
                state.pinned.len()
            ),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!(
                "no consensus for epoch {epoch} yet: {} of {} authorities' votes held, {} needed \
                 to form one\n",
                st.votes.len(),
                state.pinned.len(),
                majority(state.pinned.len())
            ),
        )
            .into_response(),
    }
}

/// Whatever consensus is held for `epoch`, however few signatures it has:
/// peers fetch it to collect signatures; `status` shows it.
async fn get_pending(
    State(state): State<Arc<Authority>>,
    UrlPath(epoch): UrlPath<u64>,
) -> Response {
    match state.lock().get(&epoch).and_then(|st| st.doc.as_ref()) {
        Some(doc) => octets(doc.to_bytes()),
        None => (
            StatusCode::NOT_FOUND,
            format!("no consensus computed for epoch {epoch}\n"),
        )
            .into_response(),
    }
}

async fn get_vote(State(state): State<Arc<Authority>>, UrlPath(epoch): UrlPath<u64>) -> Response {
    match state.lock().get(&epoch).and_then(|st| st.own_vote.clone()) {
        Some(bytes) => octets(bytes.to_vec()),
        None => (
            StatusCode::NOT_FOUND,
            format!("this authority has not voted on epoch {epoch} yet\n"),
        )
            .into_response(),
    }
}

impl Authority {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, EpochState>> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn n(&self) -> usize {
        self.pinned.len()
    }

    /// One step of the schedule for the current and the next epoch.
    async fn tick(&self) {
        let now = now_ms();
        let current = epoch_of(now / 1000, self.epoch_secs);
        for epoch in [current, current + 1] {
            self.freeze_vote(epoch, now);
            self.fetch_votes(epoch).await;
            self.compute(epoch, now_ms());
            self.collect_signatures(epoch).await;
        }
        {
            let mut epochs = self.lock();
            epochs.retain(|e, _| *e + 1 >= current);
            let st = epochs.get(&current);
            let doc = st.and_then(|s| s.doc.as_ref());
            let signers = doc.map_or(0, |d| d.signers(&self.pinned).len());
            let nodes = doc
                .and_then(|d| d.unverified().ok())
                .map_or(0, |c| c.nodes.len());
            self.metrics.signatures.set(gauge(signers));
            self.metrics.nodes.set(gauge(nodes));
            self.metrics
                .votes
                .set(gauge(st.map_or(0, |s| s.votes.len())));
        }
        self.remove_old_files(current);
    }

    fn freeze_vote(&self, epoch: u64, now: u64) {
        let mut epochs = self.lock();
        let Some(st) = epochs.get_mut(&epoch) else {
            return;
        };
        let Some(first) = st.first_seen_ms else {
            return;
        };
        if st.own_vote.is_some() || now < self.schedule.freeze_at(epoch, first, st.last_seen_ms) {
            return;
        }
        let nodes = st.descriptors.iter().map(|(k, v)| (*k, v.clone()));
        let signed = match Vote::sign(epoch, nodes, &self.key) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(epoch, error = %e, "cannot sign a vote");
                return;
            }
        };
        let Ok(vote) = signed.verify(&self.key.verifying_key(), epoch) else {
            tracing::error!(epoch, "own vote does not verify");
            return;
        };
        let bytes = signed.to_bytes();
        // Persisted before it is served: after a restart this authority
        // serves the same vote, never a second, different one.
        if let Err(e) = self.persist("votes", epoch, &bytes) {
            tracing::error!(epoch, error = %e, "cannot persist the vote; not voting");
            return;
        }
        tracing::info!(epoch, nodes = vote.nodes.len(), "voted");
        st.votes.insert(vote.authority_key, vote);
        st.own_vote = Some(Bytes::from(bytes));
        st.frozen_at_ms = Some(now);
    }

    async fn fetch_votes(&self, epoch: u64) {
        let missing: Vec<&Peer> = {
            let epochs = self.lock();
            let Some(st) = epochs.get(&epoch) else {
                return;
            };
            if st.computed || st.own_vote.is_none() {
                return;
            }
            self.peers
                .iter()
                .filter(|p| !st.votes.contains_key(p.key.as_bytes()))
                .collect()
        };
        for peer in missing {
            let url = format!("{}/v1/votes/{epoch}", peer.url);
            let vote = match fetch(peer, &url, MAX_VOTE_LEN).await {
                Ok(Some(bytes)) => {
                    SignedVote::from_bytes(&bytes).and_then(|v| v.verify(&peer.key, epoch))
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(peer = %peer.url, epoch, error = %e, "fetching vote failed");
                    continue;
                }
            };
            match vote {
                Ok(vote) => {
                    tracing::info!(peer = %peer.url, epoch, nodes = vote.nodes.len(), "peer vote received");
                    if let Some(st) = self.lock().get_mut(&epoch) {
                        st.votes.entry(vote.authority_key).or_insert(vote);
                    }
                }
                Err(e) => tracing::warn!(peer = %peer.url, epoch, error = %e, "peer vote refused"),
            }
        }
    }

    /// Computes and signs this authority's consensus once every vote is in,
    /// or once the collection window closed with at least a majority.
    fn compute(&self, epoch: u64, now: u64) {
        let mut epochs = self.lock();
        let Some(st) = epochs.get_mut(&epoch) else {
            return;
        };
        let Some(frozen) = st.frozen_at_ms else {
            return;
        };
        let all_in = st.votes.len() == self.n();
        let window_closed = now >= frozen + self.schedule.collect_ms();
        if st.computed || !(all_in || window_closed) {
            return;
        }
        let votes: Vec<Vote> = st.votes.values().cloned().collect();
        let Some(consensus) = consensus_from_votes(epoch, self.epoch_secs, &votes, self.n()) else {
            return;
        };
        let mine = match consensus.sign(&self.key) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(epoch, error = %e, "cannot sign the consensus");
                return;
            }
        };
        st.computed = true;
        tracing::info!(
            epoch,
            votes = votes.len(),
            nodes = consensus.nodes.len(),
            "consensus computed and signed"
        );
        match &mut st.doc {
            Some(held) if held.body == mine.body => {
                held.merge_signatures(&mine, &self.pinned);
            }
            Some(_) => tracing::warn!(
                epoch,
                "the consensus adopted from peers differs from the one computed here; \
                 serving the adopted one"
            ),
            None => st.doc = Some(mine),
        }
    }

    /// Fetches peers' documents for `epoch`: adds their signatures on the
    /// document held here, or adopts theirs if it carries the threshold and
    /// this one does not.
    async fn collect_signatures(&self, epoch: u64) {
        let wanted: Vec<&Peer> = {
            let epochs = self.lock();
            let Some(st) = epochs.get(&epoch) else {
                return;
            };
            let signed_by: Vec<VerifyingKey> = st
                .doc
                .as_ref()
                .map(|d| d.signers(&self.pinned))
                .unwrap_or_default();
            if st.doc.is_none() && !st.computed && st.own_vote.is_some() {
                // Still voting; peers have nothing better yet.
                if st.votes.len() < self.n() {
                    return;
                }
            }
            self.peers
                .iter()
                .filter(|p| !signed_by.contains(&p.key))
                .collect()
        };
        let (valid_after, _) = epoch_bounds(epoch, self.epoch_secs);
        for peer in wanted {
            let url = format!("{}/v1/consensus/{epoch}/pending", peer.url);
            let theirs = match fetch(peer, &url, MAX_CONSENSUS_LEN).await {
                Ok(Some(bytes)) => match SignedConsensus::from_bytes(&bytes) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(peer = %peer.url, epoch, error = %e, "peer consensus refused");
                        continue;
                    }
                },
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(peer = %peer.url, epoch, error = %e, "fetching peer consensus failed");
                    continue;
                }
            };
            let mut epochs = self.lock();
            let Some(st) = epochs.get_mut(&epoch) else {
                return;
            };
            let before = st.doc.as_ref().map_or(0, |d| d.signers(&self.pinned).len());
            let added = st
                .doc
                .as_mut()
                .map_or(0, |d| d.merge_signatures(&theirs, &self.pinned));
            if added > 0 {
                tracing::info!(peer = %peer.url, epoch, signatures = before + added, "consensus signature added");
            } else if before < self.threshold
                && theirs
                    .verify(&self.pinned, self.threshold, valid_after)
                    .is_ok_and(|v| v.epoch == epoch)
            {
                tracing::info!(peer = %peer.url, epoch, "adopted the consensus the authorities agreed on");
                if let Some(mine) = st.doc.take().filter(|_| st.computed) {
                    tracing::warn!(
                        epoch,
                        signatures = mine.signers(&self.pinned).len(),
                        "the consensus computed here lost to one a threshold of authorities signed"
                    );
                }
                let mut adopted = theirs;
                adopted.keep_valid_signatures(&self.pinned);
                st.doc = Some(adopted);
            } else {
                continue;
            }
            let bytes = st.doc.as_ref().map(SignedConsensus::to_bytes);
            drop(epochs);
            if let Some(bytes) = bytes
                && let Err(e) = self.persist("consensus", epoch, &bytes)
            {
                tracing::warn!(epoch, error = %e, "cannot persist the consensus");
            }
        }
    }

    fn persist(&self, kind: &str, epoch: u64, bytes: &[u8]) -> std::io::Result<()> {
        let dir = self.data_dir.join(kind);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{epoch}.tmp"));
        bastet_link::write_private(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(format!("{epoch}.bin")))
    }

    /// Reloads this authority's own votes and the consensus documents it
    /// held for the current and next epochs.
    fn load_persisted(&self) {
        let current = epoch_of(unix_now(), self.epoch_secs);
        let mut epochs = self.lock();
        for epoch in [current, current + 1] {
            let read =
                |kind: &str| std::fs::read(self.data_dir.join(kind).join(format!("{epoch}.bin")));
            if let Ok(bytes) = read("votes") {
                match SignedVote::from_bytes(&bytes)
                    .and_then(|v| v.verify(&self.key.verifying_key(), epoch))
                {
                    Ok(vote) => {
                        let st = epochs.entry(epoch).or_default();
                        for signed in &vote.nodes {
                            if let Ok(d) = signed.verify() {
                                st.descriptors.insert(d.node_id(), signed.clone());
                            }
                        }
                        st.first_seen_ms = Some(now_ms());
                        st.last_seen_ms = now_ms();
                        st.frozen_at_ms = Some(now_ms());
                        st.votes.insert(vote.authority_key, vote);
                        st.own_vote = Some(Bytes::from(bytes));
                        tracing::info!(epoch, "reloaded this authority's vote");
                    }
                    Err(e) => tracing::warn!(epoch, error = %e, "ignoring a persisted vote"),
                }
            }
            if let Ok(bytes) = read("consensus") {
                match SignedConsensus::from_bytes(&bytes) {
                    Ok(doc) if !doc.signers(&self.pinned).is_empty() => {
                        let st = epochs.entry(epoch).or_default();
                        st.computed = doc
                            .signers(&self.pinned)
                            .contains(&self.key.verifying_key());
                        st.doc = Some(doc);
                        tracing::info!(epoch, "reloaded the consensus");
                    }
                    Ok(_) => tracing::warn!(
                        epoch,
                        "ignoring a persisted consensus without valid signatures"
                    ),
                    Err(e) => tracing::warn!(epoch, error = %e, "ignoring a persisted consensus"),
                }
            }
        }
    }

    /// Votes and documents of epochs before the previous one are deleted.
    fn remove_old_files(&self, current: u64) {
        for kind in ["votes", "consensus"] {
            let Ok(entries) = std::fs::read_dir(self.data_dir.join(kind)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let old = name
                    .to_str()
                    .and_then(|n| n.split('.').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|e| e + 1 < current);
                if old {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// GETs `url` from `peer`: `Ok(None)` on 404 (not there yet).
async fn fetch(peer: &Peer, url: &str, max: usize) -> std::result::Result<Option<Vec<u8>>, String> {
    let resp = peer
        .http
        .get(url)
        .timeout(PEER_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = crate::client::read_bounded(resp, max).await?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    Ok(Some(body))
}

/// What `bastet-directory status` reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The current epoch.
    pub epoch: u64,
    /// Seconds left in it.
    pub epoch_secs_left: u64,
    /// Authorities in the network (this one and its peers).
    pub authorities: usize,
    /// Signatures a consensus needs.
    pub threshold: usize,
    /// Whether this authority serves a consensus for the epoch (it has the
    /// threshold of signatures).
    pub published: bool,
    /// Nodes in the held consensus, by role and layer (`mix1`..`mix3`,
    /// `mailbox`).
    pub nodes_by_layer: BTreeMap<String, usize>,
    /// Nodes in the held consensus, by jurisdiction.
    pub nodes_by_jurisdiction: BTreeMap<String, usize>,
    /// Every authority and whether its signature is on the held document.
    pub signers: Vec<SignerStatus>,
}

/// One authority in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignerStatus {
    /// `this authority` or the peer's URL.
    pub authority: String,
    /// Its key, hex.
    pub identity_key: String,
    /// Whether it signed the held consensus.
    pub signed: bool,
}

/// Asks the running authority of `config` for what it holds for the current
/// epoch, over its own pinned HTTPS API.
pub async fn status(config: &AuthorityConfig) -> Result<Status> {
    config.validate()?;
    let key = SigningKey::from_bytes(&*read_key_file(&config.data_dir.join("identity.key"))?);
    let tls = TlsIdentity::load(&config.data_dir)?;
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let http = bastet_link::https_client(tls.pin())?;
    let now = unix_now();
    let epoch = epoch_of(now, config.epoch_secs);
    let (_, ends) = epoch_bounds(epoch, config.epoch_secs);
    let url = format!("https://{addr}/v1/consensus/{epoch}/pending");
    let unreachable = |why: String| Error::Authority {
        url: format!("https://{addr}"),
        why: format!("{why} (is `bastet-directory run` up with this config?)"),
    };
    let resp = http
        .get(&url)
        .timeout(PEER_TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let code = resp.status();
    let body = crate::client::read_bounded(resp, MAX_CONSENSUS_LEN)
        .await
        .map_err(unreachable)?;
    let mut pinned = vec![key.verifying_key()];
    let mut names = vec!["this authority".to_string()];
    for p in &config.peers {
        pinned.push(p.key()?);
        names.push(p.url.clone());
    }
    let threshold = config.threshold();
    let mut status = Status {
        epoch,
        epoch_secs_left: ends.saturating_sub(now),
        authorities: pinned.len(),
        threshold,
        published: false,
        nodes_by_layer: BTreeMap::new(),
        nodes_by_jurisdiction: BTreeMap::new(),
        signers: Vec::new(),
    };
    let mut signed_by = Vec::new();
    if code.is_success() {
        let doc = SignedConsensus::from_bytes(&body)?;
        signed_by = doc.signers(&pinned);
        let v = doc.verify(&pinned, 1, now)?;
        status.published = signed_by.len() >= threshold;
        for d in &v.nodes {
            let layer = match v.layer_of(&d.node_id()) {
                Some(l) => format!("mix{l}"),
                None => d.role.to_string(),
            };
            *status.nodes_by_layer.entry(layer).or_default() += 1;
            *status
                .nodes_by_jurisdiction
                .entry(d.jurisdiction.clone())
                .or_default() += 1;
        }
    } else if code != StatusCode::NOT_FOUND {
        return Err(unreachable(format!(
            "{code}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    status.signers = pinned
        .iter()
        .zip(names)
        .map(|(k, authority)| SignerStatus {
            authority,
            identity_key: hex::encode(k.as_bytes()),
            signed: signed_by.contains(k),
        })
        .collect();
    Ok(status)
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "epoch {} ({} s left); {} authorities, threshold {}",
            self.epoch, self.epoch_secs_left, self.authorities, self.threshold
        )?;
        let signed = self.signers.iter().filter(|s| s.signed).count();
        if self.nodes_by_layer.is_empty() && signed == 0 {
            writeln!(f, "consensus: none held for this epoch yet")?;
        } else {
            writeln!(
                f,
                "consensus: {} ({signed} of {} signatures, {} required)",
                if self.published {
                    "published"
                } else {
                    "NOT published"
                },
                self.authorities,
                self.threshold
            )?;
            let join = |m: &BTreeMap<String, usize>| {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            writeln!(f, "nodes by layer: {}", join(&self.nodes_by_layer))?;
            writeln!(
                f,
                "nodes by jurisdiction: {}",
                join(&self.nodes_by_jurisdiction)
            )?;
        }
        for s in &self.signers {
            writeln!(
                f,
                "  {} {} ({})",
                if s.signed { "signed " } else { "missing" },
                s.authority,
                &s.identity_key[..16.min(s.identity_key.len())]
            )?;
        }
        Ok(())
    }
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
            peers: Vec::new(),
            threshold: None,
        }
    }

    #[test]
    fn votes_freeze_half_an_epoch_ahead_or_once_late_descriptors_settle() {
        let s = Schedule { epoch_ms: 30_000 };
        // Epoch 10 starts at 300 s: on time, the vote freezes at 285 s.
        assert_eq!(s.freeze_at(10, 250_000, 260_000), 285_000);
        // Descriptors first seen at 290 s, the last at 290.5 s: a second of
        // quiet, then vote.
        assert_eq!(s.freeze_at(10, 290_000, 290_500), 291_500);
        // Descriptors keep trickling in: vote 3 s (L/10) after the first.
        assert_eq!(s.freeze_at(10, 290_000, 292_900), 293_000);
        assert_eq!(s.settle_ms(), 3_000);
        assert_eq!(
            Schedule {
                epoch_ms: 3_600_000
            }
            .settle_ms(),
            10_000
        );
        assert_eq!(Schedule { epoch_ms: 10_000 }.collect_ms(), 2_500);
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
