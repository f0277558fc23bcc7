//! The end-to-end layers' cost for a 2 KiB text, each layer fed what the
//! layer inside it produced (the content layer gets the 2,048-byte text,
//! the pre-shared-key layer the content layer's output, and so on), each
//! against the bound of the primitives it cannot avoid, measured in the
//! same run: the content layer (hybrid X25519 + ML-KEM-768, Ed25519,
//! ChaCha20-Poly1305), the pre-shared-key layer (XChaCha20-Poly1305), the
//! ratchet (vodozemac Olm v1: AES-256-CBC and HMAC-SHA-256) and the sealed
//! envelope (X25519, ChaCha20-Poly1305). Then the whole message through
//! the product's `Contacts::seal_message` and `Contacts::open_message`,
//! against the four layers measured here.
//!
//! The product has no entry point for the ratchet alone: it is inline in
//! `Contacts::seal_to` and the private `Contacts::ratchet_decrypt`. The
//! ratchet benches therefore drive vodozemac with the calls and session
//! configuration (`SessionConfig::version_1`) those functions use, and the
//! whole-message benches measure the product's own code around it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench harness code

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use aes::Aes256;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use bastet_benches::{SumRow, report_sums};
use bastet_client::identity::Head;
use bastet_client::layers::content::{self, Recipient};
use bastet_client::layers::{envelope, psk};
use bastet_client::{ClientKeys, Contacts, Content, DataDir, MessageId, Opened};
use bastet_sphinx::NodeId;
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce, XChaCha20Poly1305, XNonce};
use criterion::{BatchSize, Criterion, criterion_group};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use ml_kem::{Decapsulate, Encapsulate, KeyExport};
use sha2::Sha256;
use tempfile::TempDir;
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig};
use x25519_dalek::{PublicKey, StaticSecret};

/// The text every layer carries, in bytes.
const TEXT_LEN: usize = 2048;
/// The content layer's clear header: version, X25519 ephemeral key,
/// ML-KEM-768 ciphertext.
const CONTENT_HEADER: usize = 1 + 32 + 1088;
const AEAD_TAG: usize = 16;
/// The sealed envelope's clear ephemeral key.
const ENVELOPE_KEY: usize = 32;

