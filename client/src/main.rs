//! `bastet`: the Bastet client command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bastet_client::daemon::{
    self,
    api::{MessageReport, Request, Response, StatusReport, WireFile},
};
use bastet_client::{
    Client, ContactInfo, ContactRequest, ContactResponse, Contacts, Content, DataDir,
    DeliveryState, InboxReport, RoutePolicy, SendOptions, choose_policy_nodes, parse_classes,
    parse_list, save_received_file,
};
use bastet_directory::{Descriptor, DirectoryConfig};
use bastet_sphinx::NodeId;
use clap::{Args, CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};
use serde_json::json;
use zeroize::Zeroizing;

use bastet_client::layers::psk::MIN_PASSPHRASE_CHARS;
use bastet_client::store::{BLOCK_LEN, FileBlocks, Vault};

type CliResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The Bastet client: send end-to-end encrypted messages through the mixnet
/// and read your mailbox.
#[derive(Parser)]
#[command(name = "bastet", version, after_help = FIRST_STEPS)]
struct Cli {
    /// Data directory holding this client's keys and client.toml
    /// [default: $HOME/.local/share/bastet]
    #[arg(long, global = true, env = "BASTET_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Read the encrypted store's passphrase from file descriptor N (one
    /// line) instead of asking at the terminal; for automation, e.g.
    /// `--passphrase-fd 3 3<FILE`.
    #[arg(long, global = true, env = "BASTET_PASSPHRASE_FD", value_name = "N")]
    passphrase_fd: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

/// The top-level help's way in: what to run first, and where the guide is.
const FIRST_STEPS: &str = "\
First steps (the guide: docs/users.md):
  1. bastet store create                      the encrypted store (asks for a passphrase)
  2. bastet init --directory directory.toml   keys and a mailbox (directory.toml: from your network)
  3. bastet daemon                            keep it running: cover traffic, mailbox polling
  4. bastet contact export --out me.card      your card, handed over offline; theirs:
     bastet contact import their.card --name NAME
  5. bastet send NAME \"hello\", then bastet inbox
`bastet COMMAND --help` says more; `bastet completions --help` sets up shell completion.";

#[derive(Subcommand)]
enum Command {
    /// Create keys, register a mailbox and write client.toml. Then make a
    /// contact card (`bastet contact export`) for each person who should
    /// be able to write to you.
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
    /// Print where this client's mailbox is (its keys, mailbox server and
    /// mailbox id, in one line). Not enough to write to you: people need
    /// your contact card (`bastet contact export`).
    Address,
    /// Exchange contact cards (offline: a file or a QR code) and manage
    /// contacts. Two people each import the other's card; the second card
    /// must answer the first (`export --for NAME`), which completes the
    /// pre-shared key on both sides.
    Contact {
        #[command(subcommand)]
        command: ContactCommand,
    },
    /// This identity's devices: list them, add one, join one, revoke one.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// The identity key: export it encrypted under a passphrase, so that
    /// another admin device of the identity can hold it too, or import such
    /// an export there.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Run the client: send at a constant Poisson rate with cover traffic,
    /// retransmit, poll the mailbox, and serve `send`, `inbox`, `outbox`
    /// and `status` on DATA_DIR/daemon.sock. Runs until SIGTERM or Ctrl-C;
    /// queued messages are kept and resumed at the next start.
    Daemon,
    /// Show the daemon's traffic parameters, idle bandwidth, expected
    /// latency, counters and per-node reliability (start it first with
    /// `bastet daemon`).
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Send a text message or a file (up to 1 MiB) to a contact through the
    /// daemon, and wait until the recipient's mailbox server acknowledged
    /// every fragment (state "stored"), or until --give-up passes (state
    /// "failed", exit status 1).
    Send {
        /// The contact's name (see `bastet contact list`).
        contact: String,
        /// The message text (or give --file).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        /// Send this file (its name without directories travels with it).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Print one JSON object: message id, send time, route, fragments,
        /// retransmissions and state.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Seconds after which an unacknowledged message fails, counted from
        /// the first transmission of its last fragment (not from queuing).
        #[arg(long, value_name = "SECS", default_value_t = 120,
              value_parser = clap::value_parser!(u64).range(1..))]
        give_up: u64,
        /// Return once the message is queued (the daemon carries on; see
        /// `bastet outbox`). With --direct: send each fragment once (up to
        /// 128) and return; `bastet outbox --resume` carries on.
        #[arg(long)]
        no_wait: bool,
        /// Send now from this process, without a daemon and without cover
        /// traffic: a watcher of your link sees when you send. For tests
        /// and recovery.
        #[arg(long)]
        direct: bool,
    },
    /// Call a contact through the daemon: the offer crosses the mixnet
    /// (rings every device of theirs); once a device answers and the call
    /// keys are confirmed, a low-latency circuit through relays your route
    /// policy admits meets theirs at a rendezvous relay, and media flows
    /// both ways at a constant cell rate until --duration, `bastet hangup`,
    /// Ctrl-C or their hang-up. Media from and to files (live microphone
    /// and camera are not supported yet). A call's relays can see that you
    /// are on a call, and an observer of both ends' links can link the two
    /// ends by timing: see docs/calls.md.
    #[command(
        after_help = "Example:\n  bastet call bob --audio-in me.wav --audio-out bob.wav --duration 30 --stats-json call.json"
    )]
    Call {
        /// The contact's name.
        contact: String,
        /// normal (20 ms Opus, 204.8 kbit/s on the wire), constrained (60 ms,
        /// 68.3 kbit/s) or video (audio and 320x240 AV1, 409.6 kbit/s).
        #[arg(long, default_value = "normal")]
        profile: String,
        /// Seconds to ring before giving up (the offer expires then; at most 120).
        #[arg(long, value_name = "SECS", default_value_t = 60,
              value_parser = clap::value_parser!(u64).range(5..=120))]
        ring: u64,
        /// The rendezvous relay (node id, hex) instead of one drawn under the
        /// route policy; for tests and measurements.
        #[arg(long, value_name = "HEX")]
        rendezvous: Option<String>,
        #[command(flatten)]
        media: MediaCli,
    },
    /// Answer a call: waits for an offer (the newest that has not expired,
    /// or --call ID), answers it and runs the call as `bastet call` does.
    Answer {
        /// The call's id (hex), if several ring.
        #[arg(long, value_name = "ID")]
        call: Option<String>,
        /// Seconds to wait for a call to come in.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        wait: u64,
        #[command(flatten)]
        media: MediaCli,
    },
    /// Hang up the call running on this device (`bastet call` or `bastet
    /// answer` in another terminal), or decline the calls ringing.
    Hangup,
    /// List the microphones, speakers and cameras `call` and `answer` can
    /// use (`--mic ID`, `--speaker ID`, `--camera PATH`). Live devices are
    /// built with `--features live` (or `live-audio`, `camera`).
    Devices,
    /// Read new messages (from the daemon if one runs, else from the
    /// mailbox server directly): reassembled, decrypted, verified; printed,
    /// then forgotten.
    Inbox {
        /// Print one JSON object with the messages.
        #[arg(long)]
        json: bool,
        /// Poll for up to SECS seconds until at least one new message arrives.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
        /// Write received files into DIR (never over an existing file).
        #[arg(long, value_name = "DIR")]
        save_dir: Option<PathBuf>,
    },
    /// Show the messages waiting in the outbox (not yet acknowledged), or,
    /// without a daemon, with --resume send and retransmit them from this
    /// process until each is stored or failed (exit status 0 either way:
    /// each message reports its state).
    Outbox {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Drive every pending message to "stored" or "failed".
        #[arg(long)]
        resume: bool,
    },
    /// Show the route policy and the nodes that meet it, or draw routes.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// The encrypted store: one container file (DATA_DIR/store) holding
    /// all of this client's state, with hidden compartments. Make it
    /// before `bastet init`.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Show or replace client.toml (in the store, if the data dir is
    /// encrypted). Stop the daemon first to replace it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or
    /// powershell) to standard output; the help says where to put it.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        /// The shell to complete `bastet` commands in.
        shell: clap_complete::Shell,
    },
}

/// Where each shell looks for completion scripts.
const COMPLETIONS_HELP: &str = "\
Install the script where your shell looks for it, then open a new shell:
  bash:        bastet completions bash > ~/.local/share/bash-completion/completions/bastet
  zsh:         bastet completions zsh > ~/.zfunc/_bastet
               (and in ~/.zshrc, before compinit: fpath+=~/.zfunc)
  fish:        bastet completions fish > ~/.config/fish/completions/bastet.fish
  elvish:      bastet completions elvish >> ~/.config/elvish/rc.elv
  powershell:  add `bastet completions powershell | Out-String | Invoke-Expression` to $PROFILE";

