//! The one place that maps errors to HTTP status codes. Every error body is `{"error": "..."}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    /// 401 with `WWW-Authenticate: Basic` (the plugin's client sends credentials only when
    /// challenged).
    #[error("{0}")]
    Challenge(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request does not fit the node's configuration or state (promote when not manual).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
    /// The data directory is full (ENOSPC, EDQUOT): `507`, naming the path.
    #[error("{0}")]
    InsufficientStorage(String),
}

/// `507` when anything in the error's chain is a full disk, else `other`.
fn or_disk_full(e: &(dyn std::error::Error + 'static), other: ApiError) -> ApiError {
    if crate::durable::chain_is_disk_full(e) {
        ApiError::InsufficientStorage(format!(
            "no space left in the data directory (retry once space is freed): {e}"
        ))
    } else {
        other
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Challenge(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(e) = self {
            tracing::error!(error = %e, "request failed inside the sidecar");
        }
        let mut res = HttpResponse::build(self.status_code());
        if let ApiError::Challenge(_) = self {
            res.insert_header(("WWW-Authenticate", "Basic realm=\"ha-sidecar\""));
        }
        res.json(serde_json::json!({ "error": self.to_string() }))
    }
}

impl From<crate::election::ElectionError> for ApiError {
    fn from(e: crate::election::ElectionError) -> Self {
        use crate::election::ElectionError as E;
        match e {
            E::NotHotStandby | E::NotManual(_) => ApiError::Conflict(e.to_string()),
            E::CannotServe(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<crate::cache::CacheError> for ApiError {
    fn from(e: crate::cache::CacheError) -> Self {
        match e {
            crate::cache::CacheError::BadName(_) => ApiError::BadRequest(e.to_string()),
            crate::cache::CacheError::TooMany => ApiError::TooLarge(e.to_string()),
        }
    }
}

impl From<crate::gerrit::ingress::IngressError> for ApiError {
    fn from(e: crate::gerrit::ingress::IngressError) -> Self {
        use crate::gerrit::ingress::IngressError as E;
        match e {
            E::BadRequest(m) => ApiError::BadRequest(m),
            E::NotFound(m) => ApiError::NotFound(m),
            E::MethodNotAllowed(m) => ApiError::MethodNotAllowed(m),
            E::UnsupportedMediaType(m) => ApiError::Unsupported(m),
        }
    }
}

impl From<crate::peers::outbox::OutboxError> for ApiError {
    fn from(e: crate::peers::outbox::OutboxError) -> Self {
        use crate::peers::outbox::OutboxError as E;
        match &e {
            // 507 naming the path; passes once space is freed: the master may retry.
            E::Io(..) => or_disk_full(
                &e,
                ApiError::Internal(format!("cannot queue for peers: {e}")),
            ),
            E::Closed => ApiError::Unavailable(format!("cannot queue for peers: {e}")),
        }
    }
}

impl From<crate::local::LocalError> for ApiError {
    fn from(e: crate::local::LocalError) -> Self {
        use crate::local::LocalError as E;
        match e {
            E::Cache(e) => e.into(),
            E::Index(e) => e.into(),
            E::Events(e) => e.into(),
            E::Sessions(e) => e.into(),
            E::Queue(e) => e.into(),
            E::Relay(e) => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// This node's master did not give what a peer asked for (the indexSync query): the peer's
/// union fails with `503` and the plugin's indexSync retries.
impl From<crate::gerrit::client::MasterError> for ApiError {
    fn from(e: crate::gerrit::client::MasterError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<crate::receiver::ReceiveError> for ApiError {
    fn from(e: crate::receiver::ReceiveError) -> Self {
        match e {
            crate::receiver::ReceiveError::BadOrigin(_)
            | crate::receiver::ReceiveError::OwnOrigin(_) => ApiError::BadRequest(e.to_string()),
            crate::receiver::ReceiveError::Store { .. }
            | crate::receiver::ReceiveError::Master { .. } => ApiError::Unavailable(e.to_string()),
            crate::receiver::ReceiveError::Persist { .. }
            | crate::receiver::ReceiveError::Index(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::index::IndexError> for ApiError {
    fn from(e: crate::index::IndexError) -> Self {
        use crate::index::IndexError as E;
        match e {
            E::BadQuery(_) | E::BadDocument { .. } | E::BadOptions(_) => {
                ApiError::BadRequest(e.to_string())
            }
            E::UnknownKind(_) => ApiError::NotFound(e.to_string()),
            E::DocumentTooLarge { .. } => ApiError::TooLarge(e.to_string()),
            E::Internal { .. } => or_disk_full(&e, ApiError::Internal(e.to_string())),
            E::WriterStopped => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::events::EventError> for ApiError {
    fn from(e: crate::events::EventError) -> Self {
        use crate::events::EventError as E;
        match e {
            E::BadEvent(_) | E::BadCursor(_) | E::BadOrigin(_) | E::ImplausibleSeq(_) => {
                ApiError::BadRequest(e.to_string())
            }
            E::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            E::CursorExpired(_) => ApiError::Gone(e.to_string()),
            E::Closed | E::Restoring | E::Refilling => ApiError::Unavailable(e.to_string()),
            E::Io { .. } => or_disk_full(&e, ApiError::Internal(e.to_string())),
            E::Corrupt { .. } | E::Internal(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::sessions::SessionsError> for ApiError {
    fn from(e: crate::sessions::SessionsError) -> Self {
        use crate::sessions::SessionsError as E;
        match e {
            E::Invalid(m) => ApiError::BadRequest(m),
            E::TooLarge(m) => ApiError::TooLarge(m),
            // A corrupt file is reported (log, metric) by the store and answers as absent.
            E::Corrupt => no_such_session(),
            E::Storage(m) => ApiError::Internal(format!("web sessions: {m}")),
            E::NotResponding => ApiError::Unavailable("shared directory not responding".into()),
        }
    }
}

/// The answer for an unknown, expired, malformed or logged-out session (never echoes the token).
pub fn no_such_session() -> ApiError {
    ApiError::NotFound("no such session (unknown, expired or logged out)".into())
}

/// Parses a JSON body, naming the problem (with line and column) when it is not.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
}
