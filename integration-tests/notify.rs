//! LISTEN/NOTIFY under transaction pooling, with tokio-postgres: listening
//! clients hold no server connection, yet get every notification of their
//! channels — from NOTIFY or pg_notify() on any pooled connection, from
//! another client or a direct one — and none after UNLISTEN.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Notification};

use crate::harness::{Cluster, Proxy};

/// A client whose notifications arrive on a channel.
async fn listener(
    url: &str,
) -> (
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<Notification>,
) {
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n);
            }
        }
    });
    (client, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Notification>) -> (String, String) {
    let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification within 10 s")
        .expect("connection open");
    (n.channel().to_string(), n.payload().to_string())
}

async fn nothing(rx: &mut mpsc::UnboundedReceiver<Notification>) {
    if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected notification {}: {}", n.channel(), n.payload());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_clients_get_their_channels_notifications() {
    let cluster = Cluster::start(1);
    // One pooled connection: a LISTEN on it could not serve two clients.
    let proxy = Proxy::builder().pool_size(1).start(&cluster);
    let (one, mut one_rx) = listener(&proxy.url()).await;
    let (two, mut two_rx) = listener(&proxy.url()).await;
    one.batch_execute("LISTEN alpha").await.unwrap();
    two.batch_execute("LISTEN alpha; LISTEN \"Beta\"")
        .await
        .unwrap();
    let sender = proxy.client().await;
    sender.batch_execute("NOTIFY alpha, 'a1'").await.unwrap();
    sender
        .query("SELECT pg_notify($1, $2)", &[&"Beta", &"b1"])
        .await
        .unwrap();
    assert_eq!(next(&mut one_rx).await, ("alpha".into(), "a1".into()));
    assert_eq!(next(&mut two_rx).await, ("alpha".into(), "a1".into()));
    assert_eq!(next(&mut two_rx).await, ("Beta".into(), "b1".into()));
    nothing(&mut one_rx).await;
    // A client's own notification, and one from a direct connection.
    one.batch_execute("NOTIFY alpha, 'mine'").await.unwrap();
    assert_eq!(next(&mut one_rx).await, ("alpha".into(), "mine".into()));
    assert_eq!(next(&mut two_rx).await, ("alpha".into(), "mine".into()));
    let direct = cluster.nodes[0].client(&cluster.db).await;
    direct.batch_execute("NOTIFY \"Beta\", 'd1'").await.unwrap();
    assert_eq!(next(&mut two_rx).await, ("Beta".into(), "d1".into()));
    // Inside a transaction: delivered at COMMIT, not before.
    sender
        .batch_execute("BEGIN; NOTIFY alpha, 'tx'")
        .await
        .unwrap();
    nothing(&mut one_rx).await;
    sender.batch_execute("COMMIT").await.unwrap();
    assert_eq!(next(&mut one_rx).await, ("alpha".into(), "tx".into()));
    assert_eq!(next(&mut two_rx).await, ("alpha".into(), "tx".into()));
    // UNLISTEN: one channel, then all.
    two.batch_execute("UNLISTEN alpha").await.unwrap();
    sender.batch_execute("NOTIFY alpha, 'a2'").await.unwrap();
    assert_eq!(next(&mut one_rx).await, ("alpha".into(), "a2".into()));
    nothing(&mut two_rx).await;
    one.batch_execute("UNLISTEN *").await.unwrap();
    sender
        .batch_execute("NOTIFY alpha, 'a3'; NOTIFY \"Beta\", 'b3'")
        .await
        .unwrap();
    assert_eq!(next(&mut two_rx).await, ("Beta".into(), "b3".into()));
    nothing(&mut one_rx).await;
    // The pooled connection never listened: a client that takes it next
    // hears nothing.
    let (three, mut three_rx) = listener(&proxy.url()).await;
    three.batch_execute("SELECT 1").await.unwrap();
    sender.batch_execute("NOTIFY \"Beta\", 'b4'").await.unwrap();
    three.batch_execute("SELECT 1").await.unwrap();
    nothing(&mut three_rx).await;
    assert_eq!(next(&mut two_rx).await, ("Beta".into(), "b4".into()));
}
