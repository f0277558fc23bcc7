//! Jurisdiction-aware route policies (DESIGN.md §5): which jurisdictions
//! each hop of a route may be in, which are never crossed, and whether the
//! hops must have distinct operators and jurisdictions. Pure: a consensus,
//! a policy and an RNG in, a route (or a refusal that says why) out.
//!
//! # How a template maps onto the consensus's layers
//!
//! Hop `i` of the template (1-based) is drawn from mix layer `min(i, 3)`:
//! a 3-hop template takes one mix from each of layers 1, 2 and 3, a 4-hop
//! template takes a second, different mix from layer 3 as its fourth hop.
//! The mailbox server follows. Repeating the *last* layer keeps the first
//! mix, the only relay that sees the sender, from telling a 4-hop route
//! from a 3-hop one (its next hop is in layer 2 either way), and the
//! mailbox server still receives from a layer-3 mix. The link layer 3 →
//! layer 3 does show a global observer that the packet is on a longer
//! route, so 4-hop packets form their own, smaller anonymity set on that
//! last link; the extra hop buys one more honest mix (and jurisdiction)
//! between sender and mailbox. A 4-hop template therefore needs two nodes
//! in layer 3 that meet its last two classes (with the distinctness
//! rules), which a jurisdiction has in every epoch once it runs 6 mixes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bastet_directory::{Descriptor, Role, VerifiedConsensus};
use bastet_sphinx::{MAX_HOPS, NodeId};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::reliability::WEIGHT_FLOOR;
use crate::route::{Route, build_route, mailbox_descriptor};
use crate::{Error, Result};

/// Fewest mix hops a template may have.
pub const MIN_MIX_HOPS: usize = 3;
/// Most mix hops a template may have: Sphinx carries at most
/// [`MAX_HOPS`] hops, the mailbox server included.
pub const MAX_MIX_HOPS: usize = 4;
/// The hop class that admits every jurisdiction not avoided; it cannot be
/// redefined.
pub const ANY_CLASS: &str = "any";
/// Whole routes drawn at random before the exhaustive search takes over.
const REJECTION_TRIES: usize = 2_000;
/// Partial routes the exhaustive search may visit.
const SEARCH_BUDGET: usize = 4_000_000;

/// A route policy: the `[route]` section of `client.toml`, or a policy
/// file given with `--policy-file`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicy {
    /// Hop classes by name: each a set of ISO 3166-1 alpha-2 codes.
    #[serde(default)]
    pub classes: BTreeMap<String, Vec<String>>,
    /// The class of each mix hop, first to last (3 or 4 hops); `any` admits
    /// every jurisdiction not avoided.
    #[serde(default = "default_template")]
    pub template: Vec<String>,
    /// Jurisdictions no hop may be in, the recipient's mailbox server
    /// included unless `allow_avoided_mailbox`.
    #[serde(default)]
    pub avoid: Vec<String>,
    /// No two relays of a route (mailbox server included) share an
    /// operator.
    #[serde(default = "default_true")]
    pub distinct_operators: bool,
    /// No two relays of a route (mailbox server included) share a
    /// jurisdiction.
    #[serde(default)]
    pub distinct_jurisdictions: bool,
    /// Send even when the recipient's mailbox server is in an avoided
    /// jurisdiction (with a warning) instead of refusing.
    #[serde(default)]
    pub allow_avoided_mailbox: bool,
}

fn default_template() -> Vec<String> {
    vec![ANY_CLASS.to_string(); MIN_MIX_HOPS]
}

fn default_true() -> bool {
    true
}

impl Default for RoutePolicy {
    /// Three hops in any jurisdiction, distinct operators.
    fn default() -> Self {
        RoutePolicy {
            classes: BTreeMap::new(),
            template: default_template(),
            avoid: Vec::new(),
            distinct_operators: true,
            distinct_jurisdictions: false,
            allow_avoided_mailbox: false,
        }
    }
}

/// One hop of a template and the nodes of the consensus that meet it
/// (class, layer and avoid list; the distinctness rules depend on the
/// other hops and are applied when a route is drawn).
#[derive(Clone, Debug)]
pub struct HopCandidates<'c> {
    /// 1-based position in the route.
    pub hop: usize,
    /// The hop class's name.
    pub class: String,
    /// Its jurisdictions (empty for `any`).
    pub jurisdictions: Vec<String>,
    /// The mix layer the hop is drawn from.
    pub layer: u8,
    /// The eligible mixes.
    pub nodes: Vec<&'c Descriptor>,
}

/// The mix layer hop `hop` (1-based) of a template is drawn from: hops
/// 1, 2, 3 from layers 1, 2, 3, a fourth hop from layer 3 again.
pub fn hop_layer(hop: usize) -> u8 {
    u8::try_from(hop.clamp(1, usize::from(crate::route::LAYERS))).unwrap_or(crate::route::LAYERS)
}

/// Whether `code` is an assigned ISO 3166-1 alpha-2 country code.
pub fn is_country_code(code: &str) -> bool {
    code.len() == 2
        && code.bytes().all(|b| b.is_ascii_uppercase())
        && ISO_3166_ALPHA2.split_ascii_whitespace().any(|c| c == code)
}

impl RoutePolicy {
    /// Three hops, one per layer, any jurisdiction, no distinctness rules:
    /// the selection of a client without a policy.
    pub fn layers_only() -> Self {
        RoutePolicy {
            distinct_operators: false,
            ..RoutePolicy::default()
        }
    }

    /// Parses a policy file (the keys of `[route]` at the top level) and
    /// validates it.
    pub fn from_toml(text: &str) -> Result<Self> {
        let policy: RoutePolicy =
            toml::from_str(text).map_err(|e| Error::Config(e.message().to_string()))?;
        policy.validate("")?;
        Ok(policy)
    }

