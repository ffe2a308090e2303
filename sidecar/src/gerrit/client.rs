//! The HTTP client to this node's own Gerrit master (`[gerrit] url`): replays plugin calls with
//! preemptive Basic auth, probes the master's health, and asks it the indexSync query. TLS is
//! always verified (system roots plus `gerrit.caFile`).

use std::time::Duration;

use super::PluginCall;
use crate::config::{GerritConfig, HttpConfig};

/// What the master made of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// 2xx (the plugin's servlets answer 204).
    Done,
    /// The master will never accept it (400 cache not found, 405, 415, …): set aside.
    Refused { status: u16, answer: String },
    /// 409 (in flight), 5xx, 401/403/404, timeouts, connection failures: try again later.
    Retry(String),
}

#[derive(Clone)]
pub struct MasterClient {
    http: reqwest::Client,
    /// `<gerrit.url>plugins/<pluginName>/`.
    plugin_base: url::Url,
    base: url::Url,
    user: Option<String>,
    password: Option<String>,
}

impl MasterClient {
    /// `None` when no `gerrit.url` is configured.
    pub fn new(cfg: &GerritConfig, http: &HttpConfig) -> Result<Option<MasterClient>, String> {
        let Some(base) = cfg.url.clone() else {
            return Ok(None);
        };
        let mut b = reqwest::Client::builder()
            .connect_timeout(http.connection_timeout)
            .timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy()
            .user_agent(concat!("ha-sidecar/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read gerrit.caFile {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("gerrit.caFile {}: {e}", path.display()))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        let http = b
            .build()
            .map_err(|e| format!("cannot build the master's HTTP client: {e}"))?;
        let plugin_base = base
            .join(&format!("plugins/{}/", cfg.plugin_name))
            .map_err(|e| format!("bad gerrit.url {base}: {e}"))?;
        let password = cfg
            .password
            .as_ref()
            .map(|s| String::from_utf8_lossy(&s.0).into_owned());
        Ok(Some(MasterClient {
            http,
            plugin_base,
            base,
            user: cfg.user.clone(),
            password,
        }))
    }

    /// The master's base URL (no credentials in it).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// Preemptive Basic auth when a user is configured (the master's servlets never challenge).
    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.user {
            Some(u) => req.basic_auth(u, self.password.as_deref()),
            None => req,
        }
    }

    /// Replays one call: same method, path, body, `Content-Type` and `Event-Created-On`.
    pub async fn deliver(&self, call: &PluginCall) -> Delivery {
        let url = match self.plugin_base.join(&call.path) {
            Ok(u) => u,
            Err(e) => {
                return Delivery::Refused {
                    status: 0,
                    answer: format!("`{}` does not make a URL: {e}", call.path),
                }
            }
        };
        let method = match call.method.as_str() {
            "DELETE" => reqwest::Method::DELETE,
            _ => reqwest::Method::POST,
        };
        let mut req = self.auth(self.http.request(method, url));
        if let Some(ct) = &call.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(ms) = call.created_on {
            req = req.header("event-created-on", ms.to_string());
        }
        if let Some(body) = &call.body {
            req = req.body(body.clone());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Delivery::Retry(failure(&e)),
        };
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Delivery::Done;
        }
        let answer = resp.text().await.unwrap_or_default();
        let answer: String = answer.trim().chars().take(500).collect();
        classify(status, answer)
    }

    /// `Ok` while the master answers `GET plugins/<name>/health` (or, when the plugin has no
    /// health servlet, `GET config/server/version`) with 200 or 204.
    pub async fn health(&self) -> Result<(), String> {
        let url = self.plugin_base.join("health").map_err(|e| e.to_string())?;
        let status = self.get_status(url).await?;
        if matches!(status, 200 | 204) {
            return Ok(());
        }
        if status == 404 {
            let url = self
                .base
                .join("config/server/version")
                .map_err(|e| e.to_string())?;
            let status = self.get_status(url).await?;
            if matches!(status, 200 | 204) {
                return Ok(());
            }
            return Err(format!("config/server/version answered {status}"));
        }
        Err(format!("the plugin's health answered {status}"))
    }

    async fn get_status(&self, url: url::Url) -> Result<u16, String> {
        self.auth(self.http.get(url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| failure(&e))
    }

    /// `GET plugins/<name>/query/changes.updated.since/<age>` on this master: its changes
    /// (`<project>~<number>`) updated within `age`.
    pub async fn changes_updated_since(&self, age: &str) -> Result<(u16, Vec<String>), String> {
        let url = self
            .plugin_base
            .join(&format!("query/changes.updated.since/{age}"))
            .map_err(|e| e.to_string())?;
        let resp = self
            .auth(self.http.get(url))
            .send()
            .await
            .map_err(|e| failure(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| failure(&e))?;
        if status != 200 {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(format!("the master answered {status}: {}", text.trim()));
        }
        serde_json::from_slice(&bytes)
            .map(|ids| (status, ids))
            .map_err(|e| format!("the master's answer is not a JSON list of ids: {e}"))
    }
}

/// What failed, and its innermost cause (the peer client's description of a reqwest error).
fn failure(e: &reqwest::Error) -> String {
    let (what, cause) = crate::peers::client::describe(e);
    format!("{what}: {cause}")
}

/// 409 (in flight), 5xx and the statuses an operator can fix (401, 403, 404, 408, 429) are
/// retried; any other 4xx is a permanent refusal (400 cache not found, 405, 415).
pub fn classify(status: u16, answer: String) -> Delivery {
    match status {
        400..=499 if !matches!(status, 401 | 403 | 404 | 408 | 409 | 429) => {
            Delivery::Refused { status, answer }
        }
        _ => Delivery::Retry(format!("the master answered {status}: {answer}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, Delivery};

    #[test]
    fn answers_are_classified_like_the_plugin_servlets_mean_them() {
        for s in [400, 405, 415, 413, 422] {
            assert!(
                matches!(classify(s, String::new()), Delivery::Refused { .. }),
                "{s}"
            );
        }
        for s in [409, 500, 502, 503, 401, 403, 404, 408, 429] {
            assert!(
                matches!(classify(s, String::new()), Delivery::Retry(_)),
                "{s}"
            );
        }
    }
}
