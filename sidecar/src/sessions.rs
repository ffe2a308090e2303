//! Web sessions: the session files of the shared directory (through `shared-fs`) behind a small
//! in-memory read cache that stays coherent with the other nodes.
//!
//! * **Where.** `<sharedDirectory>/websessions/`, one file per session named by the SHA-256 of
//!   its token (`shared_fs::sessions`). The token itself is never logged, counted or cached as
//!   a key: everything here is keyed by the hash, and logs show at most its first 12 digits.
//! * **Coherence within 2 s.** A session read from the shared directory is kept in a moka cache
//!   for at most [`CACHE_TTL`] (1 s): that bound alone honours a logout or a change made
//!   through any other node within 2 s, whatever the NFS attribute cache does (the file is read
//!   again after 1 s; `lookupcache=positive` and close-to-open make that read current). On top
//!   of it, the common cases are immediate: a logout anywhere is forwarded to every peer as an
//!   eviction of cache `web_sessions` whose key is the token's hash, and the receiver
//!   invalidates the entry ([`Sessions::invalidate_hash`]); a watcher (inotify for writes
//!   through this host's mount, plus a poll every [`POLL_INTERVAL`] for the rest) invalidates
//!   what it sees change.
//! * **No stale insert.** A read that raced a write or an invalidation must not put the older
//!   record back into the cache. Each hash falls in one of [`STRIPES`] stripes with a
//!   generation; a reader notes the generation before reading the file and inserts only if it
//!   is unchanged, under the stripe's lock, which every invalidation takes too.
//! * **Blocking.** Every call on the shared directory runs through the node's bulkhead
//!   ([`crate::shared_dir`]: bounded blocking threads, a deadline, `503` when the mount hangs);
//!   the cleanup runs on its own schedule and never holds a request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared_fs::sessions::{token_hash, SessionError};
use shared_fs::{CleanupReport, KeyHash, SessionFiles, SessionOptions, SessionRecord, Watcher};

use crate::config::WebSessionConfig;
use crate::lifecycle::Scope;
use crate::locks::LockExt;
use crate::metrics::Metrics;
use crate::peers::outbox::now_ms;
use crate::shared_dir::{SharedDir, SharedDirError};
use read_cache::ReadCache;

mod read_cache;

/// Longest time a cached session is served without reading its file again.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Time between two polls of the session tree by the watcher (see `shared_fs::watch`).
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Most sessions kept in the read cache.
pub const CACHE_CAPACITY: u64 = 100_000;
/// Stripes of the generation counters that keep stale reads out of the cache.
const STRIPES: usize = 256;
/// The cache name under which logouts travel to peers; its keys are token hashes, never tokens.
pub const SESSIONS_CACHE: &str = "web_sessions";
/// Fields of a record that the sidecar sets; a create request may not carry them.
pub const RESERVED_FIELDS: &[&str] = &["created_at", "expires_at", "refresh_at", "xsrf_token"];

/// What failed in the session store.
#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    /// The request is not a valid session (missing `account_id`, reserved field, ...).
    #[error("{0}")]
    Invalid(String),
    /// The record exceeds the size limit.
    #[error("session record too large: {0}")]
    TooLarge(String),
    /// A session file was corrupt; it was quarantined and not served.
    #[error("session file was corrupt and has been quarantined")]
    Corrupt,
    /// The shared directory failed.
    #[error("shared directory: {0}")]
    Storage(String),
    /// The shared directory did not answer within `main.sharedDirectoryTimeout` (HTTP 503).
    #[error("shared directory not responding")]
    NotResponding,
}

impl From<SharedDirError> for SessionsError {
    fn from(e: SharedDirError) -> Self {
        match e {
            SharedDirError::NotResponding => SessionsError::NotResponding,
            SharedDirError::Failed(m) => {
                SessionsError::Storage(format!("session task failed: {m}"))
            }
        }
    }
}

impl From<SessionError> for SessionsError {
    fn from(e: SessionError) -> Self {
        if e.is_too_large() {
            SessionsError::TooLarge(e.to_string())
        } else if e.is_corrupt() {
            SessionsError::Corrupt
        } else {
            SessionsError::Storage(e.to_string())
        }
    }
}

