//! Per-node reliability scores from loop cover (DESIGN.md §5, §6): which
//! relays deliver, estimated from whether the client's own loops came back,
//! and the route-selection weight that follows. Pure: loop outcomes and
//! `now` in, estimates and weights out; persisting them is the caller's.
//!
//! # The estimator
//!
//! A loop crosses every hop of a full route and comes back to the sender's
//! own mailbox, or does not. A lost loop cannot say which hop lost it, so
//! each outcome is charged to every node of its route: a node's tally is
//! the delivered and lost counts of the loops that crossed it. Its
//! delivery estimate is the posterior mean of a Beta prior updated with
//! that tally,
//!
//! ```text
//! rate = (delivered + PRIOR_DELIVERED) / (delivered + lost + PRIOR_DELIVERED + PRIOR_LOST)
//! ```
//!
//! which is the delivery rate of loops through the node. Routes are drawn
//! at random, so a node's co-hops are a fair sample of the network: a good
//! node's tally carries only the network's average loss (spread thinly over
//! many nodes), while a node that drops packets is on *every* loop it loses
//! and on few successful ones, so its rate stands out below the others.
//! The prior (mean 0.9, worth 10 loops) keeps a few unlucky losses from
//! condemning a node that has been seen rarely.
//!
//! Counts decay exponentially with a half-life of [`HALF_LIFE_MS`], so old
//! evidence fades: a node that recovers (or was blamed for someone else's
//! outage) drifts back to the prior, and so to full weight, within a few
//! half-lives, even while it is drawn less often.
//!
//! The weight is the estimate relative to the prior mean, capped at 1 and
//! floored at [`WEIGHT_FLOOR`]: unknown nodes and nodes at least as good as
//! the prior weigh 1, a node that loses half its loops about 0.55, a dead
//! node the floor. Route selection draws proportionally to weight among the
//! nodes the route policy already admits, so a loss that hits every node
//! alike (the client's own link is down) changes no probability; and the
//! floor bounds how far scores can skew selection (20 to 1), so neither a
//! bug nor an adversary who loses packets on purpose can use them to steer
//! all traffic away from a node. Scores never make a node eligible or
//! ineligible: that is the policy's alone.

use std::collections::HashMap;

use bastet_sphinx::NodeId;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Format version of the persisted scores ([`NodeScores::to_json`]).
pub const SCORES_VERSION: u32 = 1;
/// Evidence loses half its weight in this many milliseconds (10 minutes).
pub const HALF_LIFE_MS: u64 = 10 * 60 * 1000;
/// Most nodes scored at once; the one seen longest ago makes room.
pub const MAX_SCORED_NODES: usize = 4096;
/// Lowest weight a node can have: scores make a node less likely, never
/// excluded.
pub const WEIGHT_FLOOR: f64 = 0.05;
/// Pseudo-count of delivered loops in the Beta prior.
pub const PRIOR_DELIVERED: f64 = 9.0;
/// Pseudo-count of lost loops in the Beta prior.
pub const PRIOR_LOST: f64 = 1.0;
/// Longest persisted scores text [`NodeScores::from_json`] reads (2 MiB,
/// several times what [`MAX_SCORED_NODES`] nodes take).
pub const MAX_SCORES_JSON: usize = 2 << 20;
/// Largest count a tally holds: far beyond what decay lets real traffic
/// reach, it keeps a clock that stands still from growing counts forever.
const MAX_COUNT: f64 = 1e12;

/// One node's decayed loop counts as of `updated_ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Tally {
    delivered: f64,
    lost: f64,
    updated_ms: u64,
}

impl Tally {
    /// The counts decayed to `now_ms` (a clock that went back decays
    /// nothing).
    fn at(&self, now_ms: u64) -> (f64, f64) {
        let elapsed = now_ms.saturating_sub(self.updated_ms) as f64;
        let k = (-elapsed / HALF_LIFE_MS as f64).exp2();
        (self.delivered * k, self.lost * k)
    }
}

