//! The table of every configuration key: section, key, default, doc and check. It is the one
//! source for validation (kinds, bounds, defaults), environment overrides, the unknown-key
//! warning, `check-config --print` and the README's configuration reference (a test compares
//! them). To add a key, add a row here and read it in `validate` with the getter of its kind;
//! to add a section, add its rows and one `fn section(v: &mut V) -> SectionConfig` there.

/// What a key's value is: decides how it is parsed and how it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text (names, paths).
    Text,
    Bool,
    /// Gerrit's durations: `250` (ms), `10s`, `5 min`, `1 hour`, `7 days`.
    Duration,
    /// A byte size or a count: `2000`, `64k`, `1m`, `10g`.
    Size,
    /// An `http://` or `https://` URL.
    Url,
    /// A bearer token or password: at least 16 characters, never printed.
    Token,
    /// A value that must be kept out of output but has no length rule (a password).
    Secret,
    /// A regular expression.
    Regex,
    /// An address block (`10.0.0.0/8`).
    Cidr,
    /// One of a fixed list of words.
    Choice(&'static [&'static str]),
}

/// A bound on a value, checked by the generic getters with the message given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Sizes and counts: at least this ("N is below the minimum M").
    Min(u64),
    /// Sizes and counts: at most this.
    Max(u64, &'static str),
    /// Durations: at least this many milliseconds.
    MinMs(u64, &'static str),
    /// Durations: at most this many milliseconds.
    MaxMs(u64, &'static str),
}

/// One key of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub section: &'static str,
    /// `Some("*")`: any subsection (`[cache "NAME"]`); `Some("consumer *")`: any subsection
    /// starting with `consumer ` (`[event "consumer NAME"]`).
    pub subsection: Option<&'static str>,
    pub name: &'static str,
    pub kind: Kind,
    pub repeatable: bool,
    /// The default as it would be written in the file; `None`: unset unless given.
    pub default: Option<&'static str>,
    /// What the default means when it is not a literal (`listenUrl`'s port), for the docs.
    pub default_doc: Option<&'static str>,
    /// The value shown in the README's example config (default: the default).
    pub example: Option<&'static str>,
    pub doc: &'static str,
    pub checks: &'static [Check],
}

impl Key {
    const fn new(
        section: &'static str,
        subsection: Option<&'static str>,
        name: &'static str,
        kind: Kind,
        default: Option<&'static str>,
        doc: &'static str,
    ) -> Key {
        Key {
            section,
            subsection,
            name,
            kind,
            repeatable: false,
            default,
            default_doc: None,
            example: None,
            doc,
            checks: &[],
        }
    }
    const fn repeatable(self) -> Key {
        Key {
            repeatable: true,
            ..self
        }
    }
    const fn example(self, example: &'static str) -> Key {
        Key {
            example: Some(example),
            ..self
        }
    }
    const fn default_doc(self, text: &'static str) -> Key {
        Key {
            default_doc: Some(text),
            ..self
        }
    }
    const fn checks(self, checks: &'static [Check]) -> Key {
        Key { checks, ..self }
    }

    /// `section.key` or `section.sub.key`, spelled as documented.
    pub fn path(&self) -> String {
        match self.subsection {
            Some(sub) => format!("{}.{}.{}", self.section, sub, self.name),
            None => format!("{}.{}", self.section, self.name),
        }
    }

    /// The environment variable that overrides this key (`None` for open-ended subsections).
    pub fn env_var(&self) -> Option<String> {
        if self.is_open_ended() {
            return None;
        }
        Some(format!(
            "HA_{}_{}",
            self.section.to_ascii_uppercase(),
            self.name.to_ascii_uppercase()
        ))
    }

    /// True for a subsection named by a pattern (`*`, `consumer *`).
    pub fn is_open_ended(&self) -> bool {
        self.subsection.is_some_and(|s| s.ends_with('*'))
    }

    /// The subsection as documented: the pattern's `*` is `NAME`.
    pub fn subsection_doc(&self) -> Option<String> {
        self.subsection.map(|s| s.replace('*', "NAME"))
    }

    /// True if the key is never printed.
    pub fn is_secret(&self) -> bool {
        matches!(self.kind, Kind::Token | Kind::Secret)
    }

    /// True for `section`, `sub`, `key` as read from a file (section and key case-insensitive).
    pub fn matches(&self, section: &str, sub: Option<&str>, key: &str) -> bool {
        self.section.eq_ignore_ascii_case(section)
            && self.name.eq_ignore_ascii_case(key)
            && match (self.subsection, sub) {
                (None, None) => true,
                (Some(p), Some(b)) if p.ends_with('*') => b.starts_with(&p[..p.len() - 1]),
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
    }
}

use Check::*;
use Kind::*;

/// `jgroups` (the plugin's) is accepted with a warning and means `shared-fs`.
const STRATEGIES: &[&str] = &["static", "shared-fs", "dns", "jgroups"];
pub const MODES: &[&str] = &["active-active", "hot-standby"];
/// `websession.sync`: when a written session file is fsync'd.
pub const SESSION_SYNC: &[&str] = &["always", "batched"];
pub const ELECTION_STRATEGIES: &[&str] = &["keep-majority", "keep-oldest", "manual"];
const REFRESH_BOUNDS: &str =
    "must be above 0 and at most 500ms (writes must be searchable within half a second)";

/// Every key ha-sidecar reads, in the order of the README's reference.
#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    Key::new("main", None, "instanceId", Text, None,
        "unique per node; required when there are peers ([A-Za-z0-9._-], at most 64)")
        .default_doc("standalone").example("master-1"),
    Key::new("main", None, "sharedDirectory", Text, Some("./var/shared"),
        "shared by all nodes (NFS): web sessions, membership heartbeats").example("/mnt/ha"),
    Key::new("main", None, "dataDirectory", Text, Some("./var/data"),
        "node-local, never shared: outbox, event log, index, dead letters; one process per directory (<dataDirectory>/lock)").example("/var/lib/ha"),
    Key::new("main", None, "sharedDirectoryTimeout", Duration, Some("5s"),
        "a call on the shared directory not done by then answers 503").checks(&[MinMs(1, "must be above zero")]),
    Key::new("main", None, "sharedDirectoryConcurrency", Size, Some("16"),
        "most calls on the shared directory in flight (threads a hung mount can pin)").checks(&[Min(1)]),
    Key::new("main", None, "mode", Choice(MODES), Some("active-active"),
        "active-active: every healthy node takes traffic; hot-standby: exactly one active node answers GET /health 204, the others 503 \"standby\" while they keep applying peer traffic"),
    Key::new("election", None, "strategy", Choice(ELECTION_STRATEGIES), Some("keep-majority"),
        "hot-standby: who is active. keep-majority: only while it reaches a majority of the known nodes; keep-oldest: the oldest live node; manual: the node an operator promotes (POST /v1/election/promote, ha-sidecar promote)"),
    Key::new("sidecar", None, "listenUrl", Url, Some("http://127.0.0.1:7710/"),
        "peers, stream, health, metrics, status; https:// serves TLS with certificateFile")
        .example("http://0.0.0.0:7710/"),
    Key::new("sidecar", None, "localListenUrl", Url, Some("http://127.0.0.1:7711/"),
        "the master's local API; off loopback it requires localToken"),
    Key::new("sidecar", None, "localToken", Token, None,
        "bearer token for the local API (at least 16 characters)")
        .example("change-me-local-token-0123456789"),
    Key::new("sidecar", None, "adminToken", Token, None,
        "bearer token for POST/DELETE /health on listenUrl")
        .example("change-me-admin-token-0123456789"),
    Key::new("sidecar", None, "advertiseUrl", Url, None,
        "where peers reach this node; required with shared-fs when listenUrl binds 0.0.0.0")
        .default_doc("listenUrl").example("http://10.0.0.11:7710/"),
    Key::new("sidecar", None, "trustedProxies", Cidr, None,
        "repeatable: load balancers whose X-Forwarded-For is believed").repeatable()
        .example("10.0.0.0/8"),
    Key::new("sidecar", None, "catchUpTimeout", Duration, Some("30s"),
        "longest time /health says \"catching up\" after a start"),
    Key::new("sidecar", None, "workers", Size, Some("2"),
        "HTTP worker threads per listener").checks(&[Min(1)]),
    Key::new("sidecar", None, "shutdownGrace", Duration, Some("10s"),
        "how long in-flight requests may take at shutdown"),
    Key::new("sidecar", None, "maxLocalBody", Size, Some("4m"),
        "largest local API request body (413 above)").checks(&[Min(1024)]),
    Key::new("sidecar", None, "maxPeerBody", Size, Some("32m"),
        "largest peer batch accepted (413 above)").checks(&[Min(64 << 10)]),
    Key::new("sidecar", None, "maxConnections", Size, Some("0"),
        "most connections per listener; 0: half of what the open-files limit leaves after fileDescriptorReserve (also the ceiling)"),
    Key::new("sidecar", None, "reservedConnections", Size, Some("64"),
        "of maxConnections, kept for /health, /readyz, /metrics and /v1/peer/*: above the rest, other requests get 503 and idle connections are closed after 0.1 s").checks(&[Min(1)]),
    Key::new("sidecar", None, "fileDescriptorReserve", Size, Some("1024"),
        "open files kept from connections for the stores and outgoing connections"),
    Key::new("sidecar", None, "outboxSegmentSize", Size, Some("64m"),
        "outbox segment file size; delivered segments are deleted whole").checks(&[Min(4096)]),
    Key::new("sidecar", None, "certificateFile", Text, None,
        "PEM chain served on https:// listeners and presented to peers as client certificate; reloaded when it changes"),
    Key::new("sidecar", None, "privateKeyFile", Text, None,
        "PEM private key of certificateFile; reloaded when it changes"),
    Key::new("sidecar", None, "clientCaFile", Text, None,
        "mutual TLS: /v1/peer/* requires a client certificate from these CAs naming the peer's instanceId (DNS SAN or CN); reloaded when it changes"),
    Key::new("peerInfo", None, "strategy", Choice(STRATEGIES), Some("static"),
        "where peers come from: static | shared-fs | dns (the plugin's jgroups: shared-fs, with a warning)"),
    Key::new("peerInfo", None, "retainAbsent", Duration, Some("24 hours"),
        "how long the queue of a vanished peer is kept (and filled)"),
    Key::new("peerInfo", Some("static"), "url", Url, None,
        "repeatable: a peer's listenUrl (this node's own is ignored)").repeatable()
        .example("http://master-2:7710/"),
    Key::new("peerInfo", Some("shared-fs"), "heartbeat", Duration, Some("5s"),
        "every node writes <sharedDirectory>/members/<instanceId>.json this often"),
    Key::new("peerInfo", Some("shared-fs"), "ttl", Duration, Some("30s"),
        "a peer silent (or unreachable) this long is failed; must exceed heartbeat"),
    Key::new("peerInfo", Some("dns"), "name", Text, None,
        "every A/AAAA record is a peer (a Kubernetes headless service)")
        .example("ha-sidecar.review.svc"),
    Key::new("peerInfo", Some("dns"), "port", Size, None,
        "the peers' port").default_doc("listenUrl's port").example("7710")
        .checks(&[Min(1), Max(65_535, "must be at most 65535 (a port number)")]),
    Key::new("peerInfo", Some("dns"), "interval", Duration, Some("10s"),
        "how often the name is resolved again").checks(&[MinMs(1, "must be above zero")]),
    Key::new("peerInfo", Some("dns"), "hostsFile", Text, None,
        "resolve from this hosts-format file instead of DNS (optional)"),
    Key::new("auth", None, "secretFile", Text, None,
        "repeatable: the cluster secret (>= 16 bytes); the first signs, all verify").repeatable()
        .example("/etc/ha/peer.key"),
    Key::new("auth", None, "maxClockSkew", Duration, Some("2 min"),
        "signed requests further off in time are refused"),
    Key::new("auth", None, "allowReadableSecretFile", Bool, Some("false"),
        "true: a secretFile readable by group or others is only warned about (e.g. a mounted secret volume); false: refused"),
    Key::new("http", None, "user", Text, None,
        "HTTP basic user (Gerrit plugin interoperability only)"),
    Key::new("http", None, "password", Secret, None,
        "HTTP basic password (Gerrit plugin interoperability only)"),
    Key::new("http", None, "connectionTimeout", Duration, Some("5s"),
        "connecting to a peer"),
    Key::new("http", None, "socketTimeout", Duration, Some("5s"),
        "waiting for a peer's reply"),
    Key::new("http", None, "retryInterval", Duration, Some("1s"),
        "first back-off; doubles per failure, with jitter")
        .checks(&[MinMs(1, "must be above zero")]),
    Key::new("http", None, "maxRetryInterval", Duration, Some("30s"),
        "back-off cap; retries never stop"),
    Key::new("http", None, "maxBatchMessages", Size, Some("2000"),
        "most messages per batch").checks(&[Min(1)]),
    Key::new("http", None, "maxBatchBytes", Size, Some("1m"),
        "largest batch body (must not exceed the peers' maxPeerBody)").checks(&[Min(1024)]),
    Key::new("http", None, "caFile", Text, None,
        "roots that peers' https certificates are verified against; reloaded when it changes").default_doc("the system's roots"),
    Key::new("cache", None, "synchronize", Bool, Some("true"),
        "false: never forward cache changes"),
    Key::new("cache", None, "pattern", Regex, None,
        "repeatable: caches forwarded besides the built-in list").repeatable()
        .example("^my_plugin_.*"),
    Key::new("cache", None, "maxEntries", Size, Some("100000"),
        "default size of caches created on first use").checks(&[Min(1)]),
    Key::new("cache", None, "expireAfterWrite", Duration, None,
        "default expiry of caches created on first use").default_doc("never").example("1 hour"),
    Key::new("cache", Some("*"), "maxEntries", Size, None,
        "this cache's size").default_doc("cache.maxEntries").example("10000").checks(&[Min(1)]),
    Key::new("cache", Some("*"), "expireAfterWrite", Duration, None,
        "this cache's expiry").default_doc("cache.expireAfterWrite").example("1 hour"),
    Key::new("index", None, "synchronize", Bool, Some("true"),
        "false: neither forward index writes nor run anti-entropy"),
    Key::new("index", None, "refreshInterval", Duration, Some("200ms"),
        "a write is searchable within this (at most 500ms)")
        .checks(&[MinMs(1, REFRESH_BOUNDS), MaxMs(500, REFRESH_BOUNDS)]),
    Key::new("index", None, "antiEntropyInterval", Duration, Some("1 min"),
        "digest comparison with every peer (also at start, on a peer's return)")
        .checks(&[MinMs(100, "must be at least 100ms")]),
    Key::new("index", None, "tombstoneTtl", Duration, Some("7 days"),
        "how long a delete is remembered; must outlive any partition")
        .checks(&[MinMs(1000, "must be at least 1s (and should outlive any partition)")]),
    Key::new("index", None, "maxDocumentSize", Size, Some("1m"),
        "largest document (413 above)").checks(&[Min(1024)]),
    Key::new("event", None, "synchronize", Bool, Some("true"),
        "false: events stay on this node (not forwarded)"),
    Key::new("event", None, "retention", Duration, Some("7 days"),
        "how long the log keeps events for replay (by arrival time)"),
    Key::new("event", None, "streamToken", Token, None,
        "bearer token for /v1/events/stream and events-log (every project); required off loopback unless consumers are set")
        .example("change-me-stream-token-012345678"),
    Key::new("event", Some("consumer *"), "token", Token, None,
        "a stream consumer's bearer token (or Basic password) for the stream and the events-log API")
        .example("change-me-jenkins-token-01234567"),
    Key::new("event", Some("consumer *"), "project", Regex, None,
        "repeatable: the projects this consumer sees (a regex matching the whole name); unset: every project")
        .repeatable().example("tools/.*"),
    Key::new("event", None, "returnLimit", Size, Some("5000"),
        "most events one events-log replay request returns (the oldest first)").checks(&[Min(1)]),
    Key::new("event", None, "heartbeatInterval", Duration, Some("15s"),
        "comment line on idle streams (keep under the LB idle timeout)")
        .checks(&[MinMs(1, "must be above zero")]),
    Key::new("event", None, "segmentSize", Size, Some("64m"),
        "log segment file size; retention drops whole segments").checks(&[Min(4096)]),
    Key::new("event", None, "maxSize", Size, Some("10g"),
        "the log drops its oldest segments beyond this size").checks(&[Min(1 << 20)]),
    Key::new("event", None, "maxEventSize", Size, Some("1m"),
        "largest event accepted (413 above)")
        .checks(&[Min(1024), Max(64 << 20, "must not exceed 64m")]),
    Key::new("websession", None, "synchronize", Bool, Some("true"),
        "forward logouts (and refreshes) to peers as web_sessions evictions"),
    Key::new("websession", None, "cleanupInterval", Duration, Some("24 hours"),
        "how often expired sessions are removed from the shared directory"),
    Key::new("websession", None, "maxAge", Duration, Some("12 hours"),
        "a session expires this long after its creation or last refresh"),
    Key::new("websession", None, "sync", Choice(SESSION_SYNC), Some("always"),
        "always: a 2xx to a create or refresh means its file is durable (fsync'd); batched: the file is visible to every node at once and fsync'd within syncInterval (an OS crash in between loses it: that user logs in again)"),
    Key::new("websession", None, "syncInterval", Duration, Some("1s"),
        "with sync = batched: longest time from a session write's answer to its fsync (like Redis appendfsync everysec); writers wait when the disk lags further")
        .checks(&[MinMs(10, "must be at least 10ms"), MaxMs(60_000, "must not exceed 1 minute")]),
    Key::new("healthcheck", None, "enable", Bool, Some("true"),
        "false: /health answers 404"),
    Key::new("alert", None, "webhookUrl", Url, None,
        "optional: JSON POSTed when a peer fails or recovers").example("https://chat.example/hook"),
    Key::new("gerrit", None, "url", Url, None,
        "this node's own Gerrit master, where peers' plugin calls are replayed; unset: no master")
        .example("http://127.0.0.1:8080/"),
    Key::new("gerrit", None, "pluginName", Text, Some("high-availability"),
        "the plugin's installed name: ingress under /plugins/<pluginName>/, egress likewise"),
    Key::new("gerrit", None, "user", Text, None,
        "Basic user for the master").default_doc("http.user"),
    Key::new("gerrit", None, "password", Secret, None,
        "Basic password for the master").default_doc("http.password"),
    Key::new("gerrit", None, "passwordFile", Text, None,
        "the password in a file instead (not with gerrit.password)"),
    Key::new("gerrit", None, "caFile", Text, None,
        "extra roots (PEM) for an https:// master; TLS is always verified"),
    Key::new("gerrit", None, "healthInterval", Duration, Some("5s"),
        "how often the master's health is probed for /health")
        .checks(&[MinMs(1, "must be above zero")]),
    Key::new("gerrit", None, "timeout", Duration, Some("30s"),
        "longest wait for one call to the master").checks(&[MinMs(1, "must be above zero")]),
    Key::new("gerrit", None, "setAsideAfter", Size, Some("10"),
        "a call the master answers 500 with the same body this many times in a row, while its \
         health check passes, is set aside as a dead letter (the plugin's answer to an unknown \
         event type); 0: retry 500s forever"),
];

