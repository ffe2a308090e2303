//! The peer API (SPEC §4.2): signed batches from other sidecars.

use actix_web::{web, HttpRequest, HttpResponse};

use super::{read_body, ApiError, AppState};
use crate::auth::{self, SignatureHeaders};
use crate::metrics::ReasonLabel;
use crate::wire::{BacklogReply, Batch, Hello, LeaveReply};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/peer/batch", web::post().to(batch))
        .route("/v1/peer/leave", web::post().to(leave))
        .route("/v1/peer/backlog", web::post().to(backlog));
}

fn signature_headers(req: &HttpRequest) -> Option<SignatureHeaders> {
    let h = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Some(SignatureHeaders {
        timestamp_ms: h(auth::HEADER_TIMESTAMP)?,
        nonce: h(auth::HEADER_NONCE)?,
        signature: h(auth::HEADER_SIGNATURE)?,
    })
}

/// Authenticates a peer request over its exact body; 401 changes nothing.
pub(crate) fn authenticate(
    state: &AppState,
    req: &HttpRequest,
    body: &[u8],
) -> Result<(), ApiError> {
    let headers = signature_headers(req);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    state
        .verifier
        .verify(
            req.method().as_str(),
            path,
            headers.as_ref(),
            body,
            crate::peers::outbox::now_ms(),
        )
        .map_err(|e| {
            let reason = match &e {
                auth::AuthError::Missing(_) => "unsigned",
                auth::AuthError::Malformed(_) => "malformed",
                auth::AuthError::Stale { .. } => "stale",
                auth::AuthError::BadSignature => "bad_signature",
                auth::AuthError::Replayed => "replayed",
                auth::AuthError::NoSecret => "no_secret",
            };
            state
                .metrics
                .auth_failures
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc();
            let from = req.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::warn!(from = %from, reason, "refused an unauthenticated peer request");
            ApiError::Unauthorized(e.to_string())
        })
}

async fn batch(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, state.config.limits.max_peer_body).await?;
    authenticate(&state, &req, &body)?;
    let batch: Batch = super::error::parse_json(&body)?;
    let reply = state
        .receiver
        .apply_batch(&batch.origin, &batch.messages)
        .await?;
    Ok(HttpResponse::Ok().json(reply))
}

/// A peer stopping gracefully says goodbye: it is reported as left, not failed.
async fn leave(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, 64 << 10).await?;
    authenticate(&state, &req, &body)?;
    let hello: Hello = super::error::parse_json(&body)?;
    let known = state.membership.on_leave(&hello);
    Ok(HttpResponse::Ok().json(LeaveReply { known }))
}

/// A restarted peer asks how much this node still holds for it (and so wakes its forwarder).
async fn backlog(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, 64 << 10).await?;
    authenticate(&state, &req, &body)?;
    let hello: Hello = super::error::parse_json(&body)?;
    let pending = state.membership.on_backlog(&hello);
    Ok(HttpResponse::Ok().json(BacklogReply {
        known: pending.is_some(),
        pending: pending.unwrap_or(0),
    }))
}
