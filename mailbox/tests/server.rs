//! The mailbox server as a real process on loopback, with a real directory
//! authority in-process: publishing, delivery over the TLS packet link,
//! the authenticated API, metrics, durability across SIGKILL, clean SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bastet_directory::{DirectoryClient, DirectoryConfig, SigningKey, unix_now};
use bastet_link::{CertPin, connect, write_frame};
use bastet_mailbox::api::{authorization_header, list_path};
use bastet_mailbox::{Error, MailboxClient};
use bastet_sphinx::{FinalPayload, Hop, MailboxId, NodeId, SphinxPublicKey, build, fragment};
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_bastet-mailbox");

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn random_key() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut seed);
    SigningKey::from_bytes(&seed)
}

/// Starts a directory authority in this process; returns the directory
/// file nodes are initialised with.
async fn start_authority(dir: &Path) -> PathBuf {
    let auth_dir = dir.join("authority");
    let info = bastet_directory::server::init(&auth_dir, free_addr(), None, 10, &[]).unwrap();
    let mut config: bastet_directory::server::AuthorityConfig =
        bastet_directory::load_config(&auth_dir.join("authority.toml"), "BASTET_TEST_NO_ENV")
            .unwrap();
    config.open_admission = true;
    tokio::spawn(bastet_directory::server::run(config));
    let path = dir.join("directory.toml");
    std::fs::write(
        &path,
        format!(
            "epoch_secs = 10\n[[authorities]]\nurl = \"{}\"\nidentity_key = \"{}\"\ntls_pin = \"{}\"\n",
            info.url, info.identity_key, info.tls_pin
        ),
    )
    .unwrap();
    path
}

struct Node {
    dir: PathBuf,
    config: PathBuf,
    node_id: NodeId,
    pin: CertPin,
    listen: SocketAddr,
    api: SocketAddr,
    metrics: SocketAddr,
    child: Option<Child>,
}

