//! `layers::content::open` with fixed keys (bob) on: (0) any bytes; (1) any
//! plaintext encrypted to bob per the documented wire format (so that the
//! fuzzer reaches the plaintext parser past the AEAD); (2) text, a file,
//! chain links or a chain links request sealed by `content::seal` from
//! alice at a fuzzer-chosen chain head, then possibly one byte changed.
//! Checks: every failure is a content-layer error; a plaintext encrypted
//! to bob never fails the AEAD; a sealed message opens intact (content and
//! chain head) with a verified signature, and any changed byte is
//! detected.
#![no_main]

use std::sync::OnceLock;

use bastet_client::identity::Head;
use bastet_client::layers::content::{self, CONTENT_VERSION, Recipient};
use bastet_client::{ClientKeys, Content, DeviceSecrets, Error, MessageId};
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce};
use hkdf::Hkdf;
use libfuzzer_sys::fuzz_target;
use ml_kem::{Encapsulate, TryKeyInit};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

fn keys(seed: u8) -> ClientKeys {
    ClientKeys::from_secrets(
        &[seed; 32],
        &[seed + 1; 32],
        &[seed + 2; 32],
        &DeviceSecrets::generate(&mut StdRng::from_seed([seed; 32])),
    )
}

fn fixed() -> &'static (ClientKeys, ClientKeys) {
    static KEYS: OnceLock<(ClientKeys, ClientKeys)> = OnceLock::new();
    KEYS.get_or_init(|| (keys(1), keys(11)))
}

fn recipient(k: &ClientKeys) -> Recipient {
    Recipient::of(k)
}

fn is_content_error(r: &Result<content::Opened, Error>) -> bool {
    matches!(
        r,
        Err(Error::Layer {
            layer: "content",
            ..
        })
    )
}

/// The documented wire format around any plaintext.
fn encrypt(to: &ClientKeys, plaintext: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let e = StaticSecret::from([9; 32]);
    let e_pub = PublicKey::from(&e).to_bytes();
    let shared = e.diffie_hellman(&PublicKey::from(to.content_public()));
    let kem = to.kem_public();
    let ek = ml_kem::ml_kem_768::EncapsulationKey::new_from_slice(&kem).expect("kem key");
    let (kem_ct, kem_shared) = ek.encapsulate_with_rng(rng);
    let mut ikm = shared.as_bytes().to_vec();
    ikm.extend_from_slice(kem_shared.as_slice());
    let mut info = e_pub.to_vec();
    info.extend_from_slice(kem_ct.as_slice());
    info.extend_from_slice(&to.content_public());
    info.extend_from_slice(&kem);
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"bastet 2026 content hybrid kem v1"), &ikm)
        .expand(&info, &mut key)
        .expect("hkdf");
    let mut body = plaintext.to_vec();
    ChaCha20Poly1305::new(&key.into())
        .encrypt_in_place(&Nonce::default(), &[CONTENT_VERSION], &mut body)
        .expect("AEAD seals");
    let mut out = vec![CONTENT_VERSION];
    out.extend_from_slice(&e_pub);
    out.extend_from_slice(kem_ct.as_slice());
    out.extend_from_slice(&body);
    out
}

fuzz_target!(|data: &[u8]| {
    let (alice, bob) = fixed();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let rng = &mut StdRng::from_seed([7; 32]);
    match mode % 3 {
        0 => {
            let r = content::open(bob, rest);
            assert!(is_content_error(&r), "{r:?}");
        }
        1 => {
            let r = content::open(bob, &encrypt(bob, rest, rng));
            match &r {
                Ok(_) => {}
                Err(Error::Layer {
                    layer: "content",
                    why,
                }) => {
                    assert!(!why.contains("does not decrypt"), "{why}");
                }
                Err(e) => panic!("{e}"),
            }
        }
        _ => {
            let Some((tamper, rest)) = rest.split_first_chunk::<3>() else {
                return;
            };
            // Alice's chain head: a sequence number from the input, a hash
            // derived from it.
            let seq = u64::from(u16::from_le_bytes([tamper[0], tamper[2]]));
            let head = Head {
                seq,
                hash: *blake3::hash(&seq.to_be_bytes()).as_bytes(),
            };
            let c = match (mode & 0x80 == 0, mode & 0x40 == 0) {
                (true, true) => Content::Text(String::from_utf8_lossy(rest).into_owned()),
                (true, false) => Content::Links(rest.to_vec()),
                (false, true) => {
                    let (name, bytes) = rest.split_at(rest.len().min(usize::from(tamper[2])));
                    Content::File {
                        name: String::from_utf8_lossy(name).into_owned(),
                        bytes: bytes.to_vec(),
                    }
                }
                (false, false) => {
                    let mut after = [0u8; 8];
                    let n = rest.len().min(8);
                    after[..n].copy_from_slice(&rest[..n]);
                    Content::LinksRequest {
                        after: u64::from_be_bytes(after),
                    }
                }
            };
            let sealed = match content::seal(
                alice,
                &head,
                &recipient(bob),
                MessageId([4; 16]),
                &c,
                9,
                rng,
            ) {
                Ok(s) => s,
                Err(Error::BadFileName(..)) => return,
                Err(e) => panic!("sealing failed: {e}"),
            };
            let opened = content::open(bob, &sealed).expect("a sealed layer opens");
            assert_eq!(opened.content, c);
            assert_eq!(opened.sender_head, head);
            assert!(opened.signature_ok);
            assert_eq!(opened.sender_identity, alice.identity_public());
            assert!(is_content_error(&content::open(alice, &sealed)));
            let mut bad = sealed.clone();
            let at = usize::from(u16::from_le_bytes([tamper[0], tamper[1]])) % bad.len();
            bad[at] ^= tamper[2] | 1;
            assert!(
                is_content_error(&content::open(bob, &bad)),
                "byte {at} changed"
            );
        }
    }
});
