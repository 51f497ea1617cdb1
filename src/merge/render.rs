//! The final query's text: the plan's pieces filled in with what the
//! partial step returned — its rows as a typed `VALUES` relation, its
//! column types by name, the client's output column names.

use std::collections::HashMap;

use parking_lot::RwLock;

use super::plan::{Nested, Piece, Plan};
use crate::protocol::rows::values;
use crate::protocol::{Frame, ProtocolError};

/// Names of the built-in types a partial column commonly has; others are
/// asked of a node once (see [`TypeNames`]).
fn builtin(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "boolean",
        17 => "bytea",
        18 => "\"char\"",
        19 => "name",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        26 => "oid",
        114 => "json",
        142 => "xml",
        650 => "cidr",
        700 => "real",
        701 => "double precision",
        790 => "money",
        829 => "macaddr",
        869 => "inet",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time without time zone",
        1114 => "timestamp without time zone",
        1184 => "timestamp with time zone",
        1186 => "interval",
        1266 => "time with time zone",
        1560 => "bit",
        1562 => "bit varying",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        _ => return None,
    })
}

/// OID → SQL type name, for the types not built in; shared by all
/// connections (type OIDs are stable while a type exists).
#[derive(Default)]
pub struct TypeNames {
    known: RwLock<HashMap<u32, String>>,
}

impl TypeNames {
    pub fn get(&self, oid: u32) -> Option<String> {
        builtin(oid)
            .map(str::to_string)
            .or_else(|| self.known.read().get(&oid).cloned())
    }

    pub fn insert(&self, oid: u32, name: String) {
        self.known.write().insert(oid, name);
    }

    /// The OIDs among `oids` without a name yet.
    pub fn missing(&self, oids: &[u32]) -> Vec<u32> {
        let mut m: Vec<u32> = oids
            .iter()
            .copied()
            .filter(|o| self.get(*o).is_none())
            .collect();
        m.sort_unstable();
        m.dedup();
        m
    }
}

/// A `"quoted"` identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string literal that reads the same whatever
/// `standard_conforming_strings` says.
fn quote_literal(out: &mut String, v: &[u8]) {
    out.push_str("E'");
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// What the partial step produced.
pub struct Partial<'a> {
    /// Type name of each partial column.
    pub types: &'a [String],
    /// Type OID of each partial column.
    pub oids: &'a [u32],
    /// The gathered DataRows (text format).
    pub rows: &'a [Frame],
    /// Output column names the client sees.
    pub output_names: &'a [String],
}

/// The final query's SQL.
pub fn final_sql(plan: &Plan, p: &Partial<'_>) -> Result<String, ProtocolError> {
    let n = p.types.len();
    let client = n.saturating_sub(plan.hidden);
    let mut sql =
        String::with_capacity(256 + p.rows.iter().map(|r| r.bytes.len() + 8 * n).sum::<usize>());
    for piece in &plan.final_query {
        match piece {
            Piece::Text(t) => sql.push_str(t),
            Piece::TypeOf(i) => sql.push_str(p.types.get(*i).map(String::as_str).unwrap_or("text")),
            Piece::ClientColumns => {
                let cols: Vec<String> = (1..=client).map(|i| format!("_sc.c{i}")).collect();
                sql.push_str(&cols.join(", "));
            }
            Piece::Hidden(j) => sql.push_str(&format!("_sc.c{}", client + j + 1)),
            Piece::OutputName(i) => sql.push_str(&quote_ident(
                p.output_names
                    .get(*i)
                    .map(String::as_str)
                    .unwrap_or("?column?"),
            )),
            Piece::Avg { sum, count } => {
                let (s, c) = (sum + 1, count + 1);
                match p.oids.get(*sum) {
                    Some(700 | 701) => sql.push_str(&format!(
                        "(CAST(sum(_sc.c{s}) AS double precision) / CAST(sum(_sc.c{c}) AS double precision))"
                    )),
                    Some(1186) => sql.push_str(&format!(
                        "(sum(_sc.c{s}) / CAST(sum(_sc.c{c}) AS double precision))"
                    )),
                    _ => sql.push_str(&format!(
                        "(CAST(sum(_sc.c{s}) AS numeric) / CAST(sum(_sc.c{c}) AS numeric))"
                    )),
                }
            }
            Piece::Values => {
                let names: Vec<String> = (1..=n).map(|i| format!("c{i}")).collect();
                values_relation(&mut sql, p.types, p.rows, "_sc", &names)?
            }
            Piece::Inner => {}
        }
    }
    Ok(sql)
}

/// The outer query of a nested plan over the sub-select's rows.
pub fn outer_sql(
    nested: &Nested,
    types: &[String],
    names: &[String],
    rows: &[Frame],
) -> Result<String, ProtocolError> {
    let cols: Vec<String> = if nested.columns.is_empty() {
        names.iter().map(|n| quote_ident(n)).collect()
    } else {
        nested.columns.clone()
    };
    let mut sql = String::new();
    for piece in &nested.outer {
        match piece {
            Piece::Text(t) => sql.push_str(t),
            Piece::Inner => values_relation(&mut sql, types, rows, &nested.alias, &cols)?,
            _ => {}
        }
    }
    Ok(sql)
}

/// `(VALUES (…), …) AS alias(c1, …)`, the first row's values cast to their
/// types (the other rows follow them); no rows: a typed empty relation.
fn values_relation(
    sql: &mut String,
    types: &[String],
    rows: &[Frame],
    alias: &str,
    names: &[String],
) -> Result<(), ProtocolError> {
    let n = types.len();
    if rows.is_empty() {
        sql.push_str("(SELECT ");
        for (i, t) in types.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("CAST(NULL AS {t})"));
        }
        sql.push_str(" WHERE false)");
    } else {
        sql.push_str("(VALUES ");
        for (r, row) in rows.iter().enumerate() {
            let vals = values(row)?;
            if vals.len() != n {
                return Err(ProtocolError::Malformed {
                    tag: 'D',
                    what: "a node returned rows of another width",
                });
            }
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for (i, v) in vals.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                match v {
                    None => sql.push_str("NULL"),
                    Some(b) => quote_literal(sql, b),
                }
                if r == 0 {
                    sql.push_str(&format!("::{}", types[i]));
                }
            }
            sql.push(')');
        }
        sql.push(')');
    }
    sql.push_str(&format!(" AS {alias}({})", names.join(", ")));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_survive_any_string_setting() {
        let mut s = String::new();
        quote_literal(&mut s, br"it's a \path");
        assert_eq!(s, r"E'it''s a \\path'");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
