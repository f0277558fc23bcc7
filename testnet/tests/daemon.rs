//! `bastet daemon` over real processes on 127.0.0.1: `bastet status` shows
//! the traffic parameters in force, and a daemon killed (SIGKILL) or
//! stopped (SIGTERM) in the middle of a transfer loses nothing that was
//! queued: restarted, it resumes and every message arrives exactly once.
//! Start the binaries as `end_to_end.rs` says.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bastet_client::TrafficConfig;
use bastet_testnet::{Error, Network, NetworkOptions, Payload, StopOutcome, message_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_stopped_daemon_loses_nothing_queued() {
    let net = match Network::start(NetworkOptions {
        epoch_secs: 120,
        ..NetworkOptions::default()
    })
    .await
    {
        Ok(n) => n,
        Err(e) => panic!("the testnet did not start: {e}"),
    };
    let mut alice = net.client("alice", "mailbox-a").await.unwrap();
    let mut bob = net.client("bob", "mailbox-b").await.unwrap();
    alice.befriend(&bob).await.unwrap();
    let traffic = TrafficConfig {
        payload_rate: Some(20.0),
        poll_interval_ms: 200,
        ..TrafficConfig::preset("interactive").unwrap()
    };
    alice.set_traffic(&traffic).unwrap();
    bob.set_traffic(&traffic).unwrap();
    let mut alice_daemon = alice.start_daemon().await.unwrap();
    let _bob_daemon = bob.start_daemon().await.unwrap();

    // What `bastet status` shows is what the config says.
    let status = alice.status().await.unwrap();
    assert_eq!(status["preset"], "interactive", "{status}");
    assert_eq!(status["payload_rate"], 20.0, "{status}");
    assert_eq!(status["loop_rate"], 1.0, "{status}");
    assert_eq!(status["mean_hop_delay_ms"], 20, "{status}");
    let packet = bastet_sphinx::PACKET_LEN as f64;
    assert_eq!(status["packet_len"], bastet_sphinx::PACKET_LEN, "{status}");
    assert_eq!(status["idle_up_bytes_per_sec"], 21.0 * packet, "{status}");
    assert!(
        status["expected_latency_ms"].as_u64().unwrap() > 0,
        "{status}"
    );

    // A 300 kB file (194 fragments, ~10 s at 20 packets/s) and a text,
    // queued; the daemon is killed two seconds in.
    let bytes = message_file(1, 1, 300_000);
    let path = alice.data_dir().join("three-hundred-kB.bin");
    std::fs::write(&path, &bytes).unwrap();
    let file = alice
        .send_content(bob.name(), Payload::File(&path), false)
        .await
        .unwrap();
    let text = alice
        .send_content(bob.name(), Payload::Text("queued before a crash"), false)
        .await
        .unwrap();
    assert_eq!(file.state, "queued");
    tokio::time::sleep(Duration::from_secs(2)).await;
    alice_daemon.kill();

    // Without a daemon, sending says so and how to start one.
    match alice
        .send_content(bob.name(), Payload::Text("x"), false)
        .await
    {
        Err(Error::CommandFailed { stderr, .. }) => {
            assert!(stderr.contains("no bastet daemon is running"), "{stderr}");
            assert!(stderr.contains("daemon"), "{stderr}");
        }
        other => panic!("send without a daemon: {other:?}"),
    }
    // The outbox on disk still holds both, unfinished.
    let outbox = alice.bastet(&["outbox", "--json"]).await.unwrap();
    assert!(outbox.contains(&file.message_id), "{outbox}");
    assert!(outbox.contains(&text.message_id), "{outbox}");

    let mut alice_daemon = alice.start_daemon().await.unwrap();
    let ids = [file.message_id.clone(), text.message_id.clone()];
    let (got, shown) = bob
        .receive_counted(&ids, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        2,
        "after the restart: {got:?}\n{}",
        alice_daemon.log_tail(30)
    );
    assert_eq!(got[&text.message_id].text, "queued before a crash");
    let saved = got[&file.message_id]
        .file
        .as_ref()
        .and_then(|f| f.saved_to.as_ref())
        .map(|p| std::fs::read(p).unwrap())
        .expect("the file was saved");
    assert!(saved == bytes, "the file arrived changed");
    assert!(
        shown.values().all(|&n| n == 1),
        "shown more than once: {shown:?}"
    );

    // SIGTERM: the daemon saves and exits 0; the next one carries on.
    let later = alice
        .send_content(bob.name(), Payload::File(&path), false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    match alice_daemon.stop() {
        Some(StopOutcome::Exited(status)) => {
            assert!(status.contains("exit status: 0"), "{status}")
        }
        other => panic!("the daemon did not stop cleanly: {other:?}"),
    }
    let _alice_daemon = alice.start_daemon().await.unwrap();
    let got = bob
        .receive(
            std::slice::from_ref(&later.message_id),
            Duration::from_secs(90),
        )
        .await
        .unwrap();
    assert!(got.contains_key(&later.message_id), "lost across SIGTERM");
}
