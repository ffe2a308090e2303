//! Configuration: Gerrit's `high-availability.config` (git-config format) read once into a raw
//! form, overridden by `HA_<SECTION>_<KEY>` variables, then validated into a typed [`Config`].
//! Library code never reads the environment or the working directory: callers pass both in.

mod duration;
pub mod keys;
mod raw;
pub mod render;
mod urls;
mod validate;

pub use duration::{parse_duration, parse_size};
pub use raw::{RawConfig, RawKey};

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
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
        subtle::ConstantTimeEq::ct_eq(a.as_slice(), b.as_slice()).into()
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

    /// Served over TLS (`https://`).
    pub fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }
}

/// How this node finds its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Static {
        urls: Vec<url::Url>,
    },
    SharedFs {
        heartbeat: Duration,
        ttl: Duration,
    },
    Dns {
        name: String,
        port: u16,
        /// How often the name is resolved again.
        interval: Duration,
        /// Resolve from this hosts-format file instead of the system resolver (tests, fixed lists).
        hosts_file: Option<PathBuf>,
    },
}

impl Discovery {
    /// The strategy's name as configured.
    pub fn name(&self) -> &'static str {
        match self {
            Discovery::Static { .. } => "static",
            Discovery::SharedFs { .. } => "shared-fs",
            Discovery::Dns { .. } => "dns",
        }
    }
}

/// An address block (`10.0.0.0/8`, `::1/128`; a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr: ip, prefix })
    }

    /// True if `ip` is inside the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(a: &[u8], b: &[u8], prefix: u8) -> bool {
            let (full, rest) = ((prefix / 8) as usize, prefix % 8);
            a[..full] == b[..full]
                && (rest == 0 || (a[full] ^ b[full]) & (0xffu8 << (8 - rest)) == 0)
        }
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => bits(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => bits(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
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

/// TLS files (PEM). Certificates and keys are reloaded when they change (see `tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// This node's certificate chain (`sidecar.certificateFile`): served on https listeners and
    /// presented as client certificate to peers.
    pub certificate: Option<PathBuf>,
    /// Its private key (`sidecar.privateKeyFile`).
    pub private_key: Option<PathBuf>,
    /// Mutual TLS (`sidecar.clientCaFile`): the CAs of peers' client certificates, required
    /// on `/v1/peer/*`.
    pub client_ca: Option<PathBuf>,
    /// Roots that peers' certificates are verified against (`http.caFile`); the system's if
    /// unset.
    pub ca: Option<PathBuf>,
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
    /// Sees every project's events (stream and events-log).
    pub stream_token: Option<Secret>,
    /// `[event "consumer NAME"]`: tokens that see only some projects' events.
    pub consumers: Vec<StreamConsumer>,
    /// Most events one events-log replay request returns.
    pub return_limit: usize,
    /// How often an idle stream gets a comment line (keeps load balancers from closing it).
    pub heartbeat: Duration,
    /// Event log segment size; retention drops whole segments.
    pub segment_bytes: u64,
    /// Older segments are dropped while the log is bigger than this.
    pub max_bytes: u64,
    /// Largest single event accepted (413 above).
    pub max_event_bytes: usize,
}

/// A stream consumer (`[event "consumer NAME"]`): a CI system that sees only its projects.
#[derive(Debug, Clone)]
pub struct StreamConsumer {
    pub name: String,
    pub token: Secret,
    /// `None`: every project.
    pub projects: Option<std::sync::Arc<crate::events::ProjectFilter>>,
}

#[derive(Debug, Clone)]
pub struct WebSessionConfig {
    pub synchronize: bool,
    pub cleanup_interval: Duration,
    pub max_age: Duration,
    /// `websession.sync = batched`: the bound on deferred fsyncs (`syncInterval`); `None`:
    /// `always` (every write fsync'd before its answer).
    pub batched_sync: Option<Duration>,
}

/// `[gerrit]`: this node's own Gerrit master, into which the plugin calls that peers received
/// from their masters are replayed (SPEC §8).
#[derive(Debug, Clone)]
pub struct GerritConfig {
    /// The master's base URL (`http://127.0.0.1:8080/`); `None`: no master to deliver to.
    pub url: Option<url::Url>,
    /// The plugin's installed name: ingress under `/plugins/<pluginName>/`, egress likewise.
    pub plugin_name: String,
    /// Basic credentials for the master (default: `http.user` / `http.password`).
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Extra roots (PEM) the master's certificate is verified against (always verified).
    pub ca_file: Option<PathBuf>,
    /// How often the master's health is probed (for `/health`).
    pub health_interval: Duration,
    /// Longest wait for one call to the master.
    pub timeout: Duration,
    /// Consecutive identical `500`s from a healthy master after which a call is set aside;
    /// 0: never.
    pub set_aside_after: u64,
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
    /// Longest wait for one call on the shared directory before `503` (`main.sharedDirectoryTimeout`).
    pub shared_dir_timeout: Duration,
    /// Most calls on the shared directory in flight (`main.sharedDirectoryConcurrency`).
    pub shared_dir_concurrency: usize,
    /// Most connections per listener (`sidecar.maxConnections`; 0: from the open-files limit).
    pub max_connections: usize,
    /// Connections kept for the reserved paths (`sidecar.reservedConnections`).
    pub reserved_connections: usize,
    /// Open files kept from connections (`sidecar.fileDescriptorReserve`).
    pub fd_reserve: usize,
}

/// `main.mode`: whether every healthy node takes traffic or exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ActiveActive,
    HotStandby,
}