#[derive(Subcommand)]
enum StoreCommand {
    /// Make the container: a file of --size random bytes, then a first
    /// compartment for the passphrase you type. Nothing in the file tells
    /// it from random bytes, or how many compartments it holds. Next:
    /// `bastet init` (with the same passphrase).
    Create {
        /// Its size (B, KiB, MiB or GiB; whole 4 KiB blocks). It does not
        /// grow: choose room for your messages and files.
        #[arg(long, default_value = "64MiB")]
        size: String,
    },
    /// Add a compartment more hidden than the ones you can open: asks for
    /// the passphrase of the most hidden one you have (so that nothing of
    /// it is overwritten) and for the new one. Its passphrase opens the
    /// less hidden compartments too; use it for normal use, and give the
    /// other one if you are forced to.
    AddCompartment,
    /// Show the container's size and how much the compartment your
    /// passphrase opens (with the less hidden ones) uses.
    Info,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print client.toml.
    Show,
    /// Replace client.toml with FILE (checked first).
    Replace {
        /// The new client.toml (`-`: standard input, after the passphrase
        /// line if --passphrase-fd 0).
        file: PathBuf,
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
        /// End the routes at this contact's mailbox server [default: your
        /// own].
        #[arg(long, value_name = "CONTACT")]
        to: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

#[derive(Subcommand)]
enum ContactCommand {
    /// Make your contact card: your keys, your mailbox, a fresh ratchet
    /// one-time key and a fresh half of the pre-shared key. Keep it secret
    /// and hand it over offline (a file on a USB stick, or the QR code).
    Export {
        /// Answer the card of this contact (imported before): completes the
        /// contact on your side; they complete it by importing this card.
        #[arg(long = "for", value_name = "NAME")]
        for_contact: Option<String>,
        /// Write the card to FILE (mode 0600) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Also print the card as a QR code (needs a terminal about 170
        /// columns wide; the card of an identity with several devices is
        /// too long for one QR code: give the file).
        #[arg(long)]
        qr: bool,
        /// Also write the QR code as a PNG image.
        #[arg(long, value_name = "FILE")]
        qr_png: Option<PathBuf>,
        /// The name you suggest for yourself on the card.
        #[arg(long, default_value = "")]
        nickname: String,
    },
    /// Import someone's card (from FILE, or - for standard input) under NAME.
    /// If it was not an answer to yours, answer it: `bastet contact export
    /// --for NAME --out FILE`, and give them FILE.
    Import {
        /// The card file.
        file: PathBuf,
        /// The name to call them by.
        #[arg(long)]
        name: String,
    },
    /// List your contacts.
    List {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show one contact, with the safety number to compare with them.
    Show {
        /// The contact.
        name: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Replace the pre-shared key with one derived (Argon2id) from a
    /// passphrase you both type; you must both do it. The passphrase is
    /// read from the terminal, or from standard input if it is not one, or
    /// from BASTET_PSK_PASSPHRASE.
    Psk {
        /// The contact.
        name: String,
        /// Derive the key from a passphrase.
        #[arg(long, required = true)]
        passphrase: bool,
    },
    /// Remove a contact: its sessions and pre-shared key are gone.
    Remove {
        /// The contact.
        name: String,
    },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Write the identity key, encrypted under a passphrase (Argon2id 64
    /// MiB, XChaCha20-Poly1305), to FILE (mode 0600). Only the device that
    /// holds it can. The passphrase is read from the terminal, or standard
    /// input, or BASTET_IDENTITY_PASSPHRASE. Next, on the other admin
    /// device: `bastet identity import FILE`.
    Export {
        /// Where to write it.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Take the identity key from FILE (made by `identity export`) on an
    /// admin device of the same identity, with its daemon stopped.
    Import {
        /// The export.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// List this identity's devices: id, name, capabilities, added,
    /// revoked, which one this is.
    List {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// On an admin device: make a one-time pairing code (valid 15 minutes)
    /// for a new device, and wait for it to join. Show the code only to the
    /// person at the new device: whoever holds it can join your identity.
    Add {
        /// The new device may add and revoke devices too.
        #[arg(long)]
        admin: bool,
        /// Also print the code as a QR code.
        #[arg(long)]
        qr: bool,
        /// Print the code and return (the daemon answers the new device
        /// when its request arrives).
        #[arg(long)]
        no_wait: bool,
        /// Print one JSON object (the code and its expiry), and return.
        #[arg(long)]
        json: bool,
    },
    /// On a new device (a fresh `bastet init` whose daemon runs): join the
    /// identity of a pairing code from `bastet device add`, and wait for
    /// the admin device's answer. The device keeps its own keys and
    /// mailbox; it never receives the identity key.
    Join {
        /// The pairing code (`-` reads it from standard input).
        code: String,
        /// This device's name, shown to you and your contacts (at most 32
        /// bytes).
        #[arg(long, default_value = "device")]
        name: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 300)]
        wait: u64,
        /// Print one JSON object (the identity and its devices).
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device of this identity for good (a lost or seized one),
    /// from an admin device: every contact is sent the new device list,
    /// stops encrypting to the device, and rejects what it sends.
    Revoke {
        /// The device's id (as `bastet device list` shows it, or a longer
        /// prefix of its key).
        device: String,
        /// Why, for your contacts (at most 200 bytes).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Route policy overrides for one command (client.toml's `[route]` is not
/// changed).
/// A call's runtime: sending and receiving media run on their own threads.
fn media_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Media files and statistics of `call` and `answer`.
#[derive(Args)]
struct MediaCli {
    /// What to say: 48 kHz mono 16-bit WAV (silence when it ends; silence
    /// throughout without it).
    #[arg(long, value_name = "WAV")]
    audio_in: Option<PathBuf>,
    /// Write what you heard here (WAV, 48 kHz mono 16-bit).
    #[arg(long, value_name = "WAV")]
    audio_out: Option<PathBuf>,
    /// What to show (video profile): 320x240 YUV4MPEG2, 4:2:0.
    #[arg(long, value_name = "Y4M")]
    video_in: Option<PathBuf>,
    /// Write what you saw here (Y4M).
    #[arg(long, value_name = "Y4M")]
    video_out: Option<PathBuf>,
    /// Talk into a live microphone: the system default, or ID from
    /// `bastet devices` (e.g. `--mic=hw:1,0`). Needs a build with
    /// `--features live-audio`.
    #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "",
          conflicts_with = "audio_in")]
    mic: Option<String>,
    /// Listen on a live speaker: the system default, or ID from `bastet
    /// devices`. Works with --audio-out. Needs `--features live-audio`.
    #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "")]
    speaker: Option<String>,
    /// Show a live camera (video profile): /dev/video0, or PATH. YUYV or
    /// MJPEG, cropped and scaled to 320x240. Needs `--features camera`.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "",
          conflicts_with = "video_in")]
    camera: Option<String>,
    /// Seconds of talk before hanging up.
    #[arg(long, value_name = "SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: u64,
    /// Write the call's statistics here (JSON): latency percentiles, cells
    /// lost, concealed frames, bitrates.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Write one line per cell sent here, `<unix micros> <media|cover>`
    /// (for timing measurements).
    #[arg(long, value_name = "FILE")]
    cell_trace: Option<PathBuf>,
    /// Print the statistics as one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

/// `--mic` alone is the default device (`Some(None)`), `--mic=ID` that one.
fn device_choice(flag: &Option<String>) -> Option<Option<String>> {
    flag.as_ref().map(|id| (!id.is_empty()).then(|| id.clone()))
}

impl MediaCli {
    fn args(&self) -> bastet_client::calling::MediaArgs {
        bastet_client::calling::MediaArgs {
            audio_in: self.audio_in.clone(),
            audio_out: self.audio_out.clone(),
            video_in: self.video_in.clone(),
            video_out: self.video_out.clone(),
            duration: Duration::from_secs(self.duration),
            stats_json: self.stats_json.clone(),
            cell_trace: self.cell_trace.clone(),
            microphone: device_choice(&self.mic),
            speaker: device_choice(&self.speaker),
            camera: device_choice(&self.camera),
        }
    }

    fn print(
        &self,
        report: &bastet_client::calling::CallReport,
    ) -> Result<(), Box<dyn std::error::Error>> {
        if self.json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            println!("{}", report.summary());
        }
        Ok(())
    }
}

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

    /// The policy these overrides make of the configured one, for a
    /// message sent through the daemon (whose configuration is asked for
    /// when the data dir is encrypted: the daemon holds the store).
    fn resolve(&self, dirs: &Dirs) -> CliResult<RoutePolicy> {
        let configured = if self.policy_file.is_some() {
            RoutePolicy::default()
        } else if dirs.encrypted() {
            let call = daemon::api::call(&dirs.root, &Request::Config {});
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match std::thread::scope(|s| s.spawn(|| runtime.block_on(call)).join()) {
                Ok(Ok(Response::Config { config })) => config.route,
                Ok(Ok(other)) => return Err(unexpected(other).into()),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err("asking the daemon for its configuration failed: `bastet status` shows whether it runs; --policy-file FILE needs no daemon".into());
                }
            }
        } else {
            dirs.open()?.load_config()?.route
        };
        self.overrides(configured)
    }

    /// `base` (or the --policy-file) with the overrides applied.
    fn overrides(&self, base: RoutePolicy) -> CliResult<RoutePolicy> {
        let base = match &self.policy_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--policy-file {}: {e}", path.display()))?;
                RoutePolicy::from_toml(&text)
                    .map_err(|e| format!("--policy-file {}: {e}", path.display()))?
            }
            None => base,
        };
        let classes = self.policy.as_deref().map(parse_classes).transpose()?;
        let template = self.template.as_deref().map(|t| parse_list(t, false));
        let avoid = self.avoid.as_deref().map(|a| parse_list(a, true));
        Ok(base.with_overrides(classes, template, avoid))
    }

    /// `client` with the overrides applied, if any were given.
    fn apply(&self, client: Client) -> CliResult<Client> {
        if !self.given() {
            return Ok(client);
        }
        let policy = self.overrides(client.config().route.clone())?;
        Ok(client.with_route_policy(policy)?)
    }
}

fn main() -> ExitCode {
    bastet_link::init_logging("warn");
    let result = real_main(Cli::parse()).map_err(|e| with_next_step(e.to_string()));
    bastet_link::exit_code("bastet: error", result)
}

/// `message` with a next step appended, for the errors (often from the
/// daemon, as text) whose message names none.
fn with_next_step(message: String) -> String {
    const STEPS: &[(&str, &str)] = &[
        (
            "route policy cannot be met: hop",
            "`bastet route show` lists the nodes each hop class can use; widen the policy ([route] in client.toml, or --policy, --template, --avoid for one message)",
        ),
        (
            "no consensus for epoch",
            "try again in a few minutes; if it lasts, tell your network's operators",
        ),
        (
            "no compartment opens with this passphrase",
            "check the passphrase (each compartment has its own) and the data dir (--data-dir)",
        ),
        (
            "is not a mailbox server in the current consensus",
            "it may be down: try again after the next epoch (`bastet route show` lists the nodes in the consensus)",
        ),
        (
            "cannot send to the first mix at",
            "check the network connection; the next try takes another first mix",
        ),
        (
            "mailbox server http",
            "check the network connection; the mailbox server may be down: try again later",
        ),
        (
            "directory authority http",
            "check the network connection; the authority may be down: try again later",
        ),
        (
            "daemon: no answer within",
            "`bastet status` shows whether the daemon still runs; if not, start it again with `bastet daemon`",
        ),
        (
            "the daemon closed the connection",
            "`bastet status` shows whether the daemon still runs; if not, start it again with `bastet daemon`",
        ),
        (
            "is not supported by this version of bastet",
            "update bastet",
        ),
    ];
    match STEPS.iter().find(|(seen, _)| message.contains(seen)) {
        Some((_, step)) if !message.contains(step) => format!("{message}. Next: {step}"),
        _ => message,
    }
}

fn real_main(cli: Cli) -> CliResult<()> {
    // Needs no data dir (nor HOME: packagers build completions too).
    if let Command::Completions { shell } = cli.command {
        return print_completions(shell);
    }
    let dirs = Dirs {
        root: data_dir(cli.data_dir)?,
        passphrase_fd: cli.passphrase_fd,
        opened: std::cell::OnceCell::new(),
    };
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
            let dir = dirs.open()?;
            let client = runtime.block_on(Client::init(dir.clone(), directory, mailbox_server))?;
            eprintln!(
                "bastet: client created in {}; mailbox on server {}. Next: `bastet contact export --out FILE` makes a contact card to give someone.",
                dir.path().display(),
                client.config().mailbox_server
            );
        }
        Command::Contact { command } => runtime.block_on(contact_command(&dirs, command))?,
        Command::Device { command } => runtime.block_on(device_command(&dirs, command))?,
        Command::Identity { command } => identity_command(&dirs.open()?, command)?,
        Command::Address => println!("{}", Client::open(dirs.open()?)?.address()?),
        Command::Store { command } => store_command(&dirs, command)?,
        Command::Config { command } => config_command(&dirs, command)?,
        Command::Send {
            contact,
            text,
            file,
            json,
            give_up,
            no_wait,
            policy,
            direct,
        } => {
            let content = match (text, file) {
                (_, Some(path)) => read_file_content(&path)?,
                (Some(text), None) => Content::Text(text),
                (None, None) => return Err("give a text or --file PATH".into()),
            };
            let copies = if direct {
                let client = policy.apply(Client::open(dirs.open()?)?)?;
                let options = SendOptions {
                    give_up: Duration::from_secs(give_up),
                    wait: !no_wait,
                };
                let sent = runtime.block_on(client.send(&contact, &content, options))?;
                sent.iter()
                    .map(|s| {
                        let mut report = MessageReport::from(s);
                        report.to = contact.clone();
                        report
                    })
                    .collect()
            } else {
                let route = if policy.given() {
                    Some(policy.resolve(&dirs)?)
                } else {
                    None
                };
                runtime.block_on(send_via_daemon(
                    &dirs.root, &contact, content, give_up, route, !no_wait,
                ))?
            };
            print_copies(&copies, json)?;
            if let Some(why) = failure(&copies) {
                return Err(format!(
                    "{why}. Send it again later; `bastet status` shows how reliable the nodes are, and --give-up SECS waits longer"
                )
                .into());
            }
        }
        Command::Inbox {
            json,
            wait,
            save_dir,
        } => {
            let wait = Duration::from_secs(wait);
            match runtime.block_on(inbox_via_daemon(&dirs.root, wait, save_dir.as_deref())) {
                Err(bastet_client::Error::NoDaemon(_)) => {
                    let client = Client::open(dirs.open()?)?;
                    let report = runtime.block_on(client.inbox(wait, save_dir.as_deref()))?;
                    print_inbox(&report, json)?;
                }
                Err(e) => return Err(e.into()),
                Ok(report) => print_inbox(&report, json)?,
            }
        }
        Command::Daemon => {
            let dir = dirs.open()?;
            let client = Client::open(dir.clone())?;
            let params = client.config().traffic.params()?;
            drop(client);
            let multi = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            multi.block_on(daemon::run(dir, |socket, pending| {
                eprintln!(
                    "bastet daemon: listening on {} ({} pending message(s) resumed); λ_P {}/s, λ_L {}/s, mean {} ms per mix",
                    socket.display(),
                    pending,
                    params.payload_rate,
                    params.loop_rate,
                    params.mean_hop_delay.as_millis()
                );
            }))?;
            eprintln!("bastet daemon: stopped; the outbox is saved");
        }
        Command::Call {
            contact,
            profile,
            ring,
            rendezvous,
            media,
        } => {
            dirs.check_initialised()?;
            let rendezvous = rendezvous
                .map(|h| {
                    bastet_sphinx::NodeId::from_hex(&h).ok_or_else(|| {
                        format!("--rendezvous {h:?} is not a node id (64 hex digits)")
                    })
                })
                .transpose()?;
            let report = media_runtime()?.block_on(bastet_client::calling::place_call(
                &dirs.root,
                &contact,
                &profile,
                rendezvous,
                Duration::from_secs(ring),
                &media.args(),
            ))?;
            media.print(&report)?;
        }
        Command::Answer { call, wait, media } => {
            dirs.check_initialised()?;
            let call = call
                .map(|h| {
                    bastet_client::CallId::from_hex(&h)
                        .ok_or_else(|| format!("--call {h:?} is not a call id (32 hex digits)"))
                })
                .transpose()?;
            let report = media_runtime()?.block_on(bastet_client::calling::answer_call(
                &dirs.root,
                call,
                Duration::from_secs(wait),
                &media.args(),
            ))?;
            media.print(&report)?;
        }
        Command::Devices => {
            for line in bastet_devices::list_devices() {
                println!("{line}");
            }
        }
        Command::Hangup => {
            dirs.check_initialised()?;
            println!(
                "{}",
                runtime.block_on(bastet_client::calling::hang_up(&dirs.root))?
            );
        }
        Command::Status { json } => {
            // An uninitialised data dir says so, rather than "no daemon"
            // (an encrypted one is asked only without a daemon).
            dirs.check_initialised()?;
            let report =
                match runtime.block_on(daemon::api::call(&dirs.root, &Request::Status {}))? {
                    Response::Status(r) => r,
                    other => return Err(unexpected(other).into()),
                };
            print_status(&report, json)?;
        }
        Command::Route { command } => runtime.block_on(route_command(&dirs, command))?,
        // Printed above, before the data dir was looked for.
        Command::Completions { .. } => {}
        Command::Outbox { json, resume } => {
            let from_daemon = runtime.block_on(daemon::api::call(&dirs.root, &Request::Outbox {}));
            match from_daemon {
                Err(bastet_client::Error::NoDaemon(_)) => {}
                Err(e) => return Err(e.into()),
                Ok(_) if resume => {
                    return Err(bastet_client::Error::DaemonRunning(dirs.root.clone()).into());
                }
                Ok(Response::Outbox { messages }) => {
                    print_reports(&messages, json)?;
                    return Ok(());
                }
                Ok(other) => return Err(unexpected(other).into()),
            }
            let client = Client::open(dirs.open()?)?;
            if resume {
                let sent: Vec<MessageReport> = runtime
                    .block_on(client.resume(true))?
                    .iter()
                    .map(MessageReport::from)
                    .collect();
                print_reports(&sent, json)?;
                // A report of many messages: exit 0, each states its fate.
                if let Some(why) = failure(&sent) {
                    eprintln!("bastet: {why}");
                }
            } else {
                let pending: Vec<MessageReport> =
                    client.outbox()?.iter().map(MessageReport::from).collect();
                print_reports(&pending, json)?;
            }
        }
    }
    Ok(())
}