/// A created session: the token (for the client only) and when it expires.
pub struct Created {
    pub token: shared_fs::SessionToken,
    pub expires_at: u64,
}

/// A session as the read path serves it: its JSON encoded once, when it entered the cache, so a
/// hit costs no serialisation (cloning [`bytes::Bytes`] is a reference count), and its expiry as
/// a number (no date parsing on a hit).
#[derive(Clone, Debug)]
pub struct SessionJson {
    /// When the session stops being valid (ms since the epoch).
    pub expires_at: u64,
    /// The record as the API answers it (`serde_json` of [`SessionRecord`]).
    pub json: bytes::Bytes,
}

impl SessionJson {
    fn encode(record: &SessionRecord) -> Result<SessionJson, SessionsError> {
        let json = serde_json::to_vec(record)
            .map_err(|e| SessionsError::Storage(format!("encoding a session: {e}")))?;
        Ok(SessionJson {
            expires_at: record.expires_at,
            json: json.into(),
        })
    }
}

/// The deferred fsync of `websession.sync = batched`, reporting to the `ha_session_sync_*`
/// metrics.
fn batch_sync(
    bound: Duration,
    metrics: Arc<Metrics>,
) -> Result<shared_fs::BatchSync, SessionsError> {
    shared_fs::BatchSync::new(bound, move |e| {
        let m = &metrics.sessions;
        match e {
            shared_fs::SyncEvent::Queued { pending } => {
                m.sync_pending.set(pending as i64);
            }
            shared_fs::SyncEvent::Synced {
                pending,
                errors,
                took,
                ..
            } => {
                m.sync_pending.set(pending as i64);
                m.sync_rounds.inc();
                m.sync_errors.inc_by(errors);
                m.sync_round_seconds.set(took.as_secs_f64());
            }
        }
    })
    .map_err(|e| SessionsError::Storage(format!("cannot start the session sync thread: {e}")))
}

/// The first digits of a hash, for logs (never the token).
pub fn hash_prefix(hash: &KeyHash) -> &str {
    &hash.as_str()[..12]
}

/// The session store of one node.
pub struct Sessions {
    files: SessionFiles,
    shared: Arc<SharedDir>,
    cache: Arc<ReadCache>,
    config: WebSessionConfig,
    metrics: Arc<Metrics>,
    /// `ha_session_reads_total{result}` resolved once, not per read.
    read_counters: ReadCounters,
    watcher: Mutex<Option<Watcher>>,
}

struct ReadCounters {
    hit: prometheus_client::metrics::counter::Counter,
    miss: prometheus_client::metrics::counter::Counter,
    absent: prometheus_client::metrics::counter::Counter,
}

impl ReadCounters {
    fn new(metrics: &Metrics) -> Self {
        let get = |result: &str| metrics.sessions.reads_counter(result);
        ReadCounters {
            hit: get("hit"),
            miss: get("miss"),
            absent: get("absent"),
        }
    }
}

impl Sessions {
    /// Opens `<shared_dir>/websessions` and starts its watcher (blocking: call it off the
    /// executor or at start).
    pub fn open(
        shared_dir: &std::path::Path,
        config: WebSessionConfig,
        shared: Arc<SharedDir>,
        metrics: Arc<Metrics>,
    ) -> Result<Sessions, SessionsError> {
        let mut files = SessionFiles::open(shared_dir, SessionOptions::default())?;
        if let Some(bound) = config.batched_sync {
            files = files.with_batch_sync(Arc::new(batch_sync(bound, metrics.clone())?))?;
        }
        let cache = Arc::new(ReadCache::new());
        let watched = cache.clone();
        let m = metrics.clone();
        let watcher = Watcher::new(files.root(), POLL_INTERVAL, move |change| {
            if let Some(hash) = SessionFiles::hash_of_change(&change) {
                watched.invalidate(&hash);
                m.sessions
                    .invalidations
                    .get_or_create(&Metrics::source("watch"))
                    .inc();
            }
        })
        .map_err(|e| SessionsError::Storage(format!("cannot watch the session directory: {e}")))?;
        Ok(Sessions {
            files,
            shared,
            cache,
            config,
            read_counters: ReadCounters::new(&metrics),
            metrics,
            watcher: Mutex::new(Some(watcher)),
        })
    }

