//! `bastet-anonymity`: simulate a Bastet network in virtual time with
//! Bastet's own traffic code, and measure the anonymity it gives against a
//! global passive adversary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bastet_anonymity::sweep::{Point, SweepParam};
use bastet_anonymity::{
    AnalysisConfig, AnalysisReport, Crypto, Error, Preset, Pruning, Result, SimConfig, SimStats,
    Trace, analyse, plot, simulate, sweep,
};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bastet-anonymity",
    version,
    about = "Simulate a Bastet network and measure its sender and recipient anonymity against a global passive adversary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a network, then analyse its trace (entropy, attack, latency).
    Simulate {
        #[command(flatten)]
        sim: SimArgs,
        #[command(flatten)]
        analysis: AnalysisArgs,
        /// Save the trace (JSON lines) to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Only simulate; skip the analysis.
        #[arg(long)]
        no_analysis: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the correlation attack on a saved trace or a fresh simulation.
    Attack {
        /// A trace saved by `simulate --trace` (otherwise simulate one).
        #[arg(long)]
        trace: Option<PathBuf>,
        #[command(flatten)]
        sim: SimArgs,
        #[command(flatten)]
        analysis: AnalysisArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Analyse a saved trace: entropy, attack, latency.
    Analyse {
        /// The trace (JSON lines).
        #[arg(long)]
        trace: PathBuf,
        #[command(flatten)]
        analysis: AnalysisArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Simulate and analyse over a range of the mean delay or the cover
    /// rates, and plot entropy against it.
    Sweep {
        /// `mu` (mean delay per mix, values in ms) or `lambda` (factor on
        /// λ_P, λ_L and λ_M).
        #[arg(long)]
        param: String,
        /// Comma-separated values (defaults: mu 1,5,20,50,100,200,500;
        /// lambda 0.125,0.25,0.5,1,2,4).
        #[arg(long, value_delimiter = ',')]
        values: Vec<f64>,
        #[command(flatten)]
        sim: SimArgs,
        #[command(flatten)]
        analysis: AnalysisArgs,
        /// Write the figure to this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Simulate and analyse every preset (Bastet's three and the
    /// strawmen), and plot attack accuracy and latency.
    Presets {
        #[command(flatten)]
        sim: SimArgs,
        #[command(flatten)]
        analysis: AnalysisArgs,
        /// Write the attack figure to this SVG file.
        #[arg(long)]
        plot_attack: Option<PathBuf>,
        /// Write the latency figure to this SVG file.
        #[arg(long)]
        plot_latency: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct SimArgs {
    /// Clients.
    #[arg(long, default_value_t = 1000)]
    clients: u32,
    /// Mix layers (Bastet's consensus deals 3).
    #[arg(long, default_value_t = 3)]
    layers: u8,
    /// Mixes per layer.
    #[arg(long, default_value_t = 3)]
    per_layer: u32,
    /// Mailbox servers.
    #[arg(long, default_value_t = 3)]
    mailboxes: u32,
    /// Virtual minutes simulated.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// interactive, balanced, paranoid, or a strawman: no-delay, no-cover,
    /// no-cover-no-delay.
    #[arg(long, default_value = "balanced")]
    preset: String,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `real`: real Sphinx packets through real mixers (slow); `none`:
    /// packets as their routes.
    #[arg(long, default_value = "none")]
    crypto: String,
    /// Real messages each client sends per minute (Poisson).
    #[arg(long, default_value_t = 1.0)]
    messages_per_minute: f64,
    /// Override the preset's mean delay per mix (ms; cap 20× the mean).
    #[arg(long)]
    mean_delay_ms: Option<f64>,
    /// Override the preset's λ_P (packets/s).
    #[arg(long)]
    payload_rate: Option<f64>,
    /// Override the preset's λ_L (packets/s).
    #[arg(long)]
    loop_rate: Option<f64>,
    /// Override λ_M, each mixnode's cover rate (packets/s).
    #[arg(long)]
    mix_cover_rate: Option<f64>,
}

impl SimArgs {
    fn config(&self) -> Result<SimConfig> {
        let mut preset = Preset::named(&self.preset)?;
        if let Some(ms) = self.mean_delay_ms {
            preset = SweepParam::Mu
                .apply(&preset, ms)
                .map_err(|_| Error::InvalidParameter {
                    name: "mean-delay-ms",
                    why: format!("{ms}: must be more than 0 and at most 1500"),
                })?;
            preset.name = self.preset.clone();
        }
        if let Some(r) = self.payload_rate {
            preset.traffic.payload_rate = r;
        }
        if let Some(r) = self.loop_rate {
            preset.traffic.loop_rate = r;
        }
        if let Some(r) = self.mix_cover_rate {
            preset.mix_cover_rate = r;
        }
        if !(self.minutes.is_finite() && self.minutes > 0.0) {
            return Err(Error::InvalidParameter {
                name: "minutes",
                why: format!("{}: must be a positive number", self.minutes),
            });
        }
        let duration = Duration::try_from_secs_f64(self.minutes * 60.0).map_err(|e| {
            Error::InvalidParameter {
                name: "minutes",
                why: e.to_string(),
            }
        })?;
        let config = SimConfig {
            clients: self.clients,
            layers: self.layers,
            per_layer: self.per_layer,
            mailboxes: self.mailboxes,
            duration,
            seed: self.seed,
            crypto: self.crypto.parse::<Crypto>()?,
            preset,
            messages_per_minute: self.messages_per_minute,
        };
        config.validate()?;
        Ok(config)
    }
}

#[derive(Args, Clone)]
struct AnalysisArgs {
    /// Attribution pruning threshold ε (0 = exact, slow).
    #[arg(long, default_value_t = 1e-6)]
    prune: f64,
    /// Most messages analysed, spread evenly over the trace.
    #[arg(long, default_value_t = 2000)]
    max_messages: usize,
    /// Skip messages arriving in the first seconds (default: 1 s + 10 mean
    /// delays per layer).
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// How long after storing a fragment a mailbox server may send its ack
    /// (ms; 0 in simulated traces).
    #[arg(long, default_value_t = 0.0)]
    ack_window_ms: f64,
}

impl AnalysisArgs {
    fn config(&self) -> Result<AnalysisConfig> {
        let secs = |name: &'static str, v: f64| {
            Duration::try_from_secs_f64(v).map_err(|e| Error::InvalidParameter {
                name,
                why: format!("{v}: {e}"),
            })
        };
        Ok(AnalysisConfig {
            pruning: Pruning {
                threshold: self.prune,
            },
            max_messages: self.max_messages,
            warmup: self
                .warmup_secs
                .map(|w| secs("warmup-secs", w))
                .transpose()?,
            ack_window: secs("ack-window-ms", self.ack_window_ms / 1000.0)?,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bastet-anonymity: {e}");
            ExitCode::FAILURE
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::InvalidParameter {
        name: "json",
        why: e.to_string(),
    })?;
    println!("{text}");
    Ok(())
}

#[derive(serde::Serialize)]
struct SimulateOutput<'a> {
    simulation: &'a SimStats,
    analysis: Option<&'a AnalysisReport>,
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Simulate {
            sim,
            analysis,
            trace,
            no_analysis,
            json: as_json,
        } => {
            let config = sim.config()?;
            let analysis = analysis.config()?;
            let out = simulate(&config)?;
            if let Some(path) = &trace {
                out.trace.save(path)?;
            }
            let report = if no_analysis {
                None
            } else {
                Some(analyse(&out.trace, &analysis)?)
            };
            if as_json {
                json(&SimulateOutput {
                    simulation: &out.stats,
                    analysis: report.as_ref(),
                })?;
            } else {
                println!("{}", out.trace.observation.meta.description);
                print_stats(&out.stats);
                if let Some(r) = &report {
                    print_report(r);
                }
                if let Some(path) = &trace {
                    println!("trace written to {}", path.display());
                }
            }
        }
        Command::Attack {
            trace,
            sim,
            analysis,
            json: as_json,
        } => {
            let analysis = analysis.config()?;
            let trace = match trace {
                Some(path) => Trace::load(&path)?,
                None => simulate(&sim.config()?)?.trace,
            };
            let r = analyse(&trace, &analysis)?;
            if as_json {
                json(&r.attack)?;
            } else {
                println!("{}", r.description);
                print_attack(&r);
            }
        }
        Command::Analyse {
            trace,
            analysis,
            json: as_json,
        } => {
            let r = analyse(&Trace::load(&trace)?, &analysis.config()?)?;
            if as_json {
                json(&r)?;
            } else {
                println!("{}", r.description);
                print_report(&r);
            }
        }
        Command::Sweep {
            param,
            values,
            sim,
            analysis,
            plot: plot_path,
            json: as_json,
        } => {
            let param: SweepParam = param.parse()?;
            let values = if values.is_empty() {
                param.default_values()
            } else {
                values
            };
            let config = sim.config()?;
            let points = sweep::sweep(&config, param, &values, &analysis.config()?, |p| {
                if !as_json {
                    print_point(p);
                }
            })?;
            if let Some(path) = &plot_path {
                let title = format!(
                    "Bastet {}: entropy vs {} ({} clients, 3×{} mixes, {} min)",
                    sim.preset,
                    match param {
                        SweepParam::Mu => "mean delay",
                        SweepParam::Lambda => "cover rates",
                    },
                    config.clients,
                    config.per_layer,
                    sim.minutes
                );
                plot::sweep(path, param, &points, &title)?;
            }
            if as_json {
                json(&points)?;
            } else if let Some(path) = &plot_path {
                println!("figure written to {}", path.display());
            }
        }
        Command::Presets {
            sim,
            analysis,
            plot_attack,
            plot_latency,
            json: as_json,
        } => {
            let points = sweep::presets(&sim.config()?, &analysis.config()?, |p| {
                if !as_json {
                    print_point(p);
                }
            })?;
            if let Some(path) = &plot_attack {
                plot::attack(path, &points)?;
            }
            if let Some(path) = &plot_latency {
                plot::latency(path, &points)?;
            }
            if as_json {
                json(&points)?;
            }
        }
    }
    Ok(())
}

fn print_stats(s: &SimStats) {
    println!(
        "simulated in {:.1} s: {} link events; sent {} real, {} drop, {} loop, {} acks, {} mixnode cover; {} real delivered, {} refused (queue full), {} failures",
        s.wall_secs,
        s.link_events,
        s.real_sent,
        s.drop_sent,
        s.loop_sent,
        s.acks_sent,
        s.mix_cover_sent,
        s.real_delivered,
        s.messages_refused,
        s.failures
    );
    println!(
        "mix pool (λ/μ): mean {:.1} packets, max {}",
        s.mean_mix_pool, s.max_mix_pool
    );
}

fn print_report(r: &AnalysisReport) {
    let s = &r.sender_entropy_bits;
    println!(
        "analysed {} of {} real messages in {:.1} s ({} active senders, at most {:.2} bits)",
        r.messages_analysed,
        r.messages_in_trace,
        r.analysis_secs,
        r.active_senders,
        r.max_sender_entropy_bits
    );
    println!(
        "sender entropy (timing):        mean {:.2} bits (median {:.2}, p5 {:.2}, min {:.2}); effective set mean {:.1}",
        s.mean, s.median, s.p5, s.min, r.sender_set.mean
    );
    let a = &r.sender_entropy_with_ack_bits;
    println!(
        "sender entropy (timing + ack):  mean {:.2} bits (median {:.2}, p5 {:.2}, min {:.2})",
        a.mean, a.median, a.p5, a.min
    );
    println!(
        "recipient entropy:              mean {:.2} bits over clients ({:.2} bits over mailbox servers)",
        r.recipient_entropy_bits.mean, r.recipient_server_entropy_bits.mean
    );
    print_attack(r);
    let l = &r.latency_ms;
    println!(
        "latency to the mailbox server:  median {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, mean {:.0} ms",
        l.median, l.p95, l.p99, l.mean
    );
    println!("pruned mass per attribution:    {:.1e}", r.mean_pruned_mass);
}

fn print_attack(r: &AnalysisReport) {
    let a = &r.attack;
    println!(
        "attack on {} messages: timing {:.4} ({:.1}× baseline), timing + ack {:.4} ({:.1}× baseline); random guess {:.4} (1/{}); mean belief in the true sender {:.4}",
        a.messages,
        a.accuracy,
        a.advantage,
        a.accuracy_with_ack,
        a.advantage_with_ack,
        a.baseline,
        a.active_senders,
        a.mean_posterior_of_sender
    );
}

fn print_point(p: &Point) {
    let r = &p.report;
    println!(
        "{:<28} x={:<8} H_sender {:.2} bits (+ack {:.2}), H_recipient {:.2}, attack {:.4}/{:.4} (+ack) vs {:.4}, pool {:.1}, latency median {:.0} ms p99 {:.0} ms  [{:.0}+{:.0} s]",
        p.preset,
        p.x,
        r.sender_entropy_bits.mean,
        r.sender_entropy_with_ack_bits.mean,
        r.recipient_entropy_bits.mean,
        r.attack.accuracy,
        r.attack.accuracy_with_ack,
        r.attack.baseline,
        p.sim.mean_mix_pool,
        r.latency_ms.median,
        r.latency_ms.p99,
        p.sim.wall_secs,
        r.analysis_secs
    );
}
