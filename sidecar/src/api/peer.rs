//! The peer API (SPEC §4.2): signed batches from other sidecars.

use actix_web::{web, HttpResponse};

use super::caller::Signed;
use super::ApiError;
use crate::wire::{BacklogReply, Batch, Hello, LeaveReply};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/peer/batch", web::post().to(batch))
        .route("/v1/peer/leave", web::post().to(leave))
        .route("/v1/peer/backlog", web::post().to(backlog));
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
