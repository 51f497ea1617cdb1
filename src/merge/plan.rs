//! From a cross-shard SELECT to a two-step plan: a *partial* query every
//! node runs (filters, grouping and partial aggregates pushed down, so
//! nodes return little), and a *final* query one node runs over the
//! gathered partial rows (a `VALUES` relation) to combine them.
//!
//! Letting PostgreSQL do the final step is what makes the answer exact:
//! numeric sums and averages, comparisons under the database's collation,
//! NULL ordering, `HAVING` and expressions over aggregates all behave as
//! on one database, because one database computes them. What cannot be
//! combined this way is refused with `0A000` and the construct's name —
//! never answered wrongly. Pure: no I/O, unit-tested on SQL text.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Function, GroupByExpr, Ident, LimitClause, ObjectName, OrderByExpr, OrderByKind,
    OrderBySort, Query, Select, SelectItem, SetExpr, Statement, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::aggregate::{expand, Rewriter};
use crate::config::{KeyType, TableConfig};
pub(super) use crate::router::sql::last_part;

/// What the planner knows of the database: the sharded tables and which
/// function names are aggregates (built-in ones plus those the nodes
/// report, so a user-defined aggregate is never mistaken for a scalar).
#[derive(Debug, Clone)]
pub struct Catalog {
    tables: HashMap<String, (String, KeyType)>,
    aggregates: HashSet<String>,
}

/// Aggregates PostgreSQL 15 ships; the nodes' own list is added at startup.
const BUILTIN_AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "string_agg",
    "array_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "xmlagg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "range_agg",
    "range_intersect_agg",
    "any_value",
];

impl Catalog {
    pub fn new(tables: &[TableConfig]) -> Self {
        Self {
            tables: tables
                .iter()
                .map(|t| {
                    (
                        t.name.to_ascii_lowercase(),
                        (t.shard_key.to_ascii_lowercase(), t.key_type),
                    )
                })
                .collect(),
            aggregates: BUILTIN_AGGREGATES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Adds aggregate names found on a node (`pg_proc.prokind = 'a'`).
    pub fn add_aggregates(&mut self, names: impl IntoIterator<Item = String>) {
        self.aggregates
            .extend(names.into_iter().map(|n| n.to_ascii_lowercase()));
    }

    pub(super) fn sharded(&self, name: &ObjectName) -> Option<&(String, KeyType)> {
        self.tables.get(&last_part(name)?)
    }

    pub(super) fn is_aggregate(&self, f: &Function) -> bool {
        last_part(&f.name).is_some_and(|n| self.aggregates.contains(&n))
    }
}

/// How a read that runs on every node is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fanout {
    /// Row-wise: each node's rows are part of the answer; concatenate.
    Concat,
    /// Needs combining: see [`Plan`].
    Merge(Plan),
    /// A sub-select that needs combining, under an outer query.
    Nested(Box<Nested>),
}

/// A statement that cannot be answered exactly across shards; becomes
/// `0A000` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

pub(super) fn refuse<T>(msg: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(msg.into()))
}

/// A piece of the final query's text; some are known only once the
/// partial rows arrived (their types, how many columns `*` gave).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// The SQL type name of partial column `n` (0-based).
    TypeOf(usize),
    /// The gathered rows, as a relation `_sc(c1, …, cn)`.
    Values,
    /// `_sc.c1, …, _sc.ck`: the client's columns of a row-wise query.
    ClientColumns,
    /// Hidden partial column `j` (0-based) of a row-wise query (`_sc.c<k+j+1>`).
    Hidden(usize),
    /// The client-visible name of output column `i`, quoted.
    OutputName(usize),
    /// `avg` from a partial sum `s` and count `c`, typed as PostgreSQL's avg.
    Avg {
        sum: usize,
        count: usize,
    },
    /// In a nested plan's outer query: the sub-select's merged rows.
    Inner,
}

/// A query whose FROM holds a sub-select that needs merging (it
/// aggregates, sorts or limits a sharded table): the sub-select is merged
/// first, then the outer query runs on one node over its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nested {
    pub inner: Plan,
    pub inner_sql: String,
    /// The outer query with [`Piece::Inner`] where the sub-select was.
    pub outer: Vec<Piece>,
    /// The sub-select's alias and column aliases (if any).
    pub alias: String,
    pub columns: Vec<String>,
}