/// Keys of Gerrit's plugin that mean nothing here: accepted with a warning so an existing
/// `high-availability.config` can be reused as it is. `*`: every key of the section.
pub const PLUGIN_ONLY_KEYS: &[(&str, &str)] = &[
    ("main", "transport"),
    ("http", "maxTries"),
    ("http", "threadPoolSize"),
    ("http", "reuseConnectionAfter503"),
    ("index", "threadPoolSize"),
    ("index", "maxTries"),
    ("index", "retryInterval"),
    ("index", "initialDelay"),
    ("index", "batchThreadPoolSize"),
    ("index", "synchronizeForced"),
    ("index", "numStripedLocks"),
    ("index", "waitTimeout"),
    ("peerInfo", "myUrl"),
    ("cache", "threadPoolSize"),
    ("event", "allowedListeners"),
    ("jgroups", "*"),
    ("autoReindex", "*"),
    ("indexSync", "*"),
    ("ref-database", "*"),
];

/// `HA_*` variables that are not config keys but are read by the binary, its tests or bench.
pub const OTHER_ENV_VARS: &[&str] = &[
    "HA_LOG",
    "HA_LOG_FORMAT",
    "HA_STREAM_TOKEN",
    "HA_SIDECAR_BIN",
    "HA_TEST_PATIENCE",
    "HA_NFS_VM_KIT",
    "HA_UPDATE_README",
];

