//! The mailbox server's store (`bastet_mailbox::Store`, RocksDB, every
//! write synced): durable stores per second in the server's batches of 256
//! and one at a time, each against the fsync bound measured in the same
//! run (the same bytes appended to a plain file in the same directory, one
//! `sync_data` per batch); and the latency of a client's poll of 1,000
//! stored messages.
//!
//! A poll of 1,000 is two pages: the HTTP API serves at most
//! `MAX_LIST_LIMIT` (500) messages a page. It is measured here through the
//! store's own `Store::list`, which returns the payloads, and once more
//! with the JSON the server encodes and the client decodes; TLS, HTTP and
//! the request signature are not included.
//!
//! The database lives under the target directory (`CARGO_TARGET_TMPDIR`),
//! not `/tmp`, which may be a tmpfs where `fsync` costs nothing; its file
//! system type is printed with the figures.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench harness code

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use bastet_benches::{fastest_ns, filesystem_type, mean_ns, rate};
use bastet_mailbox::api::{ListResponse, MAX_LIST_LIMIT};
use bastet_mailbox::{Delivery, Store, StoreLimits, StoredMessage};
use bastet_sphinx::MailboxId;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use rand::Rng;

/// The server's largest batch (`MAX_BATCH` in mailbox/src/server.rs): the
/// packets waiting together, stored with one synced write.
const BATCH: usize = 256;
/// A stored payload: about a Sphinx payload.
const PAYLOAD_LEN: usize = 2048;
/// Bytes a message costs in the write-ahead log besides its payload: the
/// key (mailbox id and seq) and the receive time.
const RECORD_OVERHEAD: usize = 32 + 8 + 8;
/// Messages in the polled mailbox.
const POLL: usize = 1000;
/// Batches written while filling the polled mailbox: its messages are
/// spread over some 80 MiB of other mailboxes' traffic, so that they sit
/// in several files (and the memtable), as on a server they arrive over
/// time among everyone else's.
const FILL_BATCHES: usize = 160;
const STORE_GOAL_PER_S: f64 = 20_000.0;
const POLL_GOAL_MS: f64 = 50.0;

fn payload() -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD_LEN];
    rand::rng().fill_bytes(&mut p);
    p
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The polled mailbox holding [`POLL`] messages among [`BATCH`] others.
fn fill(store: &Store, others: &[MailboxId], polled: &MailboxId) {
    let started = Instant::now();
    let mut stored = 0;
    for i in 0..FILL_BATCHES {
        let for_polled = POLL * (i + 1) / FILL_BATCHES - POLL * i / FILL_BATCHES;
        let batch: Vec<(MailboxId, Vec<u8>)> = (0..BATCH)
            .map(|j| {
                let to = if j < for_polled {
                    *polled
                } else {
                    others[j % others.len()]
                };
                (to, payload())
            })
            .collect();
        let outcomes = store.deliver(&batch, 1).unwrap();
        assert!(
            outcomes
                .iter()
                .all(|d| matches!(d, Delivery::Stored { .. }))
        );
        stored += batch.len();
    }
    assert_eq!(store.message_count(polled), Some(POLL as u64));
    println!(
        "filled the store: {stored} messages ({} MiB) in {:.1} s",
        (stored * (PAYLOAD_LEN + RECORD_OVERHEAD)) >> 20,
        started.elapsed().as_secs_f64()
    );
}

/// Appends `records` records of a message's size to `file` and syncs once.
fn append_synced(file: &mut File, record: &[u8], records: usize) {
    for _ in 0..records {
        file.write_all(record).unwrap();
    }
    file.sync_data().unwrap();
}

/// All of `mailbox`'s messages, page by page as a client polls.
fn poll(store: &Store, mailbox: &MailboxId) -> Vec<StoredMessage> {
    let mut all = Vec::with_capacity(POLL);
    let mut after = None;
    loop {
        let (page, next) = store.list(mailbox, after, MAX_LIST_LIMIT).unwrap();
        all.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => return all,
        }
    }
}

/// [`poll`] with the JSON the server sends for each page and the client's
/// decoding of it.
fn poll_json(store: &Store, mailbox: &MailboxId) -> Vec<StoredMessage> {
    let mut all = Vec::with_capacity(POLL);
    let mut after = None;
    loop {
        let (page, next) = store.list(mailbox, after, MAX_LIST_LIMIT).unwrap();
        let body = serde_json::to_vec(&ListResponse {
            messages: page.iter().map(StoredMessage::to_json).collect(),
            next,
        })
        .unwrap();
        let reply: ListResponse = serde_json::from_slice(&body).unwrap();
        for m in &reply.messages {
            all.push(StoredMessage::from_json(m).unwrap());
        }
        match reply.next {
            Some(n) => after = Some(n),
            None => return all,
        }
    }
}

