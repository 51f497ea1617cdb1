//! Carrying out a merge plan on checked-out server connections, one per
//! node: describe the client's statement (its parameter types and the
//! row description the client must see), run the partial query on every
//! node at once, gather the partial rows, and run the final query over
//! them on the first node. Nothing here writes to the client.

use bytes::BytesMut;

use super::plan::{Nested, Plan, Refusal};
use super::render::{final_sql, outer_sql, Partial, TypeNames};
use crate::backend::{BackendError, Checkout, ServerConn};
use crate::protocol::messages::{encode_parse, encode_query, encode_target};
use crate::protocol::rows::{
    columns, encode_bind, encode_execute, encode_sync, param_types_section, parameter_types,
    with_formats, NO_PARAMS,
};
use crate::protocol::{Frame, ProtocolError};

/// The client's statement as the merge needs it.
pub struct Request<'a> {
    pub sql: &'a str,
    /// The parameter-type section of the client's Parse (`[0, 0]`: none).
    pub param_types: &'a [u8],
    /// Parameter formats and values of the client's Bind ([`NO_PARAMS`]: none).
    pub params: &'a [u8],
    /// Result formats the client asked for (empty: text).
    pub result_formats: &'a [i16],
    /// While a partition moves: per node (by index), the hash ranges whose
    /// rows it holds but must leave out, and the tables they apply to.
    pub hidden: super::hide::Hidden<'a>,
}

impl Request<'_> {
    /// A simple-protocol query: no parameters, text results.
    pub fn simple(sql: &str) -> Request<'_> {
        Request {
            sql,
            param_types: &[0, 0],
            params: NO_PARAMS,
            result_formats: &[],
            hidden: None,
        }
    }
}

/// The merged answer.
pub struct Merged {
    /// ParameterDescription of the client's statement.
    pub parameters: Frame,
    /// RowDescription as one database would send it, in the client's formats.
    pub description: Frame,
    /// The rows, in the client's formats.
    pub rows: Vec<Frame>,
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A node's ErrorResponse: the client sees it as sent.
    #[error("node error")]
    Server(Frame),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

fn malformed(conn: &ServerConn, e: ProtocolError) -> MergeError {
    MergeError::Backend(BackendError::Protocol {
        node: conn.node_name().to_string(),
        source: e,
    })
}

/// What one extended-protocol round on one connection returned.
#[derive(Default)]
struct Round {
    parameters: Option<Frame>,
    description: Option<Frame>,
    rows: Vec<Frame>,
    rows_seen: u64,
    error: Option<Frame>,
}

/// Reads replies up to ReadyForQuery; keeps at most `keep` rows.
async fn read_round(conn: &mut ServerConn, keep: usize) -> Result<Round, BackendError> {
    let mut r = Round::default();
    loop {
        let f = conn.recv().await?;
        match f.tag {
            b't' => r.parameters = Some(f),
            b'T' => r.description = Some(f),
            b'D' => {
                r.rows_seen += 1;
                if r.rows.len() < keep {
                    r.rows.push(f);
                }
            }
            b'E' => {
                r.error.get_or_insert(f);
            }
            b'Z' => {
                conn.status = crate::protocol::messages::ready_status(&f);
                return Ok(r);
            }
            _ => {}
        }
    }
}

/// The client's statement as one node describes it.
struct Described {
    parameters: Frame,
    description: Frame,
    /// The parameter-type section with every type resolved.
    ptypes: Vec<u8>,
    names: Vec<String>,
    oids: Vec<u32>,
}

/// Parse + Describe of `sql` on one node: an invalid query fails here
/// with the server's own words.
async fn describe(
    conn: &mut ServerConn,
    sql: &str,
    param_types: &[u8],
) -> Result<Described, MergeError> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&encode_parse("", sql, param_types).bytes);
    out.extend_from_slice(&encode_target(b'D', b'S', "").bytes);
    out.extend_from_slice(&encode_sync().bytes);
    conn.write_all(&out).await?;
    let described = read_round(conn, 0).await?;
    if let Some(e) = described.error {
        return Err(MergeError::Server(e));
    }
    let (Some(parameters), Some(description)) = (described.parameters, described.description)
    else {
        return Err(Refusal("this statement returns no rows; it cannot be merged".into()).into());
    };
    let param_oids = parameter_types(&parameters).map_err(|e| malformed(conn, e))?;
    let cols = columns(&description).map_err(|e| malformed(conn, e))?;
    Ok(Described {
        ptypes: param_types_section(&param_oids),
        names: cols.iter().map(|c| c.name.clone()).collect(),
        oids: cols.iter().map(|c| c.type_oid).collect(),
        parameters,
        description,
    })
}

