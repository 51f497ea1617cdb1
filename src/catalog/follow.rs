//! How a proxy follows the catalog: it LISTENs for new epochs (and polls
//! every `[migration] poll` in case a notification is lost), swaps its
//! routing table atomically, and records in its heartbeat the epoch it now
//! serves — which is what lets a migration clean up its old home safely.
//! A write that meets a node's fence asks for a refresh on the spot
//! (`refresh_soon`), so a proxy that missed everything still never writes
//! to an old home.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio_postgres::AsyncMessage;
use tracing::{info, warn};

use super::epochs;
use crate::backend::NodeTarget;
use crate::frontend::Shared;
use crate::ring::RoutingTable;

/// This proxy's handle on the catalog.
pub struct Catalog {
    pub target: NodeTarget,
    /// Unique per process: address and pid.
    pub proxy_id: String,
    /// The client address this proxy listens on (shown in heartbeats).
    pub address: String,
    refreshing: AtomicBool,
    /// Wakes the follower to send a heartbeat now (after a new epoch).
    beat: Notify,
}

impl Catalog {
    pub fn new(target: NodeTarget, address: &str) -> Self {
        Self {
            target,
            proxy_id: format!("{address}/{}", std::process::id()),
            address: address.to_string(),
            refreshing: AtomicBool::new(false),
            beat: Notify::new(),
        }
    }

    pub async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        super::connect(&self.target, "shardcast-catalog").await
    }

    /// Reads the latest epoch in the background and publishes it if it is
    /// newer; several callers at once share one read.
    pub fn refresh_soon(&self, shared: &Arc<Shared>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let Some(catalog) = &shared.catalog else {
                return;
            };
            if let Err(e) = catalog.refresh(&shared).await {
                warn!(error = %e, "routing refresh from the catalog failed");
            }
            catalog.refreshing.store(false, Ordering::Release);
        });
    }

    /// Loads the latest epoch and publishes it if newer than the current.
    pub async fn refresh(&self, shared: &Shared) -> Result<(), String> {
        let c = self.connect().await?;
        self.refresh_with(&c, shared).await
    }

    async fn refresh_with(
        &self,
        c: &tokio_postgres::Client,
        shared: &Shared,
    ) -> Result<(), String> {
        let cur = shared.routing.peek().epoch();
        if epochs::latest_epoch(c).await?.is_some_and(|e| e > cur) {
            if let Some(t) = epochs::latest(c, shared.routing.peek().nodes()).await? {
                adopt(shared, t);
            }
        }
        Ok(())
    }

    async fn heartbeat(&self, c: &tokio_postgres::Client, epoch: u64) -> Result<(), String> {
        c.execute(
            "INSERT INTO shardcast.proxies (id, address, epoch) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET epoch = EXCLUDED.epoch, last_seen = now()",
            &[&self.proxy_id, &self.address, &(epoch as i64)],
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("heartbeat: {e}"))
    }
}

/// Publishes `table` if it is newer than the one served, and carries the
/// recorder's history over the splits and merges between the two.
pub fn adopt(shared: &Shared, table: RoutingTable) -> bool {
    let old = shared.routing.load();
    if table.epoch() <= old.epoch() {
        return false;
    }
    let epoch = table.epoch();
    follow_history(shared, &old, &table);
    if shared.routing.publish(table).is_ok() {
        shared.metrics.routing_epoch.set(epoch as i64);
        info!(epoch, "routing table updated");
        // The heartbeat says so at once: migrations wait for it.
        if let Some(c) = &shared.catalog {
            c.beat.notify_one();
        }
        return true;
    }
    false
}

/// New partition ids are either the two halves of an old partition
/// (split) or the union of two old ones (merge); their history follows.
fn follow_history(shared: &Shared, old: &RoutingTable, new: &RoutingTable) {
    let known = |id| old.index_of(id).is_some();
    let fresh: Vec<_> = new.partitions().iter().filter(|p| !known(p.id)).collect();
    if fresh.is_empty() {
        return;
    }
    shared.recorder.ensure(fresh.iter().map(|p| p.id));
    for parent in old.partitions() {
        let halves: Vec<_> = fresh
            .iter()
            .filter(|p| p.lo >= parent.lo && p.hi <= parent.hi)
            .collect();
        if let [a, b] = halves[..] {
            let span = |lo: i64, hi: i64| (hi as f64 - lo as f64) + 1.0;
            let fraction = span(a.lo, a.hi) / span(parent.lo, parent.hi);
            shared.recorder.split(parent.id, [a.id, b.id], fraction);
        }
    }
    for p in &fresh {
        let parts: Vec<_> = old
            .partitions()
            .iter()
            .filter(|o| o.lo >= p.lo && o.hi <= p.hi)
            .collect();
        if let [a, b] = parts[..] {
            shared.recorder.merge([a.id, b.id], p.id);
        }
    }
}

/// Runs until `stop`: LISTEN + poll + heartbeat, reconnecting after a
/// lost catalog connection. `SHARDCAST_FAULT=deaf` turns off LISTEN and
/// the poll (tests of a proxy that missed every notification).
pub async fn follow(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(catalog) = shared.catalog.as_ref() else {
        return;
    };
    let deaf = std::env::var("SHARDCAST_FAULT").is_ok_and(|f| f == "deaf");
    let cfg = &shared.config.migration;
    info!(proxy = %catalog.proxy_id, deaf, "catalog follower started");
    loop {
        match session(&shared, catalog, deaf, &mut stop, cfg).await {
            Ok(()) => break,
            Err(e) => warn!(error = %e, "catalog connection lost; reconnecting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => break,
        }
    }
    if let Ok(c) = catalog.connect().await {
        let _ = c
            .execute(
                "DELETE FROM shardcast.proxies WHERE id = $1",
                &[&catalog.proxy_id],
            )
            .await;
    }
    info!("catalog follower stopped");
}

/// One catalog connection's life; Ok when asked to stop.
async fn session(
    shared: &Shared,
    catalog: &Catalog,
    deaf: bool,
    stop: &mut watch::Receiver<bool>,
    cfg: &crate::config::MigrationConfig,
) -> Result<(), String> {
    let (client, mut conn) = super::connect_raw(&catalog.target, "shardcast-follower").await?;
    let (tx, mut notes) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let _guard = AbortOnDrop(driver);
    if !deaf {
        client
            .batch_execute(&format!("LISTEN {}", super::CHANNEL))
            .await
            .map_err(|e| e.to_string())?;
        catalog.refresh_with(&client, shared).await?;
    }
    catalog
        .heartbeat(&client, shared.routing.peek().epoch())
        .await?;
    let mut poll = tokio::time::interval(Duration::from_secs(cfg.poll));
    let mut beat = tokio::time::interval(Duration::from_secs(cfg.heartbeat));
    loop {
        tokio::select! {
            n = notes.recv(), if !deaf => {
                if n.is_none() {
                    return Err("notification stream ended".into());
                }
                catalog.refresh_with(&client, shared).await?;
            }
            _ = poll.tick(), if !deaf => catalog.refresh_with(&client, shared).await?,
            _ = beat.tick() => catalog.heartbeat(&client, shared.routing.peek().epoch()).await?,
            _ = catalog.beat.notified() => catalog.heartbeat(&client, shared.routing.peek().epoch()).await?,
            _ = stop.changed() => return Ok(()),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
