//! Health, readiness, metrics, peers, status, the status page and promotion (SPEC §4.3, §9) on
//! `listenUrl`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::caller::{AdminCaller, Public};
use super::{ApiError, AppState};
use crate::peers::outbox::now_ms;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/livez", web::get().to(livez))
        .route("/readyz", web::get().to(readyz))
        .route("/health", web::get().to(health_get))
        .route("/health", web::post().to(health_post))
        .route("/health", web::delete().to(health_delete))
        .route("/metrics", web::get().to(metrics))
        .route("/v1/peers", web::get().to(peers))
        .route("/v1/status", web::get().to(status))
        .route("/v1/election/promote", web::post().to(promote))
        .route("/", web::get().to(status_page));
}

/// The status page: one self-contained HTML file (its script polls `/v1/status`); the
/// content security policy keeps it from loading anything from elsewhere.
const STATUS_PAGE: &str = include_str!("status_page.html");

async fn status_page(_: Public) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ))
        .body(STATUS_PAGE)
}

/// manual election: an operator makes this node the active one (peers told before the answer).
async fn promote(state: AdminCaller) -> Result<HttpResponse, ApiError> {
    let promoted = state.election.promote().await?;
    tracing::info!(epoch = promoted.epoch, "promoted to active by an operator");
    Ok(HttpResponse::Ok().json(promoted))
}

pub async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "alive"}))
}

/// Ready for traffic: started, not drained, not stopping (a Kubernetes readiness probe takes a
/// drained node out of service like the load balancer's `/health` check does).
pub async fn readyz(state: Public) -> HttpResponse {
    if state.health.is_drained() {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "drained"}))
    } else if state.health.is_ready() {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "not ready"}))
    }
}

pub async fn health_get(state: Public) -> Result<HttpResponse, ApiError> {
    if !state.config.healthcheck_enable {
        return Err(ApiError::NotFound(
            "the health check is disabled (healthcheck.enable = false)".into(),
        ));
    }
    // Writes fail while the data directory is full: no traffic until a probe finds space.
    let disk = state.health.disk().clone();
    if let Ok(Some(full)) = web::block(move || disk.full()).await {
        return Ok(HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "disk full", "detail": full})));
    }
    Ok(match state.health.unhealthy_reason() {
        None => HttpResponse::NoContent().finish(),
        Some(why) => HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": why})),
    })
}

/// Sets the drain flag (persisted: a file write and its fsync, on a blocking thread).
pub(crate) async fn set_drained(state: &AppState, drained: bool) -> Result<HttpResponse, ApiError> {
    let health = state.health.clone();
    web::block(move || health.set_drained(drained))
        .await
        .map_err(|e| ApiError::Internal(format!("drain task failed: {e}")))?
        .map_err(|e| ApiError::Internal(format!("cannot persist the drain flag: {e}")))?;
    tracing::info!(drained, "health changed by an operator");
    Ok(HttpResponse::NoContent().finish())
}

async fn health_post(state: AdminCaller) -> Result<HttpResponse, ApiError> {
    set_drained(&state, false).await
}

async fn health_delete(state: AdminCaller) -> Result<HttpResponse, ApiError> {
    set_drained(&state, true).await
}

/// OpenMetrics, or the classic text format for a scraper that asks for `text/plain` and not
/// for OpenMetrics (`promtool`, old Prometheus servers).
async fn metrics(state: Public, req: HttpRequest) -> HttpResponse {
    state.peers.update_gauges(&state.metrics);
    state
        .metrics
        .corrupt_records(&state.health.disk().corrupt_records());
    if let Some(m) = &state.master {
        m.status(&state.metrics);
    }
    for (kind, k) in state.index.stats().kinds {
        let label = crate::metrics::Metrics::kind(kind.as_str());
        state
            .metrics
            .index_docs
            .get_or_create(&label)
            .set(k.docs as i64);
        state
            .metrics
            .index_tombstones
            .get_or_create(&label)
            .set(k.tombstones as i64);
    }
    let accept = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/plain") && !accept.contains("application/openmetrics-text") {
        HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(state.metrics.encode_classic())
    } else {
        HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(state.metrics.encode())
    }
}

#[derive(Serialize)]
struct PeerView {
    key: String,
    url: String,
    instance_id: Option<String>,
    /// Membership: up, left or failed.
    state: &'static str,
    state_since_ms: u64,
    /// Discovery lists it and this node forwards to it.
    present: bool,
    /// While absent: when its queue (still filled) is deleted.
    retained_until_ms: Option<u64>,
    reachable: Option<bool>,
    outbox_depth: u64,
    oldest_undelivered_age_ms: Option<u64>,
    last_success_ms: Option<u64>,
    last_error: Option<String>,
    last_error_ms: Option<u64>,
    consecutive_failures: u64,
    level: &'static str,
    /// Its role as it last reported it (hot-standby), or `active` (active-active, when up).
    role: Option<&'static str>,
    /// Its health as it last reported it (hot-standby: without its role), if heard within ttl.
    health: Option<String>,
    /// Messages it refused for good (this node's dead-letter file for it).
    dead_letters: u64,
}

