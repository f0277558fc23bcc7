//! Three directory authorities over real processes on 127.0.0.1, with short
//! epochs: messages cross epoch changes (new consensus, rotated Sphinx
//! keys), one authority down changes nothing, two down stop new consensus
//! documents (clients refuse once the last one expired), and the network
//! recovers when they come back.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bastet_testnet::{Client, Network, NetworkOptions, Payload, Sent, StopOutcome};

const EPOCH_SECS: u64 = 10;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn epoch_now() -> u64 {
    unix_now() / EPOCH_SECS
}

/// Sends `n` messages `gap` apart and checks every one arrives intact.
async fn send_and_receive(
    net: &Network,
    alice: &Client,
    bob: &Client,
    label: &str,
    n: usize,
    gap: Duration,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut texts = Vec::new();
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        let text = format!("{label} message {i}");
        let s = alice
            .send(bob.name(), &text)
            .await
            .unwrap_or_else(|e| panic!("{label}: send {i}: {e}\n{}", net.log_tails(20)));
        sent.push(s);
        texts.push(text);
    }
    let ids: Vec<String> = sent.iter().map(|s| s.message_id.clone()).collect();
    let got = bob.receive(&ids, DELIVERY_TIMEOUT).await.unwrap();
    assert_eq!(
        got.len(),
        n,
        "{label}: only {} of {n} delivered\n{}\n{}",
        got.len(),
        net.counters().await,
        net.log_tails(20)
    );
    for (s, text) in sent.iter().zip(&texts) {
        let r = &got[&s.message_id];
        assert_eq!(&r.text, text);
        assert!(r.verified);
    }
    sent
}

/// Retries a non-waiting send until one is accepted (a consensus is
/// available and the fragments went out) or `within` passed; returns it,
/// or the last error.
async fn send_until_ok(alice: &Client, bob: &Client, within: Duration) -> Result<Sent, String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        match alice
            .send_content(bob.name(), Payload::Text("after recovery"), false)
            .await
        {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_authorities_rotate_keys_survive_one_loss_and_recover_from_two() {
    let mut net = Network::start(NetworkOptions {
        epoch_secs: EPOCH_SECS,
        ..NetworkOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the testnet did not start: {e}"));
    assert_eq!(net.layout().authorities.len(), 3);
    assert_eq!(net.layout().threshold, 2);
    let alice = net.client("alice", "mailbox-a").await.unwrap();
    let bob = net.client("bob", "mailbox-b").await.unwrap();
    let carol = net.client("carol", "mailbox-a").await.unwrap();
    alice.befriend(&bob).await.unwrap();
    carol.befriend(&bob).await.unwrap();

    // 1. Messages across at least two epoch changes.
    let first_epoch = epoch_now();
    let sent = send_and_receive(&net, &alice, &bob, "rotation", 6, Duration::from_secs(4)).await;
    let epochs: BTreeSet<u64> = sent.iter().map(|s| s.epoch).collect();
    assert!(
        epochs.len() >= 3,
        "messages should span two epoch changes: {epochs:?}"
    );
    assert!(sent.iter().all(|s| s.signatures >= 2));
    // Every relay rotated: the first epoch's key is erased (grace is 5 s
    // at 10-second epochs), the current one exists.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let now = epoch_now();
    assert!(now >= first_epoch + 2);
    for dir in net.relay_dirs() {
        let keys = dir.join("sphinx-keys");
        assert!(
            !keys.join(format!("{first_epoch}.key")).exists(),
            "{} still holds the key of epoch {first_epoch}",
            keys.display()
        );
        assert!(keys.join(format!("{now}.key")).exists() || epoch_now() != now);
    }

    // 2. One authority down: nothing changes for users, across an epoch.
    assert!(matches!(
        net.stop_node("authority-1").unwrap(),
        StopOutcome::Exited(_)
    ));
    let sent = send_and_receive(&net, &alice, &bob, "one-down", 3, Duration::from_secs(6)).await;
    assert!(sent.first().unwrap().epoch < sent.last().unwrap().epoch);

    // 3. Two down: no new consensus. Clients keep the last valid one until
    //    it expires, then refuse with an error that says so.
    net.stop_node("authority-2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(3 * EPOCH_SECS + 5);
    let refusal = loop {
        // Not waiting for acks: what matters is whether the client still
        // sends, not whether this message makes it through the outage.
        match alice
            .send_content(bob.name(), Payload::Text("during the outage"), false)
            .await
        {
            Err(e) => break e.to_string(),
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(s) => panic!(
                "still sending in epoch {} with one authority of three",
                s.epoch
            ),
        }
    };
    assert!(
        refusal.contains("no consensus for epoch"),
        "unclear refusal: {refusal}"
    );
    assert!(refusal.contains("at least 2"), "{refusal}");

    // 4. Both come back: a consensus forms again and messages flow.
    net.start_node("authority-1").unwrap();
    net.start_node("authority-2").unwrap();
    // Carol sends: her outbox holds only this message (alice's still holds
    // the ones sent into the outage, which run to their give-up).
    let s = send_until_ok(&carol, &bob, Duration::from_secs(4 * EPOCH_SECS))
        .await
        .unwrap_or_else(|e| panic!("no recovery: {e}\n{}", net.log_tails(30)));
    assert!(s.signatures >= 2);
    // Relays that held no consensus poll for one every 2 s and drop what
    // reaches them meanwhile; retransmission carries the message through.
    let resumed = carol.resume(Duration::from_secs(60)).await.unwrap();
    assert!(
        resumed.iter().all(|r| r.state == "stored"),
        "{resumed:?}\n{}",
        net.counters().await
    );
    let got = bob
        .receive(std::slice::from_ref(&s.message_id), DELIVERY_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        1,
        "not delivered after recovery\n{}\n{}",
        net.counters().await,
        net.log_tails(20)
    );
    for (name, outcome) in net.stop() {
        assert!(
            matches!(outcome, StopOutcome::Exited(_)),
            "{name} did not stop cleanly: {outcome:?}"
        );
    }
}
