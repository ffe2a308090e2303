//! Turns a [`RawConfig`] into a typed [`Config`], collecting every problem with its key. Kinds,
//! defaults and bounds come from the key table (`keys`); this file holds what the table cannot
//! say: how sections combine into the typed config and the rules that relate two keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::keys::{self, Kind};
use super::raw::RawConfig;
use super::urls::{advertise_url, listen_url, peer_urls, tls_config, webhook_url};
use super::*;

mod event;
mod gerrit;
mod reader;
mod roles;

use reader::read_secret;
pub(super) use reader::V;

/// Keys of the file that are not in the table: a plugin-only key or an unknown one.
fn warn_unknown(v: &mut V<'_>) {
    let raw = v.raw;
    for k in raw.values.keys() {
        if keys::find(&k.section, k.subsection.as_deref(), &k.key).is_some() {
            continue;
        }
        let written = raw
            .spelling
            .get(k)
            .cloned()
            .unwrap_or_else(|| k.to_string());
        match keys::plugin_only(&k.section, &k.key) {
            Some(_) => v.warn(
                &written,
                "a setting of Gerrit's plugin that ha-sidecar does not need; ignored",
            ),
            None => v.warn(&written, "unknown key; ignored"),
        }
    }
}

/// Keys of the file no section read (another strategy's subsection): checked by their kind,
/// and named as unused.
fn check_unread(v: &mut V<'_>, strategy: &str) {
    let raw = v.raw;
    for k in raw.values.keys() {
        if v.read.contains(k) {
            continue;
        }
        let Some(spec) = keys::find(&k.section, k.subsection.as_deref(), &k.key) else {
            continue;
        };
        let sub = k.subsection.as_deref();
        match spec.kind {
            Kind::Duration => drop(v.duration_opt(spec.section, sub, spec.name)),
            Kind::Size => drop(v.size_opt(spec.section, sub, spec.name)),
            _ => {}
        }
        if spec.section == "peerInfo" && sub.is_some_and(|s| s != "shared-fs") {
            let path = v.path(spec.section, sub, spec.name);
            v.warn(
                &path,
                format!("not used with peerInfo.strategy = {strategy}; ignored"),
            );
        }
    }
}

/// Appends "(from HA_X)" to problems of keys an environment variable set, and drops repeats.
fn name_sources(raw: &RawConfig, report: &mut Report) {
    let by_path: BTreeMap<String, &String> = raw
        .from_env
        .iter()
        .map(|(k, var)| (k.to_string(), var))
        .collect();
    for p in report.errors.iter_mut().chain(report.warnings.iter_mut()) {
        if let Some(var) = by_path.get(&p.key.to_ascii_lowercase()) {
            p.message.push_str(&format!(" (from {var})"));
        }
    }
    for list in [&mut report.errors, &mut report.warnings] {
        let mut seen = BTreeSet::new();
        list.retain(|p| seen.insert((p.key.clone(), p.message.clone())));
    }
}

