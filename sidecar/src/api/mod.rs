//! The HTTP layer: the only module that imports actix-web. Two listeners: the local API for the
//! master (`localListenUrl`) and the peer/stream/ops API (`listenUrl`).

mod error;
mod index;
mod local;
mod ops;
mod peer;
mod peer_index;

use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Server, Service};
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;

pub use error::ApiError;

use crate::cache::Caches;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::{HttpLabel, Metrics};
use crate::peers::outbox::Outbox;
use crate::peers::Peers;
use crate::receiver::Receiver;

/// Everything a handler may use. Built once per node by `app`.
pub struct AppState {
    pub config: Arc<Config>,
    pub caches: Arc<Caches>,
    pub index: Arc<crate::index::IndexStore>,
    pub outbox: Arc<Outbox>,
    pub peers: Arc<Peers>,
    pub receiver: Arc<Receiver>,
    pub verifier: Arc<crate::auth::Verifier>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Reads a request body up to `limit` bytes; past it, 413 without reading the rest.
pub(crate) async fn read_body(
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(format!(
                "request body exceeds the limit of {limit} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub(crate) fn bearer(req: &HttpRequest) -> Option<&[u8]> {
    req.headers()
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().as_bytes())
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no such endpoint: {} {}",
        req.method(),
        req.path()
    )))
}

macro_rules! build_app {
    ($state:expr, $listener:expr, $configure:expr) => {{
        let state = $state.clone();
        let instance = state.config.instance_id.clone();
        let metrics = state.metrics.clone();
        App::new()
            .app_data(web::Data::from(state))
            .wrap(DefaultHeaders::new().add(("X-HA-Instance", instance)))
            .wrap_fn(move |req, srv| {
                let start = Instant::now();
                let method = req.method().to_string();
                let metrics = metrics.clone();
                let fut = srv.call(req);
                async move {
                    let res = fut.await?;
                    let label = HttpLabel {
                        listener: $listener.to_owned(),
                        method,
                        status: res.status().as_u16().to_string(),
                    };
                    metrics
                        .http_seconds
                        .get_or_create(&label)
                        .observe(start.elapsed().as_secs_f64());
                    Ok(res)
                }
            })
            .configure($configure)
            .default_service(web::to(not_found))
    }};
}

fn serve(
    state: Arc<AppState>,
    listener: std::net::TcpListener,
    name: &'static str,
    routes: fn(&mut web::ServiceConfig),
) -> std::io::Result<Server> {
    let workers = state.config.workers;
    let grace = state.config.shutdown_grace;
    Ok(HttpServer::new(move || build_app!(state, name, routes))
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(grace.as_secs().max(1))
        .listen(listener)?
        .run())
}

/// Starts the local API server on an already-bound listener.
pub fn serve_local(
    state: Arc<AppState>,
    listener: std::net::TcpListener,
) -> std::io::Result<Server> {
    serve(state, listener, "local", local::configure)
}

/// Starts the peer/stream/ops server on an already-bound listener.
pub fn serve_peer(
    state: Arc<AppState>,
    listener: std::net::TcpListener,
) -> std::io::Result<Server> {
    serve(state, listener, "peer", |cfg| {
        peer::configure(cfg);
        peer_index::configure(cfg);
        ops::configure(cfg);
    })
}
