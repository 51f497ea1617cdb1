//! The admin HTTP server (hyper): `/metrics` for Prometheus, `/api/*` as
//! JSON for tools and tests, and `/` a status page for people.

mod migrations;
mod render;
mod status_page;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::frontend::Shared;

pub use render::{metrics_text, nodes_json, routing_json};

/// Serves until `shutdown` flips to true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    shared: &Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/api/migrations" || path.starts_with("/api/migrations/") {
        return migrations::handle(shared, req).await;
    }
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics_text(shared),
        ),
        "/api/routing" => reply(
            StatusCode::OK,
            "application/json",
            routing_json(shared).to_string(),
        ),
        "/api/forecast" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&*shared.forecaster.snapshot()).unwrap_or_default(),
        ),
        "/api/nodes" => reply(
            StatusCode::OK,
            "application/json",
            nodes_json(shared).to_string(),
        ),
        "/api/plan" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&crate::monitor::live::plan_now(shared)).unwrap_or_default(),
        ),
        "/" | "/status" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status_page::render(shared, &migrations::recent(shared).await),
        ),
        other => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no such path {other}; try /metrics, /api/routing, /api/forecast, /api/nodes, /api/plan, /api/migrations or /\n"),
        ),
    }
}

pub(crate) fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