/// The table's row for a key as read from a file, if any.
pub fn find(section: &str, sub: Option<&str>, key: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.matches(section, sub, key))
}

/// The plugin-only entry for a key, spelled as Gerrit documents it.
pub fn plugin_only(section: &str, key: &str) -> Option<String> {
    PLUGIN_ONLY_KEYS
        .iter()
        .find(|(s, k)| {
            s.eq_ignore_ascii_case(section) && (*k == "*" || k.eq_ignore_ascii_case(key))
        })
        .map(|(s, k)| {
            if *k == "*" {
                format!("{s}.{key}")
            } else {
                format!("{s}.{k}")
            }
        })
}

/// The key an environment variable overrides. A subsection-less key wins the name when both
/// forms exist (`HA_CACHE_MAXENTRIES` is `cache.maxEntries`).
pub fn for_env_var(var: &str) -> Option<&'static Key> {
    KEYS.iter()
        .filter(|k| k.env_var().as_deref() == Some(var))
        .min_by_key(|k| k.subsection.is_some())
}

/// For an unknown `HA_*` variable, the known one it was probably meant to be.
pub fn suggest_env_var(var: &str) -> Option<String> {
    let upper = var.to_ascii_uppercase();
    let rest = upper.strip_prefix("HA_")?;
    let section = rest.split('_').next()?;
    let last = rest.rsplit('_').next()?;
    KEYS.iter().filter_map(Key::env_var).find(|v| {
        v.strip_prefix("HA_").is_some_and(|r| {
            r.split('_').next() == Some(section) && r.rsplit('_').next() == Some(last)
        }) || v.replace('_', "") == upper.replace('_', "")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_and_example_parses_with_its_kind() {
        for k in KEYS {
            for v in [k.default, k.example].into_iter().flatten() {
                let ok = match k.kind {
                    Duration => super::super::parse_duration(v).is_ok(),
                    Size => super::super::parse_size(v).is_ok(),
                    Bool => matches!(v, "true" | "false"),
                    Url => url::Url::parse(v).is_ok(),
                    Cidr => super::super::Cidr::parse(v).is_some(),
                    Regex => regex::Regex::new(v).is_ok(),
                    Choice(words) => words.contains(&v),
                    Token => v.len() >= 16,
                    Text | Secret => true,
                };
                assert!(ok, "{}: `{v}` is not a valid {:?}", k.path(), k.kind);
            }
        }
    }

    #[test]
    fn keys_are_unique_and_env_vars_find_them() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(
                !KEYS[..i].iter().any(|o| o.section == k.section
                    && o.subsection == k.subsection
                    && o.name == k.name),
                "{} twice",
                k.path()
            );
        }
        assert_eq!(
            for_env_var("HA_PEERINFO_URL").unwrap().path(),
            "peerInfo.static.url"
        );
        assert_eq!(
            for_env_var("HA_CACHE_MAXENTRIES").unwrap().path(),
            "cache.maxEntries"
        );
        assert_eq!(
            suggest_env_var("HA_PEERINFO_STATIC_URL").as_deref(),
            Some("HA_PEERINFO_URL")
        );
        assert_eq!(
            find("HTTP", None, "RETRYINTERVAL").unwrap().name,
            "retryInterval"
        );
        assert_eq!(
            find("cache", Some("projects"), "maxentries")
                .unwrap()
                .subsection,
            Some("*")
        );
        assert_eq!(
            plugin_only("JGroups", "clusterName").as_deref(),
            Some("jgroups.clusterName")
        );
    }
}
