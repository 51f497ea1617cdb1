//! CancelRequest support. Each client gets a proxy-made (pid, secret); while
//! it runs a statement its slot names the server connection(s) doing the
//! work, so a cancel on a new connection can be forwarded there.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::protocol::startup::encode_cancel;

#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: std::sync::Arc<str>,
    pub pid: i32,
    pub secret: i32,
}

/// What one client is running right now: set and cleared around every
/// transaction, so the usual one target sits inline (no second allocation
/// to touch).
pub type CancelSlot = Arc<Mutex<smallvec::SmallVec<[CancelTarget; 1]>>>;

#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<(i32, i32), CancelSlot>>,
}

impl CancelRegistry {
    /// Registers a new client; returns its key and slot.
    pub fn register(&self) -> ((i32, i32), CancelSlot) {
        let slot: CancelSlot = Arc::default();
        let mut map = self.clients.lock();
        loop {
            let key = (rand::random::<i32>() & 0x7fff_ffff, rand::random::<i32>());
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry(key) {
                v.insert(slot.clone());
                return (key, slot);
            }
        }
    }

    pub fn unregister(&self, key: (i32, i32)) {
        self.clients.lock().remove(&key);
    }

    /// Forwards a cancel to whatever the client is running. Unknown keys are
    /// ignored, as PostgreSQL does.
    pub async fn cancel(&self, key: (i32, i32)) -> usize {
        let targets = match self.clients.lock().get(&key) {
            Some(slot) => slot.lock().clone(),
            None => return 0,
        };
        let mut sent = 0;
        for t in targets {
            if let Ok(mut s) = tokio::net::TcpStream::connect(&*t.addr).await {
                if s.write_all(&encode_cancel(t.pid, t.secret)).await.is_ok() {
                    sent += 1;
                    // The server closes the connection once it has signalled
                    // the backend: only then is the cancel done, for the
                    // client too (as with libpq's PQcancel).
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        s.read(&mut [0u8; 1]),
                    )
                    .await;
                }
            }
        }
        sent
    }
}
