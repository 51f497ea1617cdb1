//! The extended protocol. Messages are buffered up to Sync (or Flush), then
//! routed together: every Bind's parameters are known by then, so the shard
//! key can be read from them.
//!
//! Named prepared statements are the client's, but server connections are
//! shared, so each statement gets a proxy-wide name derived from its text and
//! parameter types (`sc_<hash>`, see `names`). Whichever connection a Bind
//! lands on, the Parse is injected first if that connection has not seen it,
//! and its ParseComplete is swallowed (see `server_batch`).

use std::sync::Arc;
use std::time::Instant;

use super::error::FrontendError;
use super::exchange::Until;
use super::execute::Work;
use super::listen::{parse_listen, Listen};
use super::names::{server_name, statement_id};
use super::route::{combine, decide, Decision};
use super::session::{Session, Tx};
use crate::protocol::messages::{
    bind_complete, close_complete, command_complete, encode_parse, no_data, parse_bind,
    parse_complete, parse_parse, parse_target, ready_for_query, rename_bind,
};
use crate::protocol::{sqlstate, Frame};
use crate::router::{Analysis, Command, RouteError};

/// A statement as the proxy knows it.
#[derive(Debug)]
pub struct Prepared {
    /// Proxy-wide id; 0 for the unnamed statement.
    pub id: u64,
    pub server_name: String,
    pub sql: String,
    /// The Parse to send to a server (already renamed).
    pub parse: Frame,
    pub analysis: Result<Analysis, RouteError>,
    /// What its text says about session state (read once).
    pub traits: super::pin::Traits,
}

/// One buffered client message, decoded as far as routing needs.
#[derive(Debug)]
pub enum Msg {
    Parse(Arc<Prepared>),
    /// `frame` already names the server-side statement.
    Bind {
        stmt: Arc<Prepared>,
        frame: Frame,
    },
    DescribeStmt(Arc<Prepared>),
    /// Closing a statement only forgets the client's name for it.
    CloseStmt,
    /// Forwarded as is; `until` says which reply completes it (None: Flush).
    Raw {
        frame: Frame,
        until: Option<Until>,
    },
}

/// A batch decoded for routing; kept by the session and reused, so that a
/// batch allocates nothing once the session is warm.
#[derive(Default)]
pub struct Decoded {
    msgs: Vec<Msg>,
    decisions: Vec<Decision>,
    commands: Vec<Command>,
}

impl Session {
    pub(super) async fn run_batch(&mut self) -> Result<(), FrontendError> {
        let mut frames = std::mem::take(&mut self.batch);
        let mut decoded = std::mem::take(&mut self.decoded);
        let mut epoch = self.shared.routing.peek().epoch();
        let mut r = self.run_decoded(&mut frames, &mut decoded, false).await;
        // A write held for a cut-over, or fenced by a node: once a newer
        // routing table is in, the same messages are routed again.
        let mut tries = 0;
        while matches!(r, Err(FrontendError::Moved { .. })) && tries < 3 {
            if !self.await_move(epoch).await {
                break;
            }
            tries += 1;
            epoch = self.shared.routing.peek().epoch();
            r = self.run_decoded(&mut frames, &mut decoded, true).await;
        }
        frames.clear();
        self.batch_bytes = 0;
        decoded.msgs.clear();
        decoded.decisions.clear();
        decoded.commands.clear();
        self.batch = frames;
        self.decoded = decoded;
        r
    }

