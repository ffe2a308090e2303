//! Who may call a handler. The node's state is registered under a type only this module reads,
//! so a handler reaches the stores only through one of these extractors, and the extractor
//! carries the check: a handler that does not say who may call it does not compile.
//!
//! - [`Public`]: anyone (liveness, readiness, health, metrics, peers, status).
//! - [`LocalCaller`]: the master, with `sidecar.localToken` when one is set (loopback otherwise).
//! - [`AdminCaller`]: an operator with `sidecar.adminToken` (drain on `listenUrl`).
//! - [`StreamCaller`]: an event consumer, with `event.streamToken` when one is set.
//! - [`Signed`]: a peer sidecar: the HMAC signature over the exact body is verified before the
//!   handler runs; the body comes with it.

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::{ready, LocalBoxFuture, Ready};

use super::{bearer, read_body, ApiError, AppState};
use crate::auth::{self, SignatureHeaders};
use crate::config::Secret;
use crate::metrics::ReasonLabel;

/// The state as registered in the app: read only here.
pub(super) struct Registered(pub(super) Arc<AppState>);

fn registered(req: &HttpRequest) -> Result<Arc<AppState>, ApiError> {
    req.app_data::<Registered>()
        .map(|r| r.0.clone())
        .ok_or_else(|| ApiError::Internal("the node's state is not registered".into()))
}

/// What a caller must show.
pub trait Policy {
    fn check(state: &AppState, req: &HttpRequest) -> Result<(), ApiError>;
}

/// A request admitted by the policy `P`; derefs to the node's state.
pub struct Caller<P>(Arc<AppState>, PhantomData<P>);

impl<P> Deref for Caller<P> {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.0
    }
}

impl<P: Policy> FromRequest for Caller<P> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(registered(req).and_then(|state| {
            P::check(&state, req)?;
            Ok(Caller(state, PhantomData))
        }))
    }
}

pub struct Anyone;
pub struct LocalToken;
pub struct AdminToken;
pub struct StreamToken;

pub type Public = Caller<Anyone>;
pub type LocalCaller = Caller<LocalToken>;
pub type AdminCaller = Caller<AdminToken>;
pub type StreamCaller = Caller<StreamToken>;
/// The high-availability plugin of this node's master (`/plugins/<pluginName>/…`).
pub type PluginCaller = Caller<PluginToken>;

pub struct PluginToken;

impl Policy for Anyone {
    fn check(_: &AppState, _: &HttpRequest) -> Result<(), ApiError> {
        Ok(())
    }
}

fn bearer_matches(req: &HttpRequest, token: &Secret) -> bool {
    bearer(req).is_some_and(|p| token.matches(p))
}

impl Policy for LocalToken {
    /// The local API trusts loopback; `localToken`, when set, is required on every call.
    fn check(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
        match &state.config.local_token {
            Some(t) if !bearer_matches(req, t) => Err(ApiError::Unauthorized(
                "missing or wrong bearer token (sidecar.localToken)".into(),
            )),
            _ => Ok(()),
        }
    }
}

impl Policy for AdminToken {
    fn check(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
        match &state.config.admin_token {
            Some(t) if bearer_matches(req, t) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized(
                "missing or wrong bearer token (sidecar.adminToken)".into(),
            )),
            None => Err(ApiError::Unauthorized(
                "no sidecar.adminToken is configured: use the local API to drain".into(),
            )),
        }
    }
}

impl Policy for StreamToken {
    fn check(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
        match &state.config.event.stream_token {
            Some(t) if !bearer_matches(req, t) => Err(ApiError::Unauthorized(
                "missing or wrong bearer token (event.streamToken)".into(),
            )),
            _ => Ok(()),
        }
    }
}

impl Policy for PluginToken {
    /// With `localToken` set: Basic credentials whose password is the token (or the token as
    /// a bearer). Without any, a Basic challenge: the plugin's HTTP client sends its
    /// credentials only when challenged.
    fn check(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
        use base64::Engine;
        let Some(token) = &state.config.local_token else {
            return Ok(());
        };
        let header = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ok = match header.strip_prefix("Basic ") {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| {
                    let i = d.iter().position(|c| *c == b':')?;
                    Some(token.matches(&d[i + 1..]))
                })
                .unwrap_or(false),
            None => bearer_matches(req, token),
        };
        if ok {
            Ok(())
        } else {
            Err(ApiError::Challenge(
                "the plugin must authenticate: Basic credentials whose password is sidecar.localToken"
                    .into(),
            ))
        }
    }
}

/// A signed peer request: its body (read up to `limits.maxPeerBody`, then 413) and the
/// node's state, admitted only once the signature over method, path with query and body
/// checks out; a refused request (401) changes nothing.
pub struct Signed {
    state: Arc<AppState>,
    pub body: web::Bytes,
}

impl Deref for Signed {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.state
    }
}

impl Signed {
    /// The body as the JSON request type `T` (400 naming the problem otherwise).
    pub fn json<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        super::error::parse_json(&self.body)
    }
}

impl FromRequest for Signed {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let state = registered(&req)?;
            let body = read_body(payload, state.config.limits.max_peer_body).await?;
            authenticate(&state, &req, &body)?;
            Ok(Signed { state, body })
        })
    }
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

/// Authenticates a peer request over its exact body.
fn authenticate(state: &AppState, req: &HttpRequest, body: &[u8]) -> Result<(), ApiError> {
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
