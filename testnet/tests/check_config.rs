//! `check-config` of each node binary, over the real binaries (nothing is
//! started, no port is opened): a config `init` wrote passes and prints the
//! node's identity; a bad value fails naming its key; a key file others
//! can read fails naming the file and `chmod 600`. Needs the workspace
//! binaries (`cargo build --workspace --bins`; `scripts/test.sh` does).

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bastet-testnet"))
        .parent()
        .unwrap()
        .join(name)
}

/// Runs a binary; (success, stdout, stderr).
fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(bin(name))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok_json(name: &str, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let (ok, out, err) = run(name, args, env);
    assert!(ok, "{name} {args:?}: {err}");
    serde_json::from_str(out.trim()).unwrap()
}

fn fails(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let (ok, out, err) = run(name, args, env);
    assert!(!ok, "{name} {args:?} passed: {out}");
    err
}

#[test]
fn check_config_passes_good_configs_and_names_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |n: &str| tmp.path().join(n).to_string_lossy().into_owned();

    // An authority (init opens no port).
    let auth = ok_json(
        "bastet-directory",
        &["init", "--dir", &dir("auth"), "--listen", "127.0.0.1:7900"],
        &[],
    );
    let auth_config = format!("{}/authority.toml", dir("auth"));
    let err = fails(
        "bastet-directory",
        &["check-config", "--config", &auth_config],
        &[],
    );
    assert!(err.contains("open_admission"), "{err}");
    let open = [("BASTET_DIRECTORY__OPEN_ADMISSION", "true")];
    let report = ok_json(
        "bastet-directory",
        &["check-config", "--config", &auth_config],
        &open,
    );
    assert_eq!(report["ok"], true);
    assert_eq!(report["identity_key"], auth["identity_key"]);
    assert_eq!(report["tls_pin"], auth["tls_pin"]);

    let directory = tmp.path().join("directory.toml");
    std::fs::write(
        &directory,
        format!(
            "epoch_secs = 3600\n[[authorities]]\nurl = {}\nidentity_key = {}\ntls_pin = {}\n",
            auth["url"], auth["identity_key"], auth["tls_pin"]
        ),
    )
    .unwrap();
    let directory = directory.to_string_lossy().into_owned();

    // A mixnode and a mailbox server.
    let mix = ok_json(
        "bastet-mixnode",
        &[
            "init",
            "--dir",
            &dir("mix"),
            "--listen",
            "127.0.0.1:7901",
            "--metrics-listen",
            "127.0.0.1:7902",
            "--jurisdiction",
            "DE",
            "--operator",
            "Test Org",
            "--directory",
            &directory,
        ],
        &[],
    );
    let mbox = ok_json(
        "bastet-mailbox",
        &[
            "init",
            "--dir",
            &dir("mbox"),
            "--listen",
            "127.0.0.1:7903",
            "--api-listen",
            "127.0.0.1:7904",
            "--metrics-listen",
            "127.0.0.1:7905",
            "--jurisdiction",
            "CH",
            "--operator",
            "Test Org",
            "--directory",
            &directory,
        ],
        &[],
    );
    for (name, init, data, config, env_key) in [
        (
            "bastet-mixnode",
            &mix,
            dir("mix"),
            format!("{}/mixnode.toml", dir("mix")),
            "BASTET_MIXNODE__JURISDICTION",
        ),
        (
            "bastet-mailbox",
            &mbox,
            dir("mbox"),
            format!("{}/mailbox.toml", dir("mbox")),
            "BASTET_MAILBOX__JURISDICTION",
        ),
    ] {
        let report = ok_json(name, &["check-config", "--config", &config], &[]);
        assert_eq!(report["ok"], true, "{name}");
        assert_eq!(report["node_id"], init["node_id"], "{name}");
        assert_eq!(report["tls_pin"], init["tls_pin"], "{name}");
        assert_eq!(report["authorities"], 1, "{name}");
        // A bad value: the error names the key.
        let err = fails(
            name,
            &["check-config", "--config", &config],
            &[(env_key, "Germany")],
        );
        assert!(err.contains("jurisdiction"), "{name}: {err}");
        // Keys others can read: refused, naming the file and the fix.
        for file in ["identity.key", "tls-key.pem"] {
            let path = Path::new(&data).join(file);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = fails(name, &["check-config", "--config", &config], &[]);
            assert!(
                err.contains(file) && err.contains("chmod 600"),
                "{name}: {err}"
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(run(name, &["check-config", "--config", &config], &[]).0);
    }
    // BASTET_LOG_FORMAT=json: every log line of a running node is one
    // JSON object with its level, target and message.
    let log = tmp.path().join("json.log");
    let mut node = Command::new(bin("bastet-mixnode"))
        .args(["run", "--config", &format!("{}/mixnode.toml", dir("mix"))])
        .env("BASTET_LOG_FORMAT", "json")
        .env("BASTET_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&log).unwrap().lines().count() < 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Its /health says it is not ready, and why: no authority answers.
    let health = {
        use std::io::{Read, Write};
        let mut answer = String::new();
        for _ in 0..50 {
            if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:7902") {
                s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
                s.read_to_string(&mut answer).unwrap();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        answer
    };
    node.kill().unwrap();
    node.wait().unwrap();
    assert!(health.starts_with("HTTP/1.0 503"), "{health}");
    assert!(health.contains("not ready: no consensus"), "{health}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= 2, "{text}");
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["target"].is_string(), "{line}");
        assert!(v["ts_ms"].as_u64().unwrap() > 1_700_000_000_000, "{line}");
        assert!(v["message"].is_string(), "{line}");
    }

    // An authority made with a relative --dir runs from anywhere (its
    // config holds the absolute data_dir).
    let made = Command::new(bin("bastet-directory"))
        .args(["init", "--dir", "rel-auth", "--listen", "127.0.0.1:7906"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(made.status.success());
    let config = tmp.path().join("rel-auth/authority.toml");
    let checked = Command::new(bin("bastet-directory"))
        .args(["check-config", "--config"])
        .arg(&config)
        .env("BASTET_DIRECTORY__OPEN_ADMISSION", "true")
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // backup, then restore elsewhere: the same identity and TLS pin, the
    // config pointing at the new directory; only with the passphrase.
    let with_input = |name: &str, args: &[&str], input: &str| {
        use std::io::Write;
        let mut child = Command::new(bin(name))
            .args(args)
            .env("BASTET_DIRECTORY__OPEN_ADMISSION", "true")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    for (name, config, id_field) in [
        (
            "bastet-mixnode",
            format!("{}/mixnode.toml", dir("mix")),
            "node_id",
        ),
        (
            "bastet-mailbox",
            format!("{}/mailbox.toml", dir("mbox")),
            "node_id",
        ),
        ("bastet-directory", auth_config.clone(), "identity_key"),
    ] {
        let out = dir(&format!("{name}.backup"));
        let made = with_input(
            name,
            &[
                "backup",
                "--config",
                &config,
                "--out",
                &out,
                "--passphrase-fd",
                "0",
            ],
            "a long backup passphrase\n",
        );
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{name}");
        let to = dir(&format!("{name}-restored"));
        let wrong = with_input(
            name,
            &[
                "restore",
                "--backup",
                &out,
                "--dir",
                &to,
                "--passphrase-fd",
                "0",
            ],
            "not the passphrase\n",
        );
        assert!(!wrong.status.success());
        assert!(
            String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"),
            "{}",
            String::from_utf8_lossy(&wrong.stderr)
        );
        // Another role's binary refuses it.
        let other = if name == "bastet-mixnode" {
            "bastet-mailbox"
        } else {
            "bastet-mixnode"
        };
        let refused = with_input(
            other,
            &[
                "restore",
                "--backup",
                &out,
                "--dir",
                &to,
                "--passphrase-fd",
                "0",
            ],
            "a long backup passphrase\n",
        );
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("another kind of node"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
        let restored = with_input(
            name,
            &[
                "restore",
                "--backup",
                &out,
                "--dir",
                &to,
                "--passphrase-fd",
                "0",
            ],
            "a long backup passphrase\n",
        );
        assert!(
            restored.status.success(),
            "{}",
            String::from_utf8_lossy(&restored.stderr)
        );
        let info: serde_json::Value = serde_json::from_slice(&restored.stdout).unwrap();
        let new_config = info["config"].as_str().unwrap().to_string();
        let env: &[(&str, &str)] = &open;
        let before = ok_json(name, &["check-config", "--config", &config], env);
        let after = ok_json(name, &["check-config", "--config", &new_config], env);
        assert_eq!(before[id_field], after[id_field], "{name}");
        assert_eq!(before["tls_pin"], after["tls_pin"], "{name}");
        assert!(
            std::fs::read_to_string(&new_config).unwrap().contains(&to),
            "{name}: data_dir not moved"
        );
    }

    // A missing config file is named.
    let err = fails(
        "bastet-mixnode",
        &["check-config", "--config", &dir("nowhere.toml")],
        &[],
    );
    assert!(err.contains("nowhere.toml"), "{err}");
}

/// The systemd units in `deploy/systemd`: each runs `check-config` before
/// `run` on the config its role's `init` writes, passes `systemd-analyze
/// verify` (with the built binaries in place of /usr/local/bin), and its
/// hardening scores at most 2.0 ("OK") in `systemd-analyze security`.
#[test]
fn the_systemd_units_verify_and_are_hardened() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is missing: scripts/setup.sh installs it (package systemd)");
    };
    assert!(version.status.success());
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let tmp = tempfile::tempdir().unwrap();
    let bins = bin("bastet-mixnode").parent().unwrap().to_path_buf();
    for (role, config) in [
        ("directory", "authority.toml"),
        ("mixnode", "mixnode.toml"),
        ("mailbox", "mailbox.toml"),
    ] {
        let name = format!("bastet-{role}.service");
        let text = std::fs::read_to_string(deploy.join(&name)).unwrap();
        let data = format!("/var/lib/bastet/{role}/{config}");
        assert!(
            text.contains(&format!(
                "ExecStartPre=/usr/local/bin/bastet-{role} check-config --config {data}"
            )),
            "{name}"
        );
        assert!(
            text.contains(&format!(
                "ExecStart=/usr/local/bin/bastet-{role} run --config {data}"
            )),
            "{name}"
        );
        let local = text.replace("/usr/local/bin/", &format!("{}/", bins.to_string_lossy()));
        let path = tmp.path().join(&name);
        std::fs::write(&path, local).unwrap();
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&verify.stderr);
        assert!(
            verify.status.success() && !stderr.contains(&name),
            "{name}: {stderr}"
        );
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(&path)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&security.stdout);
        let score: f64 = out
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for "))
            .and_then(|(_, rest)| rest.split_once(": "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no exposure level in {out}"));
        assert!(score <= 2.0, "{name}: exposure {score}");
    }
}
