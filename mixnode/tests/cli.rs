//! The `bastet-mixnode` binary: init's output, config errors, signals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code may panic

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::unreachable_directory;

const BIN: &str = env!("CARGO_BIN_EXE_bastet-mixnode");

fn directory_file(dir: &Path) -> std::path::PathBuf {
    let d = unreachable_directory();
    let a = &d.authorities[0];
    let path = dir.join("directory.toml");
    std::fs::write(
        &path,
        format!(
            "epoch_secs = {}\n[[authorities]]\nurl = \"{}\"\nidentity_key = \"{}\"\ntls_pin = \"{}\"\n",
            d.epoch_secs, a.url, a.identity_key, a.tls_pin
        ),
    )
    .unwrap();
    path
}

fn init(dir: &Path, listen: &str, extra: &[&str]) -> Output {
    let directory = directory_file(dir);
    Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir.join("mix"))
        .args(["--listen", listen, "--metrics-listen", "127.0.0.1:0"])
        .args(["--jurisdiction", "IS", "--operator", "Org"])
        .arg("--directory")
        .arg(directory)
        .args(extra)
        .output()
        .unwrap()
}

fn run(config: &Path) -> Child {
    run_with_env(config, &[])
}

fn run_with_env(config: &Path, env: &[(&str, &str)]) -> Child {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("BASTET_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bastet-mixnode did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn init_prints_one_json_object_and_refuses_to_overwrite_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let out = init(
        tmp.path(),
        "127.0.0.1:4100",
        &["--public-addr", "mix.example:4100"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in ["node_id", "identity_key", "tls_pin"] {
        let v = json[key].as_str().unwrap();
        assert_eq!(v.len(), 64, "{key}: {v}");
        assert!(v.chars().all(|c| c.is_ascii_hexdigit()), "{key}: {v}");
    }
    let config = Path::new(json["config"].as_str().unwrap());
    assert!(config.is_absolute());
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.contains("public_addr = \"mix.example:4100\""),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("layer")),
        "layers come from the consensus, not a key: {text}"
    );
    assert!(text.contains("[directory]"), "{text}");
    assert!(
        text.lines().filter(|l| l.starts_with('#')).count() > 10,
        "{text}"
    );
    for file in ["identity.key", "tls-cert.pem", "tls-key.pem"] {
        assert!(tmp.path().join("mix").join(file).exists(), "{file}");
    }
    // Sphinx keys rotate: the current and the next epoch's, nothing else.
    let mut epochs: Vec<u64> = std::fs::read_dir(tmp.path().join("mix/sphinx-keys"))
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".key").unwrap().parse().unwrap()
        })
        .collect();
    epochs.sort_unstable();
    assert_eq!(epochs.len(), 2, "{epochs:?}");
    assert_eq!(epochs[1], epochs[0] + 1, "{epochs:?}");
    assert!(!tmp.path().join("mix/sphinx.key").exists());

    let key_before = std::fs::read(tmp.path().join("mix/identity.key")).unwrap();
    let again = init(tmp.path(), "127.0.0.1:4100", &[]);
    assert!(!again.status.success());
    assert!(again.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(
        std::fs::read(tmp.path().join("mix/identity.key")).unwrap(),
        key_before
    );
}

#[test]
fn run_names_the_bad_key_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let out = init(tmp.path(), "127.0.0.1:0", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = tmp.path().join("mix/mixnode.toml");
    let text = std::fs::read_to_string(&config).unwrap();

    std::fs::write(
        &config,
        text.replace("jurisdiction = \"IS\"", "jurisdiction = \"Iceland\""),
    )
    .unwrap();
    let mut child = run(&config);
    assert!(!wait_exit(&mut child, Duration::from_secs(10)).success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("`jurisdiction`"), "{stderr}");

    // Overridden from the environment, and out of range there.
    std::fs::write(&config, &text).unwrap();
    let mut child = run_with_env(&config, &[("BASTET_MIXNODE__COVER_RATE", "500")]);
    assert!(!wait_exit(&mut child, Duration::from_secs(10)).success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("`cover_rate`"), "{stderr}");

    // An address already in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    std::fs::write(
        &config,
        text.replace(
            "\nlisten = \"127.0.0.1:0\"",
            &format!("\nlisten = \"{addr}\""),
        ),
    )
    .unwrap();
    let mut child = run(&config);
    assert!(!wait_exit(&mut child, Duration::from_secs(10)).success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&addr) && stderr.contains("`listen`"),
        "{stderr}"
    );
}

#[test]
fn run_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let out = init(tmp.path(), "127.0.0.1:0", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = run(&tmp.path().join("mix/mixnode.toml"));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("mixnode running"));
    assert!(started, "bastet-mixnode never reported it was running");
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}
