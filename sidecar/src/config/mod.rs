//! Configuration: Gerrit's `high-availability.config` (git-config format) read once into a raw
//! form, overridden by `HA_<SECTION>_<KEY>` variables, then validated into a typed [`Config`].
//! Library code never reads the environment or the working directory: callers pass both in.

mod duration;
mod raw;
mod validate;

pub use duration::{parse_duration, parse_size};
pub use raw::{RawConfig, RawKey};
pub use validate::KNOWN_KEYS;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A secret (token, password, HMAC key). Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

impl Secret {
    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use sha2::Digest;
        // Comparing fixed-size digests keeps the time independent of where the bytes differ.
        let a = sha2::Sha256::digest(&self.0);
        let b = sha2::Sha256::digest(presented);
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

/// An HTTP listener address as configured (`http://host:port/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenUrl {
    pub url: url::Url,
    pub addr: SocketAddr,
}

impl ListenUrl {
    pub fn is_loopback(&self) -> bool {
        self.addr.ip().is_loopback()
    }
}

/// How this node finds its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Static { urls: Vec<url::Url> },
    SharedFs { heartbeat: Duration, ttl: Duration },
    Dns { name: String, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersConfig {
    pub discovery: Discovery,
    /// How long the backlog of a vanished peer is kept.
    pub retain_absent: Duration,
    /// Heartbeat settings are used by every node, whatever its strategy.
    pub heartbeat: Duration,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The first signs, all verify.
    pub secrets: Vec<Secret>,
    pub max_clock_skew: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub connection_timeout: Duration,
    pub socket_timeout: Duration,
    pub retry_interval: Duration,
    pub max_retry_interval: Duration,
    /// Largest batch body the forwarder sends.
    pub max_batch_bytes: usize,
    /// Most messages in one batch.
    pub max_batch_messages: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLimits {
    pub max_entries: u64,
    pub expire_after_write: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub synchronize: bool,
    /// `cache.pattern` values (Gerrit's built-in list is added by the cache module).
    pub patterns: Vec<String>,
    pub defaults: CacheLimits,
    pub caches: BTreeMap<String, CacheLimits>,
}

/// `[index]`: forwarding, near-real-time refresh, anti-entropy and tombstones.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    pub synchronize: bool,
    /// How soon a write is visible to queries (≤ 500 ms).
    pub refresh_interval: Duration,
    /// How often digests are compared with every peer (also at start and when a peer returns).
    pub anti_entropy_interval: Duration,
    /// How long a delete's tombstone is kept; must outlive any partition.
    pub tombstone_ttl: Duration,
    /// Largest document, in bytes of its JSON.
    pub max_doc_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct EventConfig {
    pub synchronize: bool,
    pub retention: Duration,
    pub stream_token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct WebSessionConfig {
    pub synchronize: bool,
    pub cleanup_interval: Duration,
    pub max_age: Duration,
}

/// Request size limits (SPEC §6 "Bounded").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body on the local API.
    pub max_local_body: usize,
    /// Largest body of a peer batch.
    pub max_peer_body: usize,
    /// Outbox segment file size; delivered segments are deleted whole.
    pub outbox_segment_bytes: u64,
    pub max_key_bytes: usize,
    pub max_keys_per_request: usize,
}

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub instance_id: String,
    pub shared_dir: PathBuf,
    pub data_dir: PathBuf,
    pub listen: ListenUrl,
    pub local_listen: ListenUrl,
    pub local_token: Option<Secret>,
    pub admin_token: Option<Secret>,
    pub trusted_proxies: Vec<String>,
    /// Actix workers per listener.
    pub workers: usize,
    pub shutdown_grace: Duration,
    pub peers: PeersConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub cache: CacheConfig,
    pub index: IndexConfig,
    pub event: EventConfig,
    pub websession: WebSessionConfig,
    pub healthcheck_enable: bool,
    pub alert_webhook: Option<url::Url>,
    pub limits: Limits,
    /// True when no file was given and the embedded defaults are in force.
    pub embedded_defaults: bool,
}

/// One problem in a config, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything wrong with a config, plus warnings (unknown keys) that do not stop it.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [] => write!(f, "no errors"),
            [one] => write!(f, "{one}"),
            [first, rest @ ..] => write!(
                f,
                "{first} (and {} more; run `ha-sidecar check-config`)",
                rest.len()
            ),
        }
    }
}

/// Where the config comes from.
pub struct Source<'a> {
    /// File text and its path (for messages and relative secret paths), or `None` for the
    /// embedded defaults.
    pub file: Option<(&'a str, &'a Path)>,
    /// The process environment (only `HA_*` variables are read).
    pub env: &'a BTreeMap<String, String>,
}

/// Reads and validates a config. On failure the report lists every error.
pub fn load(source: Source<'_>) -> Result<(Config, Report), Report> {
    let mut report = Report::default();
    let mut raw = match source.file {
        Some((text, path)) => match RawConfig::parse(text) {
            Ok(raw) => raw,
            Err(e) => {
                report.errors.push(Problem {
                    key: path.display().to_string(),
                    message: format!("not a valid git-config file: {e}"),
                });
                return Err(report);
            }
        },
        None => RawConfig::default(),
    };
    raw.apply_env(source.env, KNOWN_KEYS);
    let base_dir = source
        .file
        .and_then(|(_, p)| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let config = validate::validate(&raw, &base_dir, source.file.is_none(), &mut report);
    match config {
        Some(c) if report.errors.is_empty() => Ok((c, report)),
        _ => Err(report),
    }
}

/// Loads the config from a file path, or embedded defaults when `path` is `None`.
pub fn load_path(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<(Config, Report), Report> {
    match path {
        None => load(Source { file: None, env }),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => load(Source {
                file: Some((&text, p)),
                env,
            }),
            Err(e) => Err(Report {
                errors: vec![Problem {
                    key: p.display().to_string(),
                    message: format!("cannot read config file: {e}"),
                }],
                warnings: vec![],
            }),
        },
    }
}
