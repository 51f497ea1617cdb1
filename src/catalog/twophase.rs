//! Two-phase commit for statements that change rows on several nodes.
//!
//! Each node's part runs inside `BEGIN … PREPARE TRANSACTION '<gid>'`.
//! Only when every node prepared is the decision written — one row in
//! `shardcast.decisions` on the catalog node, committed — and only then
//! is `COMMIT PREPARED` sent. A proxy that dies in between leaves
//! prepared transactions behind; the next proxy to start resolves each
//! from the record: a commit decision is carried out, anything else is
//! rolled back. Recovery first *claims* an undecided gid with an abort
//! record, so a slow coordinator that arrives later finds the gid taken
//! and cannot commit: the outcome is the same on every node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::backend::{BackendError, Checkout, Pool, ServerConn};
use crate::protocol::messages::{encode_query, parse_error};

/// Prefix of every gid shardcast prepares.
pub const GID_PREFIX: &str = "shardcast:";

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A gid unique across proxies and restarts: process id, start time, counter.
pub fn new_gid() -> String {
    static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    });
    format!(
        "{GID_PREFIX}{}:{start}:{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Crash points for the recovery test: `SHARDCAST_FAULT=exit_after_prepare`
/// or `exit_after_decision` makes the proxy exit there, as a crash would.
pub fn crash_point(point: &str) {
    static FAULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if FAULT
        .get_or_init(|| std::env::var("SHARDCAST_FAULT").ok())
        .as_deref()
        == Some(point)
    {
        warn!(point, "SHARDCAST_FAULT: exiting here");
        std::process::exit(70);
    }
}

pub fn begin_sql() -> &'static str {
    "BEGIN"
}

pub fn prepare_sql(gid: &str) -> String {
    format!("PREPARE TRANSACTION '{gid}'")
}

/// Runs one simple query; Ok(None) on success, Ok(Some(sqlstate message))
/// when the server refused it.
pub async fn simple(conn: &mut ServerConn, sql: &str) -> Result<Option<String>, BackendError> {
    conn.write_all(&encode_query(sql).bytes).await?;
    let mut err = None;
    loop {
        let f = conn.recv().await?;
        match f.tag {
            b'E' => {
                let e = parse_error(&f);
                err = Some(format!("{} {}", e.code, e.message));
            }
            b'Z' => {
                conn.status = crate::protocol::messages::ready_status(&f);
                return Ok(err);
            }
            _ => {}
        }
    }
}

/// Why a prepared statement could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the commit decision could not be recorded on the catalog node: {0}")]
    Decision(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Records the commit decision on `catalog`, then commits the prepared
/// transaction on every participant. Once the decision is recorded the
/// statement is committed: a node that cannot be reached now is committed
/// by recovery later (the record stays until then).
/// `catalog_takes_part`: the catalog node holds a part of the statement too.
pub async fn commit(
    catalog: &mut ServerConn,
    catalog_takes_part: bool,
    participants: &mut [&mut ServerConn],
    gid: &str,
) -> Result<(), CommitError> {
    let record = format!("INSERT INTO shardcast.decisions (gid, commit) VALUES ('{gid}', true)");
    crash_point("exit_after_prepare");
    if let Some(e) = simple(catalog, &record).await? {
        return Err(CommitError::Decision(e));
    }
    crash_point("exit_after_decision");
    let mut all = commit_prepared(participants, gid).await;
    if catalog_takes_part {
        all &= commit_prepared(&mut [&mut *catalog], gid).await;
    }
    if all {
        let _ = simple(
            catalog,
            &format!("DELETE FROM shardcast.decisions WHERE gid = '{gid}'"),
        )
        .await;
    }
    Ok(())
}

/// Ends the open transactions of `parts` together: PREPARE on each under a
/// new gid, then [`commit`] with the decision on the catalog node (a
/// participant's connection when it takes part, else one from `catalog`).
/// Ok(Ok) committed everywhere; Ok(Err(why)) rolled back everywhere.
pub async fn prepare_and_commit(
    parts: &mut [Checkout],
    catalog: &Arc<Pool>,
) -> Result<Result<(), String>, BackendError> {
    let gid = new_gid();
    let mut prepared = true;
    for c in parts.iter_mut() {
        if let Some(e) = simple(c, &prepare_sql(&gid)).await? {
            warn!(node = c.node_name(), error = %e, "PREPARE TRANSACTION failed");
            prepared = false;
        }
    }
    let at = parts.iter().position(|c| c.node() == catalog.node);
    let mut extra = match at {
        Some(_) => None,
        None => Some(catalog.checkout().await?),
    };
    let (cat, mut rest): (&mut ServerConn, Vec<&mut ServerConn>) = match (at, extra.as_mut()) {
        (Some(i), _) => {
            let (before, after) = parts.split_at_mut(i);
            let (cat, after) = after.split_first_mut().expect("index in range");
            let rest = before.iter_mut().chain(after.iter_mut()).map(|c| &mut **c);
            (&mut **cat, rest.collect())
        }
        (None, Some(c)) => (&mut **c, parts.iter_mut().map(|c| &mut **c).collect()),
        (None, None) => unreachable!("checked out above"),
    };
    let why = if !prepared {
        "a shard could not prepare it".to_string()
    } else {
        match commit(cat, at.is_some(), &mut rest, &gid).await {
            Ok(()) => return Ok(Ok(())),
            Err(CommitError::Decision(e)) => {
                format!("the commit decision could not be recorded ({e})")
            }
            Err(CommitError::Backend(e)) => return Err(e),
        }
    };
    if at.is_some() {
        rest.push(cat);
    }
    abort(&mut rest, &gid).await;
    Ok(Err(why))
}

/// `COMMIT PREPARED` on each participant; false if any could not (the
/// decision record then stays for recovery).
pub async fn commit_prepared(participants: &mut [&mut ServerConn], gid: &str) -> bool {
    let mut all = true;
    for p in participants.iter_mut() {
        let r = simple(p, &format!("COMMIT PREPARED '{gid}'")).await;
        let failed = match r {
            Ok(None) => continue,
            Ok(Some(e)) => e,
            Err(e) => e.to_string(),
        };
        warn!(gid, node = p.node_name(), error = %failed, "COMMIT PREPARED failed; recovery will finish it");
        all = false;
    }
    all
}

/// Rolls back whatever was prepared under `gid` (a node that never
/// prepared answers "does not exist", which is fine).
pub async fn abort(participants: &mut [&mut ServerConn], gid: &str) {
    for p in participants.iter_mut() {
        if let Err(e) = simple(p, &format!("ROLLBACK PREPARED '{gid}'")).await {
            warn!(gid, node = p.node_name(), error = %e, "ROLLBACK PREPARED failed; recovery will finish it");
        }
    }
}

/// What recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub committed: usize,
    pub rolled_back: usize,
}

