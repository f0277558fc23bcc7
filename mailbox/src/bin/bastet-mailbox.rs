//! `bastet-mailbox`: a Bastet mailbox server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bastet_mailbox::{InitOptions, MailboxConfig};
use clap::{CommandFactory, Parser, Subcommand};

/// A Bastet mailbox server: the final hop of every route. Stores the
/// still-encrypted payloads it receives under pseudonymous mailbox ids and
/// serves them to their owners over authenticated HTTPS.
#[derive(Parser)]
#[command(version, after_help = FIRST_STEPS)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The top-level help's way in: the usual first steps, and the guide.
const FIRST_STEPS: &str = "\
First steps (the guide: docs/operators.md):
  1. bastet-mailbox init --dir DIR --listen ADDR --api-listen ADDR \\
         --metrics-listen ADDR --jurisdiction CC --operator NAME \\
         --directory directory.toml
     keys, a TLS certificate and DIR/mailbox.toml; send the printed
     node_id to your network's authorities
  2. bastet-mailbox check-config --config DIR/mailbox.toml
     every check the node makes at start, without starting it
  3. bastet-mailbox run --config DIR/mailbox.toml
     or the systemd unit in deploy/systemd/
`bastet-mailbox COMMAND --help` says more; `bastet-mailbox completions --help` sets up shell completion.";

// Parsed once at start: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Create a data directory with fresh keys, a TLS certificate and a
    /// commented mailbox.toml; prints one JSON object. Next: send the node
    /// id to your network's authorities, and `check-config --config
    /// DIR/mailbox.toml`.
    Init {
        /// Data directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// Packet link address.
        #[arg(long)]
        listen: SocketAddr,
        /// HTTPS API address.
        #[arg(long)]
        api_listen: SocketAddr,
        /// Plain-HTTP /health and /metrics address.
        #[arg(long)]
        metrics_listen: SocketAddr,
        /// ISO 3166-1 alpha-2 code of the server's jurisdiction, e.g. CH.
        #[arg(long)]
        jurisdiction: String,
        /// Who runs the server.
        #[arg(long)]
        operator: String,
        /// TOML file with the directory authorities (a [directory] section's
        /// contents: epoch_secs and [[authorities]]).
        #[arg(long)]
        directory: PathBuf,
        /// host:port published for the packet link (default: --listen).
        #[arg(long)]
        public_addr: Option<String>,
        /// host:port published for the API (default: --api-listen).
        #[arg(long)]
        public_api_addr: Option<String>,
        /// FOR TESTS ONLY: append every stored payload to this file.
        #[arg(long)]
        packet_log: Option<PathBuf>,
    },
    /// Back up the node's long-term keys (identity, TLS) and its config,
    /// encrypted under a passphrase (Argon2id, XChaCha20-Poly1305), to
    /// FILE (mode 0600). The per-epoch Sphinx keys are left out on purpose.
    /// Keep FILE and its passphrase apart, off this machine; `restore`
    /// puts them back.
    Backup(bastet_directory::backup::BackupArgs),
    /// Restore a backup into a new data directory DIR (keys mode 0600; the
    /// config's data_dir set to DIR); refuses a DIR that holds keys. Next:
    /// `check-config --config DIR/mailbox.toml`, then `run`.
    Restore(bastet_directory::backup::RestoreArgs),
    /// Check mailbox.toml, the node's keys and TLS identity without starting:
    /// prints one JSON object (node id, pin, addresses), or the error naming
    /// what is wrong (the config key, or the file and how to fix it).
    /// Next: `run --config FILE` (or start the systemd unit).
    CheckConfig {
        /// Path to mailbox.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the server until SIGTERM or Ctrl-C.
    Run {
        /// Path to mailbox.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or
    /// powershell) to standard output; the help says where to put it.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        /// The shell to complete `bastet-mailbox` commands in.
        shell: clap_complete::Shell,
    },
}

/// Where each shell looks for completion scripts.
const COMPLETIONS_HELP: &str = "\
Install the script where your shell looks for it, then open a new shell:
  bash:        bastet-mailbox completions bash > ~/.local/share/bash-completion/completions/bastet-mailbox
  zsh:         bastet-mailbox completions zsh > ~/.zfunc/_bastet-mailbox
               (and in ~/.zshrc, before compinit: fpath+=~/.zfunc)
  fish:        bastet-mailbox completions fish > ~/.config/fish/completions/bastet-mailbox.fish
  elvish:      bastet-mailbox completions elvish >> ~/.config/elvish/rc.elv
  powershell:  add `bastet-mailbox completions powershell | Out-String | Invoke-Expression` to $PROFILE";

/// `bastet-mailbox completions SHELL`: made in memory first, so that a closed
/// pipe is an error, not a panic.
fn print_completions(shell: clap_complete::Shell) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bastet-mailbox", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        // `| head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn main() -> ExitCode {
    bastet_link::init_logging("info");
    bastet_link::exit_code("bastet-mailbox", real_main(Cli::parse()))
}

fn real_main(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Completions { shell } => print_completions(shell),
        Command::Init {
            dir,
            listen,
            api_listen,
            metrics_listen,
            jurisdiction,
            operator,
            directory,
            public_addr,
            public_api_addr,
            packet_log,
        } => {
            let info = bastet_mailbox::init(InitOptions {
                dir,
                listen,
                api_listen,
                metrics_listen,
                jurisdiction,
                operator,
                public_addr,
                public_api_addr,
                directory: bastet_mailbox::read_directory_file(&directory)?,
                packet_log,
            })?;
            println!("{}", serde_json::to_string(&info)?);
            Ok(())
        }
        Command::Backup(a) => {
            let data_dir = MailboxConfig::load(&a.config)?.data_dir;
            bastet_directory::backup::backup_command(
                "bastet-mailbox",
                &a.config,
                &data_dir,
                &a.out,
                a.passphrase_fd,
            )
        }
        Command::Restore(a) => bastet_directory::backup::restore_command(
            "bastet-mailbox",
            "mailbox.toml",
            &a.backup,
            &a.dir,
            a.passphrase_fd,
        ),
        Command::CheckConfig { config } => {
            let config = MailboxConfig::load(&config)?;
            let mut fields = serde_json::Map::new();
            fields.insert("listen".into(), config.listen.to_string().into());
            fields.insert("api_listen".into(), config.api_listen.to_string().into());
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
            let config = MailboxConfig::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(bastet_mailbox::run(config))?;
            Ok(())
        }
    }
}
