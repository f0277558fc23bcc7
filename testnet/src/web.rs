//! The live view of a running testnet (`bastet-testnet up --web`): a small
//! page on loopback showing every node by layer and jurisdiction, with its
//! readiness (`/health`) and throughput (`/metrics`), refreshed every two
//! seconds.
//!
//! A collector task asks every node's metrics address and the directory
//! for the current consensus (which deals the mixnodes into layers each
//! epoch), and keeps one [`Snapshot`]; the page's script fetches it as JSON
//! from `/api/nodes` and draws it. Page, script and style are served from
//! this process with a strict Content-Security-Policy: no third-party
//! resource, no inline script, node names drawn as text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bastet_directory::{DirectoryClient, Role};
use bastet_sphinx::NodeId;
use serde::Serialize;

use crate::layout::Layout;
use crate::network::http_get;
use crate::{Error, Result, metric_sum};

/// How often the collector asks every node.
pub const REFRESH: Duration = Duration::from_secs(2);

/// What the page shows: one entry per node of the testnet.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// The epoch of the consensus the layers come from.
    pub epoch: Option<u64>,
    /// The consensus as the collector last saw it, or why there is none.
    pub consensus: String,
    /// When this snapshot was taken (seconds since the Unix epoch).
    pub updated_unix_secs: u64,
    /// Nodes whose `/health` answered 200.
    pub ready: usize,
    /// Every node: the authorities, then the relays.
    pub nodes: Vec<NodeView>,
}

/// One node as the page shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeView {
    /// The node's name in the testnet (e.g. `mix-a`).
    pub name: String,
    /// `authority`, `mix` or `mailbox`.
    pub role: String,
    /// The mix layer (1–3) in the current consensus; `None` for
    /// authorities, mailbox servers and mixnodes the consensus lacks.
    pub layer: Option<u8>,
    /// Whether the current consensus lists the node (relays only).
    pub listed: bool,
    /// The jurisdiction the node declares (relays only).
    pub jurisdiction: Option<String>,
    /// The operator the node declares (relays only).
    pub operator: Option<String>,
    /// `/health` answered 200.
    pub ready: bool,
    /// `/health`'s answer ("ok", or the reason it is not ready), or
    /// "unreachable".
    pub health: String,
    /// Packets received per second since the previous snapshot (relays).
    pub received_per_sec: Option<f64>,
    /// Packets forwarded (mixnodes) or messages stored (mailbox servers)
    /// per second since the previous snapshot.
    pub sent_on_per_sec: Option<f64>,
    /// Packets received since the node started.
    pub received_total: Option<f64>,
    /// Packets dropped since the node started, every reason.
    pub dropped_total: Option<f64>,
    /// One line for the page (e.g. an authority's consensus).
    pub detail: String,
}

