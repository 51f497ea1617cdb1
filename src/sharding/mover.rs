//! Moving one partition from node A to node B, online, losing nothing.
//! Each step is journaled before it acts:
//!
//! 1. **capturing** — the change-log trigger goes on A (its creation waits
//!    for writes already running), then the routing epoch marks the
//!    partition `copying`.
//! 2. **copying** — one consistent snapshot of the partition (a REPEATABLE
//!    READ transaction on A) streams into one transaction on B, binary COPY.
//! 3. **catching_up** — keys in the change log are re-copied from A's
//!    current rows until fewer than `[migration] catch_up_rows` wait.
//! 4. **cutting_over** — the epoch marks the partition `cutting_over`, so
//!    every proxy holds its writes; A's fence goes up (waiting out running
//!    writes), the change log is drained to empty, validation compares A
//!    and B, B's fence comes down, and one catalog transaction commits the
//!    epoch that places the partition on B. Held writes go to B.
//! 5. **cleaning_up** — once every live proxy serves that epoch, the change
//!    log trigger is dropped and the rows on A deleted in batches.
//!
//! Anything before the commit in step 4 rolls back: routing as it was, A
//! unfenced, B's copy deleted, the journal saying why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, IsolationLevel};
use tracing::{info, warn};

mod cutover;
mod fence;
mod rollback;

use fence::{ddl_briefly, rebuild_fence, rebuild_fence_if_present};

use super::copy::{pipe, Moved, Throttle};
use super::triggers::{self, Table};
use crate::catalog::epochs;
use crate::catalog::journal::{self, Migration};
use crate::frontend::Shared;
use crate::ring::{NodeId, PartitionState, RoutingTable};

/// Why a migration stopped; `committed` once the new epoch is in the
/// catalog (from then on it can only go forward).
pub struct Stop {
    pub reason: String,
    pub committed: bool,
}

/// A catalog transaction holding the epoch lock.
async fn epoch_locked(catalog: &mut Client) -> Result<tokio_postgres::Transaction<'_>, Stop> {
    let tx = catalog
        .transaction()
        .await
        .map_err(|e| stop(e.to_string()))?;
    epochs::lock(&tx).await.map_err(stop)?;
    Ok(tx)
}

fn stop(reason: impl Into<String>) -> Stop {
    Stop {
        reason: reason.into(),
        committed: false,
    }
}

/// Everything one move needs.
pub struct Move<'a> {
    pub shared: &'a Arc<Shared>,
    /// The catalog connection that holds this migration's advisory lock.
    pub catalog: &'a mut Client,
    pub m: Migration,
    pub source: NodeId,
    pub target: NodeId,
    pub tables: Vec<Table<'a>>,
}

/// A migrator's connection to a node: fences do not apply to it.
pub async fn node_client(shared: &Shared, node: NodeId, role: &str) -> Result<Client, String> {
    let pool = &shared.pools[node];
    let c = crate::catalog::connect(&pool.target, "shardcast-migrator")
        .await
        .map_err(|e| format!("{role} {e}"))?;
    c.batch_execute("SET shardcast.migrator = 'on'")
        .await
        .map_err(|e| format!("{role} node {}: {e}", pool.target.name))?;
    // Rows a migration moves already fired their triggers where they were
    // written: with the privilege for it, copies skip triggers (the fence's
    // per-row check included) the way a logical replica applies rows.
    let _ = c
        .batch_execute("SET session_replication_role = replica")
        .await;
    Ok(c)
}

