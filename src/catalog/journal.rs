//! The migration journal: one row per migration (`shardcast.migrations`,
//! its state and progress) and one line per step (`shardcast.journal`).
//! Every step is written here before it acts, so whichever proxy resumes a
//! migration after a crash knows how far it got.

use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

/// A migration as `GET /api/migrations` shows it (and the CLI reads it:
/// missing fields take defaults, so another version's answer still reads).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Migration {
    pub id: i64,
    pub kind: String,
    pub partition: u32,
    pub source: String,
    pub target: String,
    pub lo: i64,
    pub hi: i64,
    pub state: String,
    pub rows_total: i64,
    pub rows_copied: i64,
    pub bytes_copied: i64,
    /// Bytes per second since the copy started.
    pub rate: f64,
    /// Seconds left at that rate, while copying.
    pub eta_secs: Option<f64>,
    /// How long writes to the partition were held at the cut-over.
    pub pause_ms: Option<f64>,
    pub reason: Option<String>,
    pub owner: Option<String>,
    pub started: String,
    pub finished: Option<String>,
}

impl Migration {
    pub fn finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "aborted")
    }
}

const COLUMNS: &str = "id, kind, partition_id, source, target, lo, hi, state, rows_total, rows_copied,
    bytes_copied,
    coalesce(bytes_copied / nullif(extract(epoch FROM coalesce(finished_at, now()) - copy_started_at), 0), 0)::float8,
    pause_ms, reason, owner, created_at::text, finished_at::text";

fn row(r: &tokio_postgres::Row) -> Migration {
    let rows_total: i64 = r.get(8);
    let rows_copied: i64 = r.get(9);
    let bytes: i64 = r.get(10);
    let rate: f64 = r.get(11);
    let state: String = r.get(7);
    let eta_secs = (state == "copying" && rate > 0.0 && rows_copied > 0).then(|| {
        let bytes_per_row = bytes as f64 / rows_copied as f64;
        (rows_total - rows_copied).max(0) as f64 * bytes_per_row / rate
    });
    Migration {
        id: r.get(0),
        kind: r.get(1),
        partition: r.get::<_, i32>(2) as u32,
        source: r.get(3),
        target: r.get(4),
        lo: r.get(5),
        hi: r.get(6),
        state,
        rows_total,
        rows_copied,
        bytes_copied: bytes,
        rate,
        eta_secs,
        pause_ms: r.get(12),
        reason: r.get(13),
        owner: r.get(14),
        started: r.get(15),
        finished: r.get(16),
    }
}

fn err(what: &str) -> impl Fn(tokio_postgres::Error) -> String + '_ {
    move |e| format!("migration journal ({what}): {e}")
}

/// Records a new migration (state `planned`) and its first journal line.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    c: &impl GenericClient,
    kind: &str,
    partition: u32,
    source: &str,
    target: &str,
    lo: i64,
    hi: i64,
    owner: &str,
) -> Result<i64, String> {
    let id: i64 = c
        .query_one(
            "INSERT INTO shardcast.migrations (kind, partition_id, source, target, lo, hi, owner)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &kind,
                &(partition as i32),
                &source,
                &target,
                &lo,
                &hi,
                &owner,
            ],
        )
        .await
        .map_err(err("create"))?
        .get(0);
    line(
        c,
        id,
        "planned",
        &format!("{kind} partition {partition} from {source} to {target}"),
    )
    .await?;
    Ok(id)
}

/// Enters a state: the row and a journal line, before the step acts.
pub async fn step(
    c: &impl GenericClient,
    id: i64,
    state: &str,
    detail: &str,
) -> Result<(), String> {
    c.execute(
        "UPDATE shardcast.migrations SET state = $2, updated_at = now(),
                copy_started_at = CASE WHEN $2 = 'copying' THEN now() ELSE copy_started_at END
         WHERE id = $1",
        &[&id, &state],
    )
    .await
    .map_err(err("step"))?;
    line(c, id, state, detail).await
}

/// A journal line without a state change.
pub async fn line(c: &impl GenericClient, id: i64, step: &str, detail: &str) -> Result<(), String> {
    c.execute(
        "INSERT INTO shardcast.journal (migration, step, detail) VALUES ($1, $2, $3)",
        &[&id, &step, &detail],
    )
    .await
    .map(|_| ())
    .map_err(err("line"))
}

pub async fn progress(
    c: &impl GenericClient,
    id: i64,
    rows_total: i64,
    rows_copied: i64,
    bytes_copied: i64,
) -> Result<(), String> {
    c.execute(
        "UPDATE shardcast.migrations SET rows_total = $2, rows_copied = $3, bytes_copied = $4, updated_at = now() WHERE id = $1",
        &[&id, &rows_total, &rows_copied, &bytes_copied],
    )
    .await
    .map(|_| ())
    .map_err(err("progress"))
}

pub async fn set_pause(c: &impl GenericClient, id: i64, pause_ms: f64) -> Result<(), String> {
    c.execute(
        "UPDATE shardcast.migrations SET pause_ms = $2 WHERE id = $1",
        &[&id, &pause_ms],
    )
    .await
    .map(|_| ())
    .map_err(err("pause"))
}

/// Ends a migration: `done`, or `aborted` with the reason.
pub async fn finish(
    c: &impl GenericClient,
    id: i64,
    state: &str,
    reason: Option<&str>,
) -> Result<(), String> {
    c.execute(
        "UPDATE shardcast.migrations SET state = $2, reason = $3, finished_at = now(), updated_at = now() WHERE id = $1",
        &[&id, &state, &reason],
    )
    .await
    .map_err(err("finish"))?;
    line(c, id, state, reason.unwrap_or("")).await
}

pub async fn get(c: &impl GenericClient, id: i64) -> Result<Option<Migration>, String> {
    let rows = c
        .query(
            &format!("SELECT {COLUMNS} FROM shardcast.migrations WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(err("get"))?;
    Ok(rows.first().map(row))
}

/// The latest migrations, newest first.
pub async fn list(c: &impl GenericClient, limit: i64) -> Result<Vec<Migration>, String> {
    let rows = c
        .query(
            &format!("SELECT {COLUMNS} FROM shardcast.migrations ORDER BY id DESC LIMIT $1"),
            &[&limit],
        )
        .await
        .map_err(err("list"))?;
    Ok(rows.iter().map(row).collect())
}

/// Migrations not yet done or aborted, oldest first.
pub async fn unfinished(c: &impl GenericClient) -> Result<Vec<Migration>, String> {
    let rows = c
        .query(
            &format!(
                "SELECT {COLUMNS} FROM shardcast.migrations WHERE state NOT IN ('done', 'aborted') ORDER BY id"
            ),
            &[],
        )
        .await
        .map_err(err("unfinished"))?;
    Ok(rows.iter().map(row).collect())
}
