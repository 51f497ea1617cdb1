//! One round of work on one server connection: what was sent, in order, and
//! what each reply means for the client.
//!
//! The proxy rewrites the extended protocol (prepared statements get
//! proxy-wide names and are re-prepared on whichever pooled connection a
//! client lands on) and answers some messages itself (a deferred `BEGIN`).
//! The expectation queue keeps the client's view exact: each entry is one
//! message the client sent or the proxy injected, saying which reply
//! completes it and whether that reply is forwarded, swallowed, or replaced
//! by a synthesized one.

use std::collections::VecDeque;

use crate::backend::{BackendError, ServerConn};
use crate::protocol::Frame;

/// Which reply completes an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Parse,
    Bind,
    Close,
    Describe,
    Execute,
    /// Sync (extended) or Query (simple): completed by ReadyForQuery.
    Ready,
    /// A simple Query: errors do not end it, ReadyForQuery does.
    Query,
}

#[derive(Debug, Clone)]
pub enum Action {
    Forward,
    /// Injected by the proxy: the client must not see its replies (errors excepted).
    Swallow,
    /// Answered by the proxy: emit this when the entry reaches the head.
    Synth(Vec<Frame>),
}

#[derive(Debug, Clone)]
pub struct Expect {
    pub until: Until,
    pub action: Action,
    /// For Parse entries: the proxy-wide statement id that exists on the
    /// server once ParseComplete arrives.
    pub prepares: Option<u64>,
    /// For Bind and Describe entries: the proxy-named statement they use
    /// (its plan may turn out stale).
    pub uses: Option<u64>,
}

impl Expect {
    pub fn forward(until: Until) -> Self {
        Self {
            until,
            action: Action::Forward,
            prepares: None,
            uses: None,
        }
    }

    /// Marks an entry that uses a proxy-named statement (not the unnamed one).
    pub fn using(mut self, id: u64) -> Self {
        self.uses = (id != 0).then_some(id);
        self
    }
    pub fn swallow(until: Until) -> Self {
        Self {
            until,
            action: Action::Swallow,
            prepares: None,
            uses: None,
        }
    }
    pub fn synth(frames: Vec<Frame>) -> Self {
        Self {
            until: Until::Parse,
            action: Action::Synth(frames),
            prepares: None,
            uses: None,
        }
    }
}

/// What the pump hands to the caller.
#[derive(Debug)]
pub enum Item {
    /// A message for the client.
    Msg(Frame),
    /// The server waits for COPY data from the client (CopyInResponse, to forward).
    CopyIn(Frame),
    /// All entries answered: with the final ReadyForQuery if the round ended
    /// with Sync/Query, or None after a Flush.
    Done(Option<Frame>),
}

/// The expectation queue of one server connection for one round.
#[derive(Debug, Default)]
pub struct Exchange {
    queue: VecDeque<Expect>,
    ready: VecDeque<Frame>,
}

fn completes(until: Until, tag: u8) -> bool {
    match until {
        Until::Parse => tag == b'1',
        Until::Bind => tag == b'2',
        Until::Close => tag == b'3',
        Until::Describe => tag == b'T' || tag == b'n',
        Until::Execute => matches!(tag, b'C' | b'I' | b's'),
        Until::Ready | Until::Query => tag == b'Z',
    }
}

impl Exchange {
    pub fn push(&mut self, e: Expect) {
        self.queue.push_back(e);
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.ready.clear();
    }

