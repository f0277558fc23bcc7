//! `bastet-mixnode`: a Bastet mixnode.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bastet_mixnode::{InitOptions, MixnodeConfig};
use clap::{CommandFactory, Parser, Subcommand};

/// A Bastet mixnode: removes one Sphinx layer from each packet, drops
/// replays, holds each packet for the delay its sender chose and forwards it
/// to the next hop named in the directory consensus.
#[derive(Parser)]
#[command(version, after_help = FIRST_STEPS)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The top-level help's way in: the usual first steps, and the guide.
const FIRST_STEPS: &str = "\
First steps (the guide: docs/operators.md):
  1. bastet-mixnode init --dir DIR --listen ADDR --metrics-listen ADDR \\
         --jurisdiction CC --operator NAME --directory directory.toml
     keys, a TLS certificate and DIR/mixnode.toml; send the printed
     node_id to your network's authorities
  2. bastet-mixnode check-config --config DIR/mixnode.toml
     every check the node makes at start, without starting it
  3. bastet-mixnode run --config DIR/mixnode.toml
     or the systemd unit in deploy/systemd/
`bastet-mixnode COMMAND --help` says more; `bastet-mixnode completions --help` sets up shell completion.";

#[derive(Subcommand)]
enum Command {
    /// Create a data directory with fresh keys, a TLS certificate and a
    /// commented mixnode.toml; prints the node id and pins as JSON. Next:
    /// send the node id to your network's authorities, and `check-config
    /// --config DIR/mixnode.toml`.
    Init {
        /// Data directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// Address of the packet link (TLS).
        #[arg(long)]
        listen: SocketAddr,
        /// Plain-HTTP /health and /metrics address.
        #[arg(long)]
        metrics_listen: SocketAddr,
        /// ISO 3166-1 alpha-2 code of where the node runs, e.g. DE.
        #[arg(long)]
        jurisdiction: String,
        /// Who runs the node.
        #[arg(long)]
        operator: String,
        /// TOML file naming the directory authorities (a DirectoryConfig).
        #[arg(long)]
        directory: PathBuf,
        /// host:port published to other nodes (default: --listen).
        #[arg(long)]
        public_addr: Option<String>,
    },
    /// Back up the node's long-term keys (identity, TLS) and its config,
    /// encrypted under a passphrase (Argon2id, XChaCha20-Poly1305), to
    /// FILE (mode 0600). The per-epoch Sphinx keys are left out on purpose.
    /// Keep FILE and its passphrase apart, off this machine; `restore`
    /// puts them back.
    Backup(bastet_directory::backup::BackupArgs),
    /// Restore a backup into a new data directory DIR (keys mode 0600; the
    /// config's data_dir set to DIR); refuses a DIR that holds keys. Next:
    /// `check-config --config DIR/mixnode.toml`, then `run`.
    Restore(bastet_directory::backup::RestoreArgs),
    /// Check mixnode.toml, the node's keys and TLS identity without starting:
    /// prints one JSON object (node id, pin, addresses), or the error naming
    /// what is wrong (the config key, or the file and how to fix it).
    /// Next: `run --config FILE` (or start the systemd unit).
    CheckConfig {
        /// Path to mixnode.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the mixnode until SIGTERM or SIGINT.
    Run {
        /// Path to mixnode.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or
    /// powershell) to standard output; the help says where to put it.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        /// The shell to complete `bastet-mixnode` commands in.
        shell: clap_complete::Shell,
    },
}

/// Where each shell looks for completion scripts.
const COMPLETIONS_HELP: &str = "\
Install the script where your shell looks for it, then open a new shell:
  bash:        bastet-mixnode completions bash > ~/.local/share/bash-completion/completions/bastet-mixnode
  zsh:         bastet-mixnode completions zsh > ~/.zfunc/_bastet-mixnode
               (and in ~/.zshrc, before compinit: fpath+=~/.zfunc)
  fish:        bastet-mixnode completions fish > ~/.config/fish/completions/bastet-mixnode.fish
  elvish:      bastet-mixnode completions elvish >> ~/.config/elvish/rc.elv
  powershell:  add `bastet-mixnode completions powershell | Out-String | Invoke-Expression` to $PROFILE";

/// `bastet-mixnode completions SHELL`: made in memory first, so that a closed
/// pipe is an error, not a panic.
fn print_completions(shell: clap_complete::Shell) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bastet-mixnode", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        // `| head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn main() -> ExitCode {
    bastet_link::init_logging("info");
    bastet_link::exit_code("bastet-mixnode", real_main(Cli::parse()))
}

fn real_main(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Completions { shell } => print_completions(shell),
        Command::Init {
            dir,
            listen,
            metrics_listen,
            jurisdiction,
            operator,
            directory,
            public_addr,
        } => {
            let report = bastet_mixnode::init(&InitOptions {
                dir,
                listen,
                public_addr,
                metrics_listen,
                jurisdiction,
                operator,
                directory_file: directory,
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Backup(a) => {
            let data_dir = MixnodeConfig::load(&a.config)?.data_dir;
            bastet_directory::backup::backup_command(
                "bastet-mixnode",
                &a.config,
                &data_dir,
                &a.out,
                a.passphrase_fd,
            )
        }
        Command::Restore(a) => bastet_directory::backup::restore_command(
            "bastet-mixnode",
            "mixnode.toml",
            &a.backup,
            &a.dir,
            a.passphrase_fd,
        ),
        Command::CheckConfig { config } => {
            let config = MixnodeConfig::load(&config)?;
            let mut fields = serde_json::Map::new();
            fields.insert("listen".into(), config.listen.to_string().into());
            fields.insert(
                "metrics_listen".into(),
                config.metrics_listen.to_string().into(),
            );
            fields.insert("jurisdiction".into(), config.jurisdiction.clone().into());
            fields.insert("operator".into(), config.operator.clone().into());
            fields.insert(
                "authorities".into(),
                config.directory.authorities.len().into(),
            );
            let report = bastet_directory::relay_check_report(&config.data_dir, fields)?;
            println!("{report}");
            Ok(())
        }
        Command::Run { config } => {
            let config = MixnodeConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                // Installed before anything starts, so an early SIGTERM is
                // not lost.
                let shutdown = bastet_link::shutdown_signal()?;
                bastet_mixnode::run(config, shutdown).await?;
                Ok::<(), Box<dyn std::error::Error>>(())
            })?;
            // Blocking packet workers finish their batch; do not wait longer.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            Ok(())
        }
    }
}
