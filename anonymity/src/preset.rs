//! The traffic settings a simulation runs: Bastet's three client presets
//! (`bastet_client::TrafficParams`) with the mixnodes' default cover, and
//! strawmen with parts of the defence switched off, to show what each part
//! buys.

use std::time::Duration;

use bastet_client::TrafficParams;

use crate::{Error, Result};

/// Preset names, in the order figures show them.
pub const PRESETS: [&str; 6] = [
    "no-cover-no-delay",
    "no-cover",
    "no-delay",
    "interactive",
    "balanced",
    "paranoid",
];

/// The mixnodes' default `cover_rate` (λ_M, packets per second per mix,
/// `bastet-mixnode`'s `config.rs`).
pub const DEFAULT_MIX_COVER_RATE: f64 = 1.0;

/// Client and mixnode traffic settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    /// Its name.
    pub name: String,
    /// The clients' Loopix parameters, as `bastet_client` defines them.
    pub traffic: TrafficParams,
    /// Whether a payload tick with nothing queued sends drop cover (as
    /// Bastet always does). Off only in the strawmen: the tick then sends
    /// nothing, and only real packets (and loops, if λ_L > 0) leave.
    pub drop_cover: bool,
    /// λ_M: each mixnode's cover loops per second.
    pub mix_cover_rate: f64,
    /// Mean per-hop delay of the mixnodes' cover loops (`cover_mix_delay_ms`,
    /// which operators keep equal to the clients' mean).
    pub mix_cover_delay: Duration,
}

impl Preset {
    /// Client traffic `traffic` with drop cover and the mixnodes' default
    /// cover, as a Bastet network runs it.
    pub fn bastet(name: &str, traffic: TrafficParams) -> Self {
        Preset {
            name: name.to_string(),
            mix_cover_delay: traffic.mean_hop_delay,
            traffic,
            drop_cover: true,
            mix_cover_rate: DEFAULT_MIX_COVER_RATE,
        }
    }

    /// The preset called `name` (see [`PRESETS`]).
    pub fn named(name: &str) -> Result<Self> {
        let bastet = |traffic: TrafficParams| Preset::bastet(name, traffic);
        let no_delay = TrafficParams {
            mean_hop_delay: Duration::ZERO,
            max_hop_delay: Duration::ZERO,
            ..TrafficParams::balanced()
        };
        let no_cover = |traffic: TrafficParams| Preset {
            name: name.to_string(),
            mix_cover_delay: traffic.mean_hop_delay,
            traffic: TrafficParams {
                loop_rate: 0.0,
                ..traffic
            },
            drop_cover: false,
            mix_cover_rate: 0.0,
        };
        match name {
            "interactive" | "balanced" | "paranoid" => {
                let traffic = TrafficParams::named(name)
                    .ok_or_else(|| Error::UnknownPreset(name.to_string()))?;
                Ok(bastet(traffic))
            }
            "no-delay" => Ok(bastet(no_delay)),
            "no-cover" => Ok(no_cover(TrafficParams::balanced())),
            "no-cover-no-delay" => Ok(no_cover(no_delay)),
            _ => Err(Error::UnknownPreset(name.to_string())),
        }
    }

    /// Whether this is one of Bastet's own presets (not a strawman).
    pub fn is_bastet(&self) -> bool {
        matches!(self.name.as_str(), "interactive" | "balanced" | "paranoid")
    }

    /// Checks the parameters as Bastet's client and mixnode do.
    pub fn validate(&self) -> Result<()> {
        self.traffic
            .validate()
            .map_err(|e| Error::Network(e.to_string()))?;
        if !(0.0..=bastet_client::MAX_RATE).contains(&self.mix_cover_rate) {
            return Err(Error::InvalidParameter {
                name: "mix-cover-rate",
                why: format!(
                    "{}: must be 0 to {} packets/s",
                    self.mix_cover_rate,
                    bastet_client::MAX_RATE
                ),
            });
        }
        if self.mix_cover_delay > bastet_mixnode::MAX_COVER_HOP_DELAY {
            return Err(Error::InvalidParameter {
                name: "mix-cover-delay",
                why: format!(
                    "{:?} is more than {:?}",
                    self.mix_cover_delay,
                    bastet_mixnode::MAX_COVER_HOP_DELAY
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_the_bastet_ones_are_the_clients() {
        for name in PRESETS {
            let p = Preset::named(name).unwrap();
            p.validate().unwrap();
            assert_eq!(p.is_bastet(), TrafficParams::named(name).is_some());
        }
        assert_eq!(
            Preset::named("balanced").unwrap().traffic,
            TrafficParams::balanced()
        );
        let strawman = Preset::named("no-cover-no-delay").unwrap();
        assert!(!strawman.drop_cover);
        assert_eq!(strawman.traffic.loop_rate, 0.0);
        assert_eq!(strawman.mix_cover_rate, 0.0);
        assert_eq!(strawman.traffic.mean_hop_delay, Duration::ZERO);
        assert!(matches!(
            Preset::named("fast"),
            Err(Error::UnknownPreset(_))
        ));
    }
}
