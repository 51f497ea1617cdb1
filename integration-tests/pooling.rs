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
