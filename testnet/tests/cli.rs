//! The `bastet-testnet` command itself, over real processes: the demo's
//! JSON contract and exit status, and that no node outlives the command,
//! whether it ends normally or by Ctrl-C. Needs the workspace binaries
//! (`cargo build --workspace --bins`; `scripts/test.sh` does).

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

fn testnet_command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bastet-testnet"));
    // The other binaries sit beside this one in target/<profile>/.
    let bins = Path::new(env!("CARGO_BIN_EXE_bastet-testnet"))
        .parent()
        .unwrap();
    cmd.env("BASTET_BIN_DIR", bins).kill_on_drop(true);
    cmd
}

/// Pids of live processes whose command line mentions `dir` (the nodes run
/// with `--config <dir>/<node>/<role>.toml`). Linux /proc.
fn processes_under(dir: &Path, except: Option<u32>) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // A zombie has already exited; only its parent has not reaped it.
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        if !zombie && Some(pid) != except && String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

fn net_dir(parent: &tempfile::TempDir) -> PathBuf {
    std::fs::canonicalize(parent.path()).unwrap().join("net")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_one_json_report_and_leaves_no_process_behind() {
    let parent = tempfile::tempdir().unwrap();
    let dir = net_dir(&parent);
    let out = testnet_command()
        .args([
            "demo",
            "--json",
            "--messages",
            "2",
            "--size",
            "300",
            "--timeout",
            "60",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stderr}",
        out.status
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one JSON object: {stdout}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["sent"], 2);
    assert_eq!(report["delivered"], 2);
    let messages = report["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    for m in messages {
        let roles: Vec<&str> = m["route"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["mix1", "mix2", "mix3", "mailbox"]);
        assert!(m["latency_ms"].is_u64(), "{m}");
    }
    assert_eq!(report["dir"].as_str().map(PathBuf::from), Some(dir.clone()));
    assert!(
        dir.join("mailbox-b").join("node.log").is_file(),
        "--dir is kept"
    );
    assert!(
        processes_under(&dir, None).is_empty(),
        "nodes left running: {:?}",
        processes_under(&dir, None)
    );
}

/// Sends SIGINT to a process when dropped during a panic (never after a
/// test that passed: by then the pid may belong to someone else).
struct InterruptOnDrop(u32);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_every_node() {
    let parent = tempfile::tempdir().unwrap();
    let dir = net_dir(&parent);
    let mut child = testnet_command()
        .arg("up")
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("Ctrl-C stops every node") {
                return true;
            }
        }
        false
    })
    .await;
    if ready != Ok(true) {
        let _ = child.start_kill();
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "up did not come up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pid = child.id().unwrap();
    // Should an assertion below fail before the Ctrl-C, still interrupt
    // the testnet so that its nodes do not outlive the test.
    let _interrupt_on_failure = InterruptOnDrop(pid);
    let running = processes_under(&dir, Some(pid));
    assert_eq!(
        running.len(),
        11,
        "3 authorities + 8 relays running: {running:?}"
    );

    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("bastet-testnet exits after Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(130), "exit status after Ctrl-C");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !processes_under(&dir, None).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        processes_under(&dir, None).is_empty(),
        "nodes left running: {:?}",
        processes_under(&dir, None)
    );
}

#[tokio::test]
async fn bad_options_fail_before_starting_anything() {
    let out = testnet_command()
        .args(["demo", "--size", "0"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad arguments");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size"));
    let out = testnet_command()
        .args(["demo", "--messages", "x"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad arguments");
}