/// `bastet route show` and `bastet route sample`.
async fn route_command(dirs: &Dirs, command: RouteCommand) -> CliResult<()> {
    let dir = dirs.open()?;
    let (policy_args, json) = match &command {
        RouteCommand::Show { policy, json } | RouteCommand::Sample { policy, json, .. } => {
            (policy, *json)
        }
    };
    let client = policy_args.apply(Client::open(dir.clone())?)?;
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
                Some(name) => {
                    let info = contact_info(dirs, &name).await?;
                    bastet_sphinx::NodeId::from_hex(&info.mailbox_server)
                        .ok_or("the contact's mailbox server is not a node id")?
                }
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

/// Carries out a contact-book request: through the daemon if one runs (it
/// owns the ratchet state), else here, holding the data dir's lock.
async fn contact_request(dirs: &Dirs, request: ContactRequest) -> CliResult<ContactResponse> {
    let dir = &dirs.root;
    match daemon::api::call(
        dir,
        &Request::Contact {
            request: request.clone(),
        },
    )
    .await
    {
        Ok(Response::Contact { contact }) => Ok(contact),
        Ok(other) => Err(unexpected(other).into()),
        Err(bastet_client::Error::NoDaemon(_)) => {
            let data_dir = dirs.open()?;
            let client = Client::open(data_dir.clone())?;
            let _lock = data_dir
                .try_lock_outbox()?
                .ok_or_else(|| bastet_client::Error::OutboxBusy(dir.to_path_buf()))?;
            let keys = data_dir.load_keys()?;
            let server = client.config().mailbox_server_id()?;
            let mut book = Contacts::load(&data_dir, &keys, server)?;
            let response = book.handle(&keys, request, bastet_client::now_ms())?;
            // Chain traffic (a revocation for every contact) waits in the
            // outbox for the daemon, or `bastet outbox --resume`.
            let queued = client.queue_chain_traffic(&mut book)?;
            if queued > 0 {
                eprintln!(
                    "bastet: {queued} message(s) to your contacts about your devices are queued; they go out when the daemon runs (or with `bastet outbox --resume`)"
                );
            }
            Ok(response)
        }
        Err(e) => Err(e.into()),
    }
}

async fn contact_info(dir: &Dirs, name: &str) -> CliResult<ContactInfo> {
    match contact_request(
        dir,
        ContactRequest::Show {
            name: name.to_string(),
        },
    )
    .await?
    {
        ContactResponse::Info { contact } => Ok(contact),
        other => Err(format!("unexpected answer {other:?}").into()),
    }
}

/// `bastet contact ...`.
async fn contact_command(dirs: &Dirs, command: ContactCommand) -> CliResult<()> {
    // An uninitialised data dir says so first.
    dirs.check_initialised()?;
    let path = dirs;
    match command {
        ContactCommand::Export {
            for_contact,
            out,
            qr,
            qr_png,
            nickname,
        } => {
            let request = ContactRequest::Export {
                for_contact: for_contact.clone(),
                nickname,
            };
            let text = match contact_request(path, request).await? {
                ContactResponse::Card { text } => text,
                other => return Err(format!("unexpected answer {other:?}").into()),
            };
            match &out {
                Some(file) => {
                    bastet_link::write_private(file, format!("{text}\n").as_bytes())
                        .map_err(|e| format!("--out {}: {e}", file.display()))?;
                    eprintln!(
                        "bastet: card written to {} (it holds half of a pre-shared key: hand it over offline, then delete it)",
                        file.display()
                    );
                }
                None => println!("{text}"),
            }
            if let Some(png) = &qr_png {
                bastet_link::write_private(png, &bastet_client::qr_png(&text)?)
                    .map_err(|e| format!("--qr-png {}: {e}", png.display()))?;
                eprintln!("bastet: QR code written to {}", png.display());
            }
            if qr {
                // On standard error when the card itself goes to standard
                // output, so that `> FILE` keeps a clean card.
                let code = bastet_client::qr_terminal(&text)?;
                if out.is_some() {
                    println!("{code}");
                } else {
                    eprintln!("{code}");
                }
            }
            match for_contact {
                Some(name) => eprintln!(
                    "bastet: {name} is complete on your side; once they import this card you can write to each other"
                ),
                None => eprintln!(
                    "bastet: once they import it, they answer with `bastet contact export --for YOUR-NAME`; import that with `bastet contact import FILE --name THEIR-NAME`"
                ),
            }
        }
        ContactCommand::Import { file, name } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(std::io::stdin(), 64 * 1024),
                    &mut s,
                )?;
                s
            } else {
                let meta =
                    std::fs::metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?;
                if meta.len() > 64 * 1024 {
                    return Err(
                        format!(
                            "{}: too large to be a contact card (give the file `bastet contact export` wrote)",
                            file.display()
                        )
                        .into(),
                    );
                }
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?
            };
            let request = ContactRequest::Import {
                card: text,
                name: name.clone(),
            };
            let info = match contact_request(path, request).await? {
                ContactResponse::Info { contact } => contact,
                other => return Err(format!("unexpected answer {other:?}").into()),
            };
            print_contact(&info);
            if info.complete {
                eprintln!(
                    "bastet: {name} is complete: you can write to each other. Compare the safety number with them."
                );
            } else {
                eprintln!(
                    "bastet: now answer with your card: `bastet contact export --for {name} --out FILE`, and give them FILE"
                );
            }
        }
        ContactCommand::List { json } => {
            let contacts = match contact_request(path, ContactRequest::List {}).await? {
                ContactResponse::List { contacts } => contacts,
                other => return Err(format!("unexpected answer {other:?}").into()),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&json!({ "contacts": contacts }))?
                );
            } else if contacts.is_empty() {
                println!(
                    "No contacts yet: `bastet contact export` and `bastet contact import` add some."
                );
            } else {
                for c in &contacts {
                    println!(
                        "{:<20} {}{}",
                        c.name,
                        if c.complete {
                            "complete"
                        } else {
                            "awaiting your card (export --for)"
                        },
                        if c.psk_source == "passphrase" {
                            ", passphrase key"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        ContactCommand::Show { name, json } => {
            let info = contact_info(path, &name).await?;
            if json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                print_contact(&info);
            }
        }
        ContactCommand::Psk {
            name,
            passphrase: _,
        } => {
            let info = contact_info(path, &name).await?;
            let (own, _) = devices(path).await?;
            let own = hex::decode(&own)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or("this identity's key is not hex")?;
            let theirs = hex::decode(&info.identity)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or("the contact's identity key is not hex")?;
            let phrase = read_passphrase(
                "BASTET_PSK_PASSPHRASE",
                "Passphrase (shared with the contact): ",
            )?;
            let params = bastet_client::layers::psk::Argon2Params::default();
            let psk = with_spinner(
                &format!(
                    "deriving the key (Argon2id, {} MiB)",
                    params.memory_kib / 1024
                ),
                || bastet_client::layers::psk::psk_from_passphrase(&phrase, &own, &theirs, params),
            )?;
            let request = ContactRequest::SetPsk {
                name: name.clone(),
                psk: hex::encode(psk.as_ref()),
                argon2: params,
            };
            contact_request(path, request).await?;
            eprintln!(
                "bastet: {name}'s pre-shared key now comes from the passphrase; they must set the same one, or messages fail with \"pre-shared key mismatch\""
            );
        }
        ContactCommand::Remove { name } => {
            contact_request(path, ContactRequest::Remove { name: name.clone() }).await?;
            eprintln!("bastet: removed {name}");
        }
    }
    Ok(())
}

/// `bastet device ...`.
async fn device_command(dirs: &Dirs, command: DeviceCommand) -> CliResult<()> {
    let path = dirs;
    let (request, json) = match command {
        DeviceCommand::Add {
            admin,
            qr,
            no_wait,
            json,
        } => return device_add(path, admin, qr, no_wait, json).await,
        DeviceCommand::Join {
            code,
            name,
            wait,
            json,
        } => return device_join(path, &code, &name, wait, json).await,
        DeviceCommand::List { json } => (ContactRequest::Devices {}, json),
        DeviceCommand::Revoke { device, reason } => {
            (ContactRequest::RevokeDevice { device, reason }, false)
        }
    };
    let revoking = matches!(request, ContactRequest::RevokeDevice { .. });
    match contact_request(path, request).await? {
        ContactResponse::Devices {
            identity,
            devices,
            holds_identity_key,
        } => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&json!({
                        "identity": identity,
                        "holds_identity_key": holds_identity_key,
                        "devices": devices,
                    }))?
                );
                return Ok(());
            }
            if revoking {
                println!("Revoked. Your contacts are sent the new device list.");
            }
            println!("Identity: {identity}");
            if holds_identity_key {
                println!("This device holds the identity key.");
            }
            print_devices(&devices);
        }
        other => return Err(format!("unexpected answer {other:?}").into()),
    }
    Ok(())
}