/// ChaCha20-Poly1305 over `len` bytes: the AEAD in a layer's bound.
fn aead_seal(len: usize) -> impl FnMut() -> Vec<u8> {
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

/// An Olm session pair past its first exchange (Alice's pre-key message
/// answered by Bob), so both sides send normal messages as in a
/// conversation.
fn ratchet_pair() -> (Session, Session) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let one_time_key = *bob.one_time_keys().values().next().unwrap();
    bob.mark_keys_as_published();
    let mut a = alice
        .create_outbound_session(
            SessionConfig::version_1(),
            bob.curve25519_key(),
            one_time_key,
        )
        .unwrap();
    let OlmMessage::PreKey(first) = a.encrypt(b"hello").unwrap() else {
        unreachable!("a new outbound session sends a pre-key message")
    };
    let mut b = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &first)
        .unwrap()
        .session;
    a.decrypt(&b.encrypt(b"hi").unwrap()).unwrap();
    (a, b)
}

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
    let text = Content::Text("x".repeat(TEXT_LEN));

    // The message as each layer sees it, inside out.
    let layer1 = content::seal(&alice, &head, &to_bob, MessageId([1; 16]), &text, 1, rng).unwrap();
    let psk_key = [3u8; psk::PSK_LEN];
    let (a_id, b_id) = (alice.identity_public(), bob.identity_public());
    let layer2 = psk::seal(&psk_key, &a_id, &b_id, &layer1, rng).unwrap();
    let (mut ratchet_a, _) = ratchet_pair();
    let (_, message) = ratchet_a.encrypt(&layer2).unwrap().to_parts();
    let inner = envelope::Inner {
        sender_ratchet_key: [4; 32],
        message_type: 1,
        message,
    };
    let to = bob.encryption_public();
    let layer4 = envelope::seal(&to, &inner, rng).unwrap();
    println!(
        "a {TEXT_LEN}-byte text: content layer {} bytes, pre-shared-key layer {}, ratchet message {}, envelope {}",
        layer1.len(),
        layer2.len(),
        inner.message.len(),
        layer4.len()
    );

    let x_peer = PublicKey::from(&StaticSecret::from([6; 32]));
    let x_secret = StaticSecret::from([9; 32]);

    // Content layer. Bounds: what it must do whatever its code.
    let signer = SigningKey::from_bytes(&[5; 32]);
    let (dk, ek) = {
        use ml_kem::Kem;
        ml_kem::MlKem768::generate_keypair_from_rng(rng)
    };
    let ek_bytes = ek.to_bytes();
    // The plaintext: the text with its fields and signature.
    let plaintext_len = layer1.len() - CONTENT_HEADER - AEAD_TAG;
    let plaintext = vec![7u8; plaintext_len];
    let mut content_aead = aead_seal(plaintext_len);
    g.bench_function("bound_content_seal", |bench| {
        bench.iter(|| {
            let e = StaticSecret::from([8; 32]);
            let e_pub = PublicKey::from(&e);
            let shared = e.diffie_hellman(&x_peer);
            let ek = ml_kem::ml_kem_768::EncapsulationKey::new(&ek_bytes).unwrap();
            let (ct, k) = ek.encapsulate_with_rng(&mut rand::rng());
            let sig = signer.sign(black_box(&plaintext));
            black_box((e_pub, shared, ct, k, sig, content_aead()))
        })
    });
    let (ct, _) = ek.encapsulate_with_rng(rng);
    let verifier = signer.verifying_key();
    let sig = signer.sign(&plaintext);
    let cipher = ChaCha20Poly1305::new(&[1u8; 32].into());
    let sealed_plaintext = aead_seal(plaintext_len)();
    g.bench_function("bound_content_open", |bench| {
        bench.iter(|| {
            let shared = x_secret.diffie_hellman(&x_peer);
            let k = dk.decapsulate(black_box(&ct));
            let mut body = sealed_plaintext.clone();
            cipher
                .decrypt_in_place(&Nonce::default(), &[], &mut body)
                .unwrap();
            let ok = verifier.verify_strict(black_box(&body), &sig).is_ok();
            black_box((shared, k, ok))
        })
    });
    g.bench_function("content_seal_2k", |bench| {
        bench.iter(|| {
            black_box(
                content::seal(
                    &alice,
                    &head,
                    &to_bob,
                    MessageId([1; 16]),
                    black_box(&text),
                    1,
                    &mut rand::rng(),
                )
                .unwrap(),
            )
        })
    });
    g.bench_function("content_open_2k", |bench| {
        bench.iter(|| black_box(content::open(&bob, black_box(&layer1)).unwrap()))
    });

    // Pre-shared-key layer: XChaCha20-Poly1305 over the content layer.
    let xcipher = XChaCha20Poly1305::new(&[3u8; 32].into());
    g.bench_function("bound_psk_seal", |bench| {
        bench.iter(|| {
            let mut body = layer1.clone();
            xcipher
                .encrypt_in_place(&XNonce::default(), &[], &mut body)
                .unwrap();
            black_box(body)
        })
    });
    let mut xsealed = layer1.clone();
    xcipher
        .encrypt_in_place(&XNonce::default(), &[], &mut xsealed)
        .unwrap();
    g.bench_function("bound_psk_open", |bench| {
        bench.iter(|| {
            let mut body = xsealed.clone();
            xcipher
                .decrypt_in_place(&XNonce::default(), &[], &mut body)
                .unwrap();
            black_box(body)
        })
    });
    g.bench_function("psk_seal_2k", |bench| {
        bench.iter(|| {
            black_box(psk::seal(
                &psk_key,
                &a_id,
                &b_id,
                black_box(&layer1),
                &mut rand::rng(),
            ))
        })
    });
    g.bench_function("psk_open_2k", |bench| {
        bench.iter(|| {
            black_box(psk::open(
                &psk_key,
                &a_id,
                &b_id,
                black_box(&layer2),
                "alice",
            ))
        })
    });

    // The ratchet steps' X25519, measured next to the ratchet benches.
    g.bench_function("x25519_dh", |bench| {
        bench.iter(|| black_box(x_secret.diffie_hellman(black_box(&x_peer))))
    });
    g.bench_function("x25519_base", |bench| {
        bench.iter(|| black_box(PublicKey::from(black_box(&x_secret))))
    });

    // Ratchet: Olm v1 encrypts with AES-256-CBC and authenticates the
    // ciphertext with HMAC-SHA-256, whatever the implementation.
    let (aes_key, iv, mac_key) = ([1u8; 32], [2u8; 16], [3u8; 32]);
    let cbc_seal = |plaintext: &[u8]| {
        let ct = cbc::Encryptor::<Aes256>::new(&aes_key.into(), &iv.into())
            .encrypt_padded_vec::<Pkcs7>(plaintext);
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&mac_key).unwrap();
        mac.update(&ct);
        (ct, mac.finalize().into_bytes())
    };
    g.bench_function("bound_ratchet_encrypt", |bench| {
        bench.iter(|| black_box(cbc_seal(black_box(&layer2))))
    });
    let (cbc_ct, cbc_tag) = cbc_seal(&layer2);
    g.bench_function("bound_ratchet_decrypt", |bench| {
        bench.iter(|| {
            let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&mac_key).unwrap();
            mac.update(black_box(&cbc_ct));
            mac.verify_slice(&cbc_tag).unwrap();
            black_box(
                cbc::Decryptor::<Aes256>::new(&aes_key.into(), &iv.into())
                    .decrypt_padded_vec::<Pkcs7>(&cbc_ct)
                    .unwrap(),
            )
        })
    });
    // Each bench its own pair: messages encrypted and never decrypted
    // would put the next bench's chain past vodozemac's gap limit.
    let (mut a, _) = ratchet_pair();
    g.bench_function("ratchet_encrypt_2k", |bench| {
        bench.iter(|| black_box(a.encrypt(black_box(&layer2)).unwrap()))
    });
    let (mut a, mut b) = ratchet_pair();
    g.bench_function("ratchet_decrypt_2k", |bench| {
        bench.iter_batched(
            || a.encrypt(&layer2).unwrap(),
            |m| black_box(b.decrypt(&m).unwrap()),
            BatchSize::SmallInput,
        )
    });
    // A conversation: each change of direction is a ratchet step.
    let (mut a, mut b) = ratchet_pair();
    g.bench_function("ratchet_round_trip_2k", |bench| {
        bench.iter(|| {
            let m = a.encrypt(black_box(&layer2)).unwrap();
            black_box(b.decrypt(&m).unwrap());
            let r = b.encrypt(black_box(&layer2)).unwrap();
            black_box(a.decrypt(&r).unwrap())
        })
    });

    // Sealed envelope: one ephemeral X25519 key and DH, ChaCha20-Poly1305
    // over the envelope's inner fields and the ratchet message.
    let envelope_body = layer4.len() - ENVELOPE_KEY - AEAD_TAG;
    let mut envelope_aead = aead_seal(envelope_body);
    g.bench_function("bound_envelope_seal", |bench| {
        bench.iter(|| {
            let e = StaticSecret::from(black_box([8; 32]));
            black_box((
                PublicKey::from(&e),
                e.diffie_hellman(&x_peer),
                envelope_aead(),
            ))
        })
    });
    let sealed_body = aead_seal(envelope_body)();
    g.bench_function("bound_envelope_open", |bench| {
        bench.iter(|| {
            let shared = x_secret.diffie_hellman(&x_peer);
            let mut body = sealed_body.clone();
            cipher
                .decrypt_in_place(&Nonce::default(), &[], &mut body)
                .unwrap();
            black_box((shared, body))
        })
    });
    g.bench_function("envelope_seal_2k", |bench| {
        bench.iter(|| black_box(envelope::seal(&to, black_box(&inner), &mut rand::rng()).unwrap()))
    });
    g.bench_function("envelope_open_2k", |bench| {
        bench.iter(|| black_box(envelope::open(&bob, black_box(&layer4)).unwrap()))
    });
    g.finish();
}

