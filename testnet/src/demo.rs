//! The demo: two clients on a fresh network, N messages from one to the
//! other, and a report of each message's route and latency.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::client::{Client, Payload, RouteHop, Sent};
use crate::layout::short;
use crate::{Error, Network, Result};

/// What to send.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How many messages.
    pub messages: usize,
    /// Bytes of text per message.
    pub size: usize,
    /// How long to wait for them to arrive after sending.
    pub timeout: Duration,
    /// Pause between two sends (to spread messages over epochs).
    pub spacing: Duration,
    /// The sending client's route policy (`--policy`, `--policy-file`).
    pub policy: Option<bastet_client::RoutePolicy>,
    /// Both clients' traffic parameters (`--preset`, `--payload-rate`).
    pub traffic: bastet_client::TrafficConfig,
}

/// Messages up to this many bytes are sent as text on the command line;
/// longer ones as a file (`bastet send --file`), saved by the recipient's
/// `inbox --save-dir` and compared byte for byte.
pub const INLINE_TEXT_LIMIT: usize = 1800;
/// Largest `--size`: what one message carries.
pub const MAX_SIZE: usize = 1 << 20;
/// The size of each demo client's encrypted store.
pub const DEMO_STORE_SIZE: &str = "32MiB";
/// The store passphrases of the demo's alice and bob (throwaway clients:
/// with `--keep`, `bastet --data-dir DIR store info` opens them).
pub const DEMO_PASSPHRASES: [&str; 2] = [
    "alice's demo store passphrase",
    "bob's demo store passphrase",
];

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            messages: 3,
            size: 200,
            timeout: Duration::from_secs(60),
            spacing: Duration::ZERO,
            policy: None,
            traffic: bastet_client::TrafficConfig::default(),
        }
    }
}

/// The outcome of one message.
#[derive(Clone, Debug, Serialize)]
pub struct MessageReport {
    /// Its id.
    pub message_id: String,
    /// The route the sender chose, mixes then the recipient's mailbox server.
    pub route: Vec<RouteHop>,
    /// Whether it arrived intact and with a verified signature.
    pub delivered: bool,
    /// Time from sending to the mailbox server storing it, if delivered.
    pub latency_ms: Option<u64>,
    /// The consensus epoch (and Sphinx keys) it was sent in.
    pub epoch: u64,
    /// Fragments (packets) it was cut into.
    pub fragments: usize,
    /// Fragments sent again because their ack did not come back in time.
    pub retransmissions: u32,
    /// The sender's final state for it: `stored` (every fragment
    /// acknowledged by the recipient's mailbox server) or `failed`.
    pub state: String,
    /// How many times the recipient's inbox showed it (1: exactly once).
    pub shown: usize,
}

/// The directory consensus a demo ran under.
#[derive(Clone, Debug, Serialize)]
pub struct ConsensusReport {
    /// The epoch of the last consensus used.
    pub epoch: u64,
    /// Authority signatures on it.
    pub signatures: usize,
    /// Authorities in the network.
    pub authorities: usize,
    /// Signatures required.
    pub threshold: usize,
    /// Epochs the messages were sent in, first to last (more than one: the
    /// Sphinx keys rotated while sending).
    pub epochs: Vec<u64>,
}