/// `bastet identity ...`.
fn identity_command(dir: &DataDir, command: IdentityCommand) -> CliResult<()> {
    let keys = dir.load_keys()?;
    match command {
        IdentityCommand::Export { out } => {
            let Some(secret) = keys.identity_secret() else {
                return Err("this device does not hold its identity key: export it from the device that does".into());
            };
            let phrase = read_passphrase(
                "BASTET_IDENTITY_PASSPHRASE",
                "Passphrase for the exported identity key: ",
            )?;
            let params = bastet_client::layers::psk::Argon2Params::default();
            let text = with_spinner(
                &format!(
                    "deriving the key (Argon2id, {} MiB)",
                    params.memory_kib / 1024
                ),
                || {
                    bastet_client::backup::export(
                        &secret,
                        &keys.identity_public(),
                        &phrase,
                        params,
                        &mut rand::rng(),
                    )
                },
            )?;
            bastet_link::write_private(&out, format!("{text}\n").as_bytes())
                .map_err(|e| format!("{}: {e}", out.display()))?;
            eprintln!(
                "bastet: the identity key is in {} (encrypted); whoever has the file and the passphrase can act as your identity: keep both apart",
                out.display()
            );
        }
        IdentityCommand::Import { file } => {
            let _lock = dir.try_lock_outbox()?.ok_or(
                "a daemon (or another bastet command) is running for this data dir: stop it first, then import",
            )?;
            if keys.has_identity_key() {
                return Err("this device already holds its identity key: nothing to import (`bastet device list` shows it)".into());
            }
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            if bastet_client::backup::public_key(&text)? != keys.identity_public() {
                return Err("this export is of another identity: import it on a device of that identity (`bastet device list` shows this one's)".into());
            }
            let config = dir.load_config()?;
            let book = bastet_client::Contacts::load(dir, &keys, config.mailbox_server_id()?)?;
            let me = book.own_chain().device(&keys.device_public());
            if !me.is_some_and(|d| {
                d.is_current() && d.cert.caps & bastet_client::identity::CAP_ADMIN != 0
            }) {
                return Err("only an admin device of the identity may hold its key (pair it with `bastet device add --admin`)".into());
            }
            let phrase = read_passphrase(
                "BASTET_IDENTITY_PASSPHRASE",
                "Passphrase of the exported identity key: ",
            )?;
            let (secret, _) = with_spinner("deriving the key (Argon2id)", || {
                bastet_client::backup::import(&text, &phrase)
            })?;
            dir.import_identity_key(&keys, &secret)?;
            println!("This device now holds the identity key.");
        }
    }
    Ok(())
}

