//! The authority over real HTTPS on loopback: what it accepts, what it
//! refuses and why, and what clients verify.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bastet_directory::server::{self, AuthorityConfig};
use bastet_directory::{
    AuthorityRef, Descriptor, DirectoryClient, DirectoryConfig, Error, NodeKeys, Role,
    SignedConsensus, SignedDescriptor, SigningKey, SphinxKeyRing, VerifiedConsensus,
    default_sphinx_key_grace_secs, epoch_bounds, epoch_of, load_config, publish_rotating_forever,
    unix_now,
};
use bastet_sphinx::NodeId;

const EPOCH_SECS: u64 = 3600;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Net {
    _dir: tempfile::TempDir,
    directory: DirectoryConfig,
    admitted: NodeKeys,
    /// Plain-HTTP `/metrics` address.
    metrics: SocketAddr,
}

/// An authority in this process admitting `admitted`, and the directory
/// section that pins it.
async fn authority_admitting(admitted: &[NodeId]) -> (tempfile::TempDir, DirectoryConfig) {
    authority_with_epochs(admitted, EPOCH_SECS).await
}

async fn authority_with_epochs(
    admitted: &[NodeId],
    epoch_secs: u64,
) -> (tempfile::TempDir, DirectoryConfig) {
    let (dir, directory, _) = authority_with_metrics(admitted, epoch_secs).await;
    (dir, directory)
}

/// [`authority_with_epochs`], also returning the `/metrics` address.
async fn authority_with_metrics(
    admitted: &[NodeId],
    epoch_secs: u64,
) -> (tempfile::TempDir, DirectoryConfig, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let metrics = free_addr();
    let info = server::init(dir.path(), listen, Some(metrics), epoch_secs, admitted).unwrap();
    let config: AuthorityConfig =
        load_config(&dir.path().join("authority.toml"), "BASTET_TEST_AUTHORITY").unwrap();
    tokio::spawn(server::run(config));
    let directory = DirectoryConfig {
        authorities: vec![AuthorityRef {
            url: info.url,
            identity_key: info.identity_key,
            tls_pin: info.tls_pin,
        }],
        threshold: None,
        epoch_secs,
    };
    // Wait for the listener.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (dir, directory, metrics)
}

async fn start_authority() -> Net {
    let admitted = NodeKeys::generate();
    let (dir, directory, metrics) = authority_with_metrics(&[admitted.node_id()], EPOCH_SECS).await;
    Net {
        _dir: dir,
        directory,
        admitted,
        metrics,
    }
}

/// The authority's `/metrics` text.
async fn metrics_text(net: &Net) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(net.metrics).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    text
}

/// The value of the series `name{labels}` (as exported) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .and_then(|v| v.trim().parse().ok())
}

fn descriptor(keys: &NodeKeys, epoch: u64) -> Descriptor {
    Descriptor {
        identity_key: *keys.identity.verifying_key().as_bytes(),
        epoch,
        sphinx_key: [7; 32],
        tls_pin: [9; 32],
        addr: "127.0.0.1:9".into(),
        api_addr: None,
        circuit_addr: None,
        role: Role::Mix,
        jurisdiction: "DE".into(),
        operator: "Test Org".into(),
    }
}

fn now_epoch() -> u64 {
    epoch_of(unix_now(), EPOCH_SECS)
}

