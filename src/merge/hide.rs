//! While a partition moves, its rows are on two nodes: the target holds
//! the copy before the cut-over, the old home holds the old rows until the
//! clean-up. A read every node answers must then take each range's rows
//! from its owner only, so on each node every reference to a sharded
//! table becomes a sub-select that leaves out the ranges that node holds
//! but does not serve:
//! `FROM accounts a` → `FROM (SELECT * FROM accounts WHERE NOT (hashint8extended(id, 0) BETWEEN lo AND hi)) AS a`.

use std::ops::ControlFlow;

use sqlparser::ast::{SetExpr, Statement, TableFactor, VisitMut, VisitorMut};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::plan::{Catalog, Refusal};
use crate::ring::{NodeId, PartitionState, RoutingTable};

/// Per node (by index), the ranges it must leave out, and the tables they
/// apply to; None while nothing moves.
pub type Hidden<'a> = Option<(&'a Catalog, &'a [Vec<(i64, i64)>])>;

/// The ranges `node` holds rows for but must not answer for: partitions
/// moving to it (not yet cut over) and partitions that left it (not yet
/// cleaned up).
pub fn hidden_ranges(table: &RoutingTable, node: NodeId) -> Vec<(i64, i64)> {
    table
        .partitions()
        .iter()
        .filter(|p| p.state != PartitionState::Serving && p.target == Some(node) && p.node != node)
        .map(|p| (p.lo, p.hi))
        .collect()
}

/// `sql` with every sharded table reference filtered to leave out
/// `ranges` (unchanged when `ranges` is empty).
pub fn hide(sql: &str, catalog: &Catalog, ranges: &[(i64, i64)]) -> Result<String, Refusal> {
    if ranges.is_empty() {
        return Ok(sql.to_string());
    }
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| {
        Refusal(format!(
            "this query could not be read to leave out a moving partition's second copy: {e}"
        ))
    })?;
    let mut v = Hider {
        catalog,
        ranges,
        error: None,
    };
    let _ = stmts.visit(&mut v);
    if let Some(e) = v.error {
        return Err(Refusal(e));
    }
    Ok(stmts
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("; "))
}

struct Hider<'a> {
    catalog: &'a Catalog,
    ranges: &'a [(i64, i64)],
    error: Option<String>,
}

impl VisitorMut for Hider<'_> {
    type Break = ();

    // After the children: the sub-select put in place is not visited again.
    fn post_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table { name, alias, .. } = tf else {
            return ControlFlow::Continue(());
        };
        let Some((key, key_type)) = self.catalog.sharded(name) else {
            return ControlFlow::Continue(());
        };
        let hash = key_type.sql().1;
        let cond = self
            .ranges
            .iter()
            .map(|(lo, hi)| format!("{hash}({key}, 0) BETWEEN {lo} AND {hi}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let alias = match alias {
            Some(a) => a.to_string(),
            None => name.0.last().map(|p| p.to_string()).unwrap_or_default(),
        };
        let sql = format!("SELECT 1 FROM (SELECT * FROM {name} WHERE NOT ({cond})) AS {alias}");
        match derived(&sql) {
            Some(d) => *tf = d,
            None => self.error = Some(format!("could not filter {name} for a moving partition")),
        }
        ControlFlow::Continue(())
    }
}

/// The FROM item of `SELECT 1 FROM <item>`.
fn derived(sql: &str) -> Option<TableFactor> {
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let Statement::Query(q) = stmts.pop()? else {
        return None;
    };
    let SetExpr::Select(s) = *q.body else {
        return None;
    };
    s.from.into_iter().next().map(|t| t.relation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyType, TableConfig};

    fn catalog() -> Catalog {
        Catalog::new(&[TableConfig {
            name: "accounts".into(),
            shard_key: "id".into(),
            key_type: KeyType::Bigint,
        }])
    }

    #[test]
    fn sharded_tables_lose_the_hidden_ranges_and_keep_their_names() {
        let sql = "SELECT a.owner, count(*) FROM accounts a JOIN branches b ON b.id = a.branch WHERE a.balance > 0 GROUP BY 1";
        let out = hide(sql, &catalog(), &[(1, 9), (20, 30)]).unwrap();
        assert!(
            out.contains("FROM (SELECT * FROM accounts WHERE NOT (hashint8extended(id, 0) BETWEEN 1 AND 9 OR hashint8extended(id, 0) BETWEEN 20 AND 30)) AS a"),
            "{out}"
        );
        assert!(
            out.contains("JOIN branches AS b") || out.contains("JOIN branches b"),
            "{out}"
        );
        let bare = hide("SELECT count(*) FROM accounts", &catalog(), &[(1, 9)]).unwrap();
        assert!(bare.contains(") AS accounts"), "{bare}");
        assert_eq!(hide("SELECT 1", &catalog(), &[]).unwrap(), "SELECT 1");
    }
}
