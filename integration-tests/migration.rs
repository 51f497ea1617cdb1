//! Online migration under load: writers through two proxies and one
//! client writing straight to the node that owns its keys record every
//! acknowledged write while partitions move, split and merge; at the end
//! every acknowledged write is there exactly once, counters equal the
//! acknowledged increments, and every row lives only on its owner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use shardcast::ring::hash::hash_int8;

use crate::harness::{partition_of, Cluster, Proxy};

pub const SCHEMA: &str = "
CREATE TABLE accounts (id bigint PRIMARY KEY, counter bigint NOT NULL DEFAULT 0, note text);
CREATE INDEX ON accounts (hashint8extended(id, 0));
CREATE TABLE events (account bigint NOT NULL, seq bigint NOT NULL, PRIMARY KEY (account, seq));
CREATE INDEX ON events (hashint8extended(account, 0));";

pub const ACCOUNTS: i64 = 2000;

pub fn builder() -> crate::harness::proxy::ProxyBuilder {
    builder_rate("0")
}

/// A proxy for these tables whose copies read at most `rate` per second.
pub fn builder_rate(rate: &str) -> crate::harness::proxy::ProxyBuilder {
    Proxy::builder()
        .table("accounts", "id", "bigint")
        .table("events", "account", "bigint")
        .partitions(8)
        .extra(&format!(
            "[migration]\nheartbeat = \"1s\"\nheartbeat_timeout = \"3s\"\npoll = \"1s\"\ncopy_rate = \"{rate}\""
        ))
}

/// What writers were told succeeded.
#[derive(Default)]
pub struct Ledger {
    pub increments: HashMap<i64, i64>,
    pub events: Vec<(i64, i64)>,
}

/// Writes through `url` until `stop`: increments and inserts on random
/// keys, recording each acknowledged one.
pub async fn writer(url: String, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>, base: i64) {
    let c = crate::harness::connect(&url).await;
    let inc = c
        .prepare("UPDATE accounts SET counter = counter + 1 WHERE id = $1")
        .await
        .unwrap();
    let ins = c
        .prepare("INSERT INTO events (account, seq) VALUES ($1, $2)")
        .await
        .unwrap();
    let mut seq = base;
    while !stop.load(Ordering::Relaxed) {
        let k = rand::rng().random_range(1..=ACCOUNTS);
        if rand::rng().random_bool(0.5) {
            if let Ok(1) = c.execute(&inc, &[&k]).await {
                *ledger.lock().unwrap().increments.entry(k).or_default() += 1;
            }
        } else {
            seq += 1;
            if c.execute(&ins, &[&k, &seq]).await.is_ok() {
                ledger.lock().unwrap().events.push((k, seq));
            }
        }
    }
}

/// Reads without the shard key while partitions move: every node answers
/// for the ranges it owns only, so the accounts are always all there, once.
async fn keyless_reader(url: String, stop: Arc<AtomicBool>) -> u64 {
    let c = crate::harness::connect(&url).await;
    let count = c.prepare("SELECT count(*) FROM accounts").await.unwrap();
    let mut reads = 0;
    while !stop.load(Ordering::Relaxed) {
        let n: i64 = c.query_one(&count, &[]).await.unwrap().get(0);
        assert_eq!(n, ACCOUNTS, "count(*) while partitions move");
        let rows = c
            .simple_query("SELECT id FROM accounts WHERE counter >= 0")
            .await
            .unwrap();
        let ids = rows
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        assert_eq!(ids as i64, ACCOUNTS, "row-wise read while partitions move");
        reads += 2;
    }
    reads
}

/// Writes straight to the node the routing table names for each key, as
/// an application bypassing the proxy would; a fenced write (SC001) is
/// not acknowledged.
async fn direct_writer(
    cluster_urls: Vec<String>,
    proxy: Arc<Proxy>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut clients = Vec::new();
    for u in &cluster_urls {
        clients.push(crate::harness::connect(u).await);
    }
    let names: Vec<String> = (0..cluster_urls.len()).map(|i| format!("n{i}")).collect();
    let mut fenced = 0;
    while !stop.load(Ordering::Relaxed) {
        let routing = {
            let p = proxy.clone();
            tokio::task::spawn_blocking(move || p.routing())
                .await
                .unwrap()
        };
        for _ in 0..20 {
            let k = rand::rng().random_range(1..=ACCOUNTS);
            let node = partition_of(&routing, hash_int8(k))["node"]
                .as_str()
                .unwrap()
                .to_string();
            let i = names.iter().position(|n| *n == node).unwrap();
            match clients[i]
                .execute(
                    "UPDATE accounts SET counter = counter + 1 WHERE id = $1",
                    &[&k],
                )
                .await
            {
                Ok(1) => *ledger.lock().unwrap().increments.entry(k).or_default() += 1,
                Ok(_) => {}
                Err(e) => {
                    let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                    assert_eq!(code, "SC001", "direct write failed otherwise: {e}");
                    fenced += 1;
                }
            }
        }
    }
    eprintln!("direct writer: {fenced} writes fenced");
}

