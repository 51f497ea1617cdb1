//! Splitting a multi-row `INSERT … VALUES` whose rows belong to several
//! nodes into one INSERT per node, each with only its rows — and, for a
//! prepared statement, only its parameters, renumbered from `$1`, so a
//! statement prepared once can be executed later with any values.
//! Pure: SQL text in, SQL text and parameter lists out.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, SetExpr, Statement, Value, VisitMut, VisitorMut};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::plan::Refusal;

/// One node's part of a split INSERT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub sql: String,
    /// The original (1-based) parameter numbers, in the order of the new
    /// `$1, $2, …`.
    pub params: Vec<usize>,
}

/// Splits `sql` (one INSERT … VALUES of `row_nodes.len()` rows) by node:
/// entry `n` of the result is node `n`'s part, None if it has no rows.
pub fn split_insert(
    sql: &str,
    row_nodes: &[usize],
    nodes: usize,
) -> Result<Vec<Option<Part>>, Refusal> {
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| Refusal(format!("this multi-row INSERT could not be split: {e}")))?;
    let [Statement::Insert(ins)] = stmts.as_slice() else {
        return Err(Refusal(
            "only one INSERT … VALUES statement can be split across shards".into(),
        ));
    };
    let Some(SetExpr::Values(values)) = ins.source.as_ref().map(|s| s.body.as_ref()) else {
        return Err(Refusal(
            "INSERT … SELECT into a sharded table across shards".into(),
        ));
    };
    if values.rows.len() != row_nodes.len() {
        return Err(Refusal(
            "the INSERT's rows and their shard keys do not match".into(),
        ));
    }
    let mut parts = vec![None; nodes];
    for (node, part) in parts.iter_mut().enumerate() {
        let rows: Vec<_> = values
            .rows
            .iter()
            .zip(row_nodes)
            .filter(|(_, n)| **n == node)
            .map(|(r, _)| r.clone())
            .collect();
        if rows.is_empty() {
            continue;
        }
        let mut mine = Statement::Insert(ins.clone());
        if let Statement::Insert(i) = &mut mine {
            if let Some(src) = i.source.as_mut() {
                if let SetExpr::Values(v) = src.body.as_mut() {
                    v.rows = rows;
                }
            }
        }
        let mut r = Renumber { order: Vec::new() };
        let _ = mine.visit(&mut r);
        *part = Some(Part {
            sql: mine.to_string(),
            params: r.order,
        });
    }
    Ok(parts)
}

/// Renumbers `$n` placeholders by first appearance.
struct Renumber {
    order: Vec<usize>,
}

impl VisitorMut for Renumber {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &mut v.value {
                if let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                    let k = match self.order.iter().position(|o| *o == n) {
                        Some(k) => k,
                        None => {
                            self.order.push(n);
                            self.order.len() - 1
                        }
                    };
                    *p = format!("${}", k + 1);
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// A Bind's parameter section for a subset of its parameters (`params`
/// are 1-based numbers of the original): formats and values picked alike.
pub fn subset_params(section: &[u8], params: &[usize]) -> Option<Vec<u8>> {
    let rd16 = |b: &[u8], at: usize| -> Option<i16> {
        Some(i16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
    };
    let nf = rd16(section, 0)? as usize;
    let formats: Vec<i16> = (0..nf)
        .map(|i| rd16(section, 2 + 2 * i))
        .collect::<Option<_>>()?;
    let mut at = 2 + 2 * nf;
    let np = rd16(section, at)? as usize;
    at += 2;
    let mut values: Vec<&[u8]> = Vec::with_capacity(np);
    for _ in 0..np {
        let len = i32::from_be_bytes(section.get(at..at + 4)?.try_into().ok()?);
        let end = at + 4 + len.max(0) as usize;
        values.push(section.get(at..end)?);
        at = end;
    }
    let mut out = Vec::new();
    match nf {
        0 | 1 => {
            out.extend_from_slice(&(nf as i16).to_be_bytes());
            if nf == 1 {
                out.extend_from_slice(&formats[0].to_be_bytes());
            }
        }
        _ => {
            out.extend_from_slice(&(params.len() as i16).to_be_bytes());
            for p in params {
                out.extend_from_slice(&formats.get(p - 1).copied().unwrap_or(0).to_be_bytes());
            }
        }
    }
    out.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        out.extend_from_slice(values.get(p - 1)?);
    }
    Some(out)
}

/// A Parse's parameter-type section for a subset of its parameters.
pub fn subset_types(section: &[u8], params: &[usize]) -> Vec<u8> {
    let n = section
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize)
        .unwrap_or(0);
    let oid = |p: usize| -> [u8; 4] {
        if p >= 1 && p <= n {
            let at = 2 + 4 * (p - 1);
            section
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 4])
        } else {
            [0; 4]
        }
    };
    let mut out = Vec::with_capacity(2 + 4 * params.len());
    out.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        out.extend_from_slice(&oid(*p));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_to_their_nodes_with_their_parameters() {
        let parts = split_insert(
            "INSERT INTO t (id, v) VALUES ($1, $2), ($3, 'x'), ($4, $2) RETURNING id",
            &[1, 0, 1],
            3,
        )
        .unwrap();
        assert_eq!(
            parts[0],
            Some(Part {
                sql: "INSERT INTO t (id, v) VALUES ($1, 'x') RETURNING id".into(),
                params: vec![3],
            })
        );
        assert_eq!(
            parts[1].as_ref().unwrap().sql,
            "INSERT INTO t (id, v) VALUES ($1, $2), ($3, $2) RETURNING id"
        );
        assert_eq!(parts[1].as_ref().unwrap().params, vec![1, 2, 4]);
        assert_eq!(parts[2], None);
        assert!(split_insert("INSERT INTO t SELECT 1", &[0], 2).is_err());
    }

    #[test]
    fn parameter_sections_follow_the_subset() {
        // Two formats (text, binary), three values: "a", NULL, "cc".
        let mut s = vec![0, 2, 0, 0, 0, 1, 0, 3];
        s.extend_from_slice(&[0, 0, 0, 1, b'a']);
        s.extend_from_slice(&(-1i32).to_be_bytes());
        s.extend_from_slice(&[0, 0, 0, 2, b'c', b'c']);
        let sub = subset_params(&s, &[3, 2]).unwrap();
        let mut want = vec![0, 2, 0, 0, 0, 1, 0, 2];
        want.extend_from_slice(&[0, 0, 0, 2, b'c', b'c']);
        want.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(sub, want);
        let types = [0u8, 2, 0, 0, 0, 20, 0, 0, 0, 25];
        assert_eq!(
            subset_types(&types, &[2, 3]),
            vec![0, 2, 0, 0, 0, 25, 0, 0, 0, 0]
        );
    }
}
