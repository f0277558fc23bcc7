//! Sphinx build (bare, and with an ack SURB) and process against the X25519
//! bound measured in the same run.
//!
//! The count of X25519 operations each bound uses is what sphinx-packet
//! 0.8 does, read from its code: building a header derives hop `i`'s
//! shared secret by folding all `i` earlier blinding factors over the hop's
//! key again (`KeyMaterial::derive`), so hop `i` (from 1) costs `i`
//! Diffie-Hellmans and an `n`-hop header `n(n+1)/2`, plus one fixed-base
//! multiplication for the header's group element. Processing a hop costs
//! two: the Diffie-Hellman and the blinding of the group element.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench harness code

use std::hint::black_box;
use std::time::Duration;

use bastet_benches::{SumRow, report_sums};
use bastet_sphinx::{
    AckId, AckRequest, FinalPayload, Hop, MailboxId, NodeId, Prepared, SphinxPublicKey,
    SphinxSecretKey, Surb, build, fragment,
};
use criterion::{Criterion, criterion_group};

const DH: &str = "sphinx/x25519_dh";
const BASE: &str = "sphinx/x25519_base";
const HOPS: [u8; 3] = [3, 4, 5];

fn route(first: u8, n: u8) -> (Vec<Hop>, Vec<SphinxSecretKey>) {
    (first..first + n)
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

/// Diffie-Hellmans sphinx-packet 0.8 makes to build an `n`-hop header.
fn header_dh(n: u8) -> f64 {
    f64::from(n) * f64::from(n + 1) / 2.0
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("sphinx");
    let a = SphinxSecretKey::from([1; 32]);
    let b = SphinxPublicKey::from(&SphinxSecretKey::from([2; 32]));
    g.bench_function("x25519_dh", |bench| {
        bench.iter(|| black_box(a.diffie_hellman(black_box(&b))))
    });
    g.bench_function("x25519_base", |bench| {
        bench.iter(|| black_box(SphinxPublicKey::from(black_box(&a))))
    });
    let mailbox = MailboxId([3; 32]);
    let message = vec![0x42u8; 1024];
    for n in HOPS {
        let (hops, _) = route(1, n);
        g.bench_function(format!("build_{n}_hops"), |bench| {
            bench.iter(|| build(black_box(&hops), &mailbox, black_box(&message)))
        });
    }
    // What the client sends for each fragment: the packet's final payload
    // carries the fragment and an ack SURB over a return route of the same
    // length, as `traffic.rs` builds it.
    let sender = MailboxId([4; 32]);
    let envelope = vec![0x42u8; 3 * bastet_sphinx::FRAGMENT_CAPACITY];
    let fragments = fragment(&envelope, &mut rand::rng()).unwrap();
    for n in HOPS {
        let (forward, _) = route(1, n);
        let (back, _) = route(11, n);
        g.bench_function(format!("build_{n}_hops_with_surb"), |bench| {
            bench.iter(|| {
                let (surb, keys) = Surb::build(black_box(&back), &sender).unwrap();
                let payload = FinalPayload::new(
                    Some(AckRequest {
                        id: AckId([5; 16]),
                        surb,
                    }),
                    black_box(&fragments[0]),
                );
                let packet = build(black_box(&forward), &mailbox, &payload.to_bytes()).unwrap();
                black_box((packet, keys))
            })
        });
    }
    let (hops, keys) = route(1, 4);
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
    let builds: Vec<_> = HOPS
        .iter()
        .flat_map(|n| {
            [
                (
                    format!("build {n} hops"),
                    format!("sphinx/build_{n}_hops"),
                    vec![(DH, header_dh(*n)), (BASE, 1.0)],
                ),
                (
                    format!("build {n} hops with an ack SURB over {n} hops"),
                    format!("sphinx/build_{n}_hops_with_surb"),
                    vec![(DH, 2.0 * header_dh(*n)), (BASE, 2.0)],
                ),
            ]
        })
        .collect();
    let mut rows: Vec<SumRow<'_>> = vec![
        ("process one hop", "sphinx/process_one_hop", &[(DH, 2.0)]),
        (
            "process one hop, third of three keys",
            "sphinx/process_one_hop_third_of_three_keys",
            &[(DH, 4.0)],
        ),
    ];
    rows.extend(
        builds
            .iter()
            .map(|(label, id, terms)| (label.as_str(), id.as_str(), terms.as_slice())),
    );
    report_sums(&rows);
}
