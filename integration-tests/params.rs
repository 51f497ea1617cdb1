//! ParameterStatus as a server sends it: every change of a reported
//! parameter (SET inside a transaction, SET LOCAL ended by COMMIT, a SET
//! the proxy deferred, RESET, DISCARD ALL) reaches the client at the moment
//! a direct server reports it, and nothing else does — not the settings a
//! pooled connection is brought to. Each script runs against a direct
//! server and through shardcast; the answers, ParameterStatus included,
//! must be the same.

use crate::harness::wire::{summary_with_params, Wire};
use crate::harness::{Cluster, Proxy};

/// Runs simple queries one by one; every answer in text form.
fn script(w: &mut Wire, queries: &[&str]) -> Vec<String> {
    let mut seen = Vec::new();
    for q in queries {
        w.query(q);
        seen.push(format!("> {q}"));
        seen.extend(summary_with_params(&w.until_ready()));
    }
    seen
}

/// Parse/Bind/Execute/Sync of one statement (the extended protocol).
fn extended(w: &mut Wire, sql: &str) -> Vec<String> {
    w.pbe("", sql);
    w.sync();
    let mut seen = vec![format!("> {sql} (extended)")];
    seen.extend(summary_with_params(&w.until_ready()));
    seen
}

const SCRIPT: &[&str] = &[
    // A SET the proxy defers with its BEGIN, then a date in that style.
    "BEGIN",
    "SET datestyle = German, YMD",
    "SELECT '2000-01-02'::date",
    "COMMIT",
    "SELECT '2000-01-03'::date",
    // SET LOCAL ends with the transaction.
    "BEGIN",
    "SELECT 1",
    "SET LOCAL TimeZone = 'Asia/Tokyo'",
    "SELECT '2000-01-01 00:00:00+00'::timestamptz",
    "COMMIT",
    // A deferred transaction that never reaches a server, rolled back.
    "BEGIN",
    "SET IntervalStyle = 'sql_standard'",
    "ROLLBACK",
    "SELECT '1 day'::interval",
    // Outside a transaction; RESET; one statement changing two.
    "SET client_encoding = 'LATIN1'",
    "SELECT 'x'",
    "RESET client_encoding",
    "SET TimeZone = 'UTC'; SET IntervalStyle = 'iso_8601'",
    "SELECT '1 day'::interval",
    // A failed SET inside a deferred transaction fails it, as on a server.
    "BEGIN",
    "SET datestyle = nonsense",
    "SELECT 1",
    "ROLLBACK",
    "DISCARD ALL",
    "SHOW datestyle",
];

#[test]
fn parameter_changes_are_reported_as_a_server_reports_them() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::builder().pool_size(1).start(&cluster);
    let node = &cluster.nodes[0];
    let run = |port: u16, db: &str| {
        let mut w = Wire::connect(port, db);
        let mut seen = script(&mut w, SCRIPT);
        seen.extend(extended(&mut w, "SET datestyle = SQL, DMY"));
        seen.extend(extended(&mut w, "SELECT '2000-01-02'::date"));
        seen.extend(script(&mut w, &["RESET ALL"]));
        seen
    };
    let direct = run(node.port, &cluster.db);
    for must in [
        "S DateStyle=German, YMD",
        "D[02.01.2000]",
        "D[03.01.2000]",
        "S TimeZone=Asia/Tokyo",
        "S IntervalStyle=sql_standard",
        "S client_encoding=LATIN1",
        "E 22023",
        "D[02/01/2000]",
    ] {
        assert!(
            direct.contains(&must.to_string()),
            "{must} not in {direct:#?}"
        );
    }
    let proxied = run(proxy.port, "app");
    assert_eq!(proxied, direct);
}

#[test]
fn settings_restored_on_a_pooled_connection_are_not_reported() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::builder().pool_size(1).start(&cluster);
    // Two clients share one server connection: each one's settings are
    // brought back before its statements, silently — and stay its own.
    let mut a = Wire::connect(proxy.port, "app");
    let mut b = Wire::connect(proxy.port, "app");
    let a1 = script(&mut a, &["SET TimeZone = 'Asia/Tokyo'", "SHOW TimeZone"]);
    assert!(a1.contains(&"S TimeZone=Asia/Tokyo".to_string()), "{a1:?}");
    let b1 = script(&mut b, &["SET datestyle = German", "SHOW TimeZone"]);
    assert!(!b1.iter().any(|s| s.starts_with("S TimeZone")), "{b1:?}");
    assert!(!b1.contains(&"D[Asia/Tokyo]".to_string()), "{b1:?}");
    let a2 = script(&mut a, &["SHOW TimeZone", "SHOW datestyle"]);
    assert_eq!(
        a2,
        [
            "> SHOW TimeZone",
            "T",
            "D[Asia/Tokyo]",
            "C SHOW",
            "Z I",
            "> SHOW datestyle",
            "T",
            "D[ISO, MDY]",
            "C SHOW",
            "Z I"
        ]
    );
    // A SET committed inside a transaction stays after COMMIT, on
    // whichever connection comes next; one rolled back does not.
    script(
        &mut a,
        &["BEGIN", "SELECT 1", "SET search_path = a_schema", "COMMIT"],
    );
    script(
        &mut a,
        &[
            "BEGIN",
            "SELECT 1",
            "SET statement_timeout = 1234",
            "ROLLBACK",
        ],
    );
    script(&mut b, &["SELECT 1"]);
    let a3 = script(&mut a, &["SHOW search_path", "SHOW statement_timeout"]);
    assert!(a3.contains(&"D[a_schema]".to_string()), "{a3:?}");
    assert!(a3.contains(&"D[0]".to_string()), "{a3:?}");
    let b2 = script(&mut b, &["SHOW search_path", "SHOW datestyle"]);
    assert!(b2.contains(&"D[\"$user\", public]".to_string()), "{b2:?}");
    assert!(b2.contains(&"D[German, DMY]".to_string()), "{b2:?}");
}
