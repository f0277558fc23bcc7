//! Readiness by probing: one Sphinx packet along every route a client could
//! pick, addressed to a mailbox nobody registered, so that each mailbox
//! server drops it and counts it as `unknown_mailbox`.
//!
//! A consensus listing every relay is not enough: a mixnode that fetched an
//! earlier, partial consensus (or whose last refresh failed) drops packets
//! for relays it does not know yet (`unknown_next_hop`) until it refreshes.
//! Only packets that arrive prove that every hop knows its next one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bastet_directory::{Descriptor, Role, VerifiedConsensus};
use bastet_sphinx::{FinalPayload, Hop, MailboxId, NodeId, Packet, build, fragment};
use tokio::io::AsyncWriteExt;

use crate::layout::{Layout, RelayNode};
use crate::network::http_get;
use crate::{Error, Result, metric_sum};

/// How long one round waits for its probes to be counted.
const ROUND_WAIT: Duration = Duration::from_secs(3);
/// Pause between rounds.
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// Where a mailbox server counts a packet for a mailbox it does not hold.
const UNKNOWN_MAILBOX: (&str, &str) = (
    "bastet_mailbox_packets_dropped",
    "reason=\"unknown_mailbox\"",
);

/// Sends rounds of probes until one round arrives whole at every mailbox
/// server, or `deadline` passes. With the loss hook on (`--loss`), a round
/// also counts if every probe missing was dropped by the hook and none for
/// another reason: a whole round would be rare, and the probes that got
/// through still show the hops know their next ones.
pub(crate) async fn probe_every_route(
    layout: &Layout,
    consensus: &VerifiedConsensus,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    let routes = routes(layout, consensus);
    loop {
        let before = counts(layout).await;
        let lost_before = injected_loss(layout).await;
        let sent = send_round(&routes).await;
        let until = Instant::now() + ROUND_WAIT;
        let mut missing;
        loop {
            let now = counts(layout).await;
            missing = shortfall(&routes, &before, &now);
            let arrived: f64 = now
                .iter()
                .map(|(name, n)| n - before.get(name).copied().unwrap_or(0.0))
                .sum();
            let lost = injected_loss(layout).await - lost_before;
            if lost > 0.0 && arrived + lost >= routes.len() as f64 {
                missing.clear();
            }
            if missing.is_empty() || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let last = match sent {
            Ok(()) if missing.is_empty() => return Ok(()),
            Ok(()) => format!("probes did not all arrive: {}", missing.join(", ")),
            Err(e) => format!("sending probes failed: {e}"),
        };
        tracing::debug!("{last}");
        if Instant::now() >= deadline {
            let drops = mix_drops(layout).await;
            return Err(Error::NotReady {
                secs: timeout.as_secs(),
                waiting_for: format!(
                    "packets to cross every route ({last}; mixnode drops: {drops})"
                ),
                dir: layout.dir.clone(),
            });
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

/// One route: the relays' names, descriptors and the mailbox server's name.
struct Route<'a> {
    hops: [&'a Descriptor; 4],
    mailbox: &'a str,
}

/// Every combination of a layer-1, layer-2 and layer-3 mix (as the
/// consensus assigned them) and a mailbox server in the layout.
fn routes<'a>(layout: &'a Layout, consensus: &'a VerifiedConsensus) -> Vec<Route<'a>> {
    let described = |r: &'a RelayNode| {
        NodeId::from_hex(&r.node_id)
            .and_then(|id| consensus.node(&id))
            .map(|d| (r, d))
    };
    let of = |role: Role, layer: Option<u8>| -> Vec<(&'a RelayNode, &'a Descriptor)> {
        layout
            .relays
            .iter()
            .filter(|r| r.role == role)
            .filter_map(described)
            .filter(|(_, d)| consensus.layer_of(&d.node_id()) == layer)
            .collect()
    };
    let (l1, l2, l3) = (
        of(Role::Mix, Some(1)),
        of(Role::Mix, Some(2)),
        of(Role::Mix, Some(3)),
    );
    let mut out = Vec::new();
    for (mailbox, mb) in of(Role::Mailbox, None) {
        for (_, a) in &l1 {
            for (_, b) in &l2 {
                for (_, c) in &l3 {
                    out.push(Route {
                        hops: [a, b, c, mb],
                        mailbox: &mailbox.name,
                    });
                }
            }
        }
    }
    out
}

fn packet(route: &Route<'_>) -> Result<Packet> {
    let hops: Vec<Hop> = route
        .hops
        .iter()
        .map(|d| Hop {
            node: d.node_id(),
            sphinx_key: d.sphinx_public(),
            delay: Duration::ZERO,
        })
        .collect();
    let mut nobody = [0u8; 32];
    rand::fill(&mut nobody[..]);
    // A final payload as clients send it (without an ack request), so that
    // the mailbox server reads it and only then finds the mailbox unknown.
    let probe = fragment(b"bastet-testnet probe", &mut rand::rng())?;
    let payload = probe
        .first()
        .map(|f| FinalPayload::new(None, f).to_bytes())
        .unwrap_or_default();
    Ok(build(&hops, &MailboxId(nobody), &payload)?)
}

/// Sends one probe per route, over one pinned TLS connection per first hop.
async fn send_round(routes: &[Route<'_>]) -> std::result::Result<(), String> {
    let mut by_first: BTreeMap<&str, (&Descriptor, Vec<Packet>)> = BTreeMap::new();
    for r in routes {
        let p = packet(r).map_err(|e| e.to_string())?;
        by_first
            .entry(r.hops[0].addr.as_str())
            .or_insert((r.hops[0], Vec::new()))
            .1
            .push(p);
    }
    for (addr, (first, packets)) in by_first {
        let send = async {
            let mut link = bastet_link::connect(addr, first.pin())
                .await
                .map_err(|e| e.to_string())?;
            for p in &packets {
                bastet_link::write_frame(&mut link, p.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            link.shutdown().await.map_err(|e| e.to_string())
        };
        tokio::time::timeout(ROUND_WAIT, send)
            .await
            .map_err(|_| format!("{addr}: timed out"))?
            .map_err(|e| format!("{addr}: {e}"))?;
    }
    Ok(())
}

/// Each mailbox server's `unknown_mailbox` count (missing if unreachable).
async fn counts(layout: &Layout) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for r in layout.relays.iter().filter(|r| r.role == Role::Mailbox) {
        if let Some((200, text)) = http_get(r.metrics_listen, "/metrics").await {
            out.insert(
                r.name.clone(),
                metric_sum(&text, UNKNOWN_MAILBOX.0, UNKNOWN_MAILBOX.1),
            );
        }
    }
    out
}

/// Packets the mixnodes' loss hook dropped so far, over all mixnodes.
async fn injected_loss(layout: &Layout) -> f64 {
    let mut total = 0.0;
    for r in layout.relays.iter().filter(|r| r.role == Role::Mix) {
        if let Some((200, text)) = http_get(r.metrics_listen, "/metrics").await {
            total += metric_sum(
                &text,
                "bastet_mixnode_packets_dropped",
                "reason=\"injected_loss\"",
            );
        }
    }
    total
}

/// Mailbox servers that counted fewer probes than were sent to them.
fn shortfall(
    routes: &[Route<'_>],
    before: &BTreeMap<String, f64>,
    now: &BTreeMap<String, f64>,
) -> Vec<String> {
    let mut expected: BTreeMap<&str, f64> = BTreeMap::new();
    for r in routes {
        *expected.entry(r.mailbox).or_default() += 1.0;
    }
    expected
        .into_iter()
        .filter_map(|(name, want)| {
            let got =
                now.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0);
            (got < want).then(|| format!("{name} counted {got} of {want}"))
        })
        .collect()
}

/// The mixnodes' non-zero drop counters, e.g. `mix3a unknown_next_hop=4`.
async fn mix_drops(layout: &Layout) -> String {
    let mut out = Vec::new();
    for r in layout.relays.iter().filter(|r| r.role != Role::Mailbox) {
        let Some((200, text)) = http_get(r.metrics_listen, "/metrics").await else {
            out.push(format!("{} unreachable", r.name));
            continue;
        };
        for line in text
            .lines()
            .filter(|l| l.starts_with("bastet_mixnode_packets_dropped"))
        {
            let reason = line.split('"').nth(1).unwrap_or("?");
            let value = line.rsplit(' ').next().unwrap_or("0");
            if value != "0" {
                out.push(format!("{} {reason}={value}", r.name));
            }
        }
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}