/// The two steps of a merged read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Runs on every node; its rows are gathered in text format.
    pub partial: String,
    /// Columns the partial query appends after the client's (sort keys).
    pub hidden: usize,
    /// Runs on one node over the gathered rows (see [`Piece`]).
    pub final_query: Vec<Piece>,
}

/// Plans one statement that the router sends to every node. Statements
/// other than SELECT (DDL, EXPLAIN, …) are left to concatenation.
pub fn plan(sql: &str, catalog: &Catalog) -> Result<Fanout, Refusal> {
    let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        // The router could not read it either and routed it by keyword; a
        // SELECT we cannot read might aggregate, so it is refused.
        let first = sql.split_whitespace().next().unwrap_or("");
        if ["select", "with", "table", "values"].contains(&first.to_ascii_lowercase().as_str()) {
            return refuse("this query on a sharded table without its shard key could not be analysed, so its rows cannot be merged exactly");
        }
        return Ok(Fanout::Concat);
    };
    let [Statement::Query(q)] = stmts.as_slice() else {
        return Ok(Fanout::Concat);
    };
    Planner { catalog }.query(q)
}

/// A query every node answers row-wise (a `Concat` read), run through the
/// engine instead: the partial query is the statement itself and the final
/// one returns the gathered rows as they are. Used while a partition
/// moves, so that each node's share can be filtered (`hide`). None for
/// anything but one query.
pub fn row_wise(sql: &str) -> Option<Plan> {
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Query(_)] = stmts.as_slice() else {
        return None;
    };
    Some(Plan {
        partial: sql.to_string(),
        hidden: 0,
        final_query: vec![
            Piece::Text("SELECT ".into()),
            Piece::ClientColumns,
            Piece::Text(" FROM ".into()),
            Piece::Values,
        ],
    })
}

pub(super) struct Planner<'a> {
    pub(super) catalog: &'a Catalog,
}