/// What the scores say about one node, for display.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeScore {
    /// Estimated delivery rate of loops through the node (posterior mean,
    /// prior included), in (0, 1).
    pub delivery_rate: f64,
    /// Decayed count of delivered loops through the node.
    pub delivered: f64,
    /// Decayed count of lost loops through the node.
    pub lost: f64,
    /// Its route-selection weight, in [`WEIGHT_FLOOR`, 1].
    pub weight: f64,
    /// When a loop through it was last recorded (ms, the caller's clock).
    pub last_seen_ms: u64,
}

impl NodeScore {
    /// Decayed loops through the node: how much evidence the estimate has.
    pub fn samples(&self) -> f64 {
        self.delivered + self.lost
    }
}

/// Per-node delivery statistics from loop outcomes, at most
/// [`MAX_SCORED_NODES`] nodes. Times are milliseconds on one clock of the
/// caller's (wall clock if the scores are persisted across restarts).
/// Serialises as the JSON of [`NodeScores::to_json`]; deserialising checks
/// it as [`NodeScores::from_json`] does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ScoresFile", into = "ScoresFile")]
pub struct NodeScores {
    nodes: HashMap<NodeId, Tally>,
}

impl NodeScores {
    /// No evidence yet: every node weighs 1.
    pub fn new() -> Self {
        NodeScores::default()
    }

    /// Records the outcome of a loop over `route` (every relay it crossed,
    /// the client's own mailbox server included), known at `now_ms`:
    /// delivered credits, lost debits, every node on it.
    pub fn record(&mut self, route: &[NodeId], delivered: bool, now_ms: u64) {
        for (i, node) in route.iter().enumerate() {
            if route[..i].contains(node) {
                continue;
            }
            if !self.nodes.contains_key(node) && self.nodes.len() >= MAX_SCORED_NODES {
                self.evict_oldest(route);
            }
            let tally = self.nodes.entry(*node).or_insert(Tally {
                delivered: 0.0,
                lost: 0.0,
                updated_ms: now_ms,
            });
            let (mut d, mut l) = tally.at(now_ms);
            if delivered {
                d += 1.0;
            } else {
                l += 1.0;
            }
            *tally = Tally {
                delivered: d.min(MAX_COUNT),
                lost: l.min(MAX_COUNT),
                updated_ms: tally.updated_ms.max(now_ms),
            };
        }
    }

    /// Drops the node seen longest ago that is not on `keep`.
    fn evict_oldest(&mut self, keep: &[NodeId]) {
        let oldest = self
            .nodes
            .iter()
            .filter(|(id, _)| !keep.contains(id))
            .min_by_key(|(id, t)| (t.updated_ms, **id))
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.nodes.remove(&id);
        }
    }

    /// The route-selection weight of `node` at `now_ms`, in
    /// [[`WEIGHT_FLOOR`], 1]; 1 for a node without evidence.
    pub fn weight(&self, node: &NodeId, now_ms: u64) -> f64 {
        self.nodes
            .get(node)
            .map_or(1.0, |t| weight_of(rate(t.at(now_ms))))
    }

    /// [`NodeScores::weight`] at `now_ms` as a closure, the form
    /// [`crate::choose_policy_route_weighted`] takes.
    pub fn weigher(&self, now_ms: u64) -> impl Fn(&NodeId) -> f64 + '_ {
        move |node| self.weight(node, now_ms)
    }

    /// What the scores say about `node` at `now_ms`, or `None` if no loop
    /// through it is on record.
    pub fn score(&self, node: &NodeId, now_ms: u64) -> Option<NodeScore> {
        self.nodes.get(node).map(|t| {
            let (delivered, lost) = t.at(now_ms);
            let delivery_rate = rate((delivered, lost));
            NodeScore {
                delivery_rate,
                delivered,
                lost,
                weight: weight_of(delivery_rate),
                last_seen_ms: t.updated_ms,
            }
        })
    }

    /// Every scored node with its score at `now_ms`, worst weight first.
    pub fn scores(&self, now_ms: u64) -> Vec<(NodeId, NodeScore)> {
        let mut all: Vec<(NodeId, NodeScore)> = self
            .nodes
            .keys()
            .filter_map(|id| self.score(id, now_ms).map(|s| (*id, s)))
            .collect();
        all.sort_by(|a, b| a.1.weight.total_cmp(&b.1.weight).then(a.0.cmp(&b.0)));
        all
    }

    /// How many nodes are scored.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is scored.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The persisted form: `{"version":1,"nodes":[{"node":"<hex>",
    /// "delivered":f64,"lost":f64,"updated_ms":u64},…]}`, nodes in id order.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&ScoresFile::from(self.clone())).unwrap_or_default()
    }

    /// Reads what [`NodeScores::to_json`] wrote. Refuses, rather than
    /// repairs, text longer than [`MAX_SCORES_JSON`], an unknown version
    /// ([`Error::ScoresVersion`]), and anything malformed: bad JSON or node
    /// id, a node listed twice, a count that is negative or not finite,
    /// more than [`MAX_SCORED_NODES`] nodes ([`Error::CorruptScores`]).
    pub fn from_json(text: &str) -> Result<Self> {
        if text.len() > MAX_SCORES_JSON {
            return Err(Error::CorruptScores(format!(
                "{} bytes, more than the {MAX_SCORES_JSON} scores take",
                text.len()
            )));
        }
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let corrupt = |e: serde_json::Error| Error::CorruptScores(e.to_string());
        let v: Version = serde_json::from_str(text).map_err(corrupt)?;
        if v.version != SCORES_VERSION {
            return Err(Error::ScoresVersion(v.version));
        }
        let file: ScoresFile = serde_json::from_str(text).map_err(corrupt)?;
        NodeScores::try_from(file)
    }
}

