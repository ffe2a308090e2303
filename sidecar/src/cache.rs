//! Named in-memory caches (moka) and the rule that says which names are forwarded to peers.

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;

use crate::config::{CacheConfig, CacheLimits};
use crate::locks::RwLockExt;

/// Caches Gerrit's plugin always forwards (`CachePatternMatcher`'s defaults).
pub const BUILTIN_FORWARDED: &[&str] = &[
    "^groups.*",
    "ldap_usernames",
    "projects",
    "sshkeys",
    "tokens",
    "web_sessions",
];

/// Caches created on first use are capped, so a client cannot exhaust memory with names.
pub const MAX_CACHES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    #[error("`{0}` is not a valid cache name (letters, digits, `.`, `_`, `-`; at most 128)")]
    BadName(String),
    #[error("too many caches (limit {MAX_CACHES}); declare the ones you need in the config")]
    TooMany,
}

type Store = moka::sync::Cache<String, Bytes>;

pub struct Caches {
    caches: RwLock<HashMap<String, Store>>,
    config: CacheConfig,
    forwarded: Option<regex::Regex>,
}

impl Caches {
    pub fn new(config: CacheConfig) -> Self {
        // Gerrit joins the patterns with `|` and requires a whole-name match.
        let forwarded = config.synchronize.then(|| {
            let all: Vec<&str> = BUILTIN_FORWARDED
                .iter()
                .copied()
                .chain(config.patterns.iter().map(String::as_str))
                .collect();
            regex::Regex::new(&format!("^(?:{})$", all.join("|")))
                .expect("patterns were validated with the config")
        });
        Caches {
            caches: RwLock::new(HashMap::new()),
            config,
            forwarded,
        }
    }

    /// Whether changes to this cache go to peers.
    pub fn is_forwarded(&self, name: &str) -> bool {
        self.forwarded.as_ref().is_some_and(|re| re.is_match(name))
    }

    fn limits(&self, name: &str) -> &CacheLimits {
        self.config
            .caches
            .get(name)
            .unwrap_or(&self.config.defaults)
    }

    fn existing(&self, name: &str) -> Option<Store> {
        self.caches.read_locked().get(name).cloned()
    }

    fn get_or_create(&self, name: &str) -> Result<Store, CacheError> {
        if let Some(c) = self.existing(name) {
            return Ok(c);
        }
        if !crate::wire::valid_cache_name(name) {
            return Err(CacheError::BadName(name.to_owned()));
        }
        let mut all = self.caches.write_locked();
        if let Some(c) = all.get(name) {
            return Ok(c.clone());
        }
        if all.len() >= MAX_CACHES {
            return Err(CacheError::TooMany);
        }
        let limits = self.limits(name);
        let mut b = Store::builder().max_capacity(limits.max_entries);
        if let Some(ttl) = limits.expire_after_write.filter(|d| !d.is_zero()) {
            b = b.time_to_live(ttl);
        }
        let c = b.build();
        all.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    pub fn put(&self, name: &str, key: &str, value: Bytes) -> Result<(), CacheError> {
        self.get_or_create(name)?.insert(key.to_owned(), value);
        Ok(())
    }

    pub fn get(&self, name: &str, key: &str) -> Option<Bytes> {
        self.existing(name).and_then(|c| c.get(key))
    }

    /// Evicts keys; returns how many were present. A cache that does not exist has nothing to evict.
    pub fn evict<S: AsRef<str>>(&self, name: &str, keys: &[S]) -> usize {
        let Some(c) = self.existing(name) else {
            return 0;
        };
        keys.iter()
            .filter(|k| c.remove(k.as_ref()).is_some())
            .count()
    }

    pub fn flush(&self, name: &str) {
        if let Some(c) = self.existing(name) {
            c.invalidate_all();
        }
    }

    /// Entries per cache (approximate, as moka counts them).
    pub fn sizes(&self) -> Vec<(String, u64)> {
        let all = self.caches.read_locked();
        let mut v: Vec<_> = all
            .iter()
            .map(|(n, c)| (n.clone(), c.entry_count()))
            .collect();
        v.sort();
        v
    }
}

/// The cache key of a JSON key, one rule for the native API and the plugin's calls: a string is
/// itself (`"foo/bar"` → `foo/bar`), a number its decimal form, anything else (Gerrit's
/// `{"id":1000001}`, `{"uuid":"…"}`) its compact JSON with sorted fields, which is also how a
/// master names such a key in `PUT /v1/cache/{cache}/{key}`.
pub fn key_of_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn gerrit_json_keys_name_cache_keys() {
        let k = |t: &str| key_of_json(&serde_json::from_str(t).unwrap());
        assert_eq!(k(r#""foo/bar""#), "foo/bar");
        assert_eq!(k("1000001"), "1000001");
        assert_eq!(k(r#"{"id":1000001}"#), r#"{"id":1000001}"#);
        assert_eq!(k(r#"{ "uuid" : "ab12" }"#), r#"{"uuid":"ab12"}"#);
        assert_eq!(k(r#"{"b":1,"a":2}"#), r#"{"a":2,"b":1}"#);
    }

    fn cfg(patterns: &[&str], sync: bool) -> CacheConfig {
        CacheConfig {
            synchronize: sync,
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
            defaults: CacheLimits {
                max_entries: 100,
                expire_after_write: None,
            },
            caches: BTreeMap::new(),
        }
    }

    #[test]
    fn gerrit_forwarding_rule() {
        let c = Caches::new(cfg(&["my_.*", "changes"], true));
        for yes in [
            "groups",
            "groups_byuuid",
            "projects",
            "sshkeys",
            "my_cache",
            "changes",
            "web_sessions",
        ] {
            assert!(c.is_forwarded(yes), "{yes}");
        }
        for no in ["project", "projects2", "accounts", "xgroups", "changes_x"] {
            assert!(!c.is_forwarded(no), "{no}");
        }
        assert!(!Caches::new(cfg(&[], false)).is_forwarded("projects"));
    }

    #[test]
    fn put_get_evict_flush() {
        let c = Caches::new(cfg(&[], true));
        c.put("projects", "a", Bytes::from_static(b"1")).unwrap();
        c.put("projects", "b", Bytes::from_static(b"2")).unwrap();
        assert_eq!(c.get("projects", "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(c.evict("projects", &["a", "zz"]), 1);
        assert_eq!(c.get("projects", "a"), None);
        c.flush("projects");
        assert_eq!(c.get("projects", "b"), None);
        assert_eq!(c.evict("nope", &["a"]), 0);
        assert!(matches!(
            c.put("../x", "k", Bytes::new()),
            Err(CacheError::BadName(_))
        ));
    }
}
