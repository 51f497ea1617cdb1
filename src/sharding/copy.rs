//! Streaming a partition's rows from one node to another with binary COPY:
//! `COPY (SELECT …) TO STDOUT` on the source piped chunk by chunk into
//! `COPY … FROM STDIN` on the target — never held in memory — throttled to
//! `[migration] copy_rate` bytes per second so the source keeps serving,
//! and counted (rows, bytes) as it goes for the progress report.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_postgres::GenericClient;

use crate::protocol::copy::{Format, Options, Piece, Splitter};

/// Rows and bytes moved so far, across every COPY of one migration.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub rows: u64,
    pub bytes: u64,
}

/// Paces a copy to at most `rate` bytes per second (0: no limit).
pub struct Throttle {
    rate: u64,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    pub fn new(rate: u64) -> Self {
        Self {
            rate,
            started: Instant::now(),
            bytes: 0,
        }
    }

    async fn pace(&mut self, n: u64) {
        self.bytes += n;
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed + Duration::from_millis(5) {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// Pipes `out_sql` (a `COPY … TO STDOUT (FORMAT binary)`) on `src` into
/// `in_sql` (a `COPY … FROM STDIN (FORMAT binary)`) on `dst`; calls
/// `progress` about every 64 KB. Returns the rows the target took.
pub async fn pipe<S, D>(
    src: &S,
    dst: &D,
    out_sql: &str,
    in_sql: &str,
    throttle: &mut Throttle,
    moved: &mut Moved,
    progress: &mut (dyn FnMut(Moved) + Send),
) -> Result<u64, String>
where
    S: GenericClient + Sync,
    D: GenericClient + Sync,
{
    let reader = src
        .client()
        .copy_out(out_sql)
        .await
        .map_err(|e| format!("source: {e}"))?;
    let writer = dst
        .client()
        .copy_in(in_sql)
        .await
        .map_err(|e| format!("target: {e}"))?;
    futures_util::pin_mut!(reader);
    futures_util::pin_mut!(writer);
    // Counts rows in the stream as it passes (the bytes are not kept).
    let mut rows = Splitter::new(Options::new(Format::Binary), 0);
    let mut since = 0u64;
    while let Some(chunk) = reader.next().await {
        let chunk = chunk.map_err(|e| format!("source: {e}"))?;
        let n = chunk.len() as u64;
        let mut counted = 0;
        rows.feed(&chunk, &mut |p| {
            if matches!(p, Piece::Row { .. }) {
                counted += 1
            }
        })
        .map_err(|e| format!("source sent a malformed binary COPY stream: {e}"))?;
        writer
            .send(chunk)
            .await
            .map_err(|e| format!("target: {e}"))?;
        moved.rows += counted;
        moved.bytes += n;
        since += n;
        if since >= 64 * 1024 {
            since = 0;
            progress(*moved);
        }
        throttle.pace(n).await;
    }
    let taken = writer.finish().await.map_err(|e| format!("target: {e}"))?;
    progress(*moved);
    Ok(taken)
}
