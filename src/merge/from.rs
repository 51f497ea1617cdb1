//! The FROM clause of a cross-shard read: which joins are exact across
//! shards (one sharded table joined with tables every node holds, or
//! sharded tables joined on their shard keys — co-located), what a WHERE
//! may contain, and a sub-select that needs merging under an outer query.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Ident, JoinConstraint, JoinOperator, ObjectName, Query, Select, SetExpr, TableFactor,
    TableWithJoins,
};

use super::plan::{last_part, refuse, Fanout, Nested, Piece, Planner, Refusal};
use crate::config::KeyType;

impl Planner<'_> {
    /// FROM: one sharded table (possibly inside plain sub-selects), joined
    /// only with tables every node holds, or sharded tables joined on
    /// their shard keys (co-located: the same key lives on one node).
    pub(super) fn check_from(
        &self,
        from: &[TableWithJoins],
        selection: Option<&Expr>,
    ) -> Result<(), Refusal> {
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
    pub(super) fn nested(&self, q: &Query, sel: &Select) -> Result<Option<Nested>, Refusal> {
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

    pub(super) fn mentions_sharded<V: sqlparser::ast::Visit>(&self, v: &V) -> bool {
        let mut found = false;
        let _ = sqlparser::ast::visit_relations(v, |r| {
            found |= self.catalog.sharded(r).is_some();
            ControlFlow::<()>::Continue(())
        });
        found
    }

    /// WHERE runs on each node: a sub-query there over a sharded table
    /// would see only that node's rows.
    pub(super) fn check_where(&self, w: &Expr) -> Result<(), Refusal> {
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
