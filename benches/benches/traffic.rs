//! The client's cost per packet with its ack: a 4-hop packet whose final
//! payload carries an ack SURB built over another 4-hop route, against the
//! bare Sphinx build and the X25519 bound, in the same run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench harness code

use std::hint::black_box;
use std::time::Duration;

use bastet_benches::report_ratios;
use bastet_sphinx::{
    AckId, AckRequest, FinalPayload, Hop, MAX_MESSAGE_LEN, MailboxId, NodeId, SphinxPublicKey,
    SphinxSecretKey, Surb, build, fragment,
};
use criterion::{Criterion, criterion_group};

fn route(first: u8, n: u8) -> Vec<Hop> {
    (first..first + n)
        .map(|i| Hop {
            node: NodeId::from_identity_key(&[i; 32]),
            sphinx_key: SphinxPublicKey::from(&SphinxSecretKey::from([i; 32])),
            delay: Duration::from_millis(10),
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("traffic");
    let a = SphinxSecretKey::from([1; 32]);
    let b = SphinxPublicKey::from(&SphinxSecretKey::from([2; 32]));
    g.bench_function("x25519_dh", |bench| {
        bench.iter(|| black_box(a.diffie_hellman(black_box(&b))))
    });

    let forward = route(1, 4);
    let back = route(11, 4);
    let recipient = MailboxId([3; 32]);
    let sender = MailboxId([4; 32]);
    // One full fragment of a larger envelope: the common case.
    let envelope = vec![0x42u8; 3 * bastet_sphinx::FRAGMENT_CAPACITY];
    let fragments = fragment(&envelope, &mut rand::rng()).unwrap();
    let full_message = vec![0x42u8; MAX_MESSAGE_LEN];

    g.bench_function("build_4_hops", |bench| {
        bench.iter(|| build(black_box(&forward), &recipient, black_box(&full_message)))
    });
    g.bench_function("surb_4_hops", |bench| {
        bench.iter(|| Surb::build(black_box(&back), &sender))
    });
    g.bench_function("packet_with_ack_4_hops", |bench| {
        bench.iter(|| {
            let (surb, keys) = Surb::build(black_box(&back), &sender).unwrap();
            let payload = FinalPayload::new(
                Some(AckRequest {
                    id: AckId([5; 16]),
                    surb,
                }),
                black_box(&fragments[0]),
            );
            let packet = build(black_box(&forward), &recipient, &payload.to_bytes()).unwrap();
            black_box((packet, keys))
        })
    });
    g.finish();
}

criterion_group!(traffic, benches);

fn main() {
    traffic();
    Criterion::default().configure_from_args().final_summary();
    report_ratios(&[
        (
            "packet + ack SURB, 4 hops each, vs bare build",
            "traffic/packet_with_ack_4_hops",
            "traffic/build_4_hops",
            1.0,
        ),
        (
            "packet + ack SURB, 4 hops each, vs 2 × 2n DH",
            "traffic/packet_with_ack_4_hops",
            "traffic/x25519_dh",
            16.0,
        ),
        (
            "SURB 4 hops vs 2n DH",
            "traffic/surb_4_hops",
            "traffic/x25519_dh",
            8.0,
        ),
        (
            "build 4 hops vs 2n DH",
            "traffic/build_4_hops",
            "traffic/x25519_dh",
            8.0,
        ),
    ]);
}
