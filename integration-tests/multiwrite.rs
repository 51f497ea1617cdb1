//! Writes that change rows on several nodes: split multi-row INSERTs,
//! UPDATE/DELETE without the shard key, committed with two-phase commit
//! on all nodes or none — also when the proxy dies between prepare and
//! commit (the next proxy resolves what it left behind).

use std::time::{Duration, Instant};

use crate::harness::{node_of_int8, Cluster, Proxy};

const SCHEMA: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text, balance bigint NOT NULL DEFAULT 0);
                      CREATE INDEX ON accounts (hashint8extended(id, 0));";

fn count_on(cluster: &Cluster, i: usize, sql: &str) -> i64 {
    cluster.nodes[i].psql(&cluster.db, sql).parse().unwrap()
}

fn prepared_left(cluster: &Cluster) -> i64 {
    cluster.sum("SELECT count(*) FROM pg_prepared_xacts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_inserts_and_keyless_writes_reach_every_node() {
    let cluster = Cluster::start(3);
    cluster.on_all(SCHEMA);
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .partitions(12)
        .start(&cluster);
    let c = proxy.client().await;

    // Simple protocol: one INSERT, rows for every node, RETURNING merged.
    let values: Vec<String> = (1..=30).map(|i| format!("({i}, 'o{i}', {i})")).collect();
    let msgs = c
        .simple_query(&format!(
            "INSERT INTO accounts (id, owner, balance) VALUES {} RETURNING id",
            values.join(", ")
        ))
        .await
        .unwrap();
    let returned = msgs
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(returned, 30);
    assert!(msgs
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(30))));

    // Extended protocol: prepared once, executed twice with other values.
    let st = c
        .prepare("INSERT INTO accounts (id, owner) VALUES ($1, $2), ($3, $2), ($4, 'x')")
        .await
        .unwrap();
    assert_eq!(
        c.execute(&st, &[&101i64, &"p", &102i64, &103i64])
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        c.execute(&st, &[&201i64, &"q", &202i64, &203i64])
            .await
            .unwrap(),
        3
    );

    let routing = proxy.routing();
    for id in [1i64, 7, 30, 101, 102, 103, 201, 203] {
        let node = node_of_int8(&routing, id);
        let i: usize = node[1..].parse().unwrap();
        assert_eq!(
            count_on(
                &cluster,
                i,
                &format!("SELECT count(*) FROM accounts WHERE id = {id}")
            ),
            1,
            "id {id} on {node}"
        );
    }
    assert_eq!(cluster.sum("SELECT count(*) FROM accounts"), 36);

    // UPDATE and DELETE without the key: every node, counts summed.
    assert_eq!(
        c.execute(
            "UPDATE accounts SET balance = balance + 1 WHERE balance >= 10",
            &[]
        )
        .await
        .unwrap(),
        21
    );
    assert_eq!(
        cluster.sum("SELECT count(*) FROM accounts WHERE balance >= 11"),
        21
    );
    assert_eq!(
        c.execute("DELETE FROM accounts WHERE owner = 'x'", &[])
            .await
            .unwrap(),
        2
    );
    assert_eq!(cluster.sum("SELECT count(*) FROM accounts"), 34);
    // An IN list across nodes.
    assert_eq!(
        c.execute("DELETE FROM accounts WHERE id IN (1, 2, 3, 4, 5, 6)", &[])
            .await
            .unwrap(),
        6
    );

    // All of it went through two-phase commit and left nothing behind.
    assert_eq!(prepared_left(&cluster), 0);
    assert_eq!(
        count_on(&cluster, 0, "SELECT count(*) FROM shardcast.decisions"),
        0
    );

    // ON CONFLICT on the key behaves per row, as on one database; RETURNING
    // rows come back from every node (extended protocol, binary).
    let rows = c
        .query(
            "INSERT INTO accounts (id, owner) VALUES (7, 'up'), (8, 'up'), (5000, 'new') \
             ON CONFLICT (id) DO UPDATE SET owner = excluded.owner RETURNING id, owner",
            &[],
        )
        .await
        .unwrap();
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort();
    assert_eq!(ids, vec![7, 8, 5000]);
    assert_eq!(
        cluster.sum("SELECT count(*) FROM accounts WHERE owner = 'up'"),
        2
    );

    // The counters say what happened.
    let metrics = proxy.admin_get("/metrics");
    for line in [
        "shardcast_merge_statements_total{kind=\"split_insert\"} 4",
        "shardcast_merge_statements_total{kind=\"multi_write\"} 3",
        "shardcast_twophase_transactions_total{outcome=\"committed\"} 7",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    // INSERT … SELECT cannot be split: refused, not sent to one node.
    let e = c
        .batch_execute("INSERT INTO accounts SELECT id + 1000, owner FROM accounts")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "0A000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_on_one_node_commits_on_none() {
    let cluster = Cluster::start(2);
    cluster.on_all(SCHEMA);
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .partitions(8)
        .start(&cluster);
    let c = proxy.client().await;
    c.batch_execute("INSERT INTO accounts (id) VALUES (1)")
        .await
        .unwrap();
    // Rows for both nodes; id 1 already exists on its node.
    let values: Vec<String> = (1..=20).map(|i| format!("({i})")).collect();
    let e = c
        .batch_execute(&format!(
            "INSERT INTO accounts (id) VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "23505");
    assert_eq!(
        cluster.sum("SELECT count(*) FROM accounts"),
        1,
        "nothing of the failed INSERT stays"
    );
    // Same for an UPDATE that violates a constraint on one node only.
    c.batch_execute("ALTER TABLE accounts ADD CHECK (balance < 100)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO accounts (id, balance) VALUES (2, 50), (3, 99), (4, 0), (5, 0)")
        .await
        .unwrap();
    let e = c
        .batch_execute("UPDATE accounts SET balance = balance + 1")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "23514");
    assert_eq!(
        cluster.sum("SELECT coalesce(sum(balance), 0) FROM accounts"),
        149
    );
    assert_eq!(prepared_left(&cluster), 0);
}

/// The proxy dies after every node prepared: before the decision (all roll
/// back) and after it (all commit). The next proxy resolves both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_doubt_transactions_are_resolved_after_a_crash() {
    let cluster = Cluster::start(2);
    cluster.on_all(SCHEMA);
    let extra = "[transactions]\nrecover_after = \"1s\"\n";
    for (fault, want_rows) in [("exit_after_prepare", 0), ("exit_after_decision", 10)] {
        let proxy = Proxy::builder()
            .table("accounts", "id", "bigint")
            .partitions(8)
            .extra(extra)
            .env("SHARDCAST_FAULT", fault)
            .start(&cluster);
        let c = proxy.client().await;
        let base = if want_rows == 0 { 0 } else { 100 };
        let values: Vec<String> = (1..=10).map(|i| format!("({})", base + i)).collect();
        let r = c
            .batch_execute(&format!(
                "INSERT INTO accounts (id) VALUES {}",
                values.join(", ")
            ))
            .await;
        assert!(
            r.is_err(),
            "{fault}: the proxy died, the client sees an error"
        );
        drop(proxy);
        assert_eq!(
            prepared_left(&cluster),
            2,
            "{fault}: both nodes hold a prepared part"
        );

        let _next = Proxy::builder()
            .table("accounts", "id", "bigint")
            .partitions(8)
            .extra(extra)
            .start(&cluster);
        let started = Instant::now();
        while prepared_left(&cluster) > 0 && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            prepared_left(&cluster),
            0,
            "{fault}: recovery left a prepared transaction"
        );
        assert_eq!(
            cluster.sum(&format!(
                "SELECT count(*) FROM accounts WHERE id > {base} AND id <= {}",
                base + 10
            )),
            want_rows,
            "{fault}"
        );
    }
}