impl Node {
    fn init(dir: &Path, directory: &Path, listen: SocketAddr) -> Node {
        let (api, metrics) = (free_addr(), free_addr());
        let out = Command::new(BIN)
            .args(["init", "--dir"])
            .arg(dir)
            .args(["--listen", &listen.to_string()])
            .args(["--api-listen", &api.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .args([
                "--jurisdiction",
                "CH",
                "--operator",
                "Test Org",
                "--directory",
            ])
            .arg(directory)
            .args(["--packet-log"])
            .arg(dir.join("packets.log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        Node {
            dir: dir.to_path_buf(),
            config: PathBuf::from(info["config"].as_str().unwrap()),
            node_id: NodeId::from_hex(info["node_id"].as_str().unwrap()).unwrap(),
            pin: CertPin::from_hex(info["tls_pin"].as_str().unwrap()).unwrap(),
            listen,
            api,
            metrics,
            child: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("BASTET_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    /// Waits for the process to exit by itself.
    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metrics_text(&self) -> String {
        use tokio::io::AsyncReadExt;
        let Ok(mut tcp) = tokio::net::TcpStream::connect(self.metrics).await else {
            return String::new();
        };
        let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut response = String::new();
        if tcp.write_all(request.as_bytes()).await.is_err()
            || tcp.read_to_string(&mut response).await.is_err()
        {
            return String::new();
        }
        response
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    node: &Node,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; node log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `text` as a one-fragment envelope without an ack request, and
/// returns the fragment bytes the server is to store.
async fn send_packet(
    addr: SocketAddr,
    pin: CertPin,
    route: &[Hop],
    mailbox: &MailboxId,
    text: &[u8],
) -> Vec<u8> {
    let f = fragment(text, &mut rand::rng()).unwrap().remove(0);
    let packet = build(route, mailbox, &FinalPayload::new(None, &f).to_bytes()).unwrap();
    let mut tls = connect(&addr.to_string(), pin).await.unwrap();
    write_frame(&mut tls, packet.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    tls.shutdown().await.unwrap();
    f.to_bytes()
}

/// A signed GET of `mailbox`'s messages with a header the test controls.
async fn raw_list(node: &Node, header: &str, mailbox: &MailboxId) -> (u16, String) {
    let http = bastet_link::https_client(node.pin).unwrap();
    let url = format!("https://{}{}", node.api, list_path(mailbox, None, 7));
    let r = http
        .get(url)
        .header("authorization", header)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_server_stores_durably_and_serves_only_its_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = start_authority(tmp.path()).await;
    let mut node = Node::init(&tmp.path().join("mailbox"), &directory, free_addr());
    node.start();

    // The server publishes its descriptor; the consensus names its keys.
    let dir_config: DirectoryConfig =
        toml::from_str(&std::fs::read_to_string(&directory).unwrap()).unwrap();
    let dir_client = DirectoryClient::new(&dir_config).unwrap();
    let descriptor = eventually("the mailbox in the consensus", &node, || async {
        let c = dir_client.fetch_consensus().await.ok()?;
        c.node(&node.node_id).cloned()
    })
    .await;
    assert_eq!(descriptor.role, bastet_directory::Role::Mailbox);
    assert_eq!(
        descriptor.api_addr.as_deref(),
        Some(node.api.to_string().as_str())
    );
    assert_eq!(descriptor.addr, node.listen.to_string());
    assert_eq!(descriptor.pin(), node.pin);
    assert_eq!(descriptor.jurisdiction, "CH");
    let me = Hop {
        node: node.node_id,
        sphinx_key: SphinxPublicKey::from(descriptor.sphinx_key),
        delay: Duration::ZERO,
    };

    // Register a mailbox (twice: idempotent).
    let client = MailboxClient::new(&node.api.to_string(), node.pin).unwrap();
    let owner = random_key();
    let mailbox = client.register(&owner).await.unwrap();
    assert_eq!(
        mailbox,
        MailboxId::from_owner_key(owner.verifying_key().as_bytes())
    );
    assert_eq!(client.register(&owner).await.unwrap(), mailbox);
    assert!(
        client
            .list(&owner, &mailbox, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // One-hop packet over the TLS link, then poll until it is stored.
    let message = send_packet(
        node.listen,
        node.pin,
        std::slice::from_ref(&me),
        &mailbox,
        b"opaque end-to-end ciphertext 0123456789",
    )
    .await;
    let stored = eventually("the message to be stored", &node, || async {
        let list = client.list(&owner, &mailbox, None, 10).await.unwrap();
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, message);
    let now_ms = unix_now() * 1000;
    assert!(
        stored[0].received_at_ms <= now_ms + 1000 && stored[0].received_at_ms + 60_000 > now_ms
    );
    // The log is appended just after the synced write that made the message
    // listable, so give it a moment.
    let mut logged = false;
    for _ in 0..100 {
        let packet_log = std::fs::read(node.dir.join("packets.log")).unwrap_or_default();
        if packet_log
            .windows(message.len())
            .any(|w| w == message.as_slice())
        {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "stored payload missing from packet_log");

    // Identical requests back to back (the same second, fresh nonces) are
    // all accepted; none counts as a replay (checked in /metrics below).
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let list = client.list(&owner, &mailbox, None, 10).await.unwrap();
        assert_eq!(list, stored);
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "identical requests were delayed"
    );

    // A bad signature, a replayed request, and another key are refused
    // (`raw_list` asks for limit=7).
    let pq = list_path(&mailbox, None, 7);
    let good = authorization_header(&owner, "GET", &pq, b"", unix_now());
    let mut forged = good.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let (status, body) = raw_list(&node, &forged, &mailbox).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bad signature"), "{body}");
    let (status, _) = raw_list(&node, &good, &mailbox).await;
    assert_eq!(status, 200);
    let (status, body) = raw_list(&node, &good, &mailbox).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("replayed"), "{body}");
    let stale = authorization_header(&owner, "GET", &pq, b"", unix_now() - 300);
    let (status, body) = raw_list(&node, &stale, &mailbox).await;
    assert_eq!((status, body.contains("stale")), (401, true), "{body}");
    let stranger = random_key();
    match client.list(&stranger, &mailbox, None, 10).await {
        Err(Error::Refused { status: 403, why }) => assert!(why.contains("another key"), "{why}"),
        other => panic!("a stranger listed the mailbox: {other:?}"),
    }
    match client.delete(&stranger, &mailbox, u64::MAX).await {
        Err(Error::Refused { status: 403, .. }) => {}
        other => panic!("a stranger deleted from the mailbox: {other:?}"),
    }

    // A packet for a mailbox nobody registered is dropped and counted.
    let nobody = MailboxId::from_owner_key(random_key().verifying_key().as_bytes());
    send_packet(
        node.listen,
        node.pin,
        std::slice::from_ref(&me),
        &nobody,
        b"lost",
    )
    .await;
    let metrics = eventually("unknown_mailbox in /metrics", &node, || async {
        let text = node.metrics_text().await;
        text.contains("bastet_mailbox_packets_dropped_total{reason=\"unknown_mailbox\"} 1")
            .then_some(text)
    })
    .await;
    assert!(
        metrics.contains("bastet_mailbox_packets_dropped_total{reason=\"wrong_length\"} 0\n"),
        "{metrics}"
    );

    // Half a packet, then the end: a packet cut short, counted as such
    // (a connection that fails its TLS handshake is not a packet).
    let mut junk = tokio::net::TcpStream::connect(node.listen).await.unwrap();
    junk.write_all(b"not TLS\r\n").await.unwrap();
    let mut half = connect(&node.listen.to_string(), node.pin).await.unwrap();
    half.write_all(&[7; bastet_link::FRAME_LEN / 2])
        .await
        .unwrap();
    half.shutdown().await.unwrap();
    eventually("the two bad connections counted", &node, || async {
        let text = node.metrics_text().await;
        let inbound = |reason: &str| {
            format!(
                "bastet_mailbox_peer_connections_closed_total{{direction=\"inbound\",reason=\"{reason}\"}} 1\n"
            )
        };
        (text.contains(&inbound("broken")) && text.contains(&inbound("handshake"))).then_some(())
    })
    .await;
    // The link's counts reach the metrics every 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let metrics = node.metrics_text().await;
    assert!(
        metrics.contains("bastet_mailbox_packets_dropped_total{reason=\"wrong_length\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bastet_mailbox_messages_stored_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bastet_mailbox_auth_failures_total{reason=\"replayed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bastet_mailbox_auth_failures_total{reason=\"bad_signature\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bastet_mailbox_mailboxes 1\n"),
        "{metrics}"
    );
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    assert!(
        gauge("bastet_mailbox_replay_filter_entries") >= 1.0,
        "{metrics}"
    );
    assert!(
        gauge("bastet_mailbox_replay_filter_capacity") >= 1.0,
        "{metrics}"
    );
    assert!(gauge("bastet_mailbox_sphinx_key_epoch") >= 1.0, "{metrics}");
    // RocksDB's own figures: the message and the mailbox are in it, and
    // nothing went wrong in the background.
    assert!(
        gauge("bastet_mailbox_rocksdb_estimate_num_keys{column_family=\"messages\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        gauge("bastet_mailbox_rocksdb_cur_size_all_mem_tables_bytes{column_family=\"messages\"}")
            > 0.0,
        "{metrics}"
    );
    assert_eq!(gauge("bastet_mailbox_rocksdb_background_errors"), 0.0);
    // Connections: both packet senders hung up in good order, and the
    // API's are counted (each `raw_list` client's closed when it went).
    let value = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    };
    let inbound_closed =
        "bastet_mailbox_peer_connections_closed_total{direction=\"inbound\",reason=\"closed\"}";
    let api_closed =
        "bastet_mailbox_peer_connections_closed_total{direction=\"api\",reason=\"closed\"}";
    let metrics = eventually("connections closed in /metrics", &node, || async {
        let text = node.metrics_text().await;
        (value(&text, inbound_closed) == Some(2.0) && value(&text, api_closed) >= Some(4.0))
            .then_some(text)
    })
    .await;
    for series in [
        "bastet_mailbox_peer_connections{direction=\"inbound\"}",
        "bastet_mailbox_peer_connections{direction=\"outbound\"}",
        "bastet_mailbox_peer_connections{direction=\"api\"}",
        "bastet_mailbox_peer_connections_closed_total{direction=\"inbound\",reason=\"limit\"}",
    ] {
        assert!(value(&metrics, series).is_some(), "no {series}: {metrics}");
    }
    assert_eq!(
        value(
            &metrics,
            "bastet_mailbox_peer_connections{direction=\"inbound\"}"
        ),
        Some(0.0),
        "{metrics}"
    );

    // Durability: once listed, the message survives SIGKILL.
    node.child.as_mut().unwrap().kill().unwrap();
    node.wait_exit(Duration::from_secs(10)).await;
    node.start();
    let after_restart = eventually("the API after restart", &node, || async {
        client.list(&owner, &mailbox, None, 10).await.ok()
    })
    .await;
    assert_eq!(after_restart.len(), 1);
    assert_eq!(after_restart[0].payload, message);
    assert_eq!(after_restart[0].seq, stored[0].seq);

    // Deleting what was read empties the mailbox; payloads never reach the log.
    assert_eq!(
        client
            .delete(&owner, &mailbox, stored[0].seq)
            .await
            .unwrap(),
        1
    );
    assert!(
        client
            .list(&owner, &mailbox, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let log = node.log();
    assert!(!log.contains("opaque end-to-end"), "payload in the log");
    assert!(!log.contains(&mailbox.to_hex()), "mailbox id in the log");

    // SIGTERM: a clean, successful exit.
    let pid = node.child.as_ref().unwrap().id();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = node.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        node.log()
    );
}

#[tokio::test]
async fn a_taken_port_is_a_clear_startup_error() {
    let tmp = tempfile::tempdir().unwrap();
    // No authority is needed: the server must fail before it publishes.
    let directory = tmp.path().join("directory.toml");
    std::fs::write(
        &directory,
        format!(
            "epoch_secs = 10\n[[authorities]]\nurl = \"https://127.0.0.1:9\"\nidentity_key = \"{}\"\ntls_pin = \"{}\"\n",
            hex::encode(random_key().verifying_key().as_bytes()),
            hex::encode([0u8; 32])
        ),
    )
    .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut node = Node::init(
        &tmp.path().join("mailbox"),
        &directory,
        taken.local_addr().unwrap(),
    );

    // init refuses to overwrite the node's keys.
    let again = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(&node.dir)
        .args([
            "--listen",
            "127.0.0.1:1",
            "--api-listen",
            "127.0.0.1:2",
            "--metrics-listen",
            "127.0.0.1:3",
        ])
        .args(["--jurisdiction", "CH", "--operator", "x", "--directory"])
        .arg(&directory)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("identity.key"));

    // Environment overrides reach validation, which names the key.
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&node.config)
        .env("BASTET_MAILBOX__QUOTA_MESSAGES", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("quota_messages"));

    node.start();
    let status = node.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success());
    let log = node.log();
    assert!(
        log.contains("cannot listen on") && log.contains("(listen)"),
        "{log}"
    );
}
