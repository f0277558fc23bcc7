//! The live web view (`bastet-testnet up --web`), rendered by a real
//! headless Chromium on loopback: every node of the testnet is drawn in its
//! column with its health, the screenshot shows one green status bar per
//! ready node, and a node that dies turns red.
//!
//! Chromium comes from Debian's `chromium` package; when it is missing the
//! test runs `scripts/setup.sh`, which installs it.

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bastet_testnet::{Network, NetworkOptions, REFRESH, WebView};
use tokio::io::AsyncBufReadExt;

/// The status bar colours of app's style.css (ready, not ready).
const GREEN: [u8; 3] = [0x1a, 0x7f, 0x37];
const RED: [u8; 3] = [0xcf, 0x22, 0x2e];
/// Smallest bar counted: a card is ~250 × 14 px at the window size used.
const MIN_BAR_PIXELS: usize = 1000;

/// `/usr/bin/chromium`, installed by `scripts/setup.sh` if missing.
fn chromium() -> PathBuf {
    let found = || {
        ["chromium", "chromium-browser"].iter().find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
    };
    if let Some(path) = found() {
        return path;
    }
    let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup.sh");
    let status = std::process::Command::new("bash")
        .arg(&setup)
        .status()
        .unwrap();
    assert!(status.success(), "{} failed", setup.display());
    found().expect("scripts/setup.sh installs Debian's chromium package")
}

/// Runs headless Chromium on `url` with `args` (e.g. `--dump-dom`), letting
/// the page's script fetch and draw (virtual time), and returns stdout.
async fn run_chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1400,900",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finishes within 90 s")
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each node's (column, class) as the rendered DOM shows it.
fn cards(dom: &str) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for section in dom.split("<section").skip(1) {
        let column = attr(section, "data-column").unwrap();
        for card in section.split("<div class=\"node ").skip(1) {
            let class = card.split('"').next().unwrap().to_string();
            let name = attr(card, "data-node").unwrap();
            out.insert(name, (column.clone(), class));
        }
    }
    out
}

fn attr(text: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("{name}=\""))? + name.len() + 2;
    Some(text[start..].split('"').next()?.to_string())
}

