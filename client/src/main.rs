//! `bastet`: the Bastet client command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bastet_client::{
    Address, Client, DataDir, InboxReport, RoutePolicy, SentMessage, choose_policy_nodes,
    parse_classes, parse_list,
};
use bastet_directory::{Descriptor, DirectoryConfig};
use bastet_sphinx::NodeId;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

type CliResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The Bastet client: send end-to-end encrypted messages through the mixnet
/// and read your mailbox.
#[derive(Parser)]
#[command(name = "bastet", version, about)]
struct Cli {
    /// Data directory holding this client's keys and client.toml
    /// [default: $HOME/.local/share/bastet]
    #[arg(long, global = true, env = "BASTET_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create keys, register a mailbox and write client.toml; prints the
    /// address to give to people who should be able to write to you.
    Init {
        /// TOML file with the directory authorities to trust (a
        /// DirectoryConfig: epoch_secs and [[authorities]]).
        #[arg(long, value_name = "FILE")]
        directory: PathBuf,
        /// Node id (hex) of the mailbox server to use [default: a random one
        /// from the consensus].
        #[arg(long, value_name = "HEX")]
        mailbox_server: Option<String>,
    },
    /// Print this client's address.
    Address,
    /// Send a text message to an address.
    Send {
        /// The recipient's address (bastet1...).
        address: String,
        /// The message text.
        text: String,
        /// Print one JSON object: message id, send time and route.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Read new messages: decrypt, verify, print, then delete them from the
    /// mailbox server.
    Inbox {
        /// Print one JSON object with the messages.
        #[arg(long)]
        json: bool,
        /// Poll for up to SECS seconds until at least one new message arrives.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
    /// Show the route policy and the nodes that meet it, or draw routes.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Print the route policy in force and, for the current consensus, the
    /// eligible nodes of each hop class.
    Show {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Draw routes as `send` would and print them with jurisdictions and
    /// operators.
    Sample {
        /// How many routes.
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// End the routes at this address's mailbox server [default: your
        /// own].
        #[arg(long, value_name = "ADDRESS")]
        to: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

/// Route policy overrides for one command (client.toml's `[route]` is not
/// changed).
#[derive(Args)]
struct PolicyArgs {
    /// Use the route policy in FILE (the keys of [route], at the top level)
    /// instead of client.toml's.
    #[arg(long, value_name = "FILE")]
    policy_file: Option<PathBuf>,
    /// Hop classes, replacing the policy's: name=CC+CC,... (e.g.
    /// domestic=DE,neutral=CH+IS,external=NL); without --template the
    /// template is these classes in order.
    #[arg(long, value_name = "CLASSES")]
    policy: Option<String>,
    /// The hop classes of the route, first mix to last (3 or 4; "any" for
    /// any jurisdiction), e.g. domestic,neutral,external.
    #[arg(long, value_name = "CLASSES")]
    template: Option<String>,
    /// Jurisdictions never to cross, e.g. US,GB (replaces the policy's).
    #[arg(long, value_name = "CODES")]
    avoid: Option<String>,
}

impl PolicyArgs {
    fn given(&self) -> bool {
        self.policy_file.is_some()
            || self.policy.is_some()
            || self.template.is_some()
            || self.avoid.is_some()
    }

    /// `client` with the overrides applied, if any were given.
    fn apply(&self, client: Client) -> CliResult<Client> {
        if !self.given() {
            return Ok(client);
        }
        let base = match &self.policy_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--policy-file {}: {e}", path.display()))?;
                RoutePolicy::from_toml(&text)
                    .map_err(|e| format!("--policy-file {}: {e}", path.display()))?
            }
            None => client.config().route.clone(),
        };
        let classes = self.policy.as_deref().map(parse_classes).transpose()?;
        let template = self.template.as_deref().map(|t| parse_list(t, false));
        let avoid = self.avoid.as_deref().map(|a| parse_list(a, true));
        Ok(client.with_route_policy(base.with_overrides(classes, template, avoid))?)
    }
}

fn main() -> ExitCode {
    bastet_link::init_logging("warn");
    bastet_link::exit_code("bastet: error", real_main(Cli::parse()))
}

fn real_main(cli: Cli) -> CliResult<()> {
    let dir = DataDir::new(data_dir(cli.data_dir)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Init {
            directory,
            mailbox_server,
        } => {
            let directory = read_directory_file(&directory)?;
            let mailbox_server = mailbox_server
                .map(|s| {
                    NodeId::from_hex(s.trim()).ok_or_else(|| {
                        format!("--mailbox-server {s:?}: not a node id (64 hex digits)")
                    })
                })
                .transpose()?;
            let client = runtime.block_on(Client::init(dir.clone(), directory, mailbox_server))?;
            eprintln!(
                "bastet: client created in {}; mailbox on server {}. Your address:",
                dir.path().display(),
                client.config().mailbox_server
            );
            println!("{}", client.address()?);
        }
        Command::Address => println!("{}", Client::open(dir)?.address()?),
        Command::Send {
            address,
            text,
            json,
            policy,
        } => {
            let to = Address::parse(&address)?;
            let client = policy.apply(Client::open(dir)?)?;
            let sent = runtime.block_on(client.send(&to, &text))?;
            print_sent(&sent, json)?;
        }
        Command::Inbox { json, wait } => {
            let client = Client::open(dir)?;
            let report = runtime.block_on(client.inbox(Duration::from_secs(wait)))?;
            print_inbox(&report, json)?;
        }
        Command::Route { command } => runtime.block_on(route_command(dir, command))?,
    }
    Ok(())
}

/// `bastet route show` and `bastet route sample`.
async fn route_command(dir: DataDir, command: RouteCommand) -> CliResult<()> {
    let (policy_args, json) = match &command {
        RouteCommand::Show { policy, json } | RouteCommand::Sample { policy, json, .. } => {
            (policy, *json)
        }
    };
    let client = policy_args.apply(Client::open(dir)?)?;
    let policy = client.config().route.clone();
    let consensus = client.consensus().await?;
    let node_json = |d: &Descriptor, role: String| {
        json!({
            "node": d.node_id().to_hex(),
            "role": role,
            "jurisdiction": d.jurisdiction,
            "operator": d.operator,
        })
    };
    match command {
        RouteCommand::Show { .. } => {
            let hops = policy.candidates(&consensus);
            if json {
                let hops: Vec<_> = hops
                    .iter()
                    .map(|h| {
                        json!({
                            "hop": h.hop,
                            "class": h.class,
                            "jurisdictions": h.jurisdictions,
                            "layer": h.layer,
                            "eligible": h.nodes.iter().map(|d| node_json(d, format!("mix{}", h.layer))).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let out = json!({ "policy": policy, "epoch": consensus.epoch, "hops": hops });
                println!("{}", serde_json::to_string(&out)?);
            } else {
                print!("{}", describe_policy(&policy));
                println!("consensus epoch {}:", consensus.epoch);
                for h in &hops {
                    let wanted = if h.jurisdictions.is_empty() {
                        "any".to_string()
                    } else {
                        h.jurisdictions.join(", ")
                    };
                    println!(
                        "  hop {} {} ({wanted}) from layer {}: {} eligible",
                        h.hop,
                        h.class,
                        h.layer,
                        h.nodes.len()
                    );
                    for d in &h.nodes {
                        println!(
                            "    {} {} {}",
                            d.node_id().short(),
                            d.jurisdiction,
                            d.operator
                        );
                    }
                }
            }
        }
        RouteCommand::Sample { count, to, .. } => {
            let server = match to {
                Some(a) => Address::parse(&a)?.mailbox_server,
                None => client.config().mailbox_server_id()?,
            };
            let mut routes = Vec::with_capacity(count);
            for _ in 0..count {
                routes.push(choose_policy_nodes(
                    &consensus,
                    &policy,
                    &server,
                    &mut rand::rng(),
                )?);
            }
            let role = |d: &Descriptor| match consensus.layer_of(&d.node_id()) {
                Some(l) => format!("mix{l}"),
                None => "mailbox".to_string(),
            };
            if json {
                let routes: Vec<Vec<_>> = routes
                    .iter()
                    .map(|r| r.iter().map(|d| node_json(d, role(d))).collect())
                    .collect();
                let out = json!({ "epoch": consensus.epoch, "routes": routes });
                println!("{}", serde_json::to_string(&out)?);
            } else {
                for r in &routes {
                    let hops: Vec<String> = r
                        .iter()
                        .map(|d| {
                            format!(
                                "{} {} ({}, {})",
                                role(d),
                                d.node_id().short(),
                                d.jurisdiction,
                                d.operator
                            )
                        })
                        .collect();
                    println!("{}", hops.join(" -> "));
                }
            }
        }
    }
    Ok(())
}

/// The policy as `route show` prints it.
fn describe_policy(policy: &RoutePolicy) -> String {
    let mut s = format!("template: {}\n", policy.template.join(" -> "));
    for (name, codes) in &policy.classes {
        s.push_str(&format!("class {name}: {}\n", codes.join(", ")));
    }
    s.push_str(&format!(
        "avoid: {}\n",
        if policy.avoid.is_empty() {
            "none".to_string()
        } else {
            policy.avoid.join(", ")
        }
    ));
    s.push_str(&format!(
        "distinct_operators: {}, distinct_jurisdictions: {}, allow_avoided_mailbox: {}\n",
        policy.distinct_operators, policy.distinct_jurisdictions, policy.allow_avoided_mailbox
    ));
    s
}

fn data_dir(given: Option<PathBuf>) -> CliResult<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(".local/share/bastet")),
        _ => {
            Err("no data dir: pass --data-dir DIR or set BASTET_DATA_DIR (HOME is not set)".into())
        }
    }
}

fn read_directory_file(path: &Path) -> CliResult<DirectoryConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--directory {}: {e}", path.display()))?;
    let config: DirectoryConfig =
        toml::from_str(&text).map_err(|e| format!("--directory {}: {e}", path.display()))?;
    config
        .validate()
        .map_err(|e| format!("--directory {}: {e}", path.display()))?;
    Ok(config)
}

fn print_sent(sent: &SentMessage, json: bool) -> CliResult<()> {
    if json {
        let route: Vec<_> = sent
            .route
            .iter()
            .map(|n| {
                json!({
                    "node": n.node.to_hex(),
                    "role": n.role_label(),
                    "jurisdiction": n.jurisdiction,
                })
            })
            .collect();
        let out = json!({
            "message_id": sent.message_id.to_hex(),
            "sent_at_ms": sent.sent_at_ms,
            "route": route,
            "epoch": sent.epoch,
            "signatures": sent.signatures,
        });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        let route: Vec<String> = sent
            .route
            .iter()
            .map(|n| format!("{} {} ({})", n.role_label(), n.node.short(), n.jurisdiction))
            .collect();
        println!(
            "sent message {} via {}",
            sent.message_id.to_hex(),
            route.join(" -> ")
        );
    }
    Ok(())
}

fn print_inbox(report: &InboxReport, json: bool) -> CliResult<()> {
    if json {
        let messages: Vec<_> = report
            .messages
            .iter()
            .map(|m| {
                json!({
                    "message_id": m.message.message_id.to_hex(),
                    "from": hex::encode(m.message.from),
                    "verified": m.message.verified,
                    "sent_at_ms": m.message.sent_at_ms,
                    "received_at_ms": m.received_at_ms,
                    "text": m.message.text,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string(&json!({ "messages": messages }))?
        );
    } else if report.messages.is_empty() {
        println!("No new messages.");
    } else {
        for m in &report.messages {
            let status = if m.message.verified {
                "signature verified"
            } else {
                "NOT VERIFIED: the sender is unproven"
            };
            println!("From:     {} ({status})", hex::encode(m.message.from));
            println!("Sent:     {}", format_utc_ms(m.message.sent_at_ms));
            println!("Received: {}", format_utc_ms(m.received_at_ms));
            println!("Id:       {}", m.message.message_id.to_hex());
            println!();
            println!("{}", terminal_safe(&m.message.text));
            println!();
        }
    }
    if !report.unreadable.is_empty() {
        eprintln!(
            "bastet: warning: {} message(s) in the mailbox could not be decrypted; they were kept on the server:",
            report.unreadable.len()
        );
        for u in &report.unreadable {
            eprintln!("  seq {}: {}", u.seq, u.error);
        }
    }
    if let Some(e) = &report.delete_error {
        eprintln!(
            "bastet: warning: could not delete the messages read from the server ({e}); they will not be shown again"
        );
    }
    Ok(())
}

/// Escapes control and bidirectional-override characters so that a message
/// cannot rewrite the terminal or disguise its text.
fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if (c.is_control() && c != '\n' && c != '\t') || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// `YYYY-MM-DD hh:mm:ss.mmm UTC` for unix milliseconds.
fn format_utc_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn times_format_as_utc() {
        assert_eq!(format_utc_ms(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(
            format_utc_ms(951_782_400_007),
            "2000-02-29 00:00:00.007 UTC"
        );
        assert_eq!(
            format_utc_ms(1_767_225_599_999),
            "2025-12-31 23:59:59.999 UTC"
        );
    }

    #[test]
    fn terminal_escapes_are_neutralised() {
        assert_eq!(terminal_safe("a\nb\tc"), "a\nb\tc");
        assert_eq!(terminal_safe("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(terminal_safe("x\u{202e}y"), "x\\u{202e}y");
    }
}
