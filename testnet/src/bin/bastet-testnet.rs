//! `bastet-testnet`: a whole Bastet network on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bastet_client::{RoutePolicy, parse_classes, parse_list};
use bastet_testnet::{
    AnonymityOptions, CallDemoOptions, ChaosOptions, DemoOptions, Error, MixnodeBenchOptions,
    MixnodeBenchReport, Network, NetworkOptions, Scenario, SoakOptions, StopOutcome, Traffic,
    WebView, bench_mixnode, node_panics_error, process_rate, run_anonymity, run_call_demo,
    run_chaos, run_demo, run_soak,
};
use clap::{Args, Parser, Subcommand};

/// Exit status when a message was lost.
const EXIT_LOST: u8 = 1;
/// Exit status for bad arguments (clap uses it too).
const EXIT_USAGE: u8 = 2;
/// Exit status when the network could not be started or used.
const EXIT_ERROR: u8 = 3;
/// Exit status when the sender's route policy cannot be met.
const EXIT_REFUSED: u8 = 4;
/// Exit status after Ctrl-C or SIGTERM.
const EXIT_INTERRUPTED: u8 = 130;

/// Runs a whole Bastet network on 127.0.0.1: three directory authorities
/// (by default), six mixnodes in six jurisdictions (dealt two per layer each
/// epoch) and two mailbox servers, each a child process of this one.
///
/// Exit status: 0 success, 1 a message was lost, 2 bad arguments,
/// 3 the network failed (see the node logs), 4 the sender's route policy
/// cannot be met, 130 interrupted.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Directory holding bastet-directory, bastet-mixnode, bastet-mailbox
    /// and bastet (default: next to this executable).
    #[arg(long, global = true, env = "BASTET_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a network, send messages from one client to another, report
    /// each message's route and latency, stop the network.
    Demo {
        #[command(flatten)]
        net: NetArgs,
        /// Number of messages.
        #[arg(long, default_value_t = 3)]
        messages: usize,
        /// Bytes per message, up to 1 MiB. Up to 1800 bytes a message is
        /// text; longer, a file of random bytes (`bastet send --file`) that
        /// the recipient saves and the demo compares byte for byte.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Fault injection: every other mixnode (half of them) drops this
        /// fraction of the packets it receives; lost fragments and acks are
        /// retransmitted.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Print one JSON object on stdout instead of the summary.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the network to come up, and again for the
        /// messages to arrive.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Seconds between two sends (spread messages across epochs).
        #[arg(long, default_value_t = 0.0)]
        spacing: f64,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Both clients' traffic preset: interactive, balanced or paranoid
        /// (see `bastet status`).
        #[arg(long, default_value = "balanced")]
        preset: String,
        /// Override the preset's payload rate λ_P (packets/s, at most 100):
        /// large --size or many --messages finish sooner.
        #[arg(long, value_name = "PER_SEC")]
        payload_rate: Option<f64>,
    },
    /// Start a network and run a call between two clients through it:
    /// alice says a speech-like signal with pauses, bob a tone sweep (and
    /// both show a moving test pattern in the video profile). Reports both
    /// ends' statistics (latency, loss, concealment, bitrates), checks
    /// without loss that what each heard is sample for sample a local Opus
    /// encode and decode of what the other said, and measures cell sizes
    /// and timing at the rendezvous relay (speech against silence, a
    /// Kolmogorov-Smirnov test). Exit status 1 if a check fails.
    CallDemo {
        #[command(flatten)]
        net: NetArgs,
        /// normal, constrained or video.
        #[arg(long, default_value = "normal")]
        profile: String,
        /// Seconds of talk.
        #[arg(long, default_value_t = 10,
              value_parser = clap::value_parser!(u64).range(2..=600))]
        duration: u64,
        /// Fault injection: the rendezvous relay corrupts this fraction of
        /// the call's cells (so they are lost); try 0.1.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Alice talks into a live microphone (the default one, or ID from
        /// `bastet devices`) instead of her file; bob's end checks nothing
        /// against it. Needs bastet built with `--features live-audio`.
        #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "")]
        mic: Option<String>,
        /// Alice also hears bob on a live speaker (the default one, or ID).
        /// Needs bastet built with `--features live-audio`.
        #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "")]
        speaker: Option<String>,
        /// Print one JSON object on stdout instead of the summary.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the network to come up.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Faults under load: start a network, stream messages between
    /// several clients (a ring, each with its daemon), inject the fault
    /// half-way, wait for every message, and report sent / delivered /
    /// duplicated / lost / altered with latencies. Exit status 1 if any
    /// message was lost, duplicated or altered. See RELIABILITY.md.
    Chaos {
        /// kill-mailbox, kill-mixnode, freeze-mixnode, one-authority-down,
        /// two-authorities-down, or all (one network each, in turn).
        scenario: String,
        /// The long form: 4 clients, 50 messages each, a round a second
        /// (default: the test suite's short form, 2 clients and 6 messages).
        #[arg(long)]
        long: bool,
        /// Clients in the ring (at least 2); overrides the form's.
        #[arg(long)]
        clients: Option<usize>,
        /// Messages each client sends; overrides the form's.
        #[arg(long)]
        messages: Option<usize>,
        /// One JSON object per scenario on stdout instead of the summary.
        #[arg(long)]
        json: bool,
        /// Where to make the network: --dir and --keep as for `demo` (one
        /// scenario only).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the network's files and say where.
        #[arg(long)]
        keep: bool,
    },
    /// The soak: a network under a steady load of messages between several
    /// clients (with their cover traffic) for MINUTES, sampling every
    /// process's memory (VmRSS) and open descriptors from /proc; reports
    /// each process's start, end and peak, and whether it stayed flat after
    /// the warm-up. Exit status 1 if a message was lost or duplicated, or a
    /// process grew past the bound (see RELIABILITY.md).
    Soak {
        /// How long the load runs.
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Clients in the ring (at least 2).
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Seconds between two samples (default: 10, or less for a short soak).
        #[arg(long)]
        sample_secs: Option<u64>,
        /// One JSON object on stdout (with every sample) instead of the table.
        #[arg(long)]
        json: bool,
        /// Where to make the network (new or empty directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the network's files and say where.
        #[arg(long)]
        keep: bool,
    },
    /// Anonymity against a global passive adversary, measured on a real
    /// network: CLIENTS clients in sender→recipient pairs, each sender
    /// queueing messages to its partner at Poisson times for MINUTES, with
    /// the relays' and clients' trace test hooks on. Reports the Shannon
    /// entropy of each message's sender and recipient anonymity sets (mean
    /// and min, bits, and the effective set 2^H), a timing-correlation
    /// attack's accuracy against a random guess, and latency percentiles.
    /// Measurements only: the exit status says nothing about the figures.
    Anonymity {
        /// Clients, an even number (half of them senders).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// How long the workload runs.
        #[arg(long, default_value_t = 2.0)]
        minutes: f64,
        /// The clients' traffic preset: interactive, balanced or paranoid
        /// (mixnodes keep their default cover rate and take the preset's
        /// mean delay).
        #[arg(long, default_value = "balanced", conflicts_with = "no_cover")]
        preset: String,
        /// No cover traffic (clients send each message at once, mixnodes
        /// send no loops) and no mix delays: what the attack should beat.
        #[arg(long)]
        no_cover: bool,
        /// Messages per second each sender queues.
        #[arg(long, default_value_t = 0.5)]
        rate: f64,
        /// Real messages analysed at most (taken evenly).
        #[arg(long, default_value_t = 400)]
        max_messages: usize,
        /// Also write the trace here (bastet-anonymity JSON lines, which
        /// `bastet-anonymity analyse` reads).
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
        /// One JSON object on stdout instead of the summary.
        #[arg(long)]
        json: bool,
        /// Where to make the network (new or empty directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the network's files (with every test log) and say where.
        #[arg(long)]
        keep: bool,
    },
    /// Benchmarks over real processes on loopback (figures in
    /// BENCHMARKS.md). Goals are reported, never asserted.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Start a network, print where each node listens, and run until Ctrl-C.
    Up {
        #[command(flatten)]
        net: NetArgs,
        /// Print the layout as one JSON object on stdout (with `web_url`
        /// when --web is given).
        #[arg(long)]
        json: bool,
        /// Serve a live view of the network (nodes by layer and
        /// jurisdiction, their health and throughput) on this loopback
        /// address, e.g. 127.0.0.1:8080 (port 0: any free port; the URL is
        /// printed). Open it in a browser on this machine.
        #[arg(long, value_name = "ADDR")]
        web: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// One real mixnode process (on --cores CPUs, with taskset) fed
    /// pre-built unique packets over TLS by this process, its next hop a
    /// sink here: packets/s forwarded against the bare Sphinx process rate
    /// on the same cores, CPU used, latency added per hop at 25, 50 and 90 %
    /// of that rate (zero mixing delay), peak RSS, and 2x overload with the
    /// recovery after it. Takes a few minutes (packets are built first).
    Mixnode {
        /// CPUs for the mixnode; this process takes the others, or shares
        /// them when there are none left.
        #[arg(long, default_value_t = 1)]
        cores: usize,
        /// Length of the throughput phase and of each latency phase.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Print one JSON object on stdout instead of the summary.
        #[arg(long)]
        json: bool,
        /// Also draw throughput and latency against offered load here (SVG).
        #[arg(long, value_name = "FILE")]
        plot: Option<PathBuf>,
        /// The mixnode's `packet_work`: `runtime` (its default: packet
        /// tasks on its async runtime) or `threads` (packet threads).
        #[arg(long, value_name = "WHERE", default_value = "runtime", value_parser = ["runtime", "threads"])]
        packet_work: String,
    },
    /// Draw the plot of a report saved with `bench mixnode --json`
    /// (as `--plot` would have), without measuring again.
    Plot {
        /// The saved report.
        report: PathBuf,
        /// The SVG to write.
        out: PathBuf,
    },
    /// The bound: unwrap pre-built packets (Sphinx prepare + process) on
    /// THREADS threads for SECONDS and print the rate as JSON. Run by
    /// `bench mixnode` on the mixnode's CPUs.
    #[command(hide = true)]
    ProcessRate {
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}

#[derive(Args)]
struct NetArgs {
    /// Put keys, configs, databases and logs here (new or empty directory;
    /// never deleted). Default: a temporary directory, deleted on exit.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the temporary directory on exit and say where it is.
    #[arg(long)]
    keep: bool,
    /// Epoch length in seconds for the authorities, nodes and clients
    /// (short, so that Sphinx key rotation is seen; at least 10).
    #[arg(long, default_value_t = 30)]
    epoch_secs: u64,
    /// Number of directory authorities.
    #[arg(long, default_value_t = 3)]
    authorities: usize,
    /// Authority signatures a consensus needs (default: a majority).
    #[arg(long)]
    threshold: Option<usize>,
    /// Run --mixes-per-jurisdiction mixnodes in each of these jurisdictions
    /// (e.g. DE,CH,IS,NL,US) instead of the default six mixnodes in DE,
    /// CH, IS, NL, SE and FR.
    #[arg(long, value_name = "CODES")]
    jurisdictions: Option<String>,
    /// Mixnodes per jurisdiction with --jurisdictions (3 puts one in every
    /// layer in every epoch).
    #[arg(long, default_value_t = 3)]
    mixes_per_jurisdiction: usize,
}

/// The sending client's route policy in the demo.
#[derive(Args)]
struct PolicyArgs {
    /// Hop classes: name=CC+CC,... (e.g. domestic=DE,neutral=CH+IS,external=NL);
    /// without --template the template is these classes in order.
    #[arg(long, value_name = "CLASSES")]
    policy: Option<String>,
    /// The hop classes of each route, first mix to last (3 or 4).
    #[arg(long, value_name = "CLASSES")]
    template: Option<String>,
    /// Jurisdictions the route must never cross.
    #[arg(long, value_name = "CODES")]
    avoid: Option<String>,
    /// A route policy file (the keys of client.toml's [route], at the top
    /// level); --policy, --template and --avoid override its keys.
    #[arg(long, value_name = "FILE")]
    policy_file: Option<PathBuf>,
}

impl PolicyArgs {
    /// The policy, validated, or `None` when no flag was given.
    fn policy(&self) -> Result<Option<RoutePolicy>, Error> {
        let bad = |e: String| Error::InvalidOption(e);
        if self.policy.is_none()
            && self.template.is_none()
            && self.avoid.is_none()
            && self.policy_file.is_none()
        {
            return Ok(None);
        }
        let base = match &self.policy_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("--policy-file {}: {e}", path.display())))?;
                RoutePolicy::from_toml(&text)
                    .map_err(|e| bad(format!("--policy-file {}: {e}", path.display())))?
            }
            None => RoutePolicy::default(),
        };
        let classes = self
            .policy
            .as_deref()
            .map(parse_classes)
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        let template = self.template.as_deref().map(|t| parse_list(t, false));
        let avoid = self.avoid.as_deref().map(|a| parse_list(a, true));
        let policy = base.with_overrides(classes, template, avoid);
        policy
            .validate("")
            .map_err(|e| bad(format!("route policy: {e}")))?;
        Ok(Some(policy))
    }
}

