//! Session state a transaction pooler cannot move — temporary tables, WITH
//! HOLD cursors, session advisory locks, SQL PREPARE — keeps working across
//! transactions: the client stays on its server connection (pinned) until
//! DISCARD ALL, while other clients share the rest of the pool.

use crate::harness::{Cluster, Proxy};

fn in_use(proxy: &Proxy) -> i64 {
    let nodes: serde_json::Value = serde_json::from_str(&proxy.admin_get("/api/nodes")).unwrap();
    nodes["nodes"][0]["in_use"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_keeps_its_connection_until_discard_all() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::builder().pool_size(3).start(&cluster);
    let a = proxy.client().await;
    let b = proxy.client().await;
    let c = proxy.client().await;
    // Others keep the pool busy between A's statements, so that an
    // unpinned A would land on another connection.
    let churn = |n: i32| {
        let (b, c) = (&b, &c);
        async move {
            for _ in 0..n {
                b.batch_execute("BEGIN; SELECT 1").await.unwrap();
                c.batch_execute("SELECT 2").await.unwrap();
                b.batch_execute("COMMIT").await.unwrap();
            }
        }
    };
    a.batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    churn(3).await;
    a.batch_execute("INSERT INTO scratch VALUES (1), (2)")
        .await
        .unwrap();
    churn(3).await;
    let n: i64 = a
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // A WITH HOLD cursor outlives its transaction.
    a.batch_execute("DECLARE cur CURSOR WITH HOLD FOR SELECT generate_series(1, 3)")
        .await
        .unwrap();
    churn(2).await;
    let rows = a.simple_query("FETCH 2 FROM cur").await.unwrap();
    let data = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(data, 2);
    // A session advisory lock is held by A's session, and released by it.
    a.batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .unwrap();
    churn(2).await;
    let taken: bool = b
        .query_one("SELECT pg_try_advisory_lock(42)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!taken, "another session must not get A's lock");
    let released: bool = a
        .query_one("SELECT pg_advisory_unlock(42)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(released, "A's own session releases its lock");
    // SQL PREPARE / EXECUTE.
    a.batch_execute("PREPARE twice(int) AS SELECT $1 * 2")
        .await
        .unwrap();
    churn(2).await;
    let rows = a.simple_query("EXECUTE twice(21)").await.unwrap();
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("42"));
    // Pinned: A holds one connection while idle (and B one, for the lock
    // it tried to take); DISCARD ALL lets it go, and the temporary table
    // with it.
    assert_eq!(in_use(&proxy), 2);
    a.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(in_use(&proxy), 1);
    b.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(in_use(&proxy), 0);
    let e = a.batch_execute("SELECT * FROM scratch").await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
    );
}
