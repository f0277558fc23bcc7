//! `Client::send` against a real in-process directory authority and a real
//! TLS packet listener standing in for the layer-1 mix: the packet that
//! arrives, peeled hop by hop with the relays' keys, carries a message only
//! the recipient can read.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bastet_client::{
    Client, ClientConfig, ClientKeys, Contacts, Content, DataDir, DeliveryState, Error, Opened,
    RouteNode, SendOptions,
};
use bastet_link::{IngressConfig, IngressStats, TlsIdentity, serve_packets};
use bastet_sphinx::{FinalPayload, Fragment, NodeId, Prepared, Processed};
use tokio::sync::mpsc;

mod common;
use common::{await_consensus, befriend, publish, relays, start_authority};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_packet_crosses_three_mixes_to_the_recipients_mailbox() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = start_authority(&tmp.path().join("authority")).await;

    let relays = relays();

    // The layer-1 mix really listens; the others only need descriptors.
    let tls = TlsIdentity::generate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let entry_addr = listener.local_addr().unwrap().to_string();
    let (tx, mut rx) = mpsc::channel(4);
    let entry_pin = tls.pin();
    tokio::spawn(async move {
        serve_packets(
            listener,
            &tls,
            IngressConfig::default(),
            tx,
            Arc::new(IngressStats::default()),
        )
        .await
    });
    // The consensus deals the three mixes into layers, so each publishes
    // the one real listener: whichever becomes layer 1 receives the packet.
    for relay in &relays[..3] {
        publish(&directory, relay, entry_addr.clone(), None, entry_pin.0).await;
    }
    let api = Some("127.0.0.1:9".to_string());
    publish(&directory, &relays[3], "127.0.0.1:9".into(), api, [7; 32]).await;
    await_consensus(&directory, &relays).await;

    // The sender's data dir, written as `init` would.
    let mailbox_server = relays[3].keys.node_id();
    let sender_dir = DataDir::new(tmp.path().join("alice"));
    sender_dir.create().unwrap();
    let alice = ClientKeys::generate(&mut rand::rng());
    sender_dir.save_keys(&alice).unwrap();
    sender_dir
        .save_config(&ClientConfig::new(
            directory.clone(),
            mailbox_server,
            alice.mailbox_id(),
        ))
        .unwrap();
    let sender = Client::open(sender_dir.clone()).unwrap();

    // Bob's device (keys and contact book only), and carol's, whose
    // mailbox server is not in the consensus; both exchanged cards with
    // alice.
    let bob = ClientKeys::generate(&mut rand::rng());
    let bob_dir = DataDir::new(tmp.path().join("bob"));
    bob_dir.create().unwrap();
    bob_dir.save_keys(&bob).unwrap();
    befriend(
        (&sender_dir, &alice, mailbox_server, "alice"),
        (&bob_dir, &bob, mailbox_server, "bob"),
    );
    let carol = ClientKeys::generate(&mut rand::rng());
    let carol_dir = DataDir::new(tmp.path().join("carol"));
    carol_dir.create().unwrap();
    carol_dir.save_keys(&carol).unwrap();
    befriend(
        (&sender_dir, &alice, mailbox_server, "alice"),
        (&carol_dir, &carol, NodeId([0xee; 32]), "carol"),
    );
    let text = "hello bob, this is MARKER-51d3";
    // Sent once, not waited for: the sender's mailbox API is not running.
    let once = SendOptions {
        wait: false,
        ..SendOptions::default()
    };
    let mut sent = sender
        .send("bob", &Content::Text(text.into()), once)
        .await
        .unwrap();
    assert_eq!(sent.len(), 1, "bob has one device");
    let sent = sent.remove(0);
    // Four layers of overhead (the ML-KEM ciphertext alone is 1088 bytes)
    // make even a short text two fragments.
    assert_eq!(
        sent.fragments,
        (text.len() + bastet_client::MESSAGE_OVERHEAD).div_ceil(bastet_sphinx::FRAGMENT_CAPACITY)
    );
    assert_eq!(sent.state, DeliveryState::Sent);
    // Saved until acknowledged, so a crash does not lose it.
    let pending = sender.outbox().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].message_id, sent.message_id.to_hex());
    assert!(pending[0].fragments.iter().all(|f| f.attempts == 1));
    let roles: Vec<String> = sent.route.iter().map(RouteNode::role_label).collect();
    assert_eq!(roles, ["mix1", "mix2", "mix3", "mailbox"]);
    // Relays in route order: the mixes as the consensus layered them (one
    // per layer here, so every fragment takes the same route).
    let route_ids: Vec<NodeId> = sent.route.iter().map(|n| n.node).collect();
    let relays: Vec<_> = route_ids
        .iter()
        .map(|id| relays.iter().find(|r| r.keys.node_id() == *id).unwrap())
        .collect();
    let relay_ids = route_ids.clone();
    assert_eq!(relays[3].keys.node_id(), mailbox_server);

    let mut fragments = Vec::new();
    for _ in 0..sent.fragments {
        let frame = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a packet did not reach the first mix")
            .unwrap();
        assert!(
            !frame
                .windows(b"MARKER-51d3".len())
                .any(|w| w == b"MARKER-51d3"),
            "plaintext on the wire"
        );
        let mut packet = frame.to_vec();
        for (i, relay) in relays.iter().enumerate() {
            match Prepared::new(&packet, &relay.sphinx)
                .unwrap()
                .process()
                .unwrap()
            {
                Processed::Reply { .. } => panic!("a forward packet came out as a reply"),
                Processed::Forward {
                    next_hop,
                    delay,
                    packet: next,
                } => {
                    assert_eq!(next_hop, relay_ids[i + 1]);
                    assert!(delay <= bastet_client::MAX_HOP_DELAY);
                    packet = next.as_bytes().to_vec();
                }
                Processed::Deliver { mailbox, message } => {
                    assert_eq!(i, 3, "delivered early");
                    assert_eq!(mailbox, bob.mailbox_id());
                    // The final payload: an ack request back to alice's
                    // mailbox, and one fragment of the sealed envelope.
                    let payload = FinalPayload::from_bytes(&message).unwrap();
                    let ack = payload.ack().expect("every fragment asks for an ack");
                    let back = relays.iter().map(|r| r.keys.node_id()).collect::<Vec<_>>();
                    assert!(back[..3].contains(&ack.surb.first_hop()));
                    fragments.push(Fragment::from_bytes(payload.fragment_bytes()).unwrap());
                    break;
                }
            }
        }
    }
    fragments.sort_by_key(Fragment::index);
    assert_eq!(fragments.len(), sent.fragments);
    let message: Vec<u8> = fragments.iter().flat_map(|f| f.chunk().to_vec()).collect();
    assert!(
        !message
            .windows(b"MARKER-51d3".len())
            .any(|w| w == b"MARKER-51d3"),
        "plaintext at the mailbox server"
    );
    let mut book = Contacts::load(&bob_dir, &bob, mailbox_server).unwrap();
    let Opened::Message(got) = book.open_message(&bob, &message).unwrap() else {
        panic!("alice is bob's contact");
    };
    assert_eq!(got.text, text);
    assert!(got.verified);
    assert_eq!(got.contact.as_deref(), Some("alice"));
    assert_eq!(got.from, alice.identity_public());
    assert_eq!(got.message_id, sent.message_id);
    assert_eq!(got.sent_at_ms, sent.sent_at_ms);
    let mut carols = Contacts::load(&carol_dir, &carol, NodeId([0xee; 32])).unwrap();
    assert!(carols.open_message(&carol, &message).is_err());

    // A recipient on a mailbox server the consensus does not list, and a
    // text that does not fit, are refused before anything is sent.
    let err = sender
        .send("carol", &Content::Text("x".into()), once)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MailboxServerNotInConsensus(_)),
        "{err}"
    );
    let err = sender
        .send(
            "bob",
            &Content::Text("x".repeat(bastet_client::MAX_TEXT_LEN + 1)),
            once,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MessageTooLong { .. }), "{err}");
    let err = sender
        .send("dave", &Content::Text("x".into()), once)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoSuchContact(_)), "{err}");
    assert!(rx.try_recv().is_err(), "a refused send reached the mix");
}