async fn post_raw(net: &Net, body: Vec<u8>) -> (u16, String) {
    let a = &net.directory.authorities[0];
    let http = bastet_link::https_client(a.pin().unwrap()).unwrap();
    let r = http
        .post(format!("{}/v1/descriptors", a.url))
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Fetches until the authority has voted and published (a lone authority
/// votes a second after descriptors stop arriving).
async fn await_consensus(client: &DirectoryClient) -> VerifiedConsensus {
    let mut last = None;
    for _ in 0..100 {
        match client.fetch_consensus().await {
            Ok(c) => return c,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no consensus: {last:?}");
}

#[tokio::test]
async fn admitted_node_appears_in_a_verified_consensus() {
    let net = start_authority().await;
    let client = DirectoryClient::new(&net.directory).unwrap();
    let err = client.fetch_consensus().await.unwrap_err();
    assert!(matches!(err, Error::NoConsensus { .. }), "{err}");
    assert!(err.to_string().contains("no consensus for epoch"), "{err}");

    let signed = descriptor(&net.admitted, now_epoch())
        .sign(&net.admitted.identity)
        .unwrap();
    assert_eq!(client.publish(&signed).await.unwrap(), 1);
    let consensus = await_consensus(&client).await;
    assert_eq!(consensus.epoch, now_epoch());
    assert_eq!(consensus.nodes.len(), 1);
    assert_eq!(consensus.nodes[0].node_id(), net.admitted.node_id());
    assert_eq!(consensus.signatures, 1);
}

#[tokio::test]
async fn authority_refuses_bad_descriptors_with_reasons() {
    let net = start_authority().await;

    let mut forged = descriptor(&net.admitted, now_epoch())
        .sign(&net.admitted.identity)
        .unwrap();
    forged.signature[10] ^= 1;
    let (status, why) = post_raw(&net, forged.to_bytes()).await;
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("bad signature"), "{why}");

    let stranger = NodeKeys::generate();
    let signed = descriptor(&stranger, now_epoch())
        .sign(&stranger.identity)
        .unwrap();
    let (status, why) = post_raw(&net, signed.to_bytes()).await;
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("allow-list"), "{why}");

    let stale = descriptor(&net.admitted, now_epoch() - 1)
        .sign(&net.admitted.identity)
        .unwrap();
    let (status, why) = post_raw(&net, stale.to_bytes()).await;
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("epoch"), "{why}");

    let (status, why) = post_raw(&net, b"\xff\xff\xff garbage".to_vec()).await;
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("malformed"), "{why}");

    let (status, _) = post_raw(&net, vec![0; 64 * 1024]).await;
    assert_eq!(status, 413);

    // Each refusal is counted by its reason, the oversize body too; and the
    // API's connections are counted (`post_raw`'s each closed when done).
    let text = metrics_text(&net).await;
    let rejected = |reason: &str| {
        value(
            &text,
            &format!("bastet_directory_descriptors_rejected_total{{reason=\"{reason}\"}}"),
        )
    };
    for (reason, n) in [
        ("bad_signature", 1.0),
        ("not_admitted", 1.0),
        ("wrong_epoch", 1.0),
        ("malformed", 1.0),
        ("too_large", 1.0),
    ] {
        assert_eq!(rejected(reason), Some(n), "{reason}: {text}");
    }
    for reason in ["limit", "handshake", "idle", "closed"] {
        let series = format!(
            "bastet_directory_peer_connections_closed_total{{direction=\"api\",reason=\"{reason}\"}}"
        );
        assert!(value(&text, &series).is_some(), "no {series}: {text}");
    }
    assert!(
        value(
            &text,
            "bastet_directory_peer_connections{direction=\"api\"}"
        )
        .is_some(),
        "{text}"
    );

    // None of it reached the consensus.
    let client = DirectoryClient::new(&net.directory).unwrap();
    assert!(client.fetch_consensus().await.is_err());
}

