//! Faults under load, over real processes on 127.0.0.1 (the short forms of
//! the reliability scenarios): a mailbox server killed (SIGKILL) in the
//! middle of a stream of messages and restarted loses nothing — what it
//! acknowledged survived in RocksDB, what it did not was retransmitted —
//! and the recipient sees every message exactly once; a mixnode killed
//! for good in the middle of a stream: what crossed it is retransmitted
//! on other routes and every message arrives once. Start the binaries as
//! `end_to_end.rs` says.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bastet_client::TrafficConfig;
use bastet_testnet::{Network, NetworkOptions, Payload};

const MESSAGES: usize = 12;

/// Streams [`MESSAGES`] messages from alice to bob through their daemons,
/// running `fault` in the middle; checks every message arrives once, and
/// prints sent / delivered / duplicated / lost.
async fn stream_across(scenario: &str, fault: impl AsyncFnOnce(&mut Network)) {
    let mut net = match Network::start(NetworkOptions {
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
        payload_rate: Some(10.0),
        poll_interval_ms: 300,
        ..TrafficConfig::preset("interactive").unwrap()
    };
    alice.set_traffic(&traffic).unwrap();
    bob.set_traffic(&traffic).unwrap();
    let _alice_daemon = alice.start_daemon().await.unwrap();
    let _bob_daemon = bob.start_daemon().await.unwrap();
    let mut fault = Some(fault);
    let mut ids = Vec::new();
    for i in 0..MESSAGES {
        let text = format!("message {i} of a stream across a fault");
        let sent = alice
            .send_content(bob.name(), Payload::Text(&text), false)
            .await
            .unwrap();
        ids.push((sent.message_id, text));
        if i == MESSAGES / 2
            && let Some(f) = fault.take()
        {
            f(&mut net).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let wanted: Vec<String> = ids.iter().map(|(id, _)| id.clone()).collect();
    let (got, shown) = bob
        .receive_counted(&wanted, Duration::from_secs(150))
        .await
        .unwrap();
    let lost: Vec<&String> = wanted.iter().filter(|id| !got.contains_key(*id)).collect();
    let duplicated = shown.values().filter(|&&n| n > 1).count();
    eprintln!(
        "chaos {scenario}: sent {}, delivered {}, duplicated {duplicated}, lost {}",
        wanted.len(),
        got.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}\n{}", net.log_tails(10));
    assert_eq!(duplicated, 0, "shown more than once: {shown:?}");
    for (id, text) in &ids {
        assert_eq!(&got[id].text, text);
        assert!(got[id].verified);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixnode_killed_for_good_under_load_loses_nothing() {
    stream_across("kill-mixnode", async |net: &mut Network| {
        // One of the two mixes of a layer, for the rest of the test.
        net.kill_node("mix-a").unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_server_killed_under_load_loses_nothing() {
    stream_across("kill-mailbox", async |net: &mut Network| {
        net.kill_node("mailbox-b").unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        net.start_node("mailbox-b").unwrap();
    })
    .await;
}
