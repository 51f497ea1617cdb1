//! LISTEN/NOTIFY under transaction pooling.
//!
//! A client's `LISTEN` cannot live on a pooled server connection: the
//! connection goes back to the pool after the statement, and notifications
//! for it would reach whoever holds it next, or nobody. So the proxy keeps
//! one listening connection per node of its own, which `LISTEN`s on every
//! channel some client listens on, and hands each notification to those
//! clients. `NOTIFY` and `pg_notify()` run on any pooled connection as
//! usual; the server delivers to the listening connection. A client is
//! told of notifications while it is idle outside a transaction, as a
//! server tells it; its own notifications carry its own (proxy-made)
//! process id, as on a server.
//!
//! A listening connection that dies is reconnected and listens again;
//! notifications sent in between are lost (as for a server restart).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::backend::{NodeTarget, ServerConn};
use crate::protocol::messages::encode_query;
use crate::protocol::Frame;

type Subscribers = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Frame>)>>>>;

/// Server process id → the process id of the client that last sent a
/// notification through it, so that listeners see the sender's pid as
/// that client knows it.
type Senders = Arc<Mutex<HashMap<i32, i32>>>;

enum Cmd {
    Listen(String, oneshot::Sender<Result<(), String>>),
    Unlisten(String),
}

/// The proxy's listening connections, one per node, started on first use.
pub struct Notifier {
    targets: Vec<NodeTarget>,
    tasks: Mutex<Vec<Option<mpsc::UnboundedSender<Cmd>>>>,
    subs: Subscribers,
    senders: Senders,
}

impl Notifier {
    pub fn new(targets: Vec<NodeTarget>) -> Self {
        Notifier {
            tasks: Mutex::new(vec![None; targets.len()]),
            targets,
            subs: Arc::default(),
            senders: Arc::default(),
        }
    }

    /// A client (`client_pid`) may have sent notifications through the
    /// server connection `server_pid`.
    pub fn sent_by(&self, server_pid: i32, client_pid: i32) {
        let mut senders = self.senders.lock();
        if senders.len() > 10_000 {
            senders.clear();
        }
        senders.insert(server_pid, client_pid);
    }