    /// Checks the policy, naming the key at fault with `prefix` before it
    /// (`route.` in `client.toml`).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let bad = |key: String, why: String| Err(Error::Config(format!("{prefix}{key}: {why}")));
        for (i, code) in self.avoid.iter().enumerate() {
            if !is_country_code(code) {
                return bad(
                    format!("avoid[{i}]"),
                    format!("{code:?} is not an ISO 3166-1 alpha-2 country code (such as DE)"),
                );
            }
        }
        for (name, codes) in &self.classes {
            let key = format!("classes.{name}");
            if name == ANY_CLASS {
                return bad(
                    key,
                    "\"any\" is built in (every jurisdiction not avoided) and cannot be redefined"
                        .into(),
                );
            }
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return bad(
                    key,
                    "a class name is letters, digits, '_' and '-' only".into(),
                );
            }
            if codes.is_empty() {
                return bad(
                    key,
                    "empty: a hop class needs at least one jurisdiction".into(),
                );
            }
            for code in codes {
                if !is_country_code(code) {
                    return bad(
                        key,
                        format!("{code:?} is not an ISO 3166-1 alpha-2 country code (such as DE)"),
                    );
                }
                if self.avoid.contains(code) {
                    return bad(
                        key,
                        format!(
                            "{code} is also in {prefix}avoid: a hop cannot be both required and avoided there"
                        ),
                    );
                }
            }
        }
        let hops = self.template.len();
        if !(MIN_MIX_HOPS..=MAX_MIX_HOPS).contains(&hops) || hops + 1 > MAX_HOPS {
            return bad(
                "template".into(),
                format!(
                    "{hops} mix hops; a route has {MIN_MIX_HOPS} or {MAX_MIX_HOPS} mix hops, then the mailbox server ({MAX_HOPS} hops at most in a Sphinx packet)"
                ),
            );
        }
        for (i, class) in self.template.iter().enumerate() {
            if class != ANY_CLASS && !self.classes.contains_key(class) {
                return bad(
                    format!("template[{i}]"),
                    format!(
                        "unknown hop class {class:?} (defined: {}; or \"any\")",
                        self.class_names()
                    ),
                );
            }
        }
        if self.distinct_jurisdictions {
            for (class, codes) in &self.classes {
                let uses = self.template.iter().filter(|c| *c == class).count();
                if uses > codes.len() {
                    return bad(
                        "distinct_jurisdictions".into(),
                        format!(
                            "class {class:?} is used by {uses} hops but has {} jurisdiction(s): distinct jurisdictions can never be met",
                            codes.len()
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    fn class_names(&self) -> String {
        if self.classes.is_empty() {
            "none".into()
        } else {
            self.classes.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    /// The jurisdictions of `class` (empty for `any`).
    pub fn class_jurisdictions(&self, class: &str) -> Vec<String> {
        self.classes.get(class).cloned().unwrap_or_default()
    }

    fn admits(&self, class: &str, jurisdiction: &str) -> bool {
        if self.avoid.iter().any(|a| a == jurisdiction) {
            return false;
        }
        class == ANY_CLASS
            || self
                .classes
                .get(class)
                .is_some_and(|c| c.iter().any(|j| j == jurisdiction))
    }

    /// Whether the policy avoids `jurisdiction`.
    pub fn avoids(&self, jurisdiction: &str) -> bool {
        self.avoid.iter().any(|a| a == jurisdiction)
    }

    /// This policy with the command line's overrides: `classes` replaces
    /// every class (and, without `template`, makes the template their
    /// names in order), `template` and `avoid` replace theirs.
    pub fn with_overrides(
        &self,
        classes: Option<Vec<(String, Vec<String>)>>,
        template: Option<Vec<String>>,
        avoid: Option<Vec<String>>,
    ) -> RoutePolicy {
        let mut out = self.clone();
        if let Some(classes) = classes {
            if template.is_none() {
                out.template = classes.iter().map(|(n, _)| n.clone()).collect();
            }
            out.classes = classes.into_iter().collect();
        }
        if let Some(t) = template {
            out.template = t;
        }
        if let Some(a) = avoid {
            out.avoid = a;
        }
        out
    }

    /// Each hop of the template with the nodes of `consensus` that meet its
    /// class in its layer and are not avoided.
    pub fn candidates<'c>(&self, consensus: &'c VerifiedConsensus) -> Vec<HopCandidates<'c>> {
        self.template
            .iter()
            .enumerate()
            .map(|(i, class)| {
                let layer = hop_layer(i + 1);
                HopCandidates {
                    hop: i + 1,
                    class: class.clone(),
                    jurisdictions: self.class_jurisdictions(class),
                    layer,
                    nodes: consensus
                        .mixes(layer)
                        .filter(|d| self.admits(class, &d.jurisdiction))
                        .collect(),
                }
            })
            .collect()
    }

    /// Whether `route` (mixes then mailbox server) meets this policy in
    /// `consensus`: classes, layers, avoid list and distinctness rules.
    /// Returns what is wrong.
    pub fn check(
        &self,
        consensus: &VerifiedConsensus,
        route: &[NodeId],
    ) -> std::result::Result<(), String> {
        let Some((mailbox, mixes)) = route.split_last() else {
            return Err("empty route".into());
        };
        if mixes.len() != self.template.len() {
            return Err(format!(
                "{} mix hops, the template has {}",
                mixes.len(),
                self.template.len()
            ));
        }
        let find = |id: &NodeId| {
            consensus
                .node(id)
                .ok_or_else(|| format!("{} is not in the consensus", id.short()))
        };
        let mut all = Vec::new();
        for (i, (id, class)) in mixes.iter().zip(&self.template).enumerate() {
            let d = find(id)?;
            if d.role != Role::Mix || consensus.layer_of(id) != Some(hop_layer(i + 1)) {
                return Err(format!(
                    "hop {} is not a mix of layer {}",
                    i + 1,
                    hop_layer(i + 1)
                ));
            }
            if !self.admits(class, &d.jurisdiction) {
                return Err(format!(
                    "hop {} in {} does not meet class {class:?}",
                    i + 1,
                    d.jurisdiction
                ));
            }
            all.push(d);
        }
        let m = find(mailbox)?;
        if m.role != Role::Mailbox {
            return Err("the last hop is not a mailbox server".into());
        }
        if self.avoids(&m.jurisdiction) && !self.allow_avoided_mailbox {
            return Err(format!(
                "the mailbox server is in avoided {}",
                m.jurisdiction
            ));
        }
        all.push(m);
        compatible(self, &all)
            .then_some(())
            .ok_or_else(|| "the distinctness rules are broken".into())
    }
}

/// Whether the relays in `route` are distinct nodes and meet the policy's
/// distinctness rules pairwise.
fn compatible(policy: &RoutePolicy, route: &[&Descriptor]) -> bool {
    route
        .iter()
        .enumerate()
        .all(|(i, a)| route[..i].iter().all(|b| conflict(policy, a, b).is_none()))
}

/// Which rule two relays of one route would break, if any.
fn conflict(policy: &RoutePolicy, a: &Descriptor, b: &Descriptor) -> Option<&'static str> {
    if a.identity_key == b.identity_key {
        Some("distinct nodes")
    } else if policy.distinct_operators && a.operator == b.operator {
        Some("distinct_operators")
    } else if policy.distinct_jurisdictions && a.jurisdiction == b.jurisdiction {
        Some("distinct_jurisdictions")
    } else {
        None
    }
}

/// What layer `layer` of `consensus` offers, and where the class's
/// jurisdictions are instead: for refusals.
fn offered(consensus: &VerifiedConsensus, layer: u8, wanted: &[String]) -> String {
    let mut in_layer: BTreeMap<&str, usize> = BTreeMap::new();
    for d in consensus.mixes(layer) {
        *in_layer.entry(&d.jurisdiction).or_default() += 1;
    }
    let listing = if in_layer.is_empty() {
        "no mix at all".to_string()
    } else {
        in_layer
            .iter()
            .map(|(j, n)| format!("{j} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut elsewhere: BTreeMap<&str, BTreeSet<u8>> = BTreeMap::new();
    for d in consensus
        .nodes
        .iter()
        .filter(|d| wanted.contains(&d.jurisdiction))
    {
        let place = consensus.layer_of(&d.node_id()).unwrap_or(0);
        elsewhere.entry(&d.jurisdiction).or_default().insert(place);
    }
    let mut s = format!(
        "layer {layer} of consensus epoch {} offers {listing}",
        consensus.epoch
    );
    if !wanted.is_empty() {
        let found: Vec<String> = wanted
            .iter()
            .map(|j| match elsewhere.get(j.as_str()) {
                None => format!("{j}: no node at all"),
                Some(places) => format!(
                    "{j}: {}",
                    places
                        .iter()
                        .map(|l| if *l == 0 {
                            "mailbox server".to_string()
                        } else {
                            format!("layer {l}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
            .collect();
        s.push_str(&format!(
            "; the class's jurisdictions are at {}",
            found.join("; ")
        ));
    }
    s
}

/// Draws a route that meets `policy` in `consensus` and ends at
/// `mailbox_server`: each hop from the mixes of its layer that meet its
/// class and are not avoided, the whole route uniformly at random among
/// those combinations that also meet the distinctness rules (so where the
/// rules do not bind, each hop is uniform over its candidates), fresh on
/// every call. Each mix holds the packet for an Exp(`mean_delay`) delay.
///
/// Refuses, never relaxes: a hop class without an eligible node, rules no
/// combination meets, or a mailbox server in an avoided jurisdiction
/// (unless `allow_avoided_mailbox`, which logs a warning) are errors that
/// name the hop class and what the consensus offers. The policy is assumed
/// valid ([`RoutePolicy::validate`]).
pub fn choose_policy_route<R: Rng + ?Sized>(
    consensus: &VerifiedConsensus,
    policy: &RoutePolicy,
    mailbox_server: &NodeId,
    mean_delay: Duration,
    rng: &mut R,
) -> Result<Route> {
    choose_policy_route_weighted(consensus, policy, mailbox_server, mean_delay, &|_| 1.0, rng)
}

/// [`choose_policy_route`] with each mix weighted by `weight` (for
/// instance [`crate::NodeScores::weigher`]): among the same valid
/// combinations, a route is drawn with probability proportional to the
/// product of its mixes' weights, so where the rules do not bind each hop
/// is drawn among its candidates in proportion to their weights. Weights
/// are clamped to [[`WEIGHT_FLOOR`], 1] (not a number counts as 1): they
/// change probabilities only, by at most 20 to 1, and never which nodes
/// are eligible or whether a route is refused.
pub fn choose_policy_route_weighted<R: Rng + ?Sized>(
    consensus: &VerifiedConsensus,
    policy: &RoutePolicy,
    mailbox_server: &NodeId,
    mean_delay: Duration,
    weight: &dyn Fn(&NodeId) -> f64,
    rng: &mut R,
) -> Result<Route> {
    let chosen = choose_policy_nodes_weighted(consensus, policy, mailbox_server, weight, rng)?;
    Ok(build_route(consensus, &chosen, mean_delay, rng))
}

/// The relays of a route drawn as [`choose_policy_route`] does, mixes
/// first, mailbox server last.
pub fn choose_policy_nodes<'c, R: Rng + ?Sized>(
    consensus: &'c VerifiedConsensus,
    policy: &RoutePolicy,
    mailbox_server: &NodeId,
    rng: &mut R,
) -> Result<Vec<&'c Descriptor>> {
    choose_policy_nodes_weighted(consensus, policy, mailbox_server, &|_| 1.0, rng)
}

/// The relays of a route drawn as [`choose_policy_route_weighted`] does,
/// mixes first, mailbox server last.
pub fn choose_policy_nodes_weighted<'c, R: Rng + ?Sized>(
    consensus: &'c VerifiedConsensus,
    policy: &RoutePolicy,
    mailbox_server: &NodeId,
    weight: &dyn Fn(&NodeId) -> f64,
    rng: &mut R,
) -> Result<Vec<&'c Descriptor>> {
    let mailbox = mailbox_descriptor(consensus, mailbox_server)?;
    if policy.avoids(&mailbox.jurisdiction) {
        if !policy.allow_avoided_mailbox {
            return Err(Error::MailboxServerAvoided {
                node: mailbox.node_id().to_hex(),
                jurisdiction: mailbox.jurisdiction.clone(),
            });
        }
        tracing::warn!(
            jurisdiction = %mailbox.jurisdiction,
            "the recipient's mailbox server is in an avoided jurisdiction; sending anyway because allow_avoided_mailbox is set"
        );
    }
    let mut hops = policy.candidates(consensus);
    for h in &mut hops {
        if h.nodes.is_empty() {
            return Err(no_eligible(consensus, policy, h));
        }
        // The mailbox server is fixed: drop what conflicts with it now.
        let before = h.nodes.len();
        h.nodes.retain(|d| conflict(policy, d, mailbox).is_none());
        if h.nodes.is_empty() {
            let rule = if policy.distinct_operators && policy.distinct_jurisdictions {
                "distinct_operators / distinct_jurisdictions"
            } else if policy.distinct_operators {
                "distinct_operators"
            } else {
                "distinct_jurisdictions"
            };
            return Err(Error::NoDistinctRoute {
                hop: h.hop,
                class: h.class.clone(),
                rule: rule.into(),
                why: format!(
                    "all {before} eligible node(s) share the operator or jurisdiction of the recipient's mailbox server ({}, {})",
                    mailbox.operator, mailbox.jurisdiction
                ),
            });
        }
    }
    let weights: Vec<HopWeights> = hops
        .iter()
        .map(|h| HopWeights::new(h.nodes.iter().map(|d| clamp_weight(weight(&d.node_id())))))
        .collect();
    // Independent picks per hop, redrawn until the rules hold: each valid
    // combination comes out with probability proportional to the product of
    // its weights (uniformly when every weight is equal).
    for _ in 0..REJECTION_TRIES {
        let mut route: Vec<&Descriptor> = hops
            .iter()
            .zip(&weights)
            .map(|(h, w)| h.nodes[w.pick(rng)])
            .collect();
        if compatible(policy, &route) {
            route.push(mailbox);
            return Ok(route);
        }
    }
    // The rules bind hard: sample among every valid combination, with the
    // same probabilities.
    let mut search = Search {
        policy,
        hops: &hops,
        weights: &weights,
        mailbox,
        picked: Vec::with_capacity(hops.len()),
        picked_weight: 1.0,
        total: 0.0,
        chosen: None,
        steps: 0,
        deepest: 0,
    };
    search.run(rng);
    match search.chosen {
        Some(mut route) => {
            route.push(mailbox);
            Ok(route)
        }
        None => {
            let stuck = &hops[search.deepest.min(hops.len() - 1)];
            let rules: Vec<&str> = [
                (policy.distinct_operators, "distinct_operators"),
                (policy.distinct_jurisdictions, "distinct_jurisdictions"),
            ]
            .into_iter()
            .filter_map(|(on, r)| on.then_some(r))
            .collect();
            let why = if search.steps >= SEARCH_BUDGET {
                format!("no route found within {SEARCH_BUDGET} partial routes tried")
            } else {
                "every eligible node repeats a node, operator or jurisdiction of an earlier hop"
                    .to_string()
            };
            Err(Error::NoDistinctRoute {
                hop: stuck.hop,
                class: stuck.class.clone(),
                rule: if rules.is_empty() {
                    "distinct nodes".into()
                } else {
                    rules.join(" / ")
                },
                why,
            })
        }
    }
}

fn no_eligible(
    consensus: &VerifiedConsensus,
    policy: &RoutePolicy,
    h: &HopCandidates<'_>,
) -> Error {
    let jurisdictions = if h.class == ANY_CLASS {
        if policy.avoid.is_empty() {
            "any".to_string()
        } else {
            format!("any but {}", policy.avoid.join(", "))
        }
    } else {
        h.jurisdictions.join(", ")
    };
    Error::NoEligibleNode {
        hop: h.hop,
        class: h.class.clone(),
        jurisdictions,
        layer: h.layer,
        offered: offered(consensus, h.layer, &h.jurisdictions),
    }
}

/// A weight as route selection uses it: within [[`WEIGHT_FLOOR`], 1], so
/// no eligible node is ever left out (not a number is taken as 1).
fn clamp_weight(w: f64) -> f64 {
    if w.is_nan() {
        1.0
    } else {
        w.clamp(WEIGHT_FLOOR, 1.0)
    }
}

/// One hop's candidate weights, in candidate order, and their running sums.
struct HopWeights {
    each: Vec<f64>,
    cumulative: Vec<f64>,
}

impl HopWeights {
    fn new(weights: impl Iterator<Item = f64>) -> Self {
        let each: Vec<f64> = weights.collect();
        let cumulative = each
            .iter()
            .scan(0.0, |sum, w| {
                *sum += w;
                Some(*sum)
            })
            .collect();
        HopWeights { each, cumulative }
    }

    /// A candidate's index, drawn in proportion to its weight. There is at
    /// least one candidate.
    fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let u = rng.random::<f64>() * total;
        self.cumulative
            .partition_point(|c| *c <= u)
            .min(self.cumulative.len().saturating_sub(1))
    }
}

/// Depth-first enumeration of every valid route, keeping one at random with
/// probability proportional to the product of its weights (weighted
/// reservoir sampling: the k-th route found replaces the kept one with
/// probability its weight over the total so far).
struct Search<'a, 'c> {
    policy: &'a RoutePolicy,
    hops: &'a [HopCandidates<'c>],
    weights: &'a [HopWeights],
    mailbox: &'c Descriptor,
    picked: Vec<&'c Descriptor>,
    picked_weight: f64,
    total: f64,
    chosen: Option<Vec<&'c Descriptor>>,
    steps: usize,
    deepest: usize,
}

impl<'c> Search<'_, 'c> {
    fn run<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        let depth = self.picked.len();
        if depth == self.hops.len() {
            self.total += self.picked_weight;
            if rng.random::<f64>() * self.total < self.picked_weight {
                self.chosen = Some(self.picked.clone());
            }
            return;
        }
        self.deepest = self.deepest.max(depth);
        let hops = self.hops;
        let weights = self.weights;
        for (d, w) in hops[depth].nodes.iter().zip(&weights[depth].each) {
            if self.steps >= SEARCH_BUDGET {
                return;
            }
            self.steps += 1;
            if conflict(self.policy, d, self.mailbox).is_some()
                || self
                    .picked
                    .iter()
                    .any(|p| conflict(self.policy, d, p).is_some())
            {
                continue;
            }
            let outer = self.picked_weight;
            self.picked.push(d);
            self.picked_weight = outer * w;
            self.run(rng);
            self.picked.pop();
            self.picked_weight = outer;
        }
    }
}

/// Every assigned ISO 3166-1 alpha-2 code (249).
const ISO_3166_ALPHA2: &str = "\
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ \
BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ \
DE DJ DK DM DO DZ \
EC EE EG EH ER ES ET \
FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY \
HK HM HN HR HT HU \
ID IE IL IM IN IO IQ IR IS IT \
JE JM JO JP \
KE KG KH KI KM KN KP KR KW KY KZ \
LA LB LC LI LK LR LS LT LU LV LY \
MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ \
NA NC NE NF NG NI NL NO NP NR NU NZ \
OM \
PA PE PF PG PH PK PL PM PN PR PS PT PW PY \
QA \
RE RO RS RU RW \
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ \
TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ \
UA UG UM US UY UZ \
VA VC VE VG VI VN VU \
WF WS \
YE YT \
ZA ZM ZW";

/// Parses `--policy`: hop classes as `name=CC+CC,name=CC`, in order.
pub fn parse_classes(spec: &str) -> Result<Vec<(String, Vec<String>)>> {
    let bad = |why: String| Error::Config(format!("--policy {spec:?}: {why}"));
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, codes) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not name=CC+CC")))?;
        let name = name.trim().to_string();
        if out.iter().any(|(n, _)| *n == name) {
            return Err(bad(format!("class {name:?} is given twice")));
        }
        let codes = codes
            .split('+')
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| !c.is_empty())
            .collect();
        out.push((name, codes));
    }
    if out.is_empty() {
        return Err(bad("no hop class given".into()));
    }
    Ok(out)
}

/// Parses a comma-separated list (`--template`, `--avoid`); country codes
/// are upper-cased when `codes`.
pub fn parse_list(spec: &str, codes: bool) -> Vec<String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if codes {
                s.to_ascii_uppercase()
            } else {
                s.to_string()
            }
        })
        .collect()
}