    /// The largest record accepted, in bytes.
    pub fn max_record_bytes(&self) -> usize {
        SessionOptions::default().max_record_bytes
    }

    /// Whether logouts are forwarded to peers (`websession.synchronize`).
    pub fn synchronize(&self) -> bool {
        self.config.synchronize
    }

    /// Creates a session for `account_id` with the master's extra fields; it expires after
    /// `websession.maxAge`.
    pub async fn create(
        self: &Arc<Self>,
        account_id: u64,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Created, SessionsError> {
        if let Some(f) = RESERVED_FIELDS.iter().find(|f| extra.contains_key(**f)) {
            return Err(SessionsError::Invalid(format!(
                "`{f}` is set by the sidecar (websession.maxAge), not by the request"
            )));
        }
        let now = now_ms();
        let max_age = self.config.max_age.as_millis() as u64;
        let xsrf = shared_fs::sessions::new_token()?;
        let record = SessionRecord {
            account_id,
            created_at: now,
            expires_at: now.saturating_add(max_age),
            refresh_at: now.saturating_add(max_age / 2),
            xsrf_token: xsrf.as_str().to_owned(),
            extra,
        };
        let this = self.clone();
        let (token, record) = self
            .blocking(move || {
                let token = this.files.create(&record)?;
                Ok((token, record))
            })
            .await?;
        let hash = token.hash();
        let expires_at = record.expires_at;
        match SessionJson::encode(&record) {
            Ok(json) => self.cache.store_written(&hash, json),
            Err(_) => self.cache.invalidate(&hash),
        }
        self.metrics.sessions.creates.inc();
        tracing::debug!(session = hash_prefix(&hash), account_id, "session created");
        Ok(Created { token, expires_at })
    }

    /// Reads a session, encoded as the API answers it: `None` when unknown, expired or
    /// malformed (nothing touched on disk). A hit costs a SHA-256 of the token, one cache
    /// lookup and a comparison of two numbers.
    pub async fn get(self: &Arc<Self>, token: &str) -> Result<Option<SessionJson>, SessionsError> {
        let Some(hash) = token_hash(token) else {
            return Ok(None);
        };
        let now = now_ms();
        if let Some(rec) = self.cache.cache.get(&hash) {
            if rec.expires_at > now {
                self.read_counters.hit.inc();
                return Ok(Some(rec));
            }
            self.cache.invalidate(&hash);
        }
        let seen = self.cache.generation(&hash);
        let this = self.clone();
        let token = token.to_owned();
        let found = self
            .blocking(move || {
                this.files
                    .get(&token, now)
                    .map_err(|e| this.report(e, &this.hash_of(&token)))
            })
            .await?;
        match found {
            Some(rec) => {
                let rec = SessionJson::encode(&rec)?;
                self.cache.store_read(&hash, seen, rec.clone());
                self.read_counters.miss.inc();
                Ok(Some(rec))
            }
            None => {
                self.read_counters.absent.inc();
                Ok(None)
            }
        }
    }

    /// Extends a session by `websession.maxAge` and merges `extra` into its fields; `None` when
    /// it does not exist (a refresh never brings a logged-out session back).
    pub async fn refresh(
        self: &Arc<Self>,
        token: &str,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<SessionRecord>, SessionsError> {
        let Some(hash) = token_hash(token) else {
            return Ok(None);
        };
        if let Some(f) = RESERVED_FIELDS.iter().find(|f| extra.contains_key(**f)) {
            return Err(SessionsError::Invalid(format!(
                "`{f}` is set by the sidecar"
            )));
        }
        let now = now_ms();
        let max_age = self.config.max_age.as_millis() as u64;
        let this = self.clone();
        let token = token.to_owned();
        let h = hash.clone();
        let written = self
            .blocking(move || {
                let Some(mut rec) = this
                    .files
                    .get(&token, now)
                    .map_err(|e| this.report(e, &h))?
                else {
                    return Ok(None);
                };
                rec.extra.extend(extra);
                rec.expires_at = now.saturating_add(max_age);
                rec.refresh_at = now.saturating_add(max_age / 2);
                Ok(this.files.refresh(&token, &rec)?.then_some(rec))
            })
            .await;
        match written {
            Ok(Some(rec)) => {
                match SessionJson::encode(&rec) {
                    Ok(json) => self.cache.store_written(&hash, json),
                    Err(_) => self.cache.invalidate(&hash),
                }
                self.metrics.sessions.refreshes.inc();
                Ok(Some(rec))
            }
            Ok(None) => {
                self.cache.invalidate(&hash);
                Ok(None)
            }
            Err(e) => {
                self.cache.invalidate(&hash);
                Err(e)
            }
        }
    }

    /// Deletes a session here (file and cache); `false` if there was none. The caller forwards
    /// the logout to the peers.
    pub async fn delete(
        self: &Arc<Self>,
        token: &str,
    ) -> Result<Option<(bool, KeyHash)>, SessionsError> {
        let Some(hash) = token_hash(token) else {
            return Ok(None);
        };
        // Before and after: no read in flight may re-insert what the delete removes.
        self.cache.invalidate(&hash);
        let this = self.clone();
        let token = token.to_owned();
        let deleted = self.blocking(move || Ok(this.files.delete(&token)?)).await;
        self.cache.invalidate(&hash);
        let deleted = deleted?;
        if deleted {
            self.metrics.sessions.deletes.inc();
            tracing::debug!(session = hash_prefix(&hash), "session deleted");
        }
        Ok(Some((deleted, hash)))
    }

    /// A peer logged a session out, or the watcher saw its file change: forget the cached copy.
    pub fn invalidate_hash(&self, hash_hex: &str) -> bool {
        match KeyHash::from_hex(hash_hex) {
            Some(hash) => {
                self.cache.invalidate(&hash);
                self.metrics
                    .sessions
                    .invalidations
                    .get_or_create(&Metrics::source("peer"))
                    .inc();
                true
            }
            None => false,
        }
    }

    /// A peer flushed `web_sessions`: forget every cached session.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// One cleanup pass on this (blocking) thread; records its figures.
    pub fn cleanup_blocking(&self) -> CleanupReport {
        let started = std::time::Instant::now();
        let report = self.files.cleanup(now_ms());
        let took = started.elapsed();
        let m = &self.metrics.sessions;
        m.cleanup_runs.inc();
        m.cleanup_scanned.inc_by(report.scanned);
        m.cleanup_removed.inc_by(report.expired_removed);
        m.quarantined.inc_by(report.corrupt_quarantined);
        m.cleanup_seconds.set(took.as_secs_f64());
        tracing::info!(
            scanned = report.scanned,
            removed = report.expired_removed,
            quarantined = report.corrupt_quarantined,
            quarantine_removed = report.quarantined_removed,
            temp_removed = report.temp_removed,
            refreshed_kept = report.refreshed_kept,
            errors = report.errors,
            took_ms = took.as_millis() as u64,
            "web session cleanup finished"
        );
        report
    }

    /// Runs [`Sessions::cleanup_blocking`] every `websession.cleanupInterval` on a blocking
    /// thread until `scope` is cancelled.
    pub fn spawn_cleanup(self: &Arc<Self>, scope: &Scope) {
        let this = self.clone();
        let interval = self.config.cleanup_interval;
        let stop = scope.token().clone();
        scope.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                let s = this.clone();
                let pass = this.shared.run_background(move || s.cleanup_blocking());
                // A pass in progress at a stop finishes on its blocking thread, unwaited.
                let done = tokio::select! {
                    r = pass => r,
                    _ = stop.cancelled() => return,
                };
                if let Err(e) = done {
                    tracing::error!(error = %e, "web session cleanup failed");
                }
            }
        });
    }

    /// Stops the watcher (joins its thread) and, with `sync = batched`, fsyncs what is pending
    /// (waiting at most `main.sharedDirectoryTimeout`: a hung mount does not hold the stop).
    pub fn stop_watching(&self) {
        let w = self.watcher.locked().take();
        drop(w);
        if let Some(b) = self.files.batch_sync() {
            if !b.flush(self.shared.timeout()) {
                tracing::error!(
                    pending = b.pending(),
                    "session files written but not fsync'd at the stop: the shared directory does not answer"
                );
            }
        }
    }

    /// Runs shared-directory work through the node's bulkhead (bounded threads, deadline).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, SessionsError> + Send + 'static,
    ) -> Result<T, SessionsError> {
        self.shared.run(f).await?
    }

    fn hash_of(&self, token: &str) -> KeyHash {
        KeyHash::of(token.as_bytes())
    }

    /// Counts and logs a corrupt file (by hash); maps the error.
    fn report(&self, e: SessionError, hash: &KeyHash) -> SessionsError {
        if e.is_corrupt() {
            self.metrics.sessions.quarantined.inc();
            tracing::warn!(
                session = hash_prefix(hash),
                "corrupt session file quarantined, not served"
            );
        }
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(m: &Arc<Metrics>) -> Arc<SharedDir> {
        Arc::new(SharedDir::new(4, Duration::from_secs(5), m.clone()))
    }

    fn config(max_age: Duration) -> WebSessionConfig {
        WebSessionConfig {
            synchronize: true,
            cleanup_interval: Duration::from_secs(3600),
            max_age,
            batched_sync: None,
        }
    }

    #[tokio::test]
    async fn create_get_refresh_delete_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let s = Arc::new(
            Sessions::open(
                dir.path(),
                config(Duration::from_secs(60)),
                shared(&m),
                m.clone(),
            )
            .unwrap(),
        );
        let mut extra = serde_json::Map::new();
        extra.insert("user".into(), "alice".into());
        let c = s.create(7, extra).await.unwrap();
        let t = c.token.as_str().to_owned();
        let read = |j: SessionJson| serde_json::from_slice::<serde_json::Value>(&j.json).unwrap();
        assert_eq!(read(s.get(&t).await.unwrap().unwrap())["account_id"], 7);
        let mut more = serde_json::Map::new();
        more.insert("n".into(), 2.into());
        let r = s.refresh(&t, more).await.unwrap().unwrap();
        assert_eq!(r.extra["user"], "alice");
        let got = read(s.get(&t).await.unwrap().unwrap());
        assert_eq!(got["n"], 2);
        assert_eq!(got["user"], "alice");
        assert_eq!(got["expires_at"], r.expires_at);
        assert!(s.delete(&t).await.unwrap().unwrap().0);
        assert!(s.get(&t).await.unwrap().is_none());
        assert!(s.refresh(&t, Default::default()).await.unwrap().is_none());
        assert!(s.delete("../../etc/passwd").await.unwrap().is_none());
        let text = m.encode();
        assert!(text.contains("ha_session_creates_total 1"), "{text}");
    }

    #[tokio::test]
    async fn a_file_removed_behind_the_cache_is_honoured_within_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let s = Arc::new(
            Sessions::open(dir.path(), config(Duration::from_secs(60)), shared(&m), m).unwrap(),
        );
        s.stop_watching(); // prove the staleness bound alone
        let c = s.create(1, Default::default()).await.unwrap();
        let t = c.token.as_str().to_owned();
        assert!(s.get(&t).await.unwrap().is_some());
        std::fs::remove_file(s.files.path_for(&t).unwrap()).unwrap();
        let deadline = std::time::Instant::now() + CACHE_TTL * 2;
        while s.get(&t).await.unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "stale past the TTL");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn a_read_racing_an_invalidation_is_not_cached() {
        let c = ReadCache::new();
        let h = KeyHash::of(b"x");
        let seen = c.generation(&h);
        c.invalidate(&h);
        c.store_read(
            &h,
            seen,
            SessionJson {
                expires_at: u64::MAX,
                json: bytes::Bytes::from_static(b"{}"),
            },
        );
        assert!(c.cache.get(&h).is_none());
    }
}
