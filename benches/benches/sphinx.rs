//! Sphinx build and process against the X25519 bound.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench harness code

use std::hint::black_box;
use std::time::Duration;

use bastet_benches::report_ratios;
use bastet_sphinx::{Hop, MailboxId, NodeId, Prepared, SphinxPublicKey, SphinxSecretKey, build};
use criterion::{Criterion, criterion_group};

fn route(n: u8) -> (Vec<Hop>, Vec<SphinxSecretKey>) {
    (1..=n)
        .map(|i| {
            let sk = SphinxSecretKey::from([i; 32]);
            let hop = Hop {
                node: NodeId::from_identity_key(&[i; 32]),
                sphinx_key: SphinxPublicKey::from(&sk),
                delay: Duration::from_millis(10),
            };
            (hop, sk)
        })
        .unzip()
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("sphinx");
    let a = SphinxSecretKey::from([1; 32]);
    let b = SphinxPublicKey::from(&SphinxSecretKey::from([2; 32]));
    g.bench_function("x25519_dh", |bench| {
        bench.iter(|| black_box(a.diffie_hellman(black_box(&b))))
    });
    let mailbox = MailboxId([3; 32]);
    let message = vec![0x42u8; 1024];
    for n in [3u8, 4, 5] {
        let (hops, _) = route(n);
        g.bench_function(format!("build_{n}_hops"), |bench| {
            bench.iter(|| build(black_box(&hops), &mailbox, black_box(&message)))
        });
    }
    let (hops, keys) = route(4);
    let packet = build(&hops, &mailbox, &message).expect("build");
    g.bench_function("process_one_hop", |bench| {
        bench.iter(|| {
            let p = Prepared::new(black_box(packet.as_bytes()), &keys[0]).expect("prepare");
            black_box(p.replay_tag());
            black_box(p.process())
        })
    });
    // During a key rotation's grace period a relay tries up to three keys
    // (current, next, previous); the worst case matches the last one.
    let others = [
        SphinxSecretKey::from([0x71; 32]),
        SphinxSecretKey::from([0x72; 32]),
    ];
    let trial = [&others[0], &others[1], &keys[0]];
    g.bench_function("process_one_hop_third_of_three_keys", |bench| {
        bench.iter(|| {
            let (i, p) =
                Prepared::with_keys(black_box(packet.as_bytes()), &trial).expect("prepare");
            black_box(i);
            black_box(p.replay_tag());
            black_box(p.process())
        })
    });
    g.finish();
}

criterion_group!(sphinx, benches);

fn main() {
    sphinx();
    Criterion::default().configure_from_args().final_summary();
    report_ratios(&[
        (
            "process one hop",
            "sphinx/process_one_hop",
            "sphinx/x25519_dh",
            2.0,
        ),
        (
            "process one hop, third of three keys",
            "sphinx/process_one_hop_third_of_three_keys",
            "sphinx/x25519_dh",
            4.0,
        ),
        (
            "build 3 hops",
            "sphinx/build_3_hops",
            "sphinx/x25519_dh",
            6.0,
        ),
        (
            "build 4 hops",
            "sphinx/build_4_hops",
            "sphinx/x25519_dh",
            8.0,
        ),
        (
            "build 5 hops",
            "sphinx/build_5_hops",
            "sphinx/x25519_dh",
            10.0,
        ),
    ]);
}
