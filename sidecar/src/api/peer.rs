//! The peer API (SPEC §4.2): signed batches from other sidecars.

use actix_web::{web, HttpResponse};

use super::caller::Signed;
use super::ApiError;
use crate::wire::{BacklogReply, Batch, ElectionRequest, Hello, LeaveReply};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/peer/batch", web::post().to(batch))
        .route("/v1/peer/leave", web::post().to(leave))
        .route("/v1/peer/backlog", web::post().to(backlog))
        .route("/v1/peer/election", web::post().to(election));
}

async fn batch(req: Signed) -> Result<HttpResponse, ApiError> {
    let batch: Batch = req.json()?;
    req.speaks_for(&batch.origin)?;
    let reply = req
        .receiver
        .apply_batch(&batch.origin, &batch.messages)
        .await?;
    Ok(HttpResponse::Ok().json(reply))
}

/// A peer stopping gracefully says goodbye: it is reported as left, not failed.
async fn leave(req: Signed) -> Result<HttpResponse, ApiError> {
    let hello: Hello = req.json()?;
    req.speaks_for(&hello.instance_id)?;
    let known = req.membership.on_leave(&hello);
    req.election.on_leave(&hello.instance_id);
    Ok(HttpResponse::Ok().json(LeaveReply { known }))
}

/// A restarted peer asks how much this node still holds for it (and so wakes its forwarder).
async fn backlog(req: Signed) -> Result<HttpResponse, ApiError> {
    let hello: Hello = req.json()?;
    req.speaks_for(&hello.instance_id)?;
    let pending = req.membership.on_backlog(&hello);
    Ok(HttpResponse::Ok().json(BacklogReply {
        known: pending.is_some(),
        pending: pending.unwrap_or(0),
    }))
}

/// Hot-standby: a peer's claim (ping, candidacy, lease renewal, release); the reply says what
/// this node grants and whom it follows.
async fn election(req: Signed) -> Result<HttpResponse, ApiError> {
    let claim: ElectionRequest = req.json()?;
    req.speaks_for(&claim.instance_id)?;
    if !crate::wire::valid_instance_id(&claim.instance_id) {
        return Err(ApiError::BadRequest("invalid instance_id".into()));
    }
    if claim.instance_id == req.config.instance_id {
        return Err(ApiError::BadRequest(
            "an election claim naming this node itself".into(),
        ));
    }
    Ok(HttpResponse::Ok().json(req.election.on_request(&claim)))
}
