//! The end-to-end layers' cost per message, each against the bound of the
//! primitives it cannot avoid, measured in the same run: the content layer
//! (hybrid X25519 + ML-KEM-768, Ed25519) sealed and opened for a 1 KiB
//! text, the pre-shared-key layer, and the sealed envelope.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench harness code

use std::hint::black_box;

use bastet_benches::report_ratios;
use bastet_client::identity::Head;
use bastet_client::layers::content::{self, Recipient};
use bastet_client::layers::{envelope, psk};
use bastet_client::{ClientKeys, Content, MessageId};
use criterion::{Criterion, criterion_group};
use ed25519_dalek::{Signer, SigningKey};
use ml_kem::{Decapsulate, Encapsulate, KeyExport};
use x25519_dalek::{PublicKey, StaticSecret};

fn layer_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("layers");
    let rng = &mut rand::rng();
    let alice = ClientKeys::generate(rng);
    let bob = ClientKeys::generate(rng);
    let to_bob = Recipient::of(&bob);
    let head = Head {
        seq: 0,
        hash: [2; 32],
    };
    let text = Content::Text("x".repeat(1024));

    // Bounds: what the content layer must do whatever its code.
    let signer = SigningKey::from_bytes(&[5; 32]);
    let x_peer = PublicKey::from(&StaticSecret::from([6; 32]));
    let (dk, ek) = {
        use ml_kem::Kem;
        ml_kem::MlKem768::generate_keypair_from_rng(rng)
    };
    let ek_bytes = ek.to_bytes();
    // About a 1 KiB text's plaintext with its fields and signature (40
    // bytes more since the fields carry the sender's chain head).
    let message = vec![7u8; 1024 + 200];
    g.bench_function("bound_seal_primitives", |bench| {
        bench.iter(|| {
            let e = StaticSecret::from([8; 32]);
            let e_pub = PublicKey::from(&e);
            let shared = e.diffie_hellman(&x_peer);
            let ek = ml_kem::ml_kem_768::EncapsulationKey::new(&ek_bytes).unwrap();
            let (ct, k) = ek.encapsulate_with_rng(&mut rand::rng());
            let sig = signer.sign(black_box(&message));
            black_box((e_pub, shared, ct, k, sig))
        })
    });
    let (ct, _) = ek.encapsulate_with_rng(rng);
    let verifier = signer.verifying_key();
    let sig = signer.sign(&message);
    let x_secret = StaticSecret::from([9; 32]);
    g.bench_function("bound_open_primitives", |bench| {
        bench.iter(|| {
            let shared = x_secret.diffie_hellman(&x_peer);
            let k = dk.decapsulate(black_box(&ct));
            let ok = verifier.verify_strict(black_box(&message), &sig).is_ok();
            black_box((shared, k, ok))
        })
    });
    g.bench_function("x25519_keygen_dh", |bench| {
        bench.iter(|| {
            let e = StaticSecret::from(black_box([8; 32]));
            black_box((PublicKey::from(&e), e.diffie_hellman(&x_peer)))
        })
    });

    g.bench_function("content_seal_1k", |bench| {
        bench.iter(|| {
            black_box(
                content::seal(
                    &alice,
                    &head,
                    &to_bob,
                    MessageId([1; 16]),
                    &text,
                    1,
                    &mut rand::rng(),
                )
                .unwrap(),
            )
        })
    });
    let sealed = content::seal(
        &alice,
        &head,
        &to_bob,
        MessageId([1; 16]),
        &text,
        1,
        &mut rand::rng(),
    )
    .unwrap();
    g.bench_function("content_open_1k", |bench| {
        bench.iter(|| black_box(content::open(&bob, black_box(&sealed)).unwrap()))
    });

    let key = [3u8; psk::PSK_LEN];
    let (a, b) = (alice.identity_public(), bob.identity_public());
    g.bench_function("psk_seal_2k", |bench| {
        bench.iter(|| {
            black_box(psk::seal(
                &key,
                &a,
                &b,
                black_box(&sealed),
                &mut rand::rng(),
            ))
        })
    });

    let inner = envelope::Inner {
        sender_ratchet_key: [4; 32],
        message_type: 1,
        message: vec![0; 1500],
    };
    let to = bob.encryption_public();
    g.bench_function("envelope_seal_1500", |bench| {
        bench.iter(|| black_box(envelope::seal(&to, black_box(&inner), &mut rand::rng()).unwrap()))
    });
    let env = envelope::seal(&to, &inner, &mut rand::rng()).unwrap();
    g.bench_function("envelope_open_1500", |bench| {
        bench.iter(|| black_box(envelope::open(&bob, black_box(&env)).unwrap()))
    });
    g.finish();
}

criterion_group!(layers, layer_benches);

fn main() {
    layers();
    Criterion::default().configure_from_args().final_summary();
    report_ratios(&[
        (
            "content layer seal (1 KiB text)",
            "layers/content_seal_1k",
            "layers/bound_seal_primitives",
            1.0,
        ),
        (
            "content layer open (1 KiB text)",
            "layers/content_open_1k",
            "layers/bound_open_primitives",
            1.0,
        ),
        (
            "sealed envelope seal",
            "layers/envelope_seal_1500",
            "layers/x25519_keygen_dh",
            1.0,
        ),
        (
            "sealed envelope open",
            "layers/envelope_open_1500",
            "layers/x25519_keygen_dh",
            1.0,
        ),
    ]);
}