/// Resolves every shardcast prepared transaction older than `min_age` on
/// every node from the decision records.
pub async fn recover(pools: &[Arc<Pool>], min_age: Duration) -> Result<Recovered, String> {
    let catalog = super::client(pools.first().ok_or("no nodes")?)
        .await
        .ok_or("catalog node unreachable")?;
    let mut out = Recovered::default();
    let mut seen: Vec<String> = Vec::new();
    let mut all_reached = true;
    for pool in pools {
        let Some(node) = super::client(pool).await else {
            warn!(node = %pool.target.name, "node unreachable; its prepared transactions wait for the next recovery");
            all_reached = false;
            continue;
        };
        let held = node
            .query(
                "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE gid LIKE 'shardcast:%' AND database = current_database()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        seen.extend(held.iter().map(|r| r.get::<_, String>(0)));
        let rows = node
            .query(
                "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE gid LIKE 'shardcast:%' \
                 AND database = current_database() AND prepared < now() - make_interval(secs => $1)",
                &[&min_age.as_secs_f64()],
            )
            .await
            .map_err(|e| e.to_string())?;
        for r in rows {
            let gid: String = r.get(0);
            // Claim undecided gids for abort; a decision already there wins.
            catalog
                .execute(
                    "INSERT INTO shardcast.decisions (gid, commit) VALUES ($1, false) ON CONFLICT (gid) DO NOTHING",
                    &[&gid],
                )
                .await
                .map_err(|e| e.to_string())?;
            let commit: bool = catalog
                .query_one(
                    "SELECT commit FROM shardcast.decisions WHERE gid = $1",
                    &[&gid],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            let sql = if commit {
                format!("COMMIT PREPARED '{gid}'")
            } else {
                format!("ROLLBACK PREPARED '{gid}'")
            };
            node.batch_execute(&sql).await.map_err(|e| e.to_string())?;
            info!(gid, node = %pool.target.name, commit, "resolved an in-doubt prepared transaction");
            if commit {
                out.committed += 1;
            } else {
                out.rolled_back += 1;
            }
        }
    }
    // A record whose gid no node holds any more is done with (only when
    // every node was asked, and not while a coordinator may still use it).
    if all_reached {
        let _ = catalog
            .execute(
                "DELETE FROM shardcast.decisions WHERE NOT (gid = ANY($1)) \
                 AND decided_at < now() - make_interval(secs => $2)",
                &[&seen, &min_age.as_secs_f64()],
            )
            .await;
    }
    Ok(out)
}