/// This identity's key and devices.
async fn devices(dir: &Dirs) -> CliResult<(String, Vec<bastet_client::DeviceInfo>)> {
    match contact_request(dir, ContactRequest::Devices {}).await? {
        ContactResponse::Devices {
            identity, devices, ..
        } => Ok((identity, devices)),
        other => Err(format!("unexpected answer {other:?}").into()),
    }
}

async fn device_add(dir: &Dirs, admin: bool, qr: bool, no_wait: bool, json: bool) -> CliResult<()> {
    let (_, before) = devices(dir).await?;
    let (code, expires_ms) = match contact_request(dir, ContactRequest::PairOffer { admin }).await?
    {
        ContactResponse::PairCode { code, expires_ms } => (code, expires_ms),
        other => return Err(format!("unexpected answer {other:?}").into()),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&json!({ "code": code, "expires_ms": expires_ms }))?
        );
        return Ok(());
    }
    println!("{code}");
    if qr {
        println!("{}", bastet_client::qr_terminal(&code)?);
    }
    eprintln!(
        "bastet: on the new device (a fresh `bastet init` with its daemon running), run\n  bastet device join CODE --name NAME\nThe code is valid once, until {}. Whoever holds it can join your identity: show it to no one else.",
        format_utc_ms(expires_ms)
    );
    let daemon = daemon::api::call(&dir.root, &Request::Status {}).await;
    if matches!(daemon, Err(bastet_client::Error::NoDaemon(_))) {
        eprintln!(
            "bastet: no daemon runs here: the new device's request is answered only while `bastet daemon` runs on this device"
        );
        return Ok(());
    }
    if no_wait {
        return Ok(());
    }
    eprintln!("bastet: waiting for the new device...");
    while bastet_client::now_ms() < expires_ms {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, now) = devices(dir).await?;
        if let Some(new) = now.iter().find(|d| !before.iter().any(|b| b.key == d.key)) {
            println!(
                "Device {} ({}) joined your identity; compare its id with the one the new device shows. Your contacts are sent the new device list.",
                new.id,
                terminal_safe(&new.name)
            );
            return Ok(());
        }
    }
    Err(
        "the pairing code expired before a device used it: make a new one with `bastet device add`"
            .into(),
    )
}

async fn device_join(dirs: &Dirs, code: &str, name: &str, wait: u64, json: bool) -> CliResult<()> {
    let code = if code == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), 4096), &mut text)?;
        text
    } else {
        code.to_string()
    };
    let parsed = bastet_client::pairing::PairCode::parse(&code)?;
    let identity = hex::encode(parsed.identity);
    let request = Request::Contact {
        request: ContactRequest::Join {
            code,
            name: name.to_string(),
        },
    };
    let dir = dirs.root.as_path();
    match daemon::api::call(dir, &request).await {
        Ok(Response::Contact { .. }) => {}
        Ok(other) => return Err(unexpected(other).into()),
        Err(bastet_client::Error::NoDaemon(_)) => {
            return Err(format!(
                "no daemon runs for {}: start `bastet --data-dir {} daemon` first (it sends the request and receives the answer)",
                dir.display(),
                dir.display()
            )
            .into());
        }
        Err(e) => return Err(e.into()),
    }
    if !json {
        eprintln!("bastet: request sent; waiting for the admin device's answer...");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let (now_identity, devices) = devices(dirs).await?;
        if now_identity == identity {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(
                        &json!({ "identity": now_identity, "devices": devices })
                    )?
                );
            } else {
                let me = devices.iter().find(|d| d.this_device);
                println!(
                    "This device joined identity {identity} as device {}.",
                    me.map_or("?", |d| d.id.as_str())
                );
                print_devices(&devices);
            }
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "no answer from the admin device within {wait} s (its daemon must run; the request stays queued and is answered if it arrives while the code is valid)"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn print_devices(devices: &[bastet_client::DeviceInfo]) {
    for d in devices {
        let mut caps = Vec::new();
        if d.send {
            caps.push("send");
        }
        if d.admin {
            caps.push("admin");
        }
        let state = match (&d.revoked, &d.revoked_reason) {
            (true, Some(r)) if !r.is_empty() => format!("REVOKED ({})", terminal_safe(r)),
            (true, _) => "REVOKED".to_string(),
            (false, _) => "current".to_string(),
        };
        let seen = d
            .last_seen_ms
            .map(|t| format!(", last message {}", format_utc_ms(t)))
            .unwrap_or_default();
        println!(
            "  {}  {:<20} {:<11} {state}, added {}{seen}{}",
            d.id,
            terminal_safe(&d.name),
            caps.join("+"),
            format_utc_ms(d.added_ms),
            if d.this_device {
                "  <- this device"
            } else {
                ""
            }
        );
    }
}

fn print_contact(c: &ContactInfo) {
    println!("Name:          {}", c.name);
    if !c.nickname.is_empty() {
        println!("Calls self:    {}", terminal_safe(&c.nickname));
    }
    println!("Identity:      {}", c.identity);
    println!("Safety number: {}", c.safety_number);
    println!(
        "State:         {}",
        if c.complete {
            "complete"
        } else {
            "awaiting your card (bastet contact export --for NAME)"
        }
    );
    if c.complete {
        println!("Pre-shared key from: {}", c.psk_source);
    }
    println!("Mailbox server: {}", c.mailbox_server);
    println!("Ratchet sessions: {}", c.sessions);
    if let Some(alarm) = &c.alarm {
        println!("ALARM:         {}", terminal_safe(alarm));
    }
    if let Some(seq) = c.awaiting_links {
        println!(
            "Waiting for:   their device list up to link {seq} (asked for; their messages are held until it comes)"
        );
    }
    println!("Devices (chain link {}):", c.chain_seq);
    print_devices(&c.devices);
}