pub(super) fn validate(
    raw: &RawConfig,
    base_dir: &Path,
    embedded: bool,
    report: &mut Report,
) -> Option<Config> {
    let mut v = V {
        raw,
        report,
        base_dir,
        read: BTreeSet::new(),
    };
    warn_unknown(&mut v);
    let listen = listen_url(&mut v, "listenUrl");
    let local_listen = listen_url(&mut v, "localListenUrl");
    let tls = tls_config(&mut v, &listen, &local_listen);
    let local_token = v.token("sidecar", "localToken");
    let admin_token = v.token("sidecar", "adminToken");
    if !local_listen.is_loopback() && local_token.is_none() {
        v.err(
            "sidecar.localListenUrl",
            "the master's local API is not on loopback: set sidecar.localToken so strangers cannot use it",
        );
    }
    let peers = peers_config(&mut v, &listen);
    let has_peers = !matches!(&peers.discovery, Discovery::Static { urls } if urls.is_empty());
    let advertise_url = advertise_url(&mut v, &listen, &peers.discovery);
    let (instance_id, shared_dir, data_dir) = main_section(&mut v, has_peers);
    let auth = auth_config(&mut v, has_peers);
    let http = http_config(&mut v);
    let cache = cache_config(&mut v);
    let index = index_config(&mut v);
    let event = event::event_config(&mut v, &listen);
    let websession = WebSessionConfig {
        synchronize: v.boolean("websession", "synchronize"),
        cleanup_interval: v.duration("websession", None, "cleanupInterval"),
        max_age: v.duration("websession", None, "maxAge"),
        batched_sync: {
            let interval = v.duration("websession", None, "syncInterval");
            (v.choice("websession", "sync") == "batched").then_some(interval)
        },
    };
    let alert_webhook = webhook_url(&mut v);
    let gerrit = gerrit::gerrit_config(&mut v, &http);
    let (mode, election) = roles::roles_config(&mut v);
    let mut trusted_proxies = Vec::new();
    for cidr in v.list("sidecar", None, "trustedProxies") {
        match Cidr::parse(cidr.trim()) {
            Some(c) => trusted_proxies.push(c),
            None => v.err(
                "sidecar.trustedProxies",
                format!("`{cidr}` is not a CIDR (e.g. 10.0.0.0/8)"),
            ),
        }
    }
    let limits = Limits {
        max_local_body: v.size("sidecar", "maxLocalBody") as usize,
        max_peer_body: v.size("sidecar", "maxPeerBody") as usize,
        outbox_segment_bytes: v.size("sidecar", "outboxSegmentSize"),
        max_key_bytes: 1024,
        max_keys_per_request: 10_000,
        shared_dir_timeout: v.duration("main", None, "sharedDirectoryTimeout"),
        shared_dir_concurrency: v.size("main", "sharedDirectoryConcurrency") as usize,
        max_connections: v.size("sidecar", "maxConnections") as usize,
        reserved_connections: v.size("sidecar", "reservedConnections") as usize,
        fd_reserve: v.size("sidecar", "fileDescriptorReserve") as usize,
    };
    if limits.max_connections > 0 && limits.reserved_connections >= limits.max_connections {
        v.err(
            "sidecar.reservedConnections",
            "must be below sidecar.maxConnections, or no connection is left for other requests",
        );
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
        catch_up_timeout: v.duration("sidecar", None, "catchUpTimeout"),
        workers: v.size("sidecar", "workers") as usize,
        shutdown_grace: v.duration("sidecar", None, "shutdownGrace"),
        peers,
        auth,
        http,
        tls,
        cache,
        index,
        event,
        websession,
        healthcheck_enable: v.boolean("healthcheck", "enable"),
        alert_webhook,
        mode,
        election,
        gerrit,
        limits,
        embedded_defaults: embedded,
    };
    let strategy = config.peers.discovery.name();
    check_unread(&mut v, strategy);
    name_sources(raw, v.report);
    Some(config)
}

fn main_section(v: &mut V<'_>, has_peers: bool) -> (String, PathBuf, PathBuf) {
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
            .unwrap_or_default(),
    );
    let data_dir = PathBuf::from(v.string("main", None, "dataDirectory").unwrap_or_default());
    if shared_dir == data_dir {
        v.err(
            "main.dataDirectory",
            "must differ from main.sharedDirectory: the data directory is node-local, never shared",
        );
    }
    (instance_id, shared_dir, data_dir)
}

fn peers_config(v: &mut V<'_>, listen: &ListenUrl) -> PeersConfig {
    let strategy = v.choice("peerInfo", "strategy");
    let heartbeat = v.duration("peerInfo", Some("shared-fs"), "heartbeat");
    let ttl = v.duration("peerInfo", Some("shared-fs"), "ttl");
    if ttl <= heartbeat {
        v.err(
            "peerInfo.shared-fs.ttl",
            "must be longer than peerInfo.shared-fs.heartbeat",
        );
    }
    let discovery = match strategy.as_str() {
        "shared-fs" => Discovery::SharedFs { heartbeat, ttl },
        "jgroups" => {
            v.warn(
                "peerInfo.strategy",
                "`jgroups` is the plugin's discovery; ha-sidecar finds its peers by their \
                 heartbeats in sharedDirectory/members/ instead (shared-fs)",
            );
            Discovery::SharedFs { heartbeat, ttl }
        }
        "dns" => {
            let name = v
                .string("peerInfo", Some("dns"), "name")
                .unwrap_or_else(|| {
                    v.err("peerInfo.dns.name", "required with peerInfo.strategy = dns");
                    String::new()
                });
            let port = v
                .size_opt("peerInfo", Some("dns"), "port")
                .map_or(listen.addr.port(), |p| p as u16);
            let interval = v.duration("peerInfo", Some("dns"), "interval");
            let hosts_file = v
                .string("peerInfo", Some("dns"), "hostsFile")
                .map(|p| v.file_path(&p));
            Discovery::Dns {
                name,
                port,
                interval,
                hosts_file,
            }
        }
        _ => Discovery::Static {
            urls: peer_urls(v, listen),
        },
    };
    PeersConfig {
        discovery,
        retain_absent: v.duration("peerInfo", None, "retainAbsent"),
        heartbeat,
        ttl,
    }
}

