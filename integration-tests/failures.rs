//! Bad input and dead nodes: a clear error, nothing lost, the proxy stays up.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{node_of_int8, Cluster, Proxy};

/// Reads whatever the proxy answers until it closes the connection.
fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn startup() -> Vec<u8> {
    shardcast::protocol::startup::encode_startup(&[("user", "postgres"), ("database", "app")])
}

#[test]
fn malformed_protocol_bytes_get_an_error_response() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::builder().start(&cluster);
    // Not PostgreSQL at all.
    let out = exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(out.first(), Some(&b'E'), "{out:?}");
    assert!(String::from_utf8_lossy(&out).contains("08P01"));
    // A valid startup, then a message with an impossible length.
    let mut bytes = startup();
    bytes.extend_from_slice(&[b'Q', 0, 0, 0, 2]);
    let out = exchange(proxy.port, &bytes);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("08P01") && text.contains("invalid message length"),
        "{text}"
    );
    // A Bind for a statement that was never prepared: an error, session goes on.
    let mut bytes = startup();
    let bind = shardcast::protocol::Frame::new(b'B', b"\0nope\0\0\0\0\0\0\0");
    bytes.extend_from_slice(&bind.bytes);
    bytes.extend_from_slice(&shardcast::protocol::Frame::new(b'S', b"").bytes);
    bytes.extend_from_slice(&shardcast::protocol::messages::encode_query("SELECT 42").bytes);
    bytes.extend_from_slice(&shardcast::protocol::Frame::new(b'X', b"").bytes);
    let out = exchange(proxy.port, &bytes);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("26000") && text.contains("42"), "{text}");
    // The proxy still serves.
    assert_eq!(proxy.psql(&["-Atc", "SELECT 7"]).stdout, b"7\n");
}

#[test]
fn unknown_database_is_refused_with_its_name() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::builder().start(&cluster);
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "nope",
            "-c",
            "select 1",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("database \"nope\" does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_fails_only_its_statements() {
    let cluster = Cluster::start(2);
    cluster.on_all("CREATE TABLE accounts (id bigint PRIMARY KEY)");
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .start(&cluster);
    let c = proxy.client().await;
    let routing = proxy.routing();
    let node_of = |id: i64| node_of_int8(&routing, id);
    let on1 = (1..1000).find(|i| node_of(*i) == "n1").unwrap();
    let on0 = (1..1000).find(|i| node_of(*i) == "n0").unwrap();
    cluster.nodes[1].stop();
    let started = Instant::now();
    let e = c
        .execute("INSERT INTO accounts (id) VALUES ($1)", &[&on1])
        .await
        .unwrap_err();
    let db = e
        .as_db_error()
        .expect("an ErrorResponse, not a dropped connection");
    assert!(
        db.code().code().starts_with("08") || db.code().code() == "57P01",
        "{}",
        db.code().code()
    );
    assert!(
        db.message().contains("n1"),
        "the error names the node: {}",
        db.message()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The other node still works, on the same client connection.
    c.execute("INSERT INTO accounts (id) VALUES ($1)", &[&on0])
        .await
        .unwrap();
    let e = c.query("SELECT * FROM accounts", &[]).await.unwrap_err();
    assert!(e.as_db_error().is_some());
    assert_eq!(
        cluster.nodes[0].psql(&cluster.db, "SELECT count(*) FROM accounts"),
        "1"
    );
    let metrics = proxy.admin_get("/metrics");
    assert!(
        metrics.contains("shardcast_frontend_errors_total{origin=\"proxy\",sqlstate=\"08006\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_statement() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::builder().start(&cluster);
    let c = proxy.client().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let e = c.batch_execute("SELECT pg_sleep(30)").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "57014", "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
}

#[test]
fn bad_config_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[proxy]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\ndatabase = \"app\"\nlisen = 3\n\n[[nodes]]\nname = \"a\"\nurl = \"postgres://u@h/db\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":5: proxy.lisen: unknown key"), "{err}");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/shardcast.toml"
        ))
        .unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
