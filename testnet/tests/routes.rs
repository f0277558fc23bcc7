//! Jurisdiction-aware routes over real processes on 127.0.0.1: a testnet
//! with three mixnodes in each of DE, CH, IS and NL, a sender whose route
//! policy is domestic (DE) → neutral (CH or IS) → external (NL), and a
//! policy that cannot be met. Needs the workspace binaries
//! (`cargo build --workspace --bins`; `scripts/test.sh` does).

// This whole file is test code; its helpers fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use bastet_client::{RoutePolicy, parse_classes};
use bastet_testnet::{DemoOptions, Error, Layout, Network, NetworkOptions, run_demo};
use serde_json::Value;

fn jurisdictions() -> Vec<String> {
    ["DE", "CH", "IS", "NL"].map(String::from).to_vec()
}

fn policy(spec: &str) -> RoutePolicy {
    let p = RoutePolicy::default().with_overrides(Some(parse_classes(spec).unwrap()), None, None);
    p.validate("").unwrap();
    p
}

/// Checks one route (as JSON hops: node, role, jurisdiction) against the
/// seed policy: one hop per class in order, the recipient's mailbox server
/// last, every relay run by a different operator.
fn assert_meets_seed_policy(layout: &Layout, route: &Value, mailbox: &str) {
    let hops = route.as_array().unwrap();
    let js: Vec<&str> = hops
        .iter()
        .map(|h| h["jurisdiction"].as_str().unwrap())
        .collect();
    let roles: Vec<&str> = hops.iter().map(|h| h["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["mix1", "mix2", "mix3", "mailbox"], "{route}");
    assert_eq!(js[0], "DE", "domestic hop: {route}");
    assert!(js[1] == "CH" || js[1] == "IS", "neutral hop: {route}");
    assert_eq!(js[2], "NL", "external hop: {route}");
    assert_eq!(hops[3]["node"].as_str().unwrap(), mailbox, "{route}");
    let operators: HashSet<&str> = hops
        .iter()
        .map(|h| {
            let relay = layout
                .relay_by_id(h["node"].as_str().unwrap())
                .unwrap_or_else(|| panic!("a node outside the testnet: {h}"));
            assert_eq!(relay.jurisdiction, h["jurisdiction"].as_str().unwrap());
            relay.operator.as_str()
        })
        .collect();
    assert_eq!(operators.len(), 4, "distinct operators: {route}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_with_a_policy_routes_by_it_and_refuses_one_that_cannot_be_met() {
    let mut net = Network::start(NetworkOptions {
        jurisdictions: Some(jurisdictions()),
        mixes_per_jurisdiction: 3,
        ..NetworkOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the testnet did not start: {e}"));
    let seed = policy("domestic=DE,neutral=CH+IS,external=NL");
    let options = DemoOptions {
        messages: 4,
        size: 100,
        timeout: Duration::from_secs(45),
        policy: Some(seed.clone()),
        ..DemoOptions::default()
    };
    let report = run_demo(&net, &options)
        .await
        .unwrap_or_else(|e| panic!("demo: {e}\n{}", net.log_tails(20)));
    assert!(
        report.all_delivered(),
        "{}\n{}",
        report.to_human(),
        net.counters().await
    );
    // Exactly what `bastet-testnet demo --json` prints.
    let json = serde_json::to_value(&report).unwrap();
    let layout = net.layout().clone();
    let bob_server = &layout.relay("mailbox-b").unwrap().node_id;
    assert_eq!(json["policy"]["template"][1], "neutral");
    for m in json["messages"].as_array().unwrap() {
        assert_eq!(m["delivered"], true);
        assert_meets_seed_policy(&layout, &m["route"], bob_server);
    }

    // `bastet route sample` and `route show` for alice (her policy is in
    // her client.toml now), ending at bob's mailbox server.
    let alice_dir = layout.dir.join("clients").join("alice");
    // The demo's clients live in encrypted stores.
    let alice = bastet(&net, &alice_dir, Some(bastet_testnet::DEMO_PASSPHRASES[0]));
    let sample: Value = serde_json::from_str(
        &alice
            .run(&["route", "sample", "--count", "40", "--to", "bob", "--json"])
            .await,
    )
    .unwrap();
    let routes = sample["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 40);
    let mut neutral = HashSet::new();
    for r in routes {
        assert_meets_seed_policy(&layout, r, bob_server);
        neutral.insert(r[1]["node"].as_str().unwrap().to_string());
    }
    assert!(neutral.len() >= 2, "the neutral hop varies: {neutral:?}");
    let show: Value = serde_json::from_str(&alice.run(&["route", "show", "--json"]).await).unwrap();
    let hops = show["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 3);
    for (hop, wanted) in hops.iter().zip([&["DE"][..], &["CH", "IS"], &["NL"]]) {
        let eligible = hop["eligible"].as_array().unwrap();
        assert!(!eligible.is_empty(), "three mixes per jurisdiction: {hop}");
        for n in eligible {
            assert!(
                wanted.contains(&n["jurisdiction"].as_str().unwrap()),
                "{hop}"
            );
        }
    }

    // A policy no node meets: `bastet send` refuses before sending and
    // names the hop class and what it asked for.
    let carol = net.client("carol", "mailbox-a").await.unwrap();
    let dave = net.client("dave", "mailbox-b").await.unwrap();
    carol.befriend(&dave).await.unwrap();
    carol
        .set_route_policy(&policy("domestic=DE,offshore=US,external=NL"))
        .unwrap();
    let sent = carol.send(dave.name(), "never sent").await;
    match sent {
        Err(Error::RouteRefused(why)) => {
            assert!(why.contains("class \"offshore\""), "{why}");
            assert!(why.contains("jurisdictions US"), "{why}");
            assert!(why.contains("offers"), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    net.stop();
}

/// Runs the `bastet` binary on one client's data dir (its store's
/// passphrase, if any, on standard input).
struct Bastet {
    program: std::path::PathBuf,
    dir: std::path::PathBuf,
    passphrase: Option<&'static str>,
}

fn bastet(net: &Network, dir: &Path, passphrase: Option<&'static str>) -> Bastet {
    Bastet {
        program: net.binaries().path("bastet"),
        dir: dir.to_path_buf(),
        passphrase,
    }
}

impl Bastet {
    async fn run(&self, args: &[&str]) -> String {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg("--data-dir").arg(&self.dir);
        if self.passphrase.is_some() {
            cmd.args(["--passphrase-fd", "0"]);
        }
        let mut child = cmd
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some(p) = self.passphrase {
            stdin.write_all(format!("{p}\n").as_bytes()).await.unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "bastet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_exits_non_zero_naming_the_hop_class_it_cannot_meet() {
    let bins = Path::new(env!("CARGO_BIN_EXE_bastet-testnet"))
        .parent()
        .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bastet-testnet"))
        .env("BASTET_BIN_DIR", bins)
        .args([
            "demo",
            "--jurisdictions",
            "DE,CH,NL",
            "--policy",
            "domestic=DE,neutral=CH+IS,offshore=US",
            "--template",
            "domestic,neutral,offshore",
            "--messages",
            "1",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("class \"offshore\""), "{stderr}");
    assert!(stderr.contains("nothing was sent"), "{stderr}");
}
