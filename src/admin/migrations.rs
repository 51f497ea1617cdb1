//! `/api/migrations`: `POST` starts a move, split, merge or drain (a bad
//! request gets a 4xx naming the problem and changes nothing); `GET` lists
//! the latest migrations with their progress, `GET /api/migrations/<id>`
//! shows one. The list is read from the catalog, so every proxy shows the
//! whole cluster's migrations, whoever runs them.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};

use super::reply;
use crate::catalog::journal;
use crate::frontend::Shared;

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": message }))
}

pub async fn handle(
    shared: &Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let one = path
        .strip_prefix("/api/migrations/")
        .filter(|s| !s.is_empty());
    match (req.method().clone(), one) {
        (Method::POST, None) => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
            };
            let request: crate::sharding::Request = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("body must be JSON like {{\"kind\": \"move\", \"partition\": 3, \"to\": \"b\"}}: {e}"),
                    )
                }
            };
            match crate::sharding::submit(shared, request).await {
                Ok(ids) => json(
                    StatusCode::ACCEPTED,
                    serde_json::json!({ "id": ids[0], "ids": ids }),
                ),
                Err(r) => error(
                    StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
                    &r.message,
                ),
            }
        }
        (Method::GET, one) => {
            let Some(catalog) = shared.catalog.as_ref() else {
                return error(StatusCode::SERVICE_UNAVAILABLE, "no catalog");
            };
            let c = match catalog.connect().await {
                Ok(c) => c,
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e),
            };
            match one {
                None => match journal::list(&c, 200).await {
                    Ok(list) => json(StatusCode::OK, serde_json::json!(list)),
                    Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
                },
                Some(id) => {
                    let Ok(id) = id.parse::<i64>() else {
                        return error(
                            StatusCode::BAD_REQUEST,
                            &format!("\"{id}\" is not a migration id"),
                        );
                    };
                    match journal::get(&c, id).await {
                        Ok(Some(m)) => json(StatusCode::OK, serde_json::json!(m)),
                        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no migration {id}")),
                        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
                    }
                }
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET or POST /api/migrations, GET /api/migrations/<id>",
        ),
    }
}

/// The latest migrations for the status page (empty if the catalog is down).
pub async fn recent(shared: &Shared) -> Vec<journal::Migration> {
    let Some(catalog) = shared.catalog.as_ref() else {
        return Vec::new();
    };
    match catalog.connect().await {
        Ok(c) => journal::list(&c, 20).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}