impl Move<'_> {
    fn name(&self, n: NodeId) -> &str {
        &self.shared.pools[n].target.name
    }

    fn id(&self) -> i64 {
        self.m.id
    }

    async fn step(&self, state: &str, detail: &str) -> Result<(), Stop> {
        info!(
            migration = self.id(),
            step = state,
            detail,
            "migration step"
        );
        self.shared
            .metrics
            .migration_steps
            .with_label_values(&[state])
            .inc();
        journal::step(&*self.catalog, self.id(), state, detail)
            .await
            .map_err(stop)
    }

    async fn source(&self) -> Result<Client, Stop> {
        node_client(self.shared, self.source, "source")
            .await
            .map_err(stop)
    }

    async fn target(&self) -> Result<Client, Stop> {
        node_client(self.shared, self.target, "target")
            .await
            .map_err(stop)
    }

    fn err_at(&self, node: NodeId) -> impl Fn(tokio_postgres::Error) -> Stop + '_ {
        move |e| {
            let role = if node == self.source {
                "source"
            } else {
                "target"
            };
            stop(format!("{role} node {}: {e}", self.name(node)))
        }
    }

    /// Runs the move from `planned` to `done`.
    pub async fn run(&mut self) -> Result<(), Stop> {
        self.capture().await?;
        self.copy().await?;
        self.catch_up().await?;
        self.cut_over().await?;
        self.clean_up().await
    }

    async fn capture(&mut self) -> Result<(), Stop> {
        self.step(
            "capturing",
            "installing the change-log trigger on the source",
        )
        .await?;
        let (lo, hi) = (self.m.lo, self.m.hi);
        for node in [self.source, self.target] {
            let c = node_client(
                self.shared,
                node,
                if node == self.source {
                    "source"
                } else {
                    "target"
                },
            )
            .await
            .map_err(stop)?;
            c.batch_execute(triggers::NODE_SCHEMA)
                .await
                .map_err(self.err_at(node))?;
            if node == self.target {
                let source = &self.shared.pools[self.source].target;
                let created = super::schema::ensure_tables(&self.tables, source, &c)
                    .await
                    .map_err(|e| stop(format!("target node {}: {e}", self.name(node))))?;
                if !created.is_empty() {
                    let detail = format!("created {} from the source's schema", created.join(", "));
                    info!(migration = self.id(), %detail, "target had no tables");
                    let _ = journal::line(&*self.catalog, self.id(), "schema", &detail).await;
                }
            }
        }
        let a = self.source().await?;
        self.drop_stale_change_logs(&a).await?;
        let ddl: Vec<String> = self
            .tables
            .iter()
            .map(|t| triggers::change_log(t, self.id(), lo, hi))
            .collect();
        ddl_briefly(&a, &self.tables, &ddl.join("\n"))
            .await
            .map_err(|e| {
                stop(format!(
                    "source node {}: change log not installed: {e}",
                    self.name(self.source)
                ))
            })?;
        let (p, target) = (self.m.partition, self.target);
        self.change_epoch("copying", |ps| {
            let p = ps
                .iter_mut()
                .find(|x| x.id == p)
                .ok_or("partition vanished")?;
            p.state = PartitionState::Copying;
            p.target = Some(target);
            Ok(())
        })
        .await
    }

    async fn copy(&mut self) -> Result<(), Stop> {
        self.step(
            "copying",
            "streaming a snapshot of the partition with binary COPY",
        )
        .await?;
        let (lo, hi) = (self.m.lo, self.m.hi);
        let mut a = self.source().await?;
        let mut b = self.target().await?;
        let snap = self.snapshot(&mut a).await?;
        let mut total = 0i64;
        for t in &self.tables {
            let n: i64 = snap
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {} WHERE {}",
                        t.name(),
                        t.in_range(lo, hi)
                    ),
                    &[],
                )
                .await
                .map_err(self.err_at(self.source))?
                .get(0);
            total += n;
        }
        let into = b.transaction().await.map_err(self.err_at(self.target))?;
        let mut throttle = Throttle::new(self.shared.config.migration.copy_rate);
        let mut moved = Moved::default();
        let id = self.id();
        let seen = std::sync::Mutex::new(Moved::default());
        let copying = async {
            for t in &self.tables {
                // Rows of this range on B are leftovers (an earlier, aborted
                // run, or a direct client): B does not serve the range yet.
                into.execute(
                    &format!("DELETE FROM {} WHERE {}", t.name(), t.in_range(lo, hi)),
                    &[],
                )
                .await
                .map_err(self.err_at(self.target))?;
                let out_sql = format!(
                    "COPY (SELECT * FROM {} WHERE {}) TO STDOUT (FORMAT binary)",
                    t.name(),
                    t.in_range(lo, hi)
                );
                let in_sql = format!("COPY {} FROM STDIN (FORMAT binary)", t.name());
                let mut report = |m: Moved| *seen.lock().unwrap() = m;
                pipe(
                    &snap,
                    &into,
                    &out_sql,
                    &in_sql,
                    &mut throttle,
                    &mut moved,
                    &mut report,
                )
                .await
                .map_err(|e| stop(self.name_roles(&e)))?;
                super::fault("exit_in_copy");
            }
            Ok::<_, Stop>(())
        };
        // Progress reaches the journal twice a second while the copy runs.
        let reporting = async {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let m = *seen.lock().unwrap();
                let _ = journal::progress(&*self.catalog, id, total, m.rows as i64, m.bytes as i64)
                    .await;
            }
        };
        tokio::select! {
            r = copying => r?,
            _ = reporting => {}
        }
        self.shared.metrics.migration_rows.inc_by(moved.rows);
        self.shared.metrics.migration_bytes.inc_by(moved.bytes);
        let catalog = &*self.catalog;
        // The copy becomes visible on B when this commits: every proxy must
        // know by then that B's rows of the range are not B's to answer for.
        let epoch = self.shared.routing.peek().epoch();
        let limit = Duration::from_secs(self.shared.config.migration.heartbeat_timeout);
        self.wait_for_proxies(epoch, Some(limit)).await?;
        into.commit().await.map_err(self.err_at(self.target))?;
        drop(snap);
        journal::progress(catalog, id, total, moved.rows as i64, moved.bytes as i64)
            .await
            .map_err(stop)?;
        journal::line(
            catalog,
            id,
            "copied",
            &format!("{} rows, {} bytes", moved.rows, moved.bytes),
        )
        .await
        .map_err(stop)?;
        Ok(())
    }

    /// One consistent, read-only view of the source (REPEATABLE READ).
    async fn snapshot<'c>(
        &self,
        a: &'c mut Client,
    ) -> Result<tokio_postgres::Transaction<'c>, Stop> {
        a.build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(self.err_at(self.source))
    }

    /// Digests the range on the source (`a`) and the target (`b`) at once,
    /// restricted to or excluding `keys`, and compares them; the rows
    /// compared, or why they differ.
    async fn compare_range(
        &self,
        a: &impl tokio_postgres::GenericClient,
        b: &impl tokio_postgres::GenericClient,
        keys: &[Vec<String>],
        within: bool,
    ) -> Result<u64, Stop> {
        let (lo, hi) = (self.m.lo, self.m.hi);
        let (da, db) = tokio::join!(
            crate::validation::digest_keys(a, &self.tables, lo, hi, keys, within),
            crate::validation::digest_keys(b, &self.tables, lo, hi, keys, within)
        );
        let da = da.map_err(|e| stop(format!("source node {}: {e}", self.name(self.source))))?;
        let db = db.map_err(|e| stop(format!("target node {}: {e}", self.name(self.target))))?;
        crate::validation::compare(
            &self.tables,
            &da,
            &db,
            self.name(self.source),
            self.name(self.target),
        )
        .map_err(stop)
    }

    fn name_roles(&self, e: &str) -> String {
        e.replacen(
            "source:",
            &format!("source node {}:", self.name(self.source)),
            1,
        )
        .replacen(
            "target:",
            &format!("target node {}:", self.name(self.target)),
            1,
        )
    }

    async fn catch_up(&mut self) -> Result<(), Stop> {
        self.step("catching_up", "re-copying rows written since the snapshot")
            .await?;
        super::fault("exit_in_catch_up");
        let a = self.source().await?;
        let mut b = self.target().await?;
        let limit = self.shared.config.migration.catch_up_rows as i64;
        for _ in 0..1000 {
            let waiting = self.backlog(&a).await?;
            if waiting < limit {
                // One more pass, so that writes held at the cut-over wait
                // only for what changed during it.
                if waiting > 0 {
                    self.recopy(&a, &mut b).await?;
                }
                return Ok(());
            }
            self.recopy(&a, &mut b).await?;
        }
        Err(stop("the catch-up never got the change log small: the partition is written faster than it can be copied"))
    }

    async fn backlog(&self, a: &Client) -> Result<i64, Stop> {
        Ok(a.query_one(
            "SELECT count(*) FROM shardcast.changes WHERE migration = $1",
            &[&self.id()],
        )
        .await
        .map_err(self.err_at(self.source))?
        .get(0))
    }

    /// Re-copies one batch of changed keys from A's current rows; returns
    /// the change-log entries it consumed (table index, key).
    async fn recopy(&self, a: &Client, b: &mut Client) -> Result<Vec<(usize, String)>, Stop> {
        let rows = a
            .query(
                "SELECT seq, tbl, key FROM shardcast.changes WHERE migration = $1 ORDER BY seq LIMIT 5000",
                &[&self.id()],
            )
            .await
            .map_err(self.err_at(self.source))?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let tx = b.transaction().await.map_err(self.err_at(self.target))?;
        let mut throttle = Throttle::new(0);
        let mut moved = Moved::default();
        for t in &self.tables {
            let keys: Vec<String> = rows
                .iter()
                .filter(|r| r.get::<_, i32>(1) as usize == t.index)
                .map(|r| r.get(2))
                .collect();
            if keys.is_empty() {
                continue;
            }
            tx.execute(
                &format!(
                    "DELETE FROM {} WHERE {} = ANY($1::text[]::{}[])",
                    t.name(),
                    t.key(),
                    t.key_type()
                ),
                &[&keys],
            )
            .await
            .map_err(self.err_at(self.target))?;
            let list = seqs
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let out_sql = format!(
                "COPY (SELECT * FROM {table} WHERE {key} IN (SELECT key::{ty} FROM shardcast.changes WHERE tbl = {i} AND seq IN ({list}))) TO STDOUT (FORMAT binary)",
                table = t.name(),
                key = t.key(),
                ty = t.key_type(),
                i = t.index,
            );
            let in_sql = format!("COPY {} FROM STDIN (FORMAT binary)", t.name());
            pipe(
                a,
                &tx,
                &out_sql,
                &in_sql,
                &mut throttle,
                &mut moved,
                &mut |_| {},
            )
            .await
            .map_err(|e| stop(self.name_roles(&e)))?;
        }
        tx.commit().await.map_err(self.err_at(self.target))?;
        a.execute(
            "DELETE FROM shardcast.changes WHERE seq = ANY($1)",
            &[&seqs],
        )
        .await
        .map_err(self.err_at(self.source))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(1) as usize, r.get::<_, String>(2)))
            .collect())
    }

    /// Once every live proxy serves the cut-over epoch: drop the change log
    /// and delete the old copy on A; the partition is then plain `serving`.
    pub async fn clean_up(&mut self) -> Result<(), Stop> {
        let committed = |r: String| Stop {
            reason: r,
            committed: true,
        };
        let epoch = self.shared.routing.peek().epoch();
        self.wait_for_proxies(epoch, None)
            .await
            .map_err(|s| committed(s.reason))?;
        self.check_read_through().await;
        let a = self.source().await.map_err(|s| committed(s.reason))?;
        for t in &self.tables {
            a.batch_execute(&triggers::drop_change_log(t, self.id()))
                .await
                .map_err(|e| committed(format!("source node {}: {e}", self.name(self.source))))?;
        }
        a.execute(
            "DELETE FROM shardcast.changes WHERE migration = $1",
            &[&self.id()],
        )
        .await
        .map_err(|e| committed(e.to_string()))?;
        let (lo, hi) = (self.m.lo, self.m.hi);
        let mut deleted = 0u64;
        for t in &self.tables {
            loop {
                let n = a
                    .execute(
                        &format!(
                            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {range} LIMIT 5000))",
                            table = t.name(),
                            range = t.in_range(lo, hi)
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| committed(format!("source node {}: {e}", self.name(self.source))))?;
                deleted += n;
                if n == 0 {
                    break;
                }
            }
        }
        let p = self.m.partition;
        self.change_epoch("done", |ps| {
            let x = ps
                .iter_mut()
                .find(|x| x.id == p)
                .ok_or("partition vanished")?;
            x.state = PartitionState::Serving;
            x.target = None;
            Ok(())
        })
        .await
        .map_err(|s| committed(s.reason))?;
        journal::finish(&*self.catalog, self.id(), "done", None)
            .await
            .map_err(committed)?;
        info!(migration = self.id(), deleted, "migration done");
        Ok(())
    }

    /// Waits until every live proxy's heartbeat serves `epoch` or newer
    /// (silent ones past `heartbeat_timeout` do not count), at most `limit`.
    async fn wait_for_proxies(&self, epoch: u64, limit: Option<Duration>) -> Result<(), Stop> {
        let timeout = self.shared.config.migration.heartbeat_timeout as f64;
        let started = Instant::now();
        loop {
            let behind: i64 = self
                .catalog
                .query_one(
                    "SELECT count(*) FROM shardcast.proxies WHERE epoch < $1 AND last_seen > now() - make_interval(secs => $2)",
                    &[&(epoch as i64), &timeout],
                )
                .await
                .map_err(|e| stop(e.to_string()))?
                .get(0);
            if behind == 0 {
                return Ok(());
            }
            if limit.is_some_and(|l| started.elapsed() >= l) {
                warn!(
                    migration = self.id(),
                    behind, epoch, "proxies still serve an older epoch; going on"
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Validation after the cut-over: a key of the partition answers
    /// through the proxy as on its new home. A failure is journaled and
    /// logged (the move is committed; the old copy is deleted regardless,
    /// B having passed the checksums).
    async fn check_read_through(&mut self) {
        let (lo, hi) = (self.m.lo, self.m.hi);
        let outcome = async {
            let b = self.target().await.map_err(|s| s.reason)?;
            for t in &self.tables {
                let sample = b
                    .query_opt(
                        &format!(
                            "SELECT {key}::text, (SELECT count(*) FROM {table} x WHERE x.{key} = r.{key}) FROM {table} r WHERE {range} LIMIT 1",
                            key = t.key(),
                            table = t.name(),
                            range = t.in_range(lo, hi)
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(row) = sample {
                    let key: String = row.get(0);
                    return crate::validation::read_through(self.shared, t, &key, row.get(1))
                        .await
                        .map(|()| format!("{} {} = {key}", t.name(), t.key()));
                }
            }
            Ok("the partition is empty".to_string())
        }
        .await;
        let (step, detail) = match outcome {
            Ok(what) => ("validated", format!("read through the proxy: {what}")),
            Err(e) => {
                warn!(migration = self.id(), error = %e, "read-through check failed");
                ("validation_warning", e)
            }
        };
        let _ = journal::line(&*self.catalog, self.id(), step, &detail).await;
    }

    /// One epoch change (under the epoch lock), published here at once.
    async fn change_epoch<F>(&mut self, what: &str, f: F) -> Result<(), Stop>
    where
        F: FnOnce(&mut Vec<crate::ring::Partition>) -> Result<(), &'static str>,
    {
        let nodes = self.shared.routing.peek().nodes().to_vec();
        let tx = epoch_locked(&mut *self.catalog).await?;
        let next = epochs::change(
            &tx,
            &nodes,
            &format!("migration {}: {what}", self.m.id),
            |ps| f(ps).map_err(str::to_string),
        )
        .await
        .map_err(stop)?;
        tx.commit().await.map_err(|e| stop(e.to_string()))?;
        crate::catalog::follow::adopt(self.shared, next);
        Ok(())
    }
}
