//! The `enforcer` binary: the daemon and its admin CLI.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Zero Trust gateway: per-packet session enforcement in XDP with OpenID Connect sign-in.
#[derive(Parser)]
#[command(name = "enforcer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: attach the XDP program, reconcile the maps and serve the portal.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "/etc/enforcer/enforcer.toml")]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run { config } => {
            let config = enforcer::config::Config::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("failed to start the runtime")?;
            runtime.block_on(enforcer::daemon::run(config, CancellationToken::new()))?;
            Ok(())
        }
    }
}
