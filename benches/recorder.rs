//! One `Recorder::record` call in nanoseconds (single thread and two threads
//! hammering the same partition), against an empty loop as the baseline.
//!
//! Run: `cargo bench --bench recorder`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use shardcast::analyzer::{Recorder, Request, RequestKind};

fn main() {
    let n = 20_000_000u64;
    let rec = Arc::new(Recorder::new(true, 60));
    rec.ensure(0..1024);
    let src = rec.source("bench", "bench");
    let req = Request {
        kind: RequestKind::Read,
        rows: 1,
        bytes_in: 64,
        bytes_out: 128,
        latency_us: 90,
        error: false,
    };

    let t = Instant::now();
    for i in 0..n {
        black_box(&req);
        black_box(i);
    }
    let base = t.elapsed().as_nanos() as f64 / n as f64;

    let t = Instant::now();
    for i in 0..n {
        rec.record(Some(black_box((i % 1024) as u32)), src, black_box(&req));
    }
    let one = t.elapsed().as_nanos() as f64 / n as f64;

    let threads: Vec<_> = (0..2)
        .map(|_| {
            let rec = rec.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                for _ in 0..n / 2 {
                    rec.record(Some(black_box(7)), src, black_box(&req));
                }
                t.elapsed().as_nanos() as f64 / (n / 2) as f64
            })
        })
        .collect();
    let contended: f64 = threads.into_iter().map(|h| h.join().unwrap()).sum::<f64>() / 2.0;
    let off = Recorder::new(false, 60);
    let t = Instant::now();
    for i in 0..n {
        off.record(Some(black_box((i % 1024) as u32)), src, black_box(&req));
    }
    let disabled = t.elapsed().as_nanos() as f64 / n as f64;
    println!("record(): {one:.1} ns per call (1 thread, 1024 partitions); {contended:.1} ns with 2 threads on one partition; {disabled:.1} ns when disabled; empty loop {base:.1} ns");
}
