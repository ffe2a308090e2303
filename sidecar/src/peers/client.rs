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
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connection_timeout)
            .read_timeout(cfg.socket_timeout)
            .timeout(cfg.socket_timeout + cfg.connection_timeout + Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("ha-sidecar/", env!("CARGO_PKG_VERSION")))
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
        let url = base
            .join("v1/peer/batch")
            .map_err(|e| SendError::Retry(format!("bad peer url {base}: {e}")))?;
        let secret = self
            .secret
            .as_ref()
            .ok_or_else(|| SendError::Retry("no auth.secretFile configured".into()))?;
        let sig = auth::sign(
            secret,
            "POST",
            url.path(),
            &body,
            crate::peers::outbox::now_ms(),
        );
        let resp = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .header(auth::HEADER_TIMESTAMP, &sig.timestamp_ms)
            .header(auth::HEADER_NONCE, &sig.nonce)
            .header(auth::HEADER_SIGNATURE, &sig.signature)
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Retry(describe(&e)))?;
        let status = resp.status().as_u16();
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
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| SendError::Retry(format!("reading the reply: {}", describe(&e))))?;
        let message = || {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
                })
        };
        match status {
            200..=299 => serde_json::from_slice(&bytes)
                .map_err(|e| SendError::Retry(format!("unreadable reply from peer: {e}"))),
            400 | 413 | 422 => Err(SendError::Refused {
                status,
                message: message(),
            }),
            _ => Err(SendError::Retry(format!(
                "peer answered {status}: {}",
                message()
            ))),
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
        let url = base
            .join(path)
            .map_err(|e| SendError::Retry(format!("bad peer url {base}: {e}")))?;
        let secret = self
            .secret
            .as_ref()
            .ok_or_else(|| SendError::Retry("no auth.secretFile configured".into()))?;
        let body = serde_json::to_vec(req)
            .map_err(|e| SendError::Retry(format!("cannot encode the request: {e}")))?;
        let sig = auth::sign(
            secret,
            "POST",
            url.path(),
            &body,
            crate::peers::outbox::now_ms(),
        );
        let resp = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .header(auth::HEADER_TIMESTAMP, &sig.timestamp_ms)
            .header(auth::HEADER_NONCE, &sig.nonce)
            .header(auth::HEADER_SIGNATURE, &sig.signature)
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Retry(format!("{url}: {}", describe(&e))))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| {
            SendError::Retry(format!("reading the reply of {url}: {}", describe(&e)))
        })?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes)
                .map_err(|e| SendError::Retry(format!("unreadable reply from {url}: {e}")));
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
            });
        match status {
            400 | 413 | 422 => Err(SendError::Refused { status, message }),
            _ => Err(SendError::Retry(format!(
                "{url} answered {status}: {message}"
            ))),
        }
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
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}
