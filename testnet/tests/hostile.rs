//! Hostile peers against real node processes on 127.0.0.1: garbage,
//! oversized and truncated input, slow-loris connections, a connection
//! flood and replayed packets, aimed at four listeners: a layer-1 mixnode's
//! packet link, a mailbox server's packet link and its HTTPS API, and a
//! directory authority's HTTPS API. Each node must refuse what it should,
//! count it in `/metrics`, cut off what stalls within its limits, stay up,
//! and keep serving honest peers meanwhile: packets still cross the
//! network, mailboxes are still polled, the consensus is still served and a
//! message still goes from one client to another.
//!
//! One network for every attack, to keep the run short; at most a few
//! hundred descriptors open at once in this process. Start the binaries as
//! `end_to_end.rs` says.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bastet_directory::{Descriptor, DirectoryClient, Role, VerifiedConsensus};
use bastet_link::{CertPin, FRAME_LEN};
use bastet_sphinx::{FinalPayload, Hop, MailboxId, NodeId, Packet, build, fragment};
use bastet_testnet::{Network, NetworkOptions, metric_sum};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Slow-loris connections of each kind held against each listener.
const LORIS: usize = 16;
/// Quick connect-and-hang-up connections against each listener.
const FLOOD: usize = 300;
/// Flood connections in flight at once.
const FLOOD_PARALLEL: usize = 32;
/// The nodes' handshake, frame, first-request and header timeouts are
/// 10 s, an API's whole-request one 30 s: what they cut must be gone (and
/// counted) within this of the check starting.
const CUT_WITHIN: Duration = Duration::from_secs(45);
/// How long a counter may take to show what was sent (the mixnode copies
/// the link's counters every 250 ms, the mailbox every 500 ms).
const COUNTED_WITHIN: Duration = Duration::from_secs(10);
/// The network's epoch. The probes are built once from the first
/// consensus, so the whole test must run inside one epoch: an epoch
/// boundary deals the mixes into new layers and the old route breaks.
const EPOCH_SECS: u64 = 300;
/// The epoch time the test needs left when it starts (it takes about a
/// minute on a 2-core machine).
const EPOCH_ROOM: u64 = 120;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A packet link: fixed-size frames over TLS.
    Link,
    /// An HTTPS API.
    Api,
}

/// One listener under attack.
#[derive(Clone, Debug)]
struct Target {
    /// What it is, for messages.
    what: &'static str,
    /// The node's name in the testnet (whose `/metrics` counts it).
    node: String,
    /// The node's metric prefix.
    prefix: &'static str,
    /// The `direction` label its connections are counted under.
    direction: &'static str,
    addr: SocketAddr,
    pin: CertPin,
    kind: Kind,
    /// An API's endpoint that reads a request body.
    upload: &'static str,
}

impl Target {
    /// `(metric, labels)` of its connections that ended for `reason`.
    fn closed(&self, reason: &str) -> (String, String) {
        (
            format!("{}_peer_connections_closed", self.prefix),
            format!("direction=\"{}\",reason=\"{reason}\"", self.direction),
        )
    }

    /// `(metric, labels)` of its connections open now.
    fn open(&self) -> (String, String) {
        (
            format!("{}_peer_connections", self.prefix),
            format!("direction=\"{}\"", self.direction),
        )
    }

    /// `(metric, labels)` of the packets it dropped for `reason`.
    fn dropped(&self, reason: &str) -> (String, String) {
        (
            format!("{}_packets_dropped", self.prefix),
            format!("reason=\"{reason}\""),
        )
    }
}

/// The value of `(metric, labels)` on `node` now.
async fn read(net: &Network, node: &str, (name, labels): &(String, String)) -> f64 {
    let text = net
        .metrics(node)
        .await
        .unwrap_or_else(|e| panic!("{node}'s /metrics: {e}"));
    metric_sum(&text, name, labels)
}

