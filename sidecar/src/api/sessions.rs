//! The web session endpoints of the local API (SPEC §4.1): create, read, refresh, log out.
//! A token only ever appears in the path of a request and in the body of a create's answer:
//! errors and logs name a session by nothing (or by its hash prefix, in the store).

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use super::caller::LocalCaller;
use super::{read_body, ApiError, AppState};
use crate::local::Accepted;
use crate::metrics::Metrics;
use crate::sessions::Sessions;

/// One scope with a static prefix; the token is taken from the rest of the path by hand. The
/// master reads its session on every request it serves, and actix matches every dynamic
/// resource (`/{token}`) with a regex: measured at ~10 % of the sidecar's CPU on cached reads
/// for that one match, ~16 % when the cache routes were tried first. Register this before the
/// other dynamic routes. Same answers as the resource it replaces: `/v1/sessions/{token}`
/// with one non-empty segment, `405` for another method, else the app's `404`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/sessions")
            .route("", web::post().to(create))
            .default_service(web::to(by_token)),
    );
}

/// `GET`, `PUT` or `DELETE /v1/sessions/{token}`.
async fn by_token(
    state: LocalCaller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = req
        .match_info()
        .unprocessed()
        .strip_prefix('/')
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .map(str::to_owned);
    let Some(token) = token else {
        return super::not_found(req).await;
    };
    match *req.method() {
        Method::GET => get(&state, token).await,
        Method::PUT => refresh(&state, token, payload).await,
        Method::DELETE => delete(&state, token).await,
        _ => Ok(HttpResponse::MethodNotAllowed().finish()),
    }
}

fn sessions(state: &AppState) -> &std::sync::Arc<Sessions> {
    &state.sessions
}

/// Room for the JSON around the fields the store keeps.
const BODY_SLACK: usize = 1024;

fn not_found() -> ApiError {
    super::error::no_such_session()
}

async fn read_object(
    state: &AppState,
    payload: web::Payload,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let limit = sessions(state).max_record_bytes() + BODY_SLACK;
    let body = read_body(payload, limit).await?;
    match super::error::parse_json::<serde_json::Value>(&body)? {
        serde_json::Value::Object(m) => Ok(m),
        _ => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
    }
}

async fn create(state: LocalCaller, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let mut fields = read_object(&state, payload).await?;
    let account_id = match fields.remove("account_id") {
        Some(v) => v.as_u64().ok_or_else(|| {
            ApiError::BadRequest("`account_id` must be a non-negative integer".into())
        })?,
        None => return Err(ApiError::BadRequest("`account_id` is required".into())),
    };
    let created = sessions(&state).create(account_id, fields).await?;
    state
        .metrics
        .local_mutations
        .get_or_create(&Metrics::kind("session_create"))
        .inc();
    Ok(HttpResponse::Created().json(serde_json::json!({
        "id": created.token.as_str(),
        "expires_at": created.expires_at,
    })))
}

async fn get(state: &AppState, token: String) -> Result<HttpResponse, ApiError> {
    match sessions(state).get(&token).await? {
        // The bytes encoded when the session entered the cache: nothing to serialise here.
        Some(rec) => Ok(HttpResponse::Ok()
            .content_type(actix_web::http::header::ContentType::json())
            .body(rec.json)),
        None => Err(not_found()),
    }
}

/// Extends the session by `websession.maxAge` and merges the body's fields into it.
async fn refresh(
    state: &AppState,
    token: String,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let fields = read_object(state, payload).await?;
    if fields.contains_key("account_id") {
        return Err(ApiError::BadRequest(
            "`account_id` of a session cannot change".into(),
        ));
    }
    match state.local.refresh(&token, fields).await? {
        Some(rec) => Ok(HttpResponse::Ok().json(&rec)),
        None => Err(not_found()),
    }
}

/// Logs out everywhere (see `Local::logout`).
async fn delete(state: &AppState, token: String) -> Result<HttpResponse, ApiError> {
    match state.local.logout(&token).await? {
        Some(Accepted { forwarded, seq }) => Ok(HttpResponse::Accepted()
            .json(serde_json::json!({ "forwarded": forwarded, "seq": seq }))),
        None => Err(not_found()),
    }
}