/// The passphrase: the environment variable `env`, else typed twice at the
/// terminal (not echoed), else a line of standard input.
fn read_passphrase(env: &str, prompt: &str) -> CliResult<String> {
    if let Ok(p) = std::env::var(env) {
        return Ok(p);
    }
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let read = |prompt: &str| -> CliResult<String> {
        if tty {
            return Ok(rpassword::prompt_password(prompt)?);
        }
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let first = read(prompt)?;
    if tty && read("Again: ")? != first {
        return Err(
            "the two passphrases differ: run the command again and type the same one twice".into(),
        );
    }
    Ok(first)
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

/// The data dir of this invocation, opened at its first use: the
/// passphrase of an encrypted one is asked only by the commands that need
/// its files (not by those the daemon answers).
struct Dirs {
    root: PathBuf,
    passphrase_fd: Option<u32>,
    opened: std::cell::OnceCell<DataDir>,
}

impl Dirs {
    /// Whether the data dir is an encrypted store.
    fn encrypted(&self) -> bool {
        DataDir::store_file(&self.root).is_some()
    }

    /// The data dir, its store unlocked (the passphrase asked once).
    fn open(&self) -> CliResult<DataDir> {
        if let Some(dir) = self.opened.get() {
            return Ok(dir.clone());
        }
        let dir = match DataDir::store_file(&self.root) {
            None => DataDir::new(&self.root),
            Some(path) => {
                // Locked before the passphrase is asked: a running daemon
                // says so at once.
                let file = FileBlocks::open(&path)?;
                let phrase = self.passphrase("Store passphrase: ")?;
                let vault = with_spinner("unlocking the store (Argon2id, 64 MiB)", || {
                    Vault::unlock(file, &phrase)
                })?;
                DataDir::with_vault(&self.root, vault)
            }
        };
        Ok(self.opened.get_or_init(|| dir).clone())
    }

    /// Fails as commands do on a data dir without `bastet init`; an
    /// encrypted one is not opened for this (its daemon holds it).
    fn check_initialised(&self) -> CliResult<()> {
        if !self.encrypted() {
            Client::open(self.open()?)?;
        }
        Ok(())
    }

    /// One passphrase: a line from --passphrase-fd, else typed at the
    /// terminal (not echoed).
    fn passphrase(&self, prompt: &str) -> CliResult<Zeroizing<String>> {
        if let Some(fd) = self.passphrase_fd {
            return Ok(bastet_link::read_fd_line(fd)?);
        }
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Err("the store's passphrase is needed: type it at a terminal, or give --passphrase-fd N".into());
        }
        Ok(Zeroizing::new(rpassword::prompt_password(prompt)?))
    }

    /// A new passphrase: typed twice at the terminal, or a line from
    /// --passphrase-fd; at least 12 characters.
    fn new_passphrase(&self, prompt: &str) -> CliResult<Zeroizing<String>> {
        let phrase = self.passphrase(prompt)?;
        if self.passphrase_fd.is_none() && *self.passphrase("Again: ")? != *phrase {
            return Err(
                "the two passphrases differ: run the command again and type the same one twice"
                    .into(),
            );
        }
        let chars = phrase.chars().count();
        if chars < MIN_PASSPHRASE_CHARS {
            return Err(format!(
                "a store passphrase has at least {MIN_PASSPHRASE_CHARS} characters (this one has {chars})"
            )
            .into());
        }
        Ok(phrase)
    }
}

/// `bastet store ...`.
fn store_command(dirs: &Dirs, command: StoreCommand) -> CliResult<()> {
    let path = dirs.root.join(bastet_client::STORE_FILE);
    match command {
        StoreCommand::Create { size } => {
            let bytes = parse_size(&size)?;
            let blocks = bytes.div_ceil(BLOCK_LEN as u64);
            if path.exists() {
                return Err(format!(
                    "{} exists already: this data dir has its store (`bastet store info` shows it, `bastet store add-compartment` adds a hidden compartment); for a new one, give another --data-dir",
                    path.display()
                )
                .into());
            }
            if dirs.root.join("client.toml").exists() {
                return Err(format!(
                    "{} holds an unencrypted client: make the store in a new data dir (--data-dir) and `bastet init` there",
                    dirs.root.display()
                )
                .into());
            }
            let phrase = dirs.new_passphrase("Passphrase of the store's first compartment: ")?;
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dirs.root)
                .map_err(|e| format!("{}: {e}", dirs.root.display()))?;
            eprintln!(
                "bastet: making {} ({} MiB) and deriving the key (Argon2id, 64 MiB)...",
                path.display(),
                (blocks * BLOCK_LEN as u64) >> 20
            );
            let mut fill = FillProgress::new(blocks);
            let made = Vault::create(&path, blocks, &[&phrase], &mut |done, all| {
                fill.update(done, all)
            });
            // Cleared before the result (or the error) prints.
            drop(fill);
            made?;
            eprintln!(
                "bastet: store made. Next: `bastet init` (it asks for this passphrase). To add a hidden compartment: `bastet store add-compartment`."
            );
        }
        StoreCommand::AddCompartment => {
            if !path.exists() {
                return Err(format!(
                    "no store in {}: `bastet store create` first",
                    dirs.root.display()
                )
                .into());
            }
            let below = dirs.passphrase("Passphrase of the most hidden compartment you have: ")?;
            let new = dirs.new_passphrase("Passphrase of the new, more hidden compartment: ")?;
            with_spinner("deriving the keys (Argon2id, 64 MiB, twice)", || {
                Vault::add_compartment(&path, &below, &new)
            })?;
            eprintln!(
                "bastet: compartment added. Its passphrase opens it and the less hidden ones; `bastet init` with it to make the client that lives there."
            );
        }
        StoreCommand::Info => {
            let dir = dirs.open()?;
            let (total, used) = dir.store_usage().ok_or(
                "this data dir is not encrypted (plain files): `bastet --data-dir NEW-DIR store create` makes an encrypted one",
            )?;
            println!(
                "container: {} MiB; in use by the compartments this passphrase opens: {} KiB ({:.1}%)",
                total >> 20,
                used >> 10,
                used as f64 * 100.0 / total.max(1) as f64
            );
        }
    }
    Ok(())
}

/// How `store create` shows the random fill of the container, then the
/// key derivation that follows it: a bar and a spinner at a terminal, a
/// line every 10% elsewhere.
enum FillProgress {
    Lines {
        shown: u64,
    },
    Bar(ProgressBar),
    /// Held to keep the spinner turning until it is dropped.
    Deriving {
        _spinner: ProgressBar,
    },
}

impl FillProgress {
    fn new(blocks: u64) -> Self {
        if !progress_wanted() {
            return FillProgress::Lines { shown: 0 };
        }
        let bar = ProgressBar::new(blocks * BLOCK_LEN as u64)
            .with_style(
                style(
                    "bastet: filling the container with random bytes [{bar:30}] {bytes}/{total_bytes} ({eta} left)",
                    ProgressStyle::default_bar,
                )
                .progress_chars("=> "),
            )
            .with_finish(ProgressFinish::Abandon);
        FillProgress::Bar(bar)
    }

    fn update(&mut self, done: u64, all: u64) {
        match self {
            FillProgress::Lines { shown } => {
                let percent = done * 100 / all.max(1);
                if percent >= *shown + 10 || done == all {
                    *shown = percent;
                    eprintln!("bastet: filling the container with random bytes: {percent}%");
                }
            }
            FillProgress::Bar(bar) => {
                bar.set_position(done * BLOCK_LEN as u64);
                if done == all {
                    bar.finish();
                    *self = FillProgress::Deriving {
                        _spinner: spinner("deriving the key (Argon2id, 64 MiB)"),
                    };
                }
            }
            FillProgress::Deriving { .. } => {}
        }
    }
}

/// `bastet config ...`.
fn config_command(dirs: &Dirs, command: ConfigCommand) -> CliResult<()> {
    let dir = dirs.open()?;
    match command {
        ConfigCommand::Show => print!("{}", dir.config_text()?),
        ConfigCommand::Replace { file } => {
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(std::io::stdin(), 1 << 20),
                    &mut text,
                )?;
                text
            } else {
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?
            };
            dir.replace_config(&text)?;
            eprintln!("bastet: client.toml replaced; it takes effect at the daemon's next start");
        }
    }
    Ok(())
}

