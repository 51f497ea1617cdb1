//! A node that joins after the tables were created (added to `[[nodes]]`,
//! then the proxy restarted) has no sharded tables yet. Before a move
//! copies rows to it, the tables it lacks are created from the source's
//! definitions — `pg_dump --schema-only` of just those tables (columns,
//! keys, indexes such as the hash-expression index, constraints) —
//! so the partition arrives into the same schema it left.

use std::process::Stdio;

use tokio_postgres::Client;

use super::triggers::Table;
use crate::backend::NodeTarget;

/// The sharded tables `target` lacks, created from `source`'s schema;
/// returns their names (empty when nothing was missing).
pub async fn ensure_tables(
    tables: &[Table<'_>],
    source: &NodeTarget,
    target: &Client,
) -> Result<Vec<String>, String> {
    let mut missing = Vec::new();
    for t in tables {
        let present: bool = target
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t.name()])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if !present {
            missing.push(t.name().to_string());
        }
    }
    if missing.is_empty() {
        return Ok(missing);
    }
    let sql = dump(source, &missing).await?;
    target.batch_execute(&sql).await.map_err(|e| {
        format!(
            "creating {} from {}'s schema: {e}",
            missing.join(", "),
            source.name
        )
    })?;
    Ok(missing)
}

/// `pg_dump --schema-only` of `names` on `source`, without psql
/// meta-commands (which a plain connection cannot run).
async fn dump(source: &NodeTarget, names: &[String]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("pg_dump");
    cmd.args(["--schema-only", "--no-owner", "--no-privileges"])
        .args(["-h", &source.host, "-p", &source.port.to_string()])
        .args(["-U", &source.user, "-d", &source.dbname]);
    for n in names {
        cmd.args(["-t", n]);
    }
    if let Some(p) = &source.password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running pg_dump (is the PostgreSQL client installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pg_dump of {} on {}: {}",
            names.join(", "),
            source.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n"))
}
