//! The client's cost per packet with its ack: a 4-hop packet whose final
//! payload carries an ack SURB built over another 4-hop route, against the
//! bare Sphinx build and the X25519 bound, in the same run; and the daemon's
//! whole per-tick cost (two policy route draws, reliability-weighted, the
//! delays, the SURB and the packet), and its drop and loop cover.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench harness code

use std::hint::black_box;
use std::time::Duration;

use bastet_benches::report_ratios;
use bastet_client::packets::{RouteChoice, drop_packet, fragment_packet, loop_packet};
use bastet_client::{Address, ClientKeys, NodeScores, RoutePolicy, TrafficParams};
use bastet_directory::{Descriptor, Role, VerifiedConsensus};
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

/// A consensus of `mixes` mixnodes in distinct jurisdictions and operators
/// (dealt into three layers) and two mailbox servers, with real Sphinx keys.
fn consensus(mixes: u8) -> VerifiedConsensus {
    let codes = ["DE", "CH", "IS", "NL", "SE", "FR", "AT", "BE", "CZ"];
    let node = |i: u8, role: Role| Descriptor {
        identity_key: [i; 32],
        epoch: 1,
        sphinx_key: SphinxPublicKey::from(&SphinxSecretKey::from([i; 32])).to_bytes(),
        tls_pin: [3; 32],
        addr: format!("127.0.0.1:{}", 9000 + u16::from(i)),
        api_addr: (role == Role::Mailbox).then(|| format!("127.0.0.1:{}", 9500 + u16::from(i))),
        circuit_addr: None,
        role,
        jurisdiction: codes[usize::from(i) % codes.len()].into(),
        operator: format!("op{i}"),
    };
    let mut nodes: Vec<Descriptor> = (1..=mixes).map(|i| node(i, Role::Mix)).collect();
    nodes.push(node(100, Role::Mailbox));
    nodes.push(node(101, Role::Mailbox));
    VerifiedConsensus::assume_verified(1, 0, u64::MAX, nodes, 1)
}

fn client_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("traffic");
    let consensus = consensus(9);
    let policy = RoutePolicy::default();
    let params = TrafficParams::balanced();
    let scores = NodeScores::new();
    let weigher = scores.weigher(0);
    let choice = RouteChoice {
        consensus: &consensus,
        policy: &policy,
        params: &params,
        weight: Some(&weigher),
    };
    let rng = &mut rand::rng();
    let keys = ClientKeys::generate(rng);
    let servers: Vec<NodeId> = consensus.mailboxes().map(|d| d.node_id()).collect();
    let to = Address {
        identity_key: [7; 32],
        encryption_key: [8; 32],
        mailbox_server: servers[1],
        mailbox: MailboxId([9; 32]),
    };
    let envelope = vec![0x42u8; 3 * bastet_sphinx::FRAGMENT_CAPACITY];
    let fragment = fragment(&envelope, rng).unwrap()[0].to_bytes();
    g.bench_function("route_draw_weighted", |bench| {
        bench.iter(|| {
            black_box(
                choice
                    .route(black_box(&servers[1]), &mut rand::rng())
                    .unwrap(),
            )
        })
    });
    g.bench_function("client_fragment_packet", |bench| {
        bench.iter(|| {
            black_box(
                fragment_packet(
                    &choice,
                    &keys,
                    &to,
                    &servers[0],
                    &fragment,
                    &mut rand::rng(),
                )
                .unwrap(),
            )
        })
    });
    g.bench_function("client_drop_cover", |bench| {
        bench.iter(|| black_box(drop_packet(&choice, &servers[0], &mut rand::rng()).unwrap()))
    });
    g.bench_function("client_loop_cover", |bench| {
        bench
            .iter(|| black_box(loop_packet(&choice, &keys, &servers[0], &mut rand::rng()).unwrap()))
    });
    g.finish();
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

criterion_group!(traffic, benches, client_benches);

fn main() {
    traffic();
    Criterion::default().configure_from_args().final_summary();
    report_ratios(&[
        (
            "client per packet (2 route draws + SURB + packet) vs raw sphinx-packet build",
            "traffic/client_fragment_packet",
            "traffic/build_4_hops",
            1.0,
        ),
        (
            "client per packet vs packet + ack SURB without route draws",
            "traffic/client_fragment_packet",
            "traffic/packet_with_ack_4_hops",
            1.0,
        ),
        (
            "drop cover vs raw build",
            "traffic/client_drop_cover",
            "traffic/build_4_hops",
            1.0,
        ),
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
