//! Starting and stopping the proxy: builds the shared state from the
//! config, binds the client and admin listeners, spawns the named
//! background tasks, and shuts them all down on SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use crate::analyzer::{Forecaster, Recorder};
use crate::backend::{NodeTarget, Pool};
use crate::config::Config;
use crate::frontend::{handle_client, CancelRegistry, Shared};
use crate::metrics::Metrics;
use crate::ring::{Routing, RoutingTable};
use crate::router::Analyzer;

/// Parameters reported to clients when no node answered at startup.
fn fallback_params() -> Vec<(String, String)> {
    [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("IntervalStyle", "postgres"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Builds everything the connections share. Nodes that cannot be reached
/// are reported and retried on demand: the proxy still starts.
pub async fn build_shared(config: Config) -> anyhow::Result<Arc<Shared>> {
    let names: Vec<String> = config.nodes.iter().map(|n| n.name.clone()).collect();
    let seed = RoutingTable::even(1, config.sharding.partitions, names.clone())
        .context("building the initial routing table")?;
    let metrics = Arc::new(Metrics::new(&names));
    let mut pools = Vec::new();
    for (i, n) in config.nodes.iter().enumerate() {
        let target = NodeTarget::from_url(&n.name, &n.url)
            .map_err(|e| anyhow::anyhow!("node {}: url: {e}", n.name))?;
        pools.push(Pool::new(
            i,
            target,
            config.pool.size,
            Duration::from_millis(config.pool.checkout_timeout_ms),
            metrics.pool_wait[i].clone(),
        ));
    }
    let mut server_params = None;
    for p in &pools {
        match p.warm_up().await {
            Ok(params) => {
                info!(node = %p.target.name, "node reachable");
                server_params.get_or_insert(params);
            }
            Err(e) => {
                warn!(node = %p.target.name, error = %e, "node unreachable at startup; will retry on demand")
            }
        }
    }
    let mut analyzer = Analyzer::new(&config.tables);
    learn_key_positions(&config, &pools, &mut analyzer).await;
    let mut merge_catalog = crate::merge::Catalog::new(&config.tables);
    merge_catalog.add_aggregates(aggregate_names(&pools).await);
    let two_phase = two_phase(&config, &pools).await;
    if two_phase {
        if let Err(e) = crate::catalog::bootstrap(&pools).await {
            warn!(error = %e, "catalog schema not created; multi-node writes will fail until the catalog node is back");
        }
    }
    let catalog_target = match &config.catalog.url {
        Some(url) => NodeTarget::from_url("catalog", url)
            .map_err(|e| anyhow::anyhow!("[catalog] url: {e}"))?,
        None => pools[0].target.clone(),
    };
    let table = routing_from_catalog(&catalog_target, &config, seed).await?;
    let catalog = crate::catalog::Catalog::new(catalog_target, &config.proxy.listen);
    let recorder = Arc::new(Recorder::new(
        config.recorder.enabled,
        config.recorder.history_minutes,
    ));
    recorder.ensure(table.partitions().iter().map(|p| p.id));
    metrics.routing_epoch.set(table.epoch() as i64);
    let notifier =
        crate::frontend::notify::Notifier::new(pools.iter().map(|p| p.target.clone()).collect());
    Ok(Arc::new(Shared {
        analyzer,
        default_node: config.default_node(),
        server_params: server_params.unwrap_or_else(fallback_params),
        routing: Arc::new(Routing::new(table)),
        pools,
        metrics,
        recorder,
        forecaster: Arc::new(Forecaster::new(
            config.forecast.bucket,
            config.forecast.horizon,
            config.forecast.quantile,
            config.forecast.history,
        )),
        cancels: CancelRegistry::default(),
        merge_catalog,
        type_names: Default::default(),
        two_phase,
        catalog: Some(catalog),
        monitor: Default::default(),
        config,
        renewals: Default::default(),
        notifier,
    }))
}

/// The routing table to serve: the catalog's latest epoch (seeded from
/// the config when the catalog is empty). With the catalog unreachable the
/// config's table is served until the follower reaches it — the nodes'
/// fences keep a stale table from writing anywhere wrong.
async fn routing_from_catalog(
    target: &NodeTarget,
    config: &Config,
    seed: RoutingTable,
) -> anyhow::Result<RoutingTable> {
    if let Err(e) = crate::catalog::bootstrap_at(target).await {
        warn!(error = %e, "catalog unreachable at startup; serving the config's partitions until it answers");
        return Ok(seed);
    }
    let mut c = match crate::catalog::connect(target, "shardcast-catalog").await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "catalog unreachable at startup; serving the config's partitions until it answers");
            return Ok(seed);
        }
    };
    let table = crate::catalog::epochs::seed(&mut c, &seed)
        .await
        .map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
    for n in &config.nodes {
        let address = NodeTarget::from_url(&n.name, &n.url)
            .map(|t| format!("{}:{}/{}", t.host, t.port, t.dbname))
            .unwrap_or_default();
        let _ = c
            .execute(
                "INSERT INTO shardcast.nodes (name, address) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET address = EXCLUDED.address",
                &[&n.name, &address],
            )
            .await;
    }
    info!(
        epoch = table.epoch(),
        partitions = table.partitions().len(),
        "routing table from the catalog"
    );
    Ok(table)
}

/// A catalog connection to the first node that answers.
async fn catalog_client(pools: &[Arc<Pool>]) -> Option<tokio_postgres::Client> {
    for pool in pools {
        if let Some(c) = crate::catalog::client(pool).await {
            return Some(c);
        }
    }
    None
}