    /// Entries still waiting for their reply.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.ready.is_empty()
    }

    /// Moves synthesized answers at the head of the queue to the output.
    fn release_synth(&mut self) {
        while let Some(Expect {
            action: Action::Synth(_),
            ..
        }) = self.queue.front()
        {
            if let Some(Expect {
                action: Action::Synth(frames),
                ..
            }) = self.queue.pop_front()
            {
                self.ready.extend(frames);
            }
        }
    }

    /// `next` for fan-out paths: their own call site, so that the hot
    /// path's `next` stays inlined (callgrind: ~6% more instructions per
    /// transaction when it was not).
    pub async fn next_fanout(&mut self, conn: &mut ServerConn) -> Result<Item, BackendError> {
        self.next(conn).await
    }

    /// The next item for the client, reading from the server as needed.
    pub async fn next(&mut self, conn: &mut ServerConn) -> Result<Item, BackendError> {
        Ok(match self.next_at(conn).await? {
            At::Front(_, len) => Item::Msg(conn.take_front(len)),
            At::Own(f) => Item::Msg(f),
            At::CopyIn(f) => Item::CopyIn(f),
            At::Done(z) => Item::Done(z.map(|len| conn.take_front(len))),
        })
    }

    /// `next` for the hot path: a server message for the client is left at
    /// the front of the connection's read buffer (`At::Front`) for the
    /// caller to relay and `consume`, not split off as a frame of its own.
    pub async fn next_at(&mut self, conn: &mut ServerConn) -> Result<At, BackendError> {
        loop {
            self.release_synth();
            if let Some(f) = self.ready.pop_front() {
                return Ok(At::Own(f));
            }
            let Some(head) = self.queue.front() else {
                return Ok(At::Done(None));
            };
            let (until, forward) = (head.until, matches!(head.action, Action::Forward));
            let uses = head.uses;
            let (tag, len) = conn.peek_message().await?;
            if tag == b'E' && until != Until::Query && until != Until::Ready {
                if let Some(id) = uses {
                    note_plan_changed(conn, id, len);
                }
                // Extended protocol: the server skips everything up to Sync.
                while let Some(e) = self.queue.front() {
                    if e.until == Until::Ready {
                        break;
                    }
                    self.queue.pop_front();
                }
                return Ok(At::Front(tag, len));
            }
            if tag == b'G' {
                return Ok(At::CopyIn(conn.take_front(len)));
            }
            if completes(until, tag) {
                let done = self.queue.pop_front().expect("head exists");
                if let Some(id) = done.prepares {
                    conn.prepared.insert(id);
                }
                if tag == b'Z' {
                    conn.status = conn.front(len).get(5).copied().unwrap_or(b'I');
                    if self.queue.is_empty() {
                        if forward {
                            return Ok(At::Done(Some(len)));
                        }
                        conn.consume(len);
                        return Ok(At::Done(None));
                    }
                    if forward {
                        // A simple Query followed by more work in one round.
                        return Ok(At::Front(tag, len));
                    }
                    conn.consume(len);
                    continue;
                }
            }
            // Pooled connections' notifications (a client's LISTEN ran on
            // one) are nobody's: clients get theirs from the notifier.
            if (forward && tag != b'A') || tag == b'E' {
                return Ok(At::Front(tag, len));
            }
            conn.consume(len);
        }
    }
}

/// What `next_at` hands to the caller.
#[derive(Debug)]
pub enum At {
    /// A message for the client: the first this many bytes of the
    /// connection's read buffer, with this tag; the caller consumes it.
    Front(u8, usize),
    /// A message of the proxy's own for the client.
    Own(Frame),
    /// The server waits for COPY data from the client (CopyInResponse, to forward).
    CopyIn(Frame),
    /// All entries answered: the final ReadyForQuery (at the front, this
    /// long) if the round ended with Sync/Query, or None after a Flush.
    Done(Option<usize>),
}

/// A Bind or Describe failed because a schema change broke the statement:
/// its result type changed, or a type it names is gone.
#[cold]
fn note_plan_changed(conn: &mut ServerConn, id: u64, len: usize) {
    let e = crate::protocol::messages::parse_error(&Frame::new(b'E', &conn.front(len)[5..]));
    let broken = (e.code == "0A000" && e.message == "cached plan must not change result type")
        || (e.code == "XX000" && e.message.starts_with("cache lookup failed for type"));
    if broken && !conn.broken.contains(&id) {
        conn.broken.push(id);
    }
}
