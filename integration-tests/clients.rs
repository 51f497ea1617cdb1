//! Real clients through the proxy: psql and pgbench in all three modes.

use crate::harness::{Cluster, Proxy};

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn psql_session() {
    let cluster = Cluster::start(2);
    cluster.on_all("CREATE TABLE accounts (id bigint PRIMARY KEY, owner text)");
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .start(&cluster);
    let out = proxy.psql(&[
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "INSERT INTO accounts (id, owner) VALUES (1, 'a'), (1000, 'b') ON CONFLICT DO NOTHING",
    ]);
    // The two keys may live on different nodes; then the proxy refuses.
    let both = text(&out);
    assert!(
        out.status.success() || both.contains("several shards"),
        "{both}"
    );
    let out = proxy.psql(&[
        "-c",
        "INSERT INTO accounts (id, owner) VALUES (2, 'x')",
        "-c",
        "SELECT owner FROM accounts WHERE id = 2",
        "-c",
        "SHOW server_version",
        "-c",
        "SELECT 1 AS one",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("INSERT 0 1") && t.contains(" x") && t.contains("15.") && t.contains("one"),
        "{t}"
    );
    // A refusal reaches psql as an ERROR with its SQLSTATE.
    let out = proxy.psql(&[
        "-v",
        "VERBOSITY=verbose",
        "-c",
        "INSERT INTO accounts SELECT 1000, 'y'",
    ]);
    let t = text(&out);
    assert!(!out.status.success());
    assert!(t.contains("0A000") && t.contains("shard key"), "{t}");
    // \d works (catalog queries go to the default node).
    let out = proxy.psql(&["-c", "\\d accounts"]);
    assert!(text(&out).contains("owner"), "{}", text(&out));
    // COPY into an unsharded table and out again.
    let out = proxy.psql(&[
        "-c",
        "CREATE TABLE notes (n int)",
        "-c",
        "\\copy notes FROM PROGRAM 'seq 1 500'",
        "-c",
        "SELECT sum(n) FROM notes",
    ]);
    let t = text(&out);
    assert!(t.contains("COPY 500") && t.contains("125250"), "{t}");
}

fn pgbench_ok(o: &std::process::Output) {
    let t = text(o);
    assert!(o.status.success(), "pgbench failed:\n{t}");
    assert!(t.contains("number of failed transactions: 0"), "{t}");
}

/// The default tpcb-like script on one node, in every query mode.
#[test]
fn pgbench_all_modes_one_node() {
    let cluster = Cluster::start(1);
    let init = std::process::Command::new("pgbench")
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.nodes[0].port.to_string(),
            "-U",
            "postgres",
            "shard",
        ])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    let proxy = Proxy::builder()
        .table("pgbench_accounts", "aid", "integer")
        .pool_size(4)
        .start(&cluster);
    for mode in ["simple", "extended", "prepared"] {
        let out = proxy.pgbench(&["-M", mode, "-c", "8", "-j", "2", "-t", "150"]);
        pgbench_ok(&out);
    }
    // Balances moved consistently: every transaction updated all four tables.
    let n = &cluster.nodes[0];
    let h = n.psql("shard", "SELECT count(*) FROM pgbench_history");
    assert_eq!(
        h,
        (8 * 150).to_string(),
        "pgbench empties the history before each run"
    );
    let (a, t) = (
        n.psql("shard", "SELECT sum(abalance) FROM pgbench_accounts"),
        n.psql("shard", "SELECT sum(tbalance) FROM pgbench_tellers"),
    );
    assert_eq!(a, t);
}

/// Select-only on a table sharded over two nodes.
#[test]
fn pgbench_select_only_two_nodes() {
    let cluster = Cluster::start(2);
    for node in &cluster.nodes {
        let init = std::process::Command::new("pgbench")
            .args([
                "-i",
                "-s",
                "1",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &node.port.to_string(),
                "-U",
                "postgres",
                "shard",
            ])
            .output()
            .unwrap();
        assert!(init.status.success());
    }
    let proxy = Proxy::builder()
        .table("pgbench_accounts", "aid", "integer")
        .start(&cluster);
    for mode in ["simple", "extended", "prepared"] {
        pgbench_ok(&proxy.pgbench(&["-S", "-M", mode, "-c", "8", "-j", "2", "-t", "300"]));
    }
    let metrics = proxy.admin_get("/metrics");
    for node in ["n0", "n1"] {
        let reads: u64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("shardcast_router_requests_total")
                    && l.contains(&format!("node=\"{node}\""))
                    && l.contains("read")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert!(reads > 1000, "node {node} served {reads} reads");
    }
}
