//! The HTTP client to peer sidecars: the only module that imports reqwest. Signs every request.

use std::time::Duration;

use crate::auth;
use crate::config::{HttpConfig, Secret};
use crate::wire::BatchReply;

/// Why a call to a peer (or to the alert webhook) did not go through, with its context.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    #[error("bad peer url {base}: {source}")]
    BadUrl {
        base: String,
        #[source]
        source: url::ParseError,
    },
    #[error("no auth.secretFile configured")]
    NoSecret,
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// No answer: the connection failed, timed out, or broke (`what` says which, `cause` is the
    /// innermost error, e.g. "Connection refused").
    #[error("{url}: {what}: {cause}")]
    Transport {
        url: String,
        what: &'static str,
        cause: String,
    },
    #[error("{url} is this node itself (it answers with our instanceId); fix peerInfo")]
    Itself { url: String },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("unreadable reply from {url}: {source}")]
    Reply {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// The reply was read but makes no sense (e.g. the wrong number of bucket digests).
    #[error("{0}")]
    BadReply(String),
    /// This node's side of a call failed (a store, a blocking task).
    #[error("{0}")]
    Local(String),
}

/// Why a batch (or an anti-entropy call) did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer refused the batch for good (400, 413, 422): retrying cannot help.
    #[error("peer refused the batch with {status}: {message}")]
    Refused { status: u16, message: String },
    /// Anything worth retrying: refused connection, timeout, 5xx, 401, 404, a bad reply.
    #[error(transparent)]
    Retry(#[from] ClientError),
}

#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: Option<Secret>,
    instance_id: String,
}

impl PeerClient {
    pub fn new(
        cfg: &HttpConfig,
        secret: Option<Secret>,
        instance_id: &str,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.connection_timeout)
            .read_timeout(cfg.socket_timeout)
            .timeout(cfg.socket_timeout + cfg.connection_timeout + Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("ha-sidecar/", env!("CARGO_PKG_VERSION")));
        // `http.caFile` roots and this node's certificate as client certificate (`tls`).
        if let Some(tls) = tls {
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder.build().map_err(ClientError::Build)?;
        Ok(PeerClient {
            http,
            secret,
            instance_id: instance_id.to_owned(),
        })
    }

    /// Sends one batch body (already JSON) to `<base>v1/peer/batch`.
    pub async fn send_batch(
        &self,
        base: &url::Url,
        body: Vec<u8>,
    ) -> Result<BatchReply, SendError> {
        let url = join(base, "v1/peer/batch")?;
        let resp = self
            .signed_post(&url, body)?
            .send()
            .await
            .map_err(|e| transport(&url, &e))?;
        if resp
            .headers()
            .get("x-ha-instance")
            .and_then(|v| v.to_str().ok())
            == Some(self.instance_id.as_str())
        {
            return Err(ClientError::Itself {
                url: url.to_string(),
            }
            .into());
        }
        classify(&url, resp).await
    }

    /// A signed `POST` of a JSON body to `url` (a `/v1/peer/` endpoint), ready to send.
    fn signed_post(
        &self,
        url: &url::Url,
        body: Vec<u8>,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let secret = self.secret.as_ref().ok_or(ClientError::NoSecret)?;
        let sig = auth::sign(
            secret,
            "POST",
            url.path(),
            &body,
            crate::peers::outbox::now_ms(),
        );
        Ok(self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .header(auth::HEADER_TIMESTAMP, &sig.timestamp_ms)
            .header(auth::HEADER_NONCE, &sig.nonce)
            .header(auth::HEADER_SIGNATURE, &sig.signature)
            .header(auth::HEADER_CONTENT_SHA256, auth::content_sha256(&body))
            .body(body))
    }
}

/// What a readiness probe of a peer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `/readyz` answered 200 (or 503 "drained"); the peer's `X-HA-Instance`.
    Ready(Option<String>),
    /// The peer answered, but is not ready (starting, shutting down).
    NotReady(Option<String>),
    /// No answer: refused, timed out.
    Unreachable(String),
}

impl PeerClient {
    /// `GET <base>readyz` with a short timeout.
    pub async fn probe(&self, base: &url::Url, timeout: Duration) -> Probe {
        let Ok(url) = base.join("readyz") else {
            return Probe::Unreachable(format!("bad peer url {base}"));
        };
        match self.http.get(url).timeout(timeout).send().await {
            Ok(r) => {
                let id = r
                    .headers()
                    .get("x-ha-instance")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if r.status().is_success() {
                    return Probe::Ready(id);
                }
                // A drained peer is out of the load balancer's rotation, not out of the
                // cluster: `/readyz` says 503 "drained", and it is up for its peers.
                match r.text().await {
                    Ok(body) if body.contains("\"drained\"") => Probe::Ready(id),
                    _ => Probe::NotReady(id),
                }
            }
            Err(e) => {
                let (what, cause) = describe(&e);
                Probe::Unreachable(format!("{what}: {cause}"))
            }
        }
    }

