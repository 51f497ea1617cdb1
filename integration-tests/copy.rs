//! COPY on a sharded table through psql's `\copy`: text, CSV with a header
//! and awkward quoting, binary — each row on the node that owns its key;
//! a bad row fails the whole COPY on every node; COPY TO returns every
//! node's rows.

use crate::harness::{partition_of, Cluster, Proxy};

const SCHEMA: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text, balance bigint NOT NULL DEFAULT 0);
                      CREATE INDEX ON accounts (hashint8extended(id, 0));";

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every row on every node is on the node the routing table names; returns the total.
fn check_placement(cluster: &Cluster, proxy: &Proxy) -> usize {
    let routing = proxy.routing();
    let mut total = 0;
    for (i, n) in cluster.nodes.iter().enumerate() {
        let hashes = n.psql(&cluster.db, "SELECT hashint8extended(id, 0) FROM accounts");
        for h in hashes.lines() {
            let p = partition_of(&routing, h.parse().unwrap());
            assert_eq!(p["node"].as_str().unwrap(), format!("n{i}"));
            total += 1;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_rows_go_to_their_nodes_in_every_format() {
    let cluster = Cluster::start(3);
    cluster.on_all(SCHEMA);
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .partitions(12)
        .start(&cluster);
    let dir = tempfile::tempdir().unwrap();

    // Text, 5,000 rows, with escapes in the data.
    let tsv = dir.path().join("a.tsv");
    let rows: Vec<String> = (1..=5000)
        .map(|i| format!("{i}\towner\\t{i}\t{}", i % 7))
        .collect();
    std::fs::write(&tsv, rows.join("\n") + "\n").unwrap();
    let out = proxy.psql(&["-c", &format!("\\copy accounts from '{}'", tsv.display())]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("COPY 5000"), "{}", text(&out));
    assert_eq!(check_placement(&cluster, &proxy), 5000);
    assert_eq!(
        cluster.sum("SELECT count(*) FROM accounts WHERE owner LIKE E'owner\\t%'"),
        5000
    );

    // CSV with a header, a column list in another order, quoted newlines and commas.
    let csv = dir.path().join("b.csv");
    let mut data = String::from("owner,id\n");
    for i in 10_001..=10_500 {
        data.push_str(&format!("\"line one\nline \"\"two\"\", {i}\",{i}\n"));
    }
    std::fs::write(&csv, data).unwrap();
    let out = proxy.psql(&[
        "-c",
        &format!(
            "\\copy accounts (owner, id) from '{}' with (format csv, header)",
            csv.display()
        ),
    ]);
    assert!(text(&out).contains("COPY 500"), "{}", text(&out));
    assert_eq!(check_placement(&cluster, &proxy), 5500);

    // Binary, made by a real server.
    let bin = dir.path().join("c.bin");
    let out = cluster.nodes[0].psql(
        &cluster.db,
        &format!(
            "\\copy (SELECT g::bigint, 'bin' || g, g::bigint FROM generate_series(20001, 21000) g) to '{}' binary",
            bin.display()
        ),
    );
    let _ = out;
    let out = proxy.psql(&[
        "-c",
        &format!("\\copy accounts from '{}' binary", bin.display()),
    ]);
    assert!(text(&out).contains("COPY 1000"), "{}", text(&out));
    assert_eq!(check_placement(&cluster, &proxy), 6500);

    // COPY TO STDOUT: every node's rows.
    let dump = dir.path().join("d.tsv");
    let out = proxy.psql(&["-c", &format!("\\copy accounts to '{}'", dump.display())]);
    assert!(text(&out).contains("COPY 6500"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&dump).unwrap().lines().count(),
        6500
    );
    let out = proxy.psql(&[
        "-c",
        &format!(
            "\\copy (SELECT id FROM accounts WHERE balance = 3) to '{}'",
            dump.display()
        ),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let want = cluster.sum("SELECT count(*) FROM accounts WHERE balance = 3");
    assert_eq!(
        std::fs::read_to_string(&dump).unwrap().lines().count() as i64,
        want
    );
    assert_eq!(cluster.sum("SELECT count(*) FROM pg_prepared_xacts"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_fails_the_whole_copy_on_every_node() {
    let cluster = Cluster::start(2);
    cluster.on_all(SCHEMA);
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .partitions(8)
        .start(&cluster);
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("bad.tsv");
    let mut rows: Vec<String> = (1..=3000).map(|i| format!("{i}\to{i}\t0")).collect();
    rows[1999] = "abc\toops\t0".into();
    std::fs::write(&tsv, rows.join("\n") + "\n").unwrap();
    let out = proxy.psql(&[
        "-v",
        "VERBOSITY=verbose",
        "-c",
        &format!("\\copy accounts from '{}'", tsv.display()),
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("22P02") && t.contains("line 2000"), "{t}");
    assert_eq!(
        cluster.sum("SELECT count(*) FROM accounts"),
        0,
        "nothing of the failed COPY stays"
    );

    // A row a node rejects (duplicate key) fails it everywhere too.
    proxy.psql(&["-c", "INSERT INTO accounts (id) VALUES (77)"]);
    let good: Vec<String> = (1..=100).map(|i| format!("{i}\to{i}\t0")).collect();
    std::fs::write(&tsv, good.join("\n") + "\n").unwrap();
    let out = proxy.psql(&[
        "-v",
        "VERBOSITY=verbose",
        "-c",
        &format!("\\copy accounts from '{}'", tsv.display()),
    ]);
    assert!(text(&out).contains("23505"), "{}", text(&out));
    assert_eq!(cluster.sum("SELECT count(*) FROM accounts"), 1);
    assert_eq!(cluster.sum("SELECT count(*) FROM pg_prepared_xacts"), 0);
    // The session and the pool are fine afterwards.
    let out = proxy.psql(&["-c", "SELECT count(*) FROM accounts"]);
    assert!(text(&out).contains('1'), "{}", text(&out));
}
