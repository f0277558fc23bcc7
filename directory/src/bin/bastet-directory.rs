//! `bastet-directory`: a Bastet directory authority.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bastet_directory::server::{self, AuthorityConfig};
use bastet_sphinx::NodeId;
use clap::{CommandFactory, Parser, Subcommand};

/// A Bastet directory authority: admits nodes and publishes a signed
/// consensus of their keys every epoch.
#[derive(Parser)]
#[command(version, after_help = FIRST_STEPS)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The top-level help's way in: the usual first steps, and the guide.
const FIRST_STEPS: &str = "\
First steps (the guide: docs/operators.md):
  1. bastet-directory init --dir DIR --listen ADDR --metrics-listen ADDR \\
         --allow NODE_ID ...
     a key, a TLS certificate and DIR/authority.toml; exchange the printed
     url, identity_key and tls_pin with the other authorities ([[peers]])
  2. bastet-directory check-config --config DIR/authority.toml
     every check the node makes at start, without starting it
  3. bastet-directory run --config DIR/authority.toml
     or the systemd unit in deploy/systemd/
`bastet-directory COMMAND --help` says more; `bastet-directory completions --help` sets up shell completion.";

#[derive(Subcommand)]
enum Command {
    /// Create a data directory with a fresh key, TLS certificate and config
    /// (authority.toml); prints its url, identity key and TLS pin. Next:
    /// exchange these with the other authorities (`[[peers]]`), then
    /// `check-config --config DIR/authority.toml`.
    Init {
        /// Data directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// HTTPS API address.
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// Plain-HTTP /health and /metrics address.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Epoch length in seconds.
        #[arg(long, default_value_t = 3600)]
        epoch_secs: u64,
        /// Admit this node id (repeat for each node).
        #[arg(long = "allow")]
        allow: Vec<String>,
    },
    /// Run the authority until SIGTERM or Ctrl-C (check it first with
    /// `check-config`; `status` then shows its epochs).
    Run {
        /// Path to authority.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Back up the node's long-term keys (identity, TLS) and its config,
    /// encrypted under a passphrase (Argon2id, XChaCha20-Poly1305), to
    /// FILE (mode 0600). The per-epoch Sphinx keys are left out on purpose.
    /// Keep FILE and its passphrase apart, off this machine; `restore`
    /// puts them back.
    Backup(bastet_directory::backup::BackupArgs),
    /// Restore a backup into a new data directory DIR (keys mode 0600; the
    /// config's data_dir set to DIR); refuses a DIR that holds keys. Next:
    /// `check-config --config DIR/authority.toml`, then `run`.
    Restore(bastet_directory::backup::RestoreArgs),
    /// Check authority.toml, the keys and the TLS identity without
    /// starting: prints one JSON object, or the error naming what is wrong.
    /// Next: `run --config FILE` (or start the systemd unit).
    CheckConfig {
        /// Path to authority.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show the running authority's current epoch: nodes by layer and
    /// jurisdiction, and which authorities signed the consensus.
    Status {
        /// Path to authority.toml.
        #[arg(long)]
        config: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or
    /// powershell) to standard output; the help says where to put it.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        /// The shell to complete `bastet-directory` commands in.
        shell: clap_complete::Shell,
    },
}

/// Where each shell looks for completion scripts.
const COMPLETIONS_HELP: &str = "\
Install the script where your shell looks for it, then open a new shell:
  bash:        bastet-directory completions bash > ~/.local/share/bash-completion/completions/bastet-directory
  zsh:         bastet-directory completions zsh > ~/.zfunc/_bastet-directory
               (and in ~/.zshrc, before compinit: fpath+=~/.zfunc)
  fish:        bastet-directory completions fish > ~/.config/fish/completions/bastet-directory.fish
  elvish:      bastet-directory completions elvish >> ~/.config/elvish/rc.elv
  powershell:  add `bastet-directory completions powershell | Out-String | Invoke-Expression` to $PROFILE";

/// `bastet-directory completions SHELL`: made in memory first, so that a closed
/// pipe is an error, not a panic.
fn print_completions(shell: clap_complete::Shell) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bastet-directory", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        // `| head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn main() -> ExitCode {
    bastet_link::init_logging("info");
    bastet_link::exit_code("bastet-directory", real_main(Cli::parse()))
}

fn real_main(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Completions { shell } => print_completions(shell),
        Command::Init {
            dir,
            listen,
            metrics_listen,
            epoch_secs,
            allow,
        } => {
            let allowed = allow
                .iter()
                .map(|s| NodeId::from_hex(s).ok_or_else(|| format!("--allow {s:?}: not a node id")))
                .collect::<Result<Vec<_>, _>>()?;
            let info = server::init(&dir, listen, metrics_listen, epoch_secs, &allowed)?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Command::Run { config } => {
            let config: AuthorityConfig =
                bastet_directory::load_config(&config, "BASTET_DIRECTORY")?;
            tokio::runtime::Runtime::new()?.block_on(server::run(config))?;
            Ok(())
        }
        Command::Backup(a) => {
            let data_dir =
                bastet_directory::load_config::<AuthorityConfig>(&a.config, "BASTET_DIRECTORY")?
                    .data_dir;
            bastet_directory::backup::backup_command(
                "bastet-directory",
                &a.config,
                &data_dir,
                &a.out,
                a.passphrase_fd,
            )
        }
        Command::Restore(a) => bastet_directory::backup::restore_command(
            "bastet-directory",
            "authority.toml",
            &a.backup,
            &a.dir,
            a.passphrase_fd,
        ),
        Command::CheckConfig { config } => {
            let config: AuthorityConfig =
                bastet_directory::load_config(&config, "BASTET_DIRECTORY")?;
            println!("{}", serde_json::to_string(&server::check(&config)?)?);
            Ok(())
        }
        Command::Status { config, json } => {
            let config: AuthorityConfig =
                bastet_directory::load_config(&config, "BASTET_DIRECTORY")?;
            let status = tokio::runtime::Runtime::new()?.block_on(server::status(&config))?;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                print!("{status}");
            }
            Ok(())
        }
    }
}
