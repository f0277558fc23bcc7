//! What a global passive adversary (GPA) sees, and what only the simulator
//! knows.
//!
//! The adversary sees every link: when a packet went from which endpoint
//! to which, never its bytes (all packets have the same length, links are
//! TLS). That is an [`Observation`]: the public topology ([`TraceMeta`]:
//! which mix is in which layer, which mailbox server each client polls,
//! the public delay parameters) and the time-ordered [`LinkEvent`]s. The
//! [`GroundTruth`] says, for each real message, who sent it to whom and
//! which link events it made; the analysis uses it only to choose which
//! arrivals to attack and to score the answers.
//!
//! On disk a trace is JSON lines: one `meta` line first, then one `link`
//! line per link event in time order (a link event's id is its position
//! among the `link` lines, from 0), then any `message` lines:
//!
//! ```text
//! {"type":"meta","version":1,"clients":2,"mix_layers":[1,2,3],"mailboxes":1,"client_mailbox":[0,0],"mean_hop_delay_us":50000,"max_hop_delay_us":1000000,"duration_us":60000000,"description":"..."}
//! {"type":"link","t_us":1200,"from":"client:0","to":"mix:0"}
//! {"type":"message","sender":0,"recipient":1,"queued_us":900,"links":[0,4,9,12]}
//! ```
//!
//! A capture from the real testnet becomes a trace by naming each host as
//! an endpoint and writing its link lines sorted by time.

use std::fmt;
use std::io::{BufRead, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Version of the trace format written by this crate.
pub const TRACE_VERSION: u32 = 1;

/// Longest line accepted when reading a trace: a `meta` line lists one
/// mailbox per client, so this bounds the clients of a trace too.
pub const MAX_TRACE_LINE: usize = 16 << 20;

/// One end of a link, by index within its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Endpoint {
    /// A client.
    Client(u32),
    /// A mixnode.
    Mix(u32),
    /// A mailbox server.
    Mailbox(u32),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Client(i) => write!(f, "client:{i}"),
            Endpoint::Mix(i) => write!(f, "mix:{i}"),
            Endpoint::Mailbox(i) => write!(f, "mailbox:{i}"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (kind, index) = s
            .split_once(':')
            .ok_or_else(|| format!("endpoint {s:?} is not kind:index"))?;
        let index: u32 = index
            .parse()
            .map_err(|_| format!("endpoint {s:?}: {index:?} is not an index"))?;
        match kind {
            "client" => Ok(Endpoint::Client(index)),
            "mix" => Ok(Endpoint::Mix(index)),
            "mailbox" => Ok(Endpoint::Mailbox(index)),
            _ => Err(format!(
                "endpoint {s:?}: kind must be client, mix or mailbox"
            )),
        }
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

/// One packet crossing one link, as the adversary sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEvent {
    /// When, in microseconds since the start of the trace. Links are
    /// modelled without latency: sent and received at the same instant.
    pub t_us: u64,
    /// The sender of the packet on this link.
    pub from: Endpoint,
    /// The receiver.
    pub to: Endpoint,
}

/// The public facts about the network a trace was taken on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceMeta {
    /// [`TRACE_VERSION`].
    pub version: u32,
    /// Clients, `client:0` to `client:{clients-1}`.
    pub clients: u32,
    /// The layer (1, 2, …) of each mix, by mix index (public: the
    /// consensus).
    pub mix_layers: Vec<u8>,
    /// Mailbox servers.
    pub mailboxes: u32,
    /// Each client's mailbox server (public: the adversary sees whom each
    /// client polls).
    pub client_mailbox: Vec<u32>,
    /// Mean per-hop mix delay 1/μ the clients use, microseconds.
    pub mean_hop_delay_us: u64,
    /// Longest per-hop delay they ask for (the cut of the exponential).
    pub max_hop_delay_us: u64,
    /// How long the trace covers.
    pub duration_us: u64,
    /// Free text: how the trace was made.
    pub description: String,
}

impl TraceMeta {
    /// How many mix layers the network has.
    pub fn layers(&self) -> u8 {
        self.mix_layers.iter().copied().max().unwrap_or(0)
    }

    /// Checks the topology is consistent.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.version != TRACE_VERSION {
            return Err(format!(
                "version {} (this tool reads {TRACE_VERSION})",
                self.version
            ));
        }
        if self.clients == 0 || self.mailboxes == 0 || self.mix_layers.is_empty() {
            return Err("a network needs clients, mixes and mailbox servers".into());
        }
        if self.client_mailbox.len() != self.clients as usize {
            return Err(format!(
                "client_mailbox lists {} clients, clients is {}",
                self.client_mailbox.len(),
                self.clients
            ));
        }
        if let Some(bad) = self.client_mailbox.iter().find(|m| **m >= self.mailboxes) {
            return Err(format!(
                "client_mailbox names mailbox {bad}, there are {}",
                self.mailboxes
            ));
        }
        let layers = self.layers();
        for l in 1..=layers {
            if !self.mix_layers.contains(&l) {
                return Err(format!("mix layer {l} of 1..={layers} has no mix"));
            }
        }
        if self.mix_layers.contains(&0) {
            return Err("mix layers are numbered from 1".into());
        }
        if self.mean_hop_delay_us > self.max_hop_delay_us {
            return Err("mean_hop_delay_us is more than max_hop_delay_us".into());
        }
        Ok(())
    }

    /// Whether `e` names an endpoint of this network.
    pub fn knows(&self, e: Endpoint) -> bool {
        match e {
            Endpoint::Client(i) => i < self.clients,
            Endpoint::Mix(i) => (i as usize) < self.mix_layers.len(),
            Endpoint::Mailbox(i) => i < self.mailboxes,
        }
    }
}

