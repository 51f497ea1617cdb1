//! Client prepared statements as on a server, across pooled connections:
//! `DEALLOCATE name`, `DEALLOCATE ALL`, `DISCARD ALL`, and a schema change
//! that alters a statement's result type (the server's own error, then a
//! re-prepare that works).

use crate::harness::wire::{summary, Wire};
use crate::harness::{Cluster, Proxy};

/// Named statements by the extended protocol, removed by SQL; every answer
/// in text form.
fn deallocations(w: &mut Wire) -> Vec<String> {
    let mut seen = Vec::new();
    let mut step = |w: &mut Wire, label: &str| {
        seen.push(format!("> {label}"));
        seen.extend(summary(&w.until_ready()));
    };
    let run = |w: &mut Wire, name: &str| {
        w.bind("", name, &[]);
        w.execute("");
        w.sync();
    };
    w.parse("foo", "SELECT 1");
    w.parse("bar", "SELECT 2");
    w.sync();
    step(w, "parse foo, bar");
    run(w, "foo");
    step(w, "run foo");
    // SQL EXECUTE of protocol statements, simple and extended.
    w.query("EXECUTE bar");
    step(w, "EXECUTE bar");
    w.pbe("", "EXECUTE foo");
    w.sync();
    step(w, "EXECUTE foo (extended)");
    w.query("DEALLOCATE foo");
    step(w, "DEALLOCATE foo");
    run(w, "foo");
    step(w, "run foo");
    run(w, "bar");
    step(w, "run bar");
    w.query("DEALLOCATE nosuch");
    step(w, "DEALLOCATE nosuch");
    w.query("DEALLOCATE ALL");
    step(w, "DEALLOCATE ALL");
    run(w, "bar");
    step(w, "run bar");
    // The same names again: new statements, whichever connection runs them.
    w.parse("foo", "SELECT 1");
    w.parse("bar", "SELECT 2");
    w.sync();
    step(w, "parse foo, bar");
    run(w, "foo");
    step(w, "run foo");
    w.query("DISCARD ALL");
    step(w, "DISCARD ALL");
    run(w, "bar");
    step(w, "run bar");
    w.parse("bar", "SELECT 3");
    w.sync();
    step(w, "parse bar");
    run(w, "bar");
    step(w, "run bar");
    seen
}

#[test]
fn deallocate_and_discard_all_as_on_a_server() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::builder().pool_size(2).start(&cluster);
    let direct = deallocations(&mut Wire::connect(cluster.nodes[0].port, &cluster.db));
    for must in [
        "C DEALLOCATE",
        "E 26000",
        "C DEALLOCATE ALL",
        "C DISCARD ALL",
        "D[3]",
    ] {
        assert!(direct.contains(&must.to_string()), "{must}: {direct:#?}");
    }
    // Another client keeps the pooled connections busy in between.
    let mut other = Wire::connect(proxy.port, "app");
    other.query("SELECT 1");
    other.until_ready();
    let proxied = deallocations(&mut Wire::connect(proxy.port, "app"));
    assert_eq!(proxied, direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_fails_a_prepared_statement_once_then_it_is_prepared_again() {
    let cluster = Cluster::start(1);
    cluster.on_all("CREATE TABLE items (id int PRIMARY KEY, name text)");
    cluster.on_all("INSERT INTO items VALUES (1, 'one')");
    // One server connection: the clients' statements share it.
    let proxy = Proxy::builder().pool_size(1).start(&cluster);
    let sql = "SELECT * FROM items WHERE id = $1";
    let direct = cluster.nodes[0].client(&cluster.db).await;
    let client = proxy.client().await;
    let bystander = proxy.client().await;
    let d = direct.prepare(sql).await.unwrap();
    let p = client.prepare(sql).await.unwrap();
    let b = bystander.prepare(sql).await.unwrap();
    assert_eq!(client.query(&p, &[&1i32]).await.unwrap()[0].len(), 2);
    direct.query(&d, &[&1i32]).await.unwrap();
    direct
        .batch_execute("ALTER TABLE items ADD COLUMN extra int DEFAULT 7")
        .await
        .unwrap();
    // The server's own error, as the server words it, for both.
    let want = direct.query(&d, &[&1i32]).await.unwrap_err();
    let got = client.query(&p, &[&1i32]).await.unwrap_err();
    let (want, got) = (want.as_db_error().unwrap(), got.as_db_error().unwrap());
    assert_eq!(got.code(), want.code());
    assert_eq!(got.message(), want.message());
    assert_eq!(got.message(), "cached plan must not change result type");
    // Prepared again, the statement sees the new column — on every
    // pooled connection, again and again.
    let p = client.prepare(sql).await.unwrap();
    for _ in 0..4 {
        let rows = client.query(&p, &[&1i32]).await.unwrap();
        assert_eq!(rows[0].len(), 3);
        assert_eq!(rows[0].get::<_, i32>(2), 7);
    }
    // A statement prepared before the change stays broken for the client
    // that prepared it, as its own session's would on a server…
    let e = bystander.query(&b, &[&1i32]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().message(), want.message());
    // …until it prepares it again.
    let b = bystander.prepare(sql).await.unwrap();
    assert_eq!(bystander.query(&b, &[&1i32]).await.unwrap()[0].len(), 3);
    let other = proxy.client().await;
    let q = other.prepare(sql).await.unwrap();
    assert_eq!(other.query(&q, &[&1i32]).await.unwrap()[0].len(), 3);
}
