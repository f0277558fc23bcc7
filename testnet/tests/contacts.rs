//! Contact cards and pre-shared keys as a user meets them, through the
//! `bastet` CLI over real processes on 127.0.0.1: no card, no sending; a
//! card as a file and a QR code; a contact that waits for your card; the
//! safety number the two sides compare; a passphrase both type; and a
//! passphrase that differs, which the recipient sees as a rejected message
//! saying "pre-shared key mismatch". Start the binaries as `end_to_end.rs`
//! says.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bastet_testnet::{Client, Error, Network, NetworkOptions};
use serde_json::Value;

/// Sets the contact's pre-shared key from `phrase`, as a user would with
/// `bastet contact psk NAME --passphrase` (the phrase comes from the
/// environment here instead of the terminal).
async fn set_passphrase(net: &Network, client: &Client, contact: &str, phrase: &str) {
    let out = tokio::process::Command::new(net.binaries().path("bastet"))
        .arg("--data-dir")
        .arg(client.data_dir())
        .args(["contact", "psk", contact, "--passphrase"])
        .env("BASTET_PSK_PASSPHRASE", phrase)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn show(client: &Client, contact: &str) -> Value {
    let out = client
        .bastet(&["contact", "show", contact, "--json"])
        .await
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

fn refusal(r: bastet_testnet::Result<bastet_testnet::Sent>) -> String {
    match r {
        Err(Error::CommandFailed { stderr, .. }) => stderr,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cards_passphrases_and_mismatches_as_a_user_sees_them() {
    let net = match Network::start(NetworkOptions::default()).await {
        Ok(n) => n,
        Err(e) => panic!("the testnet did not start: {e}"),
    };
    let alice = net.client("alice", "mailbox-a").await.unwrap();
    let bob = net.client("bob", "mailbox-b").await.unwrap();

    // No card, no sending: the error says how to add a contact.
    let why = refusal(alice.send("bob", "too early").await);
    assert!(why.contains("no contact named \"bob\""), "{why}");
    assert!(why.contains("contact import"), "{why}");

    // Alice's card, as a file and a QR code.
    let card = alice.data_dir().join("alice.card");
    let png = alice.data_dir().join("alice.png");
    alice
        .bastet(&[
            "contact",
            "export",
            "--out",
            card.to_str().unwrap(),
            "--qr-png",
            png.to_str().unwrap(),
        ])
        .await
        .unwrap();
    assert!(
        std::fs::read(&png)
            .unwrap()
            .starts_with(b"\x89PNG\r\n\x1a\n")
    );
    let text = std::fs::read_to_string(&card).unwrap();
    assert!(text.starts_with("BASTET-CARD:"), "{text}");
    bob.bastet(&[
        "contact",
        "import",
        card.to_str().unwrap(),
        "--name",
        "alice",
    ])
    .await
    .unwrap();
    // Bob has not answered with his card: he cannot write yet, and is told
    // how to answer.
    assert_eq!(show(&bob, "alice").await["complete"], false);
    let why = refusal(bob.send("alice", "too early").await);
    assert!(why.contains("contact export --for alice"), "{why}");
    let reply = bob.data_dir().join("bob.card");
    bob.bastet(&[
        "contact",
        "export",
        "--for",
        "alice",
        "--out",
        reply.to_str().unwrap(),
    ])
    .await
    .unwrap();
    alice
        .bastet(&[
            "contact",
            "import",
            reply.to_str().unwrap(),
            "--name",
            "bob",
        ])
        .await
        .unwrap();
    // The same card twice is refused.
    let again = alice
        .bastet(&[
            "contact",
            "import",
            reply.to_str().unwrap(),
            "--name",
            "bob2",
        ])
        .await;
    assert!(
        matches!(again, Err(Error::CommandFailed { .. })),
        "{again:?}"
    );

    let (a, b) = (show(&alice, "bob").await, show(&bob, "alice").await);
    assert_eq!(a["complete"], true);
    assert_eq!(b["complete"], true);
    assert_eq!(a["psk_source"], "cards");
    assert_eq!(
        a["safety_number"], b["safety_number"],
        "both sides compare one number"
    );
    let list: Value =
        serde_json::from_str(&alice.bastet(&["contact", "list", "--json"]).await.unwrap()).unwrap();
    assert_eq!(list["contacts"].as_array().unwrap().len(), 1);

    // Both ways, by name.
    let to_bob = alice.send("bob", "hello bob").await.unwrap();
    let to_alice = bob.send("alice", "hello alice").await.unwrap();
    let got = bob
        .receive(
            std::slice::from_ref(&to_bob.message_id),
            Duration::from_secs(45),
        )
        .await
        .unwrap();
    let m = &got[&to_bob.message_id];
    assert_eq!(
        (m.text.as_str(), m.contact.as_deref(), m.verified),
        ("hello bob", Some("alice"), true)
    );
    let got = alice
        .receive(
            std::slice::from_ref(&to_alice.message_id),
            Duration::from_secs(45),
        )
        .await
        .unwrap();
    assert_eq!(got[&to_alice.message_id].contact.as_deref(), Some("bob"));

    // A passphrase both type replaces the cards' key.
    set_passphrase(&net, &alice, "bob", "correct horse battery staple").await;
    set_passphrase(&net, &bob, "alice", "correct horse battery staple").await;
    assert_eq!(show(&alice, "bob").await["psk_source"], "passphrase");
    let sent = alice.send("bob", "under the passphrase").await.unwrap();
    let got = bob
        .receive(
            std::slice::from_ref(&sent.message_id),
            Duration::from_secs(45),
        )
        .await
        .unwrap();
    assert_eq!(got[&sent.message_id].text, "under the passphrase");

    // Bob types another passphrase: alice's next message reaches him, and
    // he sees it rejected for a pre-shared key mismatch, not dropped and not
    // shown as hers.
    set_passphrase(&net, &bob, "alice", "a different passphrase").await;
    alice.send("bob", "cannot be read").await.unwrap();
    let shown = bob.inbox(Duration::from_secs(45)).await.unwrap();
    assert_eq!(shown.len(), 1, "{shown:?}");
    let why = shown[0].rejected.as_deref().unwrap_or_default();
    assert!(
        why.contains("pre-shared key mismatch with alice"),
        "{shown:?}"
    );
    assert!(!shown[0].verified && shown[0].text.is_empty());

    // A message that arrives before its sender's card is kept, shown as
    // such, and shown in full once the card is imported.
    let carol = net.client("carol", "mailbox-a").await.unwrap();
    let card = carol.data_dir().join("carol.card");
    carol
        .bastet(&["contact", "export", "--out", card.to_str().unwrap()])
        .await
        .unwrap();
    alice
        .bastet(&[
            "contact",
            "import",
            card.to_str().unwrap(),
            "--name",
            "carol",
        ])
        .await
        .unwrap();
    let reply = alice.data_dir().join("alice-for-carol.card");
    alice
        .bastet(&[
            "contact",
            "export",
            "--for",
            "carol",
            "--out",
            reply.to_str().unwrap(),
        ])
        .await
        .unwrap();
    let early = alice.send("carol", "before you knew me").await.unwrap();
    let shown = carol.inbox(Duration::from_secs(45)).await.unwrap();
    assert_eq!(shown.len(), 1, "{shown:?}");
    let why = shown[0].rejected.as_deref().unwrap_or_default();
    assert!(
        why.contains("not one of your contacts") && why.contains("kept"),
        "{why}"
    );
    carol
        .bastet(&[
            "contact",
            "import",
            reply.to_str().unwrap(),
            "--name",
            "alice",
        ])
        .await
        .unwrap();
    let shown = carol.inbox(Duration::from_secs(5)).await.unwrap();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0].message_id, early.message_id);
    assert_eq!(shown[0].text, "before you knew me");
    assert_eq!(shown[0].contact.as_deref(), Some("alice"));
}
