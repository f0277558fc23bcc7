//! Runs of the simulator and the analysis over a range of one parameter,
//! or over every preset.

use std::time::Duration;

use serde::Serialize;

use crate::analysis::latencies_ms;
use crate::{
    AnalysisConfig, AnalysisReport, Error, PRESETS, Preset, Result, SimConfig, SimStats, analyse,
    simulate,
};

/// The parameter a sweep varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepParam {
    /// The mean per-hop delay 1/μ, in milliseconds, at most 1500 (the cap
    /// follows at 20× the mean, as in every preset, within the 30 s limit;
    /// mixnode cover uses the same mean).
    Mu,
    /// A factor on every cover rate of the preset: λ_P, λ_L and λ_M.
    Lambda,
}

impl std::str::FromStr for SweepParam {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mu" => Ok(SweepParam::Mu),
            "lambda" => Ok(SweepParam::Lambda),
            _ => Err(Error::InvalidParameter {
                name: "param",
                why: format!("{s:?}: must be mu or lambda"),
            }),
        }
    }
}

impl SweepParam {
    /// Values swept when none are given.
    pub fn default_values(self) -> Vec<f64> {
        match self {
            SweepParam::Mu => vec![1.0, 5.0, 20.0, 50.0, 100.0, 200.0, 500.0],
            SweepParam::Lambda => vec![0.125, 0.25, 0.5, 1.0, 2.0, 4.0],
        }
    }

    /// `base` with this parameter at `value`.
    pub fn apply(self, base: &Preset, value: f64) -> Result<Preset> {
        let bad = |why: String| Error::InvalidParameter {
            name: "values",
            why,
        };
        if !(value.is_finite() && value > 0.0) {
            return Err(bad(format!("{value}: must be a positive number")));
        }
        let mut p = base.clone();
        match self {
            SweepParam::Mu => {
                let mean = Duration::try_from_secs_f64(value / 1000.0)
                    .map_err(|e| bad(format!("{value} ms: {e}")))?;
                // Every preset caps at 20 means; the cap must stay within
                // what mixnodes accept.
                let cap = mean * 20;
                if cap > bastet_client::MAX_HOP_DELAY {
                    return Err(bad(format!(
                        "{value} ms: the mean delay must be at most {:?} (20 of them within the {:?} limit)",
                        bastet_client::MAX_HOP_DELAY / 20,
                        bastet_client::MAX_HOP_DELAY
                    )));
                }
                p.traffic.mean_hop_delay = mean;
                p.traffic.max_hop_delay = cap;
                p.mix_cover_delay = mean;
                p.name = format!("{} mu={value}ms", base.name);
            }
            SweepParam::Lambda => {
                p.traffic.payload_rate *= value;
                p.traffic.loop_rate *= value;
                p.mix_cover_rate *= value;
                p.name = format!("{} lambda×{value}", base.name);
            }
        }
        p.validate()?;
        Ok(p)
    }

    /// The x axis of a plot of this sweep.
    pub fn axis_label(self) -> &'static str {
        match self {
            SweepParam::Mu => "mean delay per mix 1/μ (ms, log scale)",
            SweepParam::Lambda => "client send rate λ_P + λ_L (packets/s, log scale)",
        }
    }
}

/// One run of a sweep or comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// The preset run.
    pub preset: String,
    /// The x value plotted: the mean delay in ms, the client send rate,
    /// or the preset's position.
    pub x: f64,
    /// The simulator's counters.
    pub sim: SimStats,
    /// The analysis.
    pub report: AnalysisReport,
    /// Every delivered message's latency, milliseconds, for plots.
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
}

/// Simulates and analyses `base` with `param` at each of `values`.
pub fn sweep(
    base: &SimConfig,
    param: SweepParam,
    values: &[f64],
    analysis: &AnalysisConfig,
    mut progress: impl FnMut(&Point),
) -> Result<Vec<Point>> {
    if values.is_empty() {
        return Err(Error::InvalidParameter {
            name: "values",
            why: "nothing to sweep".into(),
        });
    }
    let mut points = Vec::new();
    for &v in values {
        let preset = param.apply(&base.preset, v)?;
        let x = match param {
            SweepParam::Mu => v,
            SweepParam::Lambda => preset.traffic.payload_rate + preset.traffic.loop_rate,
        };
        let point = run(base, preset, x, analysis)?;
        progress(&point);
        points.push(point);
    }
    Ok(points)
}

/// Simulates and analyses every preset of [`PRESETS`] on `base`'s network.
pub fn presets(
    base: &SimConfig,
    analysis: &AnalysisConfig,
    mut progress: impl FnMut(&Point),
) -> Result<Vec<Point>> {
    let mut points = Vec::new();
    for (i, name) in PRESETS.iter().enumerate() {
        let point = run(base, Preset::named(name)?, i as f64, analysis)?;
        progress(&point);
        points.push(point);
    }
    Ok(points)
}

fn run(base: &SimConfig, preset: Preset, x: f64, analysis: &AnalysisConfig) -> Result<Point> {
    let config = SimConfig {
        preset,
        ..base.clone()
    };
    let out = simulate(&config)?;
    let report = analyse(&out.trace, analysis)?;
    Ok(Point {
        preset: config.preset.name,
        x,
        sim: out.stats,
        report,
        latencies_ms: latencies_ms(&out.trace),
    })
}
