//! Health, readiness, metrics, peers and status (SPEC §4.3) on `listenUrl`.

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
        .route("/v1/status", web::get().to(status));
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
}

fn peer_views(state: &AppState) -> Vec<PeerView> {
    let now = now_ms();
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
            }
        })
        .collect()
}

/// The peers this node forwards to now, and the absent ones whose backlog is retained.
async fn peers(state: Public) -> HttpResponse {
    let (present, retained): (Vec<_>, Vec<_>) =
        peer_views(&state).into_iter().partition(|p| p.present);
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

async fn status(state: Public) -> HttpResponse {
    let peers = peer_views(&state);
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
