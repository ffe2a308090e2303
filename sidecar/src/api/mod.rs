//! The HTTP layer: the only module that imports actix-web. Two listeners: the local API for the
//! master (`localListenUrl`) and the peer/stream/ops API (`listenUrl`).

mod access;
mod caller;
pub mod connections;
mod error;
mod events;
mod events_log;
mod index;
mod local;
mod ops;
mod peer;
mod peer_index;
mod plugin;
mod sessions;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;

pub use error::ApiError;

use crate::cache::Caches;
use crate::config::Config;
use crate::events::EventLog;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::peers::outbox::Outbox;
use crate::peers::Peers;
use crate::receiver::Receiver;
use crate::sessions::Sessions;

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
    pub sessions: Arc<Sessions>,
    pub membership: Arc<crate::peers::membership::Membership>,
    /// Hot-standby: this node's role (`/health`, status, promote, `/v1/peer/election`).
    pub election: Arc<crate::election::Election>,
    pub events: Arc<EventLog>,
    /// The master's mutations: apply here, queue for every peer, answer.
    pub local: Arc<crate::local::Local>,
    /// This node's own Gerrit master (`[gerrit] url`), when configured.
    pub master: Option<Arc<crate::gerrit::Master>>,
    /// Cancelled at shutdown: ends long-lived responses (event streams).
    pub stop: tokio_util::sync::CancellationToken,
    /// The node's TLS (listeners, peer client, mutual TLS on `/v1/peer/*`).
    pub tls: Arc<crate::tls::NodeTls>,
    /// Peer request body bytes in flight, in KiB (`caller::Signed`); `peer_bodies_kib` in all.
    pub peer_bodies: Arc<tokio::sync::Semaphore>,
    pub peer_bodies_kib: u32,
}

/// Longest pause between two chunks of a request body (then 408).
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a request body up to `limit` bytes; past it, 413 without reading the rest; 408 when
/// no byte arrives for [`BODY_IDLE_TIMEOUT`].
pub(crate) async fn read_body<S, E>(mut payload: S, limit: usize) -> Result<web::Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<web::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut buf = web::BytesMut::new();
    loop {
        // A body that stops arriving is dropped: a trickle cannot hold a connection forever.
        let next = tokio::time::timeout(BODY_IDLE_TIMEOUT, payload.next())
            .await
            .map_err(|_| {
                ApiError::Timeout(format!(
                    "no request body bytes for {} s",
                    BODY_IDLE_TIMEOUT.as_secs()
                ))
            })?;
        let Some(chunk) = next else { break };
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

/// One listener's app: the state (reachable only through `caller`'s extractors), the
/// `X-HA-Instance` header, the access log and request metrics, the routes, a JSON 404.
fn app(
    state: Arc<AppState>,
    listener: &'static str,
    routes: fn(&mut web::ServiceConfig),
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let instance = state.config.instance_id.clone();
    let metrics = state.metrics.clone();
    let trusted = state.config.trusted_proxies.clone();
    // Per worker (actix builds one app per worker thread): the request histogram of each
    // (method, status) resolved once, instead of three `String`s allocated and hashed into the
    // family on every request.
    let timers = std::rc::Rc::new(access::Timers::default());
    App::new()
        .app_data(caller::Registered(state))
        .wrap(DefaultHeaders::new().add(("X-HA-Instance", instance)))
        .wrap_fn(move |req, srv| {
            let start = Instant::now();
            let method = req.method().clone();
            let path = access::loggable_path(req.path());
            let xff: Vec<&str> = req
                .headers()
                .get_all("x-forwarded-for")
                .filter_map(|v| v.to_str().ok())
                .collect();
            let client = access::Client(access::client_ip(
                req.peer_addr().map(|a| a.ip()),
                &xff,
                &trusted,
            ));
            let (metrics, timers) = (metrics.clone(), timers.clone());
            let fut = srv.call(req);
            async move {
                let res = fut.await?;
                let status = res.status().as_u16();
                let elapsed = start.elapsed();
                // Microsecond precision: `ms=0.056`, not `ms=0.055804000000000006`.
                let ms = (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0;
                let m = method.as_str();
                if access::is_noisy(&path) {
                    tracing::debug!(target: "access", listener, client = %client, method = m, path = &*path, status, ms, "request");
                } else {
                    tracing::info!(target: "access", listener, client = %client, method = m, path = &*path, status, ms, "request");
                }
                timers
                    .get(&metrics, listener, &method, status)
                    .observe(elapsed.as_secs_f64());
                Ok(res)
            }
        })
        // Inside the access log, so a refusal is logged and counted like any answer.
        .wrap_fn(|req, srv| {
            use futures_util::future::{ready, Either, TryFutureExt};
            if connections::admit(req.request()) {
                return Either::Left(srv.call(req).map_ok(|r| r.map_into_left_body()));
            }
            let mut res = actix_web::ResponseError::error_response(&ApiError::Unavailable(
                "too many connections: this one is kept for /health, /readyz, /metrics and /v1/peer/*"
                    .into(),
            ));
            res.head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
            Either::Right(ready(Ok(req.into_response(res).map_into_right_body())))
        })
        .configure(routes)
        .default_service(web::to(not_found))
}

fn serve(
    state: Arc<AppState>,
    listener: std::net::TcpListener,
    name: &'static str,
    routes: fn(&mut web::ServiceConfig),
) -> std::io::Result<Server> {
    let workers = state.config.workers;
    let grace = state.config.shutdown_grace;
    let https = match name {
        "peer" => state.config.listen.is_https(),
        _ => state.config.local_listen.is_https(),
    };
    let tls = state.tls.server().filter(|_| https);
    let conns = connections::Connections::new(
        name,
        &state.config.limits,
        connections::open_files_limit(),
        &state.metrics,
    );
    let per_worker = conns.per_worker(workers);
    let server = HttpServer::new(move || app(state.clone(), name, routes))
        .on_connect(move |conn, data| {
            data.insert(conns.accept(connections::socket_of(conn)));
            peer_names(conn, data);
        })
        .max_connections(per_worker)
        // Without it, a small write behind an unacknowledged one (an SSE chunk after the last)
        // waits for the client's delayed ACK: ~40 ms added to a tailer's latency.
        .tcp_nodelay(true)
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(grace.as_secs().max(1));
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, (*config).clone())?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

/// Attaches the names of a verified client certificate to its TLS connection (mutual TLS:
/// the `Signed` extractor reads them with `HttpRequest::conn_data`).
fn peer_names(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    if let Some(tls) = conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>() {
        let (_, session) = tls.get_ref();
        if let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) {
            data.insert(crate::tls::PeerNames::of(leaf));
        }
    }
}

/// Starts the local API server on an already-bound listener.
pub fn serve_local(
    state: Arc<AppState>,
    listener: std::net::TcpListener,
) -> std::io::Result<Server> {
    serve(state, listener, "local", |cfg| {
        local::configure(cfg);
        events::configure_local(cfg);
        plugin::configure(cfg);
    })
}

/// Starts the peer/stream/ops server on an already-bound listener.
pub fn serve_peer(
    state: Arc<AppState>,
    listener: std::net::TcpListener,
) -> std::io::Result<Server> {
    serve(state, listener, "peer", |cfg| {
        peer::configure(cfg);
        peer_index::configure(cfg);
        plugin::configure_peer(cfg);
        ops::configure(cfg);
        events::configure_peer(cfg);
        stream::configure(cfg);
        events_log::configure(cfg);
    })
}