/// Checks the ledger against the nodes: exactly-once and owner-only. Keys
/// owned by the `dead` node (stopped by a fault test) are left out.
pub fn check(cluster: &Cluster, routing: &serde_json::Value, ledger: &Ledger, dead: Option<usize>) {
    let names: Vec<String> = (0..cluster.nodes.len()).map(|i| format!("n{i}")).collect();
    let alive = |key: i64| {
        let owner = partition_of(routing, hash_int8(key))["node"]
            .as_str()
            .unwrap();
        dead.is_none_or(|d| names[d] != owner)
    };
    let mut counters: HashMap<i64, Vec<(usize, i64)>> = HashMap::new();
    let mut events: HashMap<(i64, i64), usize> = HashMap::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        if Some(i) == dead {
            continue;
        }
        for line in n
            .psql(&cluster.db, "SELECT id, counter FROM accounts")
            .lines()
        {
            let (id, c) = line.split_once('|').unwrap();
            counters
                .entry(id.parse().unwrap())
                .or_default()
                .push((i, c.parse().unwrap()));
        }
        for line in n
            .psql(&cluster.db, "SELECT account, seq FROM events")
            .lines()
        {
            let (a, s) = line.split_once('|').unwrap();
            let a: i64 = a.parse().unwrap();
            let owner = partition_of(routing, hash_int8(a))["node"]
                .as_str()
                .unwrap();
            assert_eq!(
                owner, names[i],
                "event of account {a} on {} but owned by {owner}",
                names[i]
            );
            *events.entry((a, s.parse().unwrap())).or_default() += 1;
        }
    }
    let expected = (1..=ACCOUNTS).filter(|k| alive(*k)).count();
    assert_eq!(counters.len(), expected, "accounts lost or invented");
    for (id, copies) in &counters {
        assert_eq!(copies.len(), 1, "account {id} on several nodes: {copies:?}");
        let (node, value) = copies[0];
        let owner = partition_of(routing, hash_int8(*id))["node"]
            .as_str()
            .unwrap();
        assert_eq!(
            owner, names[node],
            "account {id} on {} but owned by {owner}",
            names[node]
        );
        let acked = ledger.increments.get(id).copied().unwrap_or(0);
        assert_eq!(
            value, acked,
            "account {id}: counter {value}, acknowledged increments {acked}"
        );
    }
    let acked: Vec<_> = ledger.events.iter().filter(|(a, _)| alive(*a)).collect();
    for e in &acked {
        assert_eq!(
            events.get(*e),
            Some(&1),
            "event {e:?} not present exactly once"
        );
    }
    assert_eq!(events.len(), acked.len(), "unacknowledged events present");
}

/// Accounts and events through `proxy`; the ledger of what they hold.
pub async fn load(proxy: &Proxy) -> Arc<Mutex<Ledger>> {
    let c = proxy.client().await;
    let ids: Vec<String> = (1..=ACCOUNTS).map(|g| format!("({g})")).collect();
    c.batch_execute(&format!(
        "INSERT INTO accounts (id) VALUES {}",
        ids.join(",")
    ))
    .await
    .unwrap();
    // The table is long enough that a copy takes a moment.
    for chunk in (1..=20000i64).collect::<Vec<_>>().chunks(2000) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|g| format!("({}, {})", g % 2000 + 1, -g))
            .collect();
        c.batch_execute(&format!(
            "INSERT INTO events (account, seq) VALUES {}",
            rows.join(",")
        ))
        .await
        .unwrap();
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    {
        let mut l = ledger.lock().unwrap();
        for g in 1..=20000i64 {
            l.events.push((g % 2000 + 1, -g));
        }
    }
    ledger
}

