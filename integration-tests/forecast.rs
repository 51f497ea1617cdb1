//! The forecast sees a heating partition coming before its observed rate
//! gets there, through the real proxy.

use std::time::{Duration, Instant};

use crate::harness::{partition_of, Cluster, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecast_rises_before_the_observed_rate() {
    let cluster = Cluster::start(2);
    cluster.on_all("CREATE TABLE accounts (id bigint PRIMARY KEY, n int)");
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .extra("[forecast]\nbucket = \"1s\"\nhorizon = \"5s\"\n")
        .start(&cluster);
    let c = proxy.client().await;
    c.execute("INSERT INTO accounts VALUES (1, 0)", &[])
        .await
        .unwrap();
    let hot = partition_of(&proxy.routing(), shardcast::ring::hash::hash_int8(1))["id"]
        .as_u64()
        .unwrap();

    // Load on the hot key ramps up: 4/s, then 3/s more every second.
    let load = tokio::spawn(async move {
        let st = c
            .prepare("SELECT n FROM accounts WHERE id = $1")
            .await
            .unwrap();
        let started = Instant::now();
        for second in 0..40u64 {
            let rate = 4 + 3 * second;
            let gap = Duration::from_secs(1) / rate as u32;
            for i in 0..rate {
                let due = started + Duration::from_secs(second) + gap * i as u32;
                tokio::time::sleep_until(due.into()).await;
                c.query_one(&st, &[&1i64]).await.unwrap();
            }
        }
    });

    let threshold = 70.0;
    let (mut first_predicted, mut first_observed) = (None, None);
    let started = Instant::now();
    let mut last = serde_json::Value::Null;
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let body = tokio::task::block_in_place(|| proxy.admin_get("/api/forecast"));
        let f: serde_json::Value = serde_json::from_str(&body).unwrap();
        let Some(p) = f["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"].as_u64() == Some(hot))
        else {
            continue;
        };
        let t = started.elapsed().as_secs_f64();
        if first_predicted.is_none() && p["predicted_rate"].as_f64().unwrap() >= threshold {
            first_predicted = Some(t);
        }
        if first_observed.is_none() && p["current_rate"].as_f64().unwrap() >= threshold {
            first_observed = Some(t);
        }
        last = p.clone();
    }
    load.await.unwrap();
    let (p, o) = (
        first_predicted.expect("forecast reached the threshold"),
        first_observed.expect("load reached it"),
    );
    eprintln!(
        "hot partition {hot}: forecast crossed {threshold}/s at {p:.1}s, observed rate at {o:.1}s"
    );
    assert!(
        p + 2.0 <= o,
        "forecast crossed {threshold}/s at {p:.1}s, observed rate at {o:.1}s; last: {last}"
    );
    assert!(last["upper_rate"].as_f64().unwrap() >= last["predicted_rate"].as_f64().unwrap());
    assert!(last["model"].is_string());
    // The gauges are exported too.
    let metrics = proxy.admin_get("/metrics");
    assert!(metrics.contains("shardcast_analyzer_predicted_rate{node="));
    assert!(metrics.contains(&format!("partition=\"{hot}\"")));
    // The status page draws the hot partition's load and names its model.
    let page = proxy.admin_get("/");
    assert!(page.contains("Load and forecast"));
    assert!(page.contains("<polyline"));
    assert!(page.contains(last["model"].as_str().unwrap()));
}
