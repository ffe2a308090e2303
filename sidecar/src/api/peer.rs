//! The peer API (SPEC §4.2): signed batches from other sidecars.

use actix_web::{web, HttpRequest, HttpResponse};

use super::{read_body, ApiError, AppState};
use crate::auth::{self, SignatureHeaders};
use crate::metrics::ReasonLabel;
use crate::tls::PeerNames;
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

/// With mutual TLS (`sidecar.clientCaFile`), the names of the peer's verified certificate;
/// 401 without one. `None` when mutual TLS is off.
fn client_certificate(state: &AppState, req: &HttpRequest) -> Result<Option<PeerNames>, ApiError> {
    if !state.tls.mutual {
        return Ok(None);
    }
    match req.conn_data::<PeerNames>() {
        Some(names) => Ok(Some(names.clone())),
        None => Err(refuse(
            state,
            req,
            "no_client_certificate",
            "a client certificate is required on /v1/peer/* (mutual TLS)".into(),
        )),
    }
}

/// With mutual TLS, refuses (401) a request that speaks for `instance_id` (a batch's
/// `origin`, a hello's `instance_id`) when the peer's certificate does not name it.
pub(crate) fn check_speaker(
    state: &AppState,
    req: &HttpRequest,
    instance_id: &str,
) -> Result<(), ApiError> {
    match client_certificate(state, req)? {
        Some(names) if !names.names(instance_id) => Err(refuse(
            state,
            req,
            "certificate_mismatch",
            format!("the client certificate does not name `{instance_id}`"),
        )),
        _ => Ok(()),
    }
}

fn refuse(state: &AppState, req: &HttpRequest, reason: &'static str, message: String) -> ApiError {
    state
        .metrics
        .auth_failures
        .get_or_create(&ReasonLabel {
            reason: reason.into(),
        })
        .inc();
    let from = req.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::warn!(from = %from, reason, "refused an unauthenticated peer request");
    ApiError::Unauthorized(message)
}

/// Authenticates a peer request over its exact body; 401 changes nothing. With mutual TLS the
/// connection must carry a verified client certificate.
pub(crate) fn authenticate(
    state: &AppState,
    req: &HttpRequest,
    body: &[u8],
) -> Result<(), ApiError> {
    client_certificate(state, req)?;
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
            refuse(state, req, reason, e.to_string())
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
    check_speaker(&state, &req, &batch.origin)?;
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
    check_speaker(&state, &req, &hello.instance_id)?;
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
    check_speaker(&state, &req, &hello.instance_id)?;
    let pending = state.membership.on_backlog(&hello);
    Ok(HttpResponse::Ok().json(BacklogReply {
        known: pending.is_some(),
        pending: pending.unwrap_or(0),
    }))
}
