//! `bastet-directory`: a Bastet directory authority.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bastet_directory::server::{self, AuthorityConfig};
use bastet_sphinx::NodeId;
use clap::{Parser, Subcommand};

/// A Bastet directory authority: admits nodes and publishes a signed
/// consensus of their keys every epoch.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory with a fresh key, TLS certificate and config.
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
    /// Run the authority.
    Run {
        /// Path to authority.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Back up the node's long-term keys (identity, TLS) and its config,
    /// encrypted under a passphrase (Argon2id, XChaCha20-Poly1305), to
    /// FILE (mode 0600). The per-epoch Sphinx keys are left out on purpose.
    Backup(bastet_directory::backup::BackupArgs),
    /// Restore a backup into a new data directory DIR (keys mode 0600; the
    /// config's data_dir set to DIR); refuses a DIR that holds keys.
    Restore(bastet_directory::backup::RestoreArgs),
    /// Check authority.toml, the keys and the TLS identity without
    /// starting: prints one JSON object, or the error naming what is wrong.
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
}

fn main() -> ExitCode {
    bastet_link::init_logging("info");
    bastet_link::exit_code("bastet-directory", real_main(Cli::parse()))
}

fn real_main(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
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