/// Runs a plan: the partial query on every node, the final one on the
/// first; returns the final rows in `result_formats`.
#[allow(clippy::too_many_arguments)]
async fn execute_plan(
    plan: &Plan,
    d: &Described,
    params: &[u8],
    result_formats: &[i16],
    hidden: super::hide::Hidden<'_>,
    conns: &mut [Checkout],
    types: &TypeNames,
    max_rows: usize,
) -> Result<Vec<Frame>, MergeError> {
    // The partial query on every node, in parallel (all sent, then read);
    // while a partition moves, each node leaves out what it does not own.
    for (i, c) in conns.iter_mut().enumerate() {
        let partial = match hidden {
            Some((catalog, ranges)) => {
                let r = ranges.get(i).map(Vec::as_slice).unwrap_or_default();
                std::borrow::Cow::Owned(super::hide::hide(&plan.partial, catalog, r)?)
            }
            None => std::borrow::Cow::Borrowed(plan.partial.as_str()),
        };
        let mut out = BytesMut::new();
        out.extend_from_slice(&encode_parse("", &partial, &d.ptypes).bytes);
        out.extend_from_slice(&encode_bind(params, &[0]).bytes);
        out.extend_from_slice(&encode_target(b'D', b'P', "").bytes);
        out.extend_from_slice(&encode_execute().bytes);
        out.extend_from_slice(&encode_sync().bytes);
        c.write_all(&out).await?;
    }
    let mut rows: Vec<Frame> = Vec::new();
    let mut partial_desc = None;
    let mut error = None;
    let mut total = 0u64;
    for c in conns.iter_mut() {
        let keep = max_rows.saturating_sub(rows.len());
        let mut r = read_round(c, keep).await?;
        total += r.rows_seen;
        if error.is_none() {
            error = r.error;
        }
        partial_desc = partial_desc.or(r.description);
        rows.append(&mut r.rows);
    }
    if let Some(e) = error {
        return Err(MergeError::Server(e));
    }
    if total > max_rows as u64 {
        return Err(Refusal(format!(
            "this cross-shard query would gather {total} rows in the proxy, more than [routing] merge_max_rows = {max_rows}; add a LIMIT, a narrower WHERE, or the shard key"
        ))
        .into());
    }
    let first = &mut conns[0];
    let partial_desc = partial_desc.ok_or_else(|| {
        malformed(
            first,
            ProtocolError::Malformed {
                tag: 'T',
                what: "no row description for the partial query",
            },
        )
    })?;
    let oids: Vec<u32> = columns(&partial_desc)
        .map_err(|e| malformed(first, e))?
        .iter()
        .map(|c| c.type_oid)
        .collect();
    let type_names = names_of(first, types, &oids).await?;

    // The final query over the gathered rows, on the first node.
    let sql = final_sql(
        plan,
        &Partial {
            types: &type_names,
            oids: &oids,
            rows: &rows,
            output_names: &d.names,
        },
    )
    .map_err(|e| malformed(first, e))?;
    drop(rows);
    run_final(first, &sql, &d.ptypes, params, result_formats).await
}