/// A running web view; the server and collector stop when it is dropped.
pub struct WebView {
    addr: SocketAddr,
    snapshot: Arc<Mutex<Snapshot>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WebView {
    /// Serves the view of `layout`'s network on `listen`, which must be a
    /// loopback address (port 0 picks a free port; see [`WebView::url`]).
    pub async fn start(layout: &Layout, listen: SocketAddr) -> Result<WebView> {
        if !listen.ip().is_loopback() {
            return Err(Error::InvalidOption(format!(
                "--web {listen}: the web view serves on loopback only (127.0.0.0/8 or ::1), \
                 e.g. --web 127.0.0.1:8080; reach it from elsewhere through an SSH tunnel"
            )));
        }
        let directory = DirectoryClient::new(&layout.directory).map_err(|e| Error::Io {
            what: "the web view's directory client".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Error::Io {
                what: format!("--web {listen}: cannot listen (choose another port)"),
                source: e,
            })?;
        let addr = listener.local_addr().map_err(|e| Error::Io {
            what: "the web view's address".into(),
            source: e,
        })?;
        let mut collector = Collector::new(layout.clone(), directory);
        let snapshot = Arc::new(Mutex::new(collector.collect().await));
        let shared = Arc::clone(&snapshot);
        let collect = tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                let next = collector.collect().await;
                if let Ok(mut s) = shared.lock() {
                    *s = next;
                }
            }
        });
        let app = Router::new()
            .route("/", get(page))
            .route("/app.js", get(script))
            .route("/style.css", get(style))
            .route("/api/nodes", get(nodes))
            .with_state(Arc::clone(&snapshot));
        let serve = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("the web view stopped serving: {e}");
            }
        });
        Ok(WebView {
            addr,
            snapshot,
            tasks: vec![collect, serve],
        })
    }

    /// Where the page is, e.g. `http://127.0.0.1:8080/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The latest snapshot (what `/api/nodes` serves).
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for WebView {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Asks the nodes and the directory, and remembers the previous counters
/// to turn them into rates.
struct Collector {
    layout: Layout,
    directory: DirectoryClient,
    /// Per node: when its counters were read, received and sent on.
    last: BTreeMap<String, (Instant, f64, f64)>,
}

/// What one node's metrics address answered.
struct Reading {
    health: Option<(u16, String)>,
    metrics: Option<String>,
    at: Instant,
}

impl Collector {
    fn new(layout: Layout, directory: DirectoryClient) -> Self {
        Collector {
            layout,
            directory,
            last: BTreeMap::new(),
        }
    }

    async fn collect(&mut self) -> Snapshot {
        let consensus =
            tokio::time::timeout(Duration::from_secs(3), self.directory.fetch_consensus()).await;
        let (consensus, consensus_text) = match consensus {
            Ok(Ok(c)) => {
                let text = format!(
                    "epoch {}: {} nodes, {} signatures",
                    c.epoch,
                    c.nodes.len(),
                    c.signatures
                );
                (Some(c), text)
            }
            Ok(Err(e)) => (None, format!("no consensus: {e}")),
            Err(_) => (
                None,
                "no consensus: the directory did not answer in 3 s".into(),
            ),
        };
        let readings = self.read_all().await;
        let mut nodes = Vec::new();
        for a in &self.layout.authorities {
            let r = readings.get(&a.name);
            let (ready, health) = health_text(r);
            let detail = match r.and_then(|r| r.metrics.as_deref()) {
                Some(m) => format!(
                    "consensus {} nodes, {} signatures",
                    metric_sum(m, "bastet_directory_consensus_nodes", ""),
                    metric_sum(m, "bastet_directory_consensus_signatures", "")
                ),
                None => "metrics unreachable".into(),
            };
            nodes.push(NodeView {
                name: a.name.clone(),
                role: "authority".into(),
                layer: None,
                listed: false,
                jurisdiction: None,
                operator: None,
                ready,
                health,
                received_per_sec: None,
                sent_on_per_sec: None,
                received_total: None,
                dropped_total: None,
                detail,
            });
        }
        for relay in &self.layout.relays {
            let r = readings.get(&relay.name);
            let (ready, health) = health_text(r);
            let id = NodeId::from_hex(&relay.node_id);
            let listed = match (&consensus, &id) {
                (Some(c), Some(id)) => c
                    .node(id)
                    .is_some_and(|d| d.addr == relay.listen.to_string()),
                _ => false,
            };
            let layer = match (&consensus, &id, relay.role) {
                (Some(c), Some(id), Role::Mix) if listed => c.layer_of(id),
                _ => None,
            };
            let prefix = match relay.role {
                Role::Mix => "bastet_mixnode",
                _ => "bastet_mailbox",
            };
            let sent_on_name = match relay.role {
                Role::Mix => "packets_forwarded",
                _ => "messages_stored",
            };
            let mut view = NodeView {
                name: relay.name.clone(),
                role: relay.role.to_string(),
                layer,
                listed,
                jurisdiction: Some(relay.jurisdiction.clone()),
                operator: Some(relay.operator.clone()),
                ready,
                health,
                received_per_sec: None,
                sent_on_per_sec: None,
                received_total: None,
                dropped_total: None,
                detail: String::new(),
            };
            if let Some((text, at)) = r.and_then(|r| Some((r.metrics.as_deref()?, r.at))) {
                let received = metric_sum(text, &format!("{prefix}_packets_received"), "");
                let sent_on = metric_sum(text, &format!("{prefix}_{sent_on_name}"), "");
                view.received_total = Some(received);
                view.dropped_total =
                    Some(metric_sum(text, &format!("{prefix}_packets_dropped"), ""));
                if let Some((then, r0, s0)) = self.last.get(&relay.name) {
                    let secs = at.duration_since(*then).as_secs_f64();
                    // A restarted node's counters start again from 0.
                    if secs > 0.0 && received >= *r0 && sent_on >= *s0 {
                        view.received_per_sec = Some((received - r0) / secs);
                        view.sent_on_per_sec = Some((sent_on - s0) / secs);
                    }
                }
                self.last
                    .insert(relay.name.clone(), (at, received, sent_on));
            }
            view.detail = relay_detail(&view, relay.role);
            nodes.push(view);
        }
        Snapshot {
            epoch: consensus.as_ref().map(|c| c.epoch),
            consensus: consensus_text,
            updated_unix_secs: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            ready: nodes.iter().filter(|n| n.ready).count(),
            nodes,
        }
    }

    /// Every node's `/health` and `/metrics`, asked at once.
    async fn read_all(&self) -> BTreeMap<String, Reading> {
        let mut tasks = tokio::task::JoinSet::new();
        let addrs = self
            .layout
            .authorities
            .iter()
            .map(|a| (a.name.clone(), a.metrics_listen))
            .chain(
                self.layout
                    .relays
                    .iter()
                    .map(|r| (r.name.clone(), r.metrics_listen)),
            );
        for (name, addr) in addrs {
            tasks.spawn(async move {
                let health = http_get(addr, "/health").await;
                let metrics = match http_get(addr, "/metrics").await {
                    Some((200, text)) => Some(text),
                    _ => None,
                };
                let at = Instant::now();
                (
                    name,
                    Reading {
                        health,
                        metrics,
                        at,
                    },
                )
            });
        }
        let mut out = BTreeMap::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok((name, reading)) = done {
                out.insert(name, reading);
            }
        }
        out
    }
}