/// Waits until `(metric, labels)` on `node` is at least `at_least`, and
/// returns it; fails after `within` with the value it had.
async fn reaches(
    net: &Network,
    node: &str,
    series: &(String, String),
    at_least: f64,
    within: Duration,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = read(net, node, series).await;
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: {}{{{}}} is {v}, not {at_least}, after {within:?}\n{}",
            series.0,
            series.1,
            net.log_tails(15)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `(metric, labels)` on `node` is at most `at_most`.
async fn falls_to(
    net: &Network,
    node: &str,
    series: &(String, String),
    at_most: f64,
    within: Duration,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = read(net, node, series).await;
        if v <= at_most {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: {}{{{}}} is {v}, not down to {at_most}, after {within:?}",
            series.0,
            series.1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plain-HTTP GET (the metrics address): status and body.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        Some((
            head.split_whitespace().nth(1)?.parse().ok()?,
            body.to_string(),
        ))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Every node answers `/health` with 200.
async fn all_healthy(net: &Network) {
    let layout = net.layout();
    let nodes = layout
        .authorities
        .iter()
        .map(|a| (&a.name, a.metrics_listen))
        .chain(layout.relays.iter().map(|r| (&r.name, r.metrics_listen)));
    for (name, addr) in nodes {
        let health = http_get(addr, "/health").await;
        assert!(
            matches!(&health, Some((200, _))),
            "{name} /health: {health:?}"
        );
    }
}

/// Whether the node closed `stream` within `within` (whatever it said
/// before: a TLS alert, an HTTP error).
async fn closed_by_node(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends `request` over a fresh pinned TLS connection; returns what the
/// node answered before it closed the connection (which it must, within
/// 10 s).
async fn https_exchange(t: &Target, request: &[u8]) -> String {
    let tls = bastet_link::connect(&t.addr.to_string(), t.pin)
        .await
        .unwrap_or_else(|e| panic!("{}: TLS: {e}", t.what));
    // Read while writing: the node may answer and close before it read
    // everything, and the answer must be read before the reset that
    // closing on unread bytes sends.
    let (mut from, mut to) = tokio::io::split(tls);
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        let _ = to.write_all(&request).await;
        let _ = to.flush().await;
        to
    });
    let mut answer = Vec::new();
    let mut limited = (&mut from).take(64 << 10);
    let read = limited.read_to_end(&mut answer);
    let closed = tokio::time::timeout(Duration::from_secs(10), read).await;
    writer.abort();
    assert!(
        closed.is_ok(),
        "{}: the connection stayed open after {:?}",
        t.what,
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).into_owned()
}

/// Bytes that are neither TLS nor HTTP nor a packet.
fn garbage(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::fill(&mut bytes[..]);
    bytes[..8].copy_from_slice(b"GARBAGE\0");
    bytes
}

/// A packet along `hops` (no delays) to `mailbox`, as a client builds one.
fn packet(hops: &[&Descriptor], mailbox: &MailboxId) -> Packet {
    let route: Vec<Hop> = hops
        .iter()
        .map(|d| Hop {
            node: d.node_id(),
            sphinx_key: d.sphinx_public(),
            delay: Duration::ZERO,
        })
        .collect();
    let f = fragment(b"bastet hostile-peer test", &mut rand::rng())
        .unwrap()
        .remove(0);
    build(&route, mailbox, &FinalPayload::new(None, &f).to_bytes()).unwrap()
}

/// Writes `frames` over one pinned TLS connection to `t`, then closes it.
async fn send_frames(t: &Target, frames: &[&[u8]]) {
    let mut tls = bastet_link::connect(&t.addr.to_string(), t.pin)
        .await
        .unwrap_or_else(|e| panic!("{}: TLS: {e}", t.what));
    for f in frames {
        tls.write_all(f).await.unwrap();
    }
    tls.flush().await.unwrap();
    tls.shutdown().await.unwrap();
}

/// A mailbox nobody registered: the mailbox server drops what is sent to
/// it as `unknown_mailbox` once it crossed the route.
fn nobody() -> MailboxId {
    let mut id = [0u8; 32];
    rand::fill(&mut id[..]);
    MailboxId(id)
}

/// The route from the consensus a probe takes: `first`, a layer-2 and a
/// layer-3 mix, then `mailbox`.
fn route<'a>(
    consensus: &'a VerifiedConsensus,
    first: &'a Descriptor,
    mailbox: &'a Descriptor,
) -> [&'a Descriptor; 4] {
    let in_layer = |layer| {
        consensus
            .nodes
            .iter()
            .find(|d| consensus.layer_of(&d.node_id()) == Some(layer))
            .unwrap_or_else(|| panic!("no layer-{layer} mix in the consensus"))
    };
    [first, in_layer(2), in_layer(3), mailbox]
}

/// A probe through the target mix to the mailbox server `mailbox` arrives
/// (counted `unknown_mailbox` there) within `COUNTED_WITHIN`.
async fn probe_crosses(net: &Network, mix: &Target, hops: [&Descriptor; 4], mailbox: &str) {
    let unknown = (
        "bastet_mailbox_packets_dropped".to_string(),
        "reason=\"unknown_mailbox\"".to_string(),
    );
    let before = read(net, mailbox, &unknown).await;
    send_frames(mix, &[packet(&hops, &nobody()).as_bytes()]).await;
    reaches(net, mailbox, &unknown, before + 1.0, COUNTED_WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_refused_counted_and_cut_off_while_honest_ones_are_served() {
    // Too close to the end of an epoch: start in the next one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = EPOCH_SECS - now % EPOCH_SECS;
    if left < EPOCH_ROOM {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
    let t0 = Instant::now();
    let mut net = Network::start(NetworkOptions {
        epoch_secs: EPOCH_SECS,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the testnet did not start: {e}"));
    let started_in = t0.elapsed();
    let layout = net.layout().clone();
    let consensus = DirectoryClient::new(&layout.directory)
        .unwrap()
        .fetch_consensus()
        .await
        .unwrap();
    let described = |name: &str| -> &Descriptor {
        let relay = layout.relay(name).unwrap();
        consensus
            .node(&NodeId::from_hex(&relay.node_id).unwrap())
            .unwrap_or_else(|| panic!("{name} is not in the consensus"))
    };
    let first_mix = layout
        .relays
        .iter()
        .find(|r| {
            r.role == Role::Mix
                && consensus.layer_of(&NodeId::from_hex(&r.node_id).unwrap()) == Some(1)
        })
        .expect("a layer-1 mix");
    let mailbox = layout.relay("mailbox-a").unwrap();
    let authority = &layout.authorities[0];
    let mix_d = described(&first_mix.name);
    let mailbox_d = described("mailbox-a");
    let hops = route(&consensus, mix_d, mailbox_d);

    let mix = Target {
        what: "mixnode link",
        node: first_mix.name.clone(),
        prefix: "bastet_mixnode",
        direction: "inbound",
        addr: first_mix.listen,
        pin: mix_d.pin(),
        kind: Kind::Link,
        upload: "",
    };
    let mailbox_link = Target {
        what: "mailbox link",
        node: mailbox.name.clone(),
        prefix: "bastet_mailbox",
        direction: "inbound",
        addr: mailbox.listen,
        pin: mailbox_d.pin(),
        kind: Kind::Link,
        upload: "",
    };
    let mailbox_api = Target {
        what: "mailbox API",
        direction: "api",
        addr: mailbox.api_listen.expect("a mailbox API address"),
        kind: Kind::Api,
        upload: "/v1/mailboxes",
        ..mailbox_link.clone()
    };
    let authority_api = Target {
        what: "authority API",
        node: authority.name.clone(),
        prefix: "bastet_directory",
        direction: "api",
        addr: authority.listen,
        pin: CertPin::from_hex(&authority.tls_pin).unwrap(),
        kind: Kind::Api,
        upload: "/v1/descriptors",
    };
    let targets = [&mix, &mailbox_link, &mailbox_api, &authority_api];

    // Honest clients, made before the attacks: alice's mailbox is on the
    // mailbox server under attack.
    let alice = net.client("alice", "mailbox-a").await.unwrap();
    let bob = net.client("bob", "mailbox-b").await.unwrap();
    alice.befriend(&bob).await.unwrap();
    let mut report = vec![format!("network started in {started_in:.1?}")];

    // 1. Garbage on raw TCP: no TLS handshake, the connection is closed and
    // counted as a failed handshake.
    for t in targets {
        let before = read(&net, &t.node, &t.closed("handshake")).await;
        let mut tcp = TcpStream::connect(t.addr).await.unwrap();
        tcp.write_all(&garbage(4096)).await.unwrap();
        assert!(
            closed_by_node(&mut tcp, Duration::from_secs(5)).await,
            "{}: garbage instead of TLS was not cut off",
            t.what
        );
        reaches(
            &net,
            &t.node,
            &t.closed("handshake"),
            before + 1.0,
            COUNTED_WITHIN,
        )
        .await;
    }
    report.push("raw garbage: refused and counted as handshake failures on all four".into());

    // 2. Bad input over TLS.
    for t in [&mix, &mailbox_link] {
        // Three whole frames of garbage: packets for no key of this node.
        let unknown_key = t.dropped("unknown_key");
        let before = read(&net, &t.node, &unknown_key).await;
        let junk = garbage(3 * FRAME_LEN);
        send_frames(t, &[&junk]).await;
        reaches(&net, &t.node, &unknown_key, before + 3.0, COUNTED_WITHIN).await;
        // A frame and a half, then the end: the half is a packet cut short.
        let broken = read(&net, &t.node, &t.closed("broken")).await;
        let wrong_length = read(&net, &t.node, &t.dropped("wrong_length")).await;
        let junk = garbage(FRAME_LEN + FRAME_LEN / 2);
        send_frames(t, &[&junk]).await;
        reaches(&net, &t.node, &unknown_key, before + 4.0, COUNTED_WITHIN).await;
        reaches(
            &net,
            &t.node,
            &t.closed("broken"),
            broken + 1.0,
            COUNTED_WITHIN,
        )
        .await;
        reaches(
            &net,
            &t.node,
            &t.dropped("wrong_length"),
            wrong_length + 1.0,
            COUNTED_WITHIN,
        )
        .await;
    }
    for (t, counted) in [
        (
            &mailbox_api,
            (
                "bastet_mailbox_api_requests".to_string(),
                "outcome=\"too_large\"".to_string(),
            ),
        ),
        (
            &authority_api,
            (
                "bastet_directory_descriptors_rejected".to_string(),
                "reason=\"too_large\"".to_string(),
            ),
        ),
    ] {
        let path = t.upload;
        // Not HTTP: 400, closed.
        let answer = https_exchange(t, &garbage(2048)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{}: {answer}", t.what);
        // More headers than the limit (hyper's 100): 431, closed.
        let mut many = format!("GET {path} HTTP/1.1\r\nHost: bastet\r\n");
        for i in 0..200 {
            many.push_str(&format!("x-{i}: f\r\n"));
        }
        many.push_str("\r\n");
        let answer = https_exchange(t, many.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{}: {answer}", t.what);
        // A 64 KiB body (the limits are a few KiB): 413, counted, closed.
        let before = read(&net, &t.node, &counted).await;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: bastet\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n",
            64 << 10
        )
        .into_bytes();
        request.extend(garbage(64 << 10));
        let answer = https_exchange(t, &request).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{}: {answer}", t.what);
        reaches(&net, &t.node, &counted, before + 1.0, COUNTED_WITHIN).await;
    }
    // A small body that is no descriptor: 400, counted malformed.
    let malformed = (
        "bastet_directory_descriptors_rejected".to_string(),
        "reason=\"malformed\"".to_string(),
    );
    let before = read(&net, &authority_api.node, &malformed).await;
    let mut request = b"POST /v1/descriptors HTTP/1.1\r\nHost: bastet\r\nConnection: close\r\n\
        Content-Length: 512\r\n\r\n"
        .to_vec();
    request.extend(garbage(512));
    let answer = https_exchange(&authority_api, &request).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    reaches(
        &net,
        &authority_api.node,
        &malformed,
        before + 1.0,
        COUNTED_WITHIN,
    )
    .await;
    net.check_alive().unwrap();
    report.push(
        "over TLS: garbage frames dropped unknown_key, a frame and a half cut broken and \
         wrong_length; non-HTTP 400, 200 headers 431, 64 KiB bodies 413 and counted"
            .into(),
    );

    // 3. Slow-loris: per listener, LORIS connections that send half a TLS
    // record, LORIS that finish the handshake and say nothing, and LORIS
    // that send half a frame or half a request header; on the APIs LORIS
    // more send whole headers and part of the body. All held.
    // (before: ended by handshake, broken, idle; open)
    let mut before = Vec::new();
    for t in targets {
        let mut counts = Vec::new();
        for reason in ["handshake", "broken", "idle"] {
            counts.push(read(&net, &t.node, &t.closed(reason)).await);
        }
        // Honest peers' connections: other relays' links, nodes and
        // authorities fetching from an authority, kept alive a while.
        counts.push(read(&net, &t.node, &t.open()).await);
        before.push(counts);
    }
    let loris_at = Instant::now();
    let mut half_hellos = Vec::new();
    let mut silent = Vec::new();
    let mut half_requests = Vec::new();
    for t in targets {
        for _ in 0..LORIS {
            let mut tcp = TcpStream::connect(t.addr).await.unwrap();
            // A handshake record announcing 512 bytes, of which 64 come.
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
                .await
                .unwrap();
            tcp.write_all(&[0x01; 64]).await.unwrap();
            half_hellos.push((t.what, tcp));
        }
        for _ in 0..LORIS {
            silent.push((
                t.what,
                bastet_link::connect(&t.addr.to_string(), t.pin)
                    .await
                    .unwrap(),
            ));
        }
        for _ in 0..LORIS {
            let mut tls = bastet_link::connect(&t.addr.to_string(), t.pin)
                .await
                .unwrap();
            match t.kind {
                Kind::Link => tls.write_all(&garbage(FRAME_LEN / 2)).await.unwrap(),
                Kind::Api => tls
                    .write_all(b"GET /v1/consensus HTTP/1.1\r\nHost: bastet\r\nx-slow: ")
                    .await
                    .unwrap(),
            }
            tls.flush().await.unwrap();
            half_requests.push((t.what, tls));
        }
        for _ in 0..(if t.kind == Kind::Api { LORIS } else { 0 }) {
            let mut tls = bastet_link::connect(&t.addr.to_string(), t.pin)
                .await
                .unwrap();
            // (To an endpoint that reads bodies: one that answers without
            // reading it is closed after its answer.)
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: bastet\r\nContent-Length: 1000\r\n\r\n0123",
                t.upload
            );
            tls.write_all(head.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            half_requests.push((t.what, tls));
        }
    }
    let opened_in = loris_at.elapsed();
    for t in targets {
        reaches(&net, &t.node, &t.open(), 3.0 * LORIS as f64, COUNTED_WITHIN).await;
    }
    let held = half_hellos.len() + silent.len() + half_requests.len();
    report.push(format!(
        "slow-loris: {held} connections opened in {opened_in:.1?} and held"
    ));

    // Meanwhile honest peers are served: every node's /health, the
    // consensus, a packet across the network through the mix under
    // attack, a poll of the mailbox under attack; all while the loris are
    // still open.
    let honest_at = Instant::now();
    all_healthy(&net).await;
    let http = bastet_link::https_client(authority_api.pin).unwrap();
    let consensus_status = http
        .get(format!("{}/v1/consensus", authority.url))
        .send()
        .await
        .unwrap()
        .status();
    assert!(consensus_status.is_success(), "{consensus_status}");
    probe_crosses(&net, &mix, hops, "mailbox-a").await;
    alice.inbox(Duration::from_secs(1)).await.unwrap();
    let honest_in = honest_at.elapsed();
    for t in targets {
        // (The nodes cut most kinds after 10 s; the packet links keep
        // silent ones for 120 s.)
        let open = read(&net, &t.node, &t.open()).await;
        assert!(
            open >= LORIS as f64,
            "{}: only {open} connections open: the honest checks ran after the loris were cut",
            t.what
        );
    }
    // And a message from alice to bob (alice's acks come back through the
    // mailbox server under attack), while the loris the nodes keep longest
    // (idle packet links, 120 s) are still held.
    let delivery_at = Instant::now();
    let sent = alice.send(bob.name(), "through the siege").await.unwrap();
    assert_eq!(sent.state, "stored", "{sent:?}");
    let got = bob
        .receive(std::slice::from_ref(&sent.message_id), DELIVERY_TIMEOUT)
        .await
        .unwrap();
    let Some(message) = got.get(&sent.message_id) else {
        panic!("not delivered\n{}", net.counters().await);
    };
    assert!(message.verified);
    assert_eq!(message.text, "through the siege");
    let delivered_in = delivery_at.elapsed();
    report.push(format!(
        "while held: /health, consensus, a probe through {} and a poll in {honest_in:.1?}; \
         a message alice→bob stored and delivered in {delivered_in:.1?}",
        mix.node
    ));

    // The nodes cut every stalled handshake and half frame within their 10 s
    // limits, and on the APIs every silent connection, half header (10 s)
    // and half body (30 s), and count each.
    for (t, before) in targets.iter().zip(&before) {
        let n = LORIS as f64;
        reaches(
            &net,
            &t.node,
            &t.closed("handshake"),
            before[0] + n,
            CUT_WITHIN,
        )
        .await;
        match t.kind {
            Kind::Link => {
                reaches(
                    &net,
                    &t.node,
                    &t.closed("broken"),
                    before[1] + n,
                    CUT_WITHIN,
                )
                .await;
            }
            Kind::Api => {
                reaches(
                    &net,
                    &t.node,
                    &t.closed("idle"),
                    before[2] + 3.0 * n,
                    CUT_WITHIN,
                )
                .await;
            }
        }
    }
    let cut_in = loris_at.elapsed();
    for (what, tcp) in &mut half_hellos {
        assert!(
            closed_by_node(tcp, Duration::from_secs(2)).await,
            "{what}: a half handshake still open"
        );
    }
    for (what, tls) in &mut half_requests {
        assert!(
            closed_by_node(tls, Duration::from_secs(2)).await,
            "{what}: a half frame or request still open"
        );
    }
    for (what, tls) in &mut silent {
        if *what == mailbox_api.what || *what == authority_api.what {
            assert!(
                closed_by_node(tls, Duration::from_secs(2)).await,
                "{what}: a silent API connection still open"
            );
        }
    }
    // The API listeners hold none of them now; the packet links still hold
    // their silent ones (up to their 120 s idle limit). Honest peers'
    // connections come and go: allow for a few more than before.
    for (t, before) in targets.iter().zip(&before) {
        let held = match t.kind {
            Kind::Link => LORIS as f64,
            Kind::Api => 0.0,
        };
        let most = before[3] + held + (LORIS / 2) as f64;
        falls_to(&net, &t.node, &t.open(), most, COUNTED_WITHIN).await;
    }
    drop((half_hellos, silent, half_requests));
    report.push(format!(
        "loris cut and counted {cut_in:.1?} after they opened (limits: 10 s, 30 s for a \
         whole API request)"
    ));

    // 4. A flood: FLOOD connections per listener, each hung up at once.
    let flood_at = Instant::now();
    for t in targets {
        let before = read(&net, &t.node, &t.closed("handshake")).await;
        let mut done = 0;
        while done < FLOOD {
            let mut batch = tokio::task::JoinSet::new();
            for _ in 0..FLOOD_PARALLEL.min(FLOOD - done) {
                let addr = t.addr;
                batch.spawn(async move { TcpStream::connect(addr).await.map(drop) });
            }
            while let Some(connected) = batch.join_next().await {
                connected.unwrap().unwrap();
                done += 1;
            }
        }
        reaches(
            &net,
            &t.node,
            &t.closed("handshake"),
            before + FLOOD as f64,
            COUNTED_WITHIN,
        )
        .await;
    }
    let flood_in = flood_at.elapsed();
    all_healthy(&net).await;
    probe_crosses(&net, &mix, hops, "mailbox-a").await;
    alice.inbox(Duration::from_secs(1)).await.unwrap();
    let status = http
        .get(format!("{}/v1/consensus", authority.url))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    report.push(format!(
        "flood: {} connections opened and dropped in {flood_in:.1?}, each counted as a \
         failed handshake; honest traffic served after",
        targets.len() * FLOOD
    ));

    // 5. Replays: a real packet through the mix sent twice is forwarded
    // once; a packet to the mailbox server sent twice is refused the
    // second time.
    let replay = mix.dropped("replay");
    let unknown = mailbox_link.dropped("unknown_mailbox");
    let (mix_replays, arrived) = (
        read(&net, &mix.node, &replay).await,
        read(&net, &mailbox_link.node, &unknown).await,
    );
    let twice = packet(&hops, &nobody());
    send_frames(&mix, &[twice.as_bytes(), twice.as_bytes()]).await;
    reaches(&net, &mix.node, &replay, mix_replays + 1.0, COUNTED_WITHIN).await;
    reaches(
        &net,
        &mailbox_link.node,
        &unknown,
        arrived + 1.0,
        COUNTED_WITHIN,
    )
    .await;
    let mailbox_replays = read(&net, &mailbox_link.node, &mailbox_link.dropped("replay")).await;
    let direct = packet(&[mailbox_d], &nobody());
    send_frames(&mailbox_link, &[direct.as_bytes()]).await;
    send_frames(&mailbox_link, &[direct.as_bytes()]).await;
    reaches(
        &net,
        &mailbox_link.node,
        &mailbox_link.dropped("replay"),
        mailbox_replays + 1.0,
        COUNTED_WITHIN,
    )
    .await;
    // Only one copy of each went on: the mix's replay never reached the
    // mailbox server.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(read(&net, &mix.node, &replay).await, mix_replays + 1.0);
    assert_eq!(
        read(&net, &mailbox_link.node, &unknown).await,
        arrived + 2.0,
        "one probe through the mix and one straight to the mailbox server"
    );
    report.push("replays: counted replay on the mixnode and the mailbox server".into());

    // Nobody was refused for want of a slot, every node is alive, and the
    // figures each listener counted.
    net.check_alive().unwrap();
    assert!(net.panics().is_empty());
    for t in targets {
        assert_eq!(
            read(&net, &t.node, &t.closed("limit")).await,
            0.0,
            "{}",
            t.what
        );
        let text = net.metrics(&t.node).await.unwrap();
        let reasons: &[&str] = match t.kind {
            Kind::Link => &["limit", "handshake", "idle", "broken", "closed"],
            Kind::Api => &["limit", "handshake", "idle", "closed"],
        };
        let ended: Vec<String> = reasons
            .iter()
            .map(|r| {
                let (name, labels) = t.closed(r);
                format!("{r}={}", metric_sum(&text, &name, &labels))
            })
            .collect();
        report.push(format!("{} ({}): {}", t.what, t.node, ended.join(" ")));
    }
    report.push(format!("total {:.1?}", t0.elapsed()));
    eprintln!("hostile peers:\n  {}", report.join("\n  "));
}
