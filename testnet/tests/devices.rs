//! Identities with several devices, over real processes on 127.0.0.1:
//! alice pairs two more devices with one-time codes (`bastet device add`
//! on her first device, `bastet device join` on each new one); bob's
//! messages reach all three of her devices, and what one of hers sends
//! the others show as sent; she revokes the third; bob's
//! next message reaches the first two only (the third's mailbox gets no
//! copy), and what the third device sends is rejected by bob as from a
//! revoked device. Start the binaries as `end_to_end.rs` says.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bastet_client::TrafficConfig;
use bastet_testnet::{Client, Network, NetworkOptions, Sent};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

async fn contact(client: &Client, name: &str) -> Value {
    let out = client
        .bastet(&["contact", "show", name, "--json"])
        .await
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

/// Waits until `client`'s view of contact `name` satisfies `ok`.
async fn until_contact(client: &Client, name: &str, what: &str, ok: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let c = contact(client, name).await;
        if ok(&c) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {c}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The copy of `sent` for the device `id`.
fn copy_for<'a>(sent: &'a Sent, id: &str) -> &'a str {
    &sent
        .copies
        .iter()
        .find(|c| c.device == id)
        .unwrap_or_else(|| panic!("no copy for device {id}: {sent:?}"))
        .message_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_every_device_and_a_revoked_device_is_cut_off() {
    let net = match Network::start(NetworkOptions::default()).await {
        Ok(n) => n,
        Err(e) => panic!("the testnet did not start: {e}"),
    };
    let mut a1 = net.client("alice", "mailbox-a").await.unwrap();
    let mut a2 = net.client("alice-laptop", "mailbox-b").await.unwrap();
    let mut a3 = net.client("alice-tablet", "mailbox-a").await.unwrap();
    let mut bob = net.client("bob", "mailbox-b").await.unwrap();
    a1.befriend(&bob).await.unwrap();
    let traffic = TrafficConfig {
        payload_rate: Some(20.0),
        poll_interval_ms: 200,
        ..TrafficConfig::preset("interactive").unwrap()
    };
    for c in [&a1, &a2, &a3, &bob] {
        c.set_traffic(&traffic).unwrap();
    }
    let _daemons = [
        a1.start_daemon().await.unwrap(),
        a2.start_daemon().await.unwrap(),
        a3.start_daemon().await.unwrap(),
        bob.start_daemon().await.unwrap(),
    ];

    // Two new devices join alice's identity with one-time codes.
    let identity = a1.devices().await.unwrap()["identity"].clone();
    for (device, name, count) in [(&a2, "laptop", 2), (&a3, "tablet", 3)] {
        let code = a1.device_add(false).await.unwrap();
        let joined = device.device_join(&code, name).await.unwrap();
        assert_eq!(joined["identity"], identity, "{joined}");
        assert_eq!(joined["devices"].as_array().unwrap().len(), count);
    }
    let listed = a1.devices().await.unwrap();
    assert_eq!(listed["devices"].as_array().unwrap().len(), 3, "{listed}");
    let ids = [
        a1.device_id().await.unwrap(),
        a2.device_id().await.unwrap(),
        a3.device_id().await.unwrap(),
    ];
    // Bob learns alice's devices from the chain her first device sent.
    until_contact(&bob, "alice", "bob learns the three devices", |c| {
        c["devices"].as_array().is_some_and(|d| d.len() == 3)
    })
    .await;
    let safety = contact(&bob, "alice").await["safety_number"].clone();
    assert_eq!(contact(&a2, "bob").await["safety_number"], safety);

    // Bob's message reaches all three devices.
    let sent = bob.send("alice", "to every device").await.unwrap();
    assert_eq!(sent.copies.len(), 3, "{sent:?}");
    assert!(sent.copies.iter().all(|c| c.state == "stored"), "{sent:?}");
    for (client, id) in [&a1, &a2, &a3].into_iter().zip(&ids) {
        let copy = copy_for(&sent, id).to_string();
        let got = client
            .receive(std::slice::from_ref(&copy), WAIT)
            .await
            .unwrap();
        let m = &got[&copy];
        assert_eq!(m.text, "to every device");
        assert_eq!(m.contact.as_deref(), Some("bob"));
        assert!(m.verified);
    }
    // Each new device writes as alice.
    for (client, text) in [(&a2, "from the laptop"), (&a3, "from the tablet")] {
        let s = client.send("bob", text).await.unwrap();
        assert_eq!(s.copies.len(), 1);
        let got = bob
            .receive(std::slice::from_ref(&s.message_id), WAIT)
            .await
            .unwrap();
        let m = &got[&s.message_id];
        assert_eq!(m.text, text);
        assert_eq!(m.contact.as_deref(), Some("alice"));
        assert_eq!(Value::String(m.from.clone()), identity);
        assert!(m.verified);
    }

    // What one of alice's devices sends, the others show as sent.
    let s = a1.send("bob", "from the phone").await.unwrap();
    assert_eq!(
        s.copies.len(),
        1,
        "the copies for alice's devices are not bob's"
    );
    for client in [&a2, &a3] {
        let deadline = Instant::now() + WAIT;
        loop {
            let shown = client.inbox(Duration::from_secs(5)).await.unwrap();
            if let Some(m) = shown.iter().find(|m| m.text == "from the phone") {
                assert!(m.outgoing && m.verified, "{m:?}");
                assert_eq!(m.contact.as_deref(), Some("bob"));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no copy reached {}",
                client.name()
            );
        }
    }

    // Alice revokes the tablet from her first device.
    a1.device_revoke(&ids[2], "stolen").await.unwrap();
    let listed = a1.devices().await.unwrap();
    let tablet = listed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == ids[2].as_str())
        .unwrap();
    assert_eq!(tablet["revoked"], true, "{listed}");
    until_contact(&bob, "alice", "bob learns the revocation", |c| {
        c["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == ids[2].as_str()))
            .is_some_and(|d| d["revoked"] == true)
    })
    .await;

    // Bob's next message reaches the first two devices only.
    let sent = bob.send("alice", "after the revocation").await.unwrap();
    assert_eq!(sent.copies.len(), 2, "{sent:?}");
    assert!(sent.copies.iter().all(|c| c.device != ids[2]), "{sent:?}");
    for (client, id) in [&a1, &a2].into_iter().zip(&ids) {
        let copy = copy_for(&sent, id).to_string();
        let got = client
            .receive(std::slice::from_ref(&copy), WAIT)
            .await
            .unwrap();
        assert_eq!(got[&copy].text, "after the revocation");
    }
    // The tablet's mailbox gets nothing from bob.
    let late = a3.inbox(Duration::from_secs(5)).await.unwrap();
    assert!(
        late.iter()
            .all(|m| m.notice || !m.text.contains("after the revocation")),
        "{late:?}"
    );

    // What the revoked tablet sends is rejected by bob, and says why.
    a3.send("bob", "still me").await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let shown = bob.inbox(Duration::from_secs(5)).await.unwrap();
        assert!(
            shown.iter().all(|m| m.text != "still me"),
            "a revoked device's message was shown: {shown:?}"
        );
        if let Some(m) = shown.iter().find(|m| m.rejected.is_some()) {
            let why = m.rejected.as_deref().unwrap();
            assert!(why.contains("revoked device"), "{why}");
            assert!(why.contains("stolen"), "{why}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tablet's message never arrived"
        );
    }
}
