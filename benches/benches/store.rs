//! Unlocking the encrypted container: a wrong passphrase, the decoy's and
//! the hidden compartment's, each against the bound of the one Argon2id
//! run (64 MiB, 3 passes) every unlock makes, measured in the same run.
//! The three should take the same time within noise: the time to unlock
//! must not tell which slot matched, or whether any did.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench harness code

use std::hint::black_box;
use std::time::Duration;

use bastet_benches::report_ratios;
use bastet_client::Result;
use bastet_client::layers::psk::{Argon2Params, psk_from_passphrase};
use bastet_client::store::{BLOCK_LEN, Blocks, Store};
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
    ]);
}
