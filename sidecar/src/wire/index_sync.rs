//! Anti-entropy of the index (`POST /v1/peer/index/*`, signed like batches). Digests and
//! entries come from the index store's 256 buckets (bucket = first byte of SHA-256(id)).

use serde::{Deserialize, Serialize};

pub use crate::index::{ExportedDoc, Kind, RangeDigest};

/// `POST /v1/peer/index/digest` → [`RangeDigest`] of every bucket of `kind`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestRequest {
    pub kind: Kind,
}

/// `POST /v1/peer/index/entries` → [`EntriesReply`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesRequest {
    pub kind: Kind,
    pub buckets: Vec<u8>,
}

/// `(id, version, deleted)` of every document and tombstone of each bucket asked for,
/// sorted by id within a bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EntriesReply {
    pub buckets: Vec<BucketEntries>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketEntries {
    pub bucket: u8,
    pub entries: Vec<(String, u64, bool)>,
}

/// `POST /v1/peer/index/export` → [`ExportReply`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    pub kind: Kind,
    pub ids: Vec<String>,
}

/// The current state of the first `consumed` ids asked for (unknown ids are left out); the
/// reply stops early at a size limit, and the caller asks again for the rest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportReply {
    pub docs: Vec<ExportedDoc>,
    pub consumed: usize,
}

/// `POST /v1/peer/index/apply` → [`ApplyReply`]: documents and tombstones this node has
/// newer than the peer, applied there under the version rule (never forwarded further).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    pub kind: Kind,
    pub docs: Vec<ExportedDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReply {
    pub applied: u64,
    pub stale: u64,
}

/// Writes an [`ExportReply`] document by document, so the answering node knows its size as it
/// grows and stops at a bound; the bytes are those of serialising the [`ExportReply`].
pub struct ExportReplyWriter {
    out: Vec<u8>,
    docs: usize,
}

impl Default for ExportReplyWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ExportReplyWriter {
    pub fn new() -> Self {
        let mut out = Vec::with_capacity(64 << 10);
        out.extend_from_slice(b"{\"docs\":[");
        ExportReplyWriter { out, docs: 0 }
    }

    pub fn push(&mut self, doc: &ExportedDoc) {
        if self.docs > 0 {
            self.out.push(b',');
        }
        self.docs += 1;
        // Strings, numbers and JSON values only: serialising cannot fail.
        serde_json::to_writer(&mut self.out, doc).expect("a document serialises");
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs == 0
    }

    pub fn finish(mut self, consumed: usize) -> Vec<u8> {
        use std::io::Write as _;
        let _ = write!(self.out, "],\"consumed\":{consumed}}}");
        self.out
    }
}
