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
    /// Set up the shard databases on the local server, start the proxy on
    /// the sample config and show where sample rows land.
    Demo {
        #[arg(long, default_value = "config/shardcast.toml")]
        config: PathBuf,
    },
    /// Backtest the forecaster on traces (CSV files `timestamp,value`).
    ForecastEval {
        #[arg(long, default_value = "../shared/traces")]
        traces: PathBuf,
        /// How far ahead, e.g. 30m or 2h.
        #[arg(long, default_value = "30m")]
        horizon: String,
        /// Quantile of the upper bound.
        #[arg(long, default_value_t = 0.9)]
        quantile: f64,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
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
            init_logging();
            let cfg = shardcast::config::Config::load(&config)?;
            let rt = runtime(cfg.proxy.workers)?;
            rt.block_on(shardcast::proxy::run(cfg))
        }
        Cmd::Demo { config } => {
            init_logging();
            let cfg = shardcast::config::Config::load(&config)?;
            let rt = runtime(cfg.proxy.workers)?;
            rt.block_on(shardcast::demo::run(cfg))
        }
        Cmd::ForecastEval {
            traces,
            horizon,
            quantile,
            json,
        } => {
            let secs = shardcast::config::parse_duration(&horizon).ok_or_else(|| {
                anyhow::anyhow!("--horizon {horizon:?} is not a duration like 30m or 2h")
            })?;
            let report = shardcast::analyzer::eval::run(&traces, secs, quantile)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", shardcast::analyzer::eval::render(&report));
            }
            Ok(())
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

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("SHARDCAST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// One runtime for the whole process; `workers = 1` runs every task on one
/// thread (no cross-thread wake-ups, like PgBouncer), more spreads them.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}
