//! How much sender anonymity the network can give, estimated from what a
//! client knows: the consensus (mixes per layer), its traffic preset, and
//! the cover rates it measures. Sans IO; `bastet status` shows the result.
//!
//! **Pool per mix.** What hides a packet from a global passive adversary
//! is the number of other packets held in the same mix while it waits
//! there. By Little's law a mix receiving λ packets/s and holding each for
//! a mean 1/μ holds λ/μ on average (Loopix §4; `docs/anonymity.md` shows
//! Bastet's simulated entropy follows λ/μ whether λ or 1/μ moves). In
//! layer ℓ with W_ℓ mixes, out of M mixes in all:
//!
//! - each of N active clients sends λ_P + λ_L packets/s, each crossing one
//!   mix of every layer, spread evenly over the layer: N(λ_P + λ_L)/W_ℓ
//!   packets/s per mix, each held for the preset's mean delay d;
//! - each mixnode sends λ_M cover loops/s that cross one mix of every
//!   *other* layer (out through the later layers, back through the
//!   earlier ones): (M − W_ℓ)λ_M/W_ℓ per mix, held for the mixnodes'
//!   cover delay d_M.
//!
//! pool_ℓ(N) = (N(λ_P + λ_L)d + (M − W_ℓ)λ_M d_M) / W_ℓ, and the estimate
//! uses the smallest layer's pool, the bottleneck. Acks of real messages
//! are left out (a client cannot know how often others write); they add a
//! little, so the pool is slightly underestimated. pool(0) is the floor
//! the mixnodes' cover guarantees whatever the number of clients.
//!
//! **Entropy.** Calibrated on `bastet-anonymity` (3 layers × 3 mixes,
//! 1,000 clients, sweeps of the mean delay and of the rates, pools 0.6 to
//! 503). The effective sender set S = 2^H behaves like two limits in
//! series: the N active clients, and what the mixes can blend,
//! S_mix(pool):
//!
//! 1/S = 1/N + 1/S_mix,  S_mix = 13.9 · pool^1.126 (pool ≥ 1),
//! S_mix = 1 + 12.9 · pool³ (pool < 1),
//!
//! so H ≤ log₂ N, H → log₂ N as the pool grows, and H → 0 as the mixes
//! empty. The power law is a least-squares fit of S_mix = 1/(2^−H − 1/N)
//! on the 12 simulated points; it reproduces each within 0.08 bit. The
//! cubic below one packet per mix (a packet alone in a mix at each of
//! three layers) joins it at pool 1 and gives 1.92 bits for the simulated
//! no-cover strawman (pool 0.6, measured 1.95). On other shapes (30 to
//! 300 clients, 2 to 5 mixes per layer, every preset) it is within
//! 0.55 bit of the simulator, mostly within 0.15, and below it when off
//! by more. `anonymity/tests/estimate.rs` checks it against fresh runs.
//!
//! What it is not: a bound over all attacks. It is the per-message
//! Serjantov–Danezis entropy of the simulator's timing adversary, for
//! clients who all use this preset and stay online; long-term
//! intersection attacks are not counted. And a client cannot see how many
//! clients are active, so the estimate is a table over N, not one number.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::TrafficParams;

/// Each mixnode's cover rate λ_M when the consensus does not publish it:
/// the mixnode's `cover_rate` default, packets per second.
pub const DEFAULT_MIX_COVER_RATE: f64 = 1.0;

/// The mean delay a mixnode asks of each mix for its cover loops when the
/// consensus does not publish it: the mixnode's `cover_mix_delay_ms`
/// default.
pub const DEFAULT_MIX_COVER_DELAY: Duration = Duration::from_millis(50);

/// Loopix's threshold: below two packets held per mix, mixing leaks.
pub const MIN_POOL: f64 = 2.0;

/// Fewest mixes per layer before the estimate warns that a layer is thin.
pub const MIN_MIXES_PER_LAYER: usize = 3;