fn benches(c: &mut Criterion) {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tmp = tempfile::Builder::new()
        .prefix("bastet-bench-mailbox-")
        .tempdir_in(base)
        .unwrap();
    let fs = filesystem_type(tmp.path()).unwrap_or_else(|| "unknown".into());
    println!(
        "database in {} on {fs}; load average {}",
        tmp.path().display(),
        load_average()
    );
    if matches!(fs.as_str(), "tmpfs" | "ramfs") {
        println!("WARNING: {fs} keeps nothing across a power loss; fsync is free here");
    }
    let store = Store::open(
        &tmp.path().join("store"),
        StoreLimits {
            quota_messages: u64::MAX,
            max_mailboxes: u64::MAX,
        },
    )
    .unwrap();
    let others: Vec<MailboxId> = (0..BATCH)
        .map(|i| {
            let mut owner = [0u8; 32];
            owner[..8].copy_from_slice(&(i as u64).to_be_bytes());
            store.register(&owner).unwrap().0
        })
        .collect();
    let polled = store.register(&[0xff; 32]).unwrap().0;
    fill(&store, &others, &polled);

    let mut g = c.benchmark_group("mailbox");
    // An iteration is one or more synced writes: milliseconds each.
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);

    // One message per mailbox, as packets for many recipients arrive.
    let batch: Vec<(MailboxId, Vec<u8>)> = others.iter().map(|m| (*m, payload())).collect();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp.path().join("fsync-bound.log"))
        .unwrap();
    let mut record = vec![0u8; PAYLOAD_LEN + RECORD_OVERHEAD];
    rand::rng().fill_bytes(&mut record);
    for n in [BATCH, 1] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("store_{n}"), |bench| {
            bench.iter(|| black_box(store.deliver(black_box(&batch[..n]), 1).unwrap()))
        });
        g.bench_function(format!("fsync_append_{n}"), |bench| {
            bench.iter(|| append_synced(&mut log, black_box(&record), n))
        });
    }

    g.throughput(Throughput::Elements(POLL as u64));
    assert_eq!(poll(&store, &polled).len(), POLL);
    assert_eq!(poll_json(&store, &polled).len(), POLL);
    g.bench_function("poll_1000", |bench| {
        bench.iter(|| black_box(poll(&store, black_box(&polled))))
    });
    g.bench_function("poll_1000_json", |bench| {
        bench.iter(|| black_box(poll_json(&store, black_box(&polled))))
    });
    g.finish();
    println!("load average after the run {}", load_average());
}

criterion_group!(mailbox, benches);

fn main() {
    mailbox();
    Criterion::default().configure_from_args().final_summary();
    println!("\n== mailbox: figures against the bound measured in this run, and the goals ==");
    for (n, label) in [
        (BATCH, "batches of 256 (group commit)"),
        (1, "one per write"),
    ] {
        let store = rate(&format!("mailbox/store_{n}"), n as f64);
        let bound = rate(&format!("mailbox/fsync_append_{n}"), n as f64);
        match (store, bound) {
            (Some(s), Some(b)) => println!(
                "durable stores, {label}: {s:.0} messages/s vs fsync bound {b:.0}/s \
                 (the same bytes appended to a file, one sync_data per write) = {:.2} of the bound{}",
                s / b,
                if n == BATCH {
                    format!(
                        "; goal ≥ {STORE_GOAL_PER_S:.0}/s {}",
                        if s >= STORE_GOAL_PER_S {
                            "met"
                        } else {
                            "NOT met"
                        }
                    )
                } else {
                    String::new()
                }
            ),
            _ => println!("durable stores, {label}: no estimate (run the whole bench)"),
        }
    }
    for (id, label) in [
        ("mailbox/poll_1000", "through Store::list, 2 pages of 500"),
        (
            "mailbox/poll_1000_json",
            "the same with the server's JSON encoding and the client's decoding",
        ),
    ] {
        match (mean_ns(id), fastest_ns(id)) {
            (Some(ns), Some(fastest)) => {
                let ms = ns / 1e6;
                println!(
                    "poll of {POLL} messages, {label}: {ms:.2} ms (fastest sample {:.2} ms) vs goal ≤ {POLL_GOAL_MS:.0} ms ({})",
                    fastest / 1e6,
                    if ms <= POLL_GOAL_MS { "met" } else { "NOT met" }
                );
            }
            _ => println!("poll of {POLL}, {label}: no estimate (run the whole bench)"),
        }
    }
}