/// The relays of a call circuit under `policy`: an entry from the
/// template's first hop class, a middle from its second, and the
/// rendezvous from its last class, each a mixnode that relays calls
/// (publishes a circuit address), none avoided, all distinct and meeting
/// the distinctness rules among themselves. Layers do not apply: a
/// circuit does not mix. `rendezvous` fixes the last relay (the callee
/// takes the one the caller's offer names) and is refused, with the
/// reason, if the policy does not admit it. Refuses rather than relaxing
/// the policy.
pub fn choose_circuit_nodes<'c, R: Rng + ?Sized>(
    consensus: &'c VerifiedConsensus,
    policy: &RoutePolicy,
    rendezvous: Option<&NodeId>,
    rng: &mut R,
) -> Result<Vec<&'c Descriptor>> {
    let first = policy.template.first().map_or(ANY_CLASS, String::as_str);
    let second = policy.template.get(1).map_or(ANY_CLASS, String::as_str);
    let last = policy.template.last().map_or(ANY_CLASS, String::as_str);
    let relays: Vec<&Descriptor> = consensus
        .nodes
        .iter()
        .filter(|d| d.role == Role::Mix && d.circuit_addr.is_some())
        .collect();
    if relays.is_empty() {
        return Err(Error::CallRoute(
            "no mixnode in the consensus relays calls (none publishes a circuit address)".into(),
        ));
    }
    let entry_and_middle = |rendezvous: &'c Descriptor, rng: &mut R| {
        let mut chosen = vec![rendezvous];
        for class in [first, second] {
            chosen.push(pick(&relays, policy, class, &chosen, rng)?);
        }
        // Entry, middle, rendezvous.
        chosen.rotate_left(1);
        Some(chosen)
    };
    let no_circuit = |last_chosen: Option<&Descriptor>| {
        Error::CallRoute(format!(
            "no entry (class {first}) and middle (class {second}) relay that relays calls{}, \
             distinct under the policy's rules",
            last_chosen.map_or(String::new(), |d| format!(
                " can go with the rendezvous {} ({})",
                d.node_id().short(),
                d.jurisdiction
            ))
        ))
    };
    match rendezvous {
        Some(id) => {
            let d = consensus.node(id).ok_or_else(|| {
                Error::CallRoute(format!(
                    "the rendezvous relay {} is not in the consensus",
                    id.short()
                ))
            })?;
            if d.role != Role::Mix || d.circuit_addr.is_none() {
                return Err(Error::CallRoute(format!(
                    "the rendezvous relay {} does not relay calls",
                    id.short()
                )));
            }
            if !policy.admits(last, &d.jurisdiction) {
                return Err(Error::CallRoute(format!(
                    "the rendezvous relay {} is in {}, which the route policy does not admit for \
                     its last hop (class {last}{}): the call is refused rather than the policy \
                     relaxed",
                    id.short(),
                    d.jurisdiction,
                    if policy.avoids(&d.jurisdiction) {
                        ", avoided"
                    } else {
                        ""
                    },
                )));
            }
            entry_and_middle(d, rng).ok_or_else(|| no_circuit(Some(d)))
        }
        None => {
            // Every admitted rendezvous in random order, until one leaves
            // an entry and a middle: a valid circuit is never refused for
            // an unlucky first draw.
            let mut candidates: Vec<&'c Descriptor> = relays
                .iter()
                .copied()
                .filter(|d| policy.admits(last, &d.jurisdiction))
                .collect();
            if candidates.is_empty() {
                return Err(Error::CallRoute(format!(
                    "no mixnode that relays calls is admitted by the last hop class {last}"
                )));
            }
            while !candidates.is_empty() {
                let d = candidates.swap_remove(rng.random_range(0..candidates.len()));
                if let Some(chosen) = entry_and_middle(d, rng) {
                    return Ok(chosen);
                }
            }
            Err(no_circuit(None))
        }
    }
}

