//! The `shardcast` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use shardcast::admin_client::{self, Request};

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
    /// Replay modelled load built from real traces through the planner, and
    /// measure overload, SLO violations and data moved.
    Simulate {
        /// Folder of `timestamp,value` CSV series (searched recursively).
        #[arg(long, default_value = "../shared/traces")]
        traces: PathBuf,
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        #[arg(long, default_value_t = 10_000)]
        partitions: usize,
        /// predictive, reactive, oracle or off.
        #[arg(long, default_value = "predictive")]
        policy: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated days (after two days of warm-up).
        #[arg(long, default_value_t = 1.0)]
        days: f64,
        /// The cluster's mean utilization.
        #[arg(long, default_value_t = 0.6)]
        utilization: f64,
        /// Mean size of a partition, e.g. 2GB (moves take size ÷ copy rate).
        #[arg(long, default_value = "2GB")]
        partition_size: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file and exit.
    CheckConfig {
        #[arg(long, default_value = "config/shardcast.toml")]
        config: PathBuf,
    },
    /// Move a partition to another node, through a running proxy's admin
    /// API. Exits 2 if the proxy refuses, 1 if a followed migration aborts.
    Migrate {
        /// The proxy's admin API (its `admin_listen`), as http://host:port.
        #[arg(long, default_value = admin_client::DEFAULT_ADMIN)]
        admin: String,
        /// The partition to move.
        #[arg(long)]
        partition: u32,
        /// The node to move it to.
        #[arg(long)]
        to: String,
        /// Follow the migration until it is done or aborted.
        #[arg(long)]
        wait: bool,
    },
    /// Split a partition in two, and optionally move the upper half to
    /// another node.
    Split {
        /// The proxy's admin API (its `admin_listen`), as http://host:port.
        #[arg(long, default_value = admin_client::DEFAULT_ADMIN)]
        admin: String,
        /// The partition to split.
        #[arg(long)]
        partition: u32,
        /// The hash where the upper half starts (the middle of the range
        /// if left out).
        #[arg(long, allow_negative_numbers = true)]
        at: Option<i64>,
        /// Move the upper half to this node once split.
        #[arg(long)]
        to: Option<String>,
        /// Follow the migrations until they are done or aborted.
        #[arg(long)]
        wait: bool,
    },
    /// Merge two adjacent partitions on one node into one.
    Merge {
        /// The proxy's admin API (its `admin_listen`), as http://host:port.
        #[arg(long, default_value = admin_client::DEFAULT_ADMIN)]
        admin: String,
        /// The two partitions, like 3,4.
        #[arg(long, value_delimiter = ',', required = true)]
        partitions: Vec<u32>,
        /// Follow the migration until it is done or aborted.
        #[arg(long)]
        wait: bool,
    },
    /// Move every partition off a node, each to the least loaded other node.
    Drain {
        /// The proxy's admin API (its `admin_listen`), as http://host:port.
        #[arg(long, default_value = admin_client::DEFAULT_ADMIN)]
        admin: String,
        /// The node to empty.
        #[arg(long)]
        node: String,
        /// Follow every move until it is done or aborted.
        #[arg(long)]
        wait: bool,
    },
    /// List the latest migrations across the cluster, newest first.
    Migrations {
        /// The proxy's admin API (its `admin_listen`), as http://host:port.
        #[arg(long, default_value = admin_client::DEFAULT_ADMIN)]
        admin: String,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure a node's capacity through the running proxy: a ramp of point
    /// selects on keys it owns until p99 latency bends.
    Calibrate(shardcast::monitor::calibrate::Options),
    /// What the planner of a running proxy would do now, and why: each
    /// node's utilization now and expected, and the moves it would make.
    Plan {
        /// The proxy's admin API (its `admin_listen`), as http://host:port.
        #[arg(long, default_value = admin_client::DEFAULT_ADMIN)]
        admin: String,
        /// Print the API's JSON instead of text.
        #[arg(long)]
        json: bool,
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
        Cmd::Simulate {
            traces,
            nodes,
            partitions,
            policy,
            seed,
            days,
            utilization,
            partition_size,
            json,
        } => {
            use shardcast::{planner::Policy, sim};
            let policy = Policy::parse(&policy).ok_or_else(|| {
                anyhow::anyhow!(
                    "--policy {policy:?}: expected one of {}",
                    Policy::NAMES.join(", ")
                )
            })?;
            let mut opts = sim::Options::new(traces, nodes, partitions, policy, seed, days)?;
            if !(utilization > 0.0 && utilization < 1.0) {
                anyhow::bail!("--utilization must be in (0, 1), not {utilization}");
            }
            opts.utilization = utilization;
            opts.partition_bytes = shardcast::config::parse_bytes(&partition_size)
                .filter(|b| *b > 0)
                .ok_or_else(|| {
                    anyhow::anyhow!("--partition-size {partition_size:?} is not a size like 2GB")
                })? as f64;
            let report = sim::run(&opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", sim::render(&report));
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
        Cmd::Migrate {
            admin,
            partition,
            to,
            wait,
        } => exit(admin_client::submit(
            &admin,
            &Request::Move { partition, to },
            wait,
        )),
        Cmd::Split {
            admin,
            partition,
            at,
            to,
            wait,
        } => exit(admin_client::submit(
            &admin,
            &Request::Split { partition, at, to },
            wait,
        )),
        Cmd::Merge {
            admin,
            partitions,
            wait,
        } => exit(admin_client::submit(
            &admin,
            &Request::Merge { partitions },
            wait,
        )),
        Cmd::Drain { admin, node, wait } => {
            exit(admin_client::submit(&admin, &Request::Drain { node }, wait))
        }
        Cmd::Migrations { admin, json } => exit(admin_client::list(&admin, json)),
        Cmd::Plan { admin, json } => exit(admin_client::plan(&admin, json)),
        Cmd::Calibrate(o) => {
            use shardcast::monitor::calibrate;
            let rt = runtime(1)?;
            let (_, capacity) = rt.block_on(calibrate::run(&o))?;
            println!("capacity_qps = {capacity:.0}");
            if o.write {
                println!(
                    "written to the [[nodes]] entry of {} in {}",
                    o.node,
                    o.config.display()
                );
            }
            Ok(())
        }
    }
}

/// Ends the process with an admin client's exit code.
fn exit(code: i32) -> anyhow::Result<()> {
    if code == 0 {
        Ok(())
    } else {
        std::process::exit(code)
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