    fn task(&self, node: usize) -> mpsc::UnboundedSender<Cmd> {
        let mut tasks = self.tasks.lock();
        if let Some(tx) = tasks[node].as_ref().filter(|t| !t.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let target = self.targets[node].clone();
        tokio::spawn(listen_on(
            target,
            self.subs.clone(),
            self.senders.clone(),
            rx,
        ));
        tasks[node] = Some(tx.clone());
        tx
    }

    /// Subscribes a session to a channel; returns once every node listens.
    pub async fn listen(
        &self,
        session: u64,
        tx: &mpsc::UnboundedSender<Frame>,
        channel: &str,
    ) -> Result<(), String> {
        let first = {
            let mut subs = self.subs.lock();
            let list = subs.entry(channel.to_string()).or_default();
            if list.iter().any(|(s, _)| *s == session) {
                return Ok(());
            }
            list.push((session, tx.clone()));
            list.len() == 1
        };
        if !first {
            return Ok(());
        }
        for node in 0..self.targets.len() {
            let (ack, done) = oneshot::channel();
            let _ = self.task(node).send(Cmd::Listen(channel.to_string(), ack));
            let r = match tokio::time::timeout(Duration::from_secs(10), done).await {
                Ok(Ok(r)) => r,
                _ => Err(format!(
                    "node {}: no listening connection",
                    self.targets[node].name
                )),
            };
            if let Err(e) = r {
                self.unlisten(session, Some(channel));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unsubscribes a session from a channel (None: from every channel).
    pub fn unlisten(&self, session: u64, channel: Option<&str>) {
        let mut emptied = Vec::new();
        {
            let mut subs = self.subs.lock();
            subs.retain(|ch, list| {
                if channel.is_none_or(|c| c == ch) {
                    list.retain(|(s, _)| *s != session);
                }
                if list.is_empty() {
                    emptied.push(ch.clone());
                    return false;
                }
                true
            });
        }
        for ch in emptied {
            for node in 0..self.targets.len() {
                if let Some(tx) = &self.tasks.lock()[node] {
                    let _ = tx.send(Cmd::Unlisten(ch.clone()));
                }
            }
        }
    }
}

/// `"name"`, quoted for LISTEN/UNLISTEN.
fn quoted(channel: &str) -> String {
    format!("\"{}\"", channel.replace('"', "\"\""))
}

/// The channel a NotificationResponse is for.
pub fn notification_channel(f: &Frame) -> Option<&str> {
    let body = f.body().get(4..)?;
    let end = body.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&body[..end]).ok()
}

/// One node's listening connection: runs LISTEN/UNLISTEN as sessions ask
/// and hands out notifications; reconnects (and listens again) when lost.
async fn listen_on(
    target: NodeTarget,
    subs: Subscribers,
    senders: Senders,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let hub = (subs, senders);
    let subs = &hub;
    let mut conn: Option<ServerConn> = None;
    let mut channels: HashSet<String> = HashSet::new();
    info!(node = %target.name, "notification listener started");
    loop {
        if conn.is_none() {
            match ServerConn::connect(&target).await {
                Ok(mut c) => {
                    let mut ok = true;
                    for ch in &channels {
                        ok &= run(&mut c, &format!("LISTEN {}", quoted(ch)), subs)
                            .await
                            .is_ok();
                    }
                    conn = ok.then_some(c);
                }
                Err(e) => {
                    warn!(node = %target.name, error = %e, "notification listener cannot connect")
                }
            }
        }
        let cmd = match conn.as_mut() {
            Some(c) => tokio::select! {
                cmd = rx.recv() => cmd,
                f = c.read_frame() => {
                    match f {
                        Ok(f) => dispatch(&f, subs),
                        Err(e) => {
                            warn!(node = %target.name, error = %e, "notification listener lost its connection");
                            conn = None;
                        }
                    }
                    continue;
                }
            },
            None => match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                Ok(cmd) => cmd,
                Err(_) => continue,
            },
        };
        let Some(cmd) = cmd else {
            info!(node = %target.name, "notification listener stopped");
            return;
        };
        let (sql, ack) = match cmd {
            Cmd::Listen(ch, ack) => {
                let sql = format!("LISTEN {}", quoted(&ch));
                channels.insert(ch);
                (sql, Some(ack))
            }
            Cmd::Unlisten(ch) => {
                let sql = format!("UNLISTEN {}", quoted(&ch));
                channels.remove(&ch);
                (sql, None)
            }
        };
        let r = match conn.as_mut() {
            Some(c) => run(c, &sql, subs).await,
            None => Err("cannot connect".to_string()),
        };
        if r.is_err() {
            conn = None;
        }
        if let Some(ack) = ack {
            let _ = ack.send(r.map_err(|e| format!("node {}: {e}", target.name)));
        }
    }
}

/// Runs one statement on the listening connection; notifications that
/// arrive meanwhile are handed out.
async fn run(c: &mut ServerConn, sql: &str, subs: &(Subscribers, Senders)) -> Result<(), String> {
    c.write_all(&encode_query(sql).bytes)
        .await
        .map_err(|e| e.to_string())?;
    let mut failed = None;
    loop {
        let f = c.read_frame().await.map_err(|e| e.to_string())?;
        match f.tag {
            b'A' => dispatch(&f, subs),
            b'E' => failed = Some(crate::protocol::messages::parse_error(&f).message),
            b'Z' => return failed.map_or(Ok(()), Err),
            _ => {}
        }
    }
}

fn dispatch(f: &Frame, (subs, senders): &(Subscribers, Senders)) {
    if f.tag != b'A' {
        return;
    }
    let Some(channel) = notification_channel(f) else {
        return;
    };
    let server_pid = i32::from_be_bytes(f.body()[..4].try_into().expect("4 bytes"));
    let f = match senders.lock().get(&server_pid) {
        Some(client_pid) => {
            let mut body = f.body().to_vec();
            body[..4].copy_from_slice(&client_pid.to_be_bytes());
            Frame::new(b'A', &body)
        }
        None => f.clone(),
    };
    if let Some(list) = subs.lock().get(channel) {
        for (_, tx) in list {
            let _ = tx.send(f.clone());
        }
    }
}
