//! A pool of server connections for one node.
//!
//! A semaphore bounds the connections (in use + idle); idle ones sit on a
//! small stack behind a mutex held for a push or a pop only. A checkout that
//! is dropped without being healthy closes its connection rather than hand
//! a half-finished transaction to the next client.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

pub struct Pool {
    pub node: NodeId,
    pub target: NodeTarget,
    size: usize,
    checkout_timeout: Duration,
    /// Boxed: a connection changes hands twice per transaction, and moving
    /// a pointer is cheaper than moving the connection.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    permits: Arc<Semaphore>,
    pub stats: PoolStats,
}

impl Pool {
    pub fn new(
        node: NodeId,
        target: NodeTarget,
        size: usize,
        checkout_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            node,
            target,
            size,
            checkout_timeout,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Arc::new(Semaphore::new(size)),
            stats: PoolStats::default(),
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// A server connection for one transaction.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, BackendError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.stats.waiting.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let got = tokio::time::timeout(
                    self.checkout_timeout,
                    self.permits.clone().acquire_owned(),
                )
                .await;
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                match got {
                    Ok(Ok(p)) => p,
                    _ => {
                        self.stats.checkout_timeouts.fetch_add(1, Ordering::Relaxed);
                        return Err(BackendError::PoolTimeout {
                            node: self.target.name.clone(),
                            waited_ms: started.elapsed().as_millis() as u64,
                            size: self.size,
                        });
                    }
                }
            }
        };
        let idle = loop {
            let Some(mut c) = self.idle.lock().pop() else {
                break None;
            };
            if !c.server_left() {
                break Some(c);
            }
            // Terminated while idle: dropped, never handed to a client.
            self.stats.idle.fetch_sub(1, Ordering::Relaxed);
        };
        let conn = match idle {
            Some(c) => {
                self.stats.idle.fetch_sub(1, Ordering::Relaxed);
                c
            }
            // Boxed: connecting is rare and its future large.
            None => match Box::pin(ServerConn::connect(&self.target)).await {
                Ok(c) => {
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    Box::new(c)
                }
                Err(e) => {
                    self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            },
        };
        self.stats.in_use.fetch_add(1, Ordering::Relaxed);
        Ok(Checkout {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
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
        let n = std::mem::take(&mut *self.idle.lock()).len();
        self.stats.idle.fetch_sub(n as i64, Ordering::Relaxed);
    }
}

/// A checked-out server connection; returns to the pool on drop when clean.
pub struct Checkout {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Checkout {
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
        self.pool.stats.in_use.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = self.conn.take() {
            if c.reusable && c.status == b'I' {
                self.pool.idle.lock().push(c);
                self.pool.stats.idle.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
