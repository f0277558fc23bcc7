//! Reliable delivery over real processes on 127.0.0.1, with packet loss
//! injected on half of the mixnodes: every client is a `bastet daemon`
//! sending at its Poisson rate, every fragment is acknowledged by the
//! recipient's mailbox server through the sender's SURB, lost fragments and
//! lost acks are retransmitted, and the recipient shows each message once.
//! Start the binaries as `end_to_end.rs` says.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bastet_client::TrafficConfig;
use bastet_testnet::{
    DemoOptions, Network, NetworkOptions, Payload, message_file, metric_sum, run_demo,
};

const LOSS: f64 = 0.1;
const MESSAGES: usize = 50;
const LOSSY_MIXES: [&str; 3] = ["mix-a", "mix-c", "mix-e"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_messages_and_a_large_file_arrive_intact_exactly_once_despite_loss() {
    // Lossy probes take a few rounds to get through whole; a longer epoch
    // keeps the Sphinx keys they were built with valid meanwhile.
    let net = match Network::start(NetworkOptions {
        loss: LOSS,
        epoch_secs: 120,
        ..NetworkOptions::default()
    })
    .await
    {
        Ok(n) => n,
        Err(e) => panic!("the testnet did not start: {e}"),
    };

    // Fifty messages of 100 kB (64 fragments each) from alice to bob, each
    // checked byte for byte against what was sent and shown exactly once;
    // at the same time a 1 MiB file (661 fragments) from carol to dave,
    // sent and waited for. Every client runs a daemon at the highest
    // payload rate (100 packets/s) so that 3,900 fragments and their
    // retransmissions take about a minute.
    let traffic = TrafficConfig {
        payload_rate: Some(100.0),
        poll_interval_ms: 200,
        ..TrafficConfig::preset("interactive").unwrap()
    };
    let options = DemoOptions {
        messages: MESSAGES,
        size: 100_000,
        timeout: Duration::from_secs(150),
        spacing: Duration::ZERO,
        policy: None,
        traffic: traffic.clone(),
    };
    let fifty = run_demo(&net, &options);
    let bytes = message_file(1, 1, 1 << 20);
    let large = async {
        let mut carol = net.client("carol", "mailbox-a").await?;
        let mut dave = net.client("dave", "mailbox-b").await?;
        carol.befriend(&dave).await?;
        carol.set_traffic(&traffic)?;
        dave.set_traffic(&traffic)?;
        let _carol_daemon = carol.start_daemon().await?;
        let _dave_daemon = dave.start_daemon().await?;
        let path = carol.data_dir().join("one-mebibyte.bin");
        std::fs::write(&path, &bytes).unwrap();
        let sent = carol
            .send_content(dave.name(), Payload::File(&path), true)
            .await?;
        let got = dave
            .receive(
                std::slice::from_ref(&sent.message_id),
                Duration::from_secs(60),
            )
            .await?;
        Ok::<_, bastet_testnet::Error>((sent, got))
    };
    let (report, large) = tokio::join!(fifty, large);

    let report = report.unwrap_or_else(|e| panic!("demo: {e}\n{}", net.log_tails(25)));
    let text = report.to_human();
    eprintln!("{text}");
    assert_eq!(report.sent, MESSAGES);
    assert!(
        report.all_delivered(),
        "{text}\n{}\n{}",
        net.counters().await,
        net.log_tails(25)
    );
    for m in &report.messages {
        assert_eq!(m.fragments, 64, "{text}");
        assert_eq!(m.state, "stored", "{text}");
        assert_eq!(m.shown, 1, "{text}");
    }

    let (sent, got) = match large {
        Ok(r) => r,
        Err(e) => panic!("sending 1 MiB: {e}\n{}", net.counters().await),
    };
    eprintln!(
        "1 MiB file: {} fragments, {} retransmissions, {}",
        sent.fragments, sent.retransmissions, sent.state
    );
    assert_eq!(sent.state, "stored");
    // 1 MiB and the layers' overhead (at most MESSAGE_OVERHEAD bytes and the
    // file name), in fragments of FRAGMENT_CAPACITY bytes: 662.
    let cap = bastet_sphinx::FRAGMENT_CAPACITY;
    let most = (bytes.len() + bastet_client::MESSAGE_OVERHEAD + 32).div_ceil(cap);
    assert!(
        (bytes.len().div_ceil(cap)..=most).contains(&sent.fragments),
        "{} fragments",
        sent.fragments
    );
    let file = got
        .get(&sent.message_id)
        .and_then(|m| m.file.as_ref())
        .expect("the file arrived");
    assert_eq!(file.name, "one-mebibyte.bin");
    assert_eq!(file.size, bytes.len());
    let saved = std::fs::read(file.saved_to.as_ref().unwrap()).unwrap();
    assert!(saved == bytes, "the saved file differs from the one sent");

    // About a quarter of the round trips cross a lossy mix and lose their
    // fragment or its ack: they must have been sent again.
    assert!(report.retransmissions > 0, "{text}");
    assert!(sent.retransmissions > 0);
    let mut injected = 0.0;
    for mix in LOSSY_MIXES {
        let metrics = net.metrics(mix).await.unwrap();
        injected += metric_sum(
            &metrics,
            "bastet_mixnode_packets_dropped",
            "reason=\"injected_loss\"",
        );
    }
    assert!(injected > 0.0, "no packet was dropped by the loss hook");
    let acks = metric_sum(
        &net.metrics("mailbox-b").await.unwrap(),
        "bastet_mailbox_acks_sent",
        "",
    );
    assert!(
        acks >= 64.0 * MESSAGES as f64 + 661.0,
        "mailbox-b sent {acks} acks for {} fragments",
        64 * MESSAGES + 661
    );
}
