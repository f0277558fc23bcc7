//! Anonymity measured on real processes on loopback (binaries from
//! `target/<profile>/`: build them with `cargo build --workspace --bins`),
//! as `bastet-testnet anonymity` does: with the trace test hooks on, client
//! pairs exchange messages, and `bastet-anonymity` analyses what a global
//! passive adversary saw against the ground truth the hooks recorded.
//!
//! Only directions are asserted, never figures a busy machine could move:
//! with cover traffic and mix delays off, the timing-correlation attack
//! names the sender of nearly every message and the sender anonymity set
//! is a single client; with the default preset (`balanced`) the sets are
//! larger and the attack is right less often. If cover or mixing stopped
//! working, the second run would look like the first and the test fails.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bastet_testnet::{AnonymityOptions, AnonymityReport, NetworkOptions, Traffic, run_anonymity};

/// Three sender→recipient pairs.
const CLIENTS: usize = 6;
/// Each run's workload: about 35 messages per sender.
const WORKLOAD: Duration = Duration::from_secs(25);
/// Messages per second per sender: below the preset's payload rate, so
/// that most payload ticks of a sender still carry drop cover.
const RATE: f64 = 0.5;
/// Fewer analysed messages than this and the run says too little.
const MIN_ANALYSED: usize = 20;

async fn measure(traffic: Traffic) -> AnonymityReport {
    let options = AnonymityOptions {
        clients: CLIENTS,
        duration: WORKLOAD,
        message_rate: RATE,
        traffic,
        ..AnonymityOptions::default()
    };
    let report = run_anonymity(NetworkOptions::default(), &options)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", options.traffic.name()));
    println!("{}", report.to_human());
    let a = &report.analysis;
    assert!(
        a.messages_analysed >= MIN_ANALYSED,
        "{}: only {} messages analysed",
        report.traffic,
        a.messages_analysed
    );
    // The hooks joined: nearly every real packet sent was followed to its
    // mailbox server.
    let c = &report.capture;
    assert!(
        c.real_packets_traced * 10 >= c.real_packets_sent * 9,
        "{}: {} of {} real packets traced",
        report.traffic,
        c.real_packets_traced,
        c.real_packets_sent
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cover_and_mixing_raise_entropy_and_defeat_the_timing_attack() {
    let bare = measure(Traffic::NoCover).await;
    let mixed = measure(Traffic::Preset("balanced".into())).await;
    let (b, m) = (&bare.analysis, &mixed.analysis);

    // Without cover or delays: the adversary follows each packet.
    assert!(
        b.attack.accuracy >= 0.9 && b.attack.accuracy > 1.5 * b.attack.baseline,
        "no cover: the attack was right only {:.2} of the time (baseline {:.2})",
        b.attack.accuracy,
        b.attack.baseline
    );
    assert!(
        b.sender_entropy_bits.mean < 0.3,
        "no cover: mean sender entropy {:.2} bits; following packets without delays should leave ~0",
        b.sender_entropy_bits.mean
    );

    // With the default preset: more candidates per message, fewer right
    // guesses.
    assert!(
        m.sender_entropy_bits.mean > b.sender_entropy_bits.mean + 0.5,
        "balanced: mean sender entropy {:.2} bits, without cover {:.2}",
        m.sender_entropy_bits.mean,
        b.sender_entropy_bits.mean
    );
    assert!(
        m.sender_set.mean > 1.5,
        "balanced: effective sender set {:.2}",
        m.sender_set.mean
    );
    assert!(
        m.attack.accuracy < b.attack.accuracy - 0.1,
        "balanced: the attack was right {:.2} of the time, without cover {:.2}",
        m.attack.accuracy,
        b.attack.accuracy
    );
}
