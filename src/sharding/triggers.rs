//! The SQL a migration installs on the nodes. Two kinds of row trigger,
//! generated per sharded table with the key column and hash function
//! inlined (no dynamic SQL per row):
//!
//! - the **change log** (`shardcast_log_m<id>`, AFTER, on the source while
//!   a partition moves): the key of every row of the partition written,
//!   whoever wrote it, goes to `shardcast.changes`; the catch-up re-copies
//!   those keys from the source's current rows (pg_repack's way).
//! - the **fence** (`shardcast_fence`, BEFORE, one per table and node):
//!   refuses, with SQLSTATE `SC001`, a write to any row whose hash the node
//!   does not serve — so a stale proxy or a direct client can never write
//!   to an old home. It is rebuilt from the routing table whenever the
//!   node's share changes, in a transaction that also takes `SHARE` lock on
//!   the table: that waits for writes already running, so once it commits
//!   no write can slip past the new fence. Sessions with
//!   `shardcast.migrator = on` (the migrator's own) pass through.

use crate::config::TableConfig;
use crate::ring::{NodeId, PartitionState, RoutingTable};

/// The node-local objects every migration uses.
pub const NODE_SCHEMA: &str = "
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS shardcast;
CREATE TABLE IF NOT EXISTS shardcast.changes (
    seq       bigserial PRIMARY KEY,
    migration bigint NOT NULL,
    tbl       integer NOT NULL,
    key       text NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_migration ON shardcast.changes (migration, seq);";

/// A sharded table as the triggers see it.
pub struct Table<'a> {
    /// Position in `[[tables]]`: names the generated functions.
    pub index: usize,
    pub config: &'a TableConfig,
}

impl Table<'_> {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn key(&self) -> &str {
        &self.config.shard_key
    }

    pub fn key_type(&self) -> &'static str {
        self.config.key_type.sql().0
    }

    /// The ring hash of `row.key` as SQL.
    pub fn hash_of(&self, row: &str) -> String {
        format!(
            "{}({row}.{}, 0)",
            self.config.key_type.sql().1,
            self.config.shard_key
        )
    }

    /// `WHERE`-clause over the table's own rows: hash in `lo..=hi`.
    pub fn in_range(&self, lo: i64, hi: i64) -> String {
        format!(
            "{}({}, 0) BETWEEN {lo} AND {hi}",
            self.config.key_type.sql().1,
            self.config.shard_key
        )
    }
}

/// The change-log trigger of migration `id` for rows hashing into `lo..=hi`.
pub fn change_log(t: &Table<'_>, id: i64, lo: i64, hi: i64) -> String {
    let (i, key) = (t.index, t.key());
    let new_h = t.hash_of("NEW");
    let old_h = t.hash_of("OLD");
    format!(
        "CREATE OR REPLACE FUNCTION shardcast.log_m{id}_t{i}() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF TG_OP <> 'DELETE' AND {new_h} BETWEEN {lo} AND {hi} THEN
    INSERT INTO shardcast.changes (migration, tbl, key) VALUES ({id}, {i}, NEW.{key}::text);
  END IF;
  IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND NEW.{key} IS DISTINCT FROM OLD.{key}) THEN
    IF {old_h} BETWEEN {lo} AND {hi} THEN
      INSERT INTO shardcast.changes (migration, tbl, key) VALUES ({id}, {i}, OLD.{key}::text);
    END IF;
  END IF;
  RETURN NULL;
END $f$;
CREATE OR REPLACE TRIGGER shardcast_log_m{id} AFTER INSERT OR UPDATE OR DELETE ON {table}
  FOR EACH ROW EXECUTE FUNCTION shardcast.log_m{id}_t{i}();",
        table = t.name()
    )
}

/// Drops migration `id`'s change-log trigger and function.
pub fn drop_change_log(t: &Table<'_>, id: i64) -> String {
    format!(
        "DROP TRIGGER IF EXISTS shardcast_log_m{id} ON {table};
DROP FUNCTION IF EXISTS shardcast.log_m{id}_t{i}();",
        table = t.name(),
        i = t.index
    )
}

/// The hash ranges `node` must refuse writes to under `table`: those of
/// partitions it does not serve, and those it serves but is cutting over.
pub fn fenced_ranges(table: &RoutingTable, node: NodeId) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for p in table.partitions() {
        if p.node == node && p.state != PartitionState::CuttingOver {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(p.lo) => last.1 = p.hi,
            _ => out.push((p.lo, p.hi)),
        }
    }
    out
}

/// The fence trigger of one table on one node, refusing `ranges`.
pub fn fence(t: &Table<'_>, node_name: &str, ranges: &[(i64, i64)]) -> String {
    let cond = if ranges.is_empty() {
        "false".to_string()
    } else {
        ranges
            .iter()
            .map(|(lo, hi)| format!("h BETWEEN {lo} AND {hi}"))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    let (i, key, table) = (t.index, t.key(), t.name());
    let new_h = t.hash_of("NEW");
    let old_h = t.hash_of("OLD");
    let raise = format!(
        "RAISE EXCEPTION USING ERRCODE = 'SC001',
        MESSAGE = format('the row of {table} with {key} = %s is in a partition that node {node} does not serve (it moved)', k),
        HINT = 'route writes through shardcast, which sends them to the partition''s node';"
    , node = node_name.replace('\'', "''"));
    format!(
        "CREATE OR REPLACE FUNCTION shardcast.fence_t{i}() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE h bigint; k text;
BEGIN
  IF current_setting('shardcast.migrator', true) = 'on' THEN RETURN COALESCE(NEW, OLD); END IF;
  IF TG_OP <> 'DELETE' THEN
    h := {new_h}; k := NEW.{key}::text;
    IF {cond} THEN {raise} END IF;
  END IF;
  IF TG_OP <> 'INSERT' THEN
    h := {old_h}; k := OLD.{key}::text;
    IF {cond} THEN {raise} END IF;
  END IF;
  RETURN COALESCE(NEW, OLD);
END $f$;
CREATE OR REPLACE TRIGGER shardcast_fence BEFORE INSERT OR UPDATE OR DELETE ON {table}
  FOR EACH ROW EXECUTE FUNCTION shardcast.fence_t{i}();"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_fences_what_it_does_not_serve_and_what_it_cuts_over() {
        let nodes = vec!["a".to_string(), "b".to_string()];
        let mut ps = RoutingTable::even(1, 4, nodes.clone())
            .unwrap()
            .partitions()
            .to_vec();
        // 0:a 1:b 2:a 3:b; partition 0 is being cut over from a to b.
        ps[0].state = PartitionState::CuttingOver;
        ps[0].target = Some(1);
        let t = RoutingTable::new(2, ps.clone(), nodes.clone()).unwrap();
        let a = fenced_ranges(&t, 0);
        assert_eq!(a, vec![(ps[0].lo, ps[1].hi), (ps[3].lo, ps[3].hi)]);
        let b = fenced_ranges(&t, 1);
        assert_eq!(b, vec![(ps[0].lo, ps[0].hi), (ps[2].lo, ps[2].hi)]);
    }
}
