//! A call circuit's work per cell and per circuit, each against the bound
//! of the primitives it cannot avoid, measured in the same run:
//!
//! - a relay that is not the rendezvous removes (or adds) one ChaCha20
//!   layer of a 511-byte body: bound, ChaCha20 over 511 bytes;
//! - the rendezvous opens the cell from one circuit and seals it for the
//!   other: bound, two ChaCha20-Poly1305 operations over 495 bytes;
//! - an endpoint wraps a cell for a three-hop circuit (one AEAD, two
//!   ChaCha20 layers) and unwraps one: bound, one AEAD and two ChaCha20;
//! - a relay processes a circuit's setup packet (one Sphinx layer and the
//!   hop keys): bound, one Sphinx layer (`Prepared::with_keys` and
//!   `process`, what a mixnode does per packet).
//!
//! No public-key operation per cell: the per-cell figures are
//! microseconds, against the 10 to 60 ms between a call's cells.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench harness code

use std::hint::black_box;
use std::time::Duration;

use bastet_benches::report_sums;
use bastet_circuit::{
    BODY_LEN, CircuitHop, Cookie, EndpointOnion, HopKeys, PAYLOAD_LEN, RelayLayer, RendezvousEnd,
    SEALED_LEN, Setup, build_setup, process_setup, splice,
};
use bastet_link::CertPin;
use bastet_sphinx::{NodeId, Prepared, Processed, SphinxPublicKey, SphinxSecretKey};
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce};
use criterion::{BatchSize, Criterion, criterion_group};

fn hops(n: u8) -> (Vec<CircuitHop>, Vec<SphinxSecretKey>) {
    (1..=n)
        .map(|i| {
            let secret = SphinxSecretKey::from([i; 32]);
            let hop = CircuitHop {
                node: NodeId::from_identity_key(&[i; 32]),
                sphinx_key: SphinxPublicKey::from(&secret),
                addr: "127.0.0.1:9".into(),
                pin: CertPin([i; 32]),
            };
            (hop, secret)
        })
        .unzip()
}

/// The endpoint's onion and every relay's keys for a three-hop circuit.
fn circuit() -> (EndpointOnion, Vec<HopKeys>) {
    let (route, secrets) = hops(3);
    let (mut packet, onion) = build_setup(&route, &Cookie([5; 32])).unwrap();
    let mut keys = Vec::new();
    for s in &secrets {
        let prepared = Prepared::new(packet.as_bytes(), s).unwrap();
        keys.push(HopKeys::derive(&prepared.hop_secret()));
        if let Processed::Forward { packet: next, .. } = prepared.process().unwrap() {
            packet = next;
        }
    }
    (onion, keys)
}

fn chacha20(len: usize) -> impl FnMut() -> Vec<u8> {
    use chacha20::ChaCha20;
    use chacha20::cipher::{KeyIvInit, StreamCipher};
    let data = vec![3u8; len];
    move || {
        let mut body = data.clone();
        ChaCha20::new(&[1u8; 32].into(), &[0u8; 12].into()).apply_keystream(&mut body);
        body
    }
}

fn aead(len: usize) -> impl FnMut() -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(&[1u8; 32].into());
    let data = vec![7u8; len];
    move || {
        let mut body = data.clone();
        cipher
            .encrypt_in_place(&Nonce::default(), &[], &mut body)
            .unwrap();
        body
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit");
    g.measurement_time(Duration::from_secs(3));

    let mut bound = chacha20(BODY_LEN);
    g.bench_function("bound_chacha20_body", |b| b.iter(|| black_box(bound())));
    let mut bound = aead(SEALED_LEN);
    g.bench_function("bound_aead_body", |b| b.iter(|| black_box(bound())));

    let (_, mut keys) = circuit();
    let (mut up, _) = RelayLayer::new(keys.remove(0)).split();
    let mut body = [9u8; BODY_LEN];
    g.bench_function("relay_layer", |b| {
        b.iter(|| {
            up.apply(&mut body).unwrap();
            black_box(&body);
        })
    });

    // The splice: cells from a's circuit, sealed by a's endpoint, opened
    // and sealed again at the rendezvous (a fresh pair per batch, the
    // counters in step).
    g.bench_function("rendezvous_splice", |b| {
        b.iter_batched(
            || {
                let (a, mut a_keys) = circuit();
                let (_, mut b_keys) = circuit();
                let (mut send, _) = a.split();
                let (opener, _) = RendezvousEnd::new(a_keys.pop().unwrap()).split();
                let (_, sealer) = RendezvousEnd::new(b_keys.pop().unwrap()).split();
                // The rendezvous's layer only: the endpoint's outer layers
                // are removed by the relays before it.
                let mut only_last = send_to_rendezvous(&mut send, a_keys);
                (opener, sealer, only_last.pop().unwrap())
            },
            |(mut opener, mut sealer, body)| {
                black_box(splice(&mut opener, &mut sealer, &body).unwrap())
            },
            BatchSize::SmallInput,
        )
    });

    let payload = [1u8; PAYLOAD_LEN];
    let (onion, _) = circuit();
    let (mut send, _) = onion.split();
    g.bench_function("endpoint_wrap", |b| {
        b.iter(|| black_box(send.wrap(&payload).unwrap()))
    });

    let (route, secrets) = hops(3);
    let (packet, _) = build_setup(&route, &Cookie([6; 32])).unwrap();
    g.bench_function("relay_setup", |b| {
        b.iter(|| {
            let prepared = Prepared::with_keys(packet.as_bytes(), &[&secrets[0]])
                .unwrap()
                .1;
            black_box(matches!(
                process_setup(prepared).unwrap(),
                Setup::Extend { .. }
            ))
        })
    });
    g.bench_function("bound_sphinx_layer", |b| {
        b.iter(|| {
            let prepared = Prepared::with_keys(packet.as_bytes(), &[&secrets[0]])
                .unwrap()
                .1;
            black_box(prepared.process().unwrap())
        })
    });
    g.finish();
}

/// One cell through the relays before the rendezvous: what reaches it.
fn send_to_rendezvous(
    send: &mut bastet_circuit::OnionSender,
    earlier: Vec<HopKeys>,
) -> Vec<[u8; BODY_LEN]> {
    let mut body = send.wrap(&[2u8; PAYLOAD_LEN]).unwrap();
    for keys in earlier {
        let (mut up, _) = RelayLayer::new(keys).split();
        up.apply(&mut body).unwrap();
    }
    vec![body]
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report_sums(&[
        (
            "relay layer per cell",
            "circuit/relay_layer",
            &[("circuit/bound_chacha20_body", 1.0)],
        ),
        (
            "rendezvous splice per cell",
            "circuit/rendezvous_splice",
            &[("circuit/bound_aead_body", 2.0)],
        ),
        (
            "endpoint wrap per cell (3 hops)",
            "circuit/endpoint_wrap",
            &[
                ("circuit/bound_aead_body", 1.0),
                ("circuit/bound_chacha20_body", 2.0),
            ],
        ),
        (
            "relay setup per circuit",
            "circuit/relay_setup",
            &[("circuit/bound_sphinx_layer", 1.0)],
        ),
    ]);
}
