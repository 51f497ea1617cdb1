//! Transaction pooling: many clients, few server connections.

use crate::harness::{Cluster, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_share_twenty_connections_per_node() {
    let cluster = Cluster::start(2);
    cluster.on_all("CREATE TABLE accounts (id bigint PRIMARY KEY)");
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .pool_size(20)
        .start(&cluster);
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        clients.push(proxy.client().await);
    }
    // Every client runs statements on both nodes at once.
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in clients.into_iter().enumerate() {
        set.spawn(async move {
            let id = i as i64;
            c.execute("INSERT INTO accounts (id) VALUES ($1)", &[&id])
                .await
                .unwrap();
            let n: i64 = c
                .query_one("SELECT id FROM accounts WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, id);
            c
        });
    }
    let mut kept = Vec::new();
    while let Some(r) = set.join_next().await {
        kept.push(r.expect("client task"));
    }
    for node in &cluster.nodes {
        let n: i64 = node
            .client(&cluster.db)
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shardcast'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            (1..=20).contains(&n),
            "{n} server connections for 1000 clients"
        );
    }
    let nodes: serde_json::Value = serde_json::from_str(&proxy.admin_get("/api/nodes")).unwrap();
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["in_use"], 0, "idle clients hold no server connection");
        assert!(n["idle"].as_i64().unwrap() <= 20);
    }
    let total: i64 = cluster
        .nodes
        .iter()
        .map(|n| {
            n.psql(&cluster.db, "SELECT count(*) FROM accounts")
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 1000);
    drop(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_terminated_while_idle_is_replaced() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::builder().pool_size(1).start(&cluster);
    let client = proxy.client().await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let direct = cluster.nodes[0].client(&cluster.db).await;
    direct
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // Let the server close it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The client never used that connection after it died: its next
    // statement runs on a new one, no error.
    let other: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(other, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_are_served_in_arrival_order_and_time_out_with_53300() {
    let cluster = Cluster::start(1);
    cluster.on_all("CREATE TABLE served (n serial, who int)");
    let proxy = Proxy::builder()
        .pool_size(1)
        .checkout_timeout_ms(1500)
        .start(&cluster);
    // The holder keeps the only server connection inside its transaction.
    let holder = proxy.client().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let mut waiting = Vec::new();
    for who in 0..5i32 {
        let c = proxy.client().await;
        // The simple protocol: one statement, one checkout.
        waiting.push(tokio::spawn(async move {
            c.batch_execute(&format!("INSERT INTO served (who) VALUES ({who})"))
                .await
                .unwrap();
        }));
        // Each is queued before the next arrives.
        let queued = format!(
            "shardcast_backend_pool_connections{{node=\"n0\",state=\"waiting\"}} {}",
            who + 1
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !proxy.admin_get("/metrics").lines().any(|l| l == queued) {
            assert!(
                std::time::Instant::now() < deadline,
                "client {who} never queued"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    holder.batch_execute("COMMIT").await.unwrap();
    for w in waiting {
        w.await.unwrap();
    }
    let order = cluster.nodes[0].psql(
        &cluster.db,
        "SELECT string_agg(who::text, ',' ORDER BY n) FROM served",
    );
    assert_eq!(order, "0,1,2,3,4", "served in the order they came");

    // A wait longer than checkout_timeout_ms fails with 53300; nothing else does.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let late = proxy.client().await;
    let started = std::time::Instant::now();
    let err = late.simple_query("SELECT 2").await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("53300"),
        "{err:?}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(1500)
            && waited < std::time::Duration::from_secs(4),
        "timed out after {waited:?}"
    );
    let two: i32 = holder.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2, "the holder's transaction goes on");
    holder.batch_execute("COMMIT").await.unwrap();
    let three: i32 = late.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(
        three, 3,
        "the client that timed out is served once the connection is free"
    );

    let metrics = proxy.admin_get("/metrics");
    let waits: f64 = metrics
        .lines()
        .find(|l| l.starts_with("shardcast_backend_pool_wait_seconds_count{node=\"n0\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .expect("pool wait histogram in /metrics");
    assert!(waits >= 5.0, "{waits} waits counted");
}