/// What the adversary has: the topology and every link event, in time
/// order. A link event's id is its index in `events`.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The public topology and delay parameters.
    pub meta: TraceMeta,
    /// Link events, non-decreasing in time.
    pub events: Vec<LinkEvent>,
}

/// One real message packet, as only the simulator knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageTruth {
    /// The client that sent it.
    pub sender: u32,
    /// The client it was for.
    pub recipient: u32,
    /// When the workload queued it at the sender, microseconds.
    pub queued_us: u64,
    /// The link events it made, client to first mix first, last mix to the
    /// recipient's mailbox server last.
    pub links: Vec<u64>,
}

impl MessageTruth {
    /// The link event of its arrival at the recipient's mailbox server.
    pub fn arrival(&self) -> Option<u64> {
        self.links.last().copied()
    }

    /// The link event of its departure from the sender.
    pub fn departure(&self) -> Option<u64> {
        self.links.first().copied()
    }
}

/// The simulator's record of the real messages of a trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroundTruth {
    /// Real messages that reached their mailbox server, in arrival order.
    pub messages: Vec<MessageTruth>,
}

/// An observation and, when the trace comes from the simulator, its ground
/// truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// What the adversary sees.
    pub observation: Observation,
    /// What only the simulator knows.
    pub truth: GroundTruth,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Meta(TraceMeta),
    Link(LinkEvent),
    Message(MessageTruth),
}

impl Trace {
    /// Writes the trace as JSON lines.
    pub fn write_jsonl<W: Write>(&self, mut out: W) -> std::io::Result<()> {
        let line = |l: &Line, out: &mut W| -> std::io::Result<()> {
            serde_json::to_writer(&mut *out, l)?;
            out.write_all(b"\n")
        };
        line(&Line::Meta(self.observation.meta.clone()), &mut out)?;
        for e in &self.observation.events {
            line(&Line::Link(*e), &mut out)?;
        }
        for m in &self.truth.messages {
            line(&Line::Message(m.clone()), &mut out)?;
        }
        out.flush()
    }

    /// Reads a JSON-lines trace, checking every line: the meta line first,
    /// link events in time order between known endpoints, message lines
    /// naming existing link events.
    pub fn read_jsonl<R: BufRead>(mut input: R) -> Result<Trace> {
        let mut meta: Option<TraceMeta> = None;
        let mut events: Vec<LinkEvent> = Vec::new();
        let mut messages: Vec<(usize, MessageTruth)> = Vec::new();
        let mut buf = String::new();
        let mut number = 0;
        loop {
            buf.clear();
            let read = std::io::Read::take(&mut input, MAX_TRACE_LINE as u64 + 1)
                .read_line(&mut buf)
                .map_err(|e| Error::BadTrace {
                    line: number + 1,
                    why: e.to_string(),
                })?;
            if read == 0 {
                break;
            }
            number += 1;
            let bad = |why: String| Error::BadTrace { line: number, why };
            if buf.len() > MAX_TRACE_LINE {
                return Err(bad(format!("longer than {MAX_TRACE_LINE} bytes")));
            }
            let text = buf.trim();
            if text.is_empty() {
                continue;
            }
            let line: Line = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
            match (line, &meta) {
                (Line::Meta(m), None) => {
                    m.validate().map_err(bad)?;
                    meta = Some(m);
                }
                (Line::Meta(_), Some(_)) => return Err(bad("a second meta line".into())),
                (_, None) => return Err(bad("the first line must be the meta line".into())),
                (Line::Link(e), Some(m)) => {
                    for end in [e.from, e.to] {
                        if !m.knows(end) {
                            return Err(bad(format!("{end} is not in the network")));
                        }
                    }
                    if e.from == e.to {
                        return Err(bad(format!("a link from {} to itself", e.from)));
                    }
                    if let Some(last) = events.last()
                        && e.t_us < last.t_us
                    {
                        return Err(bad(format!(
                            "t_us {} is before the previous link event's {}: sort the links by time",
                            e.t_us, last.t_us
                        )));
                    }
                    if !messages.is_empty() {
                        return Err(bad("link lines must come before message lines".into()));
                    }
                    events.push(e);
                }
                (Line::Message(msg), Some(m)) => {
                    if msg.sender >= m.clients || msg.recipient >= m.clients {
                        return Err(bad("sender or recipient is not a client".into()));
                    }
                    if msg.links.is_empty() {
                        return Err(bad("a message with no link events".into()));
                    }
                    messages.push((number, msg));
                }
            }
        }
        let meta = meta.ok_or(Error::BadTrace {
            line: number,
            why: "no meta line".into(),
        })?;
        for (line, m) in &messages {
            if let Some(bad) = m.links.iter().find(|id| **id >= events.len() as u64) {
                return Err(Error::BadTrace {
                    line: *line,
                    why: format!(
                        "link event {bad} does not exist ({} link lines)",
                        events.len()
                    ),
                });
            }
        }
        Ok(Trace {
            observation: Observation { meta, events },
            truth: GroundTruth {
                messages: messages.into_iter().map(|(_, m)| m).collect(),
            },
        })
    }

