//! The planner on a running proxy: with one node carrying most of the load,
//! `shardcast plan` names it and a sensible move; the monitor publishes
//! each node's utilization.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::{partition_of, Cluster, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_names_the_hot_node_and_a_move_off_it() {
    let cluster = Cluster::start(2);
    cluster.on_all("CREATE TABLE accounts (id bigint PRIMARY KEY, balance int)");
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .partitions(4)
        .node_keys("capacity_qps = 400")
        .extra(
            "[forecast]\nbucket = \"1s\"\nhorizon = \"5s\"\nquantile = 0.6\n\n\
             [monitor]\ninterval = \"1s\"\nsizes_interval = \"2s\"\n\n\
             [planner]\nthreshold = 0.7\ninterval = \"1s\"\nhorizon = \"5s\"\nmin_benefit = 0.01\n",
        )
        .start(&cluster);
    let c = proxy.client().await;
    let values: Vec<String> = (1..=2000).map(|i| format!("({i}, 0)")).collect();
    c.batch_execute(&format!("INSERT INTO accounts VALUES {}", values.join(",")))
        .await
        .unwrap();

    // Keys by partition, and which partitions each node holds.
    let routing = proxy.routing();
    let mut keys: BTreeMap<(String, u64), Vec<i64>> = BTreeMap::new();
    for id in 1..=2000i64 {
        let p = partition_of(&routing, shardcast::ring::hash::hash_int8(id));
        let key = (
            p["node"].as_str().unwrap().to_string(),
            p["id"].as_u64().unwrap(),
        );
        keys.entry(key).or_default().push(id);
    }
    // n0's partitions get 150 req/s each (0.75 of its 400 req/s when it
    // has two), n1's 15 req/s each.
    let mut load = Vec::new();
    for ((node, _), ids) in keys {
        let rate = if node == "n0" { 150 } else { 15 };
        let c = proxy.client().await;
        load.push(tokio::spawn(async move {
            let st = c
                .prepare("SELECT balance FROM accounts WHERE id = $1")
                .await
                .unwrap();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            let started = Instant::now();
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(60) {
                tick.tick().await;
                c.query_one(&st, &[&ids[i % ids.len()]]).await.unwrap();
                i += 1;
            }
        }));
    }

    // Wait for the planner to see it.
    let started = Instant::now();
    let plan = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let out = tokio::task::block_in_place(|| run_cli(&proxy, &["--json"]));
        let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
        // A decision, priced with the bytes the monitor has sampled.
        if plan["decisions"].as_array().is_some_and(|d| {
            d.first()
                .is_some_and(|d| d["cost"]["bytes"].as_u64() > Some(0))
        }) {
            break plan;
        }
        assert!(
            started.elapsed() < Duration::from_secs(35),
            "no decision after 35 s; last plan: {plan:#}\nnodes: {}\nforecast: {}",
            proxy.admin_get("/api/nodes"),
            proxy.admin_get("/api/forecast")
        );
    };
    let d = &plan["decisions"][0];
    assert_eq!(d["action"]["kind"], "move", "{plan:#}");
    assert_eq!(d["action"]["from"], 0, "off the hot node: {plan:#}");
    assert_eq!(d["action"]["to"], 1, "{plan:#}");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.starts_with("n0 is expected at"), "{reason}");
    assert!(reason.contains("to n1"), "{reason}");
    assert!(
        d["cost"]["bytes"].as_u64().unwrap() > 0,
        "sizes sampled: {d:#}"
    );
    let n0 = &plan["nodes"][0];
    assert!(n0["utilization"].as_f64().unwrap() > 0.6, "{n0:#}");
    assert!(n0["after"].as_f64().unwrap() < n0["expected"].as_f64().unwrap());

    // The same as text, for a person.
    let text = tokio::task::block_in_place(|| run_cli(&proxy, &[]));
    assert!(
        text.contains("would do:") && text.contains("move — n0 is expected at"),
        "{text}"
    );

    // The monitor's view: n0 busier than n1, both up, latency measured.
    let nodes: serde_json::Value = serde_json::from_str(&proxy.admin_get("/api/nodes")).unwrap();
    let util = |i: usize| nodes["nodes"][i]["utilization"].as_f64().unwrap();
    assert!(util(0) > 3.0 * util(1), "{nodes:#}");
    let m = &nodes["nodes"][0]["monitor"];
    assert_eq!(m["up"], true);
    assert!(
        m["server"]["commits_per_sec"].as_f64().unwrap() > 0.0,
        "{m:#}"
    );
    assert!(m["latency_ms"].as_f64().is_some());
    // The periodic round (every second here) logs, counts and shows the same
    // (it may first see the forecasts' start-up margins, which take ~15 s to
    // settle, where the first /api/plan saw no forecast yet).
    let started = Instant::now();
    loop {
        let metrics = proxy.admin_get("/metrics");
        let page = proxy.admin_get("/");
        let counted = metrics.contains("shardcast_planner_decisions_total{kind=\"move\"}");
        let shown =
            page.contains("<h2>Planner (predictive)</h2>") && page.contains("n0 is expected at");
        if counted && shown {
            assert!(metrics.contains("shardcast_monitor_node_utilization{node=\"n0\"}"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the planner round did not count or show its decision (counted {counted}, shown {shown})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for l in load {
        l.abort();
    }
}

fn run_cli(proxy: &Proxy, args: &[&str]) -> String {
    let admin = format!("http://127.0.0.1:{}", proxy.admin_port);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["plan", "--admin", &admin])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `shardcast calibrate` ramps through the real proxy and writes the
/// node's capacity into the config, which stays valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibrate_measures_a_node_and_writes_its_capacity() {
    let cluster = Cluster::start(2);
    cluster.on_all("CREATE TABLE accounts (id bigint PRIMARY KEY, balance int)");
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .partitions(4)
        .start(&cluster);
    let config = proxy.config_path();
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .args(["calibrate", "--config", config.to_str().unwrap()])
            .args([
                "--node",
                "n1",
                "--seconds",
                "0.5",
                "--max-clients",
                "8",
                "--write",
            ])
            .output()
            .unwrap()
    });
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("1 clients:") && stderr.contains("p99"),
        "{stderr}"
    );
    let qps: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("capacity_qps = "))
        .expect("the figure is printed")
        .parse()
        .unwrap();
    assert!(qps > 50.0, "{stdout}");
    let text = std::fs::read_to_string(&config).unwrap();
    let cfg = shardcast::config::Config::parse(&text).expect("still a valid config");
    assert_eq!(cfg.nodes[1].capacity_qps, Some(qps.round()));
    assert_eq!(cfg.nodes[0].capacity_qps, None);
    // The node read is the one asked for: n1 saw the statements.
    let metrics = proxy.admin_get("/metrics");
    let count = |node: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("shardcast_router_request_duration_seconds_count")
                    && l.contains(&format!("node=\"{node}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(count("n1") > 10.0 * count("n0").max(1.0), "{}", count("n1"));
    // A node that does not exist is named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args([
            "calibrate",
            "--config",
            config.to_str().unwrap(),
            "--node",
            "n9",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node n9"));
}
