//! A call between two clients on real processes on loopback (binaries from
//! `target/<profile>/`: build them with `cargo build --workspace --bins`),
//! as `bastet-testnet call-demo` runs it: offer and answer through the
//! mixnet, two circuits spliced at a rendezvous mixnode, media from files.
//!
//! Asserted: without loss, what each end heard is sample for sample a local
//! Opus encode and decode of what the other said; every call cell every
//! relay logged is 512 bytes; a Kolmogorov–Smirnov test at α = 0.01 does
//! not tell the rendezvous's cell timing in speech from that in silence;
//! with 10 % of cells corrupted at the rendezvous the call runs to its end,
//! the loss is counted and frames are recovered or concealed. Latency is
//! printed, never asserted (it is measured in call-demo runs; see
//! docs/calls.md).

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bastet_testnet::{CallDemoOptions, CallDemoReport, Network, NetworkOptions, run_call_demo};

async fn call(loss: f64) -> CallDemoReport {
    let options = CallDemoOptions {
        profile: "normal".into(),
        duration: Duration::from_secs(6),
        loss,
        ..CallDemoOptions::default()
    };
    let mut network = Network::start(NetworkOptions {
        cell_loss: loss,
        cell_log: true,
        ..NetworkOptions::default()
    })
    .await
    .unwrap();
    let report = run_call_demo(&network, &options).await;
    network.stop();
    let report = report.unwrap_or_else(|e| {
        let dir = network.keep_files();
        panic!(
            "call-demo (loss {loss}) failed: {e}; files kept in {}",
            dir.display()
        )
    });
    println!("{}", report.to_human());
    report
}

fn count(v: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_u64()
        .unwrap_or_else(|| panic!("no {path:?} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_carries_audio_unaltered_in_constant_cells_and_survives_loss() {
    // No loss: the path alters nothing.
    let report = call(0.0).await;
    for (what, l) in [
        ("alice → bob", &report.audio_to_callee),
        ("bob → alice", &report.audio_to_caller),
    ] {
        let l = l.as_ref().unwrap();
        assert_eq!(l.not_applicable, None, "{what}: frames were late");
        assert!(
            l.compared >= 250,
            "{what}: only {} frames heard",
            l.compared
        );
        assert_eq!(l.identical, l.compared, "{what}: the path altered audio");
    }
    for side in [&report.caller, &report.callee] {
        assert_eq!(count(side, &["received", "cells", "lost"]), 0);
        assert_eq!(count(side, &["received", "audio", "concealed"]), 0);
    }
    let wire = report.wire.as_ref().expect("the relays logged cells");
    assert_eq!(
        wire.cell_sizes,
        [512],
        "call cells of other sizes on the wire"
    );
    assert!(
        wire.speech_cells > 50 && wire.silence_cells > 20,
        "{wire:?}"
    );
    assert!(
        !wire.ks_rejects,
        "speech and silence told apart by timing: D = {} > {}",
        wire.ks_d, wire.ks_critical
    );
    assert!(report.passed());

    // 10 % of cells corrupted at the rendezvous: dropped there, the call
    // goes on to its end, and what was lost is counted and covered.
    let report = call(0.1).await;
    for side in [&report.caller, &report.callee] {
        let cells = &side["received"]["cells"];
        let ratio = cells["loss_ratio"].as_f64().unwrap();
        assert!((0.04..=0.18).contains(&ratio), "loss ratio {ratio}");
        let audio = &side["received"]["audio"];
        let covered = count(audio, &["concealed"]) + count(audio, &["redundant_recovered"]);
        assert!(covered > 0, "no frame recovered or concealed: {audio}");
        assert!(count(audio, &["played"]) >= 250, "{audio}");
        assert_ne!(side["ended"], serde_json::json!({"circuit": "overload"}));
    }
    assert_eq!(report.wire.as_ref().unwrap().cell_sizes, [512]);
}
