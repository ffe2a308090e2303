//! Secondary index store (tantivy): versioned documents per kind, Gerrit-style queries.
//!
//! The only module of the crate that imports tantivy. Its public surface is [`IndexStore`] and
//! the plain data types below; nothing here knows about HTTP or peers.
//!
//! Code map:
//! - `schema`: the fields of each [`Kind`] and how a JSON document becomes a tantivy document;
//!   `dates`: timestamps and Gerrit ages;
//! - `query`: the Gerrit query subset, parsed to an AST; `compile`: AST → tantivy queries;
//! - `versions`: the in-memory version map (id → version, deleted) and the digest buckets;
//! - `journal`: the node-local write-ahead journal that makes an accepted write survive SIGKILL;
//! - `writer`: the dedicated writer thread that owns every decision, the journal and commits;
//! - `store`: [`IndexStore`], opening and the write API; `read`: get, search, digests, export;
//!   `topk`: the changes' top-k (newest first) with per-segment bounds.
//!
//! Invariants: only the writer thread mutates the version map or an `IndexWriter`; a write is
//! acknowledged only after its journal record is fsync'd; a write never rolls a version back.
//!
//! Semantics worth knowing:
//! - `get` is exact at once (version map + uncommitted documents); `search` is near-real-time,
//!   within `refresh_interval`. A write can be seen by `get` a moment before its fsync returns;
//!   it is acknowledged only after.
//! - A tombstone is forgotten after `tombstone_ttl`; after that a late older write of that id is
//!   accepted again, so the TTL must outlive any partition or peer backlog.
//! - Documents are kept as the JSON text given (`apply_raw`, `apply_each_raw`) or their `Value`
//!   serialized (`apply`, `upsert`), and returned parsed back to a `Value`: equal as JSON values,
//!   but object keys come back sorted (serde_json without `preserve_order`).
//! - Changes are returned by `updated` then `number`, both descending (`topk`); other kinds by id.
//! - Dropping the store without `shutdown` lets the writer commit and exit in the background;
//!   reopening the same directory before it is done fails on tantivy's writer lock.

mod compile;
pub(crate) mod dates;
pub(crate) mod journal;
pub(crate) mod query;
mod read;
mod schema;
mod store;
mod topk;
mod versions;
mod writer;

#[cfg(test)]
mod tests_digest;
#[cfg(test)]
mod tests_fixtures;
#[cfg(test)]
mod tests_query;
#[cfg(test)]
mod tests_store;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) use dates::parse_timestamp;
pub use query::QueryError;
pub use read::MAX_LIMIT;
pub use store::IndexStore;
pub use versions::{BucketDigest, RangeDigest, BUCKETS};

/// The four secondary indexes of a code-review server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Changes,
    Accounts,
    Groups,
    Projects,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Changes, Kind::Accounts, Kind::Groups, Kind::Projects];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Changes => "changes",
            Kind::Accounts => "accounts",
            Kind::Groups => "groups",
            Kind::Projects => "projects",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn from_u8(b: u8) -> Option<Kind> {
        Kind::ALL.get(b as usize).copied()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = IndexError;

    fn from_str(s: &str) -> Result<Kind, IndexError> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| IndexError::UnknownKind(s.to_string()))
    }
}

/// Errors of the index store. The HTTP layer maps them: `BadQuery` and `BadDocument` → 400,
/// `UnknownKind` → 404, `DocumentTooLarge` → 413, `BadOptions` → a configuration error,
/// `Internal` and `WriterStopped` → 500.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("bad query: {0}")]
    BadQuery(#[from] QueryError),
    #[error("unknown index kind '{0}' (expected changes, accounts, groups or projects)")]
    UnknownKind(String),
    #[error("document {kind}/{id} is {size} bytes, over the limit of {max} bytes")]
    DocumentTooLarge {
        kind: Kind,
        id: String,
        size: usize,
        max: usize,
    },
    #[error("bad document {kind}/{id}: {reason}")]
    BadDocument {
        kind: Kind,
        id: String,
        reason: String,
    },
    #[error("bad index options: {0}")]
    BadOptions(String),
    #[error("index {context}: {source}")]
    Internal {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("index writer is not running (shut down or failed)")]
    WriterStopped,
}

impl IndexError {
    fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> IndexError {
        IndexError::Internal {
            context: context.into(),
            source: source.into(),
        }
    }
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// Tuning of an [`IndexStore`].
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// How soon a write becomes visible to `search` (near-real-time commit cadence); ≤ 500 ms.
    pub refresh_interval: Duration,
    /// How long a delete's tombstone is kept (it must outlive any partition or outage after
    /// which a peer could still deliver an older version of that document).
    pub tombstone_ttl: Duration,
    /// Largest accepted document, in bytes of its JSON serialization.
    pub max_doc_bytes: usize,
    /// Where a full disk is reported (the node's, shared with the other stores).
    pub disk: std::sync::Arc<crate::durable::DiskWatch>,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            refresh_interval: Duration::from_millis(200),
            tombstone_ttl: Duration::from_secs(7 * 24 * 3600),
            max_doc_bytes: 1024 * 1024,
            disk: std::sync::Arc::default(),
        }
    }
}

impl IndexOptions {
    pub const MAX_REFRESH_INTERVAL: Duration = Duration::from_millis(500);

    fn validate(&self) -> Result<()> {
        if self.refresh_interval.is_zero() || self.refresh_interval > Self::MAX_REFRESH_INTERVAL {
            return Err(IndexError::BadOptions(format!(
                "refresh_interval {:?} must be above 0 and at most 500ms",
                self.refresh_interval
            )));
        }
        if self.max_doc_bytes == 0 {
            return Err(IndexError::BadOptions(
                "max_doc_bytes must be above 0".into(),
            ));
        }
        Ok(())
    }
}

/// Result of a write: applied, or ignored because the stored version is not older.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    Applied,
    Stale { stored_version: u64 },
}

/// A live document as stored: the JSON given to `upsert`, with its id and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDoc {
    pub id: String,
    pub version: u64,
    pub doc: serde_json::Value,
}

/// Answer to a query: `total` matches, the first `limit` of them in `results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub total: usize,
    pub results: Vec<StoredDoc>,
}

/// One document or tombstone for anti-entropy transfer (the shape of the `index` wire message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedDoc {
    pub id: String,
    pub version: u64,
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<serde_json::Value>,
    /// For a tombstone: when it was deleted where it comes from (ms since the epoch), so every
    /// node compacts it at about the same time; absent means now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
}

/// A document or tombstone as a peer's index message carries it: the document's JSON text is
/// kept as received, parsed once and stored as it is (no second serialization). See
/// [`IndexStore::apply_each_raw`].
#[derive(Debug, Clone, PartialEq)]
pub struct RawDoc {
    pub id: String,
    pub version: u64,
    pub deleted: bool,
    /// The document's JSON text (an object) for an upsert.
    pub source: Option<String>,
}

/// Outcome counts of a `bulk_upsert`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkOutcome {
    pub applied: u64,
    pub stale: u64,
}

/// Counters of one kind, as the writer sees them right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KindStats {
    /// Live documents (including writes not yet committed).
    pub docs: u64,
    pub tombstones: u64,
    /// Writes accepted but not yet in a tantivy commit (not yet visible to `search`).
    pub pending: u64,
}

/// Counters of the whole store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IndexStats {
    pub kinds: Vec<(Kind, KindStats)>,
    pub commits: u64,
    pub last_commit_micros: u64,
    pub journal_bytes: u64,
}