/// Ready or not, and the words for it.
fn health_text(reading: Option<&Reading>) -> (bool, String) {
    match reading.and_then(|r| r.health.as_ref()) {
        Some((200, body)) => (true, one_line(body, "ok")),
        Some((status, body)) => (false, one_line(body, &format!("HTTP {status}"))),
        None => (false, "unreachable".into()),
    }
}

/// The first line of `body`, at most 160 characters, or `empty`.
fn one_line(body: &str, empty: &str) -> String {
    let line = body.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return empty.to_string();
    }
    line.chars().take(160).collect()
}

fn relay_detail(view: &NodeView, role: Role) -> String {
    let sent_on = match role {
        Role::Mix => "forwarded",
        _ => "stored",
    };
    match (view.received_per_sec, view.sent_on_per_sec) {
        (Some(r), Some(s)) => format!("{r:.1} pkt/s in, {s:.1}/s {sent_on}"),
        _ if view.received_total.is_some() => "measuring…".into(),
        _ => "metrics unreachable".into(),
    }
}

/// A response with the view's headers: no caching, no sniffing, and a
/// policy that allows only this origin's script, style and fetches.
fn respond(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn page() -> Response {
    respond("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    respond("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    respond("text/css; charset=utf-8", STYLE)
}

async fn nodes(State(snapshot): State<Arc<Mutex<Snapshot>>>) -> Response {
    let snapshot = snapshot.lock().map(|s| s.clone()).unwrap_or_default();
    match serde_json::to_string(&snapshot) {
        Ok(json) => respond("application/json", json),
        Err(e) => respond(
            "text/plain; charset=utf-8",
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the snapshot: {e}"),
            ),
        ),
    }
}

const PAGE: &str = include_str!("web/index.html");
const SCRIPT: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/style.css");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reads_status_and_reason() {
        let reading = |health| Reading {
            health,
            metrics: None,
            at: Instant::now(),
        };
        assert_eq!(
            health_text(Some(&reading(Some((200, "ok\n".into()))))),
            (true, "ok".into())
        );
        assert_eq!(
            health_text(Some(&reading(Some((
                503,
                "not ready: the consensus does not list this node\nmore".into()
            ))))),
            (
                false,
                "not ready: the consensus does not list this node".into()
            )
        );
        assert_eq!(
            health_text(Some(&reading(Some((503, String::new()))))),
            (false, "HTTP 503".into())
        );
        assert_eq!(
            health_text(Some(&reading(None))),
            (false, "unreachable".into())
        );
        assert_eq!(health_text(None), (false, "unreachable".into()));
    }

    #[test]
    fn the_page_loads_only_its_own_script_and_style() {
        assert!(PAGE.contains("src=\"/app.js\""));
        assert!(PAGE.contains("href=\"/style.css\""));
        assert!(
            !PAGE.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        assert!(!SCRIPT.contains("innerHTML"), "node data is drawn as text");
    }
}
