//! Turns a [`RawConfig`] into a typed [`Config`], collecting every problem with its key.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::RawConfig;
use super::*;

/// Every key ha-sidecar reads: (section, subsection, key, repeatable). Env overrides and the
/// unknown-key warning are derived from it. `[cache "NAME"]` subsections are open-ended.
pub const KNOWN_KEYS: &[(&str, Option<&str>, &str, bool)] = &[
    ("main", None, "instanceId", false),
    ("main", None, "sharedDirectory", false),
    ("main", None, "dataDirectory", false),
    ("main", None, "sharedDirectoryTimeout", false),
    ("main", None, "sharedDirectoryConcurrency", false),
    ("sidecar", None, "listenUrl", false),
    ("sidecar", None, "localListenUrl", false),
    ("sidecar", None, "localToken", false),
    ("sidecar", None, "adminToken", false),
    ("sidecar", None, "advertiseUrl", false),
    ("sidecar", None, "trustedProxies", true),
    ("sidecar", None, "catchUpTimeout", false),
    ("sidecar", None, "workers", false),
    ("sidecar", None, "shutdownGrace", false),
    ("sidecar", None, "maxLocalBody", false),
    ("sidecar", None, "maxPeerBody", false),
    ("sidecar", None, "outboxSegmentSize", false),
    ("sidecar", None, "certificateFile", false),
    ("sidecar", None, "privateKeyFile", false),
    ("sidecar", None, "clientCaFile", false),
    ("peerInfo", None, "strategy", false),
    ("peerInfo", None, "retainAbsent", false),
    ("peerInfo", Some("static"), "url", true),
    ("peerInfo", Some("shared-fs"), "heartbeat", false),
    ("peerInfo", Some("shared-fs"), "ttl", false),
    ("peerInfo", Some("dns"), "name", false),
    ("peerInfo", Some("dns"), "port", false),
    ("peerInfo", Some("dns"), "interval", false),
    ("peerInfo", Some("dns"), "hostsFile", false),
    ("auth", None, "secretFile", true),
    ("auth", None, "maxClockSkew", false),
    ("http", None, "user", false),
    ("http", None, "password", false),
    ("http", None, "connectionTimeout", false),
    ("http", None, "socketTimeout", false),
    ("http", None, "retryInterval", false),
    ("http", None, "maxRetryInterval", false),
    ("http", None, "maxBatchMessages", false),
    ("http", None, "maxBatchBytes", false),
    ("http", None, "caFile", false),
    ("cache", None, "synchronize", false),
    ("cache", None, "pattern", true),
    ("cache", None, "maxEntries", false),
    ("cache", None, "expireAfterWrite", false),
    ("index", None, "synchronize", false),
    ("index", None, "refreshInterval", false),
    ("index", None, "antiEntropyInterval", false),
    ("index", None, "tombstoneTtl", false),
    ("index", None, "maxDocumentSize", false),
    ("event", None, "synchronize", false),
    ("event", None, "retention", false),
    ("event", None, "streamToken", false),
    ("event", None, "heartbeatInterval", false),
    ("event", None, "segmentSize", false),
    ("event", None, "maxSize", false),
    ("event", None, "maxEventSize", false),
    ("websession", None, "synchronize", false),
    ("websession", None, "cleanupInterval", false),
    ("websession", None, "maxAge", false),
    ("healthcheck", None, "enable", false),
    ("alert", None, "webhookUrl", false),
];

/// Keys of Gerrit's plugin that mean nothing here: accepted with a warning so an existing
/// `high-availability.config` can be reused as it is.
const PLUGIN_ONLY_KEYS: &[(&str, &str)] = &[
    ("main", "transport"),
    ("http", "maxTries"),
    ("http", "threadPoolSize"),
    ("http", "reuseConnectionAfter503"),
    ("index", "threadPoolSize"),
    ("index", "maxTries"),
    ("index", "retryInterval"),
    ("index", "initialDelay"),
    ("cache", "threadPoolSize"),
    ("event", "allowedListeners"),
    ("jgroups", "*"),
    ("autoReindex", "*"),
    ("indexSync", "*"),
    ("ref-database", "*"),
];

struct V<'a> {
    raw: &'a RawConfig,
    report: &'a mut Report,
}