impl NetArgs {
    fn options(&self, bin_dir: Option<PathBuf>, ready: Duration) -> NetworkOptions {
        NetworkOptions {
            dir: self.dir.clone(),
            keep: self.keep,
            bin_dir,
            epoch_secs: self.epoch_secs,
            authorities: self.authorities,
            threshold: self.threshold,
            ready_timeout: ready,
            jurisdictions: self.jurisdictions.as_deref().map(|j| parse_list(j, true)),
            mixes_per_jurisdiction: self.mixes_per_jurisdiction,
            loss: 0.0,
            ingress_log: false,
            trace: false,
            mix_cover: None,
            cell_loss: 0.0,
            cell_log: false,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BASTET_TESTNET_LOG")
                .unwrap_or_else(|_| "bastet_testnet=info,warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bastet-testnet: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        // Whichever comes first: the work, or a signal. On a signal the
        // work's future is dropped, and with it the network, whose drop
        // stops every child process.
        // Biased towards the signal: Ctrl-C in a terminal also reaches the
        // children, and their failing must not mask the interruption.
        tokio::select! {
            biased;
            r = interrupted() => Err(r),
            r = run(cli) => r,
        }
    });
    match result {
        Ok(code) => code,
        Err(e @ Error::InvalidOption(_)) => {
            eprintln!("bastet-testnet: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e @ Error::RouteRefused(_)) => {
            eprintln!("bastet-testnet: {e}");
            ExitCode::from(EXIT_REFUSED)
        }
        Err(Error::Interrupted) => {
            eprintln!("bastet-testnet: interrupted; every node was stopped");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("bastet-testnet: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Completes at the first SIGINT (Ctrl-C) or SIGTERM.
async fn interrupted() -> Error {
    match bastet_link::shutdown_signal() {
        Ok(signal) => signal.await,
        Err(e) => {
            tracing::warn!("cannot watch for Ctrl-C and SIGTERM: {e}");
            std::future::pending::<()>().await;
        }
    }
    Error::Interrupted
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Demo {
            net,
            messages,
            size,
            loss,
            json,
            timeout,
            spacing,
            policy,
            preset,
            payload_rate,
        } => {
            let timeout = Duration::from_secs(timeout);
            let spacing = Duration::try_from_secs_f64(spacing).map_err(|_| {
                Error::InvalidOption(format!("--spacing {spacing}: not a number of seconds"))
            })?;
            let options = DemoOptions {
                messages,
                size,
                timeout,
                spacing,
                policy: policy.policy()?,
                traffic: bastet_client::TrafficConfig {
                    preset,
                    payload_rate,
                    ..bastet_client::TrafficConfig::default()
                },
            };
            let network = NetworkOptions {
                loss,
                ..net.options(cli.bin_dir, timeout)
            };
            demo(network, &options, json, net.keep || net.dir.is_some()).await
        }
        Command::CallDemo {
            net,
            profile,
            duration,
            loss,
            mic,
            speaker,
            json,
            timeout,
        } => {
            if !(0.0..1.0).contains(&loss) {
                return Err(Error::InvalidOption(
                    "--loss must be at least 0 and below 1".into(),
                ));
            }
            let options = CallDemoOptions {
                profile,
                duration: Duration::from_secs(duration),
                loss,
                mic,
                speaker,
            };
            let network = NetworkOptions {
                cell_loss: loss,
                cell_log: true,
                ..net.options(cli.bin_dir, Duration::from_secs(timeout))
            };
            call_demo(network, &options, json).await
        }
        Command::Chaos {
            scenario,
            long,
            clients,
            messages,
            json,
            dir,
            keep,
        } => {
            let scenarios = if scenario == "all" {
                if dir.is_some() {
                    return Err(Error::InvalidOption(
                        "--dir takes one scenario, not all (each runs its own network)".into(),
                    ));
                }
                Scenario::ALL.to_vec()
            } else {
                vec![scenario.parse::<Scenario>()?]
            };
            let mut failed = false;
            for scenario in scenarios {
                let mut options = if long {
                    ChaosOptions::long(scenario)
                } else {
                    ChaosOptions::short(scenario)
                };
                options.clients = clients.unwrap_or(options.clients);
                options.messages = messages.unwrap_or(options.messages);
                if options.clients < 2 || options.messages == 0 {
                    return Err(Error::InvalidOption(
                        "--clients must be at least 2 and --messages at least 1".into(),
                    ));
                }
                let base = NetworkOptions {
                    dir: dir.clone(),
                    keep,
                    bin_dir: cli.bin_dir.clone(),
                    ..NetworkOptions::default()
                };
                let report = run_chaos(base, &options).await?;
                failed |= !report.passed();
                if json {
                    print_json(&report);
                } else {
                    println!(
                        "{} {}",
                        if report.passed() { "PASS" } else { "FAIL" },
                        report.summary()
                    );
                    if !report.lost_ids.is_empty() {
                        println!("  lost: {}", report.lost_ids.join(", "));
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(EXIT_LOST)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Soak {
            minutes,
            clients,
            sample_secs,
            json,
            dir,
            keep,
        } => {
            if !(minutes > 0.0 && minutes <= 24.0 * 60.0) || clients < 2 {
                return Err(Error::InvalidOption(
                    "--minutes must be above 0 and at most 1440, --clients at least 2".into(),
                ));
            }
            let mut options = SoakOptions::minutes(minutes);
            options.clients = clients;
            if let Some(secs) = sample_secs {
                options.sample_every = Duration::from_secs(secs.max(1));
            }
            let base = NetworkOptions {
                dir,
                keep,
                bin_dir: cli.bin_dir,
                ..NetworkOptions::default()
            };
            let report = run_soak(base, &options).await?;
            if json {
                print_json(&report);
            } else {
                print!("{}", report.to_human());
                println!("{}", if report.passed() { "PASS" } else { "FAIL" });
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_LOST)
            })
        }
        Command::Anonymity {
            clients,
            minutes,
            preset,
            no_cover,
            rate,
            max_messages,
            trace,
            json,
            dir,
            keep,
        } => {
            if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
                return Err(Error::InvalidOption(
                    "--minutes must be above 0 and at most 1440".into(),
                ));
            }
            let options = AnonymityOptions {
                clients,
                duration: Duration::from_secs_f64(minutes * 60.0),
                message_rate: rate,
                traffic: if no_cover {
                    Traffic::NoCover
                } else {
                    Traffic::Preset(preset)
                },
                trace,
                max_messages,
            };
            // Fail on a bad preset before starting anything.
            options.traffic.params()?;
            let base = NetworkOptions {
                dir,
                keep,
                bin_dir: cli.bin_dir,
                ..NetworkOptions::default()
            };
            let report = run_anonymity(base, &options).await?;
            if json {
                print_json(&report);
            } else {
                print!("{}", report.to_human());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { what } => bench(what, cli.bin_dir).await,
        Command::Up { net, json, web } => {
            up(net.options(cli.bin_dir, Duration::from_secs(60)), json, web).await
        }
    }
}

async fn bench(what: BenchWhat, bin_dir: Option<PathBuf>) -> Result<ExitCode, Error> {
    match what {
        BenchWhat::Mixnode {
            cores,
            seconds,
            json,
            plot,
            packet_work,
        } => {
            let options = MixnodeBenchOptions {
                cores,
                seconds,
                bin_dir,
                packet_work,
            };
            let report = bench_mixnode(&options).await?;
            if let Some(path) = &plot {
                report.plot(path)?;
                eprintln!("plot written to {}", path.display());
            }
            if json {
                print_json(&report);
            } else {
                print!("{}", report.to_human());
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchWhat::Plot { report, out } => {
            MixnodeBenchReport::load(&report)?.plot(&out)?;
            eprintln!("plot written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        BenchWhat::ProcessRate { threads, seconds } => {
            let rate = tokio::task::spawn_blocking(move || process_rate(threads, seconds))
                .await
                .map_err(|e| Error::InvalidOption(format!("process-rate: {e}")))??;
            match serde_json::to_string(&rate) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("bastet-testnet: cannot encode the rate: {e}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn demo(
    net_options: NetworkOptions,
    options: &DemoOptions,
    json: bool,
    kept: bool,
) -> Result<ExitCode, Error> {
    // Checked before anything starts, so a typo costs no network.
    if options.messages == 0 || options.size == 0 || options.size > bastet_testnet::MAX_SIZE {
        return Err(Error::InvalidOption(format!(
            "--messages must be at least 1 and --size between 1 and {}",
            bastet_testnet::MAX_SIZE
        )));
    }
    options.traffic.params().map_err(|e| {
        Error::InvalidOption(format!(
            "--preset/--payload-rate: {}",
            e.to_string().trim_start_matches("configuration: traffic.")
        ))
    })?;
    let mut network = Network::start(net_options).await?;
    let outcome = run_demo(&network, options).await;
    if let Err(e @ Error::RouteRefused(_)) = outcome {
        // The policy, not the network, is at fault: nothing to inspect.
        report_stop(network.stop());
        return Err(e);
    }
    if !outcome.as_ref().is_ok_and(|r| r.all_delivered()) {
        eprintln!("relay counters:\n{}", network.counters().await);
    }
    let mut report = stop_network(&mut network, outcome)?;
    if kept || !report.all_delivered() {
        report.dir = Some(network.keep_files());
    }
    if json {
        print_json(&report);
    } else {
        print!("{}", report.to_human());
    }
    if let Some(dir) = &report.dir {
        eprintln!(
            "network files (configs, keys, databases, node logs) kept in {}",
            dir.display()
        );
    }
    Ok(if report.all_delivered() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_LOST)
    })
}

async fn up(
    net_options: NetworkOptions,
    json: bool,
    web: Option<SocketAddr>,
) -> Result<ExitCode, Error> {
    if let Some(addr) = web
        && !addr.ip().is_loopback()
    {
        // Checked before anything starts, so a typo costs no network.
        return Err(Error::InvalidOption(format!(
            "--web {addr}: the web view serves on loopback only (127.0.0.0/8 or ::1), \
             e.g. --web 127.0.0.1:8080; reach it from elsewhere through an SSH tunnel"
        )));
    }
    let mut network = Network::start(net_options).await?;
    let view = match web {
        Some(addr) => Some(WebView::start(network.layout(), addr).await?),
        None => None,
    };
    let layout = network.layout();
    if json {
        match serde_json::to_value(layout) {
            Ok(mut value) => {
                if let (Some(view), Some(object)) = (&view, value.as_object_mut()) {
                    object.insert("web_url".into(), view.url().into());
                }
                println!("{value}");
            }
            Err(e) => eprintln!("bastet-testnet: cannot encode the layout: {e}"),
        }
    } else {
        if let Some(view) = &view {
            println!("live view: {} (refreshed every 2 s)", view.url());
        }
        println!("Bastet testnet running in {}", layout.dir.display());
        print!("{}", layout.describe());
        println!(
            "directory config for clients: {}",
            layout.directory_config.display()
        );
        println!(
            "try: bastet --data-dir {d}/clients/me init --directory {c}",
            d = layout.dir.display(),
            c = layout.directory_config.display()
        );
        println!("Ctrl-C stops every node.");
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        network.check_alive()?;
    }
}

fn report_stop(outcomes: Vec<(String, StopOutcome)>) {
    for (name, outcome) in outcomes {
        match outcome {
            StopOutcome::Killed => {
                tracing::warn!("{name} did not exit within 3 s of SIGTERM and was killed");
            }
            StopOutcome::AlreadyExited(status) => {
                tracing::warn!(
                    "{name} had already exited ({status}) before the network was stopped"
                );
            }
            StopOutcome::Exited(_) => {}
        }
    }
}

/// Prints `report` as one line of JSON (what `--json` asks for).
async fn call_demo(
    net_options: NetworkOptions,
    options: &CallDemoOptions,
    json: bool,
) -> Result<ExitCode, Error> {
    if bastet_call::Profile::by_name(&options.profile).is_none() {
        return Err(Error::InvalidOption(format!(
            "--profile {}: use normal, constrained or video",
            options.profile
        )));
    }
    let mut network = Network::start(net_options).await?;
    let outcome = run_call_demo(&network, options).await;
    let report = stop_network(&mut network, outcome)?;
    if json {
        print_json(&report);
    } else {
        print!("{}", report.to_human());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        keep_network(&mut network);
        ExitCode::FAILURE
    })
}

/// Stops `network` and returns `outcome`; a node that panicked is the
/// error instead. The files are kept (and where said) on any error.
fn stop_network<T>(network: &mut Network, outcome: Result<T, Error>) -> Result<T, Error> {
    report_stop(network.stop());
    let panics = network.panics();
    if !panics.is_empty() {
        keep_network(network);
        return Err(node_panics_error(&panics));
    }
    outcome.inspect_err(|_| keep_network(network))
}

/// Keeps the network's files and says where.
fn keep_network(network: &mut Network) {
    let dir = network.keep_files();
    eprintln!("bastet-testnet: network files kept in {}", dir.display());
}

fn print_json(report: &impl serde::Serialize) {
    match serde_json::to_string(report) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("bastet-testnet: cannot encode the report: {e}"),
    }
}
