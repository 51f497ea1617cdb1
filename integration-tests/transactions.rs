//! Transactions stick to one node without two-phase commit (crossing
//! shards aborts cleanly); with it, a transaction may span nodes and
//! commits on all of them or none.

use crate::harness::{node_of_int8, Cluster, Proxy};

/// Two ids that hash to different nodes under the proxy's routing.
async fn ids_on_two_nodes(proxy: &Proxy) -> (i64, i64) {
    let routing = proxy.routing();
    let node_of = |id: i64| node_of_int8(&routing, id);
    let a = 1;
    let b = (2..1000).find(|b| node_of(*b) != node_of(a)).unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pins_to_one_node_and_refuses_another() {
    let cluster = Cluster::start(2);
    cluster.on_all("CREATE TABLE accounts (id bigint PRIMARY KEY, balance int NOT NULL DEFAULT 0)");
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .extra("[transactions]\ntwo_phase = false\n")
        .start(&cluster);
    let (a, b) = ids_on_two_nodes(&proxy).await;
    let mut c = proxy.client().await;
    c.execute("INSERT INTO accounts (id) VALUES ($1)", &[&a])
        .await
        .unwrap();
    c.execute("INSERT INTO accounts (id) VALUES ($1)", &[&b])
        .await
        .unwrap();

    // Same-node transaction commits atomically.
    let tx = c.transaction().await.unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance + 10 WHERE id = $1",
        &[&a],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance + 5 WHERE id = $1",
        &[&a],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let bal: i32 = c
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&a])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bal, 15);

    // A statement for the other node is refused; the transaction is aborted.
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE accounts SET balance = 100 WHERE id = $1", &[&a])
        .await
        .unwrap();
    let e = tx
        .execute("UPDATE accounts SET balance = 100 WHERE id = $1", &[&b])
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "0A000", "{e}");
    let e = tx.execute("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "25P02");
    tx.rollback().await.unwrap();
    let bal: i32 = c
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&a])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        bal, 15,
        "the refused transaction's first update was rolled back"
    );

    // Simple-protocol BEGIN ... COMMIT, with the BEGIN answered by the proxy.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("UPDATE accounts SET balance = 1 WHERE id = {b}"))
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let bal: i32 = c
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&b])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bal, 1);
    // A read without a key cannot join a transaction.
    let tx = c.transaction().await.unwrap();
    let e = tx.query("SELECT * FROM accounts", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "0A000");
    tx.rollback().await.unwrap();
    // Nothing left a server connection mid-transaction.
    let idle_in_tx: i64 = cluster.nodes[0]
        .client(&cluster.db)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idle_in_tx, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_the_client() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::builder().pool_size(2).start(&cluster);
    let a = proxy.client().await;
    let b = proxy.client().await;
    a.batch_execute("SET application_name = 'client_a'; SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    for _ in 0..10 {
        let t: String = a
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(t, "1234ms");
        let t: String = b
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(t, "0", "settings must not leak to another client");
    }
    // Prepared statements survive moving between pooled connections.
    let st = a.prepare("SELECT $1::int + 1").await.unwrap();
    for i in 0..20 {
        let _hog = b.query("SELECT pg_sleep(0.001)", &[]).await.unwrap();
        let v: i32 = a.query_one(&st, &[&i]).await.unwrap().get(0);
        assert_eq!(v, i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_phase_commit_a_transaction_spans_nodes() {
    let cluster = Cluster::start(2);
    cluster.on_all("CREATE TABLE accounts (id bigint PRIMARY KEY, balance int NOT NULL DEFAULT 0 CHECK (balance >= 0))");
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .start(&cluster);
    let (a, b) = ids_on_two_nodes(&proxy).await;
    let mut c = proxy.client().await;
    c.execute("INSERT INTO accounts (id, balance) VALUES ($1, 100)", &[&a])
        .await
        .unwrap();
    c.execute("INSERT INTO accounts (id, balance) VALUES ($1, 0)", &[&b])
        .await
        .unwrap();
    let reader = proxy.client().await;
    let balance = |id: i64| {
        let c = &reader;
        async move {
            c.query_one("SELECT balance FROM accounts WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, i32>(0)
        }
    };

    // A transfer between two nodes (extended protocol): both or neither.
    let tx = c.transaction().await.unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance - 30 WHERE id = $1",
        &[&a],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance + 30 WHERE id = $1",
        &[&b],
    )
    .await
    .unwrap();
    // Inside, each node shows the transaction's own writes.
    let seen: i32 = tx
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&b])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 30);
    tx.commit().await.unwrap();
    assert_eq!((balance(a).await, balance(b).await), (70, 30));

    // ROLLBACK undoes both parts.
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE accounts SET balance = 0 WHERE id = $1", &[&a])
        .await
        .unwrap();
    tx.execute("UPDATE accounts SET balance = 0 WHERE id = $1", &[&b])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!((balance(a).await, balance(b).await), (70, 30));

    // A failure on one node fails the whole transaction (simple protocol).
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!(
        "UPDATE accounts SET balance = balance + 1000 WHERE id = {b}"
    ))
    .await
    .unwrap();
    let e = c
        .batch_execute(&format!(
            "UPDATE accounts SET balance = balance - 1000 WHERE id = {a}"
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "23514");
    let e = c
        .batch_execute(&format!("UPDATE accounts SET balance = 1 WHERE id = {b}"))
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "25P02");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!((balance(a).await, balance(b).await), (70, 30));

    // Reads and writes without the key inside a transaction: every node
    // joins it, sees its own writes, and commits or rolls back with it.
    let tx = c.transaction().await.unwrap();
    let n: i64 = tx
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "a fan-out read as the transaction's first statement");
    tx.execute(
        "INSERT INTO accounts (id, balance) VALUES ($1, 1), ($2, 1)",
        &[&(a + 1000), &(b + 1000)],
    )
    .await
    .unwrap();
    assert_eq!(
        tx.execute("UPDATE accounts SET balance = balance + 1", &[])
            .await
            .unwrap(),
        4
    );
    let sum: i64 = tx
        .query_one("SELECT sum(balance) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 100 + 2 + 4);
    tx.rollback().await.unwrap();
    assert_eq!((balance(a).await, balance(b).await), (70, 30));
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE accounts SET balance = balance + 1", &[])
        .await
        .unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
        &[&a],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((balance(a).await, balance(b).await), (72, 31));

    // Nothing prepared or idle in transaction is left behind.
    for n in &cluster.nodes {
        assert_eq!(
            n.psql(&cluster.db, "SELECT count(*) FROM pg_prepared_xacts"),
            "0"
        );
        assert_eq!(
            n.psql(
                &cluster.db,
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
            ),
            "0"
        );
    }
}