impl V<'_> {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.report.errors.push(Problem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn warn(&mut self, key: &str, message: impl Into<String>) {
        self.report.warnings.push(Problem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn string(&self, s: &str, sub: Option<&str>, k: &str) -> Option<String> {
        self.raw
            .last(s, sub, k)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    fn duration(&mut self, s: &str, sub: Option<&str>, k: &str, default: Duration) -> Duration {
        match self.raw.last(s, sub, k) {
            None => default,
            Some(v) => parse_duration(v).unwrap_or_else(|e| {
                self.err(&key_name(s, sub, k), e);
                default
            }),
        }
    }

    fn boolean(&mut self, s: &str, k: &str, default: bool) -> bool {
        match self
            .raw
            .last(s, None, k)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => default,
            Some(v) => match v.as_str() {
                "true" | "yes" | "on" | "1" | "" => true,
                "false" | "no" | "off" | "0" => false,
                _ => {
                    self.err(
                        &key_name(s, None, k),
                        format!("`{v}` is not a boolean (true/false)"),
                    );
                    default
                }
            },
        }
    }

    fn number(&mut self, s: &str, sub: Option<&str>, k: &str, default: u64, min: u64) -> u64 {
        match self.raw.last(s, sub, k) {
            None => default,
            Some(v) => match parse_size(v) {
                Ok(n) if n >= min => n,
                Ok(n) => {
                    self.err(
                        &key_name(s, sub, k),
                        format!("{n} is below the minimum {min}"),
                    );
                    default
                }
                Err(e) => {
                    self.err(&key_name(s, sub, k), e);
                    default
                }
            },
        }
    }

    fn token(&mut self, s: &str, k: &str) -> Option<Secret> {
        let t = self.string(s, None, k)?;
        if t.len() < 16 {
            self.err(
                &key_name(s, None, k),
                "token is too short: use at least 16 characters",
            );
        }
        Some(Secret(t.into_bytes()))
    }
}

fn key_name(s: &str, sub: Option<&str>, k: &str) -> String {
    match sub {
        Some(sub) => format!("{s}.{sub}.{k}"),
        None => format!("{s}.{k}"),
    }
}

fn listen_url(v: &mut V<'_>, k: &str, default: &str) -> ListenUrl {
    let key = key_name("sidecar", None, k);
    let text = v
        .string("sidecar", None, k)
        .unwrap_or_else(|| default.to_owned());
    let fallback = || ListenUrl {
        url: url::Url::parse(default).expect("default listen url parses"),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
    };
    let url = match url::Url::parse(&text) {
        Ok(u) => u,
        Err(e) => {
            v.err(&key, format!("`{text}` is not a URL: {e}"));
            return fallback();
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        v.err(&key, format!("`{text}`: listeners are http:// or https://"));
        return fallback();
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain("localhost")) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => {
            v.err(
                &key,
                format!("`{text}`: the host must be an IP address (or localhost) to bind to"),
            );
            return fallback();
        }
    };
    let port = url.port_or_known_default().unwrap_or(80);
    ListenUrl {
        url,
        addr: SocketAddr::new(ip, port),
    }
}

fn is_loopback_url(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn peer_urls(v: &mut V<'_>, own: &ListenUrl) -> Vec<url::Url> {
    let key = "peerInfo.static.url";
    let mut urls: Vec<url::Url> = Vec::new();
    for text in v.raw.all("peerinfo", Some("static"), "url").to_vec() {
        let text = text.trim();
        let mut u = match url::Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            Ok(_) => {
                v.err(
                    key,
                    format!("`{text}` must be an http:// or https:// URL with a host"),
                );
                continue;
            }
            Err(e) => {
                v.err(key, format!("`{text}` is not a URL: {e}"));
                continue;
            }
        };
        if !u.path().ends_with('/') {
            let p = format!("{}/", u.path());
            u.set_path(&p);
        }
        if u.host() == own.url.host()
            && u.port_or_known_default() == own.url.port_or_known_default()
        {
            v.warn(
                key,
                format!("`{text}` is this node's own listenUrl; ignored"),
            );
            continue;
        }
        if urls.contains(&u) {
            v.warn(key, format!("`{text}` is listed twice; used once"));
            continue;
        }
        urls.push(u);
    }
    let remote = urls.iter().find(|u| !is_loopback_url(u)).cloned();
    if let Some(remote) = remote {
        for u in urls.iter().filter(|u| is_loopback_url(u)) {
            v.err(
                key,
                format!(
                    "`{u}` is a loopback address but peer `{remote}` is on another host: \
                     a loopback URL would reach this host, not the peer; use its routable address"
                ),
            );
        }
    }
    urls
}