/// Posterior mean delivery rate for decayed counts.
fn rate((delivered, lost): (f64, f64)) -> f64 {
    (delivered + PRIOR_DELIVERED) / (delivered + lost + PRIOR_DELIVERED + PRIOR_LOST)
}

/// The estimate relative to the prior mean, in [`WEIGHT_FLOOR`, 1].
fn weight_of(rate: f64) -> f64 {
    let prior = PRIOR_DELIVERED / (PRIOR_DELIVERED + PRIOR_LOST);
    (rate / prior).clamp(WEIGHT_FLOOR, 1.0)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoresFile {
    version: u32,
    nodes: Vec<NodeEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    node: String,
    delivered: f64,
    lost: f64,
    updated_ms: u64,
}

impl From<NodeScores> for ScoresFile {
    fn from(scores: NodeScores) -> Self {
        let mut nodes: Vec<(NodeId, Tally)> = scores.nodes.into_iter().collect();
        nodes.sort_by_key(|(id, _)| *id);
        ScoresFile {
            version: SCORES_VERSION,
            nodes: nodes
                .into_iter()
                .map(|(id, t)| NodeEntry {
                    node: id.to_hex(),
                    delivered: t.delivered,
                    lost: t.lost,
                    updated_ms: t.updated_ms,
                })
                .collect(),
        }
    }
}

impl TryFrom<ScoresFile> for NodeScores {
    type Error = Error;

    fn try_from(file: ScoresFile) -> Result<Self> {
        if file.version != SCORES_VERSION {
            return Err(Error::ScoresVersion(file.version));
        }
        if file.nodes.len() > MAX_SCORED_NODES {
            return Err(Error::CorruptScores(format!(
                "{} nodes, more than the {MAX_SCORED_NODES} ever kept",
                file.nodes.len()
            )));
        }
        let mut nodes = HashMap::with_capacity(file.nodes.len());
        for (i, e) in file.nodes.into_iter().enumerate() {
            let bad = |why: String| Err(Error::CorruptScores(format!("nodes[{i}]: {why}")));
            let Some(id) = NodeId::from_hex(&e.node) else {
                return bad(format!("{:?} is not a node id", e.node));
            };
            for (name, count) in [("delivered", e.delivered), ("lost", e.lost)] {
                if !(count.is_finite() && (0.0..=MAX_COUNT).contains(&count)) {
                    return bad(format!("{name} = {count} is not a count"));
                }
            }
            let tally = Tally {
                delivered: e.delivered,
                lost: e.lost,
                updated_ms: e.updated_ms,
            };
            if nodes.insert(id, tally).is_some() {
                return bad(format!("node {} is listed twice", id.short()));
            }
        }
        Ok(NodeScores { nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    #[test]
    fn unknown_nodes_weigh_one_and_have_no_score() {
        let s = NodeScores::new();
        assert_eq!(s.weight(&id(1), 0), 1.0);
        assert_eq!(s.score(&id(1), 0), None);
        assert!(s.is_empty());
    }

    #[test]
    fn the_node_on_every_lost_loop_stands_out() {
        // Mixes 1..=9 in three layers of three, mailbox 100. Mix 5 (layer
        // 2) drops everything; the others deliver everything. Routes are
        // every combination, as random selection would cover them.
        let mut s = NodeScores::new();
        let mut t = 0;
        for _ in 0..4 {
            for a in 1..=3 {
                for b in 4..=6 {
                    for c in 7..=9 {
                        t += 1_000;
                        s.record(&[id(a), id(b), id(c), id(100)], b != 5, t);
                    }
                }
            }
        }
        let bad = s.weight(&id(5), t);
        for good in [1, 2, 3, 4, 6, 7, 8, 9] {
            let w = s.weight(&id(good), t);
            assert!(w > 2.0 * bad, "node {good}: {w} vs the dropper's {bad}");
        }
        assert!(bad < 0.3, "{bad}");
        let score = s.score(&id(5), t).unwrap();
        assert!(score.delivery_rate < 0.3, "{score:?}");
        assert!(score.samples() > 30.0, "{score:?}");
        assert!(score.last_seen_ms > t - 27_000, "{score:?}");
        // Worst first.
        assert_eq!(s.scores(t)[0].0, id(5));
    }

    #[test]
    fn weights_stay_within_floor_and_one() {
        let mut s = NodeScores::new();
        for i in 0..1_000 {
            s.record(&[id(1)], false, i);
            s.record(&[id(2)], true, i);
        }
        assert_eq!(s.weight(&id(1), 1_000), WEIGHT_FLOOR);
        assert_eq!(s.weight(&id(2), 1_000), 1.0);
    }

    #[test]
    fn decay_brings_a_node_back() {
        let mut s = NodeScores::new();
        for i in 0..200 {
            s.record(&[id(1)], false, i);
        }
        assert_eq!(s.weight(&id(1), 200), WEIGHT_FLOOR);
        // One half-life halves the evidence, which is not yet forgiveness.
        let one = s.weight(&id(1), 200 + HALF_LIFE_MS);
        assert!(one < 0.2, "{one}");
        // Ten half-lives leave 200 / 1024 lost loops: close to the prior.
        let ten = s.weight(&id(1), 200 + 10 * HALF_LIFE_MS);
        assert!(ten > 0.9, "{ten}");
        let score = s.score(&id(1), 200 + 10 * HALF_LIFE_MS).unwrap();
        assert!(score.lost < 0.2, "{score:?}");
        // A clock that goes back decays nothing.
        assert_eq!(s.weight(&id(1), 0), WEIGHT_FLOOR);
    }

    #[test]
    fn a_recovered_node_is_forgiven_by_new_successes_too() {
        let mut s = NodeScores::new();
        for i in 0..50 {
            s.record(&[id(1)], false, i * 1_000);
        }
        let low = s.weight(&id(1), 50_000);
        let mut t = 50_000;
        for _ in 0..100 {
            t += 10_000;
            s.record(&[id(1)], true, t);
        }
        let now = s.weight(&id(1), t);
        assert!(low < 0.2 && now > 0.85, "{low} → {now}");
    }

    #[test]
    fn size_is_bounded_and_the_oldest_seen_goes_first() {
        let mut s = NodeScores::new();
        for i in 0..MAX_SCORED_NODES + 10 {
            let mut raw = [0u8; 32];
            raw[..8].copy_from_slice(&(i as u64).to_le_bytes());
            s.record(&[NodeId(raw)], false, i as u64);
        }
        assert_eq!(s.len(), MAX_SCORED_NODES);
        let first = |i: u64| {
            let mut raw = [0u8; 32];
            raw[..8].copy_from_slice(&i.to_le_bytes());
            NodeId(raw)
        };
        for i in 0..10 {
            assert_eq!(s.score(&first(i), 0), None, "{i} should be evicted");
        }
        assert!(s.score(&first(10), 0).is_some());
        // A route longer than the room left never evicts its own nodes.
        let route: Vec<NodeId> = (0..5).map(|i| id(200 + i)).collect();
        s.record(&route, true, 0);
        assert!(route.iter().all(|n| s.score(n, 0).is_some()));
        assert_eq!(s.len(), MAX_SCORED_NODES);
    }

    #[test]
    fn a_node_twice_on_one_route_is_counted_once() {
        let mut s = NodeScores::new();
        s.record(&[id(1), id(1)], false, 0);
        assert_eq!(s.score(&id(1), 0).unwrap().lost, 1.0);
    }

    #[test]
    fn serde_round_trip() {
        let mut s = NodeScores::new();
        s.record(&[id(1), id(2), id(3)], true, 1_000);
        s.record(&[id(1), id(4), id(3)], false, 2_000);
        let text = s.to_json();
        assert!(text.starts_with("{\"version\":1,"), "{text}");
        // Counts come back to within rounding of their decimal form.
        let same = |a: &NodeScores| {
            a.len() == s.len()
                && s.scores(2_000).iter().all(|(id, want)| {
                    a.score(id, 2_000).is_some_and(|got| {
                        got.last_seen_ms == want.last_seen_ms
                            && (got.delivered - want.delivered).abs() < 1e-12
                            && (got.lost - want.lost).abs() < 1e-12
                    })
                })
        };
        assert!(same(&NodeScores::from_json(&text).unwrap()), "{text}");
        // Through serde directly too, in the same form.
        let via: NodeScores = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert!(same(&via));
        assert_eq!(serde_json::to_string(&s).unwrap(), text);
        assert!(
            NodeScores::from_json(&NodeScores::new().to_json())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn corrupt_files_are_refused_clearly() {
        let entry = format!(
            "{{\"node\":\"{}\",\"delivered\":1.0,\"lost\":0.5,\"updated_ms\":3}}",
            id(1).to_hex()
        );
        let good = format!("{{\"version\":1,\"nodes\":[{entry}]}}");
        assert!(NodeScores::from_json(&good).is_ok());
        let cases = [
            ("", "EOF"),
            ("{\"version\":1", "EOF"),
            ("[1,2]", "line 1"),
            ("{\"version\":1,\"nodes\":[],\"extra\":0}", "extra"),
            (
                &good.replace("\"lost\":0.5", "\"lost\":-0.5"),
                "nodes[0]: lost",
            ),
            (
                &good.replace("\"lost\":0.5", "\"lost\":1e300"),
                "nodes[0]: lost",
            ),
            (&good.replace(&id(1).to_hex(), "zz"), "not a node id"),
            (
                &format!("{{\"version\":1,\"nodes\":[{entry},{entry}]}}"),
                "listed twice",
            ),
        ];
        for (text, needle) in cases {
            let err = NodeScores::from_json(text).unwrap_err();
            assert!(matches!(err, Error::CorruptScores(_)), "{text}: {err}");
            assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
        }
        let err = NodeScores::from_json("{\"version\":2,\"nodes\":\"new\"}").unwrap_err();
        assert!(matches!(err, Error::ScoresVersion(2)), "{err}");
        let huge = " ".repeat(MAX_SCORES_JSON + 1);
        let err = NodeScores::from_json(&huge).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        let many: Vec<String> = (0..=MAX_SCORED_NODES)
            .map(|i| {
                let mut raw = [0u8; 32];
                raw[..8].copy_from_slice(&(i as u64).to_le_bytes());
                format!(
                    "{{\"node\":\"{}\",\"delivered\":0,\"lost\":0,\"updated_ms\":0}}",
                    NodeId(raw).to_hex()
                )
            })
            .collect();
        let text = format!("{{\"version\":1,\"nodes\":[{}]}}", many.join(","));
        let err = NodeScores::from_json(&text).unwrap_err();
        assert!(err.to_string().contains("4097 nodes"), "{err}");
        // Deserialising through serde applies the same checks.
        assert!(serde_json::from_str::<NodeScores>("{\"version\":7,\"nodes\":[]}").is_err());
    }
}
