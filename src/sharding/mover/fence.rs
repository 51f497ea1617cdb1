//! Fences and change logs go onto the nodes as DDL under a brief table
//! lock (see `triggers` for what they do).

use super::*;

/// Rewrites `node`'s fence for every sharded table from `table`: one
/// round trip, one transaction that first waits out running writes
/// (SHARE ROW EXCLUSIVE), retried if a long transaction holds the lock.
pub(super) async fn rebuild_fence(
    c: &Client,
    name: &str,
    node: NodeId,
    table: &RoutingTable,
    tables: &[Table<'_>],
) -> Result<(), String> {
    let ranges = triggers::fenced_ranges(table, node);
    let sql: Vec<String> = tables
        .iter()
        .map(|t| triggers::fence(t, name, &ranges))
        .collect();
    ddl_briefly(c, tables, &sql.join("\n"))
        .await
        .map_err(|e| format!("node {name}: fence not installed: {e}"))
}

/// Runs `ddl` on the sharded tables in one transaction that first takes
/// SHARE ROW EXCLUSIVE on them (waiting out running writes). Writers queue
/// behind a waiting lock request, so it waits at most 50 ms per attempt;
/// an autovacuum holding the table is cancelled (as PostgreSQL itself does
/// after `deadlock_timeout`) and the attempt repeated, up to 40 times.
pub(super) async fn ddl_briefly(c: &Client, tables: &[Table<'_>], ddl: &str) -> Result<(), String> {
    let names: Vec<&str> = tables.iter().map(|t| t.name()).collect();
    let sql = format!(
        "BEGIN; SET LOCAL lock_timeout = '50ms'; LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE;\n{ddl}\nCOMMIT;",
        names.join(", ")
    );
    let mut last = String::new();
    for attempt in 0..40u64 {
        match c.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                last = e.to_string();
                let _ = c.batch_execute("ROLLBACK").await;
                let _ = c
                    .execute(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
                         WHERE backend_type = 'autovacuum worker' AND datname = current_database()
                           AND query ~* ANY($1)",
                        &[&names],
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(5 * attempt.min(20))).await;
            }
        }
    }
    Err(last)
}

/// As `rebuild_fence`, for a node that already has a fence.
pub(super) async fn rebuild_fence_if_present(
    shared: &Shared,
    node: NodeId,
    table: &RoutingTable,
    tables: &[Table<'_>],
) -> Result<(), String> {
    let c = node_client(shared, node, "fence on").await?;
    let present: bool = c
        .query_one("SELECT to_regproc('shardcast.fence_t0') IS NOT NULL", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if present {
        let name = &shared.pools[node].target.name;
        rebuild_fence(&c, name, node, table, tables).await
    } else {
        Ok(())
    }
}