    /// Reads the trace file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Trace> {
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Trace::read_jsonl(std::io::BufReader::new(file))
    }

    /// Writes the trace to the file at `path`.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let io = |source| Error::Io {
            path: path.into(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        self.write_jsonl(std::io::BufWriter::new(file)).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TraceMeta {
        TraceMeta {
            version: TRACE_VERSION,
            clients: 2,
            mix_layers: vec![1, 2, 3],
            mailboxes: 1,
            client_mailbox: vec![0, 0],
            mean_hop_delay_us: 50_000,
            max_hop_delay_us: 1_000_000,
            duration_us: 10_000_000,
            description: "test".into(),
        }
    }

    fn trace() -> Trace {
        let ev = |t_us, from, to| LinkEvent { t_us, from, to };
        Trace {
            observation: Observation {
                meta: meta(),
                events: vec![
                    ev(10, Endpoint::Client(0), Endpoint::Mix(0)),
                    ev(20, Endpoint::Mix(0), Endpoint::Mix(1)),
                    ev(30, Endpoint::Mix(1), Endpoint::Mix(2)),
                    ev(40, Endpoint::Mix(2), Endpoint::Mailbox(0)),
                ],
            },
            truth: GroundTruth {
                messages: vec![MessageTruth {
                    sender: 0,
                    recipient: 1,
                    queued_us: 5,
                    links: vec![0, 1, 2, 3],
                }],
            },
        }
    }

    #[test]
    fn traces_round_trip_through_json_lines() {
        let t = trace();
        let mut bytes = Vec::new();
        t.write_jsonl(&mut bytes).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("{\"type\":\"meta\""));
        assert!(
            text.contains("{\"type\":\"link\",\"t_us\":10,\"from\":\"client:0\",\"to\":\"mix:0\"}")
        );
        assert_eq!(Trace::read_jsonl(&bytes[..]).unwrap(), t);
    }

    fn rejects(text: &str, line: usize, why: &str) {
        match Trace::read_jsonl(text.as_bytes()) {
            Err(Error::BadTrace { line: l, why: w }) => {
                assert_eq!(l, line, "{w}");
                assert!(w.contains(why), "{w}");
            }
            other => panic!("accepted {text:?}: {other:?}"),
        }
    }

    #[test]
    fn bad_traces_are_refused_with_the_line_at_fault() {
        let mut bytes = Vec::new();
        trace().write_jsonl(&mut bytes).unwrap();
        let good = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = good.lines().collect();
        let meta = lines[0];
        rejects(lines[1], 1, "first line must be the meta");
        rejects("", 0, "no meta line");
        rejects(&format!("{meta}\n{meta}"), 2, "second meta");
        rejects(
            &format!("{meta}\n{}\n{}", lines[2], lines[1]),
            3,
            "sort the links",
        );
        rejects(
            &format!(
                "{meta}\n{{\"type\":\"link\",\"t_us\":1,\"from\":\"mix:7\",\"to\":\"mix:0\"}}"
            ),
            2,
            "mix:7 is not in the network",
        );
        rejects(
            &format!(
                "{meta}\n{{\"type\":\"link\",\"t_us\":1,\"from\":\"router:1\",\"to\":\"mix:0\"}}"
            ),
            2,
            "kind must be",
        );
        rejects(
            &format!(
                "{meta}\n{}\n{{\"type\":\"message\",\"sender\":0,\"recipient\":1,\"queued_us\":0,\"links\":[9]}}",
                lines[1]
            ),
            3,
            "link event 9 does not exist",
        );
        rejects(&format!("{meta}\nnot json"), 2, "expected");
        let bad_meta = meta.replace("\"client_mailbox\":[0,0]", "\"client_mailbox\":[0,3]");
        rejects(&bad_meta, 1, "names mailbox 3");
        let gap = meta.replace("\"mix_layers\":[1,2,3]", "\"mix_layers\":[1,3]");
        rejects(&gap, 1, "layer 2");
    }
}