/// Parse/Bind/Execute/Sync of `sql` on one node; its rows.
async fn run_final(
    conn: &mut ServerConn,
    sql: &str,
    ptypes: &[u8],
    params: &[u8],
    result_formats: &[i16],
) -> Result<Vec<Frame>, MergeError> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&encode_parse("", sql, ptypes).bytes);
    out.extend_from_slice(&encode_bind(params, result_formats).bytes);
    out.extend_from_slice(&encode_execute().bytes);
    out.extend_from_slice(&encode_sync().bytes);
    conn.write_all(&out).await?;
    let done = read_round(conn, usize::MAX).await?;
    match done.error {
        Some(e) => Err(MergeError::Server(e)),
        None => Ok(done.rows),
    }
}

/// The SQL names of `oids`, asking the node for those not known yet.
async fn names_of(
    conn: &mut ServerConn,
    types: &TypeNames,
    oids: &[u32],
) -> Result<Vec<String>, MergeError> {
    learn_types(conn, types, oids).await?;
    Ok(oids
        .iter()
        .map(|o| types.get(*o).unwrap_or_else(|| "text".into()))
        .collect())
}

pub async fn run(
    plan: &Plan,
    req: &Request<'_>,
    conns: &mut [Checkout],
    types: &TypeNames,
    max_rows: usize,
) -> Result<Merged, MergeError> {
    let d = describe(&mut conns[0], req.sql, req.param_types).await?;
    let rows = execute_plan(
        plan,
        &d,
        req.params,
        req.result_formats,
        req.hidden,
        conns,
        types,
        max_rows,
    )
    .await?;
    let description =
        with_formats(&d.description, req.result_formats).map_err(|e| malformed(&conns[0], e))?;
    Ok(Merged {
        parameters: d.parameters,
        description,
        rows,
    })
}

/// A query whose FROM is a sub-select that needs merging: the sub-select
/// is answered first (merged, in text), then the outer query runs on the
/// first node over its rows.
pub async fn run_nested(
    nested: &Nested,
    req: &Request<'_>,
    conns: &mut [Checkout],
    types: &TypeNames,
    max_rows: usize,
) -> Result<Merged, MergeError> {
    let d = describe(&mut conns[0], req.sql, req.param_types).await?;
    let inner = describe(&mut conns[0], &nested.inner_sql, &d.ptypes).await?;
    let rows = execute_plan(
        &nested.inner,
        &inner,
        req.params,
        &[0],
        req.hidden,
        conns,
        types,
        max_rows,
    )
    .await?;
    let first = &mut conns[0];
    let type_names = names_of(first, types, &inner.oids).await?;
    let sql =
        outer_sql(nested, &type_names, &inner.names, &rows).map_err(|e| malformed(first, e))?;
    let rows = run_final(first, &sql, &d.ptypes, req.params, req.result_formats).await?;
    let description =
        with_formats(&d.description, req.result_formats).map_err(|e| malformed(first, e))?;
    Ok(Merged {
        parameters: d.parameters,
        description,
        rows,
    })
}

/// Asks a node for the names of types it has not named before.
async fn learn_types(
    conn: &mut ServerConn,
    types: &TypeNames,
    oids: &[u32],
) -> Result<(), MergeError> {
    let missing = types.missing(oids);
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(|o| o.to_string()).collect();
    let sql = format!(
        "SELECT oid::int8::text, format_type(oid, NULL) FROM pg_catalog.pg_type WHERE oid IN ({})",
        list.join(", ")
    );
    conn.write_all(&encode_query(&sql).bytes).await?;
    let r = read_round(conn, usize::MAX).await?;
    if let Some(e) = r.error {
        return Err(MergeError::Server(e));
    }
    for row in &r.rows {
        let v = crate::protocol::rows::values(row).map_err(|e| malformed(conn, e))?;
        if let [Some(oid), Some(name)] = v.as_slice() {
            if let Ok(oid) = std::str::from_utf8(oid).unwrap_or("").parse::<u32>() {
                types.insert(oid, String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(())
}
