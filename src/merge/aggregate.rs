//! Rewriting an aggregating query for its final step: grouping
//! expressions become partial columns, each aggregate its combination
//! over partial columns (count → sum of counts, avg → sum ÷ count, …), and
//! whatever cannot be combined exactly is refused by name.

use std::ops::ControlFlow;

use sqlparser::ast::{
    DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    VisitMut, VisitorMut,
};

use super::plan::{last_part, refuse, Catalog, Piece, Refusal};

/// Rewrites expressions of an aggregating query for the final step:
/// grouping expressions become partial columns, aggregates their
/// combination over partial columns; every replacement is a placeholder
/// identifier (`__sc_N__`) expanded to [`Piece`]s afterwards.
pub(super) struct Rewriter<'a> {
    pub(super) catalog: &'a Catalog,
    pub(super) groups: &'a [Expr],
    /// Partial aggregate expressions (columns after groups and distinct args).
    pub(super) partials: Vec<String>,
    /// Arguments of DISTINCT aggregates: extra partial grouping columns.
    pub(super) distinct_args: Vec<Expr>,
    pub(super) subs: Vec<Vec<Piece>>,
    pub(super) refusal: Option<Refusal>,
}

const PLACEHOLDER: &str = "__sc_";

impl Rewriter<'_> {
    pub(super) fn rewrite(&mut self, e: &Expr) -> Result<Vec<Piece>, Refusal> {
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

    pub(super) fn collect_distinct(&mut self, e: &Expr) {
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
pub(super) fn expand(pieces: Vec<Piece>, subs: &[Vec<Piece>]) -> Vec<Piece> {
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