/// The mailbox server every card here names.
const SERVER: NodeId = NodeId([7; 32]);

/// One device with its data dir (under the target dir, on disk) and its
/// contact book.
struct Device {
    _tmp: TempDir,
    keys: ClientKeys,
    book: Contacts,
}

impl Device {
    fn new(base: &Path) -> Device {
        let tmp = tempfile::Builder::new()
            .prefix("bastet-bench-client-")
            .tempdir_in(base)
            .unwrap();
        let dir = DataDir::new(tmp.path().join("client"));
        dir.create().unwrap();
        let keys = ClientKeys::generate(&mut rand::rng());
        let book = Contacts::load(&dir, &keys, SERVER).unwrap();
        Device {
            _tmp: tmp,
            keys,
            book,
        }
    }

    /// Alice and Bob, each the other's contact, past their first exchange
    /// (one message each way), so both ratchets are in a conversation.
    fn pair(base: &Path, text: &Content) -> (Device, Device) {
        let mut alice = Device::new(base);
        let mut bob = Device::new(base);
        let card = alice.card(None);
        bob.book.import_card(&bob.keys, &card, "alice", 2).unwrap();
        let reply = bob.card(Some("alice"));
        alice
            .book
            .import_card(&alice.keys, &reply, "bob", 3)
            .unwrap();
        let first = alice.seal("bob", text);
        bob.open(&first);
        let answer = bob.seal("alice", text);
        alice.open(&answer);
        (alice, bob)
    }

    fn card(&mut self, for_contact: Option<&str>) -> String {
        self.book
            .export_card(&self.keys, "nick", for_contact, 1)
            .unwrap()
            .to_text(&self.keys)
            .unwrap()
    }