/// `election.strategy`: how a hot-standby cluster picks its active node (see `election`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionStrategy {
    KeepMajority,
    KeepOldest,
    Manual,
}

impl ElectionStrategy {
    pub fn name(self) -> &'static str {
        match self {
            ElectionStrategy::KeepMajority => "keep-majority",
            ElectionStrategy::KeepOldest => "keep-oldest",
            ElectionStrategy::Manual => "manual",
        }
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::ActiveActive => "active-active",
            Mode::HotStandby => "hot-standby",
        }
    }
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
    /// The URL peers reach this node at (`sidecar.advertiseUrl`, else `listenUrl`); written
    /// into its heartbeat and sent when it leaves.
    pub advertise_url: url::Url,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Longest time `/health` says "catching up" after a start while peers deliver the backlog.
    pub catch_up_timeout: Duration,
    /// Actix workers per listener.
    pub workers: usize,
    pub shutdown_grace: Duration,
    pub peers: PeersConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub tls: TlsConfig,
    pub cache: CacheConfig,
    pub index: IndexConfig,
    pub event: EventConfig,
    pub websession: WebSessionConfig,
    pub healthcheck_enable: bool,
    pub gerrit: GerritConfig,
    pub alert_webhook: Option<url::Url>,
    /// `main.mode`.
    pub mode: Mode,
    /// `election.strategy` (used with `Mode::HotStandby`).
    pub election: ElectionStrategy,
    pub limits: Limits,
    /// True when no file was given and the embedded defaults are in force.
    pub embedded_defaults: bool,
}

impl Config {
    /// False when the advertised URL is a wildcard address (0.0.0.0, ::) nobody can reach.
    pub fn advertise_url_is_usable(&self) -> bool {
        match self.advertise_url.host() {
            Some(url::Host::Ipv4(ip)) => !ip.is_unspecified(),
            Some(url::Host::Ipv6(ip)) => !ip.is_unspecified(),
            Some(url::Host::Domain(_)) => true,
            None => false,
        }
    }
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

/// Reads the file and applies the environment, without giving values a meaning. Unknown `HA_*`
/// variables become warnings.
pub fn read_raw(source: &Source<'_>, report: &mut Report) -> Option<RawConfig> {
    let mut raw = match source.file {
        Some((text, path)) => match RawConfig::parse(text) {
            Ok(raw) => raw,
            Err(e) => {
                report.errors.push(Problem {
                    key: path.display().to_string(),
                    message: format!("not a valid git-config file: {e}"),
                });
                return None;
            }
        },
        None => RawConfig::default(),
    };
    for var in raw.apply_env(source.env) {
        let message = match keys::suggest_env_var(&var) {
            Some(known) => format!("unknown variable; ignored (did you mean {known}?)"),
            None => {
                "unknown variable; ignored (no such key: see the README's configuration reference)"
                    .to_owned()
            }
        };
        report.warnings.push(Problem { key: var, message });
    }
    Some(raw)
}

/// Reads and validates a config. On failure the report lists every error.
pub fn load(source: Source<'_>) -> Result<(Config, Report), Report> {
    let mut report = Report::default();
    let Some(raw) = read_raw(&source, &mut report) else {
        return Err(report);
    };
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

fn read_file(p: &Path) -> Result<String, Report> {
    std::fs::read_to_string(p).map_err(|e| Report {
        errors: vec![Problem {
            key: p.display().to_string(),
            message: format!("cannot read config file: {e}"),
        }],
        warnings: vec![],
    })
}

/// Loads the config from a file path, or embedded defaults when `path` is `None`.
pub fn load_path(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<(Config, Report), Report> {
    match path {
        None => load(Source { file: None, env }),
        Some(p) => {
            let text = read_file(p)?;
            load(Source {
                file: Some((&text, p)),
                env,
            })
        }
    }
}

/// The effective configuration of a file with the environment applied, as `check-config
/// --print` shows it (see [`render::effective`]).
pub fn describe_path(path: &Path, env: &BTreeMap<String, String>) -> Result<String, Report> {
    let text = read_file(path)?;
    let mut report = Report::default();
    let source = Source {
        file: Some((&text, path)),
        env,
    };
    read_raw(&source, &mut report)
        .map(|raw| render::effective(&raw))
        .ok_or(report)
}

#[cfg(test)]
mod tests {
    use super::Cidr;

    #[test]
    fn cidr_contains() {
        let c = |t| Cidr::parse(t).unwrap();
        assert!(c("10.0.0.0/8").contains("10.2.3.4".parse().unwrap()));
        assert!(!c("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(c("192.168.1.128/25").contains("192.168.1.200".parse().unwrap()));
        assert!(!c("192.168.1.128/25").contains("192.168.1.100".parse().unwrap()));
        assert!(c("127.0.0.1").contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(c("::1").contains("::1".parse().unwrap()));
        assert!(c("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(!c("::/0").contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope/8").is_none());
    }
}
