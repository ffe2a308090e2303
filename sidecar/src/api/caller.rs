//! Who may call a handler. The node's state is registered under a type only this module reads,
//! so a handler reaches the stores only through one of these extractors, and the extractor
//! carries the check: a handler that does not say who may call it does not compile.
//!
//! - [`Public`]: anyone (liveness, readiness, health, metrics, peers, status).
//! - [`LocalCaller`]: the master, with `sidecar.localToken` when one is set (loopback otherwise).
//! - [`AdminCaller`]: an operator with `sidecar.adminToken` (drain on `listenUrl`).
//! - [`StreamCaller`]: an event consumer: `event.streamToken` (every project) or the token of
//!   an `[event "consumer NAME"]` (its projects), as a bearer token or a Basic password (the
//!   events-log API's clients send Basic credentials when challenged); open when neither is set.
//! - [`Signed`]: a peer sidecar: the HMAC signature over the exact body is verified before the
//!   handler runs; the body comes with it. With mutual TLS the connection must carry a verified
//!   client certificate, and [`Signed::speaks_for`] checks that it names the node a request
//!   speaks for.

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
use crate::tls::PeerNames;

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

pub type Public = Caller<Anyone>;
pub type LocalCaller = Caller<LocalToken>;
pub type AdminCaller = Caller<AdminToken>;
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

/// An event consumer admitted by its token; derefs to the node's state. `projects` is the
/// consumer's project filter (`None`: every project), for every read it makes.
pub struct StreamCaller {
    state: Arc<AppState>,
    /// The `[event "consumer NAME"]` it is, `None` for `event.streamToken` or an open stream.
    pub consumer: Option<String>,
    pub projects: Option<Arc<crate::events::ProjectFilter>>,
}

impl Deref for StreamCaller {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.state
    }
}

impl StreamCaller {
    fn admit(state: Arc<AppState>, req: &HttpRequest) -> Result<StreamCaller, ApiError> {
        let event = &state.config.event;
        let presented = bearer(req)
            .map(<[u8]>::to_vec)
            .or_else(|| basic_password(req));
        let open = StreamCaller {
            state: state.clone(),
            consumer: None,
            projects: None,
        };
        let Some(presented) = presented else {
            if event.stream_token.is_none() && event.consumers.is_empty() {
                return Ok(open);
            }
            return Err(stream_refusal());
        };
        if event
            .stream_token
            .as_ref()
            .is_some_and(|t| t.matches(&presented))
        {
            return Ok(open);
        }
        // Every consumer's token is compared (constant time each), so the time does not
        // say which one matched.
        let mut found = None;
        for c in &event.consumers {
            if c.token.matches(&presented) {
                found = Some(c);
            }
        }
        match found {
            Some(c) => Ok(StreamCaller {
                consumer: Some(c.name.clone()),
                projects: c.projects.clone(),
                state,
            }),
            None if event.stream_token.is_none() && event.consumers.is_empty() => Ok(open),
            None => Err(stream_refusal()),
        }
    }
}

fn stream_refusal() -> ApiError {
    ApiError::Challenge(
        "missing or wrong token (event.streamToken or an [event \"consumer NAME\"] token), \
         as a bearer token or a Basic password"
            .into(),
    )
}

impl FromRequest for StreamCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(registered(req).and_then(|state| StreamCaller::admit(state, req)))
    }
}

/// The password of `Authorization: Basic` credentials.
fn basic_password(req: &HttpRequest) -> Option<Vec<u8>> {
    use base64::Engine;
    let b = req
        .headers()
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let d = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let i = d.iter().position(|c| *c == b':')?;
    Some(d[i + 1..].to_vec())
}

