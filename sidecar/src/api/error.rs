//! The one place that maps errors to HTTP status codes. Every error body is `{"error": "..."}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
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
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(e) = self {
            tracing::error!(error = %e, "request failed inside the sidecar");
        }
        HttpResponse::build(self.status_code())
            .json(serde_json::json!({ "error": self.to_string() }))
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

impl From<crate::peers::outbox::OutboxError> for ApiError {
    fn from(e: crate::peers::outbox::OutboxError) -> Self {
        use crate::peers::outbox::OutboxError as E;
        match &e {
            // Passes once space is freed: the master may retry.
            E::Io(_, io) if io.kind() == std::io::ErrorKind::StorageFull => {
                ApiError::Unavailable(format!("cannot queue for peers: {e}"))
            }
            E::Closed => ApiError::Unavailable(format!("cannot queue for peers: {e}")),
            E::Io(..) => ApiError::Internal(format!("cannot queue for peers: {e}")),
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

impl From<crate::receiver::ReceiveError> for ApiError {
    fn from(e: crate::receiver::ReceiveError) -> Self {
        match e {
            crate::receiver::ReceiveError::BadOrigin(_) => ApiError::BadRequest(e.to_string()),
            crate::receiver::ReceiveError::Store { .. } => ApiError::Unavailable(e.to_string()),
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
            E::Internal { .. } | E::WriterStopped => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::events::EventError> for ApiError {
    fn from(e: crate::events::EventError) -> Self {
        use crate::events::EventError as E;
        match e {
            E::BadEvent(_) | E::BadCursor(_) | E::BadOrigin(_) => {
                ApiError::BadRequest(e.to_string())
            }
            E::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            E::CursorExpired(_) => ApiError::Gone(e.to_string()),
            E::Closed => ApiError::Unavailable(e.to_string()),
            E::Io { .. } | E::Corrupt { .. } | E::Internal(_) => ApiError::Internal(e.to_string()),
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
