//! Web session files in `<sharedDirectory>/websessions`: tokens, records, expiry, cleanup.
//!
//! A session token is 256 bits from the OS, written as 64 lowercase hex digits. The token is
//! never part of a path: the file is named by its SHA-256 (see [`crate::store`]). A malformed
//! token is refused before any file system call. Each file's mtime is set to the session's
//! `expires_at`, so cleanup finds expired sessions with `stat` alone and reads only those.

mod cleanup;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use rand::TryRngCore;
use serde::{Deserialize, Serialize};

use crate::batch_sync::BatchSync;
use crate::store::{KeyHash, Store, StoreError, StoreOptions};
use crate::watch::Change;

pub use cleanup::CleanupReport;

/// Directory under the shared directory that holds the sessions.
pub const SESSIONS_DIR: &str = "websessions";
/// Length of a token in characters (256 bits in hex).
pub const TOKEN_LEN: usize = 64;

/// What failed in the session layer.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The token is not 64 lowercase hex digits; nothing was touched on disk.
    #[error("malformed session token")]
    MalformedToken,
    /// The record could not be encoded.
    #[error("encoding session record: {0}")]
    Encode(#[source] serde_json::Error),
    /// The OS random source failed.
    #[error("reading the OS random source: {0}")]
    Random(String),
    /// The store failed (including [`StoreError::Corrupt`]: a corrupt file, quarantined).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SessionError {
    /// True when a corrupt session file was found and quarantined (log and count it).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, SessionError::Store(e) if e.is_corrupt())
    }

    /// True when the record exceeds [`SessionOptions::max_record_bytes`] (HTTP 413).
    pub fn is_too_large(&self) -> bool {
        matches!(self, SessionError::Store(StoreError::TooLarge { .. }))
    }
}

/// One web session as the master sees it. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The account logged in.
    pub account_id: u64,
    /// When the session was created.
    pub created_at: u64,
    /// When it stops being valid; an expired session reads as absent.
    pub expires_at: u64,
    /// When the master should refresh it.
    pub refresh_at: u64,
    /// The XSRF token bound to the session.
    pub xsrf_token: String,
    /// Any other field the master sends, kept as is.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A session token. Its `Debug` form is redacted so it cannot leak into a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// The token itself (hand it to the client only; never log it).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hash that names the session's file (safe to log).
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.0.as_bytes())
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// A new token of 256 bits from the OS random source.
pub fn new_token() -> Result<SessionToken, SessionError> {
    let mut bytes = [0u8; TOKEN_LEN / 2];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| SessionError::Random(e.to_string()))?;
    Ok(SessionToken(hex::encode(bytes)))
}

/// True for exactly 64 lowercase hex digits: anything else (`../x`, `/etc/passwd`, empty, too
/// long, other alphabets) is refused before it can reach the file system.
pub fn token_is_well_formed(token: &str) -> bool {
    token.len() == TOKEN_LEN
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The hash naming a token's file, or `None` for a malformed token.
pub fn token_hash(token: &str) -> Option<KeyHash> {
    token_is_well_formed(token).then(|| KeyHash::of(token.as_bytes()))
}

/// Tuning of [`SessionFiles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// fsync every write (off only in tests that create many sessions).
    pub fsync: bool,
    /// Largest encoded record accepted (the HTTP layer answers 413 above it).
    pub max_record_bytes: usize,
    /// How long cleanup keeps quarantined files (for an operator to inspect).
    pub quarantine_retention: Duration,
    /// Age (by the file's ctime) after which a temp file is a crash leftover and removed.
    pub temp_grace: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            fsync: true,
            max_record_bytes: 64 * 1024,
            quarantine_retention: Duration::from_secs(7 * 24 * 3600),
            temp_grace: Duration::from_secs(15 * 60),
        }
    }
}

/// The session files of one shared directory.
#[derive(Debug, Clone)]
pub struct SessionFiles {
    store: Store,
    opts: SessionOptions,
    /// `Some`: writes are not fsync'd before they return but handed to this (`batched`).
    batch: Option<Arc<BatchSync>>,
}

impl SessionFiles {
    /// Opens `<shared_dir>/websessions`, creating it `0700` if needed.
    pub fn open(shared_dir: &Path, opts: SessionOptions) -> Result<SessionFiles, SessionError> {
        let store = Store::open(
            shared_dir.join(SESSIONS_DIR),
            StoreOptions {
                fsync: opts.fsync,
                max_payload: opts.max_record_bytes,
            },
        )?;
        Ok(SessionFiles {
            store,
            opts,
            batch: None,
        })
    }

