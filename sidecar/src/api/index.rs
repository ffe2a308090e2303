//! The master's index API (SPEC §4.1): upsert, delete, get and search the documents of one
//! kind, and a bulk load (`POST /v1/index/{kind}`, used by `ha-sidecar reindex`). A write is
//! applied here first (journaled, under the version rule); only a write that was applied is
//! queued for the peers, then the handler answers 202. It never waits on a peer.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::caller::LocalCaller;
use super::error::parse_json;
use super::{read_body, ApiError};
use serde_json::value::RawValue;

use crate::index::{Kind, WriteOutcome};
use crate::local::{Accepted, LocalIndexDoc};

/// Results of a search unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// Most documents in one bulk request.
const MAX_BULK_DOCS: usize = 10_000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/index/{kind}", web::get().to(search))
        .route("/v1/index/{kind}", web::post().to(bulk))
        .route("/v1/index/{kind}/{id:.+}", web::put().to(put))
        .route("/v1/index/{kind}/{id:.+}", web::delete().to(delete))
        .route("/v1/index/{kind}/{id:.+}", web::get().to(get));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    version: u64,
    /// Kept as sent: spliced into the peer message and stored (see `Local::index_write`).
    doc: Box<RawValue>,
}

#[derive(Deserialize)]
struct DeleteQuery {
    version: u64,
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
    limit: Option<usize>,
}

/// One line of a bulk load: an upsert (`doc`) or a delete (`deleted: true`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkDoc {
    id: String,
    version: u64,
    #[serde(default)]
    deleted: bool,
    doc: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    docs: Vec<BulkDoc>,
}

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))
}

fn write_reply(outcome: WriteOutcome, version: u64, accepted: Accepted) -> HttpResponse {
    let Accepted { forwarded, seq } = accepted;
    let (applied, stored) = match outcome {
        WriteOutcome::Applied => (true, version),
        WriteOutcome::Stale { stored_version } => (false, stored_version),
    };
    HttpResponse::Accepted().json(serde_json::json!({
        "applied": applied, "version": stored, "forwarded": forwarded && applied, "seq": seq,
    }))
}

async fn put(
    state: LocalCaller,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let kind: Kind = kind.parse()?;
    let body = read_body(payload, state.config.limits.max_local_body).await?;
    let p: PutBody = parse_json(&body)?;
    let doc = LocalIndexDoc {
        id,
        version: p.version,
        deleted: false,
        doc: Some(p.doc),
    };
    let (outcomes, accepted) = state.local.index_write(kind, vec![doc]).await?;
    Ok(write_reply(outcomes[0], p.version, accepted))
}

async fn delete(
    state: LocalCaller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let kind: Kind = kind.parse()?;
    let q: DeleteQuery = query(&req)
        .map_err(|e| ApiError::BadRequest(format!("{e} (a delete needs ?version=N, a u64)")))?;
    let doc = LocalIndexDoc {
        id,
        version: q.version,
        deleted: true,
        doc: None,
    };
    let (outcomes, accepted) = state.local.index_write(kind, vec![doc]).await?;
    Ok(write_reply(outcomes[0], q.version, accepted))
}

async fn get(
    state: LocalCaller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let kind: Kind = kind.parse()?;
    let store = state.index.clone();
    let found = {
        let id = id.clone();
        web::block(move || store.get(kind, &id))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??
    };
    match found {
        Some(d) => Ok(HttpResponse::Ok().json(d)),
        None => Err(ApiError::NotFound(format!("no document {kind}/{id}"))),
    }
}

async fn search(
    state: LocalCaller,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let kind: Kind = path.into_inner().parse()?;
    let q: SearchQuery = query(&req)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    let store = state.index.clone();
    let result = web::block(move || store.search(kind, &q.q, limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(HttpResponse::Ok().json(result))
}

/// From this body size on, a bulk request is parsed on a blocking thread.
const BLOCKING_PARSE_BYTES: usize = 256 << 10;

async fn bulk(
    state: LocalCaller,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let kind: Kind = path.into_inner().parse()?;
    let body = read_body(payload, state.config.limits.max_local_body).await?;
    // Parsing megabytes of documents is CPU work of milliseconds: off the executor.
    let parsed: BulkBody = if body.len() < BLOCKING_PARSE_BYTES {
        parse_json(&body)?
    } else {
        tokio::task::spawn_blocking(move || parse_json(&body))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?
    };
    if parsed.docs.len() > MAX_BULK_DOCS {
        return Err(ApiError::TooLarge(format!(
            "{} documents in one request; the limit is {MAX_BULK_DOCS}",
            parsed.docs.len()
        )));
    }
    let docs: Vec<LocalIndexDoc> = parsed
        .docs
        .into_iter()
        .map(|d| LocalIndexDoc {
            id: d.id,
            version: d.version,
            deleted: d.deleted,
            doc: if d.deleted { None } else { d.doc },
        })
        .collect();
    let (outcomes, Accepted { forwarded, seq }) = state.local.index_write(kind, docs).await?;
    let applied = outcomes
        .iter()
        .filter(|o| **o == WriteOutcome::Applied)
        .count();
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "applied": applied, "stale": outcomes.len() - applied, "forwarded": forwarded, "seq": seq,
    })))
}