/// A size such as `64MiB`, `512KiB`, `1GiB` or a number of bytes.
fn parse_size(text: &str) -> CliResult<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("--size {text:?}: expected a number and a unit, e.g. 64MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => {
            return Err(
                format!("--size {text:?}: unknown unit {other:?} (B, KiB, MiB, GiB)").into(),
            );
        }
    };
    n.checked_mul(mult)
        .filter(|b| *b <= 1 << 40)
        .ok_or_else(|| format!("--size {text:?}: too large (at most 1 TiB)").into())
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
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "--directory {}: {e} (give the directory.toml your network's operators publish: epoch_secs and the authorities' url, identity_key and tls_pin)",
            path.display()
        )
    })?;
    let config: DirectoryConfig =
        toml::from_str(&text).map_err(|e| format!("--directory {}: {e}", path.display()))?;
    config
        .validate()
        .map_err(|e| format!("--directory {}: {e}", path.display()))?;
    Ok(config)
}

/// The contents of `--file PATH`, named by its last component.
fn read_file_content(path: &Path) -> CliResult<Content> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("--file {}: no usable file name", path.display()))?
        .to_string();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("--file {}: {e}", path.display()))?
        .len();
    if len > bastet_client::MAX_CONTENT_LEN as u64 {
        return Err(format!(
            "--file {}: {len} bytes, but a message holds at most {} bytes",
            path.display(),
            bastet_client::MAX_CONTENT_LEN
        )
        .into());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("--file {}: {e}", path.display()))?;
    Ok(Content::File { name, bytes })
}

/// Why the command fails, if any message failed.
fn failure(sent: &[MessageReport]) -> Option<String> {
    let failed: Vec<String> = sent
        .iter()
        .filter(|s| s.state == DeliveryState::Failed)
        .map(|s| {
            format!(
                "message {} failed: {}",
                s.message_id,
                s.reason.as_deref().unwrap_or("unknown reason")
            )
        })
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// The copies of one message (one per device of the recipient). JSON: the
/// first copy's report, its state the least advanced of all (failed if
/// any failed), with every copy under `copies`.
fn print_copies(copies: &[MessageReport], json: bool) -> CliResult<()> {
    let Some(first) = copies.first() else {
        return Err("the daemon queued no copy: `bastet outbox` shows what it holds".into());
    };
    if json {
        let mut summary = first.clone();
        let rank = |s: DeliveryState| match s {
            DeliveryState::Failed => 0,
            DeliveryState::Queued => 1,
            DeliveryState::Sent => 2,
            DeliveryState::Stored => 3,
        };
        if let Some(worst) = copies.iter().min_by_key(|c| rank(c.state)) {
            summary.state = worst.state;
            summary.reason = worst.reason.clone();
        }
        let mut value = serde_json::to_value(&summary)?;
        value["copies"] = serde_json::to_value(copies)?;
        println!("{}", serde_json::to_string(&value)?);
    } else {
        for c in copies {
            print_sent(c, false)?;
        }
    }
    Ok(())
}

fn print_sent(sent: &MessageReport, json: bool) -> CliResult<()> {
    if json {
        println!("{}", serde_json::to_string(sent)?);
    } else {
        let route: Vec<String> = sent
            .route
            .iter()
            .map(|n| {
                format!(
                    "{} {} ({})",
                    n.role,
                    n.node.get(..8).unwrap_or(""),
                    n.jurisdiction
                )
            })
            .collect();
        let route = if route.is_empty() {
            String::new()
        } else {
            format!("; first fragment via {}", route.join(" -> "))
        };
        let device = if sent.device.is_empty() {
            String::new()
        } else {
            format!(" (to device {})", sent.device)
        };
        println!(
            "message {}{device} {}: {}/{} fragments acknowledged, {} retransmissions{route}{}",
            sent.message_id,
            sent.state.as_str(),
            sent.acked,
            sent.fragments,
            sent.retransmissions,
            sent.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn print_reports(reports: &[MessageReport], json: bool) -> CliResult<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(&json!({ "messages": reports }))?
        );
    } else if reports.is_empty() {
        println!("The outbox is empty.");
    } else {
        for r in reports {
            print_sent(r, false)?;
        }
    }
    Ok(())
}

fn unexpected(response: Response) -> String {
    match response {
        Response::Error { error } => format!("daemon: {error}"),
        other => format!(
            "daemon: unexpected answer {other:?}: is it another version of bastet? Stop it and start it again with `bastet daemon`"
        ),
    }
}

/// Queues a message with the daemon and, with `wait`, follows it until it
/// is stored or failed.
async fn send_via_daemon(
    dir: &Path,
    to: &str,
    content: Content,
    give_up: u64,
    route: Option<RoutePolicy>,
    wait: bool,
) -> CliResult<Vec<MessageReport>> {
    let (text, file) = match content {
        Content::Text(t) => (Some(t), None),
        Content::File { name, bytes } => (
            None,
            Some(WireFile {
                name,
                base64: data_encoding::BASE64.encode(&bytes),
            }),
        ),
        other => return Err(format!("cannot send {other:?} from the command line").into()),
    };
    let request = Request::Send {
        to: to.to_string(),
        text,
        file,
        give_up_secs: give_up,
        route,
    };
    let mut copies = match daemon::api::call(dir, &request).await? {
        Response::Sent { copies } => copies,
        other => return Err(unexpected(other).into()),
    };
    // The daemon fails the message at its give-up; the margin only guards
    // against a daemon that stopped answering.
    let deadline = std::time::Instant::now() + Duration::from_secs(give_up.saturating_add(30));
    // At a terminal, a progress bar updated once a second (a large file
    // takes a while at a constant packet rate); elsewhere, nothing but the
    // result.
    let progress = wait && progress_wanted();
    let wait_ms = if progress {
        1000
    } else {
        daemon::api::MAX_WAIT_MS
    };
    for report in &mut copies {
        let id = report.message_id.clone();
        // Left as it stands if this returns early (an error follows it).
        let bar = progress.then(|| fragment_bar(report));
        while wait && !matches!(report.state, DeliveryState::Stored | DeliveryState::Failed) {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "the daemon did not report message {id} final in time: `bastet outbox` shows where it is, `bastet status` whether the daemon still runs"
                )
                .into());
            }
            if let Some(bar) = &bar {
                show_fragments(bar, report);
            }
            let request = Request::Message {
                id: id.clone(),
                wait_ms,
            };
            *report = match daemon::api::call(dir, &request).await? {
                Response::Message(r) => r,
                other => return Err(unexpected(other).into()),
            };
        }
        if let Some(bar) = bar {
            show_fragments(&bar, report);
            bar.abandon();
        }
    }
    Ok(copies)
}

/// Whether to draw progress bars and spinners: only when standard error
/// is a terminal. Scripts, logs and tests get the plain lines instead.
fn progress_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// `template`, or indicatif's default if it does not parse.
fn style(template: &str, fallback: fn() -> ProgressStyle) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| fallback())
}

/// A spinner saying `what` on standard error, cleared when finished or
/// dropped (an error then prints on a clean line).
fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner()
        .with_style(style(
            "{spinner} bastet: {msg} ({elapsed})",
            ProgressStyle::default_spinner,
        ))
        .with_message(what.to_string())
        .with_finish(ProgressFinish::AndClear);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Runs `work` (an Argon2id derivation: seconds of CPU) under a spinner
/// saying `what` at a terminal, or after the line `bastet: WHAT...`
/// elsewhere.
fn with_spinner<T>(what: &str, work: impl FnOnce() -> T) -> T {
    if !progress_wanted() {
        eprintln!("bastet: {what}...");
        return work();
    }
    let spinner = spinner(what);
    let out = work();
    spinner.finish_and_clear();
    out
}

/// The bar of one message's fragments as the daemon acknowledges them.
fn fragment_bar(report: &MessageReport) -> ProgressBar {
    let id = &report.message_id;
    let mut prefix = id.get(..8).unwrap_or(id).to_string();
    if !report.device.is_empty() {
        prefix.push_str(&format!(" (device {})", report.device));
    }
    ProgressBar::new(report.fragments as u64)
        .with_style(
            style(
                "bastet: message {prefix} [{bar:30}] {pos}/{len} fragments acknowledged, {msg} ({elapsed})",
                ProgressStyle::default_bar,
            )
            .progress_chars("=> "),
        )
        .with_prefix(prefix)
        .with_finish(ProgressFinish::Abandon)
}

fn show_fragments(bar: &ProgressBar, report: &MessageReport) {
    bar.set_length(report.fragments as u64);
    bar.set_position(report.acked as u64);
    bar.set_message(format!(
        "{} retransmitted, {}",
        report.retransmissions,
        report.state.as_str()
    ));
}

