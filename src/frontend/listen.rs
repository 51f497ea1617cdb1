//! A session's side of LISTEN/NOTIFY (see `notify`): `LISTEN` and
//! `UNLISTEN` are answered here, by subscribing the session to the proxy's
//! listening connections, and notifications are written to the client
//! while it is idle outside a transaction.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::error::FrontendError;
use super::session::Session;
use crate::protocol::messages::{command_complete, ready_for_query};
use crate::protocol::{sqlstate, try_frame, Frame};

/// `LISTEN channel`, `UNLISTEN channel` or `UNLISTEN *` (None).
#[derive(Debug, PartialEq, Eq)]
pub enum Listen {
    Listen(String),
    Unlisten(Option<String>),
}

/// Reads a LISTEN/UNLISTEN statement; None for anything else.
pub fn parse_listen(sql: &str) -> Option<Listen> {
    let sql = sql.trim().trim_end_matches(';').trim();
    let (first, rest) = sql.split_once(char::is_whitespace)?;
    let rest = rest.trim();
    let name = || match rest.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(q) => Some(q.replace("\"\"", "\"")),
        None if !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '$') =>
        {
            Some(rest.to_lowercase())
        }
        None => None,
    };
    if first.eq_ignore_ascii_case("listen") {
        return name().map(Listen::Listen);
    }
    if first.eq_ignore_ascii_case("unlisten") {
        if rest == "*" {
            return Some(Listen::Unlisten(None));
        }
        return name().map(|n| Listen::Unlisten(Some(n)));
    }
    None
}

/// A session's subscription handle.
pub struct Notes {
    id: u64,
    tx: mpsc::UnboundedSender<Frame>,
    rx: mpsc::UnboundedReceiver<Frame>,
    channels: usize,
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

impl Session {
    /// A single LISTEN/UNLISTEN statement, answered here.
    pub(super) async fn listen_command(&mut self, l: Listen) -> Result<(), FrontendError> {
        let tag = match &l {
            Listen::Listen(_) => "LISTEN",
            Listen::Unlisten(_) => "UNLISTEN",
        };
        self.apply_listen(l).await?;
        self.write(&command_complete(tag));
        self.write(&ready_for_query(self.status()));
        Ok(())
    }

    /// Subscribes or unsubscribes the session.
    pub(super) async fn apply_listen(&mut self, l: Listen) -> Result<(), FrontendError> {
        let notifier = &self.shared.notifier;
        match l {
            Listen::Listen(channel) => {
                let notes = self.notes.get_or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    Notes {
                        id: SESSIONS.fetch_add(1, Ordering::Relaxed),
                        tx,
                        rx,
                        channels: 0,
                    }
                });
                notes.channels += 1;
                notifier
                    .listen(notes.id, &notes.tx, &channel)
                    .await
                    .map_err(|e| {
                        FrontendError::route(
                            sqlstate::CONNECTION_FAILURE,
                            format!("LISTEN {channel}: {e}"),
                            "retry when the node is back".into(),
                        )
                    })
            }
            Listen::Unlisten(channel) => {
                if let Some(notes) = &self.notes {
                    notifier.unlisten(notes.id, channel.as_deref());
                }
                Ok(())
            }
        }
    }

    /// The next client message; while the client is idle outside a
    /// transaction, its notifications are written to it meanwhile.
    pub(super) async fn next_frame(&mut self) -> Result<Option<Frame>, FrontendError> {
        if self.notes.is_none() || self.in_transaction() {
            return self.read_frame().await;
        }
        loop {
            if let Some(f) = try_frame(&mut self.rbuf)? {
                return Ok(Some(f));
            }
            let notes = self.notes.as_mut().expect("checked above");
            tokio::select! {
                n = notes.rx.recv() => {
                    if let Some(n) = n {
                        self.notify_client(n);
                        while let Ok(n) = self.notes.as_mut().expect("present").rx.try_recv() {
                            self.notify_client(n);
                        }
                        self.flush().await?;
                    }
                }
                r = self.rd.read_buf(&mut self.rbuf) => {
                    if r? == 0 {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// A notification for the client; one the client itself sent (through
    /// the server connection it last used) carries the client's own pid.
    fn notify_client(&mut self, n: Frame) {
        let pid = n
            .body()
            .get(..4)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")));
        if pid == Some(self.last_pid.load(Ordering::Relaxed)) {
            let mut body = n.body().to_vec();
            body[..4].copy_from_slice(&self.key_pid.to_be_bytes());
            self.write(&Frame::new(b'A', &body));
        } else {
            self.write(&n);
        }
    }

    /// Before statements run: if they may notify, listeners will see this
    /// client's pid as the sender (see `Notifier::sent_by`): recorded for
    /// the connection they run on (at checkout, `set_cancel`, or the
    /// attached one now).
    pub(super) fn note_sender(&mut self, notifies: bool) {
        self.may_notify = notifies;
        if self.may_notify {
            if let Some(c) = &self.attached {
                self.shared.notifier.sent_by(c.pid, self.key_pid);
            }
        }
    }

    /// The session ends: its subscriptions go.
    pub(super) fn forget_listens(&mut self) {
        if let Some(notes) = self.notes.take() {
            if notes.channels > 0 {
                self.shared.notifier.unlisten(notes.id, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listen_forms() {
        assert_eq!(
            parse_listen("LISTEN Foo"),
            Some(Listen::Listen("foo".into()))
        );
        assert_eq!(
            parse_listen("listen \"Foo\";"),
            Some(Listen::Listen("Foo".into()))
        );
        assert_eq!(parse_listen("UNLISTEN *"), Some(Listen::Unlisten(None)));
        assert_eq!(
            parse_listen("unlisten x"),
            Some(Listen::Unlisten(Some("x".into())))
        );
        assert_eq!(parse_listen("LISTEN a b"), None);
        assert_eq!(parse_listen("SELECT 1"), None);
    }
}