fn read_secret(v: &mut V<'_>, base: &Path, text: &str) -> Option<Secret> {
    let key = "auth.secretFile";
    let path = PathBuf::from(text.trim());
    let path = if path.is_absolute() {
        path
    } else {
        base.join(path)
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let trimmed = bytes.trim_ascii().to_vec();
            if trimmed.len() < 16 {
                v.err(
                    key,
                    format!("{}: the secret is too short: use at least 16 bytes (32 random bytes recommended)", path.display()),
                );
                return None;
            }
            #[cfg(unix)]
            if let Ok(meta) = std::fs::metadata(&path) {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o077 != 0 {
                    v.warn(
                        key,
                        format!(
                            "{} is readable by group or others; chmod 600 it",
                            path.display()
                        ),
                    );
                }
            }
            Some(Secret(trimmed))
        }
        Err(e) => {
            v.err(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

fn warn_unknown(v: &mut V<'_>) {
    let keys: Vec<RawKey> = v.raw.values.keys().cloned().collect();
    for k in keys {
        let known = KNOWN_KEYS.iter().any(|(s, sub, key, _)| {
            s.eq_ignore_ascii_case(&k.section)
                && sub.map(str::to_owned) == k.subsection
                && key.eq_ignore_ascii_case(&k.key)
        }) || (k.section == "cache"
            && k.subsection.is_some()
            && matches!(k.key.as_str(), "maxentries" | "expireafterwrite"));
        if known {
            continue;
        }
        let plugin = PLUGIN_ONLY_KEYS.iter().any(|(s, key)| {
            s.eq_ignore_ascii_case(&k.section) && (*key == "*" || key.eq_ignore_ascii_case(&k.key))
        });
        let msg = if plugin {
            "a setting of Gerrit's plugin that ha-sidecar does not need; ignored"
        } else {
            "unknown key; ignored"
        };
        v.warn(&k.to_string(), msg);
    }
}

pub(super) fn validate(
    raw: &RawConfig,
    base_dir: &Path,
    embedded: bool,
    report: &mut Report,
) -> Option<Config> {
    let mut v = V { raw, report };
    warn_unknown(&mut v);

    let listen = listen_url(&mut v, "listenUrl", "http://127.0.0.1:7710/");
    let local_listen = listen_url(&mut v, "localListenUrl", "http://127.0.0.1:7711/");
    let tls = tls_config(&mut v, base_dir, &listen, &local_listen);
    let local_token = v.token("sidecar", "localToken");
    let admin_token = v.token("sidecar", "adminToken");
    if !local_listen.is_loopback() && local_token.is_none() {
        v.err(
            "sidecar.localListenUrl",
            "the master's local API is not on loopback: set sidecar.localToken so strangers cannot use it",
        );
    }

    let strategy = v
        .string("peerinfo", None, "strategy")
        .unwrap_or_else(|| "static".into());
    let heartbeat = v.duration(
        "peerinfo",
        Some("shared-fs"),
        "heartbeat",
        Duration::from_secs(5),
    );
    let ttl = v.duration(
        "peerinfo",
        Some("shared-fs"),
        "ttl",
        Duration::from_secs(30),
    );
    if ttl <= heartbeat {
        v.err(
            "peerInfo.shared-fs.ttl",
            "must be longer than peerInfo.shared-fs.heartbeat",
        );
    }
    let discovery = match strategy.to_ascii_lowercase().as_str() {
        "static" => Discovery::Static {
            urls: peer_urls(&mut v, &listen),
        },
        "shared-fs" => Discovery::SharedFs { heartbeat, ttl },
        "dns" => {
            let name = v
                .string("peerinfo", Some("dns"), "name")
                .unwrap_or_else(|| {
                    v.err("peerInfo.dns.name", "required with peerInfo.strategy = dns");
                    String::new()
                });
            let port = v.number(
                "peerinfo",
                Some("dns"),
                "port",
                listen.addr.port() as u64,
                1,
            );
            let port = u16::try_from(port).unwrap_or_else(|_| {
                v.err("peerInfo.dns.port", format!("{port} is not a port number"));
                0
            });
            let interval = v.duration("peerinfo", Some("dns"), "interval", Duration::from_secs(10));
            if interval.is_zero() {
                v.err("peerInfo.dns.interval", "must be above zero");
            }
            let hosts_file = v.string("peerinfo", Some("dns"), "hostsFile").map(|p| {
                let p = PathBuf::from(p);
                if p.is_absolute() {
                    p
                } else {
                    base_dir.join(p)
                }
            });
            Discovery::Dns {
                name,
                port,
                interval,
                hosts_file,
            }
        }
        other => {
            v.err(
                "peerInfo.strategy",
                format!("`{other}` is not a strategy: use static, shared-fs or dns"),
            );
            Discovery::Static { urls: vec![] }
        }
    };
    let has_peers = !matches!(&discovery, Discovery::Static { urls } if urls.is_empty());
    let advertise_url = advertise_url(&mut v, &listen, &discovery);
    let retain_absent = v.duration(
        "peerinfo",
        None,
        "retainAbsent",
        Duration::from_secs(86_400),
    );

    let instance_id = match v.string("main", None, "instanceId") {
        Some(id) => {
            if !crate::wire::valid_instance_id(&id) {
                v.err(
                    "main.instanceId",
                    format!("`{id}` may only hold letters, digits, `.`, `_` and `-` (at most 64)"),
                );
            }
            id
        }
        None => {
            if has_peers {
                v.err(
                    "main.instanceId",
                    "required when the node has peers (unique per node)",
                );
            }
            "standalone".to_owned()
        }
    };
    let shared_dir = PathBuf::from(
        v.string("main", None, "sharedDirectory")
            .unwrap_or_else(|| "./var/shared".into()),
    );
    let data_dir = PathBuf::from(
        v.string("main", None, "dataDirectory")
            .unwrap_or_else(|| "./var/data".into()),
    );
    if shared_dir == data_dir {
        v.err(
            "main.dataDirectory",
            "must differ from main.sharedDirectory: the data directory is node-local, never shared",
        );
    }

    let mut secrets = Vec::new();
    for text in raw.all("auth", None, "secretfile") {
        if let Some(s) = read_secret(&mut v, base_dir, text) {
            secrets.push(s);
        }
    }
    if has_peers && raw.all("auth", None, "secretfile").is_empty() {
        v.err(
            "auth.secretFile",
            "required when the node has peers: peers authenticate every request with the cluster secret",
        );
    }
    let max_clock_skew = v.duration("auth", None, "maxClockSkew", Duration::from_secs(120));

    let http = HttpConfig {
        user: v.string("http", None, "user"),
        password: v
            .string("http", None, "password")
            .map(|p| Secret(p.into_bytes())),
        connection_timeout: v.duration("http", None, "connectionTimeout", Duration::from_secs(5)),
        socket_timeout: v.duration("http", None, "socketTimeout", Duration::from_secs(5)),
        retry_interval: v.duration("http", None, "retryInterval", Duration::from_secs(1)),
        max_retry_interval: v.duration("http", None, "maxRetryInterval", Duration::from_secs(30)),
        max_batch_messages: v.number("http", None, "maxBatchMessages", 2_000, 1) as usize,
        max_batch_bytes: v.number("http", None, "maxBatchBytes", 1 << 20, 1024) as usize,
    };
    if http.retry_interval.is_zero() {
        v.err("http.retryInterval", "must be above zero");
    }

    let mut patterns = Vec::new();
    for p in raw.all("cache", None, "pattern") {
        match regex::Regex::new(p) {
            Ok(_) => patterns.push(p.clone()),
            Err(e) => v.err(
                "cache.pattern",
                format!("`{p}` is not a regular expression: {e}"),
            ),
        }
    }
    let defaults = CacheLimits {
        max_entries: v.number("cache", None, "maxEntries", 100_000, 1),
        expire_after_write: raw
            .last("cache", None, "expireafterwrite")
            .map(|_| v.duration("cache", None, "expireAfterWrite", Duration::ZERO)),
    };
    let mut caches = BTreeMap::new();
    let names: Vec<String> = raw
        .values
        .keys()
        .filter(|k| k.section == "cache")
        .filter_map(|k| k.subsection.clone())
        .collect();
    for name in names {
        if !crate::wire::valid_cache_name(&name) {
            v.err(
                &format!("cache.{name}"),
                "cache names hold letters, digits, `.`, `_`, `-` (at most 128)",
            );
            continue;
        }
        let limits = CacheLimits {
            max_entries: v.number("cache", Some(&name), "maxEntries", defaults.max_entries, 1),
            expire_after_write: match raw.last("cache", Some(&name), "expireafterwrite") {
                Some(_) => {
                    Some(v.duration("cache", Some(&name), "expireAfterWrite", Duration::ZERO))
                }
                None => defaults.expire_after_write,
            },
        };
        caches.insert(name, limits);
    }
    let cache = CacheConfig {
        synchronize: v.boolean("cache", "synchronize", true),
        patterns,
        defaults,
        caches,
    };

    let index = index_config(&mut v);
    let event = EventConfig {
        synchronize: v.boolean("event", "synchronize", true),
        retention: v.duration("event", None, "retention", Duration::from_secs(7 * 86_400)),
        stream_token: v.token("event", "streamToken"),
        heartbeat: v.duration("event", None, "heartbeatInterval", Duration::from_secs(15)),
        segment_bytes: v.number("event", None, "segmentSize", 64 << 20, 4096),
        max_bytes: v.number("event", None, "maxSize", 10 << 30, 1 << 20),
        max_event_bytes: v.number("event", None, "maxEventSize", 1 << 20, 1024) as usize,
    };
    if event.heartbeat.is_zero() {
        v.err("event.heartbeatInterval", "must be above zero");
    }
    if event.max_event_bytes > 64 << 20 {
        v.err("event.maxEventSize", "must not exceed 64m");
    }
    if !listen.is_loopback() && event.stream_token.is_none() {
        v.err(
            "event.streamToken",
            "required when sidecar.listenUrl is not on loopback: stream events are not public",
        );
    }
    let websession = WebSessionConfig {
        synchronize: v.boolean("websession", "synchronize", true),
        cleanup_interval: v.duration(
            "websession",
            None,
            "cleanupInterval",
            Duration::from_secs(86_400),
        ),
        max_age: v.duration(
            "websession",
            None,
            "maxAge",
            Duration::from_secs(12 * 3_600),
        ),
    };
    let alert_webhook =
        v.string("alert", None, "webhookUrl")
            .and_then(|t| match url::Url::parse(&t) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                _ => {
                    v.err("alert.webhookUrl", format!("`{t}` is not an http(s) URL"));
                    None
                }
            });
    let mut trusted_proxies = Vec::new();
    for cidr in raw.all("sidecar", None, "trustedproxies") {
        match Cidr::parse(cidr.trim()) {
            Some(c) => trusted_proxies.push(c),
            None => v.err(
                "sidecar.trustedProxies",
                format!("`{cidr}` is not a CIDR (e.g. 10.0.0.0/8)"),
            ),
        }
    }
    let limits = Limits {
        max_local_body: v.number("sidecar", None, "maxLocalBody", 4 << 20, 1024) as usize,
        max_peer_body: v.number("sidecar", None, "maxPeerBody", 32 << 20, 64 << 10) as usize,
        outbox_segment_bytes: v.number("sidecar", None, "outboxSegmentSize", 64 << 20, 4096),
        max_key_bytes: 1024,
        max_keys_per_request: 10_000,
        shared_dir_timeout: v.duration(
            "main",
            None,
            "sharedDirectoryTimeout",
            Duration::from_secs(5),
        ),
        shared_dir_concurrency: v.number("main", None, "sharedDirectoryConcurrency", 16, 1)
            as usize,
    };
    if limits.shared_dir_timeout.is_zero() {
        v.err("main.sharedDirectoryTimeout", "must be above zero");
    }
    if limits.max_peer_body < http.max_batch_bytes {
        v.err(
            "http.maxBatchBytes",
            "must not exceed sidecar.maxPeerBody, or peers would refuse this node's batches",
        );
    }

    let config = Config {
        instance_id,
        shared_dir,
        data_dir,
        listen,
        local_listen,
        local_token,
        admin_token,
        advertise_url,
        trusted_proxies,
        catch_up_timeout: v.duration("sidecar", None, "catchUpTimeout", Duration::from_secs(30)),
        workers: v.number("sidecar", None, "workers", 2, 1) as usize,
        shutdown_grace: v.duration("sidecar", None, "shutdownGrace", Duration::from_secs(10)),
        peers: PeersConfig {
            discovery,
            retain_absent,
            heartbeat,
            ttl,
        },
        auth: AuthConfig {
            secrets,
            max_clock_skew,
        },
        http,
        tls,
        cache,
        index,
        event,
        websession,
        healthcheck_enable: v.boolean("healthcheck", "enable", true),
        alert_webhook,
        limits,
        embedded_defaults: embedded,
    };
    Some(config)
}

/// `[sidecar] certificateFile, privateKeyFile, clientCaFile` and `[http] caFile`: the files must
/// exist; their contents are parsed when the node starts (`tls`).
fn tls_config(
    v: &mut V<'_>,
    base_dir: &Path,
    listen: &ListenUrl,
    local_listen: &ListenUrl,
) -> TlsConfig {
    let mut file = |s: &str, k: &str| {
        let p = v.string(s, None, k).map(PathBuf::from)?;
        let p = if p.is_absolute() { p } else { base_dir.join(p) };
        if let Err(e) = std::fs::metadata(&p) {
            v.err(&key_name(s, None, k), format!("{}: {e}", p.display()));
        }
        Some(p)
    };
    let certificate = file("sidecar", "certificateFile");
    let private_key = file("sidecar", "privateKeyFile");
    let client_ca = file("sidecar", "clientCaFile");
    let ca = file("http", "caFile");
    let https = listen.is_https() || local_listen.is_https();
    for (key, given) in [
        ("sidecar.certificateFile", certificate.is_some()),
        ("sidecar.privateKeyFile", private_key.is_some()),
    ] {
        if https && !given {
            v.err(
                key,
                "required when sidecar.listenUrl or sidecar.localListenUrl is https://",
            );
        }
    }
    if certificate.is_some() != private_key.is_some() {
        v.err(
            "sidecar.privateKeyFile",
            "sidecar.certificateFile and sidecar.privateKeyFile go together",
        );
    }
    if client_ca.is_some() && !listen.is_https() {
        v.err(
            "sidecar.clientCaFile",
            "mutual TLS needs sidecar.listenUrl to be https://",
        );
    }
    TlsConfig {
        certificate,
        private_key,
        client_ca,
        ca,
    }
}

/// The URL written into this node's heartbeat: `sidecar.advertiseUrl`, else `listenUrl` unless
/// that binds every interface (0.0.0.0 tells a peer nothing).
fn advertise_url(v: &mut V<'_>, listen: &ListenUrl, discovery: &Discovery) -> url::Url {
    let key = "sidecar.advertiseUrl";
    if let Some(text) = v.string("sidecar", None, "advertiseUrl") {
        return match url::Url::parse(&text) {
            Ok(mut u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if !u.path().ends_with('/') {
                    let p = format!("{}/", u.path());
                    u.set_path(&p);
                }
                u
            }
            Ok(_) => {
                v.err(
                    key,
                    format!("`{text}` must be an http:// or https:// URL with a host"),
                );
                listen.url.clone()
            }
            Err(e) => {
                v.err(key, format!("`{text}` is not a URL: {e}"));
                listen.url.clone()
            }
        };
    }
    if listen.addr.ip().is_unspecified() && matches!(discovery, Discovery::SharedFs { .. }) {
        v.err(
            key,
            "required with peerInfo.strategy = shared-fs when sidecar.listenUrl binds every \
             interface: peers need an address they can reach this node at",
        );
    }
    listen.url.clone()
}

fn index_config(v: &mut V<'_>) -> IndexConfig {
    let refresh_interval = v.duration("index", None, "refreshInterval", Duration::from_millis(200));
    if refresh_interval.is_zero() || refresh_interval > Duration::from_millis(500) {
        v.err(
            "index.refreshInterval",
            "must be above 0 and at most 500ms (writes must be searchable within half a second)",
        );
    }
    let anti_entropy_interval = v.duration(
        "index",
        None,
        "antiEntropyInterval",
        Duration::from_secs(60),
    );
    if anti_entropy_interval < Duration::from_millis(100) {
        v.err("index.antiEntropyInterval", "must be at least 100ms");
    }
    let tombstone_ttl = v.duration(
        "index",
        None,
        "tombstoneTtl",
        Duration::from_secs(7 * 86_400),
    );
    if tombstone_ttl < Duration::from_secs(1) {
        v.err(
            "index.tombstoneTtl",
            "must be at least 1s (and should outlive any partition)",
        );
    }
    IndexConfig {
        synchronize: v.boolean("index", "synchronize", true),
        refresh_interval,
        anti_entropy_interval,
        tombstone_ttl,
        max_doc_bytes: v.number("index", None, "maxDocumentSize", 1 << 20, 1024) as usize,
    }
}