/// Active-client counts `bastet status` estimates for.
pub const ESTIMATED_CLIENTS: [u64; 3] = [10, 100, 1000];

/// Calibration of S_mix = [`FIT_SCALE`] · pool^[`FIT_EXPONENT`] (see the
/// module docs).
const FIT_SCALE: f64 = 13.92;
const FIT_EXPONENT: f64 = 1.126;

/// What the estimate is computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkLoad {
    /// Mixes in each layer of the consensus, first layer first.
    pub mixes_per_layer: Vec<usize>,
    /// Mailbox servers in the consensus (reported, not used in the pool:
    /// they hold nothing).
    pub mailboxes: usize,
    /// Packets per second one client sends on its payload stream (λ_P).
    pub payload_rate: f64,
    /// Packets per second one client sends on its loop stream (λ_L).
    pub loop_rate: f64,
    /// Mean delay a client's packet spends in each mix.
    pub mean_hop_delay: Duration,
    /// λ_M, cover loops per second each mixnode sends.
    pub mix_cover_rate: f64,
    /// Mean delay a mixnode's loop spends in each mix.
    pub mix_cover_delay: Duration,
}

impl NetworkLoad {
    /// The load of `params` (every client on this preset) over a network
    /// of `mixes_per_layer` and `mailboxes`, with the mixnodes' default
    /// cover ([`DEFAULT_MIX_COVER_RATE`], [`DEFAULT_MIX_COVER_DELAY`]).
    pub fn new(mixes_per_layer: Vec<usize>, mailboxes: usize, params: &TrafficParams) -> Self {
        NetworkLoad {
            mixes_per_layer,
            mailboxes,
            payload_rate: params.payload_rate,
            loop_rate: params.loop_rate,
            mean_hop_delay: params.mean_capped_hop_delay(),
            mix_cover_rate: DEFAULT_MIX_COVER_RATE,
            mix_cover_delay: DEFAULT_MIX_COVER_DELAY,
        }
    }

    /// Mean packets held in one mix of the thinnest layer when `clients`
    /// are active (0 with no mixes).
    pub fn pool_per_mix(&self, clients: u64) -> f64 {
        let all: usize = self.mixes_per_layer.iter().sum();
        let client_load = clients as f64
            * (rate(self.payload_rate) + rate(self.loop_rate))
            * secs(self.mean_hop_delay);
        let cover_load = rate(self.mix_cover_rate) * secs(self.mix_cover_delay);
        self.mixes_per_layer
            .iter()
            .filter(|w| **w > 0)
            .map(|&w| (client_load + (all - w) as f64 * cover_load) / w as f64)
            .reduce(f64::min)
            .unwrap_or(0.0)
    }

    /// The estimate for `clients` active clients.
    pub fn estimate(&self, clients: u64) -> Estimate {
        let pool = self.pool_per_mix(clients);
        let bits = if self.mixes_per_layer.contains(&0) || self.mixes_per_layer.is_empty() {
            0.0
        } else {
            sender_entropy_bits(pool, clients)
        };
        Estimate {
            clients,
            pool_per_mix: pool,
            entropy_bits: bits,
            effective_senders: bits.exp2(),
        }
    }