    /// Decodes and runs one batch; `again`: the batch was decoded already
    /// and only its routing is decided anew.
    async fn run_decoded(
        &mut self,
        frames: &mut Vec<Frame>,
        decoded: &mut Decoded,
        again: bool,
    ) -> Result<(), FrontendError> {
        let ends_with_sync = if again {
            matches!(
                decoded.msgs.last(),
                Some(Msg::Raw {
                    until: Some(Until::Ready),
                    ..
                })
            )
        } else {
            frames.last().is_some_and(|f| f.tag == b'S')
        };
        let started = Instant::now();
        let ready = if again {
            self.redecide(decoded)
        } else {
            self.decode_batch(frames, decoded)
        };
        let (msgs, decisions, commands) = match ready {
            Ok(()) => (&decoded.msgs, &decoded.decisions, &decoded.commands),
            // The session reports it; after a Flush, the rest of the
            // pipeline is skipped to its Sync (see `pipeline`).
            Err(e) => return Err(e),
        };
        if !self.joined.is_empty()
            && commands.len() == 1
            && matches!(commands[0], Command::Commit | Command::Rollback)
        {
            let was_failed = self.status() == b'E';
            let ended = self.end_spanning(commands[0] == Command::Commit).await?;
            let how = if ended == Some("COMMIT") {
                Command::Commit
            } else {
                Command::Rollback
            };
            self.settle_settings(None, &[how], true, was_failed, false);
            match ended {
                Some(tag) => self.answer_locally(msgs, tag),
                None => self.write(&ready_for_query(self.status())),
            }
            return Ok(());
        }
        if self.tx == Tx::Failed && self.attached.is_none() {
            if !commands.is_empty()
                && commands
                    .iter()
                    .all(|c| matches!(c, Command::Commit | Command::Rollback))
            {
                self.tx = Tx::None;
                self.end_local_tx(false).await;
                self.answer_locally(msgs, "ROLLBACK");
                return Ok(());
            }
            return Err(FrontendError::route(
                sqlstate::IN_FAILED_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block"
                    .into(),
                "end it with ROLLBACK".into(),
            ));
        }
        if let Some(l) = (commands[..] == [Command::Other])
            .then(|| single_listen(msgs))
            .flatten()
        {
            // LISTEN/UNLISTEN by the extended protocol: the notifier's.
            let tag = match l {
                Listen::Listen(_) => "LISTEN",
                Listen::Unlisten(_) => "UNLISTEN",
            };
            self.apply_listen(l).await?;
            if ends_with_sync {
                self.end_open_pipeline().await;
            }
            self.answer_locally(msgs, tag);
            return Ok(());
        }
        if self.attached.is_none() && commands.len() == 1 {
            let tag = match (&self.tx, commands[0]) {
                (Tx::None, Command::Begin) => {
                    let sql = msgs.iter().find_map(|m| match m {
                        Msg::Bind { stmt, .. } => Some(stmt.sql.clone()),
                        _ => None,
                    });
                    self.tx = Tx::Deferred {
                        prelude: vec![sql.unwrap_or_else(|| "BEGIN".into())],
                    };
                    Some("BEGIN")
                }
                (Tx::Deferred { .. }, Command::Commit) => Some("COMMIT"),
                (Tx::Deferred { .. }, Command::Rollback) => Some("ROLLBACK"),
                _ => None,
            };
            if let Some(tag) = tag {
                if tag != "BEGIN" {
                    self.tx = Tx::None;
                    self.end_local_tx(tag == "COMMIT").await;
                }
                self.answer_locally(msgs, tag);
                return Ok(());
            }
        }
        if self.attached.is_none() {
            let executes = msgs.iter().any(|m| {
                matches!(
                    m,
                    Msg::Raw {
                        until: Some(Until::Execute),
                        ..
                    }
                )
            });
            let describes = msgs.iter().any(|m| {
                matches!(
                    m,
                    Msg::DescribeStmt(_)
                        | Msg::Raw {
                            until: Some(Until::Describe),
                            ..
                        }
                )
            });
            let binds = msgs.iter().any(|m| matches!(m, Msg::Bind { .. }));
            if !executes && !describes && !binds {
                // Parse/Close only: nothing needs a server yet. The Parse is
                // sent with the first Bind, on whichever node that lands;
                // answering here keeps prepare from holding a connection.
                self.answer_locally(msgs, "");
                return Ok(());
            }
            if !executes && !binds {
                // Describe without Execute (a driver's prepare): run it on
                // any node, outside a deferred transaction so that it does
                // not pin the transaction to that node. (A Bind makes a
                // portal, which belongs to the transaction.)
                let tx = std::mem::replace(&mut self.tx, Tx::None);
                let r = self
                    .execute(
                        combine(decisions)?,
                        Work::Batch(msgs, ends_with_sync),
                        started,
                        None,
                    )
                    .await;
                self.tx = tx;
                self.release_if_idle();
                self.skip_after(r?, ends_with_sync);
                return Ok(());
            }
        }
        let decision = combine(decisions)?;
        // SET, RESET, DISCARD through the extended protocol follow the
        // client as the simple protocol's do.
        let plan = if commands
            .iter()
            .any(|c| matches!(c, Command::Set | Command::Reset | Command::Other))
        {
            let sqls = msgs.iter().filter_map(|m| match m {
                Msg::Bind { stmt, .. } => Some(stmt.sql.as_str()),
                _ => None,
            });
            self.plan_settings(sqls, commands.contains(&Command::Begin))
        } else {
            None
        };
        if commands.contains(&Command::Other) {
            self.note_schema_changes(msgs.iter().filter_map(|m| match m {
                Msg::Bind { stmt, .. } => Some(stmt.sql.as_str()),
                _ => None,
            }));
        }
        let pinned = self.before_statements(
            msgs.iter().filter_map(|m| match m {
                Msg::Bind { stmt, .. } => Some(stmt.traits),
                _ => None,
            }),
            commands
                .iter()
                .any(|c| matches!(c, Command::Select | Command::Other)),
        );
        let (was_in_tx, was_failed) = (self.in_transaction(), self.status() == b'E');
        let outcome = self
            .execute(
                decision,
                Work::Batch(msgs, ends_with_sync),
                started,
                plan.as_ref().map(|p| p.session_after()),
            )
            .await;
        self.after_statements(pinned, outcome.as_ref().map_or(true, |o| o.error));
        let outcome = outcome?;

        if plan.is_some() || was_in_tx {
            self.settle_settings(plan, commands, was_in_tx, was_failed, outcome.error);
        }
        self.skip_after(outcome, ends_with_sync);
        Ok(())
    }