#[tokio::test]
async fn client_pinning_another_authority_key_refuses_the_consensus() {
    let net = start_authority().await;
    let client = DirectoryClient::new(&net.directory).unwrap();
    let signed: SignedDescriptor = descriptor(&net.admitted, now_epoch())
        .sign(&net.admitted.identity)
        .unwrap();
    client.publish(&signed).await.unwrap();
    await_consensus(&client).await;

    let mut wrong = net.directory.clone();
    wrong.authorities[0].identity_key =
        hex::encode(SigningKey::from_bytes(&[1; 32]).verifying_key().as_bytes());
    let err = DirectoryClient::new(&wrong)
        .unwrap()
        .fetch_consensus()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("valid signatures"), "{err}");

    let mut wrong_pin = net.directory.clone();
    wrong_pin.authorities[0].tls_pin = hex::encode([7u8; 32]);
    assert!(
        DirectoryClient::new(&wrong_pin)
            .unwrap()
            .fetch_consensus()
            .await
            .is_err()
    );

    // The watch picks the consensus up.
    let mut watch =
        bastet_directory::ConsensusWatch::spawn(Arc::new(client), Duration::from_secs(60));
    let c = tokio::time::timeout(Duration::from_secs(10), watch.ready())
        .await
        .unwrap();
    assert_eq!(c.nodes.len(), 1);
}