    /// Signs and POSTs a JSON body to `<base><path>` (a `/v1/peer/` endpoint); returns the
    /// status and the reply body.
    pub async fn post_signed(
        &self,
        base: &url::Url,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let url = join(base, path.trim_start_matches('/'))?;
        reply_of(&url, self.signed_post(&url, body)?.timeout(timeout)).await
    }

    /// Signs and GETs `<base><path_and_query>` (the event catch-up endpoints, signed over the
    /// path with its query and an empty body); returns the status and the reply body.
    pub async fn get_signed(
        &self,
        base: &url::Url,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let url = join(base, path_and_query.trim_start_matches('/'))?;
        let secret = self.secret.as_ref().ok_or(ClientError::NoSecret)?;
        let signed = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let sig = auth::sign(secret, "GET", &signed, b"", crate::peers::outbox::now_ms());
        let request = self
            .http
            .get(url.clone())
            .header(auth::HEADER_TIMESTAMP, &sig.timestamp_ms)
            .header(auth::HEADER_NONCE, &sig.nonce)
            .header(auth::HEADER_SIGNATURE, &sig.signature)
            .header(auth::HEADER_CONTENT_SHA256, auth::content_sha256(b""))
            .timeout(timeout);
        reply_of(&url, request).await
    }

    /// Sends an alert in the background (the caller never waits on the webhook); a failure is
    /// logged and counted in `ha_alerts_failed_total`.
    pub fn spawn_alert(
        &self,
        scope: &crate::lifecycle::Scope,
        url: url::Url,
        body: serde_json::Value,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) {
        let client = self.clone();
        scope.spawn(async move {
            if let Err(e) = client.post_alert(&url, &body, Duration::from_secs(5)).await {
                metrics.alerts_failed.inc();
                let event = body.get("event").and_then(|e| e.as_str()).unwrap_or("?");
                tracing::warn!(webhook = %url, event, error = %e, "alert webhook failed");
            }
        });
    }

    /// POSTs an alert (unsigned JSON) to the operator's webhook.
    pub async fn post_alert(
        &self,
        url: &url::Url,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let r = self
            .http
            .post(url.clone())
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| transport(url, &e))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(ClientError::Status {
                url: url.to_string(),
                status: r.status().as_u16(),
                message: "the alert webhook refused the alert".into(),
            })
        }
    }
}

impl PeerClient {
    /// A signed JSON `POST` to `<base><path>` (anti-entropy calls); any failure is `Retry`
    /// unless the peer refused the request for good.
    pub async fn call<Req, Resp>(
        &self,
        base: &url::Url,
        path: &str,
        req: &Req,
    ) -> Result<Resp, SendError>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let url = join(base, path)?;
        let body = serde_json::to_vec(req).map_err(ClientError::Encode)?;
        let resp = self
            .signed_post(&url, body)?
            .send()
            .await
            .map_err(|e| transport(&url, &e))?;
        classify(&url, resp).await
    }
}

fn join(base: &url::Url, path: &str) -> Result<url::Url, ClientError> {
    base.join(path).map_err(|source| ClientError::BadUrl {
        base: base.to_string(),
        source,
    })
}

/// A peer's reply: the decoded body on 2xx; `Refused` for a request it will never accept
/// (400, 413, 422); `Retry` for everything else.
async fn classify<T: serde::de::DeserializeOwned>(
    url: &url::Url,
    resp: reqwest::Response,
) -> Result<T, SendError> {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| transport(url, &e))?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&bytes).map_err(|source| {
            ClientError::Reply {
                url: url.to_string(),
                source,
            }
            .into()
        });
    }
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
    match status {
        400 | 413 | 422 => Err(SendError::Refused { status, message }),
        _ => Err(ClientError::Status {
            url: url.to_string(),
            status,
            message,
        }
        .into()),
    }
}

fn transport(url: &url::Url, e: &reqwest::Error) -> ClientError {
    let (what, cause) = describe(e);
    ClientError::Transport {
        url: url.to_string(),
        what,
        cause,
    }
}

/// What kind of failure, and its innermost cause.
pub(crate) fn describe(e: &reqwest::Error) -> (&'static str, String) {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    // The innermost cause says what happened ("Connection refused"); the chain above it
    // repeats the URL, which the caller logs anyway.
    let mut root: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = root.and_then(|r| r.source()) {
        root = Some(s);
    }
    match root {
        Some(r) => (kind, r.to_string()),
        None => (kind, e.to_string()),
    }
}

/// Sends a request and reads its whole reply: the status and the body.
async fn reply_of(
    url: &url::Url,
    request: reqwest::RequestBuilder,
) -> Result<(u16, Vec<u8>), ClientError> {
    let resp = request.send().await.map_err(|e| transport(url, &e))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| transport(url, &e))?;
    Ok((status, bytes.to_vec()))
}
