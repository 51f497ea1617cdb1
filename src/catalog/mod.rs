//! The cluster's shared state in PostgreSQL: schema `shardcast` on the
//! catalog node (the first node). Today it holds the decision records of
//! two-phase commits; the routing epochs, migration journal and proxy
//! heartbeats of online migration will live beside them.

pub mod twophase;

use std::sync::Arc;
use std::time::Duration;

use crate::backend::Pool;

/// Creates the catalog schema if it is missing. Several proxies may start
/// at once: a lost race on `CREATE … IF NOT EXISTS` is retried.
pub const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS shardcast;
CREATE TABLE IF NOT EXISTS shardcast.decisions (
    gid        text PRIMARY KEY,
    commit     boolean NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);";

/// A plain client connection to one node (for startup and recovery work,
/// not the data path).
pub async fn client(pool: &Pool) -> Option<tokio_postgres::Client> {
    let t = &pool.target;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.host)
        .port(t.port)
        .user(&t.user)
        .dbname(&t.dbname)
        .application_name("shardcast-catalog");
    if let Some(p) = &t.password {
        cfg.password(p);
    }
    match tokio::time::timeout(Duration::from_secs(3), cfg.connect(tokio_postgres::NoTls)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            Some(client)
        }
        _ => None,
    }
}

/// Makes sure the catalog schema exists on the catalog node.
pub async fn bootstrap(pools: &[Arc<Pool>]) -> Result<(), String> {
    let pool = pools.first().ok_or("no nodes")?;
    let c = client(pool)
        .await
        .ok_or_else(|| format!("catalog node {} unreachable", pool.target.name))?;
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
