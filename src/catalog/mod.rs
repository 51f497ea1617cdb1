//! The cluster's shared state in PostgreSQL: schema `shardcast` on the
//! catalog database (`[catalog] url`, default the first node's). It holds
//! every routing epoch with its partitions (the truth once seeded from the
//! config), the migration journal, the node registry, proxy heartbeats,
//! and the decision records of two-phase commits. Proxies follow it with
//! LISTEN/NOTIFY and a poll (`follow`).

pub mod epochs;
pub mod follow;
pub mod journal;
pub mod twophase;

pub use follow::Catalog;

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{NodeTarget, Pool};

/// Creates the catalog schema if it is missing. Several proxies may start
/// at once: a lost race on `CREATE … IF NOT EXISTS` is retried.
pub const SCHEMA: &str = "
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS shardcast;
CREATE TABLE IF NOT EXISTS shardcast.decisions (
    gid        text PRIMARY KEY,
    commit     boolean NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shardcast.epochs (
    epoch      bigint PRIMARY KEY,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shardcast.partitions (
    epoch  bigint NOT NULL REFERENCES shardcast.epochs ON DELETE CASCADE,
    id     integer NOT NULL,
    lo     bigint NOT NULL,
    hi     bigint NOT NULL,
    node   text NOT NULL,
    state  text NOT NULL,
    target text,
    PRIMARY KEY (epoch, id)
);
CREATE TABLE IF NOT EXISTS shardcast.nodes (
    name     text PRIMARY KEY,
    address  text NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shardcast.proxies (
    id         text PRIMARY KEY,
    address    text NOT NULL,
    epoch      bigint NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shardcast.migrations (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL,
    partition_id integer NOT NULL,
    source       text NOT NULL,
    target       text NOT NULL,
    lo           bigint NOT NULL,
    hi           bigint NOT NULL,
    state        text NOT NULL DEFAULT 'planned',
    rows_total   bigint NOT NULL DEFAULT 0,
    rows_copied  bigint NOT NULL DEFAULT 0,
    bytes_copied bigint NOT NULL DEFAULT 0,
    pause_ms     double precision,
    copy_started_at timestamptz,
    reason       text,
    owner        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE TABLE IF NOT EXISTS shardcast.journal (
    seq       bigserial PRIMARY KEY,
    migration bigint NOT NULL,
    step      text NOT NULL,
    detail    text NOT NULL DEFAULT '',
    at        timestamptz NOT NULL DEFAULT now()
);";

/// The channel proxies LISTEN on; the payload is the new epoch.
pub const CHANNEL: &str = "shardcast_routing";

/// A plain client connection to one node (for startup and recovery work,
/// not the data path).
pub async fn client(pool: &Pool) -> Option<tokio_postgres::Client> {
    connect(&pool.target, "shardcast-catalog").await.ok()
}

/// A plain client connection to a database (catalog, migration work).
pub async fn connect(t: &NodeTarget, application: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = connect_raw(t, application).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A connection whose driver task the caller polls (for notifications).
pub async fn connect_raw(
    t: &NodeTarget,
    application: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    String,
> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.host)
        .port(t.port)
        .user(&t.user)
        .dbname(&t.dbname)
        .application_name(application);
    if let Some(p) = &t.password {
        cfg.password(p);
    }
    match tokio::time::timeout(Duration::from_secs(3), cfg.connect(tokio_postgres::NoTls)).await {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => Err(format!("node {} ({}:{}): {e}", t.name, t.host, t.port)),
        Err(_) => Err(format!(
            "node {} ({}:{}): no answer in 3 s",
            t.name, t.host, t.port
        )),
    }
}

/// Makes sure the catalog schema exists on the catalog node.
pub async fn bootstrap(pools: &[Arc<Pool>]) -> Result<(), String> {
    let pool = pools.first().ok_or("no nodes")?;
    bootstrap_at(&pool.target).await
}

/// Makes sure the catalog schema exists in this database.
pub async fn bootstrap_at(target: &NodeTarget) -> Result<(), String> {
    let c = connect(target, "shardcast-catalog").await?;
    let mut last = String::new();
    for _ in 0..3 {
        match c.batch_execute(SCHEMA).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}
