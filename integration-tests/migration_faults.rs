//! Migration under faults: the proxy running a move is killed (abort, as
//! `kill -9`) during the copy, the catch-up and the cut-over, then
//! restarted — the journal rolls each back and a later move succeeds; the
//! target node dies during a copy — the move aborts naming it; a proxy that
//! hears no notification never writes to an old home. Every acknowledged
//! write survives all of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast::ring::hash::hash_int8;

use crate::harness::{partition_of, Cluster};
use crate::migration::{builder, builder_rate, check, load, writer, SCHEMA};

/// The partition holding key 1, and a node other than its owner.
fn pick(routing: &serde_json::Value) -> (i64, String) {
    let p = partition_of(routing, hash_int8(1));
    let node = p["node"].as_str().unwrap();
    let to = if node == "n1" { "n2" } else { "n1" };
    (p["id"].as_i64().unwrap(), to.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_migrator_is_rolled_back_from_the_journal() {
    let cluster = Cluster::start(3);
    cluster.on_all(SCHEMA);
    let steady = Arc::new(builder().start(&cluster));
    let ledger = load(&steady).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(writer(
                steady.url(),
                ledger.clone(),
                stop.clone(),
                (i + 1) * 1_000_000_000,
            ))
        })
        .collect();
    for point in ["exit_in_copy", "exit_in_catch_up", "exit_in_cut_over"] {
        let mut doomed = builder().env("SHARDCAST_FAULT", point).start(&cluster);
        let (partition, to) = pick(&steady.routing());
        let id =
            doomed.migrate(serde_json::json!({"kind": "move", "partition": partition, "to": to}));
        let started = Instant::now();
        while !doomed.exited() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{point}: proxy did not stop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Restarted: it (or the steady proxy) resumes and rolls back.
        let restarted = builder().start(&cluster);
        let m = {
            let s = steady.clone();
            tokio::task::spawn_blocking(move || s.wait_migration(id, Duration::from_secs(60)))
                .await
                .unwrap()
        };
        assert_eq!(m["state"], "aborted", "{point}: {m}");
        assert!(
            m["reason"].as_str().unwrap().contains("interrupted"),
            "{point}: {m}"
        );
        let p = partition_of(&restarted.routing(), hash_int8(1)).clone();
        assert_eq!(p["state"], "serving", "{point}: {p}");
        assert_ne!(
            p["node"].as_str().unwrap(),
            to,
            "{point}: rolled-back move changed the owner"
        );
        drop(restarted);
    }
    // After all that, the same move goes through.
    let (partition, to) = pick(&steady.routing());
    let id = steady.migrate(serde_json::json!({"kind": "move", "partition": partition, "to": to}));
    let s = steady.clone();
    let m = tokio::task::spawn_blocking(move || s.wait_migration(id, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(m["state"], "done", "{m}");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    check(&cluster, &steady.routing(), &ledger.lock().unwrap(), None);
    assert_eq!(
        cluster.sum("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'shardcast_log%'"),
        0
    );
}

/// Stops the source or the target node during a slow copy: the move
/// aborts, names the node, and routing stays as it was.
async fn a_dead_node_aborts_the_move(role: &str) {
    let cluster = Cluster::start(3);
    cluster.on_all(SCHEMA);
    let proxy = Arc::new(builder_rate("20kB").start(&cluster));
    let ledger = load(&proxy).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(writer(
                proxy.url(),
                ledger.clone(),
                stop.clone(),
                (i + 1) * 1_000_000_000,
            ))
        })
        .collect();
    let routing = proxy.routing();
    let (partition, to) = pick(&routing);
    let from = partition_of(&routing, hash_int8(1))["node"]
        .as_str()
        .unwrap()
        .to_string();
    let id = proxy.migrate(serde_json::json!({"kind": "move", "partition": partition, "to": to}));
    let victim = if role == "target" { &to } else { &from };
    let dead: usize = victim[1..].parse().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.nodes[dead].stop();
    let p = proxy.clone();
    let m = tokio::task::spawn_blocking(move || p.wait_migration(id, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(m["state"], "aborted", "{m}");
    let reason = m["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("{role} node {victim}")),
        "{reason}"
    );
    let part = partition_of(&proxy.routing(), hash_int8(1)).clone();
    assert_eq!(part["state"], "serving");
    assert_eq!(part["node"].as_str().unwrap(), from);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    check(
        &cluster,
        &proxy.routing(),
        &ledger.lock().unwrap(),
        Some(dead),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_aborts_the_move_and_names_it() {
    a_dead_node_aborts_the_move("target").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_source_aborts_the_move_and_names_it() {
    a_dead_node_aborts_the_move("source").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_missed_the_move_never_writes_to_the_old_home() {
    let cluster = Cluster::start(2);
    cluster.on_all(SCHEMA);
    let leader = builder().start(&cluster);
    let deaf = builder().env("SHARDCAST_FAULT", "deaf").start(&cluster);
    let _ledger = load(&leader).await;
    let (partition, to) = pick(&leader.routing());
    let before = deaf.routing()["epoch"].as_i64().unwrap();
    let id = leader.migrate(serde_json::json!({"kind": "move", "partition": partition, "to": to}));
    // The clean-up waits for the deaf proxy's heartbeat, so the move stays
    // in `cleaning_up` with the old copy fenced on the source.
    let started = Instant::now();
    loop {
        let (_, body) = leader.admin("GET", &format!("/api/migrations/{id}"), "");
        if body.contains("\"cleaning_up\"") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        deaf.routing()["epoch"].as_i64().unwrap(),
        before,
        "the deaf proxy heard of the move"
    );
    // Its write meets the fence on the old home, refreshes, and lands on the new one.
    let c = deaf.client().await;
    let n = c
        .execute(
            "UPDATE accounts SET counter = counter + 100 WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(deaf.routing()["epoch"].as_i64().unwrap() > before);
    let m = leader.wait_migration(id, Duration::from_secs(30));
    assert_eq!(m["state"], "done", "{m}");
    let to_i: usize = to[1..].parse().unwrap();
    assert_eq!(
        cluster.nodes[to_i].psql(&cluster.db, "SELECT counter FROM accounts WHERE id = 1"),
        "100"
    );
    assert_eq!(cluster.sum("SELECT count(*) FROM accounts WHERE id = 1"), 1);
}

/// A row the source does not have appears on the target during the copy
/// (a client writing there directly): validation fails at the cut-over,
/// the move aborts saying so, routing stays and the target is cleaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_validation_aborts_and_cleans_the_target() {
    let cluster = Cluster::start(2);
    cluster.on_all(SCHEMA);
    let proxy = builder_rate("30kB").start(&cluster);
    let _ledger = load(&proxy).await;
    let routing = proxy.routing();
    let (partition, to) = pick(&routing);
    let part = partition_of(&routing, hash_int8(1)).clone();
    let (lo, hi) = (part["lo"].as_i64().unwrap(), part["hi"].as_i64().unwrap());
    let rogue = (1_000_000i64..)
        .find(|k| (lo..=hi).contains(&hash_int8(*k)))
        .unwrap();
    let id = proxy.migrate(serde_json::json!({"kind": "move", "partition": partition, "to": to}));
    let started = Instant::now();
    while !proxy
        .admin("GET", &format!("/api/migrations/{id}"), "")
        .1
        .contains("\"copying\"")
    {
        assert!(started.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t: usize = to[1..].parse().unwrap();
    cluster.nodes[t].psql(
        &cluster.db,
        &format!("INSERT INTO accounts (id) VALUES ({rogue})"),
    );
    let m = proxy.wait_migration(id, Duration::from_secs(60));
    assert_eq!(m["state"], "aborted", "{m}");
    assert!(
        m["reason"]
            .as_str()
            .unwrap()
            .contains("validation failed for accounts"),
        "{m}"
    );
    let now = partition_of(&proxy.routing(), hash_int8(1)).clone();
    assert_eq!(now["state"], "serving");
    assert_eq!(now["node"], part["node"]);
    let left = cluster.nodes[t].psql(
        &cluster.db,
        &format!(
            "SELECT count(*) FROM accounts WHERE hashint8extended(id, 0) BETWEEN {lo} AND {hi}"
        ),
    );
    assert_eq!(left, "0", "the target keeps rows of the aborted move");
}
