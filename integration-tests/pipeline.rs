//! Pipelines as drivers send them: several Parse/Bind/Execute with Flush in
//! between and one Sync, with an error in the middle. The proxy must answer
//! exactly as a server does (later statements skipped, Sync answered, the
//! connection goes on), through pooling and through fan-out; each sequence
//! runs against a direct server and through shardcast, and the answers
//! must be the same.

use std::time::Duration;

use crate::harness::wire::{summary, Msg, Wire};
use crate::harness::{Cluster, Proxy};

/// Messages after a Flush, up to the end of the statement (its
/// CommandComplete, or an error).
fn until_complete(w: &mut Wire) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        let m = w.recv();
        let end = matches!(m.tag, b'C' | b'E' | b'I' | b's');
        out.push(m);
        if end {
            return out;
        }
    }
}

/// `first` · `bad` · `skipped` (each Parse/Bind/Execute + Flush) · Sync ·
/// `last`, as the issue describes it; the answers in text form.
fn error_pipeline(w: &mut Wire, first: &str, bad: &str, skipped: &str, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    w.pbe("", first);
    w.flush();
    seen.extend(summary(&until_complete(w)));
    w.pbe("", bad);
    w.flush();
    seen.extend(summary(&until_complete(w)));
    w.pbe("", skipped);
    w.flush();
    seen.extend(summary(&w.drain(Duration::from_millis(300))));
    w.sync();
    seen.extend(summary(&w.until_ready()));
    w.pbe("", last);
    w.sync();
    seen.extend(summary(&w.until_ready()));
    seen
}

#[test]
fn an_error_mid_pipeline_skips_to_sync_as_on_a_server() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::builder().pool_size(2).start(&cluster);
    let node = &cluster.nodes[0];
    let run = |port: u16, db: &str| {
        let mut w = Wire::connect(port, db);
        let mut seen = error_pipeline(
            &mut w,
            "select 1",
            "select * from doesnotexist",
            "select 'aborted'",
            "select 2",
        );
        // The same inside an explicit transaction: the Sync leaves it failed.
        w.query("BEGIN");
        seen.extend(summary(&w.until_ready()));
        seen.extend(error_pipeline(
            &mut w,
            "select 3",
            "select 1/0",
            "select 'aborted'",
            "select 4",
        ));
        w.query("ROLLBACK");
        seen.extend(summary(&w.until_ready()));
        w.query("select 5");
        seen.extend(summary(&w.until_ready()));
        seen
    };
    let direct = run(node.port, &cluster.db);
    let proxied = run(proxy.port, "app");
    assert_eq!(
        direct[..10],
        [
            "1",
            "2",
            "D[1]",
            "C SELECT 1",
            "E 42P01",
            "Z I",
            "1",
            "2",
            "D[2]",
            "C SELECT 1"
        ],
        "{direct:?}"
    );
    assert!(direct.contains(&"Z E".to_string()), "{direct:?}");
    assert_eq!(proxied, direct);
    // Several clients pipelining at once on a pool of two: none hangs, and
    // the pool is whole afterwards.
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let port = proxy.port;
            std::thread::spawn(move || {
                let mut w = Wire::connect(port, "app");
                for _ in 0..5 {
                    let seen =
                        error_pipeline(&mut w, "select 1", "select x", "select 2", "select 3");
                    assert_eq!(seen[4], "E 42703", "{seen:?}");
                    assert_eq!(seen[5], "Z I", "{seen:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(proxy.psql(&["-Atc", "select 6"]).stdout, b"6\n");
}

#[test]
fn an_error_mid_pipeline_on_every_node_skips_to_sync() {
    let cluster = Cluster::start(2);
    cluster.on_all("CREATE TABLE accounts (id bigint PRIMARY KEY, owner text)");
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .pool_size(2)
        .start(&cluster);
    let node = &cluster.nodes[0];
    let run = |port: u16, db: &str| {
        let mut w = Wire::connect(port, db);
        // Reads without the key: concatenated, then merged.
        let mut seen = error_pipeline(
            &mut w,
            "select id from accounts",
            "select nosuch from accounts",
            "select 'aborted' from accounts",
            "select count(*) from accounts",
        );
        seen.extend(error_pipeline(
            &mut w,
            "select count(*) from accounts",
            "select nosuch from accounts where id > 0",
            "select 'aborted'",
            "select owner from accounts where id = 7",
        ));
        seen
    };
    let direct = run(node.port, &cluster.db);
    assert_eq!(
        direct[..7],
        ["1", "2", "C SELECT 0", "E 42703", "Z I", "1", "2"],
        "{direct:?}"
    );
    let proxied = run(proxy.port, "app");
    assert_eq!(proxied, direct);
    assert_eq!(
        proxy
            .psql(&["-Atc", "select count(*) from accounts"])
            .stdout,
        b"0\n"
    );
}

#[test]
fn a_statement_the_proxy_refuses_mid_pipeline_rolls_the_pipeline_back() {
    let cluster = Cluster::start(1);
    cluster.on_all("CREATE TABLE accounts (id bigint PRIMARY KEY, owner text)");
    cluster.on_all("CREATE TABLE plain (n int)");
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .pool_size(1)
        .start(&cluster);
    let mut w = Wire::connect(proxy.port, "app");
    let seen = error_pipeline(
        &mut w,
        "insert into plain values (1)",
        // No shard key: refused by the proxy, not by the server.
        "insert into accounts (owner) values ('x')",
        "insert into plain values (2)",
        "select count(*) from plain",
    );
    assert_eq!(
        seen,
        [
            "1",
            "2",
            "C INSERT 0 1",
            "E 0A000",
            "Z I",
            "1",
            "2",
            "D[0]",
            "C SELECT 1",
            "Z I"
        ],
        "the first insert belongs to the failed pipeline's implicit transaction"
    );
}

#[test]
fn a_long_pipeline_hears_of_its_error_before_its_sync() {
    let cluster = Cluster::start(1);
    cluster.on_all("CREATE TABLE rows (id int PRIMARY KEY, b text)");
    let proxy = Proxy::builder().start(&cluster);
    let mut w = Wire::connect(proxy.port, "app");
    w.parse("ins", "INSERT INTO rows VALUES ($1::int, $2)");
    let big = "x".repeat(32 * 1024);
    // The second row breaks the key; a driver's executemany writes on and
    // must learn it while still writing, as from a server.
    let mut heard = None;
    for i in 0..128 {
        let id = if i < 2 {
            "1".to_string()
        } else {
            i.to_string()
        };
        w.bind("", "ins", &[Some(&id), Some(&big)]);
        w.execute("");
        if i % 16 == 15 {
            let got = w.drain(Duration::from_millis(200));
            if let Some(e) = got.iter().find(|m| m.tag == b'E') {
                heard = Some((i, e.summary()));
                break;
            }
        }
    }
    let (at, error) = heard.expect("the error arrives before the Sync");
    assert_eq!(error, "E 23505");
    assert!(at < 127, "heard at row {at}");
    w.sync();
    let end = summary(&w.until_ready());
    assert_eq!(end.last().map(String::as_str), Some("Z I"), "{end:?}");
    assert_eq!(
        proxy.psql(&["-Atc", "select count(*) from rows"]).stdout,
        b"0\n"
    );
}
