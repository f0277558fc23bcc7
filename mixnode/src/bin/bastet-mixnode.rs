//! `bastet-mixnode`: a Bastet mixnode.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bastet_mixnode::{InitOptions, MixnodeConfig};
use clap::{Parser, Subcommand};

/// A Bastet mixnode: removes one Sphinx layer from each packet, drops
/// replays, holds each packet for the delay its sender chose and forwards it
/// to the next hop named in the directory consensus.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory with fresh keys, a TLS certificate and a
    /// commented mixnode.toml; prints the node id and pins as JSON.
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
    Backup(bastet_directory::backup::BackupArgs),
    /// Restore a backup into a new data directory DIR (keys mode 0600; the
    /// config's data_dir set to DIR); refuses a DIR that holds keys.
    Restore(bastet_directory::backup::RestoreArgs),
    /// Check mixnode.toml, the node's keys and TLS identity without starting:
    /// prints one JSON object (node id, pin, addresses), or the error naming
    /// what is wrong (the config key, or the file and how to fix it).
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
}

fn main() -> ExitCode {
    bastet_link::init_logging("info");
    bastet_link::exit_code("bastet-mixnode", real_main(Cli::parse()))
}

fn real_main(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
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
