//! A client of another database than the proxy's, when the proxy fronts a
//! single node: there is nothing to route, so its session is passed through
//! to that database on the node — one server connection for the session,
//! bytes relayed both ways, cancel requests forwarded — as the server would
//! serve it (a database that does not exist gets the server's own FATAL).
//! With several nodes such a client is refused: which node would it mean?

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::cancel::CancelTarget;
use super::error::FrontendError;
use super::settings::Settings;
use super::Shared;
use crate::backend::{BackendError, ServerConn};
use crate::protocol::messages::{
    authentication, backend_key_data, encode_query, error_response, parameter_status,
    ready_for_query,
};
use crate::protocol::sqlstate;

/// Serves the session of a client of `database` (authenticated already).
pub async fn pass_through(
    shared: &Shared,
    mut client: TcpStream,
    leftover: BytesMut,
    params: &[(String, String)],
    database: &str,
) -> Result<(), FrontendError> {
    let mut target = shared.pools[0].target.clone();
    target.dbname = database.to_string();
    let mut conn = match ServerConn::connect(&target).await {
        Ok(c) => c,
        Err(e) => {
            let (code, message) = match &e {
                BackendError::Refused { code, message, .. } => (code.clone(), message.clone()),
                other => (sqlstate::CONNECTION_FAILURE.to_string(), other.to_string()),
            };
            let f = error_response("FATAL", &code, &message, None);
            client.write_all(&f.bytes).await?;
            return Ok(());
        }
    };
    // The client's startup parameters, as the server would have taken them.
    let mut sql = Settings::from_startup(params, &[]).sync_sql();
    if let Some((_, name)) = params.iter().find(|(k, _)| k == "application_name") {
        sql.push_str(&format!(
            "; SET application_name = '{}'",
            name.replace('\'', "''")
        ));
    }
    conn.write_all(&encode_query(&sql).bytes).await?;
    loop {
        let f = conn.recv().await?;
        match f.tag {
            b'E' => {
                client.write_all(&f.bytes).await?;
                return Ok(());
            }
            b'Z' => break,
            _ => {}
        }
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(&authentication(0, &[]).bytes);
    for (k, v) in conn.params.pairs() {
        out.extend_from_slice(&parameter_status(k, v).bytes);
    }
    let (key, slot) = shared.cancels.register();
    slot.lock().push(CancelTarget {
        addr: conn.addr.clone(),
        pid: conn.pid,
        secret: conn.secret,
    });
    out.extend_from_slice(&backend_key_data(key.0, key.1).bytes);
    out.extend_from_slice(&ready_for_query(b'I').bytes);
    client.write_all(&out).await?;
    let (mut server, pending) = conn.into_parts();
    let r = async {
        server.write_all(&leftover).await?;
        client.write_all(&pending).await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await
    }
    .await;
    shared.cancels.unregister(key);
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(FrontendError::ClientIo(e)),
    }
}
