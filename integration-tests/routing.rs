//! Rows land on the node `/api/routing` names; reads without a key see all.

use crate::harness::{partition_of, Cluster, Proxy};

const SCHEMA: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text, balance bigint NOT NULL DEFAULT 0);
                      CREATE INDEX ON accounts (hashint8extended(id, 0));
                      CREATE TABLE settings (k text PRIMARY KEY, v text);";

fn owner_of(routing: &serde_json::Value, hash: i64) -> String {
    partition_of(routing, hash)["node"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_where_the_routing_table_says() {
    let cluster = Cluster::start(3);
    cluster.on_all(SCHEMA);
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .partitions(12)
        .start(&cluster);
    let c = proxy.client().await;
    // Extended protocol (tokio-postgres) with binary parameters.
    for id in 1..=300i64 {
        c.execute(
            "INSERT INTO accounts (id, owner) VALUES ($1, $2)",
            &[&id, &format!("o{id}")],
        )
        .await
        .unwrap();
    }
    // Simple protocol, multi-row insert with keys on one node each time.
    c.batch_execute("INSERT INTO accounts (id, owner) VALUES (-1, 'neg')")
        .await
        .unwrap();

    let routing = proxy.routing();
    assert_eq!(routing["epoch"], 1);
    assert_eq!(routing["partitions"].as_array().unwrap().len(), 12);
    let mut total = 0;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let nc = node.client(&cluster.db).await;
        let rows = nc
            .query("SELECT id, hashint8extended(id, 0) FROM accounts", &[])
            .await
            .unwrap();
        assert!(
            !rows.is_empty(),
            "node n{i} holds no rows: the spread is wrong"
        );
        for r in rows {
            let (id, h): (i64, i64) = (r.get(0), r.get(1));
            assert_eq!(owner_of(&routing, h), format!("n{i}"), "id {id} is on n{i}");
            total += 1;
        }
    }
    assert_eq!(total, 301, "every row on exactly one node");

    // A read by key finds its row; one without a key sees every node's.
    let r = c
        .query_one("SELECT owner FROM accounts WHERE id = $1", &[&77i64])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "o77");
    let all = c.query("SELECT id FROM accounts", &[]).await.unwrap();
    assert_eq!(all.len(), 301);
    let simple = c
        .simple_query("SELECT id FROM accounts WHERE id > 150")
        .await
        .unwrap();
    let n = simple
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(n, 150);
    let tag = simple.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    });
    assert_eq!(tag, Some(150), "one CommandComplete with the summed count");

    // Unsharded tables go to the default node (the first).
    c.execute("INSERT INTO settings VALUES ('a', 'b')", &[])
        .await
        .unwrap();
    assert_eq!(
        cluster.nodes[0].psql(&cluster.db, "SELECT count(*) FROM settings"),
        "1"
    );
    assert_eq!(
        cluster.nodes[1].psql(&cluster.db, "SELECT count(*) FROM settings"),
        "0"
    );

    // Metrics count requests per partition and node.
    let metrics = proxy.admin_get("/metrics");
    assert!(metrics.contains("shardcast_router_requests_total{node=\"n0\""));
    assert!(metrics.contains("shardcast_backend_pool_connections{node=\"n2\",state=\"idle\"}"));
    assert!(metrics.contains("shardcast_ring_routing_epoch 1"));
    let writes: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("shardcast_router_requests_total") && l.contains("kind=\"write\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(writes, 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_a_key_are_refused_clearly() {
    let cluster = Cluster::start(2);
    cluster.on_all(SCHEMA);
    // Multi-shard writes switched off: UPDATE/DELETE without the key and
    // INSERTs spanning shards are refused instead of run on every node.
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .extra("[routing]\nallow_multi_shard_writes = false\n")
        .start(&cluster);
    let c = proxy.client().await;
    for (sql, names) in [
        (
            "UPDATE accounts SET balance = 0",
            "allow_multi_shard_writes",
        ),
        (
            "DELETE FROM accounts WHERE owner = 'x'",
            "allow_multi_shard_writes",
        ),
        ("INSERT INTO accounts SELECT 1, 'x', 0", "\"id\""),
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db.code().code(), "0A000", "{sql}");
        assert!(
            db.message().contains("accounts") && db.message().contains(names),
            "{}",
            db.message()
        );
    }
    // Rows for different nodes in one INSERT: refused, nothing written.
    let mut ids = (1..200i64)
        .map(|i| format!("({i}, 'x')"))
        .collect::<Vec<_>>()
        .join(",");
    ids.insert_str(0, "INSERT INTO accounts (id, owner) VALUES ");
    let e = c.batch_execute(&ids).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "0A000");
    for n in &cluster.nodes {
        assert_eq!(n.psql(&cluster.db, "SELECT count(*) FROM accounts"), "0");
    }
    // The session is still usable.
    c.execute("INSERT INTO accounts (id) VALUES (1)", &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_uuid_keys_route_by_postgres_hash() {
    let cluster = Cluster::start(2);
    cluster.on_all(
        "CREATE TABLE users (email text PRIMARY KEY, n int);
         CREATE TABLE sessions (sid uuid PRIMARY KEY, n int);",
    );
    let proxy = Proxy::builder()
        .table("users", "email", "text")
        .table("sessions", "sid", "uuid")
        .start(&cluster);
    let c = proxy.client().await;
    for i in 0..60 {
        c.batch_execute(&format!(
            "INSERT INTO users VALUES ('user{i}@example.com', {i})"
        ))
        .await
        .unwrap();
        c.batch_execute(&format!(
            "INSERT INTO sessions VALUES ('{}', {i})",
            uuid_of(i)
        ))
        .await
        .unwrap();
    }
    let routing = proxy.routing();
    for (i, node) in cluster.nodes.iter().enumerate() {
        for r in node.psql(&cluster.db, "SELECT hashtextextended(email, 0) FROM users UNION ALL SELECT uuid_hash_extended(sid, 0) FROM sessions").lines() {
            assert_eq!(owner_of(&routing, r.parse().unwrap()), format!("n{i}"));
        }
    }
    // count(*) without a key: every node counts, the proxy adds them up.
    let counts = c.query("SELECT count(*) FROM users", &[]).await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].get::<_, i64>(0), 60);
    let rows = c
        .query(
            "SELECT n FROM users WHERE email = $1",
            &[&"user7@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

fn uuid_of(i: u32) -> String {
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        i.wrapping_mul(2654435761),
        i
    )
}
