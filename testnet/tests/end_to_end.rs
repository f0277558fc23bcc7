//! End-to-end tests over real processes on 127.0.0.1: an authority, six
//! mixnodes, two mailbox servers and two `bastet` clients, each its own
//! process, started from the binaries in `target/<profile>/` (build them
//! with `cargo build --workspace --bins`; `scripts/test.sh` does).

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bastet_testnet::{
    Client, Network, NetworkOptions, Received, Sent, StopOutcome, message_text, metric_sum,
    scan_for_marker,
};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(45);

async fn start() -> Network {
    match Network::start(NetworkOptions::default()).await {
        Ok(n) => n,
        Err(e) => panic!("the testnet did not start: {e}"),
    }
}

/// Checks what a mailbox server stores for one mailbox: `expected`
/// messages (fragmented envelopes) and no 16-byte string shared by two
/// different messages' stored payloads, so no stable header, session id or
/// counter shows through the sealed envelope. Acks (SURB replies) are left
/// out: they are the mailbox server's own format.
fn assert_opaque_envelopes(
    server: &str,
    stored: &[bastet_mailbox::StoredMessage],
    expected: usize,
) {
    use bastet_sphinx::{Fragment, SEALED_REPLY_LEN};
    let fragments: Vec<Vec<u8>> = stored
        .iter()
        .filter(|m| m.payload.len() != SEALED_REPLY_LEN)
        .map(|m| m.payload.clone())
        .collect();
    let envelopes: HashSet<_> = fragments
        .iter()
        .map(|f| Fragment::from_bytes(f).unwrap().envelope())
        .collect();
    assert_eq!(
        envelopes.len(),
        expected,
        "{server} stores {} fragments of {} envelopes",
        fragments.len(),
        envelopes.len()
    );
    let mut seen: HashMap<[u8; 16], usize> = HashMap::new();
    for (i, f) in fragments.iter().enumerate() {
        let envelope = Fragment::from_bytes(f).unwrap().envelope();
        for w in f.windows(16) {
            let w: [u8; 16] = w.try_into().unwrap();
            if let Some(&j) = seen.get(&w) {
                let other = Fragment::from_bytes(&fragments[j]).unwrap().envelope();
                assert_eq!(
                    other,
                    envelope,
                    "{server}: two different messages' stored payloads share the 16 bytes {}",
                    hex::encode(w)
                );
            }
            seen.insert(w, i);
        }
    }
}

/// Unwraps, or fails with the error and the end of every node's log.
fn ok<T>(net: &Network, what: &str, r: bastet_testnet::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}\n{}", net.log_tails(25)))
}

async fn clients(net: &Network) -> (Client, Client) {
    let alice = ok(net, "alice init", net.client("alice", "mailbox-a").await);
    let bob = ok(net, "bob init", net.client("bob", "mailbox-b").await);
    ok(net, "cards", alice.befriend(&bob).await);
    (alice, bob)
}

