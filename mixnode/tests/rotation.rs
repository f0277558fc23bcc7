//! Per-epoch Sphinx key rotation, end to end: 10-second epochs, a real
//! authority and a mixnode over TLS on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bastet_directory::{VerifiedConsensus, epoch_bounds, sphinx_key_path, unix_now};
use common::*;

/// The shortest epoch an authority accepts.
const EPOCH_SECS: u64 = 10;
/// Generous, so a packet sent just after an epoch change is surely in it.
const GRACE_SECS: u64 = 8;

/// Waits (at most 30 s) until the mix holds the consensus of `epoch`.
async fn consensus_of(mix: &Mix, epoch: u64) -> Arc<VerifiedConsensus> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = tokio::time::timeout(Duration::from_secs(1), mix.node.consensus()).await
            && c.epoch >= epoch
        {
            assert_eq!(c.epoch, epoch, "the test fell an epoch behind");
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no consensus for epoch {epoch} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_for_the_previous_key_pass_in_grace_and_are_dropped_once_it_is_erased() {
    let tmp = tempfile::tempdir().unwrap();
    let (directory, client) = authority_with_epochs(tmp.path(), EPOCH_SECS).await;
    let mut sink = Sink::start(&client).await;
    let mix = Mix::start(tmp.path(), &directory, |c| {
        c.sphinx_key_grace_secs = Some(GRACE_SECS);
    })
    .await;
    mix.wait_for_consensus().await;

    // Packets for this epoch's key, to be sent in the next epoch.
    let old = mix.epoch();
    let in_grace = packet_for_epoch(&mix, old, &sink, b"sent in grace");
    let after_grace = packet_for_epoch(&mix, old, &sink, b"sent too late");

    // The next epoch: the mix published its key for it one epoch ahead.
    let new = old + 1;
    let consensus = consensus_of(&mix, new).await;
    let listed = consensus.node(&mix.node.node_id()).unwrap();
    assert_eq!(listed.sphinx_public(), mix.sphinx_key(new));
    assert_ne!(listed.sphinx_public(), mix.sphinx_key(old));
    let (new_start, _) = epoch_bounds(new, EPOCH_SECS);
    assert!(
        unix_now() < new_start + GRACE_SECS,
        "precondition: the test reached epoch {new} too late to be in grace"
    );

    // Under the previous key, in grace: processed and forwarded.
    mix.send(&in_grace).await;
    let frame = sink
        .next(Duration::from_secs(10))
        .await
        .expect("a packet for the previous key was not forwarded in grace");
    assert_eq!(sink.open(&frame[..]).1, b"sent in grace");
    // Built from the consensus, for the current key: forwarded too.
    let current = bastet_sphinx::build(
        &[
            bastet_sphinx::Hop {
                node: mix.node.node_id(),
                sphinx_key: listed.sphinx_public(),
                delay: Duration::ZERO,
            },
            sink.hop(),
        ],
        &bastet_sphinx::MailboxId([7; 32]),
        b"current key",
    )
    .unwrap();
    mix.send(&current).await;
    let frame = sink.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(sink.open(&frame[..]).1, b"current key");

    // Grace over: the old key is erased from the data directory...
    let old_file = sphinx_key_path(&mix.config.data_dir, old);
    let deadline = Instant::now() + Duration::from_secs(2 * EPOCH_SECS);
    while old_file.exists() {
        assert!(Instant::now() < deadline, "{old_file:?} never erased");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        unix_now() >= new_start + GRACE_SECS,
        "erased before grace ended"
    );
    let left: Vec<u64> = std::fs::read_dir(mix.config.data_dir.join("sphinx-keys"))
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".key").unwrap().parse().unwrap()
        })
        .collect();
    assert!(left.iter().all(|e| *e > old), "{left:?}");
    // ...and from the packet path: its packets are dropped as unknown_key.
    mix.wait_metric("bastet_mixnode_sphinx_keys", |v| v == 2.0)
        .await;
    mix.send(&after_grace).await;
    mix.wait_metric(&dropped("unknown_key"), |v| v == 1.0).await;
    // A replay of the packet processed in grace: its key's replay filter is
    // gone with the key, and nothing can open it any more.
    mix.send(&in_grace).await;
    mix.wait_metric(&dropped("unknown_key"), |v| v == 2.0).await;
    assert!(
        sink.next(Duration::from_millis(500)).await.is_none(),
        "a packet for an erased key was forwarded"
    );
    let text = mix.metrics().await;
    assert_eq!(metric_value(&text, &dropped("replay")), Some(0.0), "{text}");
    assert_eq!(
        metric_value(&text, &dropped("malformed")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(metric_value(&text, FORWARDED), Some(2.0), "{text}");
    mix.node.stop().await;
}

/// A packet through the mix under its key for `epoch`, then to the sink.
fn packet_for_epoch(mix: &Mix, epoch: u64, sink: &Sink, message: &[u8]) -> bastet_sphinx::Packet {
    bastet_sphinx::build(
        &[mix.hop_for_epoch(epoch, Duration::ZERO), sink.hop()],
        &bastet_sphinx::MailboxId([7; 32]),
        message,
    )
    .unwrap()
}
