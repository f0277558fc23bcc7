//! Faults under load, over real processes on 127.0.0.1: the short forms of
//! the reliability scenarios (`bastet-testnet chaos SCENARIO` runs them and
//! their long forms from the command line). Each streams messages between
//! two clients through their daemons, injects the fault half-way while the
//! load goes on, and fails on any message lost, shown twice, changed or
//! unverified:
//!
//! - a mailbox server killed (SIGKILL) and restarted: what it acknowledged
//!   survived in RocksDB, what it did not was retransmitted;
//! - a mixnode killed for good: what crossed it is retransmitted on other
//!   routes;
//! - a mixnode frozen (SIGSTOP) for 10 s and let go: a node that stops
//!   answering and comes back;
//! - a mixnode's port cut off (nftables drops every packet to or from it)
//!   for 15 s and healed: a partition;
//! - one authority of three down for two epochs: the consensus goes on;
//! - two authorities down for three epochs: no consensus can be signed, the
//!   clients hold their messages and send them once it is back;
//! - a mailbox server's file system filled below its reserve for 10 s: it
//!   refuses new packets (unacknowledged, so retransmitted), serves polls,
//!   reports itself not ready, and stores again once space is back;
//! - a mixnode whose clock runs 3 minutes ahead (libfaketime): what crosses
//!   it is lost and retransmitted on other routes.
//!
//! Start the binaries as `end_to_end.rs` says.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bastet_testnet::{ChaosOptions, NetworkOptions, Scenario, run_chaos};

async fn passes(scenario: Scenario) {
    let report = match run_chaos(NetworkOptions::default(), &ChaosOptions::short(scenario)).await {
        Ok(r) => r,
        Err(e) => panic!("chaos {scenario} did not run: {e}"),
    };
    eprintln!("chaos {}", report.summary());
    assert_eq!(report.sent, report.clients * report.messages_per_client);
    assert!(report.passed(), "{}", report.summary());
    assert!(!report.faults.is_empty(), "the fault ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixnode_killed_for_good_under_load_loses_nothing() {
    passes(Scenario::KillMixnode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_server_killed_under_load_loses_nothing() {
    passes(Scenario::KillMailbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixnode_frozen_and_back_loses_nothing() {
    passes(Scenario::FreezeMixnode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_authority_down_loses_nothing() {
    passes(Scenario::OneAuthorityDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorities_down_loses_nothing() {
    passes(Scenario::TwoAuthoritiesDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_a_mailbox_server_loses_nothing() {
    passes(Scenario::DiskFull).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixnode_with_its_clock_minutes_ahead_loses_nothing() {
    passes(Scenario::ClockSkew).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixnode_partitioned_and_healed_loses_nothing() {
    passes(Scenario::PartitionMixnode).await;
}