impl Planner<'_> {
    pub(super) fn query(&self, q: &Query) -> Result<Fanout, Refusal> {
        if q.with.is_some() {
            return refuse(
                "WITH (a common table expression) over a sharded table without its shard key",
            );
        }
        if q.fetch.is_some() {
            return refuse("FETCH FIRST over a sharded table without its shard key (use LIMIT)");
        }
        if !q.locks.is_empty() {
            return refuse("FOR UPDATE/SHARE over a sharded table without its shard key");
        }
        let sel = match q.body.as_ref() {
            SetExpr::Select(s) => s,
            SetExpr::Query(inner) if q.order_by.is_none() && q.limit_clause.is_none() => {
                return self.query(inner)
            }
            SetExpr::SetOperation { op, .. } => {
                return refuse(format!("{op} over a sharded table without its shard key"))
            }
            _ => return Ok(Fanout::Concat),
        };
        if sel.into.is_some() {
            return refuse("SELECT INTO from a sharded table without its shard key");
        }
        if let Some(n) = self.nested(q, sel)? {
            return Ok(Fanout::Nested(Box::new(n)));
        }
        self.check_from(&sel.from, sel.selection.as_ref())?;
        if let Some(w) = &sel.selection {
            self.check_where(w)?;
        }
        let order: Vec<OrderByExpr> = match &q.order_by {
            None => Vec::new(),
            Some(o) => match &o.kind {
                OrderByKind::Expressions(e) => e.clone(),
                OrderByKind::All(_) => return refuse("ORDER BY ALL across shards"),
            },
        };
        let (limit, offset) = match &q.limit_clause {
            None => (None, None),
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) if limit_by.is_empty() => (limit.clone(), offset.as_ref().map(|o| o.value.clone())),
            Some(_) => return refuse("this LIMIT form across shards"),
        };
        let grouped = !matches!(&sel.group_by, GroupByExpr::Expressions(g, _) if g.is_empty())
            || sel.having.is_some()
            || self.has_aggregate(sel, &order)?;
        if matches!(sel.distinct, Some(sqlparser::ast::Distinct::On(_))) {
            return refuse("DISTINCT ON over a sharded table without its shard key");
        }
        let distinct = sel.distinct.is_some();
        if !grouped && !distinct && order.is_empty() && limit.is_none() && offset.is_none() {
            return Ok(Fanout::Concat);
        }
        let tail = Tail {
            order,
            limit,
            offset,
            distinct,
        };
        if grouped {
            self.grouped(sel, tail)
        } else {
            self.rows(sel, tail)
        }
    }

    fn has_aggregate(&self, sel: &Select, order: &[OrderByExpr]) -> Result<bool, Refusal> {
        let mut agg = false;
        let mut window = false;
        let mut check = |e: &Expr| {
            let _ = sqlparser::ast::visit_expressions(e, |e| {
                if let Expr::Function(f) = e {
                    if f.over.is_some() {
                        window = true;
                    } else if self.catalog.is_aggregate(f) {
                        agg = true;
                    }
                }
                ControlFlow::<()>::Continue(())
            });
        };
        for item in &sel.projection {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                check(e);
            }
        }
        for o in order {
            check(&o.expr);
        }
        if window {
            return refuse("window function over a sharded table without its shard key");
        }
        Ok(agg)
    }

    /// A row-wise query that needs sorting, limiting or de-duplication:
    /// nodes return their rows (the top LIMIT+OFFSET when limited, sort
    /// keys appended), the final step sorts, de-duplicates and limits.
    fn rows(&self, sel: &Select, tail: Tail) -> Result<Fanout, Refusal> {
        let mut projection = Vec::new();
        let mut wildcard = false;
        for item in &sel.projection {
            match item {
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => wildcard = true,
                _ => {}
            }
            projection.push(item.to_string());
        }
        let mut hidden: Vec<String> = Vec::new();
        let mut keys: Vec<Vec<Piece>> = Vec::new();
        for o in &tail.order {
            let opts = order_options(o)?;
            let (expr, collate) = match &o.expr {
                Expr::Collate { expr, collation } => (expr.as_ref(), Some(collation.to_string())),
                e => (e, None),
            };
            let mut key = match position(expr) {
                // Hidden columns come after the client's, so a position
                // names the same column in the partial rows (also after *).
                Some(p) if p >= 1 && (wildcard || (p as usize) <= sel.projection.len()) => {
                    vec![Piece::Text(format!("_sc.c{p}"))]
                }
                Some(p) => return refuse(format!("ORDER BY position {p} is not in select list")),
                None if tail.distinct => {
                    // DISTINCT keys must be output columns (PostgreSQL's rule too).
                    match output_index(expr, &sel.projection) {
                        Some(i) if !wildcard => vec![Piece::Text(format!("_sc.c{}", i + 1))],
                        _ => return refuse("ORDER BY an expression that is not a column of SELECT DISTINCT, across shards"),
                    }
                }
                None => {
                    let pushed = aliased(expr, &sel.projection).unwrap_or(expr);
                    hidden.push(pushed.to_string());
                    vec![Piece::Hidden(hidden.len() - 1)]
                }
            };
            if let Some(c) = collate {
                key.push(Piece::Text(format!(" COLLATE {c}")));
            }
            key.push(Piece::Text(opts));
            keys.push(key);
        }
        let mut partial = String::from("SELECT ");
        if tail.distinct {
            partial.push_str("DISTINCT ");
        }
        partial.push_str(&projection.join(", "));
        for (j, h) in hidden.iter().enumerate() {
            partial.push_str(&format!(", {h} AS _sc_o{j}"));
        }
        push_from_where(&mut partial, sel);
        if let Some(l) = &tail.limit {
            // Each node's first LIMIT+OFFSET rows hold the answer's rows.
            if let Some(o) = &q_order_text(&tail.order) {
                partial.push_str(&format!(" ORDER BY {o}"));
            }
            match &tail.offset {
                Some(off) => partial.push_str(&format!(" LIMIT ({l}) + ({off})")),
                None => partial.push_str(&format!(" LIMIT {l}")),
            }
        }
        let mut f = vec![Piece::Text(format!(
            "SELECT {}",
            if tail.distinct { "DISTINCT " } else { "" }
        ))];
        f.push(Piece::ClientColumns);
        f.push(Piece::Text(" FROM ".into()));
        f.push(Piece::Values);
        push_final_tail(&mut f, keys, &tail);
        Ok(Fanout::Merge(Plan {
            partial,
            hidden: hidden.len(),
            final_query: f,
        }))
    }

    /// An aggregating query: nodes group and aggregate partially; the final
    /// step groups again, combines the partial aggregates, applies HAVING,
    /// ORDER BY and LIMIT.
    fn grouped(&self, sel: &Select, tail: Tail) -> Result<Fanout, Refusal> {
        let GroupByExpr::Expressions(group_exprs, modifiers) = &sel.group_by else {
            return refuse("GROUP BY ALL across shards");
        };
        if !modifiers.is_empty() {
            return refuse("GROUP BY ROLLUP/CUBE/GROUPING SETS across shards");
        }
        let mut items: Vec<(Expr, Option<Ident>)> = Vec::new();
        for item in &sel.projection {
            match item {
                SelectItem::UnnamedExpr(e) => items.push((e.clone(), None)),
                SelectItem::ExprWithAlias { expr, alias } => {
                    items.push((expr.clone(), Some(alias.clone())))
                }
                _ => return refuse("* together with aggregates or GROUP BY across shards"),
            }
        }
        let mut groups: Vec<Expr> = Vec::new();
        for g in group_exprs {
            let e = match position(g) {
                Some(p) if p >= 1 && (p as usize) <= items.len() => items[p as usize - 1].0.clone(),
                Some(p) => return refuse(format!("GROUP BY position {p} is not in select list")),
                None => g.clone(),
            };
            if matches!(e, Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_)) {
                return refuse("GROUP BY ROLLUP/CUBE/GROUPING SETS across shards");
            }
            groups.push(e);
        }
        let mut r = Rewriter {
            catalog: self.catalog,
            groups: &groups,
            partials: Vec::new(),
            distinct_args: Vec::new(),
            subs: Vec::new(),
            refusal: None,
        };
        // DISTINCT aggregates' arguments are partial grouping columns, so
        // they are numbered before the partial aggregates: collect them first.
        for e in items
            .iter()
            .map(|(e, _)| e)
            .chain(sel.having.iter())
            .chain(tail.order.iter().map(|o| &o.expr))
        {
            r.collect_distinct(e);
        }
        let mut final_items = Vec::new();
        for (i, (e, _)) in items.iter().enumerate() {
            let mut p = r.rewrite(e)?;
            p.push(Piece::Text(" AS ".into()));
            p.push(Piece::OutputName(i));
            final_items.push(p);
        }
        let having = match &sel.having {
            Some(h) => Some(r.rewrite(h)?),
            None => None,
        };
        let mut keys = Vec::new();
        for o in &tail.order {
            let opts = order_options(o)?;
            let mut key = match (&o.expr, position(&o.expr)) {
                (_, Some(p)) if p >= 1 && (p as usize) <= items.len() => {
                    vec![Piece::Text(p.to_string())]
                }
                (_, Some(p)) => {
                    return refuse(format!("ORDER BY position {p} is not in select list"))
                }
                (Expr::Identifier(id), None)
                    if items
                        .iter()
                        .any(|(_, a)| a.as_ref().is_some_and(|a| same_ident(a, id))) =>
                {
                    // An output alias: the final query carries the same names.
                    vec![Piece::Text(id.to_string())]
                }
                (e, None) => r.rewrite(e)?,
            };
            key.push(Piece::Text(opts));
            keys.push(key);
        }
        // The partial query: grouping columns, then partial aggregates.
        let ng = groups.len();
        let mut cols: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        cols.extend(r.distinct_args.iter().map(|d| d.to_string()));
        cols.extend(r.partials.iter().cloned());
        if cols.is_empty() {
            // e.g. `SELECT 1 FROM t HAVING true`: still one partial column.
            cols.push("count(*)".into());
        }
        let mut partial = format!("SELECT {}", cols.join(", "));
        push_from_where(&mut partial, sel);
        let partial_groups: Vec<String> = (1..=ng + r.distinct_args.len())
            .map(|i| i.to_string())
            .collect();
        if !partial_groups.is_empty() {
            partial.push_str(&format!(" GROUP BY {}", partial_groups.join(", ")));
        }
        let subs = std::mem::take(&mut r.subs);
        let mut f = vec![Piece::Text(format!(
            "SELECT {}",
            if tail.distinct { "DISTINCT " } else { "" }
        ))];
        for (i, item) in final_items.into_iter().enumerate() {
            if i > 0 {
                f.push(Piece::Text(", ".into()));
            }
            f.extend(expand(item, &subs));
        }
        f.push(Piece::Text(" FROM ".into()));
        f.push(Piece::Values);
        if ng > 0 {
            let g: Vec<String> = (1..=ng).map(|i| format!("_sc.c{i}")).collect();
            f.push(Piece::Text(format!(" GROUP BY {}", g.join(", "))));
        }
        if let Some(h) = having {
            f.push(Piece::Text(" HAVING ".into()));
            f.extend(expand(h, &subs));
        }
        let keys = keys.into_iter().map(|k| expand(k, &subs)).collect();
        push_final_tail(&mut f, keys, &tail);
        Ok(Fanout::Merge(Plan {
            partial,
            hidden: 0,
            final_query: f,
        }))
    }
}

