//! Stream events on the HTTP API: `POST /v1/events` (local API, the master publishes) and the
//! peer catch-up endpoints `GET /v1/peer/events[/{origin}]` (signed, for a node that lacks
//! events: its data directory was lost, or it joins). The tail is in `stream`.

use actix_web::{web, HttpResponse};

use super::caller::{LocalCaller, Signed};
use super::{read_body, ApiError};
use crate::wire::{CatchUpQuery, CatchUpReply, OriginsReply};

/// Most events one catch-up reply carries.
const MAX_CATCH_UP: usize = 5_000;

pub fn configure_local(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/events", web::post().to(publish));
}

pub fn configure_peer(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/peer/events", web::get().to(origins))
        .route("/v1/peer/events/{origin}", web::get().to(catch_up));
}

/// Appends one Gerrit event (fsync'd), waits until it is durably queued for every peer when
/// `[event] synchronize` is on, and answers `202 {"id", "origin", "seq", "forwarded"}`.
async fn publish(state: LocalCaller, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let limit = state.config.event.max_event_bytes;
    let body = read_body(payload, limit).await.map_err(|e| match e {
        ApiError::TooLarge(_) => ApiError::TooLarge(format!(
            "event exceeds the limit of {limit} bytes (event.maxEventSize)"
        )),
        other => other,
    })?;
    let (event, accepted) = state.local.publish_event(&body).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "id": event.id.to_string(),
        "origin": &*event.id.origin,
        "seq": event.id.seq,
        "forwarded": accepted.forwarded,
    })))
}

/// `{"origins": {origin: last seq}}`: what this node's log holds.
async fn origins(state: Signed) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(OriginsReply {
        origins: state.events.last_seq_by_origin(),
    }))
}

/// `{"origin", "last_seq", "events": [{"seq", "event"}]}`: the origin's events after `after`,
/// in seq order, each with Gerrit's bytes unchanged.
async fn catch_up(
    state: Signed,
    path: web::Path<String>,
    query: web::Query<CatchUpQuery>,
) -> Result<HttpResponse, ApiError> {
    let origin = path.into_inner();
    if !crate::wire::valid_instance_id(&origin) {
        return Err(ApiError::BadRequest(format!(
            "`{origin}` is not a valid instanceId"
        )));
    }
    let max = query.limit.unwrap_or(MAX_CATCH_UP).clamp(1, MAX_CATCH_UP);
    let mut after = query.after;
    if query.from_oldest {
        after = after.max(state.events.origin_floor(&origin));
    }
    let (log, o) = (state.events.clone(), origin.clone());
    let events = web::block(move || log.read_origin(&o, after, max))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let last_seq = state
        .events
        .last_seq_by_origin()
        .get(&origin)
        .copied()
        .unwrap_or(0);
    let out = CatchUpReply::encode(
        &origin,
        last_seq,
        events.iter().map(|(id, bytes)| (id.seq, bytes.as_ref())),
    );
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(out))
}