/// Counts the solid areas of `colour` (4-connected, at least
/// [`MIN_BAR_PIXELS`]) in the PNG at `path`: the cards' status bars.
fn bars(path: &Path, colour: [u8; 3]) -> usize {
    let file = BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let (w, h) = (info.width as usize, info.height as usize);
    let is = |x: usize, y: usize| {
        let i = y * info.line_size + x * channels;
        buf[i..i + 3] == colour
    };
    let mut seen = vec![false; w * h];
    let mut areas = 0;
    for y in 0..h {
        for x in 0..w {
            if seen[y * w + x] || !is(x, y) {
                continue;
            }
            let mut stack = vec![(x, y)];
            seen[y * w + x] = true;
            let mut size = 0;
            while let Some((cx, cy)) = stack.pop() {
                size += 1;
                let mut visit = |nx: usize, ny: usize| {
                    if nx < w && ny < h && !seen[ny * w + nx] && is(nx, ny) {
                        seen[ny * w + nx] = true;
                        stack.push((nx, ny));
                    }
                };
                visit(cx + 1, cy);
                visit(cx, cy + 1);
                if cx > 0 {
                    visit(cx - 1, cy);
                }
                if cy > 0 {
                    visit(cx, cy - 1);
                }
            }
            if size >= MIN_BAR_PIXELS {
                areas += 1;
            }
        }
    }
    areas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_every_node_and_a_dead_one_turns_red() {
    let mut net = Network::start(NetworkOptions {
        epoch_secs: 120,
        ..NetworkOptions::default()
    })
    .await
    .unwrap();
    let view = WebView::start(net.layout(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let layout = net.layout().clone();
    let all: BTreeSet<String> = layout
        .authorities
        .iter()
        .map(|a| a.name.clone())
        .chain(layout.relays.iter().map(|r| r.name.clone()))
        .collect();
    assert_eq!(all.len(), 11);

    // Every node drawn, ready, in its column: authorities, the mixnodes in
    // the layers the consensus gave them, the mailbox servers.
    // Layers change with the epoch: compare with a snapshot of the same
    // epoch as the one the page drew (taken before and after it).
    let (dom, snapshot) = {
        let mut tries = 0;
        loop {
            let before = view.snapshot();
            let dom = run_chromium(&view.url(), &["--dump-dom"]).await;
            let after = view.snapshot();
            tries += 1;
            if before.epoch == after.epoch || tries == 3 {
                break (dom, after);
            }
        }
    };
    let drawn = cards(&dom);
    assert_eq!(drawn.keys().cloned().collect::<BTreeSet<_>>(), all, "{dom}");
    for node in &snapshot.nodes {
        let (column, class) = &drawn[&node.name];
        assert_eq!(class, "ready", "{}: {node:?}", node.name);
        let expected = match (node.role.as_str(), node.layer) {
            ("authority", _) => "authorities".to_string(),
            ("mailbox", _) => "mailboxes".to_string(),
            ("mix", Some(l)) => format!("layer-{l}"),
            other => panic!("{} has no layer: {other:?}", node.name),
        };
        assert_eq!(column, &expected, "{}", node.name);
    }
    let mut per_layer = BTreeMap::new();
    for (column, _) in drawn.values() {
        *per_layer.entry(column.as_str()).or_insert(0) += 1;
    }
    assert_eq!(per_layer["layer-1"], 2, "{per_layer:?}");
    assert_eq!(per_layer["layer-2"], 2, "{per_layer:?}");
    assert_eq!(per_layer["layer-3"], 2, "{per_layer:?}");
    assert!(dom.contains("11 of 11 nodes ready"), "{dom}");

    // The screenshot shows it: one green bar per node, no red one.
    let shots = tempfile::tempdir().unwrap();
    let shot = shots.path().join("all-ready.png");
    run_chromium(&view.url(), &[&format!("--screenshot={}", shot.display())]).await;
    assert_eq!(bars(&shot, GREEN), 11, "green bars in {}", shot.display());
    assert_eq!(bars(&shot, RED), 0, "red bars in {}", shot.display());

    // A mixnode dies: within a few refreshes its card turns red.
    net.kill_node("mix-a").unwrap();
    let deadline = tokio::time::Instant::now() + REFRESH * 10;
    loop {
        let s = view.snapshot();
        if s.nodes.iter().any(|n| n.name == "mix-a" && !n.ready) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the view still shows mix-a ready: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dom = run_chromium(&view.url(), &["--dump-dom"]).await;
    let drawn = cards(&dom);
    assert_eq!(drawn["mix-a"].1, "not-ready", "{dom}");
    assert!(dom.contains("not ready: unreachable"), "{dom}");
    assert!(dom.contains("10 of 11 nodes ready"), "{dom}");
    let shot = shots.path().join("one-down.png");
    run_chromium(&view.url(), &[&format!("--screenshot={}", shot.display())]).await;
    assert_eq!(bars(&shot, GREEN), 10, "green bars in {}", shot.display());
    assert_eq!(bars(&shot, RED), 1, "red bars in {}", shot.display());
    drop(view);
    net.stop();
}

fn testnet_command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bastet-testnet"));
    let bins = Path::new(env!("CARGO_BIN_EXE_bastet-testnet"))
        .parent()
        .unwrap();
    cmd.env("BASTET_BIN_DIR", bins).kill_on_drop(true);
    cmd
}

/// A plain HTTP/1.0 GET on loopback: the head and the body.
fn get(url: &str) -> (String, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_web_prints_the_url_and_serves_the_network() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("net");
    let mut child = testnet_command()
        .args(["up", "--json", "--web", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
    let Ok(Ok(Some(line))) = first else {
        let _ = child.start_kill();
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "up did not come up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let layout: serde_json::Value = serde_json::from_str(&line).unwrap();
    let url = layout["web_url"].as_str().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let (head, page) = get(&url);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(page.contains("Bastet testnet"));
    let (_, json) = get(&format!("{url}api/nodes"));
    let snapshot: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: BTreeSet<&str> = snapshot["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 11, "{json}");
    assert_eq!(snapshot["ready"], 11, "{json}");
    let (head, _) = get(&format!("{url}no-such-page"));
    assert!(head.starts_with("HTTP/1.0 404"), "{head}");

    let pid = child.id().unwrap();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "interrupted: {status}");
}

#[test]
fn up_refuses_a_web_address_off_loopback_before_starting() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bastet-testnet"))
        .args(["up", "--web", "0.0.0.0:8080"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loopback only"), "{stderr}");
    assert!(stderr.contains("--web 127.0.0.1:8080"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing started");
}
