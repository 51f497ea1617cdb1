//! The `shardcast` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shardcast",
    version,
    about = "Sharding proxy for PostgreSQL with predictive rebalancing"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Run {
        #[arg(long, default_value = "config/shardcast.toml")]
        config: PathBuf,
    },
    /// Validate a config file and exit.
    CheckConfig {
        #[arg(long, default_value = "config/shardcast.toml")]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run { config } => {
            let _cfg = shardcast::config::Config::load(&config)?;
            anyhow::bail!("not yet")
        }
        Cmd::CheckConfig { config } => match shardcast::config::Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
    }
}
