//! A pool of server connections for one node.
//!
//! At most `size` connections exist (idle + in use + being opened). A
//! connection given back while clients wait goes straight to the one that
//! has waited longest (first come, first served, as PgBouncer does), never
//! through the idle stack, so a newcomer cannot overtake a waiter. Waiting
//! costs one queue entry and no timer: one sweeper per pool, running only
//! while someone waits, fails waits older than `checkout_timeout`. A
//! checkout that is dropped without being healthy closes its connection
//! (its place goes to the next waiter) rather than hand a half-finished
//! transaction to the next client.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::conn::{BackendError, NodeTarget, ServerConn};
use crate::ring::NodeId;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub in_use: AtomicI64,
    pub idle: AtomicI64,
    pub waiting: AtomicI64,
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub checkout_timeouts: AtomicU64,
}

/// A client waiting for a connection.
struct Waiter {
    since: Instant,
    give: oneshot::Sender<Checkout>,
}

#[derive(Default)]
struct State {
    /// Boxed: a connection changes hands twice per transaction, and moving
    /// a pointer is cheaper than moving the connection.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<ServerConn>>,
    waiters: VecDeque<Waiter>,
    /// Connections that exist or are being opened.
    open: usize,
    /// A sweeper is running (there are or were waiters).
    sweeping: bool,
}

pub struct Pool {
    pub node: NodeId,
    pub target: NodeTarget,
    size: usize,
    checkout_timeout: Duration,
    state: Mutex<State>,
    pub stats: PoolStats,
    /// How long checkouts waited for a connection (those that waited).
    wait: prometheus::Histogram,
}

impl Pool {
    pub fn new(
        node: NodeId,
        target: NodeTarget,
        size: usize,
        checkout_timeout: Duration,
        wait: prometheus::Histogram,
    ) -> Arc<Self> {
        Arc::new(Self {
            node,
            target,
            size,
            checkout_timeout,
            state: Mutex::new(State {
                idle: Vec::with_capacity(size),
                ..Default::default()
            }),
            stats: PoolStats::default(),
            wait,
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// A server connection for one transaction.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, BackendError> {
        let mut c = match self.take() {
            Ok(c) => c,
            Err((since, given)) => {
                let waiting = Counted::new(&self.stats.waiting);
                let got = given.await;
                drop(waiting);
                let waited = since.elapsed();
                match got {
                    Ok(c) => {
                        self.wait.observe(waited.as_secs_f64());
                        c
                    }
                    // The sweeper dropped the wait: too long.
                    Err(_) => {
                        self.stats.checkout_timeouts.fetch_add(1, Ordering::Relaxed);
                        return Err(BackendError::PoolTimeout {
                            node: self.target.name.clone(),
                            waited_ms: waited.as_millis() as u64,
                            size: self.size,
                        });
                    }
                }
            }
        };
        if c.conn.is_none() {
            // A place without a connection: open one. Boxed: connecting is
            // rare and its future large. On failure the place is given back.
            match Box::pin(ServerConn::connect(&self.target)).await {
                Ok(conn) => {
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    c.conn = Some(Box::new(conn));
                }
                Err(e) => {
                    self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(c)
    }

    /// A connection (or a place to open one) now, or a place in the queue.
    #[allow(clippy::type_complexity)]
    fn take(self: &Arc<Self>) -> Result<Checkout, (Instant, oneshot::Receiver<Checkout>)> {
        let mut s = self.state.lock();
        while let Some(mut c) = s.idle.pop() {
            self.stats.idle.fetch_sub(1, Ordering::Relaxed);
            if !c.server_left() {
                drop(s);
                return Ok(Checkout::new(self, Some(c)));
            }
            // Terminated while idle: dropped, never handed to a client.
            s.open -= 1;
        }
        if s.open < self.size {
            s.open += 1;
            drop(s);
            return Ok(Checkout::new(self, None));
        }
        let (give, given) = oneshot::channel();
        let since = Instant::now();
        s.waiters.push_back(Waiter { since, give });
        if !s.sweeping {
            s.sweeping = true;
            tokio::spawn(self.clone().sweep());
        }
        Err((since, given))
    }

    /// Gives a connection back (None: only its place): to the longest
    /// waiting client still there, else to the idle stack.
    fn give_back(self: &Arc<Self>, mut conn: Option<Box<ServerConn>>) {
        loop {
            let w = {
                let mut s = self.state.lock();
                match s.waiters.pop_front() {
                    Some(w) => w,
                    None => {
                        match conn {
                            Some(c) => {
                                s.idle.push(c);
                                self.stats.idle.fetch_add(1, Ordering::Relaxed);
                            }
                            None => s.open -= 1,
                        }
                        return;
                    }
                }
            };
            // Outside the lock: a waiter that left hands the connection
            // back here, and the next one is tried.
            match w.give.send(Checkout::new(self, conn)) {
                Ok(()) => return,
                Err(mut back) => conn = back.disarm(),
            }
        }
    }

    /// Runs while clients wait: fails waits older than the checkout
    /// timeout and forgets waiters that left.
    async fn sweep(self: Arc<Self>) {
        let tick = (self.checkout_timeout / 20)
            .clamp(Duration::from_millis(5), Duration::from_millis(250));
        loop {
            tokio::time::sleep(tick).await;
            let mut expired = Vec::new();
            let mut s = self.state.lock();
            while s
                .waiters
                .front()
                .is_some_and(|w| w.since.elapsed() >= self.checkout_timeout)
            {
                expired.extend(s.waiters.pop_front());
            }
            s.waiters.retain(|w| !w.give.is_closed());
            let done = s.waiters.is_empty();
            if done {
                s.sweeping = false;
            }
            drop(s);
            // Dropping a waiter's sender tells it it timed out.
            drop(expired);
            if done {
                return;
            }
        }
    }

    /// Connects once to check the node is reachable; the connection is kept.
    pub async fn warm_up(self: &Arc<Self>) -> Result<Vec<(String, String)>, BackendError> {
        let c = self.checkout().await?;
        Ok(c.params
            .pairs()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Closes idle connections (e.g. after a node restarts).
    pub fn clear_idle(&self) {
        let mut s = self.state.lock();
        let n = std::mem::take(&mut s.idle).len();
        s.open -= n;
        self.stats.idle.fetch_sub(n as i64, Ordering::Relaxed);
    }
}

/// One more in a gauge while it lives (also if the wait is abandoned).
struct Counted<'a>(&'a AtomicI64);

impl<'a> Counted<'a> {
    fn new(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A checked-out server connection; goes back to the pool on drop when
/// clean (closed otherwise, its place given back).
pub struct Checkout {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
    /// False once its connection was taken back by the pool itself.
    armed: bool,
}

impl Checkout {
    fn new(pool: &Arc<Pool>, conn: Option<Box<ServerConn>>) -> Self {
        pool.stats.in_use.fetch_add(1, Ordering::Relaxed);
        Self {
            conn,
            pool: pool.clone(),
            armed: true,
        }
    }

    /// Takes the connection out without giving it back.
    fn disarm(&mut self) -> Option<Box<ServerConn>> {
        self.armed = false;
        self.pool.stats.in_use.fetch_sub(1, Ordering::Relaxed);
        self.conn.take()
    }

    pub fn node(&self) -> NodeId {
        self.pool.node
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Deref for Checkout {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.pool.stats.in_use.fetch_sub(1, Ordering::Relaxed);
        let conn = self.conn.take().filter(|c| c.reusable && c.status == b'I');
        self.pool.give_back(conn);
    }
}
