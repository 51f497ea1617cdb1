//! Writing a decoded batch (see `batch`) for one server connection: the
//! client's statements under their proxy-wide names, a statement's Parse
//! injected where the connection lacks it (its reply swallowed), and the
//! expectations that keep the client's view exact.

use bytes::BytesMut;

use super::batch::{Msg, Prepared};
use super::exchange::{Action, Exchange, Expect, Until};
use crate::backend::ServerConn;
use crate::protocol::messages::{close_complete, encode_target, parse_complete};

/// Writes a batch for one server connection: renamed statements, Parses
/// injected where the connection lacks them, and the expectations that
/// keep the client's view exact.
pub fn build_batch(msgs: &[Msg], conn: &ServerConn, out: &mut BytesMut, ex: &mut Exchange) {
    let mut b = Builder {
        conn,
        here: Vec::new(),
        unnamed_parsed: false,
    };
    for m in msgs {
        match m {
            Msg::Parse(stmt) if stmt.id == 0 => {
                out.extend_from_slice(&stmt.parse.bytes);
                ex.push(Expect::forward(Until::Parse));
                b.unnamed_parsed = true;
            }
            Msg::Parse(stmt) if b.has(stmt.id) => ex.push(Expect::synth(vec![parse_complete()])),
            Msg::Parse(stmt) => {
                // Forwarded, so that a syntax error reaches the client here.
                out.extend_from_slice(&stmt.parse.bytes);
                ex.push(Expect {
                    until: Until::Parse,
                    action: Action::Forward,
                    prepares: Some(stmt.id),
                    uses: None,
                });
                b.here.push(stmt.id);
            }
            Msg::Bind { stmt, frame } => {
                b.ensure(stmt, out, ex);
                out.extend_from_slice(&frame.bytes);
                ex.push(Expect::forward(Until::Bind).using(stmt.id));
            }
            Msg::DescribeStmt(stmt) => {
                b.ensure(stmt, out, ex);
                out.extend_from_slice(&encode_target(b'D', b'S', &stmt.server_name).bytes);
                ex.push(Expect::forward(Until::Describe).using(stmt.id));
            }
            Msg::CloseStmt => ex.push(Expect::synth(vec![close_complete()])),
            Msg::Raw { frame, until } => {
                out.extend_from_slice(&frame.bytes);
                if let Some(u) = until {
                    ex.push(Expect::forward(*u));
                }
            }
        }
    }
}

/// Which statements one connection has, or will have once this batch's
/// Parses run.
struct Builder<'a> {
    conn: &'a ServerConn,
    here: Vec<u64>,
    unnamed_parsed: bool,
}

impl Builder<'_> {
    fn has(&self, id: u64) -> bool {
        self.conn.prepared.contains(&id) || self.here.contains(&id)
    }

    /// Injects the statement's Parse (replies swallowed) if needed.
    fn ensure(&mut self, stmt: &Prepared, out: &mut BytesMut, ex: &mut Exchange) {
        if stmt.id == 0 {
            if !self.unnamed_parsed {
                out.extend_from_slice(&stmt.parse.bytes);
                ex.push(Expect::swallow(Until::Parse));
                self.unnamed_parsed = true;
            }
        } else if !self.has(stmt.id) {
            out.extend_from_slice(&stmt.parse.bytes);
            ex.push(Expect {
                until: Until::Parse,
                action: Action::Swallow,
                prepares: Some(stmt.id),
                uses: None,
            });
            self.here.push(stmt.id);
        }
    }
}
