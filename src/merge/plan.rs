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
    DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, JoinConstraint, JoinOperator, LimitClause, ObjectName, ObjectNamePart,
    OrderByExpr, OrderByKind, OrderBySort, Query, Select, SelectItem, SetExpr, Statement,
    TableFactor, TableWithJoins, Value, VisitMut, VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::config::{KeyType, TableConfig};

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

    fn sharded(&self, name: &ObjectName) -> Option<&(String, KeyType)> {
        self.tables.get(&last_part(name)?)
    }

    fn is_aggregate(&self, f: &Function) -> bool {
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

fn refuse<T>(msg: impl Into<String>) -> Result<T, Refusal> {
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

struct Planner<'a> {
    catalog: &'a Catalog,
}

impl Planner<'_> {
    fn query(&self, q: &Query) -> Result<Fanout, Refusal> {
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

    /// FROM: one sharded table (possibly inside plain sub-selects), joined
    /// only with tables every node holds, or sharded tables joined on
    /// their shard keys (co-located: the same key lives on one node).
    fn check_from(&self, from: &[TableWithJoins], selection: Option<&Expr>) -> Result<(), Refusal> {
        let mut occ: Vec<Occurrence> = Vec::new();
        let mut eqs: Vec<(Expr, Expr)> = Vec::new();
        if let Some(w) = selection {
            equalities(w, &mut eqs);
        }
        for twj in from {
            let mut left_sharded = self.factor(&twj.relation, &mut occ)?;
            for j in &twj.joins {
                let right_sharded = self.factor(&j.relation, &mut occ)?;
                let (preserves_left, preserves_right, constraint) = match &j.join_operator {
                    JoinOperator::Join(c) | JoinOperator::Inner(c) => (false, false, Some(c)),
                    JoinOperator::CrossJoin(c) => (false, false, Some(c)),
                    JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (true, false, Some(c)),
                    JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (false, true, Some(c)),
                    JoinOperator::FullOuter(c) => (true, true, Some(c)),
                    _ => (true, true, None),
                };
                // An outer join that preserves a side without the sharded
                // table would repeat that side's unmatched rows once per node.
                if (preserves_left && !left_sharded) || (preserves_right && !right_sharded) {
                    return refuse("an outer join that keeps the rows of a table other than the sharded one, across shards");
                }
                match constraint {
                    Some(JoinConstraint::On(e)) => equalities(e, &mut eqs),
                    Some(JoinConstraint::Using(cols)) => {
                        for c in cols {
                            if let Some(n) = last_part(c) {
                                eqs.push((
                                    Expr::Identifier(Ident::new(format!("\u{1}using.{n}"))),
                                    Expr::Identifier(Ident::new(format!("\u{1}using.{n}"))),
                                ));
                            }
                        }
                    }
                    Some(JoinConstraint::None) | None => {}
                    Some(_) => return refuse("NATURAL join across shards"),
                }
                left_sharded |= right_sharded;
            }
        }
        if occ.len() <= 1 {
            return Ok(());
        }
        // Co-location: every sharded occurrence is linked to the others by
        // `a.key = b.key` (or USING (key)).
        let n = occ.len();
        let mut group: Vec<usize> = (0..n).collect();
        fn find(g: &mut [usize], i: usize) -> usize {
            let mut r = i;
            while g[r] != r {
                r = g[r];
            }
            g[i] = r;
            r
        }
        for (a, b) in &eqs {
            let using = |e: &Expr| match e {
                Expr::Identifier(id) => id.value.strip_prefix("\u{1}using.").map(str::to_string),
                _ => None,
            };
            if let (Some(ua), Some(_)) = (using(a), using(b)) {
                // USING (col): links every pair whose key is col.
                let with: Vec<usize> = (0..n).filter(|&i| occ[i].key == ua).collect();
                for w in with.windows(2) {
                    let (x, y) = (find(&mut group, w[0]), find(&mut group, w[1]));
                    group[x] = y;
                }
                continue;
            }
            let (Some(x), Some(y)) = (key_occurrence(a, &occ), key_occurrence(b, &occ)) else {
                continue;
            };
            if occ[x].key_type.hash_compatible(occ[y].key_type) {
                let (x, y) = (find(&mut group, x), find(&mut group, y));
                group[x] = y;
            }
        }
        let root = find(&mut group, 0);
        if (1..n).all(|i| find(&mut group, i) == root) {
            Ok(())
        } else {
            refuse("a join of sharded tables that is not on their shard keys (rows that match may live on different nodes)")
        }
    }

    /// A FROM sub-select over a sharded table that needs merging, with
    /// nothing else in the statement touching a sharded table: planned as
    /// the merged sub-select under an outer query that one node runs.
    fn nested(&self, q: &Query, sel: &Select) -> Result<Option<Nested>, Refusal> {
        const HOLE: &str = "__sc_inner__";
        let mut found = None;
        for (t, twj) in sel.from.iter().enumerate() {
            let factors =
                std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation));
            for (j, f) in factors.enumerate() {
                if let TableFactor::Derived {
                    lateral: false,
                    subquery,
                    alias,
                    ..
                } = f
                {
                    if self.mentions_sharded(subquery.as_ref()) {
                        if found.is_some() {
                            return Ok(None);
                        }
                        found = Some((t, j, subquery.clone(), alias.clone()));
                    }
                }
            }
        }
        let Some((t, j, subquery, alias)) = found else {
            return Ok(None);
        };
        let inner = match self.query(&subquery)? {
            Fanout::Merge(p) => p,
            _ => return Ok(None),
        };
        // The outer query with a placeholder table where the sub-select was.
        let mut outer = q.clone();
        if let SetExpr::Select(s) = outer.body.as_mut() {
            let twj = &mut s.from[t];
            let slot = if j == 0 {
                &mut twj.relation
            } else {
                &mut twj.joins[j - 1].relation
            };
            *slot = TableFactor::Table {
                name: ObjectName::from(vec![Ident::new(HOLE)]),
                alias: None,
                args: None,
                with_hints: Vec::new(),
                version: None,
                with_ordinality: false,
                partitions: Vec::new(),
                json_path: None,
                sample: None,
                index_directives: Vec::new(),
                inheritance: None,
            };
        }
        if self.mentions_sharded(&outer) {
            return refuse("a sub-select that needs merging together with another sharded table in the same query");
        }
        let text = outer.to_string();
        let Some((before, after)) = text.split_once(HOLE) else {
            return Ok(None);
        };
        let (alias, columns) = match &alias {
            Some(a) => (
                a.name.to_string(),
                a.columns.iter().map(|c| c.name.to_string()).collect(),
            ),
            None => ("_sc_inner".to_string(), Vec::new()),
        };
        Ok(Some(Nested {
            inner,
            inner_sql: subquery.to_string(),
            outer: vec![
                Piece::Text(before.into()),
                Piece::Inner,
                Piece::Text(after.into()),
            ],
            alias,
            columns,
        }))
    }

    /// Records the sharded tables of one FROM item; true if it has any.
    fn factor(&self, f: &TableFactor, occ: &mut Vec<Occurrence>) -> Result<bool, Refusal> {
        match f {
            TableFactor::Table { name, alias, .. } => {
                let Some((key, key_type)) = self.catalog.sharded(name) else {
                    return Ok(false);
                };
                occ.push(Occurrence {
                    qualifier: alias
                        .as_ref()
                        .map(|a| a.name.value.to_ascii_lowercase())
                        .or_else(|| last_part(name))
                        .unwrap_or_default(),
                    key: key.clone(),
                    key_type: *key_type,
                });
                Ok(true)
            }
            TableFactor::Derived {
                lateral, subquery, ..
            } => {
                if !self.mentions_sharded(subquery) {
                    return Ok(false);
                }
                if *lateral {
                    return refuse("LATERAL sub-select over a sharded table across shards");
                }
                match self.query(subquery)? {
                    Fanout::Concat => {}
                    Fanout::Merge(_) | Fanout::Nested(_) => {
                        return refuse("a sub-select in FROM that aggregates, sorts, limits or de-duplicates a sharded table, joined with other tables across shards")
                    }
                }
                let SetExpr::Select(inner) = subquery.body.as_ref() else {
                    return refuse("this sub-select in FROM across shards");
                };
                let before = occ.len();
                for twj in &inner.from {
                    self.factor(&twj.relation, occ)?;
                    for j in &twj.joins {
                        self.factor(&j.relation, occ)?;
                    }
                }
                // The sub-select's key keeps its name only when it is passed
                // through unrenamed; a join on it is then co-located.
                Ok(occ.len() > before)
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                let mut any = self.factor(&table_with_joins.relation, occ)?;
                for j in &table_with_joins.joins {
                    any |= self.factor(&j.relation, occ)?;
                }
                Ok(any)
            }
            other => {
                let mut mentions = false;
                let _ = sqlparser::ast::visit_relations(other, |r| {
                    mentions |= self.catalog.sharded(r).is_some();
                    ControlFlow::<()>::Continue(())
                });
                if mentions {
                    refuse("this FROM item over a sharded table across shards")
                } else {
                    Ok(false)
                }
            }
        }
    }

    fn mentions_sharded<V: sqlparser::ast::Visit>(&self, v: &V) -> bool {
        let mut found = false;
        let _ = sqlparser::ast::visit_relations(v, |r| {
            found |= self.catalog.sharded(r).is_some();
            ControlFlow::<()>::Continue(())
        });
        found
    }

    /// WHERE runs on each node: a sub-query there over a sharded table
    /// would see only that node's rows.
    fn check_where(&self, w: &Expr) -> Result<(), Refusal> {
        let mut bad = None;
        let _ = sqlparser::ast::visit_expressions(w, |e| {
            match e {
                Expr::Subquery(q)
                | Expr::Exists { subquery: q, .. }
                | Expr::In {
                    target: sqlparser::ast::InTarget::Subquery(q),
                    ..
                } if self.mentions_sharded(q.as_ref()) => {
                    bad = Some("a sub-query over a sharded table inside WHERE, across shards");
                }
                Expr::Function(f) if f.over.is_some() => bad = Some("a window function"),
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
        match bad {
            Some(b) => refuse(b),
            None => Ok(()),
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

struct Occurrence {
    qualifier: String,
    key: String,
    key_type: KeyType,
}

/// Which sharded occurrence's key an expression names (`q.key`, or a bare
/// `key` when only one occurrence has that key name).
fn key_occurrence(e: &Expr, occ: &[Occurrence]) -> Option<usize> {
    match e {
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let col = parts[parts.len() - 1].value.to_ascii_lowercase();
            let q = parts[parts.len() - 2].value.to_ascii_lowercase();
            occ.iter().position(|o| o.qualifier == q && o.key == col)
        }
        Expr::Nested(inner) => key_occurrence(inner, occ),
        _ => None,
    }
}

/// `a = b` terms of the top-level AND of an expression.
fn equalities(e: &Expr, out: &mut Vec<(Expr, Expr)>) {
    match e {
        Expr::BinaryOp {
            left,
            op: sqlparser::ast::BinaryOperator::And,
            right,
        } => {
            equalities(left, out);
            equalities(right, out);
        }
        Expr::BinaryOp {
            left,
            op: sqlparser::ast::BinaryOperator::Eq,
            right,
        } => out.push((*left.clone(), *right.clone())),
        Expr::Nested(inner) => equalities(inner, out),
        _ => {}
    }
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

fn last_part(name: &ObjectName) -> Option<String> {
    match name.0.last()? {
        ObjectNamePart::Identifier(id) => Some(if id.quote_style.is_some() {
            id.value.clone()
        } else {
            id.value.to_ascii_lowercase()
        }),
        _ => None,
    }
}

/// Rewrites expressions of an aggregating query for the final step:
/// grouping expressions become partial columns, aggregates their
/// combination over partial columns; every replacement is a placeholder
/// identifier (`__sc_N__`) expanded to [`Piece`]s afterwards.
struct Rewriter<'a> {
    catalog: &'a Catalog,
    groups: &'a [Expr],
    /// Partial aggregate expressions (columns after groups and distinct args).
    partials: Vec<String>,
    /// Arguments of DISTINCT aggregates: extra partial grouping columns.
    distinct_args: Vec<Expr>,
    subs: Vec<Vec<Piece>>,
    refusal: Option<Refusal>,
}

const PLACEHOLDER: &str = "__sc_";

impl Rewriter<'_> {
    fn rewrite(&mut self, e: &Expr) -> Result<Vec<Piece>, Refusal> {
        let mut e = e.clone();
        let _ = e.visit(self);
        if let Some(r) = self.refusal.take() {
            return Err(r);
        }
        // Anything still naming a column was neither grouped nor aggregated.
        let mut stray = None;
        let _ = sqlparser::ast::visit_expressions(&e, |x| {
            match x {
                Expr::Identifier(id) if !id.value.starts_with(PLACEHOLDER) => {
                    stray = Some(id.to_string())
                }
                Expr::CompoundIdentifier(p) => {
                    stray = Some(
                        p.iter()
                            .map(|i| i.to_string())
                            .collect::<Vec<_>>()
                            .join("."),
                    )
                }
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
        if let Some(s) = stray {
            return refuse(format!(
                "column {s} must appear in GROUP BY or be used in an aggregate function (across shards)"
            ));
        }
        Ok(vec![Piece::Text(e.to_string())])
    }

    fn sub(&mut self, pieces: Vec<Piece>) -> Expr {
        self.subs.push(pieces);
        Expr::Identifier(Ident::new(format!(
            "{PLACEHOLDER}{}__",
            self.subs.len() - 1
        )))
    }

    fn partial(&mut self, sql: String) -> usize {
        let base = self.groups.len() + self.distinct_args.len();
        if let Some(i) = self.partials.iter().position(|p| *p == sql) {
            return i + base;
        }
        self.partials.push(sql);
        self.partials.len() - 1 + base
    }

    /// The final-step replacement of one aggregate call.
    fn aggregate(&mut self, f: &Function) -> Result<Vec<Piece>, Refusal> {
        let name = last_part(&f.name).unwrap_or_default();
        let unsupported = || {
            Refusal(format!(
                "aggregate {name}() over a sharded table without its shard key (its partial results cannot be combined exactly)"
            ))
        };
        if !f.within_group.is_empty() || f.null_treatment.is_some() {
            return Err(unsupported());
        }
        let FunctionArguments::List(list) = &f.args else {
            return Err(unsupported());
        };
        if !list.clauses.is_empty() {
            return Err(Refusal(format!(
                "{name}() with ORDER BY or other clauses inside, across shards"
            )));
        }
        let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
        let star = matches!(
            list.args.as_slice(),
            [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)]
        );
        let arg = match list.args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => Some(e.clone()),
            _ if star && name == "count" => None,
            _ => return Err(unsupported()),
        };
        if let Some(a) = &arg {
            if self.contains_aggregate(a) {
                return refuse("aggregate function calls cannot be nested");
            }
        }
        let filter = f.filter.as_ref().map(|e| format!(" FILTER (WHERE {e})"));
        if distinct {
            if filter.is_some() {
                return refuse(format!("{name}(DISTINCT …) FILTER (…) across shards"));
            }
            let a = arg.ok_or_else(unsupported)?;
            if !matches!(
                name.as_str(),
                "count"
                    | "sum"
                    | "avg"
                    | "min"
                    | "max"
                    | "bool_and"
                    | "bool_or"
                    | "every"
                    | "bit_and"
                    | "bit_or"
                    | "bit_xor"
            ) {
                return Err(unsupported());
            }
            // Nodes group by the argument; the final step aggregates the
            // distinct values it gathered.
            // Collected before rewriting (see `collect_distinct`).
            let Some(i) = self.distinct_args.iter().position(|d| *d == a) else {
                return Err(unsupported());
            };
            let col = self.groups.len() + i + 1;
            return Ok(vec![Piece::Text(format!("{name}(DISTINCT _sc.c{col})"))]);
        }
        let whole = |f: &Function| f.to_string();
        let pieces = match name.as_str() {
            "count" => {
                let c = self.partial(whole(f)) + 1;
                vec![Piece::Text(format!(
                    "CAST(coalesce(sum(_sc.c{c}), 0) AS int8)"
                ))]
            }
            "sum" => {
                let c = self.partial(whole(f)) + 1;
                vec![
                    Piece::Text(format!("CAST(sum(_sc.c{c}) AS ")),
                    Piece::TypeOf(c - 1),
                    Piece::Text(")".into()),
                ]
            }
            "min" | "max" | "bool_and" | "bool_or" | "bit_and" | "bit_or" | "bit_xor" => {
                let c = self.partial(whole(f)) + 1;
                vec![Piece::Text(format!("{name}(_sc.c{c})"))]
            }
            "every" => {
                let c = self.partial(whole(f)) + 1;
                vec![Piece::Text(format!("bool_and(_sc.c{c})"))]
            }
            "avg" => {
                let a = arg.ok_or_else(unsupported)?;
                let filter = filter.unwrap_or_default();
                let s = self.partial(format!("sum({a}){filter}"));
                let c = self.partial(format!("count({a}){filter}"));
                vec![Piece::Avg { sum: s, count: c }]
            }
            _ => return Err(unsupported()),
        };
        Ok(pieces)
    }

    fn collect_distinct(&mut self, e: &Expr) {
        let mut found = Vec::new();
        let _ = sqlparser::ast::visit_expressions(e, |x| {
            if let Expr::Function(f) = x {
                if let FunctionArguments::List(l) = &f.args {
                    if self.catalog.is_aggregate(f)
                        && matches!(l.duplicate_treatment, Some(DuplicateTreatment::Distinct))
                    {
                        if let [FunctionArg::Unnamed(FunctionArgExpr::Expr(a))] = l.args.as_slice()
                        {
                            found.push(a.clone());
                        }
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
        for a in found {
            if !self.distinct_args.contains(&a) {
                self.distinct_args.push(a);
            }
        }
    }

    fn contains_aggregate(&self, e: &Expr) -> bool {
        let mut found = false;
        let _ = sqlparser::ast::visit_expressions(e, |x| {
            if let Expr::Function(f) = x {
                found |= self.catalog.is_aggregate(f);
            }
            ControlFlow::<()>::Continue(())
        });
        found
    }
}

impl VisitorMut for Rewriter<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if self.refusal.is_some() {
            return ControlFlow::Break(());
        }
        if let Some(i) = self.groups.iter().position(|g| g == e) {
            *e = self.sub(vec![Piece::Text(format!("_sc.c{}", i + 1))]);
            return ControlFlow::Continue(());
        }
        match e {
            Expr::Function(f) if f.over.is_some() => {
                self.refusal = Some(Refusal(
                    "window function over a sharded table without its shard key".into(),
                ));
                ControlFlow::Break(())
            }
            Expr::Function(f) if self.catalog.is_aggregate(f) => match self.aggregate(f) {
                Ok(p) => {
                    *e = self.sub(p);
                    ControlFlow::Continue(())
                }
                Err(r) => {
                    self.refusal = Some(r);
                    ControlFlow::Break(())
                }
            },
            Expr::Subquery(_)
            | Expr::Exists { .. }
            | Expr::In {
                target: sqlparser::ast::InTarget::Subquery(_),
                ..
            } => {
                self.refusal = Some(Refusal(
                    "a sub-query in the select list, HAVING or ORDER BY of a cross-shard aggregate"
                        .into(),
                ));
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Replaces placeholder identifiers in text pieces by their pieces.
fn expand(pieces: Vec<Piece>, subs: &[Vec<Piece>]) -> Vec<Piece> {
    let mut out = Vec::new();
    for p in pieces {
        let Piece::Text(t) = p else {
            out.push(p);
            continue;
        };
        let mut rest = t.as_str();
        while let Some(at) = rest.find(PLACEHOLDER) {
            let after = &rest[at + PLACEHOLDER.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let n: Option<usize> = after[..digits].parse().ok();
            match n.filter(|_| after[digits..].starts_with("__")) {
                Some(n) if n < subs.len() => {
                    out.push(Piece::Text(rest[..at].to_string()));
                    out.extend(expand(subs[n].clone(), subs));
                    rest = &after[digits + 2..];
                }
                _ => {
                    out.push(Piece::Text(rest[..at + PLACEHOLDER.len()].to_string()));
                    rest = after;
                }
            }
        }
        out.push(Piece::Text(rest.to_string()));
    }
    out
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