impl Policy for PluginToken {
    /// With `localToken` set: Basic credentials whose password is the token (or the token as
    /// a bearer). Without any, a Basic challenge: the plugin's HTTP client sends its
    /// credentials only when challenged.
    fn check(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(token) = &state.config.local_token else {
            return Ok(());
        };
        let ok = match basic_password(req) {
            Some(p) => token.matches(&p),
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
/// checks out; a refused request (401) changes nothing. Authentication before the body: a
/// missing, malformed or stale signature, and (when the sender declares
/// `X-HA-Content-SHA256`, as this version does) a wrong one, are refused before one body byte
/// is read; the body is then read under a budget of bytes in flight and must hash to the
/// declared value.
pub struct Signed {
    state: Arc<AppState>,
    pub body: web::Bytes,
    /// With mutual TLS, the names of the peer's verified client certificate.
    names: Option<PeerNames>,
    from: Option<std::net::SocketAddr>,
    /// This body's share of the peer body bytes in flight, held until the handler is done.
    _budget: tokio::sync::OwnedSemaphorePermit,
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

    /// With mutual TLS, refuses (401) a request that speaks for `instance_id` (a batch's
    /// `origin`, a hello's `instance_id`) when the client certificate does not name it: one
    /// node cannot speak for another.
    pub fn speaks_for(&self, instance_id: &str) -> Result<(), ApiError> {
        match &self.names {
            Some(names) if !names.names(instance_id) => Err(refuse(
                &self.state,
                self.from,
                "certificate_mismatch",
                format!("the client certificate does not name `{instance_id}`"),
            )),
            _ => Ok(()),
        }
    }
}

/// With mutual TLS (`sidecar.clientCaFile`), the names of the peer's verified client
/// certificate, attached to the connection at the handshake; 401 without one (before the body
/// is read). `None` when mutual TLS is off.
fn client_certificate(state: &AppState, req: &HttpRequest) -> Result<Option<PeerNames>, ApiError> {
    if !state.tls.mutual {
        return Ok(None);
    }
    match req.conn_data::<PeerNames>() {
        Some(names) => Ok(Some(names.clone())),
        None => Err(refuse(
            state,
            req.peer_addr(),
            "no_client_certificate",
            "a client certificate is required on /v1/peer/* (mutual TLS)".into(),
        )),
    }
}

/// Counts and logs a refused peer request; the 401 it answers.
fn refuse(
    state: &AppState,
    from: Option<std::net::SocketAddr>,
    reason: &'static str,
    message: String,
) -> ApiError {
    state
        .metrics
        .auth_failures
        .get_or_create(&ReasonLabel {
            reason: reason.into(),
        })
        .inc();
    let from = from.map(|a| a.to_string()).unwrap_or_default();
    tracing::warn!(from = %from, reason, "refused an unauthenticated peer request");
    ApiError::Unauthorized(message)
}

impl FromRequest for Signed {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let state = registered(&req)?;
            // Everything that can refuse without the body does, before one byte is read.
            let names = client_certificate(&state, &req)?;
            let declared = declared_hash(&state, &req)?;
            let now = crate::peers::outbox::now_ms();
            let headers = signature_headers(&req);
            if let Err(e) = state.verifier.precheck(headers.as_ref(), now) {
                return Err(auth_refusal(&state, &req, e));
            }
            if let Some(hash) = &declared {
                authenticate(&state, &req, Body::Declared(hash))?;
            }
            let limit = state.config.limits.max_peer_body;
            let budget = body_budget(&state, &req, limit).await?;
            let body = read_body(payload, limit).await?;
            match &declared {
                Some(hash) if auth::content_sha256(&body) != *hash => {
                    return Err(refuse(
                        &state,
                        req.peer_addr(),
                        "body_mismatch",
                        "the body does not match its signed X-HA-Content-SHA256".into(),
                    ))
                }
                Some(_) => {}
                // A sender from before the header: verified over the body it sent.
                None => authenticate(&state, &req, Body::Read(&body))?,
            }
            Ok(Signed {
                state,
                body,
                names,
                from: req.peer_addr(),
                _budget: budget,
            })
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

/// `X-HA-Content-SHA256` if the sender declared it (401 when malformed).
fn declared_hash(state: &AppState, req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get(auth::HEADER_CONTENT_SHA256) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(h) if auth::is_sha256_hex(h) => Ok(Some(h.to_owned())),
        _ => Err(auth_refusal(
            state,
            req,
            auth::AuthError::Malformed(auth::HEADER_CONTENT_SHA256),
        )),
    }
}

/// Waits (at most [`BODY_BUDGET_WAIT`]) for room among the peer body bytes in flight
/// (`AppState::peer_bodies`, in KiB) for this request's declared length, or `limit`; 503 when
/// none comes free. Held until the request's body has been read and handled.
async fn body_budget(
    state: &AppState,
    req: &HttpRequest,
    limit: usize,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let len = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(limit);
    if len > limit {
        return Err(ApiError::TooLarge(format!(
            "request body exceeds the limit of {limit} bytes"
        )));
    }
    let total = state.peer_bodies_kib;
    let kib = (len.div_ceil(1024) as u32).clamp(1, total);
    match tokio::time::timeout(
        BODY_BUDGET_WAIT,
        state.peer_bodies.clone().acquire_many_owned(kib),
    )
    .await
    {
        Ok(Ok(p)) => Ok(p),
        _ => Err(ApiError::Unavailable(
            "too many peer request bodies in flight; retry".into(),
        )),
    }
}

/// Longest wait for room among the peer body bytes in flight.
const BODY_BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a signature is checked over.
enum Body<'a> {
    /// The hash the sender declared (before the body is read).
    Declared(&'a str),
    /// The body as read.
    Read(&'a [u8]),
}

fn auth_refusal(state: &AppState, req: &HttpRequest, e: auth::AuthError) -> ApiError {
    let reason = match &e {
        auth::AuthError::Missing(_) => "unsigned",
        auth::AuthError::Malformed(_) => "malformed",
        auth::AuthError::Stale { .. } => "stale",
        auth::AuthError::BadSignature => "bad_signature",
        auth::AuthError::Replayed => "replayed",
        auth::AuthError::NoSecret => "no_secret",
    };
    refuse(state, req.peer_addr(), reason, e.to_string())
}

/// Authenticates a peer request over its body's hash.
fn authenticate(state: &AppState, req: &HttpRequest, body: Body<'_>) -> Result<(), ApiError> {
    let headers = signature_headers(req);
    let hash = match body {
        Body::Declared(h) => h.to_owned(),
        Body::Read(b) => auth::content_sha256(b),
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    state
        .verifier
        .verify_hash(
            req.method().as_str(),
            path,
            headers.as_ref(),
            &hash,
            crate::peers::outbox::now_ms(),
        )
        .map_err(|e| auth_refusal(state, req, e))
}
