//! The HTTP client to peer sidecars: the only module that imports reqwest. Signs every request.

use std::time::Duration;

use crate::auth;
use crate::config::{HttpConfig, Secret};
use crate::wire::BatchReply;

/// Why a batch did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer refused the batch for good (400, 413, 422): retrying cannot help.
    #[error("peer refused the batch with {status}: {message}")]
    Refused { status: u16, message: String },
    /// Anything worth retrying: refused connection, timeout, 5xx, 401, 404, a bad reply.
    #[error("{0}")]
    Retry(String),
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
    ) -> Result<Self, String> {
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
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
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
        let url = join(base, "v1/peer/batch").map_err(SendError::Retry)?;
        let resp = self
            .signed_post(&url, body)
            .map_err(SendError::Retry)?
            .send()
            .await
            .map_err(|e| SendError::Retry(describe(&e)))?;
        if resp
            .headers()
            .get("x-ha-instance")
            .and_then(|v| v.to_str().ok())
            == Some(self.instance_id.as_str())
        {
            return Err(SendError::Retry(format!(
                "{url} is this node itself (it answers with our instanceId); fix peerInfo"
            )));
        }
        classify(&url, resp).await
    }

    /// A signed `POST` of a JSON body to `url` (a `/v1/peer/` endpoint), ready to send.
    fn signed_post(
        &self,
        url: &url::Url,
        body: Vec<u8>,
    ) -> Result<reqwest::RequestBuilder, String> {
        let secret = self
            .secret
            .as_ref()
            .ok_or_else(|| "no auth.secretFile configured".to_owned())?;
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
            Err(e) => Probe::Unreachable(describe(&e)),
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
    ) -> Result<(u16, Vec<u8>), String> {
        let url = join(base, path.trim_start_matches('/'))?;
        let resp = self
            .signed_post(&url, body)?
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| describe(&e))?;
        Ok((status, bytes.to_vec()))
    }

    /// POSTs an alert (unsigned JSON) to the operator's webhook.
    pub async fn post_alert(
        &self,
        url: &url::Url,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(), String> {
        let r = self
            .http
            .post(url.clone())
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("the webhook answered {}", r.status().as_u16()))
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
        let url = join(base, path).map_err(SendError::Retry)?;
        let body = serde_json::to_vec(req)
            .map_err(|e| SendError::Retry(format!("cannot encode the request: {e}")))?;
        let resp = self
            .signed_post(&url, body)
            .map_err(SendError::Retry)?
            .send()
            .await
            .map_err(|e| SendError::Retry(format!("{url}: {}", describe(&e))))?;
        classify(&url, resp).await
    }
}

fn join(base: &url::Url, path: &str) -> Result<url::Url, String> {
    base.join(path)
        .map_err(|e| format!("bad peer url {base}: {e}"))
}

/// A peer's reply: the decoded body on 2xx; `Refused` for a request it will never accept
/// (400, 413, 422); `Retry` for everything else.
async fn classify<T: serde::de::DeserializeOwned>(
    url: &url::Url,
    resp: reqwest::Response,
) -> Result<T, SendError> {
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| SendError::Retry(format!("reading the reply of {url}: {}", describe(&e))))?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&bytes)
            .map_err(|e| SendError::Retry(format!("unreadable reply from {url}: {e}")));
    }
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
    match status {
        400 | 413 | 422 => Err(SendError::Refused { status, message }),
        _ => Err(SendError::Retry(format!(
            "{url} answered {status}: {message}"
        ))),
    }
}

fn describe(e: &reqwest::Error) -> String {
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
        Some(r) => format!("{kind}: {r}"),
        None => format!("{kind}: {e}"),
    }
}
