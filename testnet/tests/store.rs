//! The client's encrypted store over real processes on 127.0.0.1: a data
//! dir made with `bastet store create`, a decoy compartment and a hidden
//! one; the daemon runs from the hidden compartment (passphrase on a file
//! descriptor), is killed (SIGKILL) again and again while it sends and
//! receives, and both compartments always open, each showing its own
//! client; every queued message arrives exactly once. After the session no
//! file of the network (data dirs, daemon logs, relays) and no file in the
//! temp dir holds the planted plaintext marker. Start the binaries as
//! `end_to_end.rs` says.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use bastet_client::TrafficConfig;
use bastet_testnet::{Error, Network, NetworkOptions, scan_for_marker};

const DECOY: &str = "a decoy passphrase, given when forced";
const HIDDEN: &str = "the hidden passphrase, for normal use";
const BOB: &str = "bob's own store passphrase";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_from_an_encrypted_store_and_survives_sigkill() {
    let net = match Network::start(NetworkOptions {
        epoch_secs: 120,
        ..NetworkOptions::default()
    })
    .await
    {
        Ok(n) => n,
        Err(e) => panic!("the testnet did not start: {e}"),
    };
    let marker = format!("store-marker-{:016x}", rand::random::<u64>());

    // The decoy first (as the docs advise: its use while the hidden
    // compartment is not open may overwrite hidden blocks), then the hidden
    // compartment and the client that lives there.
    let decoy = net
        .encrypted_client("alice", "mailbox-a", &[DECOY], "8MiB")
        .await
        .unwrap();
    decoy.add_compartment(DECOY, HIDDEN).await.unwrap();
    let server_a = net.mailbox_server("mailbox-a").unwrap();
    let mut alice = decoy
        .in_compartment("alice", HIDDEN, Some((net.directory_config(), &server_a)))
        .await
        .unwrap();
    assert_ne!(alice.address(), decoy.address());
    let mut bob = net
        .encrypted_client("bob", "mailbox-b", &[BOB], "8MiB")
        .await
        .unwrap();
    alice.befriend(&bob).await.unwrap();

    // Only the container (and nothing else of the client) is on disk.
    let on_disk = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        names
    };
    for name in on_disk(alice.data_dir()) {
        assert!(
            ["store", "outbox.lock"].contains(&name.as_str()),
            "{name} is in alice's encrypted data dir"
        );
    }

    // The decoy shows its own client: no contact, its own address.
    let contacts = decoy.bastet(&["contact", "list", "--json"]).await.unwrap();
    assert!(!contacts.contains("bob"), "{contacts}");
    let contacts = alice.bastet(&["contact", "list", "--json"]).await.unwrap();
    assert!(contacts.contains("bob"), "{contacts}");

    // A wrong passphrase: the same error as any unused slot.
    let wrong = decoy
        .in_compartment("nobody", "not a passphrase of this store", None)
        .await;
    match wrong {
        Err(Error::CommandFailed { stderr, .. }) => {
            assert!(
                stderr.contains("no compartment opens with this passphrase"),
                "{stderr}"
            );
        }
        other => panic!("a wrong passphrase: {other:?}"),
    }

    let traffic = TrafficConfig {
        payload_rate: Some(20.0),
        poll_interval_ms: 200,
        ..TrafficConfig::preset("interactive").unwrap()
    };
    alice.set_traffic(&traffic).unwrap();
    bob.set_traffic(&traffic).unwrap();
    let mut alice_daemon = alice.start_daemon().await.unwrap();
    let mut bob_daemon = bob.start_daemon().await.unwrap();

    // `bastet status` summarises the store, mailbox, consensus and policy.
    let status = alice.status().await.unwrap();
    assert!(
        status["store_bytes"][0].as_u64().unwrap() >= 8 << 20,
        "{status}"
    );
    assert!(status["store_bytes"][1].as_u64().unwrap() > 0, "{status}");
    assert_eq!(status["mailbox_server"], server_a.as_str(), "{status}");
    assert!(status["mailbox_jurisdiction"].is_string(), "{status}");
    assert!(
        status["consensus_signatures"].as_u64().unwrap() >= 2,
        "{status}"
    );
    assert!(
        status["consensus_valid_secs"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(
        status["route_template"]
            .as_array()
            .is_some_and(|t| t.len() >= 3)
    );
    let text = alice.bastet(&["status"]).await.unwrap();
    assert!(text.contains("storage: encrypted store of 8 MiB"), "{text}");
    assert!(text.contains("route policy: "), "{text}");
    // The anonymity estimate, with its caveat, for the testnet's layers
    // (two mixes each: too few, which it must say).
    assert!(
        text.contains("anonymity (estimate; this client cannot see how many clients are active)"),
        "{text}"
    );
    assert!(text.contains("2/2/2 mixes per layer"), "{text}");
    assert!(text.contains("  warning: "), "{text}");
    let estimates = status["anonymity"]["estimates"].as_array().unwrap();
    assert_eq!(estimates.len(), 3, "{status}");

    // While the daemon holds the store, another process cannot open it.
    match decoy.bastet(&["address"]).await {
        Err(Error::CommandFailed { stderr, .. }) => {
            assert!(stderr.contains("open in another process"), "{stderr}");
        }
        other => panic!("opening a store a daemon holds: {other:?}"),
    }

    // Messages queued, the daemon killed at varying moments, restarted:
    // after every kill both compartments open.
    let mut ids = Vec::new();
    for round in 0..6u64 {
        let text = format!("{marker} round {round}");
        let sent = alice
            .send_content(bob.name(), bastet_testnet::Payload::Text(&text), false)
            .await
            .unwrap();
        ids.push(sent.message_id.clone());
        tokio::time::sleep(Duration::from_millis(150 * round)).await;
        alice_daemon.kill();
        assert_eq!(
            decoy
                .bastet(&["address"])
                .await
                .unwrap()
                .lines()
                .last()
                .unwrap()
                .trim(),
            decoy.address(),
            "round {round}: the decoy does not open"
        );
        alice_daemon = alice.start_daemon().await.unwrap();
    }
    let got = bob
        .receive_counted(&ids, Duration::from_secs(120))
        .await
        .unwrap();
    for id in &ids {
        assert_eq!(
            got.1.get(id),
            Some(&1),
            "message {id} shown {:?} times",
            got.1.get(id)
        );
        assert!(got.0[id].text.starts_with(&marker));
        assert!(got.0[id].verified);
    }

    // And back, received while bob's daemon is killed mid-way.
    let reply = bob
        .send_content(
            alice.name(),
            bastet_testnet::Payload::Text(&format!("{marker} reply")),
            false,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob_daemon.kill();
    bob_daemon = bob.start_daemon().await.unwrap();
    let back = alice
        .receive(
            std::slice::from_ref(&reply.message_id),
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    assert_eq!(back[&reply.message_id].text, format!("{marker} reply"));

    // A clean stop, then the scan: the network's files (clients, daemon
    // logs, relays) and the temp dir's files hold no marker.
    alice_daemon.stop();
    bob_daemon.stop();
    let report = scan_for_marker(&[net.dir().to_path_buf()], marker.as_bytes()).unwrap();
    assert!(
        report.hits.is_empty(),
        "the marker is outside the store: {:?}",
        report.hits
    );
    assert!(report.files.len() > 5, "{:?}", report.files);
    let temp_files: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    let report = scan_for_marker(&temp_files, marker.as_bytes()).unwrap();
    assert!(report.hits.is_empty(), "{:?}", report.hits);
    for name in on_disk(alice.data_dir()) {
        assert!(
            ["store", "outbox.lock", "daemon.log", "received"].contains(&name.as_str()),
            "{name} is in alice's encrypted data dir"
        );
    }
}