fn peer_views(state: &AppState, roles: &[crate::election::PeerRole]) -> Vec<PeerView> {
    let now = now_ms();
    let hot = state.config.mode == crate::config::Mode::HotStandby;
    let retain = state.config.peers.retain_absent.as_millis() as u64;
    let ttl = state.config.peers.ttl.as_millis() as u64;
    state
        .peers
        .list()
        .iter()
        .map(|p| {
            let q = p.queue.stats();
            let s = p.status();
            let age = q
                .oldest_pending_ms
                .filter(|_| q.pending > 0)
                .map(|t| now.saturating_sub(t));
            let level = s.level(q.pending, age, now, ttl).as_str();
            let url = p.url().to_string();
            let heard = roles.iter().find(|r| {
                s.instance_id.as_deref() == Some(r.instance_id.as_str())
                    || r.url.as_deref() == Some(url.as_str())
            });
            let (role, health) = match heard {
                Some(r) if r.live => (Some(r.role), Some(r.health.clone())),
                _ if !hot && s.state == crate::peers::MemberState::Up => (Some("active"), None),
                _ => (None, None),
            };
            let dead_letters = state
                .metrics
                .dead_lettered
                .get_or_create(&crate::metrics::Metrics::peer(&p.key))
                .get();
            PeerView {
                key: p.key.clone(),
                url: p.url().to_string(),
                instance_id: s.instance_id,
                state: s.state.as_str(),
                state_since_ms: s.state_since_ms,
                present: p.is_forwarding(),
                retained_until_ms: s.absent_since_ms.map(|t| t + retain),
                reachable: s.reachable,
                outbox_depth: q.pending,
                oldest_undelivered_age_ms: age,
                last_success_ms: s.last_success_ms,
                last_error: s.last_error,
                last_error_ms: s.last_error_ms,
                consecutive_failures: s.consecutive_failures,
                level,
                role,
                health,
                dead_letters,
            }
        })
        .collect()
}

/// The peers this node forwards to now, and the absent ones whose backlog is retained.
async fn peers(state: Public) -> HttpResponse {
    let (present, retained): (Vec<_>, Vec<_>) =
        peer_views(&state, &[]).into_iter().partition(|p| p.present);
    let brief = |p: &PeerView| {
        serde_json::json!({
            "key": p.key, "url": p.url, "instance_id": p.instance_id, "state": p.state,
            "retained_until_ms": p.retained_until_ms, "outbox_depth": p.outbox_depth,
        })
    };
    HttpResponse::Ok().json(serde_json::json!({
        "strategy": state.config.peers.discovery.name(),
        "peers": present.iter().map(brief).collect::<Vec<_>>(),
        "retained": retained.iter().map(brief).collect::<Vec<_>>(),
    }))
}

/// Counters the status page turns into rates (it polls and takes differences).
fn counters(state: &AppState) -> serde_json::Value {
    use crate::metrics::Metrics;
    let m = &state.metrics;
    let kind = |f: &prometheus_client::metrics::family::Family<
        crate::metrics::KindLabel,
        prometheus_client::metrics::counter::Counter,
    >,
                k: &str| f.get_or_create(&Metrics::kind(k)).get();
    serde_json::json!({
        "events_local": kind(&m.events_appended, "local"),
        "events_remote": kind(&m.events_appended, "remote"),
        "evictions_local": kind(&m.local_mutations, "eviction"),
        "evictions_applied": kind(&m.messages_applied, "eviction"),
        "index_local": kind(&m.local_mutations, "index"),
        "index_applied": kind(&m.messages_applied, "index"),
    })
}

async fn status(state: Public) -> HttpResponse {
    let election = state.election.view();
    let peers = peer_views(&state, &election.peers);
    // Damaged records skipped at open: the level says so until the next restart.
    let corrupt: std::collections::BTreeMap<&str, u64> = state
        .health
        .disk()
        .corrupt_records()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    let level = ["error", "warning"]
        .into_iter()
        .find(|l| peers.iter().any(|p| p.level == *l) || (*l == "warning" && !corrupt.is_empty()))
        .unwrap_or("ok");
    HttpResponse::Ok().json(serde_json::json!({
        "instance_id": state.config.instance_id,
        "version": env!("CARGO_PKG_VERSION"),
        "url": state.config.advertise_url.as_str(),
        "now_ms": now_ms(),
        "health": state.health.unhealthy_reason().unwrap_or("healthy"),
        "role": election.role,
        "mode": election.mode,
        "election": election,
        "counters": counters(&state),
        "drained": state.health.is_drained(),
        "strategy": state.config.peers.discovery.name(),
        "level": level,
        "corrupt_records": corrupt,
        "caches": state.caches.sizes().into_iter().map(|(n, c)| serde_json::json!({"name": n, "entries": c})).collect::<Vec<_>>(),
        "index": state.index.stats().kinds.into_iter().map(|(kind, k)| (kind.as_str().to_owned(), k)).collect::<std::collections::BTreeMap<_, _>>(),
        "peers": peers,
        "master": state.master.as_ref().map(|m| m.status(&state.metrics)),
    }))
}