/// ORDER BY / LIMIT / OFFSET of a query, as the planner carries them.
struct Tail {
    order: Vec<OrderByExpr>,
    limit: Option<Expr>,
    offset: Option<Expr>,
    distinct: bool,
}

fn push_from_where(sql: &mut String, sel: &Select) {
    let from: Vec<String> = sel.from.iter().map(|t| t.to_string()).collect();
    sql.push_str(" FROM ");
    sql.push_str(&from.join(", "));
    if let Some(w) = &sel.selection {
        sql.push_str(&format!(" WHERE {w}"));
    }
}

fn q_order_text(order: &[OrderByExpr]) -> Option<String> {
    if order.is_empty() {
        return None;
    }
    Some(
        order
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn push_final_tail(f: &mut Vec<Piece>, keys: Vec<Vec<Piece>>, tail: &Tail) {
    for (i, k) in keys.into_iter().enumerate() {
        f.push(Piece::Text(if i == 0 { " ORDER BY " } else { ", " }.into()));
        f.extend(k);
    }
    if let Some(l) = &tail.limit {
        f.push(Piece::Text(format!(" LIMIT {l}")));
    }
    if let Some(o) = &tail.offset {
        f.push(Piece::Text(format!(" OFFSET {o}")));
    }
}

fn order_options(o: &OrderByExpr) -> Result<String, Refusal> {
    if o.with_fill.is_some() {
        return refuse("ORDER BY … WITH FILL across shards");
    }
    let mut s = String::new();
    match &o.options.sort {
        None => {}
        Some(OrderBySort::Asc) => s.push_str(" ASC"),
        Some(OrderBySort::Desc) => s.push_str(" DESC"),
        Some(OrderBySort::Using(_)) => return refuse("ORDER BY … USING across shards"),
    }
    match o.options.nulls_first {
        Some(true) => s.push_str(" NULLS FIRST"),
        Some(false) => s.push_str(" NULLS LAST"),
        None => {}
    }
    Ok(s)
}

/// `ORDER BY 2` / `GROUP BY 1`: an integer literal is a column position.
fn position(e: &Expr) -> Option<i64> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

fn same_ident(a: &Ident, b: &Ident) -> bool {
    match (a.quote_style, b.quote_style) {
        (None, None) => a.value.eq_ignore_ascii_case(&b.value),
        _ => a.value == b.value,
    }
}

/// The select item an ORDER BY expression names: by alias, or the same expression.
fn output_index(e: &Expr, projection: &[SelectItem]) -> Option<usize> {
    projection.iter().position(|item| match (item, e) {
        (SelectItem::ExprWithAlias { alias, .. }, Expr::Identifier(id)) => same_ident(alias, id),
        (SelectItem::ExprWithAlias { expr, .. }, e) | (SelectItem::UnnamedExpr(expr), e) => {
            expr == e
        }
        _ => false,
    })
}

/// The expression behind an output alias used in ORDER BY.
fn aliased<'a>(e: &Expr, projection: &'a [SelectItem]) -> Option<&'a Expr> {
    let Expr::Identifier(id) = e else { return None };
    projection.iter().find_map(|item| match item {
        SelectItem::ExprWithAlias { expr, alias } if same_ident(alias, id) => Some(expr),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::new(&[
            TableConfig {
                name: "items".into(),
                shard_key: "id".into(),
                key_type: KeyType::Bigint,
            },
            TableConfig {
                name: "orders".into(),
                shard_key: "item_id".into(),
                key_type: KeyType::Bigint,
            },
        ])
    }

    fn merge(sql: &str) -> Plan {
        match plan(sql, &catalog()) {
            Ok(Fanout::Merge(p)) => p,
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn refused(sql: &str) -> String {
        match plan(sql, &catalog()) {
            Err(r) => r.0,
            other => panic!("{sql} should be refused: {other:?}"),
        }
    }

    #[test]
    fn row_wise_reads_are_concatenated() {
        for sql in [
            "SELECT * FROM items WHERE qty > 3",
            "SELECT i.id, c.label FROM items i JOIN cats c ON c.grp = i.grp",
            "SELECT * FROM (SELECT id, qty FROM items WHERE qty > 1) s WHERE s.qty < 9",
            "SELECT i.id FROM items i JOIN orders o ON o.item_id = i.id",
            "CREATE INDEX ON items (qty)",
        ] {
            assert_eq!(plan(sql, &catalog()), Ok(Fanout::Concat), "{sql}");
        }
    }

    #[test]
    fn aggregates_push_partials_down() {
        let p = merge("SELECT grp, count(*), avg(qty) FROM items WHERE qty > 0 GROUP BY grp HAVING count(*) > 2 ORDER BY 2 DESC LIMIT 3");
        assert_eq!(
            p.partial,
            "SELECT grp, count(*), sum(qty), count(qty) FROM items WHERE qty > 0 GROUP BY 1"
        );
        assert!(p.final_query.contains(&Piece::Avg { sum: 2, count: 3 }));
        // count(*) in HAVING reuses the select list's partial column.
        let text: String = p
            .final_query
            .iter()
            .filter_map(|x| match x {
                Piece::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            text.contains("HAVING CAST(coalesce(sum(_sc.c2), 0) AS int8) > 2"),
            "{text}"
        );
        assert!(text.ends_with("ORDER BY 2 DESC LIMIT 3"), "{text}");
    }

    #[test]
    fn distinct_aggregates_group_by_their_argument() {
        let p = merge("SELECT count(*), count(DISTINCT grp) FROM items");
        assert_eq!(p.partial, "SELECT grp, count(*) FROM items GROUP BY 1");
    }

    #[test]
    fn limits_push_down_as_limit_plus_offset_with_sort_keys() {
        let p = merge("SELECT id, name FROM items ORDER BY qty DESC, id LIMIT 5 OFFSET 10");
        assert_eq!(
            p.partial,
            "SELECT id, name, qty AS _sc_o0, id AS _sc_o1 FROM items ORDER BY qty DESC, id LIMIT (5) + (10)"
        );
        assert_eq!(p.hidden, 2);
    }

    #[test]
    fn what_cannot_be_merged_exactly_is_refused_by_name() {
        assert!(
            refused("SELECT id, rank() OVER (ORDER BY qty) FROM items").contains("window function")
        );
        assert!(refused("SELECT string_agg(name, ',') FROM items").contains("string_agg"));
        assert!(
            refused("SELECT * FROM items WHERE qty > (SELECT avg(qty) FROM items)")
                .contains("sub-query")
        );
        assert!(
            refused("SELECT a.id FROM items a JOIN items b ON a.grp = b.grp")
                .contains("shard keys")
        );
        assert!(
            refused("SELECT c.label FROM cats c LEFT JOIN items i ON i.grp = c.grp")
                .contains("outer join")
        );
        assert!(refused("SELECT grp FROM items UNION SELECT grp FROM items").contains("UNION"));
        assert!(refused(
            "SELECT * FROM (SELECT DISTINCT grp FROM items) d JOIN orders o ON o.grp = d.grp"
        )
        .contains("another sharded table"));
        assert!(refused("SELECT qty, count(*) FROM items GROUP BY grp").contains("qty"));
    }

    #[test]
    fn a_sub_select_that_needs_merging_is_merged_first() {
        let Ok(Fanout::Nested(n)) = plan(
            "SELECT avg(c) FROM (SELECT grp, count(*) AS c FROM items GROUP BY grp) AS s (g, c) WHERE c > 1",
            &catalog(),
        ) else {
            panic!("not nested")
        };
        assert_eq!(
            n.inner.partial,
            "SELECT grp, count(*) FROM items GROUP BY 1"
        );
        assert_eq!(n.alias, "s");
        assert_eq!(n.columns, vec!["g".to_string(), "c".to_string()]);
        assert_eq!(
            n.outer,
            vec![
                Piece::Text("SELECT avg(c) FROM ".into()),
                Piece::Inner,
                Piece::Text(" WHERE c > 1".into())
            ]
        );
    }

    #[test]
    fn user_defined_aggregates_are_known_as_aggregates() {
        let mut c = catalog();
        assert_eq!(
            plan("SELECT my_agg(qty) FROM items", &c),
            Ok(Fanout::Concat)
        );
        c.add_aggregates(["my_agg".to_string()]);
        assert!(plan("SELECT my_agg(qty) FROM items", &c).is_err());
    }
}