/// Sends each text from `from` to `to` and waits until all arrived.
async fn exchange(
    net: &Network,
    from: &Client,
    to: &Client,
    texts: &[String],
) -> Vec<(Sent, Received)> {
    let mut sent = Vec::new();
    for t in texts {
        sent.push(ok(net, "send", from.send(to.name(), t).await));
    }
    let ids: Vec<String> = sent.iter().map(|s| s.message_id.clone()).collect();
    let mut got = ok(net, "inbox", to.receive(&ids, DELIVERY_TIMEOUT).await);
    if got.len() != sent.len() {
        panic!(
            "only {} of {} messages from {} reached {} within {:?}\nrelay counters:\n{}\n{}",
            got.len(),
            sent.len(),
            from.name(),
            to.name(),
            DELIVERY_TIMEOUT,
            net.counters().await,
            net.log_tails(25)
        );
    }
    sent.into_iter()
        .map(|s| {
            let r = got.remove(&s.message_id).unwrap();
            (s, r)
        })
        .collect()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn assert_clean_stop(net: &mut Network) {
    for (name, outcome) in net.stop() {
        assert!(
            matches!(outcome, StopOutcome::Exited(_)),
            "{name} did not stop cleanly on SIGTERM: {outcome:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_three_mix_layers_to_the_recipients_mailbox() {
    let mut net = start().await;
    let (alice, bob) = clients(&net).await;
    let texts: Vec<String> = (1..=4).map(|i| message_text(i, 4, 200)).collect();
    let delivered = exchange(&net, &alice, &bob, &texts).await;

    let layout = net.layout().clone();
    let bob_server = layout.relay("mailbox-b").unwrap();
    for ((sent, got), text) in delivered.iter().zip(&texts) {
        assert_eq!(&got.text, text, "the text arrives unchanged");
        assert!(got.verified, "the sender's signature verifies");
        assert_eq!(
            got.contact.as_deref(),
            Some("alice"),
            "shown as the contact"
        );
        assert!(got.received_at_ms >= sent.sent_at_ms);
        let roles: Vec<&str> = sent.route.iter().map(|h| h.role.as_str()).collect();
        assert_eq!(roles, ["mix1", "mix2", "mix3", "mailbox"]);
        for hop in &sent.route {
            let relay = layout
                .relay_by_id(&hop.node)
                .unwrap_or_else(|| panic!("route names a node outside the testnet: {hop:?}"));
            let expected = if relay.role.to_string() == "mix" {
                "mix"
            } else {
                "mailbox"
            };
            assert!(hop.role.starts_with(expected), "{hop:?} is a {expected}");
            assert_eq!(relay.jurisdiction, hop.jurisdiction);
        }
        assert_eq!(
            sent.route[3].node, bob_server.node_id,
            "the route ends at the recipient's mailbox server"
        );
        let jurisdictions: HashSet<&str> =
            sent.route.iter().map(|h| h.jurisdiction.as_str()).collect();
        // Six mixes in six countries: three distinct mix jurisdictions.
        assert!(jurisdictions.len() >= 3, "route {:?}", sent.route);
    }
    let senders: HashSet<&str> = delivered.iter().map(|(_, r)| r.from.as_str()).collect();
    assert_eq!(senders.len(), 1, "every message names the same sender");

    let stored = metric_sum(
        &ok(&net, "metrics", net.metrics("mailbox-b").await),
        "bastet_mailbox_messages_stored",
        "",
    );
    assert!(stored >= 4.0, "mailbox-b counted {stored} messages stored");

    // Meanwhile the mixnodes' own cover (1/s each by default) went out to
    // mailbox servers and came back to them as acks.
    let mixes: Vec<String> = layout
        .relays
        .iter()
        .filter(|r| r.role.to_string() == "mix")
        .map(|r| r.name.clone())
        .collect();
    assert!(!mixes.is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut returned = 0.0;
        for name in &mixes {
            let text = ok(&net, "metrics", net.metrics(name).await);
            returned += metric_sum(&text, "bastet_mixnode_cover_loops_returned", "");
        }
        if returned > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no mixnode cover loop came back\n{}",
            net.counters().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_clean_stop(&mut net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_relay_ever_holds_the_plaintext() {
    let mut net = start().await;
    let (alice, bob) = clients(&net).await;
    // Start-up probes already crossed the mixnodes: measure growth from here.
    let logged_before: HashMap<String, u64> = net
        .layout()
        .relays
        .iter()
        .map(|r| (r.name.clone(), file_len(&r.packet_log)))
        .collect();
    let mut nonce = [0u8; 16];
    rand::fill(&mut nonce[..]);
    let marker = format!("BASTET-PLAINTEXT-MARKER-{}", hex::encode(nonce));
    // One message each way, so both mailbox servers store one.
    let to_bob = format!("{marker} to bob {}", message_text(1, 1, 100));
    let to_alice = format!("{marker} to alice {}", message_text(1, 1, 100));
    let mut delivered = exchange(&net, &alice, &bob, std::slice::from_ref(&to_bob)).await;
    delivered.extend(exchange(&net, &bob, &alice, std::slice::from_ref(&to_alice)).await);
    for (_, got) in &delivered {
        assert!(
            got.text.contains(&marker),
            "the marker travelled in the message"
        );
    }
    // More messages both ways that nobody reads: they stay in the mailbox
    // servers' RocksDB for the checks below.
    let mut unread = Vec::new();
    for i in 0..3 {
        let text = format!("{marker} unread {i} to bob");
        unread.push(ok(&net, "send", alice.send(bob.name(), &text).await));
    }
    for i in 0..2 {
        let text = format!("{marker} unread {i} to alice");
        unread.push(ok(&net, "send", bob.send(alice.name(), &text).await));
    }
    assert!(unread.iter().all(|s| s.state == "stored"), "{unread:?}");
    let identity_of = |json: String| -> Vec<u8> {
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        hex::decode(v["identity"].as_str().unwrap()).unwrap()
    };
    let bob_identity = identity_of(ok(
        &net,
        "contact show",
        alice.bastet(&["contact", "show", "bob", "--json"]).await,
    ));
    let alice_identity = identity_of(ok(
        &net,
        "contact show",
        bob.bastet(&["contact", "show", "alice", "--json"]).await,
    ));
    let mailbox_of = |c: &Client| bastet_client::Address::parse(c.address()).unwrap().mailbox;
    let stored_for = [
        ("mailbox-b", mailbox_of(&bob), 3),
        ("mailbox-a", mailbox_of(&alice), 2),
    ];
    // Stopped nodes have flushed their logs and databases.
    assert_clean_stop(&mut net);
    for (server, mailbox, expected) in stored_for {
        let dir = net.layout().relay(server).unwrap().dir.join("db");
        let limits = bastet_mailbox::StoreLimits {
            quota_messages: 1 << 20,
            max_mailboxes: 1 << 20,
        };
        let store = bastet_mailbox::Store::open(&dir, limits).unwrap();
        let (stored, _) = store.list(&mailbox, None, 10_000).unwrap();
        assert_opaque_envelopes(server, &stored, expected);
    }

    let layout = net.layout().clone();
    let mut on_route = HashSet::new();
    for (sent, _) in &delivered {
        for hop in &sent.route {
            let relay = layout.relay_by_id(&hop.node).unwrap();
            on_route.insert(relay.name.clone());
            assert!(
                file_len(&relay.packet_log) > logged_before[&relay.name],
                "{} carried a message but its packet_log {} did not grow",
                relay.name,
                relay.packet_log.display()
            );
        }
    }
    assert!(on_route.len() >= 5, "two messages crossed {on_route:?}");

    let mut roots = net.relay_dirs();
    roots.extend(layout.authorities.iter().map(|a| a.dir.clone()));
    let report = ok(&net, "scan", scan_for_marker(&roots, marker.as_bytes()));
    assert!(
        report.hits.is_empty(),
        "plaintext marker found in relay files: {:?}",
        report.hits
    );
    for (who, key) in [("alice", &alice_identity), ("bob", &bob_identity)] {
        let found = ok(&net, "scan", scan_for_marker(&roots, key));
        assert!(
            found.hits.is_empty(),
            "{who}'s identity key found in relay files: {:?}",
            found.hits
        );
    }
    // The scan covered what matters: every relay's log and packet log, and
    // the mailbox servers' RocksDB files (write-ahead log and tables).
    for relay in &layout.relays {
        assert!(
            report.files.contains(&relay.log),
            "{} not scanned",
            relay.log.display()
        );
        assert!(report.files.contains(&relay.packet_log) || !on_route.contains(&relay.name));
    }
    for mailbox in layout.mailboxes() {
        let db = mailbox.dir.join("db");
        let db_files: Vec<&PathBuf> = report.files.iter().filter(|f| f.starts_with(&db)).collect();
        assert!(
            db_files
                .iter()
                .any(|f| f.extension().is_some_and(|e| e == "log" || e == "sst")),
            "no RocksDB data files scanned under {}: {db_files:?}",
            db.display()
        );
    }
    assert!(report.bytes > 0);

    // Control: the same scan finds the marker once it is planted, so the
    // assertion above could fail.
    let planted = layout
        .relay("mailbox-b")
        .unwrap()
        .dir
        .join("db")
        .join("planted.bin");
    let mut bytes = vec![0u8; 100_000];
    rand::fill(&mut bytes[..]);
    bytes.splice(54_321..54_321, marker.bytes());
    std::fs::write(&planted, bytes).unwrap();
    let control = ok(&net, "scan", scan_for_marker(&roots, marker.as_bytes()));
    assert_eq!(control.hits.len(), 1, "{:?}", control.hits);
    assert_eq!(control.hits[0].path, planted);
}
