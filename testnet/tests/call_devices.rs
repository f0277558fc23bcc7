//! A call to a contact with two devices, on real processes on loopback
//! (binaries from `target/<profile>/`: `cargo build --workspace --bins`):
//! the offer rings both; the device that answers gets the call; the other,
//! also waiting with `bastet answer`, hears that another device answered
//! instead of joining (its circuit's cookie is bound to its own keys, so
//! it could never meet the caller's anyway).

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bastet_client::TrafficConfig;
use bastet_testnet::{Client, Network, NetworkOptions};
use serde_json::Value;

async fn contact(client: &Client, name: &str) -> Value {
    let out = client
        .bastet(&["contact", "show", name, "--json"])
        .await
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_that_answers_gets_the_call_and_the_other_stops_ringing() {
    let mut net = Network::start(NetworkOptions::default()).await.unwrap();
    let mut alice = net.client("alice", "mailbox-a").await.unwrap();
    let mut bob = net.client("bob", "mailbox-b").await.unwrap();
    let mut laptop = net.client("bob-laptop", "mailbox-a").await.unwrap();
    alice.befriend(&bob).await.unwrap();
    let traffic = TrafficConfig {
        payload_rate: Some(20.0),
        poll_interval_ms: 200,
        ..TrafficConfig::preset("interactive").unwrap()
    };
    for c in [&alice, &bob, &laptop] {
        c.set_traffic(&traffic).unwrap();
    }
    let _daemons = [
        alice.start_daemon().await.unwrap(),
        bob.start_daemon().await.unwrap(),
        laptop.start_daemon().await.unwrap(),
    ];
    let code = bob.device_add(false).await.unwrap();
    laptop.device_join(&code, "laptop").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = contact(&alice, "bob").await;
        if c["devices"].as_array().is_some_and(|d| d.len() == 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice never learned bob's laptop: {c}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let dir = net.dir().join("call-devices");
    std::fs::create_dir_all(&dir).unwrap();
    let limit = Duration::from_secs(200);
    // The laptop waits too, but only the phone answers at once: the laptop
    // starts answering only after the phone's answer is on its way.
    let phone = {
        let bob = bob.clone();
        let stats = dir.join("phone.json").to_string_lossy().into_owned();
        tokio::spawn(async move {
            bob.bastet_with_timeout(
                &[
                    "answer",
                    "--wait",
                    "120",
                    "--duration",
                    "4",
                    "--stats-json",
                    &stats,
                ],
                limit,
            )
            .await
        })
    };
    let caller_stats = dir.join("alice.json").to_string_lossy().into_owned();
    let caller = {
        let alice = alice.clone();
        tokio::spawn(async move {
            alice
                .bastet_with_timeout(
                    &[
                        "call",
                        "bob",
                        "--ring",
                        "120",
                        "--duration",
                        "4",
                        "--stats-json",
                        &caller_stats,
                    ],
                    limit,
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let laptop_answer = laptop
        .bastet_with_timeout(&["answer", "--wait", "120", "--duration", "4"], limit)
        .await;
    let phone = phone.await.unwrap();
    let caller = caller.await.unwrap();
    let (phone, caller) = (phone.unwrap(), caller.unwrap());
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let (phone_stats, alice_stats) = (read("phone.json"), read("alice.json"));
    assert!(
        phone_stats["received"]["audio"]["played"].as_u64().unwrap() > 100,
        "{phone}"
    );
    assert!(
        alice_stats["received"]["audio"]["played"].as_u64().unwrap() > 100,
        "{caller}"
    );
    // The laptop either never saw a live offer (it was withdrawn in time)
    // or answered and then heard another device had the call; it never
    // connected.
    match laptop_answer {
        Ok(out) => panic!("the laptop connected too: {out}"),
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("another of your devices answered") || e.contains("no call came in"),
                "{e}"
            );
        }
    }
    net.stop();
}