    /// Statements prepared after a schema change are new statements on
    /// the servers too (see `names`).
    pub(super) fn note_schema_changes<'a>(&self, mut sqls: impl Iterator<Item = &'a str>) {
        if sqls.any(super::names::changes_schema) {
            self.shared.renewals.schema_changed();
        }
    }

    /// A server's error in a round that ended with Flush: that server now
    /// skips to Sync, and so does the session.
    fn skip_after(&mut self, outcome: super::execute::Outcome, ends_with_sync: bool) {
        if outcome.error && !ends_with_sync {
            self.pipeline = super::pipeline::Pipeline::Skipping {
                server_failed: true,
            };
        }
    }

    fn decode_batch(
        &mut self,
        frames: &mut Vec<Frame>,
        out: &mut Decoded,
    ) -> Result<(), FrontendError> {
        let Decoded {
            msgs,
            decisions,
            commands,
        } = out;
        let table = self.shared.routing.peek();
        let mut held = None;
        for f in frames.drain(..) {
            match f.tag {
                b'P' => {
                    let f = self.execute_parse_of(&f).unwrap_or(f);
                    // Drivers re-send the same unnamed statement: reuse it
                    // unread (the same bytes name no statement).
                    if let Some(prev) = self.unnamed.as_ref().filter(|u| u.parse.bytes == f.bytes) {
                        msgs.push(Msg::Parse(prev.clone()));
                        continue;
                    }
                    let p = parse_parse(&f)?;
                    let stmt = if p.name.is_empty() {
                        let s = Arc::new(Prepared {
                            id: 0,
                            server_name: String::new(),
                            sql: p.query.to_string(),
                            analysis: self.shared.analyzer.analysis(p.query),
                            traits: super::pin::Traits::of(p.query),
                            parse: f.clone(),
                        });
                        self.unnamed = Some(s.clone());
                        s
                    } else {
                        if self.statements.contains_key(p.name) {
                            return Err(FrontendError::route(
                                sqlstate::DUPLICATE_PREPARED_STATEMENT,
                                format!("prepared statement \"{}\" already exists", p.name),
                                "close it first, or use another name".into(),
                            ));
                        }
                        let names = &self.shared.renewals;
                        let id = names.current(statement_id(
                            p.query,
                            p.param_types,
                            self.settings.fingerprint(),
                            names.schema_epoch(),
                        ));
                        let server_name = server_name(id);
                        let s = Arc::new(Prepared {
                            id,
                            parse: encode_parse(&server_name, p.query, p.param_types),
                            server_name,
                            sql: p.query.to_string(),
                            analysis: self.shared.analyzer.analysis(p.query),
                            traits: super::pin::Traits::of(p.query),
                        });
                        self.statements.insert(p.name.to_string(), s.clone());
                        s
                    };
                    msgs.push(Msg::Parse(stmt));
                }
                b'B' => {
                    let b = parse_bind(&f)?;
                    let stmt = self.lookup(b.statement)?;
                    let analysis = stmt.analysis.as_ref().map_err(|e| {
                        FrontendError::route(
                            e.sqlstate(),
                            e.to_string(),
                            "see the shard-key rules in the README".into(),
                        )
                    })?;
                    for s in analysis.shapes.iter() {
                        match decide(s, &analysis.values, Some(&b), &table, self.policy()) {
                            Ok(d) => decisions.push(d),
                            // Decoding goes on (the messages are kept); the
                            // batch waits for the cut-over, then `redecide`.
                            Err(FrontendError::Moved { partition }) => held = Some(partition),
                            Err(e) => return Err(e),
                        }
                        commands.push(s.command);
                    }
                    let frame = if stmt.id == 0 {
                        f.clone()
                    } else {
                        rename_bind(&b, &stmt.server_name)
                    };
                    msgs.push(Msg::Bind { stmt, frame });
                }
                b'D' => {
                    let (kind, name) = parse_target(&f)?;
                    if kind == b'S' {
                        msgs.push(Msg::DescribeStmt(self.lookup(name)?));
                    } else {
                        msgs.push(Msg::Raw {
                            frame: f,
                            until: Some(Until::Describe),
                        });
                    }
                }
                b'C' => {
                    let (kind, name) = parse_target(&f)?;
                    if kind == b'S' {
                        if name.is_empty() {
                            self.unnamed = None;
                        } else {
                            self.statements.remove(name);
                        }
                        msgs.push(Msg::CloseStmt);
                    } else {
                        msgs.push(Msg::Raw {
                            frame: f,
                            until: Some(Until::Close),
                        });
                    }
                }
                b'E' => msgs.push(Msg::Raw {
                    frame: f,
                    until: Some(Until::Execute),
                }),
                b'S' => msgs.push(Msg::Raw {
                    frame: f,
                    until: Some(Until::Ready),
                }),
                _ => msgs.push(Msg::Raw {
                    frame: f,
                    until: None,
                }),
            }
        }
        match held {
            Some(partition) => Err(FrontendError::Moved { partition }),
            None => Ok(()),
        }
    }

    /// Routes decoded messages again, against the current table (after a
    /// write was held or fenced).
    fn redecide(&mut self, out: &mut Decoded) -> Result<(), FrontendError> {
        let table = self.shared.routing.peek();
        out.decisions.clear();
        out.commands.clear();
        for m in &out.msgs {
            let Msg::Bind { stmt, frame } = m else {
                continue;
            };
            let b = parse_bind(frame)?;
            let Ok(analysis) = stmt.analysis.as_ref() else {
                continue;
            };
            for s in analysis.shapes.iter() {
                out.decisions.push(decide(
                    s,
                    &analysis.values,
                    Some(&b),
                    &table,
                    self.policy(),
                )?);
                out.commands.push(s.command);
            }
        }
        Ok(())
    }

    fn lookup(&self, name: &str) -> Result<Arc<Prepared>, FrontendError> {
        let found = if name.is_empty() {
            self.unnamed.clone()
        } else {
            self.statements.get(name).cloned()
        };
        found.ok_or_else(|| {
            FrontendError::route(
                sqlstate::INVALID_PREPARED_STATEMENT,
                format!("prepared statement \"{name}\" does not exist"),
                "prepare it in this session first".into(),
            )
        })
    }

    /// Answers a whole batch without a server (a deferred BEGIN, a COMMIT of
    /// a transaction that never reached a server).
    fn answer_locally(&mut self, msgs: &[Msg], tag: &str) {
        for m in msgs {
            match m {
                Msg::Parse(_) => self.write(&parse_complete()),
                Msg::Bind { .. } => self.write(&bind_complete()),
                Msg::DescribeStmt(_) => {
                    self.write(&Frame::new(b't', &[0, 0]));
                    self.write(&no_data());
                }
                Msg::CloseStmt => self.write(&close_complete()),
                Msg::Raw { frame, .. } => match frame.tag {
                    b'D' => self.write(&no_data()),
                    b'E' => self.write(&command_complete(tag)),
                    b'C' => self.write(&close_complete()),
                    b'S' => self.ready_now(),
                    _ => {}
                },
            }
        }
    }
}

/// The LISTEN/UNLISTEN a batch binds, if it binds that statement only.
fn single_listen(msgs: &[Msg]) -> Option<Listen> {
    let mut binds = msgs.iter().filter_map(|m| match m {
        Msg::Bind { stmt, .. } => Some(stmt),
        _ => None,
    });
    let stmt = binds.next()?;
    if binds.next().is_some() {
        return None;
    }
    parse_listen(&stmt.sql)
}
