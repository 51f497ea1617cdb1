//! A client's first moments: SSL/GSS refusal, cancel requests, the startup
//! packet, authentication, and the greeting (parameters, key, ready).

use std::sync::Arc;

use bytes::BytesMut;
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::FrontendError;
use super::session::Session;
use super::settings::Settings;
use super::Shared;
use crate::config::AuthMethod;
use crate::protocol::messages::{
    authentication, backend_key_data, error_response, parameter_status, ready_for_query,
};
use crate::protocol::params::ParamSet;
use crate::protocol::startup::{try_startup, Startup};
use crate::protocol::{sqlstate, try_frame};

/// Parameters echoed to the client whatever the server said.
const CLIENT_REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
];

pub async fn handle_client(
    shared: Arc<Shared>,
    mut stream: TcpStream,
) -> Result<(), FrontendError> {
    let _ = stream.set_nodelay(true);
    // Becomes the session's read buffer: small until the client sends more.
    let mut buf = BytesMut::with_capacity(1024);
    let startup = loop {
        let next = match read_startup(&mut stream, &mut buf).await {
            Ok(s) => s,
            Err(FrontendError::Protocol(e)) => {
                shared.metrics.error(sqlstate::PROTOCOL_VIOLATION, "proxy");
                fatal(&mut stream, sqlstate::PROTOCOL_VIOLATION, &e.to_string()).await?;
                return Err(FrontendError::Protocol(e));
            }
            Err(e) => return Err(e),
        };
        match next {
            Startup::Ssl | Startup::GssEnc => stream.write_all(b"N").await?,
            Startup::Cancel { pid, secret } => {
                shared.cancels.cancel((pid, secret)).await;
                return Ok(());
            }
            s @ Startup::Params { .. } => break s,
        }
    };
    let Startup::Params { params, .. } = &startup else {
        unreachable!()
    };
    let user = startup.param("user").unwrap_or("").to_string();
    let database = startup.param("database").unwrap_or(&user).to_string();
    if startup
        .param("replication")
        .is_some_and(|r| r != "false" && r != "0")
    {
        return fatal(
            &mut stream,
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported",
        )
        .await;
    }
    if database != shared.config.proxy.database && shared.pools.len() == 1 {
        authenticate(&shared, &mut stream, &mut buf, &user).await?;
        let params = params.clone();
        return super::passthrough::pass_through(&shared, stream, buf, &params, &database).await;
    }
    if database != shared.config.proxy.database {
        let msg = format!(
            "database \"{database}\" does not exist (this proxy serves \"{}\")",
            shared.config.proxy.database
        );
        return fatal(&mut stream, sqlstate::INVALID_CATALOG_NAME, &msg).await;
    }
    authenticate(&shared, &mut stream, &mut buf, &user).await?;

    let mut out = BytesMut::with_capacity(1024);
    out.extend_from_slice(&authentication(0, &[]).bytes);
    let mut reported = ParamSet::default();
    for (k, v) in &shared.server_params {
        let client = params
            .iter()
            .find(|(ck, _)| ck.eq_ignore_ascii_case(k) && CLIENT_REPORTED.contains(&k.as_str()));
        // The client's value, as the server would report it: the server's
        // own spelling when they mean the same.
        let v = match client {
            Some((_, cv)) if !super::settings::same_value(k, v, cv) => cv.as_str(),
            _ => v,
        };
        out.extend_from_slice(&parameter_status(k, v).bytes);
        reported.set(k, v);
    }
    let (key, slot) = shared.cancels.register();
    out.extend_from_slice(&backend_key_data(key.0, key.1).bytes);
    out.extend_from_slice(&ready_for_query(b'I').bytes);
    stream.write_all(&out).await?;

    let settings = Settings::from_startup(params, &shared.server_params);
    let source = shared
        .recorder
        .source(startup.param("application_name").unwrap_or(""), &user);
    let (rd, wr) = stream.into_split();
    shared.metrics.client_connections.inc();
    let result = Session::new(
        shared.clone(),
        rd,
        wr,
        buf,
        settings,
        reported,
        (key.0, slot),
        source,
    )
    .run()
    .await;
    shared.metrics.client_connections.dec();
    shared.cancels.unregister(key);
    result
}

async fn read_startup(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Startup, FrontendError> {
    loop {
        if let Some(s) = try_startup(buf)? {
            return Ok(s);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(FrontendError::ClientIo(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
}

async fn fatal(stream: &mut TcpStream, code: &str, msg: &str) -> Result<(), FrontendError> {
    stream
        .write_all(&error_response("FATAL", code, msg, None).bytes)
        .await?;
    Ok(())
}

async fn authenticate(
    shared: &Shared,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    user: &str,
) -> Result<(), FrontendError> {
    if shared.config.auth.method == AuthMethod::Trust {
        return Ok(());
    }
    let salt: [u8; 4] = rand::random();
    stream.write_all(&authentication(5, &salt).bytes).await?;
    let f = loop {
        if let Some(f) = try_frame(buf)? {
            break f;
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(FrontendError::ClientIo(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    };
    let given = if f.tag == b'p' {
        f.body().strip_suffix(b"\0").unwrap_or(f.body())
    } else {
        b""
    };
    let ok = shared
        .config
        .auth
        .users
        .iter()
        .find(|u| u.name == user)
        .is_some_and(|u| md5_password(user, &u.password, salt).as_bytes() == given);
    if !ok {
        let msg = format!("password authentication failed for user \"{user}\"");
        fatal(stream, sqlstate::INVALID_PASSWORD, &msg).await?;
        return Err(FrontendError::ClientIo(std::io::Error::other(msg)));
    }
    Ok(())
}

/// `md5` + hex(md5(hex(md5(password + user)) + salt)), as libpq computes it.
pub fn md5_password(user: &str, password: &str, salt: [u8; 4]) -> String {
    let inner = hex(&Md5::digest(
        [password.as_bytes(), user.as_bytes()].concat(),
    ));
    let outer = hex(&Md5::digest([inner.as_bytes(), &salt[..]].concat()));
    format!("md5{outer}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn md5_matches_postgres_protocol() {
        let ours = super::md5_password("alice", "secret", [1, 2, 3, 4]);
        let theirs = postgres_protocol::authentication::md5_hash(b"alice", b"secret", [1, 2, 3, 4]);
        assert_eq!(ours, theirs);
    }
}
