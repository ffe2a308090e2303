//! The master's local API (SPEC §4.1): caches here, the index in `index`; events and sessions
//! join later.
//! Handlers apply locally, append to the outbox, answer; they never wait on peers.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::caller::LocalCaller;
use super::{read_body, ApiError, AppState};
use crate::local::Accepted;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Sessions first: their scope is a static prefix, so it costs other requests one string
    // comparison, and session reads (the hottest path) no regex of the cache routes.
    cfg.configure(super::sessions::configure)
        .route("/livez", web::get().to(super::ops::livez))
        .route("/readyz", web::get().to(super::ops::readyz))
        .route("/health", web::get().to(super::ops::health_get))
        .route("/health", web::post().to(health_post))
        .route("/health", web::delete().to(health_delete))
        .route("/v1/cache/{cache}/evict", web::post().to(evict))
        .route("/v1/cache/{cache}/flush", web::post().to(flush))
        .route("/v1/cache/{cache}/{key:.+}", web::put().to(put))
        .route("/v1/cache/{cache}/{key:.+}", web::get().to(get))
        .configure(super::index::configure);
}

fn check_key(state: &AppState, key: &str) -> Result<(), ApiError> {
    if key.len() > state.config.limits.max_key_bytes {
        return Err(ApiError::BadRequest(format!(
            "key is {} bytes; the limit is {}",
            key.len(),
            state.config.limits.max_key_bytes
        )));
    }
    Ok(())
}

async fn put(
    state: LocalCaller,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (cache, key) = path.into_inner();
    check_key(&state, &key)?;
    let body = read_body(payload, state.config.limits.max_local_body).await?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&body)
        .map_err(|e| ApiError::BadRequest(format!("the value must be JSON: {e}")))?;
    state.caches.put(&cache, &key, body)?;
    Ok(HttpResponse::NoContent().finish())
}

async fn get(
    state: LocalCaller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (cache, key) = path.into_inner();
    match state.caches.get(&cache, &key) {
        Some(v) => Ok(HttpResponse::Ok().content_type("application/json").body(v)),
        None => Err(ApiError::NotFound(format!(
            "no entry `{key}` in cache `{cache}`"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvictBody {
    /// Any JSON value: strings, numbers, and Gerrit's keys as its plugin sends them
    /// (`{"id":1000001}`, `{"uuid":"…"}`); see [`crate::cache::key_of_json`].
    keys: Vec<serde_json::Value>,
}

async fn evict(
    state: LocalCaller,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let cache = path.into_inner();
    if !crate::wire::valid_cache_name(&cache) {
        return Err(crate::cache::CacheError::BadName(cache).into());
    }
    let body = read_body(payload, state.config.limits.max_local_body).await?;
    let parsed: EvictBody = super::error::parse_json(&body)?;
    let limits = &state.config.limits;
    if parsed.keys.len() > limits.max_keys_per_request {
        return Err(ApiError::TooLarge(format!(
            "{} keys in one request; the limit is {}",
            parsed.keys.len(),
            limits.max_keys_per_request
        )));
    }
    let keys: Vec<String> = parsed.keys.iter().map(crate::cache::key_of_json).collect();
    for k in &keys {
        check_key(&state, k)?;
    }
    let (evicted, Accepted { forwarded, seq }) = state.local.evict(&cache, &keys).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "evicted": evicted, "forwarded": forwarded, "seq": seq,
    })))
}

async fn flush(state: LocalCaller, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let Accepted { forwarded, seq } = state.local.flush(&path.into_inner()).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "forwarded": forwarded, "seq": seq })))
}

async fn health_post(state: LocalCaller) -> Result<HttpResponse, ApiError> {
    super::ops::set_drained(&state, false).await
}

async fn health_delete(state: LocalCaller) -> Result<HttpResponse, ApiError> {
    super::ops::set_drained(&state, true).await
}