    /// The report `bastet status` shows: the floor, the estimates for
    /// [`ESTIMATED_CLIENTS`], and what looks weak.
    pub fn report(&self, mix_cover_published: bool) -> AnonymityReport {
        let estimates: Vec<Estimate> = ESTIMATED_CLIENTS
            .iter()
            .map(|&n| self.estimate(n))
            .collect();
        let mut warnings = Vec::new();
        if self.mixes_per_layer.is_empty() {
            warnings.push(AnonymityWarning::NoMixes);
        }
        for (i, &mixes) in self.mixes_per_layer.iter().enumerate() {
            let layer = i + 1;
            if mixes < 2 {
                warnings.push(AnonymityWarning::SingleMixLayer { layer, mixes });
            } else if mixes < MIN_MIXES_PER_LAYER {
                warnings.push(AnonymityWarning::FewMixes { layer, mixes });
            }
        }
        if let Some(few) = estimates.first().filter(|e| e.pool_per_mix < MIN_POOL) {
            warnings.push(AnonymityWarning::SmallPool {
                clients: few.clients,
                pool_per_mix: few.pool_per_mix,
            });
        }
        if self.mean_hop_delay.is_zero() {
            warnings.push(AnonymityWarning::NoDelay);
        }
        if rate(self.loop_rate) == 0.0 {
            warnings.push(AnonymityWarning::NoLoopCover);
        }
        AnonymityReport {
            mixes_per_layer: self.mixes_per_layer.clone(),
            mailboxes: self.mailboxes,
            client_rate: rate(self.payload_rate) + rate(self.loop_rate),
            mix_cover_rate: rate(self.mix_cover_rate),
            mix_cover_published,
            floor_pool_per_mix: self.pool_per_mix(0),
            estimates,
            warnings,
        }
    }
}

/// Estimated sender entropy, bits, of a message among `clients` active
/// clients when each mix holds `pool` packets on average: the calibrated
/// curve of the module docs, within [0, log₂ clients].
pub fn sender_entropy_bits(pool: f64, clients: u64) -> f64 {
    if clients < 2 {
        return 0.0;
    }
    let pool = if pool.is_finite() { pool.max(0.0) } else { 0.0 };
    let mix_set = if pool >= 1.0 {
        FIT_SCALE * pool.powf(FIT_EXPONENT)
    } else {
        1.0 + (FIT_SCALE - 1.0) * pool.powi(3)
    };
    let set = 1.0 / (1.0 / clients as f64 + 1.0 / mix_set);
    set.log2().clamp(0.0, (clients as f64).log2())
}

/// A rate as used in the sums: negative or non-finite counts as 0.
fn rate(r: f64) -> f64 {
    if r.is_finite() && r > 0.0 { r } else { 0.0 }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The estimate for one number of active clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Active clients assumed.
    pub clients: u64,
    /// Mean packets held per mix in the thinnest layer (λ/μ).
    pub pool_per_mix: f64,
    /// Estimated sender entropy of one message, bits (at most log₂ clients).
    pub entropy_bits: f64,
    /// 2^entropy: the number of equally likely senders it is worth.
    pub effective_senders: f64,
}

/// What `bastet status` says about anonymity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnonymityReport {
    /// Mixes in each layer of the consensus in force.
    pub mixes_per_layer: Vec<usize>,
    /// Mailbox servers in it.
    pub mailboxes: usize,
    /// Packets per second each client is assumed to send (λ_P + λ_L, as
    /// this client measures them).
    pub client_rate: f64,
    /// λ_M used, per mixnode, packets per second.
    pub mix_cover_rate: f64,
    /// Whether λ_M came from the consensus; if not, the mixnode default
    /// ([`DEFAULT_MIX_COVER_RATE`]) was assumed.
    pub mix_cover_published: bool,
    /// Packets per mix from mixnode cover alone: what the network holds
    /// with no client active.
    pub floor_pool_per_mix: f64,
    /// The estimate for each of [`ESTIMATED_CLIENTS`].
    pub estimates: Vec<Estimate>,
    /// What looks weak.
    pub warnings: Vec<AnonymityWarning>,
}

/// Something that makes the network's mixing weak.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "warning", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AnonymityWarning {
    /// The consensus has no mix layers.
    NoMixes,
    /// A layer with fewer than two mixes: every packet crosses the same
    /// mix there (or none is there).
    SingleMixLayer {
        /// Layer, 1 to 3.
        layer: usize,
        /// Mixes in it.
        mixes: usize,
    },
    /// A layer with fewer than [`MIN_MIXES_PER_LAYER`] mixes.
    FewMixes {
        /// Layer, 1 to 3.
        layer: usize,
        /// Mixes in it.
        mixes: usize,
    },
    /// Below [`MIN_POOL`] packets per mix with few clients active.
    SmallPool {
        /// Active clients assumed.
        clients: u64,
        /// Packets per mix then.
        pool_per_mix: f64,
    },
    /// Mixes hold packets for no time: timing links every hop.
    NoDelay,
    /// Loop cover is off.
    NoLoopCover,
}