    fn seal(&mut self, to: &str, text: &Content) -> Vec<u8> {
        let mut sealed = self
            .book
            .seal_message(&self.keys, to, text, 1000, &mut rand::rng())
            .unwrap();
        sealed.remove(0).payload
    }

    fn open(&mut self, payload: &[u8]) {
        let opened = self.book.open_message(&self.keys, payload).unwrap();
        assert!(
            matches!(&opened, Opened::Message(m) if m.verified && m.rejected.is_none()),
            "not a message: {opened:?}"
        );
    }
}

fn message_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("layers");
    // Each seal saves the ratchet state with a synced write: milliseconds.
    g.sample_size(10);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let text = Content::Text("x".repeat(TEXT_LEN));
    // Each bench its own pair: the seal bench's messages are never opened,
    // and a gap of more than 2,000 is refused by the ratchet.
    let (mut alice, _bob) = Device::pair(base, &text);
    g.bench_function("message_seal_2k", |bench| {
        bench.iter(|| black_box(alice.seal("bob", black_box(&text))))
    });
    let (mut alice, mut bob) = Device::pair(base, &text);
    g.bench_function("message_open_2k", |bench| {
        bench.iter_custom(|iters| {
            let payloads: Vec<Vec<u8>> = (0..iters).map(|_| alice.seal("bob", &text)).collect();
            let start = Instant::now();
            for p in &payloads {
                bob.open(black_box(p));
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(layers, layer_benches, message_benches);

fn main() {
    layers();
    Criterion::default().configure_from_args().final_summary();
    let rows: &[SumRow<'_>] = &[
        (
            "content layer seal (2 KiB text)",
            "layers/content_seal_2k",
            &[("layers/bound_content_seal", 1.0)],
        ),
        (
            "content layer open (2 KiB text)",
            "layers/content_open_2k",
            &[("layers/bound_content_open", 1.0)],
        ),
        (
            "pre-shared-key layer seal",
            "layers/psk_seal_2k",
            &[("layers/bound_psk_seal", 1.0)],
        ),
        (
            "pre-shared-key layer open",
            "layers/psk_open_2k",
            &[("layers/bound_psk_open", 1.0)],
        ),
        (
            "ratchet encrypt, same direction",
            "layers/ratchet_encrypt_2k",
            &[("layers/bound_ratchet_encrypt", 1.0)],
        ),
        (
            "ratchet encrypt, with the ratchet public key vodozemac derives per message",
            "layers/ratchet_encrypt_2k",
            &[
                ("layers/bound_ratchet_encrypt", 1.0),
                ("layers/x25519_base", 1.0),
            ],
        ),
        (
            "ratchet decrypt, same direction",
            "layers/ratchet_decrypt_2k",
            &[("layers/bound_ratchet_decrypt", 1.0)],
        ),
        (
            "ratchet round trip (2 ratchet steps)",
            "layers/ratchet_round_trip_2k",
            &[
                ("layers/bound_ratchet_encrypt", 2.0),
                ("layers/bound_ratchet_decrypt", 2.0),
                ("layers/x25519_base", 2.0),
                ("layers/x25519_dh", 4.0),
            ],
        ),
        (
            "sealed envelope seal",
            "layers/envelope_seal_2k",
            &[("layers/bound_envelope_seal", 1.0)],
        ),
        (
            "sealed envelope open",
            "layers/envelope_open_2k",
            &[("layers/bound_envelope_open", 1.0)],
        ),
        (
            "whole message seal (Contacts::seal_message, synced save included)",
            "layers/message_seal_2k",
            &[
                ("layers/content_seal_2k", 1.0),
                ("layers/psk_seal_2k", 1.0),
                ("layers/ratchet_encrypt_2k", 1.0),
                ("layers/envelope_seal_2k", 1.0),
            ],
        ),
        (
            "whole message seal vs the primitives' bounds",
            "layers/message_seal_2k",
            &[
                ("layers/bound_content_seal", 1.0),
                ("layers/bound_psk_seal", 1.0),
                ("layers/bound_ratchet_encrypt", 1.0),
                ("layers/bound_envelope_seal", 1.0),
            ],
        ),
        (
            "whole message open (Contacts::open_message, in memory)",
            "layers/message_open_2k",
            &[
                ("layers/envelope_open_2k", 1.0),
                ("layers/ratchet_decrypt_2k", 1.0),
                ("layers/psk_open_2k", 1.0),
                ("layers/content_open_2k", 1.0),
            ],
        ),
        (
            "whole message open vs the primitives' bounds",
            "layers/message_open_2k",
            &[
                ("layers/bound_envelope_open", 1.0),
                ("layers/bound_ratchet_decrypt", 1.0),
                ("layers/bound_psk_open", 1.0),
                ("layers/bound_content_open", 1.0),
            ],
        ),
    ];
    report_sums(rows);
}