/// Two-phase commit is on when configured so, or (unset) when every node
/// allows prepared transactions.
async fn two_phase(config: &Config, pools: &[Arc<Pool>]) -> bool {
    if let Some(on) = config.transactions.two_phase {
        return on;
    }
    for pool in pools {
        let Some(c) = crate::catalog::client(pool).await else {
            return false;
        };
        let n: i64 = match c
            .query_one(
                "SELECT current_setting('max_prepared_transactions')::int8",
                &[],
            )
            .await
        {
            Ok(r) => r.get(0),
            Err(_) => 0,
        };
        if n == 0 {
            info!(node = %pool.target.name, "max_prepared_transactions = 0: multi-node writes are not atomic (no two-phase commit)");
            return false;
        }
    }
    true
}

/// The names of every aggregate function a node knows (user-defined ones
/// included), so a cross-shard read never mistakes one for a scalar.
async fn aggregate_names(pools: &[Arc<Pool>]) -> Vec<String> {
    let Some(client) = catalog_client(pools).await else {
        return Vec::new();
    };
    let sql = "SELECT DISTINCT proname::text FROM pg_catalog.pg_proc WHERE prokind = 'a'";
    match client.query(sql, &[]).await {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Reads each sharded table's column order from the first node that has
/// it, so an INSERT without a column list can be routed by its key.
async fn learn_key_positions(config: &Config, pools: &[Arc<Pool>], analyzer: &mut Analyzer) {
    for table in &config.tables {
        for pool in pools {
            let Some(client) = crate::catalog::client(pool).await else {
                continue;
            };
            let sql =
                "SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
                       AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";
            if let Ok(rows) = client.query(sql, &[&table.name]).await {
                let cols: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                if let Some(pos) = cols
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(&table.shard_key))
                {
                    analyzer.set_key_position(&table.name, pos);
                    break;
                }
            }
        }
    }
}

/// Runs the proxy until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listen = config.proxy.listen.clone();
    let admin_listen = config.proxy.admin_listen.clone();
    let shared = build_shared(config).await?;
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen} ([proxy] listen)"))?;
    let admin = TcpListener::bind(&admin_listen)
        .await
        .with_context(|| format!("cannot listen on {admin_listen} ([proxy] admin_listen)"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    info!(%listen, %admin_listen, nodes = shared.pools.len(), "shardcast is up");

    let admin_task = tokio::spawn(
        crate::admin::serve(admin, shared.clone(), stop_rx.clone())
            .instrument(tracing::info_span!("admin")),
    );
    let rollup_task = tokio::spawn(rollup(shared.clone(), stop_rx.clone()));
    let forecast_task = tokio::spawn(forecast(shared.clone(), stop_rx.clone()));
    let accept_task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx.clone()));
    let recovery_task = tokio::spawn(recover_in_doubt(shared.clone(), stop_rx.clone()));
    let follow_task = tokio::spawn(crate::catalog::follow::follow(
        shared.clone(),
        stop_rx.clone(),
    ));
    let resume_task = tokio::spawn(crate::sharding::resume(shared.clone(), stop_rx.clone()));
    let monitor_task = tokio::spawn(crate::monitor::run(shared.clone(), stop_rx.clone()));
    let planner_task = tokio::spawn(crate::monitor::live::run(shared.clone(), stop_rx.clone()));

    shutdown_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = accept_task.await;
    let _ = admin_task.await;
    let _ = rollup_task.await;
    let _ = forecast_task.await;
    let _ = recovery_task.await;
    let _ = follow_task.await;
    let _ = resume_task.await;
    let _ = monitor_task.await;
    let _ = planner_task.await;
    Ok(())
}

/// At startup and then periodically: resolve prepared transactions whose
/// coordinator is gone (see `catalog::twophase`).
async fn recover_in_doubt(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if !shared.two_phase {
        return;
    }
    let after = Duration::from_secs(shared.config.transactions.recover_after);
    info!(
        recover_after_secs = after.as_secs(),
        "in-doubt transaction recovery started"
    );
    loop {
        match crate::catalog::twophase::recover(&shared.pools, after).await {
            Ok(r) if r.committed + r.rolled_back > 0 => {
                info!(
                    committed = r.committed,
                    rolled_back = r.rolled_back,
                    "in-doubt transactions resolved"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "in-doubt transaction recovery failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(after.max(Duration::from_secs(2)) / 2) => {}
            _ = stop.changed() => break,
        }
    }
    info!("in-doubt transaction recovery stopped");
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut next_id: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        next_id += 1;
        let shared = shared.clone();
        let span = tracing::debug_span!("client", id = next_id, %peer);
        tokio::spawn(
            async move {
                if let Err(e) = handle_client(shared, stream).await {
                    tracing::debug!(error = %e, "client session ended with an error");
                }
            }
            .instrument(span),
        );
    }
}

/// Once a second: advance the recorder's clock and roll finished seconds
/// into each partition's history.
async fn rollup(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    info!("recorder roll-up started");
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => shared.recorder.tick_now(),
            _ = stop.changed() => break,
        }
    }
    info!("recorder roll-up stopped");
}

/// Once per forecast bucket (aligned to the clock): close the bucket and
/// update every partition's forecast.
async fn forecast(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if !shared.recorder.enabled() {
        info!("forecaster off: the recorder is disabled");
        return;
    }
    let secs = shared.forecaster.bucket_secs();
    info!(bucket_secs = secs, "forecaster started");
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let next = (now.as_secs() / secs + 1) * secs;
        let wait = Duration::from_secs(next).saturating_sub(now);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                let table = shared.routing.load();
                shared.forecaster.tick(next / secs - 1, &shared.recorder, &table);
            }
            _ = stop.changed() => break,
        }
    }
    info!("forecaster stopped");
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