/// The demo's result; `--json` prints exactly this.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    /// Messages sent.
    pub sent: usize,
    /// Messages delivered intact.
    pub delivered: usize,
    /// Retransmissions over all messages.
    pub retransmissions: u32,
    /// Whether every delivered message was shown exactly once.
    pub exactly_once: bool,
    /// Each message, in the order sent.
    pub messages: Vec<MessageReport>,
    /// The consensus the messages were routed with.
    pub consensus: ConsensusReport,
    /// The sender's route policy, if one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<bastet_client::RoutePolicy>,
    /// Where the network's files are, if they were kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl DemoReport {
    /// Whether every message arrived intact, exactly once.
    pub fn all_delivered(&self) -> bool {
        self.delivered == self.sent && self.exactly_once
    }

    /// The human summary: one line per message with its route and latency,
    /// then `delivered/sent delivered`.
    pub fn to_human(&self) -> String {
        let c = &self.consensus;
        let mut s = format!(
            "consensus: epoch {}, signed by {} of {} authorities ({} required)\n",
            self.messages.first().map_or(c.epoch, |m| m.epoch),
            c.signatures,
            c.authorities,
            c.threshold
        );
        let mut epoch = self.messages.first().map(|m| m.epoch);
        for (i, m) in self.messages.iter().enumerate() {
            if epoch != Some(m.epoch) {
                s.push_str(&format!(
                    "--- epoch {} -> {}: new consensus, every relay's Sphinx key rotated ---\n",
                    epoch.unwrap_or_default(),
                    m.epoch
                ));
                epoch = Some(m.epoch);
            }
            let outcome = match m.latency_ms {
                Some(ms) if m.delivered => format!(
                    "delivered in {ms} ms ({} fragments, {} retransmissions)",
                    m.fragments, m.retransmissions
                ),
                _ => format!("NOT DELIVERED (sender: {})", m.state),
            };
            s.push_str(&format!(
                "message {}: {}  {outcome}\n",
                i + 1,
                route_text(&m.route)
            ));
        }
        s.push_str(&format!(
            "{}/{} delivered{}, {} retransmissions\n",
            self.delivered,
            self.sent,
            if self.exactly_once {
                ""
            } else {
                " (SOME MORE THAN ONCE)"
            },
            self.retransmissions
        ));
        s
    }
}