impl fmt::Display for AnonymityWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnonymityWarning::NoMixes => write!(f, "the consensus lists no mixes"),
            AnonymityWarning::SingleMixLayer { layer, mixes } => write!(
                f,
                "layer {layer} has {mixes} mix(es): every packet crosses the same mix there"
            ),
            AnonymityWarning::FewMixes { layer, mixes } => write!(
                f,
                "layer {layer} has only {mixes} mixes (fewer than {MIN_MIXES_PER_LAYER})"
            ),
            AnonymityWarning::SmallPool {
                clients,
                pool_per_mix,
            } => write!(
                f,
                "with {clients} active clients a mix holds {pool_per_mix:.1} packets, below \
                 Loopix's threshold of {MIN_POOL}: timing can link many messages to their sender"
            ),
            AnonymityWarning::NoDelay => write!(
                f,
                "mean hop delay is zero: a packet leaves a mix as it arrives, and timing links it"
            ),
            AnonymityWarning::NoLoopCover => write!(f, "loop cover is off (loop_rate = 0)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(per_layer: usize, params: &TrafficParams) -> NetworkLoad {
        NetworkLoad::new(vec![per_layer; 3], 3, params)
    }

    #[test]
    fn pool_follows_littles_law_for_the_presets() {
        // 1,000 clients on 3×3 mixes, as in docs/anonymity.md: client
        // traffic N(λ_P + λ_L)d/W plus 2 λ_M d_M of mixnode cover.
        let cases = [
            (TrafficParams::interactive(), 1000.0 * 5.0 * 0.020 / 3.0),
            (TrafficParams::balanced(), 1000.0 * 3.0 * 0.050 / 3.0),
            (TrafficParams::paranoid(), 1000.0 * 1.5 * 0.5 / 3.0),
        ];
        for (params, clients_only) in cases {
            let pool = load(3, &params).pool_per_mix(1000);
            let expected = clients_only + 2.0 * 1.0 * 0.050;
            assert!(
                (pool - expected).abs() < 0.05,
                "{params:?}: {pool} vs {expected}"
            );
        }
    }

    #[test]
    fn the_floor_is_mixnode_cover_alone() {
        let l = load(3, &TrafficParams::balanced());
        // Each layer receives the loops of the 6 mixes of the other layers.
        assert!((l.pool_per_mix(0) - 6.0 * 0.050 / 3.0).abs() < 1e-9);
        let none = NetworkLoad {
            mix_cover_rate: 0.0,
            ..l
        };
        assert_eq!(none.pool_per_mix(0), 0.0);
    }

    #[test]
    fn the_thinnest_layer_sets_the_pool() {
        let params = TrafficParams::balanced();
        let even = NetworkLoad::new(vec![3, 3, 3], 3, &params).pool_per_mix(100);
        let uneven = NetworkLoad::new(vec![3, 6, 3], 3, &params).pool_per_mix(100);
        assert!(uneven < even);
        // A lone mix holds a whole layer's traffic; the pool that counts is
        // the other layers', and the lone mix gets its own warning.
        let lone = NetworkLoad::new(vec![1, 3, 3], 3, &params);
        assert!(lone.pool_per_mix(100) < even);
        assert!(matches!(
            lone.report(false).warnings[0],
            AnonymityWarning::SingleMixLayer { layer: 1, mixes: 1 }
        ));
    }

    #[test]
    fn entropy_reproduces_the_calibration_runs() {
        // (pool, clients, simulated mean bits) from docs/anonymity.md.
        for (pool, clients, simulated) in [
            (1.0, 1000, 3.72),
            (5.0, 1000, 6.38),
            (33.5, 1000, 8.71),
            (50.4, 1000, 9.06),
            (253.2, 1000, 9.78),
            (0.6, 1000, 1.95),
            (2.6, 50, 4.63),
        ] {
            let bits = sender_entropy_bits(pool, clients);
            assert!(
                (bits - simulated).abs() < 0.2,
                "pool {pool}, {clients} clients: {bits:.2} vs {simulated}"
            );
        }
    }

    #[test]
    fn entropy_is_bounded_and_monotone() {
        let mut last = 0.0;
        for i in 0..200 {
            let pool = f64::from(i) * 0.5;
            let bits = sender_entropy_bits(pool, 100);
            assert!(bits >= last - 1e-12, "not monotone at pool {pool}");
            assert!(bits <= 100f64.log2());
            last = bits;
        }
        assert!(sender_entropy_bits(1e9, 100) > 100f64.log2() - 0.01);
        assert_eq!(sender_entropy_bits(0.0, 1000), 0.0);
        assert!(sender_entropy_bits(10.0, 1000) < sender_entropy_bits(10.0, 10_000));
    }

    #[test]
    fn odd_inputs_give_zero_not_panics() {
        for bits in [
            sender_entropy_bits(f64::NAN, 10),
            sender_entropy_bits(f64::INFINITY, 0),
            sender_entropy_bits(-5.0, 10),
            sender_entropy_bits(5.0, 1),
        ] {
            assert!(bits.is_finite() && bits >= 0.0);
        }
        let empty = NetworkLoad {
            mixes_per_layer: vec![],
            mailboxes: 0,
            payload_rate: f64::NAN,
            loop_rate: -1.0,
            mean_hop_delay: Duration::ZERO,
            mix_cover_rate: f64::INFINITY,
            mix_cover_delay: Duration::MAX,
        };
        let r = empty.report(false);
        assert!(r.estimates.iter().all(|e| e.entropy_bits == 0.0));
        assert!(r.warnings.contains(&AnonymityWarning::NoMixes));
        let hole = NetworkLoad::new(vec![3, 0, 3], 1, &TrafficParams::balanced());
        let r = hole.report(false);
        assert!(r.estimates.iter().all(|e| e.entropy_bits == 0.0));
        assert!(
            r.warnings
                .contains(&AnonymityWarning::SingleMixLayer { layer: 2, mixes: 0 })
        );
    }

    #[test]
    fn warnings_name_what_is_weak() {
        let mut zero = TrafficParams::balanced();
        zero.loop_rate = 0.0;
        zero.mean_hop_delay = Duration::ZERO;
        let r = NetworkLoad::new(vec![1, 2, 3], 3, &zero).report(false);
        assert_eq!(
            r.warnings,
            vec![
                AnonymityWarning::SingleMixLayer { layer: 1, mixes: 1 },
                AnonymityWarning::FewMixes { layer: 2, mixes: 2 },
                AnonymityWarning::SmallPool {
                    clients: 10,
                    pool_per_mix: r.estimates[0].pool_per_mix
                },
                AnonymityWarning::NoDelay,
                AnonymityWarning::NoLoopCover,
            ]
        );
        // Balanced on 3×3 with 10 clients holds 0.6 packets per mix.
        let ok = NetworkLoad::new(vec![3, 3, 3], 3, &TrafficParams::balanced()).report(false);
        assert!(matches!(
            ok.warnings[..],
            [AnonymityWarning::SmallPool { clients: 10, .. }]
        ));
        let paranoid = NetworkLoad::new(vec![3, 3, 3], 3, &TrafficParams::paranoid()).report(true);
        assert!(paranoid.warnings.is_empty(), "{:?}", paranoid.warnings);
        assert!(paranoid.estimates[0].pool_per_mix > MIN_POOL);
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let r = NetworkLoad::new(vec![1, 3, 3], 3, &TrafficParams::balanced()).report(false);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""warning":"single_mix_layer""#), "{json}");
        assert_eq!(serde_json::from_str::<AnonymityReport>(&json).unwrap(), r);
    }
}
