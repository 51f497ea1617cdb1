//! Real servers for end-to-end tests: independent PostgreSQL nodes (one per
//! shard, `initdb` + `pg_ctl` as user `postgres`, free loopback ports, data
//! in a temp dir) and the shardcast binary on a generated config. Every
//! process is stopped and every directory removed on `Drop`, also when the
//! test panics.

pub mod pg;
pub mod proxy;
pub mod wire;

pub use pg::Cluster;
pub use proxy::Proxy;

/// The partition of `/api/routing` (as JSON) whose inclusive range holds `hash`.
pub fn partition_of(routing: &serde_json::Value, hash: i64) -> &serde_json::Value {
    routing["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["lo"].as_i64().unwrap() <= hash && hash <= p["hi"].as_i64().unwrap())
        .expect("partitions cover the hash space")
}

/// The node `/api/routing` names for a bigint key.
pub fn node_of_int8(routing: &serde_json::Value, id: i64) -> String {
    let p = partition_of(routing, shardcast::ring::hash::hash_int8(id));
    p["node"].as_str().unwrap().to_string()
}

/// A free TCP port on 127.0.0.1 (bind to 0 and let the OS choose).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// Connects a tokio-postgres client and drives its connection in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}
