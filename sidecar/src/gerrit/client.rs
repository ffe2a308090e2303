//! The HTTP client to this node's own Gerrit master (`[gerrit] url`): replays plugin calls with
//! preemptive Basic auth, probes the master's health, and asks it the indexSync query. TLS is
//! always verified (system roots plus `gerrit.caFile`).

use std::path::PathBuf;
use std::time::Duration;

use super::PluginCall;
use crate::config::{GerritConfig, HttpConfig};

/// What went wrong talking to the master (or setting up its client).
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot read gerrit.caFile {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gerrit.caFile {path}: {source}")]
    BadCa {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot build the master's HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    #[error("`{path}` does not make a URL under {base}: {source}")]
    BadUrl {
        base: String,
        path: String,
        #[source]
        source: url::ParseError,
    },
    /// No answer: the connection failed, timed out or broke (`what` says which, `cause` is the
    /// innermost error, e.g. "Connection refused").
    #[error("{what}: {cause}")]
    Transport { what: &'static str, cause: String },
    /// An answer other than the one wanted; `answer` is its body, trimmed to 500 characters.
    #[error("the master answered {status}: {answer}")]
    Status { status: u16, answer: String },
    #[error("the master's answer is not a JSON list of ids: {0}")]
    NotIds(#[source] serde_json::Error),
    #[error("cannot open the master's queues: {0}")]
    Queues(#[source] crate::peers::outbox::OutboxError),
}

impl MasterError {
    fn transport(e: &reqwest::Error) -> MasterError {
        let (what, cause) = crate::peers::client::describe(e);
        MasterError::Transport { what, cause }
    }

    /// The master's HTTP status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            MasterError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What the master made of one call.
#[derive(Debug)]
pub enum Delivery {
    /// 2xx (the plugin's servlets answer 204).
    Done,
    /// The master will never accept it (400 cache not found, 405, 415, …): set aside.
    Refused { status: u16, answer: String },
    /// 409 (in flight), 5xx, 401/403/404, timeouts, connection failures: try again later.
    Retry(MasterError),
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
    pub fn new(cfg: &GerritConfig, http: &HttpConfig) -> Result<Option<MasterClient>, MasterError> {
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
            let pem = std::fs::read(path).map_err(|source| MasterError::CaFile {
                path: path.clone(),
                source,
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                MasterError::BadCa {
                    path: path.clone(),
                    source,
                }
            })? {
                b = b.add_root_certificate(cert);
            }
        }
        let http = b.build().map_err(MasterError::Build)?;
        let plugin_base = join(&base, &format!("plugins/{}/", cfg.plugin_name))?;
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
        let url = match join(&self.plugin_base, &call.path) {
            Ok(u) => u,
            Err(e) => {
                return Delivery::Refused {
                    status: 0,
                    answer: e.to_string(),
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
            Err(e) => return Delivery::Retry(MasterError::transport(&e)),
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
    pub async fn health(&self) -> Result<(), MasterError> {
        let status = self.get_status(join(&self.plugin_base, "health")?).await?;
        if matches!(status, 200 | 204) {
            return Ok(());
        }
        if status == 404 {
            let url = join(&self.base, "config/server/version")?;
            let status = self.get_status(url).await?;
            if matches!(status, 200 | 204) {
                return Ok(());
            }
            return Err(MasterError::Status {
                status,
                answer: "(config/server/version)".into(),
            });
        }
        Err(MasterError::Status {
            status,
            answer: "(the plugin's health servlet)".into(),
        })
    }

    async fn get_status(&self, url: url::Url) -> Result<u16, MasterError> {
        self.auth(self.http.get(url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| MasterError::transport(&e))
    }

    /// `GET plugins/<name>/query/changes.updated.since/<age>` on this master: its changes
    /// (`<project>~<number>`) updated within `age`.
    pub async fn changes_updated_since(&self, age: &str) -> Result<Vec<String>, MasterError> {
        let url = join(
            &self.plugin_base,
            &format!("query/changes.updated.since/{age}"),
        )?;
        let resp = self
            .auth(self.http.get(url))
            .send()
            .await
            .map_err(|e| MasterError::transport(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| MasterError::transport(&e))?;
        if status != 200 {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]);
            return Err(MasterError::Status {
                status,
                answer: text.trim().to_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(MasterError::NotIds)
    }
}

fn join(base: &url::Url, path: &str) -> Result<url::Url, MasterError> {
    base.join(path).map_err(|source| MasterError::BadUrl {
        base: base.to_string(),
        path: path.to_owned(),
        source,
    })
}

/// 409 (in flight), 5xx and the statuses an operator can fix (401, 403, 404, 408, 429) are
/// retried; any other 4xx is a permanent refusal (400 cache not found, 405, 415).
pub fn classify(status: u16, answer: String) -> Delivery {
    match status {
        400..=499 if !matches!(status, 401 | 403 | 404 | 408 | 409 | 429) => {
            Delivery::Refused { status, answer }
        }
        _ => Delivery::Retry(MasterError::Status { status, answer }),
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