/// A random relay of `relays` admitted by `class` and in no conflict with
/// `taken`.
fn pick<'c, R: Rng + ?Sized>(
    relays: &[&'c Descriptor],
    policy: &RoutePolicy,
    class: &str,
    taken: &[&Descriptor],
    rng: &mut R,
) -> Option<&'c Descriptor> {
    let eligible: Vec<&'c Descriptor> = relays
        .iter()
        .copied()
        .filter(|d| policy.admits(class, &d.jurisdiction))
        .filter(|d| taken.iter().all(|t| conflict(policy, d, t).is_none()))
        .collect();
    if eligible.is_empty() {
        return None;
    }
    Some(eligible[rng.random_range(0..eligible.len())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const POOL: [&str; 6] = ["DE", "CH", "IS", "NL", "SE", "US"];

    fn descriptor(i: usize, role: Role, jurisdiction: &str, operator: &str) -> Descriptor {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        Descriptor {
            identity_key: key,
            epoch: 1,
            sphinx_key: [9; 32],
            tls_pin: [3; 32],
            addr: format!("127.0.0.1:{}", 9000 + i),
            api_addr: (role == Role::Mailbox).then(|| format!("127.0.0.1:{}", 9500 + i)),
            circuit_addr: None,
            role,
            jurisdiction: jurisdiction.into(),
            operator: operator.into(),
        }
    }

    /// Mixes then mailbox servers, as `(jurisdiction, operator)` indices.
    fn consensus(
        epoch: u64,
        mixes: &[(usize, usize)],
        mailboxes: &[(usize, usize)],
    ) -> VerifiedConsensus {
        let mut nodes = Vec::new();
        for (i, (j, o)) in mixes.iter().enumerate() {
            nodes.push(descriptor(i, Role::Mix, POOL[*j], &format!("op{o}")));
        }
        for (i, (j, o)) in mailboxes.iter().enumerate() {
            nodes.push(descriptor(
                1000 + i,
                Role::Mailbox,
                POOL[*j],
                &format!("op{o}"),
            ));
        }
        VerifiedConsensus::assume_verified(epoch, 0, u64::MAX, nodes, 1)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Mixes that relay calls, as `(jurisdiction, operator)` indices.
    fn call_relays(mixes: &[(usize, usize)]) -> VerifiedConsensus {
        let nodes = mixes
            .iter()
            .enumerate()
            .map(|(i, (j, o))| {
                let mut d = descriptor(i, Role::Mix, POOL[*j], &format!("op{o}"));
                d.circuit_addr = Some(format!("127.0.0.1:{}", 7000 + i));
                d
            })
            .collect();
        VerifiedConsensus::assume_verified(1, 0, u64::MAX, nodes, 1)
    }

    #[test]
    fn a_call_circuit_follows_the_policy_and_is_never_refused_for_a_bad_first_draw() {
        // One relay in DE, two in CH: with `de → any → any`, the DE relay
        // must be the entry, never the rendezvous (then no entry is left).
        let c = call_relays(&[(0, 0), (1, 1), (1, 2)]);
        let policy = RoutePolicy {
            classes: [("de".to_string(), strings(&["DE"]))].into_iter().collect(),
            template: strings(&["de", "any", "any"]),
            ..RoutePolicy::default()
        };
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let chosen = choose_circuit_nodes(&c, &policy, None, &mut rng).unwrap();
            let js: Vec<&str> = chosen.iter().map(|d| d.jurisdiction.as_str()).collect();
            assert_eq!(js, ["DE", "CH", "CH"]);
            assert_ne!(chosen[1].operator, chosen[2].operator);
        }
        // The callee takes the rendezvous the offer names, if its policy
        // admits it, and says why not otherwise.
        let ch = c
            .nodes
            .iter()
            .find(|d| d.jurisdiction == "CH")
            .unwrap()
            .node_id();
        let chosen = choose_circuit_nodes(&c, &policy, Some(&ch), &mut rng).unwrap();
        assert_eq!(chosen[2].node_id(), ch);
        let avoiding = RoutePolicy {
            avoid: strings(&["CH"]),
            ..RoutePolicy::default()
        };
        let err = choose_circuit_nodes(&c, &avoiding, Some(&ch), &mut rng).unwrap_err();
        assert!(err.to_string().contains("does not admit"), "{err}");
        // Relays that do not relay calls are never chosen.
        let none = consensus(1, &[(0, 0), (1, 1), (2, 2)], &[(3, 3)]);
        let err = choose_circuit_nodes(&none, &RoutePolicy::default(), None, &mut rng).unwrap_err();
        assert!(err.to_string().contains("relays calls"), "{err}");
    }

    fn seed_policy() -> RoutePolicy {
        RoutePolicy {
            classes: [
                ("domestic", &["DE"][..]),
                ("neutral", &["CH", "IS"]),
                ("external", &["NL"]),
            ]
            .into_iter()
            .map(|(n, c)| (n.to_string(), strings(c)))
            .collect(),
            template: strings(&["domestic", "neutral", "external"]),
            ..RoutePolicy::default()
        }
    }

    /// The test's own reading of the policy, independent of the code under
    /// test: every valid route (mix ids, mailbox last) by brute force.
    fn every_valid_route(
        c: &VerifiedConsensus,
        p: &RoutePolicy,
        mailbox: &Descriptor,
    ) -> Vec<Vec<NodeId>> {
        let ok_place = |hop: usize, d: &Descriptor| {
            let layer = if hop >= 3 { 3 } else { hop as u8 };
            let class = &p.template[hop - 1];
            c.layer_of(&d.node_id()) == Some(layer)
                && !p.avoid.contains(&d.jurisdiction)
                && (class == "any" || p.classes[class].contains(&d.jurisdiction))
        };
        let per_hop: Vec<Vec<&Descriptor>> = (1..=p.template.len())
            .map(|h| {
                c.nodes
                    .iter()
                    .filter(|d| d.role == Role::Mix && ok_place(h, d))
                    .collect()
            })
            .collect();
        let mut out = Vec::new();
        let mut stack: Vec<Vec<&Descriptor>> = vec![vec![]];
        while let Some(prefix) = stack.pop() {
            if prefix.len() == per_hop.len() {
                let mut all = prefix.clone();
                all.push(mailbox);
                let fine = (0..all.len()).all(|i| {
                    (0..i).all(|k| {
                        all[i].node_id() != all[k].node_id()
                            && !(p.distinct_operators && all[i].operator == all[k].operator)
                            && !(p.distinct_jurisdictions
                                && all[i].jurisdiction == all[k].jurisdiction)
                    })
                });
                if fine {
                    out.push(all.iter().map(|d| d.node_id()).collect());
                }
                continue;
            }
            for d in &per_hop[prefix.len()] {
                let mut next = prefix.clone();
                next.push(d);
                stack.push(next);
            }
        }
        out
    }

    prop_compose! {
        fn population()(
            epoch in any::<u64>(),
            mixes in prop::collection::vec((0..6usize, 0..5usize), 3..18),
            mailboxes in prop::collection::vec((0..6usize, 0..5usize), 1..3),
        ) -> VerifiedConsensus {
            consensus(epoch, &mixes, &mailboxes)
        }
    }

    prop_compose! {
        fn policy()(
            avoid in prop::collection::btree_set(0..6usize, 0..=2),
            classes in prop::collection::vec(prop::collection::btree_set(0..6usize, 1..=3), 1..=3),
            template in prop::collection::vec(0..4usize, 3..=4),
            (ops, jur, allow) in any::<(bool, bool, bool)>(),
        ) -> RoutePolicy {
            let avoid: Vec<String> = avoid.iter().map(|i| POOL[*i].to_string()).collect();
            let classes: BTreeMap<String, Vec<String>> = classes
                .iter()
                .enumerate()
                .map(|(k, set)| {
                    let codes: Vec<String> = set
                        .iter()
                        .map(|i| POOL[*i].to_string())
                        .filter(|c| !avoid.contains(c))
                        .collect();
                    (format!("c{k}"), codes)
                })
                .filter(|(_, codes)| !codes.is_empty())
                .collect();
            let template = template
                .iter()
                .map(|t| {
                    let name = format!("c{t}");
                    if classes.contains_key(&name) { name } else { ANY_CLASS.to_string() }
                })
                .collect();
            RoutePolicy {
                classes,
                template,
                avoid,
                distinct_operators: ops,
                distinct_jurisdictions: jur,
                allow_avoided_mailbox: allow,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn drawn_routes_meet_the_policy_and_refusals_are_justified(
            c in population(),
            p in policy(),
            pick in any::<prop::sample::Index>(),
            seed in any::<u64>(),
        ) {
            prop_assume!(p.validate("").is_ok());
            let mailboxes: Vec<&Descriptor> = c.mailboxes().collect();
            let mailbox = *pick.get(&mailboxes);
            let valid = if p.avoids(&mailbox.jurisdiction) && !p.allow_avoided_mailbox {
                Vec::new()
            } else {
                every_valid_route(&c, &p, mailbox)
            };
            let mut rng = StdRng::seed_from_u64(seed);
            let drawn = choose_policy_route(&c, &p, &mailbox.node_id(), Duration::ZERO, &mut rng);
            match drawn {
                Ok(_) if valid.is_empty() => prop_assert!(false, "a route was drawn where none is valid"),
                Ok(_) => {
                    for _ in 0..20 {
                        let r = choose_policy_route(&c, &p, &mailbox.node_id(), Duration::ZERO, &mut rng).unwrap();
                        let ids: Vec<NodeId> = r.hops.iter().map(|h| h.node).collect();
                        prop_assert!(valid.contains(&ids), "invalid route {ids:?}");
                        prop_assert_eq!(p.check(&c, &ids), Ok(()));
                        prop_assert_eq!(r.hops.len(), p.template.len() + 1);
                    }
                }
                Err(e) => {
                    prop_assert!(valid.is_empty(), "refused although {} routes are valid: {e}", valid.len());
                    let text = e.to_string();
                    let names_class = p.template.iter().any(|class| text.contains(&format!("class \"{class}\"")));
                    prop_assert!(
                        names_class || matches!(e, Error::MailboxServerAvoided { .. }),
                        "the refusal names no hop class: {text}"
                    );
                }
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn weighted_routes_meet_the_policy_and_are_refused_exactly_when_uniform_ones_are(
            c in population(),
            p in policy(),
            pick in any::<prop::sample::Index>(),
            weights in prop::collection::vec(prop_oneof![Just(0.0), Just(f64::NAN), 0.0..2.0f64], 32),
            seed in any::<u64>(),
        ) {
            prop_assume!(p.validate("").is_ok());
            let mailboxes: Vec<&Descriptor> = c.mailboxes().collect();
            let mailbox = *pick.get(&mailboxes);
            let weight = |id: &NodeId| weights[usize::from(id.0[0]) % weights.len()];
            let mut rng = StdRng::seed_from_u64(seed);
            let uniform = choose_policy_nodes(&c, &p, &mailbox.node_id(), &mut rng);
            let weighted = choose_policy_route_weighted(&c, &p, &mailbox.node_id(), Duration::ZERO, &weight, &mut rng);
            match (uniform, weighted) {
                (Ok(_), Ok(first)) => {
                    let mut routes = vec![first];
                    for _ in 0..20 {
                        routes.push(choose_policy_route_weighted(&c, &p, &mailbox.node_id(), Duration::ZERO, &weight, &mut rng).unwrap());
                    }
                    for r in routes {
                        let ids: Vec<NodeId> = r.hops.iter().map(|h| h.node).collect();
                        prop_assert_eq!(p.check(&c, &ids), Ok(()));
                        prop_assert_eq!(*ids.last().unwrap(), mailbox.node_id());
                    }
                }
                (Err(u), Err(w)) => prop_assert_eq!(u.to_string(), w.to_string()),
                (u, w) => prop_assert!(false, "uniform {:?} but weighted {:?}", u.map(|_| ()), w.map(|_| ())),
            }
        }
    }

    /// A route's share when routes are drawn in proportion to the product
    /// of their mixes' weights, per valid route.
    fn weighted_shares(valid: &[Vec<NodeId>], weight: &dyn Fn(&NodeId) -> f64) -> Vec<f64> {
        let products: Vec<f64> = valid
            .iter()
            .map(|r| r[..r.len() - 1].iter().map(weight).product())
            .collect();
        let total: f64 = products.iter().sum();
        products.iter().map(|p| p / total).collect()
    }

    /// Checks `draw` against the shares of [`weighted_shares`] over `n`
    /// draws: every count within five standard deviations (plus one).
    fn assert_drawn_in_proportion(
        valid: &[Vec<NodeId>],
        weight: &dyn Fn(&NodeId) -> f64,
        n: usize,
        mut draw: impl FnMut() -> Vec<NodeId>,
    ) {
        let shares = weighted_shares(valid, weight);
        let mut counts = vec![0usize; valid.len()];
        for _ in 0..n {
            let r = draw();
            let i = valid.iter().position(|v| *v == r).expect("a valid route");
            counts[i] += 1;
        }
        for (i, share) in shares.iter().enumerate() {
            let mean = n as f64 * share;
            let sd = (n as f64 * share * (1.0 - share)).sqrt();
            let got = counts[i] as f64;
            assert!(
                (got - mean).abs() <= 5.0 * sd + 1.0,
                "route {i}: drawn {got} times, expected {mean:.0} ± {sd:.1} ({counts:?})"
            );
        }
    }

    #[test]
    fn a_node_at_the_floor_is_drawn_much_less_often_but_still_drawn() {
        // Four mixes per layer, each its own operator: no rule binds.
        let mixes: Vec<(usize, usize)> = (0..12).map(|i| (i % 6, 0)).collect();
        let mut c = consensus(7, &mixes, &[(1, 0)]);
        for (i, d) in c.nodes.iter_mut().enumerate() {
            d.operator = format!("unique{i}");
        }
        let c = VerifiedConsensus::assume_verified(7, 0, u64::MAX, c.nodes.clone(), 1);
        let mailbox = c.mailboxes().next().unwrap().node_id();
        let layer1: Vec<NodeId> = c.mixes(1).map(|d| d.node_id()).collect();
        assert_eq!(layer1.len(), 4);
        let poor = layer1[0];
        let weight = |id: &NodeId| if *id == poor { WEIGHT_FLOOR } else { 1.0 };
        let mut rng = StdRng::seed_from_u64(3);
        let draws = 6_000;
        let mut first: BTreeMap<NodeId, usize> = BTreeMap::new();
        for _ in 0..draws {
            let r = choose_policy_nodes_weighted(
                &c,
                &RoutePolicy::default(),
                &mailbox,
                &weight,
                &mut rng,
            )
            .unwrap();
            *first.entry(r[0].node_id()).or_default() += 1;
        }
        // Expected share 0.05 / 3.05 ≈ 1.6 % (≈ 98 draws), uniform 25 %.
        let got = first.get(&poor).copied().unwrap_or(0);
        assert!(got > 30 && got < 200, "floor node drawn {got} of {draws}");
        for other in &layer1[1..] {
            let n = first[other];
            assert!((1_800..2_150).contains(&n), "{n} {first:?}");
        }
    }

    #[test]
    fn weights_never_exclude_a_lone_candidate() {
        // Six mixes, each in its own jurisdiction; hop 1's class admits
        // only the jurisdiction of one layer-1 mix.
        let mixes: Vec<(usize, usize)> = (0..6).map(|i| (i, i)).collect();
        let c = consensus(3, &mixes, &[(2, 9)]);
        let mailbox = c.mailboxes().next().unwrap().node_id();
        let lone = c.mixes(1).next().unwrap();
        let mut p = RoutePolicy {
            classes: [("lone".to_string(), vec![lone.jurisdiction.clone()])].into(),
            template: strings(&["lone", "any", "any"]),
            ..RoutePolicy::default()
        };
        p.validate("").unwrap();
        let lone = lone.node_id();
        for w in [WEIGHT_FLOOR, 0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
            let weight = |_: &NodeId| w;
            for _ in 0..50 {
                let r = choose_policy_route_weighted(
                    &c,
                    &p,
                    &mailbox,
                    Duration::ZERO,
                    &weight,
                    &mut rand::rng(),
                )
                .unwrap();
                assert_eq!(r.hops[0].node, lone, "weight {w}");
            }
        }
        // And a refusal stays a refusal, with the same words.
        let elsewhere = c.mixes(2).next().unwrap().jurisdiction.clone();
        p.classes.insert("lone".into(), vec![elsewhere]);
        let uniform = choose_policy_nodes(&c, &p, &mailbox, &mut rand::rng()).unwrap_err();
        let weighted =
            choose_policy_nodes_weighted(&c, &p, &mailbox, &|_| 1.0, &mut rand::rng()).unwrap_err();
        assert_eq!(uniform.to_string(), weighted.to_string());
    }

    #[test]
    fn binding_rules_and_weights_draw_routes_in_proportion_to_weight_products() {
        // Few operators, so distinct_operators binds; weights vary per node.
        let mixes = [
            (0, 0),
            (1, 1),
            (2, 0),
            (3, 1),
            (4, 2),
            (5, 0),
            (0, 1),
            (1, 2),
            (2, 3),
        ];
        let c = consensus(5, &mixes, &[(3, 3)]);
        let mailbox = c.mailboxes().next().unwrap();
        let p = RoutePolicy::default();
        let valid = every_valid_route(&c, &p, mailbox);
        assert!(valid.len() > 3, "{valid:?}");
        let weight = |id: &NodeId| [1.0, 0.5, WEIGHT_FLOOR, 0.2][usize::from(id.0[0]) % 4];
        let mut rng = StdRng::seed_from_u64(9);
        // The rejection sampler, through the public function.
        assert_drawn_in_proportion(&valid, &weight, 6_000, || {
            choose_policy_nodes_weighted(&c, &p, &mailbox.node_id(), &weight, &mut rng)
                .unwrap()
                .iter()
                .map(|d| d.node_id())
                .collect()
        });
        // The exhaustive search, driven directly.
        let mut hops = p.candidates(&c);
        for h in &mut hops {
            h.nodes.retain(|d| conflict(&p, d, mailbox).is_none());
        }
        let weights: Vec<HopWeights> = hops
            .iter()
            .map(|h| HopWeights::new(h.nodes.iter().map(|d| clamp_weight(weight(&d.node_id())))))
            .collect();
        assert_drawn_in_proportion(&valid, &weight, 6_000, || {
            let mut search = Search {
                policy: &p,
                hops: &hops,
                weights: &weights,
                mailbox,
                picked: Vec::new(),
                picked_weight: 1.0,
                total: 0.0,
                chosen: None,
                steps: 0,
                deepest: 0,
            };
            search.run(&mut rng);
            let mut ids: Vec<NodeId> = search.chosen.unwrap().iter().map(|d| d.node_id()).collect();
            ids.push(mailbox.node_id());
            ids
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn each_eligible_node_is_drawn_as_often_as_uniform_allows(
            c in population(),
            p in policy(),
            pick in any::<prop::sample::Index>(),
            seed in any::<u64>(),
        ) {
            prop_assume!(p.validate("").is_ok());
            let mailboxes: Vec<&Descriptor> = c.mailboxes().collect();
            let mailbox = *pick.get(&mailboxes);
            prop_assume!(!p.avoids(&mailbox.jurisdiction));
            let valid = every_valid_route(&c, &p, mailbox);
            prop_assume!(!valid.is_empty());
            // Every valid route is equally likely, so a node's share at a hop
            // is its share of the valid routes there; with no binding rule
            // that is 1 / (eligible nodes).
            const DRAWS: usize = 3_000;
            let mut rng = StdRng::seed_from_u64(seed);
            let mut counts: Vec<BTreeMap<NodeId, usize>> = vec![BTreeMap::new(); p.template.len()];
            for _ in 0..DRAWS {
                let r = choose_policy_nodes(&c, &p, &mailbox.node_id(), &mut rng).unwrap();
                for (hop, d) in r.iter().take(p.template.len()).enumerate() {
                    *counts[hop].entry(d.node_id()).or_default() += 1;
                }
            }
            for (hop, seen) in counts.iter().enumerate() {
                let mut expected: BTreeMap<NodeId, f64> = BTreeMap::new();
                for route in &valid {
                    *expected.entry(route[hop]).or_default() += 1.0 / valid.len() as f64;
                }
                for (node, share) in &expected {
                    let n = DRAWS as f64;
                    let mean = n * share;
                    let sd = (n * share * (1.0 - share)).max(0.0).sqrt();
                    let got = seen.get(node).copied().unwrap_or(0) as f64;
                    // Five standard deviations (plus one for tiny shares).
                    prop_assert!(
                        (got - mean).abs() <= 5.0 * sd + 1.0,
                        "hop {}: node drawn {got} times, expected {mean:.0} ± {sd:.1}", hop + 1
                    );
                }
                prop_assert!(seen.keys().all(|k| expected.contains_key(k)));
            }
        }
    }

    #[test]
    fn without_binding_rules_every_candidate_is_equally_likely() {
        // Each mix has its own operator and jurisdiction set is wide: hop
        // shares must be 1 / candidates.
        let mixes: Vec<(usize, usize)> = (0..12).map(|i| (i % 4, 0)).collect();
        let mut c = consensus(7, &mixes, &[(1, 0)]);
        for (i, d) in c.nodes.iter_mut().enumerate() {
            d.operator = format!("unique{i}");
        }
        let c = VerifiedConsensus::assume_verified(7, 0, u64::MAX, c.nodes.clone(), 1);
        let p = RoutePolicy::default();
        let mailbox = c.mailboxes().next().unwrap().node_id();
        let mut rng = StdRng::seed_from_u64(1);
        let mut first: BTreeMap<NodeId, usize> = BTreeMap::new();
        let draws = 8_000;
        for _ in 0..draws {
            let r = choose_policy_nodes(&c, &p, &mailbox, &mut rng).unwrap();
            *first.entry(r[0].node_id()).or_default() += 1;
        }
        let k = c.mixes(1).count();
        assert_eq!(first.len(), k);
        let mean = draws as f64 / k as f64;
        let sd = (draws as f64 * (1.0 / k as f64) * (1.0 - 1.0 / k as f64)).sqrt();
        for n in first.values() {
            assert!((*n as f64 - mean).abs() <= 5.0 * sd, "{first:?}");
        }
    }

    #[test]
    fn the_iso_list_is_complete_and_strict() {
        assert_eq!(ISO_3166_ALPHA2.split_ascii_whitespace().count(), 249);
        for code in ["DE", "CH", "IS", "NL", "SE", "US", "GB", "ZW", "AX"] {
            assert!(is_country_code(code), "{code}");
        }
        for code in ["UK", "EU", "XK", "de", "D", "DEU", ""] {
            assert!(!is_country_code(code), "{code}");
        }
    }

    #[test]
    fn the_seed_scenario_draws_domestic_neutral_external() {
        // Three DE, three CH, three NL mixes, one IS; a mailbox in IS.
        let mixes = [
            (0, 0),
            (0, 1),
            (0, 2),
            (1, 3),
            (1, 4),
            (1, 0),
            (3, 1),
            (3, 2),
            (3, 3),
            (2, 4),
        ];
        let c = consensus(3, &mixes, &[(2, 9)]);
        let mailbox = c.mailboxes().next().unwrap().node_id();
        let p = seed_policy();
        p.validate("").unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..200 {
            let r = choose_policy_nodes(&c, &p, &mailbox, &mut rng).unwrap();
            let js: Vec<&str> = r.iter().map(|d| d.jurisdiction.as_str()).collect();
            assert_eq!(js[0], "DE");
            assert!(js[1] == "CH" || js[1] == "IS", "{js:?}");
            assert_eq!(&js[2..], ["NL", "IS"]);
            let ops: BTreeSet<&str> = r.iter().map(|d| d.operator.as_str()).collect();
            assert_eq!(ops.len(), 4, "distinct operators");
        }
    }

    #[test]
    fn a_class_without_nodes_is_refused_naming_class_jurisdictions_and_offer() {
        let mixes = [(0, 0), (1, 1), (3, 2), (0, 3), (1, 4), (3, 0)];
        let c = consensus(3, &mixes, &[(2, 9)]);
        let mailbox = c.mailboxes().next().unwrap().node_id();
        let mut p = seed_policy();
        p.classes.insert("offshore".into(), strings(&["US", "GB"]));
        p.template[1] = "offshore".into();
        let err = choose_policy_nodes(&c, &p, &mailbox, &mut rand::rng()).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                Error::NoEligibleNode {
                    hop: 2,
                    layer: 2,
                    ..
                }
            ),
            "{text}"
        );
        for needle in [
            "hop 2",
            "class \"offshore\"",
            "US, GB",
            "layer 2 of consensus epoch 3 offers",
            "US: no node at all",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }
    }

    #[test]
    fn avoided_mailbox_servers_are_refused_unless_allowed() {
        let mixes = [(0, 0), (1, 1), (3, 2)];
        let c = consensus(3, &mixes, &[(5, 9)]);
        let mailbox = c.mailboxes().next().unwrap().node_id();
        let mut p = RoutePolicy {
            avoid: strings(&["US"]),
            ..RoutePolicy::default()
        };
        let err = choose_policy_nodes(&c, &p, &mailbox, &mut rand::rng()).unwrap_err();
        assert!(matches!(err, Error::MailboxServerAvoided { .. }), "{err}");
        assert!(err.to_string().contains("allow_avoided_mailbox"), "{err}");
        p.allow_avoided_mailbox = true;
        let r = choose_policy_nodes(&c, &p, &mailbox, &mut rand::rng()).unwrap();
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn four_hops_take_two_different_mixes_of_layer_three() {
        let mixes: Vec<(usize, usize)> = (0..9).map(|i| (i % 6, i % 5)).collect();
        let c = consensus(11, &mixes, &[(2, 4)]);
        let mailbox = c.mailboxes().next().unwrap().node_id();
        let p = RoutePolicy {
            template: strings(&["any", "any", "any", "any"]),
            distinct_operators: false,
            ..RoutePolicy::default()
        };
        p.validate("").unwrap();
        for _ in 0..100 {
            let r =
                choose_policy_route(&c, &p, &mailbox, Duration::ZERO, &mut rand::rng()).unwrap();
            let layers: Vec<Option<u8>> = r.nodes.iter().map(|n| n.layer).collect();
            assert_eq!(layers, [Some(1), Some(2), Some(3), Some(3), None]);
            assert_ne!(r.hops[2].node, r.hops[3].node);
        }
        assert_eq!((hop_layer(1), hop_layer(3), hop_layer(4)), (1, 3, 3));
    }

    #[test]
    fn rules_that_cannot_be_met_are_refused_not_relaxed() {
        // One operator runs everything: distinct operators is impossible.
        let mixes = [(0, 0), (1, 0), (3, 0)];
        let c = consensus(3, &mixes, &[(2, 1)]);
        let mailbox = c.mailboxes().next().unwrap().node_id();
        let err = choose_policy_nodes(&c, &RoutePolicy::default(), &mailbox, &mut rand::rng())
            .unwrap_err();
        assert!(matches!(err, Error::NoDistinctRoute { .. }), "{err}");
        assert!(err.to_string().contains("distinct_operators"), "{err}");
        assert!(err.to_string().contains("class \"any\""), "{err}");
        // Without the rule the same network routes.
        choose_policy_nodes(&c, &RoutePolicy::layers_only(), &mailbox, &mut rand::rng()).unwrap();
    }

    #[test]
    fn command_line_overrides_parse_and_replace() {
        let classes = parse_classes("domestic=DE, neutral=ch+IS ,external=NL").unwrap();
        assert_eq!(classes[1], ("neutral".to_string(), strings(&["CH", "IS"])));
        let p = RoutePolicy::default().with_overrides(
            Some(classes.clone()),
            None,
            Some(parse_list("us", true)),
        );
        assert_eq!(p.template, strings(&["domestic", "neutral", "external"]));
        assert_eq!(p.avoid, strings(&["US"]));
        p.validate("").unwrap();
        let p = p.with_overrides(
            None,
            Some(parse_list("neutral,domestic,external,any", false)),
            None,
        );
        assert_eq!(p.template.len(), 4);
        p.validate("").unwrap();
        assert!(
            parse_classes("domestic")
                .unwrap_err()
                .to_string()
                .contains("--policy")
        );
        assert!(parse_classes("a=DE,a=CH").is_err());
        assert!(parse_classes(" , ").is_err());
        let file = "template = [\"a\", \"any\", \"any\"]\n[classes]\na = [\"DE\"]\n";
        assert_eq!(
            RoutePolicy::from_toml(file).unwrap().classes["a"],
            strings(&["DE"])
        );
        let err = RoutePolicy::from_toml("templat = []\n").unwrap_err();
        assert!(err.to_string().contains("templat"), "{err}");
    }
}