/// `bastet completions SHELL`: the script on standard output. Made in
/// memory first, so that a closed pipe is an error, not a panic.
fn print_completions(shell: clap_complete::Shell) -> CliResult<()> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bastet", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        // `| head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Takes the messages the daemon holds (waiting up to `wait` for one),
/// saves files into `save_dir`, and tells the daemon to forget them.
async fn inbox_via_daemon(
    dir: &Path,
    wait: Duration,
    save_dir: Option<&Path>,
) -> bastet_client::Result<InboxReport> {
    let deadline = std::time::Instant::now() + wait;
    let mut report = InboxReport::default();
    loop {
        let (messages, more, partial) = match daemon::api::call(dir, &Request::Inbox {}).await? {
            Response::Inbox {
                messages,
                more,
                partial,
            } => (messages, more, partial),
            other => return Err(bastet_client::Error::Daemon(unexpected(other))),
        };
        report.partial = partial;
        let mut ids = Vec::with_capacity(messages.len());
        for m in &messages {
            let message = m.to_inbox_message()?;
            // Saved before the daemon forgets it.
            let saved = match (&message.message.file, save_dir) {
                (Some(f), Some(dir)) => Some(save_received_file(dir, &f.name, &f.bytes)?),
                _ => None,
            };
            report.saved.push(saved);
            report.messages.push(message);
            ids.push(m.message_id.clone());
        }
        if !ids.is_empty() {
            daemon::api::call(dir, &Request::InboxDone { ids }).await?;
        }
        if more {
            continue;
        }
        if !report.messages.is_empty() || std::time::Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_status(s: &StatusReport, json: bool) -> CliResult<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    let kb = |b: f64| b / 1000.0;
    println!(
        "daemon pid {}, up {} s; address {}",
        s.pid, s.uptime_secs, s.address
    );
    println!("traffic preset: {}", s.preset);
    println!(
        "  payload stream λ_P {}/s (measured {:.2}/s), loop cover λ_L {}/s",
        s.payload_rate, s.measured_payload_rate, s.loop_rate
    );
    println!(
        "  per-mix delay Exp(mean {} ms), at most {} ms; mailbox polled every {} ms",
        s.mean_hop_delay_ms, s.max_hop_delay_ms, s.poll_interval_ms
    );
    println!(
        "  idle bandwidth: {:.1} kB/s up, {:.1} kB/s down ({:.0} MB/day up); every packet {} bytes",
        kb(s.idle_up_bytes_per_sec),
        kb(s.idle_down_bytes_per_sec),
        s.idle_up_bytes_per_sec * 86_400.0 / 1e6,
        s.packet_len
    );
    println!(
        "  expected latency of a one-packet message: {} ms (payload slot, mixing, recipient's polling)",
        s.expected_latency_ms
    );
    let c = &s.counters;
    println!(
        "sent: {} real, {} drop cover, {} loops ({} back, {} lost); {} ticks skipped, {} missed; {:.2} ms per packet built",
        c.real,
        c.drop,
        c.loops_sent,
        c.loops_returned,
        c.loops_lost,
        c.skipped,
        c.missed,
        c.tick_work_us as f64 / 1000.0 / c.ticks.max(1) as f64
    );
    println!(
        "outbox: {} message(s) pending, {} packet(s) queued; inbox: {} message(s) waiting",
        s.pending_messages, s.queued_packets, s.inbox_messages
    );
    println!(
        "consensus: epoch {}, {} nodes, {} authority signatures, valid {} s more",
        s.epoch, s.consensus_nodes, s.consensus_signatures, s.consensus_valid_secs
    );
    println!(
        "mailbox: server {} ({})",
        s.mailbox_server.get(..16).unwrap_or(&s.mailbox_server),
        s.mailbox_jurisdiction
            .as_deref()
            .unwrap_or("not in the consensus now")
    );
    println!(
        "route policy: {}{}",
        s.route_template.join(" -> "),
        if s.route_avoid.is_empty() {
            String::new()
        } else {
            format!(", never via {}", s.route_avoid.join(", "))
        }
    );
    match s.store_bytes {
        Some((total, used)) => println!(
            "storage: encrypted store of {} MiB, {} KiB in use ({:.1}%)",
            total >> 20,
            used >> 10,
            used as f64 * 100.0 / total.max(1) as f64
        ),
        None => println!("storage: plain files (not encrypted at rest; see `bastet store create`)"),
    }
    if let Some(a) = &s.anonymity {
        print_anonymity(a);
    }
    if !s.scores.is_empty() {
        println!("node reliability (from loops), least reliable first:");
        for n in s.scores.iter().take(10) {
            println!(
                "  {} delivery {:.0}% over {:.1} loops, weight {:.2}",
                n.node.get(..8).unwrap_or(""),
                n.delivery * 100.0,
                n.samples,
                n.weight
            );
        }
    }
    Ok(())
}

/// The anonymity section of `bastet status`.
fn print_anonymity(a: &bastet_client::AnonymityReport) {
    let layers: Vec<String> = a.mixes_per_layer.iter().map(usize::to_string).collect();
    println!("anonymity (estimate; this client cannot see how many clients are active):",);
    println!(
        "  {} mixes per layer, {} mailbox servers; each client {:.2} packets/s, each mixnode {} loops/s{}",
        layers.join("/"),
        a.mailboxes,
        a.client_rate,
        a.mix_cover_rate,
        if a.mix_cover_published {
            ""
        } else {
            " (mixnode default, not in the consensus)"
        }
    );
    println!(
        "  mixnode cover alone keeps {:.2} packets in each mix",
        a.floor_pool_per_mix
    );
    for e in &a.estimates {
        println!(
            "  {:>5} active clients: {:.1} packets per mix, sender entropy {:.1} of {:.1} bits (≈ {:.0} equally likely senders)",
            e.clients,
            e.pool_per_mix,
            e.entropy_bits,
            (e.clients.max(1) as f64).log2(),
            e.effective_senders
        );
    }
    for w in &a.warnings {
        println!("  warning: {w}");
    }
}

fn print_inbox(report: &InboxReport, json: bool) -> CliResult<()> {
    if json {
        let messages: Vec<_> = report
            .messages
            .iter()
            .zip(&report.saved)
            .map(|(m, saved)| {
                let file = m.message.file.as_ref().map(|f| {
                    json!({
                        "name": f.name,
                        "size": f.bytes.len(),
                        "blake3": blake3::hash(&f.bytes).to_hex().to_string(),
                        "saved_to": saved.as_ref().map(|p| p.display().to_string()),
                    })
                });
                json!({
                    "message_id": m.message.message_id.to_hex(),
                    "from": hex::encode(m.message.from),
                    "contact": m.message.contact,
                    "verified": m.message.verified,
                    "rejected": m.message.rejected,
                    "notice": m.message.notice,
                    "outgoing": m.message.outgoing,
                    "sent_at_ms": m.message.sent_at_ms,
                    "received_at_ms": m.received_at_ms,
                    "fragments": m.fragments,
                    "text": m.message.text,
                    "file": file,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string(&json!({
                "messages": messages,
                "duplicates": report.duplicates,
                "partial": report.partial,
                "acks": report.acks,
            }))?
        );
    } else if report.messages.is_empty() {
        println!("No new messages.");
    } else {
        for m in &report.messages {
            if let Some(why) = &m.message.rejected {
                println!("REJECTED: {}", terminal_safe(why));
                println!("Received: {}", format_utc_ms(m.received_at_ms));
                println!();
                continue;
            }
            if m.message.notice {
                println!("NOTICE:   {}", terminal_safe(&m.message.text));
                println!("Received: {}", format_utc_ms(m.received_at_ms));
                println!();
                continue;
            }
            let who = m
                .message
                .contact
                .clone()
                .unwrap_or_else(|| format!("unknown ({})", hex::encode(m.message.from)));
            let status = if m.message.verified {
                "every layer verified"
            } else {
                "NOT VERIFIED: the sender is unproven"
            };
            if m.message.outgoing {
                println!(
                    "To:       {} (sent from another of your devices; {status})",
                    terminal_safe(&who)
                );
            } else {
                println!("From:     {} ({status})", terminal_safe(&who));
            }
            println!("Sent:     {}", format_utc_ms(m.message.sent_at_ms));
            println!("Received: {}", format_utc_ms(m.received_at_ms));
            println!("Id:       {}", m.message.message_id.to_hex());
            if let Some(f) = &m.message.file {
                println!(
                    "File:     {} ({} bytes)",
                    terminal_safe(&f.name),
                    f.bytes.len()
                );
            }
            println!();
            if m.message.file.is_none() {
                println!("{}", terminal_safe(&m.message.text));
                println!();
            }
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
    for (m, saved) in report.messages.iter().zip(&report.saved) {
        if let Some(path) = saved {
            eprintln!(
                "bastet: saved {} from message {} to {}",
                terminal_safe(m.message.file.as_ref().map_or("", |f| f.name.as_str())),
                m.message.message_id.to_hex(),
                path.display()
            );
        }
    }
    if report.partial > 0 {
        eprintln!(
            "bastet: {} message(s) still missing fragments; they stay on the server",
            report.partial
        );
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