fn auth_config(v: &mut V<'_>, has_peers: bool) -> AuthConfig {
    let files = v.list("auth", None, "secretFile");
    let allow_readable = v.boolean("auth", "allowReadableSecretFile");
    let secrets = files
        .iter()
        .filter_map(|t| read_secret(v, t, allow_readable))
        .collect();
    if has_peers && files.is_empty() {
        v.err(
            "auth.secretFile",
            "required when the node has peers: peers authenticate every request with the cluster secret",
        );
    }
    AuthConfig {
        secrets,
        max_clock_skew: v.duration("auth", None, "maxClockSkew"),
    }
}

fn http_config(v: &mut V<'_>) -> HttpConfig {
    let http = HttpConfig {
        user: v.string("http", None, "user"),
        password: v
            .string("http", None, "password")
            .map(|p| Secret(p.into_bytes())),
        connection_timeout: v.duration("http", None, "connectionTimeout"),
        socket_timeout: v.duration("http", None, "socketTimeout"),
        retry_interval: v.duration("http", None, "retryInterval"),
        max_retry_interval: v.duration("http", None, "maxRetryInterval"),
        max_batch_messages: v.size("http", "maxBatchMessages") as usize,
        max_batch_bytes: v.size("http", "maxBatchBytes") as usize,
    };
    // A plugin's file (it has http.maxTries, or the plugin's 10 s delay): the key's meaning
    // changed, say so.
    let plugin_file = v.raw.last("http", None, "maxTries").is_some();
    if v.raw.last("http", None, "retryInterval").is_some()
        && (plugin_file || http.retry_interval >= Duration::from_secs(10))
    {
        v.warn(
            "http.retryInterval",
            "here the first delay of an exponential back-off (doubling up to \
             http.maxRetryInterval, retried forever), not the plugin's fixed delay between \
             http.maxTries attempts",
        );
    }
    http
}

fn cache_config(v: &mut V<'_>) -> CacheConfig {
    let mut patterns = Vec::new();
    for p in v.list("cache", None, "pattern") {
        match regex::Regex::new(&p) {
            Ok(_) => patterns.push(p),
            Err(e) => v.err(
                "cache.pattern",
                format!("`{p}` is not a regular expression: {e}"),
            ),
        }
    }
    let defaults = CacheLimits {
        max_entries: v.size("cache", "maxEntries"),
        expire_after_write: v.duration_opt("cache", None, "expireAfterWrite"),
    };
    let names: BTreeSet<String> = v
        .raw
        .values
        .keys()
        .filter(|k| k.section == "cache")
        .filter_map(|k| k.subsection.clone())
        .collect();
    let mut caches = BTreeMap::new();
    for name in names {
        if !crate::wire::valid_cache_name(&name) {
            v.err(
                &format!("cache.{name}"),
                "cache names hold letters, digits, `.`, `_`, `-` (at most 128)",
            );
            continue;
        }
        let sub = Some(name.as_str());
        let limits = CacheLimits {
            max_entries: v
                .size_opt("cache", sub, "maxEntries")
                .unwrap_or(defaults.max_entries),
            expire_after_write: v
                .duration_opt("cache", sub, "expireAfterWrite")
                .or(defaults.expire_after_write),
        };
        caches.insert(name, limits);
    }
    CacheConfig {
        synchronize: v.boolean("cache", "synchronize"),
        patterns,
        defaults,
        caches,
    }
}

fn index_config(v: &mut V<'_>) -> IndexConfig {
    IndexConfig {
        synchronize: v.boolean("index", "synchronize"),
        refresh_interval: v.duration("index", None, "refreshInterval"),
        anti_entropy_interval: v.duration("index", None, "antiEntropyInterval"),
        tombstone_ttl: v.duration("index", None, "tombstoneTtl"),
        max_doc_bytes: v.size("index", "maxDocumentSize") as usize,
    }
}
