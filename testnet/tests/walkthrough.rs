//! `scripts/walkthrough`: the operator and user guides' commands, run as
//! written against 127.0.0.1 (authorities, relays, check-config, two
//! clients in encrypted stores, a message each way). Needs the workspace
//! binaries (`cargo build --workspace --bins`; `scripts/test.sh` does).

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

#[test]
fn the_guides_walkthrough_runs_on_loopback() {
    let bins = Path::new(env!("CARGO_BIN_EXE_bastet-testnet"))
        .parent()
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/walkthrough");
    let out = Command::new("bash")
        .arg(&script)
        .env("BASTET_BIN_DIR", bins)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "walkthrough failed:\n{stderr}");
    assert!(
        stderr.contains("both messages arrived, verified"),
        "{stderr}"
    );
}
