//! The anti-entropy endpoints of the peer API (`/v1/peer/index/*`): digests, bucket entries,
//! export and apply, for `index_sync` on other nodes. Signed like batches (`peer::authenticate`);
//! they answer from the store's in-memory version map and never forward anything.

use actix_web::{web, HttpResponse};

use super::caller::Signed;
use super::ApiError;
use crate::index::WriteOutcome;
use crate::wire::index_sync::{
    ApplyReply, ApplyRequest, BucketEntries, DigestRequest, EntriesReply, EntriesRequest,
    ExportReplyWriter, ExportRequest,
};

/// An export reply stops growing past this many bytes of documents (at least one is sent).
const MAX_EXPORT_BYTES: usize = 4 << 20;
/// Ids exported per look-up of the store.
const EXPORT_CHUNK: usize = 64;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/peer/index/digest", web::post().to(digest))
        .route("/v1/peer/index/entries", web::post().to(entries))
        .route("/v1/peer/index/export", web::post().to(export))
        .route("/v1/peer/index/apply", web::post().to(apply));
}

async fn digest(state: Signed) -> Result<HttpResponse, ApiError> {
    let r: DigestRequest = state.json()?;
    Ok(HttpResponse::Ok().json(state.index.digest(r.kind, 0..=255)))
}

async fn entries(state: Signed) -> Result<HttpResponse, ApiError> {
    let r: EntriesRequest = state.json()?;
    let store = state.index.clone();
    let reply = web::block(move || EntriesReply {
        buckets: r
            .buckets
            .iter()
            .map(|b| BucketEntries {
                bucket: *b,
                entries: store.entries(r.kind, *b),
            })
            .collect(),
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(reply))
}

async fn export(state: Signed) -> Result<HttpResponse, ApiError> {
    let r: ExportRequest = state.json()?;
    let store = state.index.clone();
    // Written document by document, so its size is known as it grows.
    let body = web::block(move || -> Result<Vec<u8>, ApiError> {
        let mut out = ExportReplyWriter::new();
        let mut consumed = 0;
        for chunk in r.ids.chunks(EXPORT_CHUNK) {
            for d in store.export(r.kind, chunk)? {
                out.push(&d);
            }
            consumed += chunk.len();
            if out.len() > MAX_EXPORT_BYTES {
                break;
            }
        }
        Ok(out.finish(consumed))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

async fn apply(state: Signed) -> Result<HttpResponse, ApiError> {
    let r: ApplyRequest = state.json()?;
    let outcomes = state.index.apply(r.kind, r.docs).await?;
    state
        .metrics
        .index_outcomes(r.kind.as_str(), "sync", &outcomes);
    let applied = outcomes
        .iter()
        .filter(|o| **o == WriteOutcome::Applied)
        .count() as u64;
    Ok(HttpResponse::Ok().json(ApplyReply {
        applied,
        stale: outcomes.len() as u64 - applied,
    }))
}