    /// From now on, writes return once the file is renamed into place (visible to every node)
    /// and leave its fsync, and its directory's, to `sync` (at most [`BatchSync::bound`] later):
    /// `websession.sync = batched`. Without it, a write returns only once it is durable.
    pub fn with_batch_sync(self, sync: Arc<BatchSync>) -> Result<SessionFiles, SessionError> {
        let store = Store::open(
            self.store.root(),
            StoreOptions {
                fsync: false,
                ..*self.store.options()
            },
        )?;
        Ok(SessionFiles {
            store,
            opts: self.opts,
            batch: Some(sync),
        })
    }

    /// The deferred sync of `batched` writes, if any.
    pub fn batch_sync(&self) -> Option<&Arc<BatchSync>> {
        self.batch.as_ref()
    }

    /// Hands a file just written to the deferred sync (`batched`); nothing otherwise.
    fn written(&self, hash: &KeyHash) {
        if let Some(b) = &self.batch {
            b.enqueue(self.store.path_for(hash));
        }
    }

    /// The `websessions` directory (the root to watch).
    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// The file a token's session lives in (named by the hash), or `None` for a malformed token.
    pub fn path_for(&self, token: &str) -> Option<PathBuf> {
        token_hash(token).map(|h| self.store.path_for(&h))
    }

    /// The session hash a watcher change refers to (`None` for temp files, quarantine, ...).
    pub fn hash_of_change(change: &Change) -> Option<KeyHash> {
        KeyHash::from_relative_path(&change.path)
    }

    /// Stores a new session under a fresh random token and returns the token.
    pub fn create(&self, record: &SessionRecord) -> Result<SessionToken, SessionError> {
        let body = encode(record)?;
        loop {
            let token = new_token()?;
            let hash = token.hash();
            if self
                .store
                .create_new(&hash, &body, Some(expiry_time(record)))?
            {
                self.written(&hash);
                return Ok(token);
            }
            // A 2^-256 collision: draw again rather than overwrite someone's session.
        }
    }

    /// Reads a session; `None` if unknown, expired at `now_ms`, or the token is malformed.
    /// A corrupt file is quarantined and reported as an error ([`SessionError::is_corrupt`]).
    pub fn get(&self, token: &str, now_ms: u64) -> Result<Option<SessionRecord>, SessionError> {
        let Some(hash) = token_hash(token) else {
            return Ok(None);
        };
        let found = self.store.get_with(&hash, decode)?;
        Ok(found
            .map(|(record, _)| record)
            .filter(|r| r.expires_at > now_ms))
    }

    /// Writes a session under `token`, whether or not it exists (e.g. imported from the master).
    pub fn put(&self, token: &str, record: &SessionRecord) -> Result<(), SessionError> {
        let hash = token_hash(token).ok_or(SessionError::MalformedToken)?;
        let body = encode(record)?;
        self.store.put(&hash, &body, Some(expiry_time(record)))?;
        self.written(&hash);
        Ok(())
    }

    /// Replaces an existing session (e.g. a new `expires_at`); `false` if it does not exist,
    /// so a refresh racing a logout does not log the user back in.
    pub fn refresh(&self, token: &str, record: &SessionRecord) -> Result<bool, SessionError> {
        let hash = token_hash(token).ok_or(SessionError::MalformedToken)?;
        let body = encode(record)?;
        let replaced = self
            .store
            .replace_existing(&hash, &body, Some(expiry_time(record)))?;
        if replaced {
            self.written(&hash);
        }
        Ok(replaced)
    }

    /// Deletes a session (logout); `false` if it was not there or the token is malformed.
    pub fn delete(&self, token: &str) -> Result<bool, SessionError> {
        let Some(hash) = token_hash(token) else {
            return Ok(false);
        };
        Ok(self.store.remove(&hash)?)
    }

    /// Removes expired sessions, quarantined files past their retention and stale temp files.
    /// Run it on a background thread; see [`cleanup`] for the guarantees.
    pub fn cleanup(&self, now_ms: u64) -> CleanupReport {
        cleanup::run(&self.store, &self.opts, now_ms, &mut |_| {})
    }

    #[cfg(test)]
    pub(crate) fn cleanup_with_hook(
        &self,
        now_ms: u64,
        hook: &mut dyn FnMut(&Path),
    ) -> CleanupReport {
        cleanup::run(&self.store, &self.opts, now_ms, hook)
    }
}

fn encode(record: &SessionRecord) -> Result<Vec<u8>, SessionError> {
    serde_json::to_vec(record).map_err(SessionError::Encode)
}

fn decode(bytes: &[u8]) -> Result<SessionRecord, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("not a session record: {e}"))
}

fn expiry_time(record: &SessionRecord) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(record.expires_at)
}

#[cfg(test)]
mod tests;
