//! `shardcast demo`: from a fresh machine with PostgreSQL running to a
//! working sharded proxy in one command. It creates each node's database
//! and the configured tables (with the hash-expression index that makes a
//! partition's rows a range scan), starts the proxy, writes sample rows
//! through it, and shows which node holds them — the node that
//! `/api/routing` names for the key's hash.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::NoTls;

use crate::backend::NodeTarget;
use crate::config::{Config, KeyType};

/// SQL type and PostgreSQL hash function for a key type.
pub fn key_sql(t: KeyType) -> (&'static str, &'static str) {
    t.sql()
}

async fn connect(t: &NodeTarget, db: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.host).port(t.port).user(&t.user).dbname(db);
    if let Some(p) = &t.password {
        cfg.password(p);
    }
    let (client, conn) = cfg.connect(NoTls).await.with_context(|| {
        format!(
            "node {}: cannot connect to {}:{} database {db}",
            t.name, t.host, t.port
        )
    })?;
    tokio::spawn(conn);
    Ok(client)
}

/// Creates every node's database and the sharded tables on each node.
pub async fn prepare_nodes(config: &Config) -> anyhow::Result<()> {
    for n in &config.nodes {
        let t = NodeTarget::from_url(&n.name, &n.url)
            .map_err(|e| anyhow::anyhow!("node {}: {e}", n.name))?;
        let admin = connect(&t, "postgres").await?;
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&t.dbname])
            .await?;
        if exists.is_none() {
            admin
                .batch_execute(&format!(
                    "CREATE DATABASE \"{}\"",
                    t.dbname.replace('"', "\"\"")
                ))
                .await?;
            println!("node {}: created database {}", n.name, t.dbname);
        }
        let db = connect(&t, &t.dbname).await?;
        for table in &config.tables {
            let (ty, hash) = key_sql(table.key_type);
            db.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {t} ({k} {ty} PRIMARY KEY, owner text, balance bigint NOT NULL DEFAULT 0, \
                 updated_at timestamptz NOT NULL DEFAULT now());
                 CREATE INDEX IF NOT EXISTS {t}_shard_hash ON {t} ({hash}({k}, 0));",
                t = table.name,
                k = table.shard_key,
            ))
            .await
            .with_context(|| format!("node {}: creating table {}", n.name, table.name))?;
        }
        println!(
            "node {}: ready ({}:{}/{})",
            n.name, t.host, t.port, t.dbname
        );
    }
    Ok(())
}

/// Writes sample rows through the proxy and prints where each landed.
async fn show_placement(config: &Config) -> anyhow::Result<()> {
    let Some(table) = config.tables.iter().find(|t| t.key_type == KeyType::Bigint) else {
        return Ok(());
    };
    let (host, port) = config
        .proxy
        .listen
        .rsplit_once(':')
        .context("[proxy] listen must be host:port")?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(port.parse()?)
        .user("postgres")
        .dbname(&config.proxy.database)
        .application_name("demo");
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .context("connecting to the proxy")?;
    tokio::spawn(conn);
    for id in 1..=8i64 {
        client
            .execute(
                &format!(
                    "INSERT INTO {t} ({k}, owner, balance) VALUES ($1, $2, 100) ON CONFLICT ({k}) DO NOTHING",
                    t = table.name,
                    k = table.shard_key
                ),
                &[&id, &format!("user{id}")],
            )
            .await?;
    }
    let rows = client
        .query(
            &format!(
                "SELECT {k}, owner FROM {t} WHERE {k} <= 8 ORDER BY 1",
                t = table.name,
                k = table.shard_key
            ),
            &[],
        )
        .await?;
    println!(
        "\n{} rows with {} <= 8 through the proxy (a read without one key: every node answers, rows merged in order)",
        rows.len(),
        table.shard_key
    );
    let total = client
        .query_one(
            &format!(
                "SELECT count(*), sum(balance)::int8 FROM {t}",
                t = table.name
            ),
            &[],
        )
        .await?;
    println!(
        "SELECT count(*), sum(balance) FROM {}: {} rows, {} in total (each node counts, the proxy combines)",
        table.name,
        total.get::<_, i64>(0),
        total.get::<_, Option<i64>>(1).unwrap_or(0)
    );
    for n in &config.nodes {
        let t = NodeTarget::from_url(&n.name, &n.url).map_err(|e| anyhow::anyhow!(e))?;
        let db = connect(&t, &t.dbname).await?;
        let ids: Vec<i64> = db
            .query(
                &format!(
                    "SELECT {k} FROM {t} WHERE {k} <= 8 ORDER BY 1",
                    t = table.name,
                    k = table.shard_key
                ),
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        println!("  node {:>4} holds {:?}", n.name, ids);
    }
    Ok(())
}

/// Moves the partition holding id 1 to another node, online, following it
/// with the CLI's progress output, then shows where the rows are.
async fn live_move(config: &Config) -> anyhow::Result<()> {
    if config.nodes.len() < 2 || !config.tables.iter().any(|t| t.key_type == KeyType::Bigint) {
        return Ok(());
    }
    let first = &config.nodes[0];
    let t = NodeTarget::from_url(&first.name, &first.url).map_err(|e| anyhow::anyhow!(e))?;
    let catalog = connect(&t, &t.dbname).await?;
    let row = catalog
        .query_one(
            "SELECT id, node FROM shardcast.partitions WHERE epoch = (SELECT max(epoch) FROM shardcast.epochs)
               AND hashint8extended(1, 0) BETWEEN lo AND hi",
            &[],
        )
        .await?;
    let (partition, node): (i32, String) = (row.get(0), row.get(1));
    let to = config
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != node)
        .context("no other node")?;
    println!("\nMoving partition {partition} (holds id 1) from node {node} to node {to}, online:");
    let admin = format!("http://{}", config.proxy.admin_listen);
    let request = crate::admin_client::Request::Move {
        partition: partition as u32,
        to,
    };
    let code =
        tokio::task::spawn_blocking(move || crate::admin_client::submit(&admin, &request, true))
            .await?;
    if code != 0 {
        anyhow::bail!("the move did not finish");
    }
    show_placement(config).await
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    prepare_nodes(&config).await?;
    let proxy_cfg = config.clone();
    let proxy = tokio::spawn(async move { crate::proxy::run(proxy_cfg).await });
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(&config.proxy.listen)
            .await
            .is_ok()
        {
            break;
        }
        if proxy.is_finished() {
            return proxy.await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    show_placement(&config).await?;
    if let Err(e) = live_move(&config).await {
        println!("(the live move was skipped: {e})");
    }
    let (host, port) = config
        .proxy
        .listen
        .rsplit_once(':')
        .unwrap_or(("127.0.0.1", "6432"));
    println!(
        "\nshardcast is running. Try:\n  psql -h {host} -p {port} -U postgres {db}\n  curl http://{admin}/api/routing\n  open http://{admin}/ for the status page\n  target/release/shardcast plan --admin http://{admin}   (what the planner would move, and why)\nCtrl-C stops it.",
        db = config.proxy.database,
        admin = config.proxy.admin_listen
    );
    proxy.await?
}