/// One random reshaping step through `proxy`; returns the migration ids.
fn reshape_step(proxy: &Proxy, step: usize) -> Vec<i64> {
    let routing = proxy.routing();
    let parts = routing["partitions"].as_array().unwrap().clone();
    let nodes = ["n0", "n1", "n2"];
    let mut rng = rand::rng();
    match step % 4 {
        // Merge two adjacent partitions on one node, when there are some.
        3 => {
            for w in parts.windows(2) {
                if w[0]["node"] == w[1]["node"] {
                    let body = serde_json::json!({"kind": "merge", "partitions": [w[0]["id"], w[1]["id"]]});
                    return vec![proxy.migrate(body)];
                }
            }
            vec![]
        }
        // Split (median) and move the upper half elsewhere.
        2 => {
            let p = &parts[rng.random_range(0..parts.len())];
            let to = nodes
                .iter()
                .find(|n| **n != p["node"].as_str().unwrap())
                .unwrap();
            let body = serde_json::json!({"kind": "split", "partition": p["id"], "to": to});
            let (status, body) = proxy.admin("POST", "/api/migrations", &body.to_string());
            assert_eq!(status, 202, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        }
        _ => {
            let p = &parts[rng.random_range(0..parts.len())];
            let others: Vec<&&str> = nodes
                .iter()
                .filter(|n| **n != p["node"].as_str().unwrap())
                .collect();
            let to = others[rng.random_range(0..others.len())];
            vec![proxy.migrate(serde_json::json!({"kind": "move", "partition": p["id"], "to": to}))]
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_or_doubled_while_partitions_move_split_and_merge() {
    let cluster = Cluster::start(3);
    cluster.on_all(SCHEMA);
    let p1 = Arc::new(builder().start(&cluster));
    let p2 = Arc::new(builder().start(&cluster));
    let ledger = load(&p1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, p) in [&p1, &p2, &p1, &p2].iter().enumerate() {
        tasks.push(tokio::spawn(writer(
            p.url(),
            ledger.clone(),
            stop.clone(),
            (i as i64 + 1) * 1_000_000_000,
        )));
    }
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url(&cluster.db)).collect();
    tasks.push(tokio::spawn(direct_writer(
        urls,
        p1.clone(),
        ledger.clone(),
        stop.clone(),
    )));
    let reader = tokio::spawn(keyless_reader(p2.url(), stop.clone()));

    let (a, b) = (p1.clone(), p2.clone());
    let done = tokio::task::spawn_blocking(move || {
        let mut finished = Vec::new();
        for step in 0..24 {
            let proxy = if step % 2 == 0 { &a } else { &b };
            for id in reshape_step(proxy, step) {
                finished.push(proxy.wait_migration(id, Duration::from_secs(60)));
            }
        }
        finished
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let reads = reader.await.unwrap();
    assert!(reads > 10, "{reads} keyless reads");
    let moves = done.iter().filter(|m| m["kind"] == "move").count();
    assert!(done.len() >= 20, "{} migrations", done.len());
    assert!(moves >= 10, "{moves} moves");
    for m in &done {
        assert_eq!(m["state"], "done", "migration aborted: {m}");
    }
    let pauses: Vec<f64> = done.iter().filter_map(|m| m["pause_ms"].as_f64()).collect();
    eprintln!(
        "{} migrations ({moves} moves); cut-over pauses ms: {pauses:?}",
        done.len()
    );
    let routing = p1.routing();
    assert_eq!(routing["epoch"], p2.routing()["epoch"]);
    eprintln!(
        "{}",
        cluster.nodes[0].psql(
            &cluster.db,
            "SELECT detail FROM shardcast.journal WHERE step = 'cut_over' ORDER BY seq"
        )
    );
    // A proxy started now serves the catalog's table, not its config's.
    let p3 = builder().start(&cluster);
    assert_eq!(p3.routing(), routing);
    check(&cluster, &routing, &ledger.lock().unwrap(), None);
}

/// Bad requests get a 4xx naming the problem and change nothing; a drain
/// through the CLI (`shardcast drain --wait`) empties a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_get_clear_refusals_and_a_working_drain() {
    let cluster = Cluster::start(3);
    cluster.on_all(SCHEMA);
    let proxy = builder().start(&cluster);
    let _ledger = load(&proxy).await;
    let before = proxy.routing();
    let parts = before["partitions"].as_array().unwrap().clone();
    let on = |p: &serde_json::Value| p["node"].as_str().unwrap().to_string();
    let refused = |body: serde_json::Value, status: u16, words: &str| {
        let (s, reply) = proxy.admin("POST", "/api/migrations", &body.to_string());
        assert_eq!(s, status, "{body}: {reply}");
        assert!(reply.contains(words), "{body}: {reply} lacks {words:?}");
    };
    refused(
        serde_json::json!({"kind": "move", "partition": 999, "to": "n1"}),
        404,
        "no partition 999",
    );
    refused(
        serde_json::json!({"kind": "move", "partition": 0, "to": "nx"}),
        400,
        "unknown node \\\"nx\\\"",
    );
    refused(
        serde_json::json!({"kind": "move", "partition": 0, "to": on(&parts[0])}),
        400,
        "already on node",
    );
    refused(
        serde_json::json!({"kind": "merge", "partitions": [0, 2]}),
        400,
        "not adjacent",
    );
    refused(
        serde_json::json!({"kind": "merge", "partitions": [0, 1]}),
        400,
        "different nodes",
    );
    refused(serde_json::json!({"kind": "teleport"}), 400, "unknown kind");
    let (s, _) = proxy.admin("POST", "/api/migrations", "{not json");
    assert_eq!(s, 400);
    assert_eq!(
        proxy.routing()["epoch"],
        before["epoch"],
        "a refused request changed routing"
    );

    // Drain n2 with the CLI, as an operator would.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args([
            "drain",
            "--admin",
            &format!("http://127.0.0.1:{}", proxy.admin_port),
            "--node",
            "n2",
            "--wait",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("done"), "{text}");
    let after = proxy.routing();
    assert!(after["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["node"] != "n2"));
    assert_eq!(
        cluster.nodes[2].psql(&cluster.db, "SELECT count(*) FROM accounts"),
        "0"
    );
    assert_eq!(cluster.sum("SELECT count(*) FROM accounts"), ACCOUNTS);
    // Each move was validated after its cut-over by a read through the proxy.
    let catalog = |sql: &str| cluster.nodes[0].psql(&cluster.db, sql);
    let moves = catalog("SELECT count(*) FROM shardcast.migrations WHERE kind = 'move'");
    assert_eq!(
        catalog("SELECT count(*) FROM shardcast.journal WHERE step = 'validated'"),
        moves,
        "{}",
        catalog("SELECT migration, step, detail FROM shardcast.journal ORDER BY seq")
    );
    // `shardcast migrations` lists them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args([
            "migrations",
            "--admin",
            &format!("http://127.0.0.1:{}", proxy.admin_port),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("move") && text.contains("done"), "{text}");
    // The status page and the metrics show them too.
    let page = proxy.admin_get("/");
    assert!(
        page.contains("<h2>Migrations</h2>") && page.contains("n2 → "),
        "{page}"
    );
    let metrics = proxy.admin_get("/metrics");
    assert!(metrics.contains("shardcast_migration_cutover_pause_seconds_count"));
    assert!(
        metrics.contains("shardcast_migration_steps_total{state=\"cleaning_up\"}")
            || metrics.contains("shardcast_migration_steps_total{state=\"cutting_over\"}")
    );
}

/// A node listed in the config but created after the tables gets their
/// schema (keys, hash index) from the source before its first partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_gets_the_schema_before_its_first_partition() {
    let cluster = Cluster::start(3);
    cluster.nodes[0].psql(&cluster.db, SCHEMA);
    cluster.nodes[1].psql(&cluster.db, SCHEMA);
    let proxy = builder().partitions(2).start(&cluster);
    let _ledger = load(&proxy).await;
    let id = proxy.migrate(serde_json::json!({"kind": "move", "partition": 0, "to": "n2"}));
    let m = proxy.wait_migration(id, Duration::from_secs(60));
    assert_eq!(m["state"], "done", "{m}");
    let n2 = |sql: &str| cluster.nodes[2].psql(&cluster.db, sql);
    assert_eq!(
        n2("SELECT count(*) FROM pg_indexes WHERE tablename = 'accounts'"),
        "2"
    );
    assert_eq!(
        n2("SELECT count(*) FROM pg_indexes WHERE tablename = 'events'"),
        "2"
    );
    assert!(n2("SELECT count(*) FROM accounts").parse::<i64>().unwrap() > 0);
    assert_eq!(cluster.sum("SELECT count(*) FROM accounts"), ACCOUNTS);
}