#[tokio::test]
async fn an_epochs_consensus_never_changes_once_voted() {
    let first = NodeKeys::generate();
    let second = NodeKeys::generate();
    let (_dir, directory) = authority_admitting(&[first.node_id(), second.node_id()]).await;
    let client = Arc::new(DirectoryClient::new(&directory).unwrap());
    let publish = |keys: &NodeKeys| descriptor(keys, now_epoch()).sign(&keys.identity).unwrap();
    client.publish(&publish(&first)).await.unwrap();
    let before = await_consensus(&client).await;
    assert_eq!(before.nodes.len(), 1);

    // Accepted, but too late for this epoch's vote: it counts from the
    // next one. Every client of the epoch sees the same document.
    client.publish(&publish(&second)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = client.fetch_consensus().await.unwrap();
    assert_eq!(after.epoch, before.epoch);
    assert_eq!(after.nodes.len(), 1);
    assert_eq!(after.nodes[0].node_id(), first.node_id());
    // The watch holds that same document.
    let mut watch =
        bastet_directory::ConsensusWatch::spawn(client.clone(), Duration::from_secs(600));
    assert_eq!(watch.ready().await.nodes.len(), 1);
}

#[tokio::test]
async fn a_rotating_node_publishes_each_epochs_own_sphinx_key() {
    // Short epochs: the next epoch's vote is cast half an epoch before it
    // starts, so with 10-second epochs its consensus exists within seconds.
    const EPOCH_SECS: u64 = 10;
    // Starting in the last seconds of an epoch, the first vote would come
    // after that epoch ended (so it gets no consensus, by design): start
    // early in one.
    while EPOCH_SECS - unix_now() % EPOCH_SECS < 5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let admitted = NodeKeys::generate();
    let (_dir, directory, metrics) =
        authority_with_metrics(&[admitted.node_id()], EPOCH_SECS).await;
    let net = Net {
        _dir,
        directory,
        admitted,
        metrics,
    };
    let keys_dir = tempfile::tempdir().unwrap();
    let mut ring = SphinxKeyRing::open(
        keys_dir.path(),
        EPOCH_SECS,
        default_sphinx_key_grace_secs(EPOCH_SECS),
    )
    .unwrap();
    let epoch = unix_now() / EPOCH_SECS;
    ring.rotate(unix_now()).unwrap();
    let expected = [ring.public(epoch).unwrap(), ring.public(epoch + 1).unwrap()];
    assert_ne!(expected[0], expected[1]);
    let ring = Arc::new(std::sync::Mutex::new(ring));
    let client = Arc::new(DirectoryClient::new(&net.directory).unwrap());
    let publisher = tokio::spawn(publish_rotating_forever(
        client.clone(),
        descriptor(&net.admitted, 0),
        net.admitted.identity.clone(),
        ring,
    ));

    let a = &net.directory.authorities[0];
    let http = bastet_link::https_client(a.pin().unwrap()).unwrap();
    let pinned = [a.key().unwrap()];
    for (e, key) in [epoch, epoch + 1].into_iter().zip(expected) {
        let mut published = None;
        for _ in 0..250 {
            let r = http
                .get(format!("{}/v1/consensus/{e}", a.url))
                .send()
                .await
                .unwrap();
            if r.status().is_success() {
                published = Some(r.bytes().await.unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let bytes = published.expect("the epoch's consensus never appeared");
        // Verified as of the epoch's start, when it becomes valid.
        let consensus = SignedConsensus::from_bytes(&bytes)
            .unwrap()
            .verify(&pinned, 1, epoch_bounds(e, EPOCH_SECS).0)
            .unwrap();
        let d = consensus.node(&net.admitted.node_id()).unwrap();
        assert_eq!(d.sphinx_public(), key, "epoch {e}");
    }
    publisher.abort();
}

#[tokio::test]
async fn status_shows_the_epoch_layers_jurisdictions_and_signers() {
    let keys = NodeKeys::generate();
    let (dir, directory) = authority_admitting(&[keys.node_id()]).await;
    let config: AuthorityConfig =
        load_config(&dir.path().join("authority.toml"), "BASTET_TEST_STATUS").unwrap();
    let before = server::status(&config).await.unwrap();
    assert!(!before.published);
    assert!(before.to_string().contains("none held"), "{before}");

    let client = DirectoryClient::new(&directory).unwrap();
    client
        .publish(&descriptor(&keys, now_epoch()).sign(&keys.identity).unwrap())
        .await
        .unwrap();
    await_consensus(&client).await;
    let status = server::status(&config).await.unwrap();
    assert_eq!(status.epoch, now_epoch());
    assert!(status.published);
    assert_eq!((status.authorities, status.threshold), (1, 1));
    // One mix: the epoch decides which layer it is dealt into.
    let layered: usize = ["mix1", "mix2", "mix3"]
        .iter()
        .filter_map(|l| status.nodes_by_layer.get(*l))
        .sum();
    assert_eq!(layered, 1, "{:?}", status.nodes_by_layer);
    assert_eq!(status.nodes_by_jurisdiction.get("DE"), Some(&1));
    assert!(status.signers[0].signed);
    let text = status.to_string();
    assert!(text.contains("published (1 of 1 signatures"), "{text}");
    assert!(text.contains("signed  this authority"), "{text}");
}

/// An "authority" holding a real pinned key that serves, for every epoch
/// asked, a document it signed for an older epoch: a rollback attempt.
#[tokio::test]
async fn a_rolled_back_or_wrong_epoch_consensus_is_refused() {
    let key = SigningKey::from_bytes(&[77; 32]);
    let node = NodeKeys::generate();
    let old_epoch = now_epoch() - 1;
    let d = descriptor(&node, old_epoch);
    let doc = bastet_directory::Consensus::new(
        old_epoch,
        EPOCH_SECS,
        vec![(d.node_id(), d.sign(&node.identity).unwrap())],
    )
    .sign(&key)
    .unwrap()
    .to_bytes();
    let tls = bastet_link::TlsIdentity::generate().unwrap();
    let pin = tls.pin();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || {
        let doc = doc.clone();
        async move { doc }
    });
    tokio::spawn(async move { bastet_link::serve_https(listener, &tls, app).await });
    let directory = DirectoryConfig {
        authorities: vec![AuthorityRef {
            url: format!("https://{addr}"),
            identity_key: hex::encode(key.verifying_key().as_bytes()),
            tls_pin: pin.to_hex(),
        }],
        threshold: None,
        epoch_secs: EPOCH_SECS,
    };
    let client = DirectoryClient::new(&directory).unwrap();
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Served as the current epoch's: expired, refused.
    let err = client.fetch_consensus().await.unwrap_err();
    assert!(matches!(err, Error::NoConsensus { .. }), "{err}");
    assert!(err.to_string().contains("valid from"), "{err}");
    // Served as the next epoch's: refused as well.
    let err = client.fetch_epoch(now_epoch() + 1).await.unwrap_err();
    assert!(err.to_string().contains("valid from"), "{err}");
}
