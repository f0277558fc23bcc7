//! Unlocking the encrypted container: a wrong passphrase, the decoy's and
//! the hidden compartment's, each against the bound of the one Argon2id
//! run (64 MiB, 3 passes) every unlock makes, measured in the same run.
//! The three should take the same time within noise: the time to unlock
//! must not tell which slot matched, or whether any did.
//!
//! Also: committing a small change (a 2 KiB file rewritten) in a
//! compartment that holds 1 MiB of other files, against the bound of the
//! five XChaCha20-Poly1305 block seals such a copy-on-write commit makes
//! at least (the file's block, the index's, the head, a map block, the
//! superblock), in memory (no disk, no fsync in either).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench harness code

use std::hint::black_box;
use std::time::Duration;

use bastet_benches::report_ratios;
use bastet_client::Result;
use bastet_client::layers::psk::{Argon2Params, psk_from_passphrase};
use bastet_client::store::{BLOCK_LEN, Blocks, Layout, PAYLOAD_LEN, Store};
use criterion::{Criterion, criterion_group};

/// A container in memory.
#[derive(Clone)]
struct Mem(Vec<[u8; BLOCK_LEN]>);

impl Blocks for Mem {
    fn count(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, index: u64, out: &mut [u8; BLOCK_LEN]) -> Result<()> {
        out.copy_from_slice(&self.0[index as usize]);
        Ok(())
    }
    fn write(&mut self, index: u64, data: &[u8; BLOCK_LEN]) -> Result<()> {
        self.0[index as usize] = *data;
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
}

fn store_benches(c: &mut Criterion) {
    use rand::Rng;
    let mut g = c.benchmark_group("store");
    g.sample_size(10).measurement_time(Duration::from_secs(12));
    let rng = &mut rand::rng();
    let mut blocks = Mem(vec![[0u8; BLOCK_LEN]; 1024]);
    for b in &mut blocks.0 {
        rng.fill_bytes(b);
    }
    let params = Argon2Params::default();
    let mut store = Store::create(
        blocks,
        &["decoy passphrase", "hidden passphrase"],
        params,
        rng,
    )
    .unwrap();
    store.write_all(0, &[1; 20_000], rng).unwrap();
    store.write_all(1, &[2; 20_000], rng).unwrap();
    let blocks = store.into_blocks();

    g.bench_function("argon2id", |b| {
        b.iter(|| {
            black_box(psk_from_passphrase(
                "decoy passphrase",
                &[1; 32],
                &[2; 32],
                params,
            ))
        })
    });
    for (name, phrase) in [
        ("unlock_wrong", "a wrong passphrase"),
        ("unlock_decoy", "decoy passphrase"),
        ("unlock_hidden", "hidden passphrase"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(Store::open(blocks.clone(), phrase, params).is_ok()))
        });
    }

    // A small change next to 1 MiB of other files.
    let fast = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let mut blocks = Mem(vec![[0u8; BLOCK_LEN]; 2048]);
    for b in &mut blocks.0 {
        rng.fill_bytes(b);
    }
    let mut store = Store::create(blocks, &["only passphrase"], fast, rng).unwrap();
    let (mut tree, mut layout) = Layout::load(&store, 0).unwrap();
    tree.put("contacts/bob.json", &[1; 2048]).unwrap();
    tree.put("inbox/big.json", &vec![2; 1 << 20]).unwrap();
    let all = [
        "contacts/bob.json".to_string(),
        "inbox/big.json".to_string(),
    ]
    .into_iter()
    .collect();
    layout.save(&mut store, 0, &tree, &all, rng).unwrap();
    let one = ["contacts/bob.json".to_string()].into_iter().collect();
    let mut n = 0u8;
    g.bench_function("commit_small_change", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            tree.put("contacts/bob.json", &[n; 2048]).unwrap();
            layout.save(&mut store, 0, &tree, &one, rng).unwrap();
        })
    });
    g.bench_function("seal_5_blocks", |b| {
        use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
        let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
        let mut body = vec![0u8; PAYLOAD_LEN];
        b.iter(|| {
            for i in 0..5u8 {
                let mut nonce = [0u8; 24];
                rng.fill_bytes(&mut nonce);
                body.truncate(PAYLOAD_LEN);
                body[0] = i;
                cipher
                    .encrypt_in_place(&XNonce::from(nonce), b"aad", &mut body)
                    .unwrap();
                black_box(&body);
            }
        })
    });
    g.finish();
}

criterion_group!(store, store_benches);

fn main() {
    store();
    Criterion::default().configure_from_args().final_summary();
    report_ratios(&[
        (
            "unlock, wrong passphrase",
            "store/unlock_wrong",
            "store/argon2id",
            1.0,
        ),
        (
            "unlock, decoy passphrase",
            "store/unlock_decoy",
            "store/argon2id",
            1.0,
        ),
        (
            "unlock, hidden passphrase",
            "store/unlock_hidden",
            "store/argon2id",
            1.0,
        ),
        (
            "commit of a 2 KiB change beside 1 MiB",
            "store/commit_small_change",
            "store/seal_5_blocks",
            1.0,
        ),
    ]);
}