/// `mix1 3fa2c1d0 (DE) -> mix2 ... -> mailbox 0badf00d (CH)`.
pub fn route_text(route: &[RouteHop]) -> String {
    route
        .iter()
        .map(|h| format!("{} {} ({})", h.role, short(&h.node), h.jurisdiction))
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// The text of message `i` of `n`: a readable prefix padded with random hex
/// to exactly `size` bytes.
pub fn message_text(i: usize, n: usize, size: usize) -> String {
    let mut text = format!("Bastet demo message {i}/{n} ");
    let mut pad = vec![0u8; size.div_ceil(2)];
    rand::fill(&mut pad[..]);
    text.push_str(&hex::encode(pad));
    text.truncate(size);
    text
}

/// The bytes of message `i` as a file: a readable header, then random
/// bytes, exactly `size` of them.
pub fn message_file(i: usize, n: usize, size: usize) -> Vec<u8> {
    let mut bytes = format!("Bastet demo file {i}/{n}\n").into_bytes();
    let header = bytes.len().min(size);
    bytes.truncate(header);
    let mut rest = vec![0u8; size - header];
    rand::fill(&mut rest[..]);
    bytes.extend_from_slice(&rest);
    bytes
}

/// What was sent and how to check it.
enum Expected {
    Text(String),
    File(Vec<u8>),
}

/// The demo's two clients, each in an encrypted store: alice on
/// mailbox-a and bob on mailbox-b, contacts of each other.
pub(crate) async fn alice_and_bob(network: &Network) -> Result<(Client, Client)> {
    tracing::info!(
        "creating clients alice (on mailbox-a) and bob (on mailbox-b), each in an encrypted store ({DEMO_STORE_SIZE})"
    );
    let alice = network
        .encrypted_client(
            "alice",
            "mailbox-a",
            &[DEMO_PASSPHRASES[0]],
            DEMO_STORE_SIZE,
        )
        .await?;
    let bob = network
        .encrypted_client("bob", "mailbox-b", &[DEMO_PASSPHRASES[1]], DEMO_STORE_SIZE)
        .await?;
    tracing::info!("alice and bob exchange contact cards (files, as they would offline)");
    alice.befriend(&bob).await?;
    Ok((alice, bob))
}

/// Runs the demo on `network`: creates `alice` (mailbox on `mailbox-a`) and
/// `bob` (on `mailbox-b`), starts a `bastet daemon` for each (Poisson
/// sending with drop and loop cover, at `options.traffic`), queues the
/// messages with alice's daemon (each `bastet send` waits until every
/// fragment is acknowledged or the message fails), and polls bob's inbox
/// until all arrived or the timeout passed. A message is delivered if it
/// arrived intact (text equal, file byte-identical) with a verified
/// signature. Both daemons are stopped at the end.
pub async fn run_demo(network: &Network, options: &DemoOptions) -> Result<DemoReport> {
    if options.messages == 0 {
        return Err(Error::InvalidOption("--messages must be at least 1".into()));
    }
    if options.size == 0 || options.size > MAX_SIZE {
        return Err(Error::InvalidOption(format!(
            "--size must be between 1 and {MAX_SIZE} bytes"
        )));
    }
    options
        .traffic
        .params()
        .map_err(|e| Error::InvalidOption(e.to_string()))?;
    let (mut alice, mut bob) = alice_and_bob(network).await?;
    if let Some(policy) = &options.policy {
        tracing::info!("alice routes by policy: {}", policy.template.join(" -> "));
        alice.set_route_policy(policy)?;
    }
    alice.set_traffic(&options.traffic)?;
    bob.set_traffic(&options.traffic)?;
    tracing::info!(
        "starting both clients' daemons (preset {})",
        options.traffic.preset
    );
    let _alice_daemon = alice.start_daemon().await?;
    let _bob_daemon = bob.start_daemon().await?;
    let outgoing = alice.data_dir().join("outgoing");
    std::fs::create_dir_all(&outgoing)
        .map_err(Error::io(format!("creating {}", outgoing.display())))?;

    let mut pending = Vec::new();
    for i in 1..=options.messages {
        if i > 1 && !options.spacing.is_zero() {
            tokio::time::sleep(options.spacing).await;
        }
        let (alice, to) = (alice.clone(), bob.name().to_string());
        if options.size <= INLINE_TEXT_LIMIT {
            let text = message_text(i, options.messages, options.size);
            let expected = Expected::Text(text.clone());
            let task =
                tokio::spawn(
                    async move { alice.send_content(&to, Payload::Text(&text), true).await },
                );
            pending.push((task, expected));
        } else {
            let bytes = message_file(i, options.messages, options.size);
            let path = outgoing.join(format!("message-{i}.bin"));
            std::fs::write(&path, &bytes)
                .map_err(Error::io(format!("writing {}", path.display())))?;
            let task =
                tokio::spawn(
                    async move { alice.send_content(&to, Payload::File(&path), true).await },
                );
            pending.push((task, Expected::File(bytes)));
        }
        tracing::info!("queued message {i}/{}", options.messages);
    }
    let mut sent: Vec<(Sent, Expected)> = Vec::with_capacity(pending.len());
    for (i, (task, expected)) in pending.into_iter().enumerate() {
        let s = task
            .await
            .map_err(|e| Error::InvalidOption(format!("a send task failed: {e}")))??;
        tracing::info!(
            "message {}/{} {} ({} fragments, {} retransmissions): {}",
            i + 1,
            options.messages,
            s.state,
            s.fragments,
            s.retransmissions,
            route_text(&s.route)
        );
        sent.push((s, expected));
    }
    let ids: Vec<String> = sent.iter().map(|(s, _)| s.message_id.clone()).collect();
    let (received, shown) = bob.receive_counted(&ids, options.timeout).await?;
    let messages: Vec<MessageReport> = sent
        .iter()
        .map(|(s, expected)| {
            let got = received.get(&s.message_id).filter(|r| {
                r.verified
                    && r.contact.as_deref() == Some(alice.name())
                    && match expected {
                        Expected::Text(t) => &r.text == t,
                        Expected::File(bytes) => r
                            .file
                            .as_ref()
                            .and_then(|f| f.saved_to.as_ref())
                            .and_then(|p| std::fs::read(p).ok())
                            .is_some_and(|b| &b == bytes),
                    }
            });
            MessageReport {
                message_id: s.message_id.clone(),
                route: s.route.clone(),
                delivered: got.is_some(),
                latency_ms: got.map(|r| r.received_at_ms.saturating_sub(s.sent_at_ms)),
                epoch: s.epoch,
                fragments: s.fragments,
                retransmissions: s.retransmissions,
                state: s.state.clone(),
                shown: shown.get(&s.message_id).copied().unwrap_or(0),
            }
        })
        .collect();
    let mut epochs: Vec<u64> = sent.iter().map(|(s, _)| s.epoch).collect();
    epochs.dedup();
    let last = sent.last().map(|(s, _)| s);
    let layout = network.layout();
    Ok(DemoReport {
        sent: messages.len(),
        delivered: messages.iter().filter(|m| m.delivered).count(),
        retransmissions: messages.iter().map(|m| m.retransmissions).sum(),
        exactly_once: messages.iter().all(|m| m.shown <= 1),
        messages,
        consensus: ConsensusReport {
            epoch: last.map_or(0, |s| s.epoch),
            signatures: last.map_or(0, |s| s.signatures),
            authorities: layout.authorities.len(),
            threshold: layout.threshold,
            epochs,
        },
        policy: options.policy.clone(),
        dir: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(role: &str, node: &str, j: &str) -> RouteHop {
        RouteHop {
            node: node.into(),
            role: role.into(),
            jurisdiction: j.into(),
        }
    }

    #[test]
    fn the_summary_shows_routes_latency_and_the_tally() {
        let route = vec![
            hop("mix1", "3fa2c1d0aa", "DE"),
            hop("mix2", "9a0b1c2dbb", "NL"),
            hop("mix3", "77aa0011cc", "FR"),
            hop("mailbox", "0badf00ddd", "CH"),
        ];
        let report = DemoReport {
            sent: 2,
            delivered: 1,
            retransmissions: 4,
            exactly_once: true,
            messages: vec![
                MessageReport {
                    message_id: "a".into(),
                    route: route.clone(),
                    delivered: true,
                    latency_ms: Some(412),
                    epoch: 41,
                    fragments: 2,
                    retransmissions: 1,
                    state: "stored".into(),
                    shown: 1,
                },
                MessageReport {
                    message_id: "b".into(),
                    route,
                    delivered: false,
                    latency_ms: None,
                    epoch: 42,
                    fragments: 1,
                    retransmissions: 3,
                    state: "failed".into(),
                    shown: 0,
                },
            ],
            consensus: ConsensusReport {
                epoch: 42,
                signatures: 2,
                authorities: 3,
                threshold: 2,
                epochs: vec![41, 42],
            },
            policy: None,
            dir: None,
        };
        let text = report.to_human();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "consensus: epoch 41, signed by 2 of 3 authorities (2 required)"
        );
        assert_eq!(
            lines[1],
            "message 1: mix1 3fa2c1d0 (DE) -> mix2 9a0b1c2d (NL) -> mix3 77aa0011 (FR) \
             -> mailbox 0badf00d (CH)  delivered in 412 ms (2 fragments, 1 retransmissions)"
        );
        assert!(lines[2].starts_with("--- epoch 41 -> 42"), "{text}");
        assert!(
            lines[3].ends_with("NOT DELIVERED (sender: failed)"),
            "{text}"
        );
        assert_eq!(
            text.lines().last().unwrap(),
            "1/2 delivered, 4 retransmissions"
        );
        assert!(!report.all_delivered());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["sent"], 2);
        assert_eq!(json["messages"][0]["route"][3]["role"], "mailbox");
        assert_eq!(json["messages"][0]["latency_ms"], 412);
        assert_eq!(json["consensus"]["epoch"], 42);
        assert_eq!(json["retransmissions"], 4);
        assert_eq!(json["messages"][0]["fragments"], 2);
        assert_eq!(json["messages"][1]["state"], "failed");
        assert_eq!(json["consensus"]["signatures"], 2);
        assert_eq!(json["consensus"]["authorities"], 3);
        assert!(json.get("dir").is_none());
    }

    #[test]
    fn message_texts_have_the_requested_size_and_differ() {
        for size in [1, 2, 20, 200, 201, 2000] {
            let t = message_text(1, 3, size);
            assert_eq!(t.len(), size);
        }
        assert_ne!(message_text(1, 3, 200), message_text(1, 3, 200));
        assert!(message_text(2, 3, 200).starts_with("Bastet demo message 2/3 "));
        for size in [1, 5, 100_000] {
            assert_eq!(message_file(1, 2, size).len(), size);
        }
        assert_ne!(message_file(1, 2, 100), message_file(1, 2, 100));
    }
}
