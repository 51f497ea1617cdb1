//! Clients of another database than the proxy's: passed through to that
//! database when the proxy fronts one node (as the server would serve
//! them), refused with a clear FATAL when it fronts several.

use crate::harness::{Cluster, Proxy};

fn psql(proxy: &Proxy, db: &str, sql: &str) -> (bool, String) {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .args(["-c", sql])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn another_database_of_a_single_node_is_passed_through() {
    let cluster = Cluster::start(1);
    cluster.nodes[0].create_database("other");
    let proxy = Proxy::builder().start(&cluster);
    let (ok, out) = psql(
        &proxy,
        "other",
        "CREATE TEMP TABLE t AS SELECT 1 AS x; SELECT current_database(), (SELECT x FROM t)",
    );
    assert!(ok, "{out}");
    assert!(out.trim().ends_with("other|1"), "{out}");
    let (ok, out) = psql(&proxy, "nope", "SELECT 1");
    assert!(!ok);
    assert!(out.contains("database \"nope\" does not exist"), "{out}");
    // The proxy's own database is still served, pooled.
    let (ok, out) = psql(&proxy, "app", "SELECT current_database()");
    assert!(ok && out.trim() == cluster.db, "{out}");
}

#[test]
fn another_database_is_refused_with_several_nodes() {
    let cluster = Cluster::start(2);
    let proxy = Proxy::builder().start(&cluster);
    let (ok, out) = psql(&proxy, "postgres", "SELECT 1");
    assert!(!ok);
    assert!(out.contains("this proxy serves \"app\""), "{out}");
}
