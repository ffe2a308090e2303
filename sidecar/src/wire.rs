//! Network message types exchanged between peer sidecars (`POST /v1/peer/batch`).
//! Golden-tested against `fixtures/wire/`; change them only compatibly.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Instance ids name directories and metric labels, so they are kept to a safe alphabet.
pub fn valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && id != "."
        && id != ".."
}

/// Cache names travel in URLs, metric labels and messages: a safe alphabet, bounded length.
pub fn valid_cache_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// An ordered batch of messages from one origin, as sent by the origin's forwarder.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch<'a> {
    pub origin: String,
    /// Kept raw: each message is decoded on its own so one bad message never spoils the batch.
    #[serde(borrow)]
    pub messages: Vec<&'a RawValue>,
}

/// One message of a batch: its origin sequence number plus the body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub seq: u64,
    #[serde(flatten)]
    pub body: MessageBody,
}

impl Message {
    /// Decodes one message of a batch. An event is read without `flatten`, which cannot carry
    /// a `RawValue` (serde buffers flattened fields), so its bytes stay exactly as sent.
    pub fn decode(raw: &str) -> serde_json::Result<Message> {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(borrow, default)]
            kind: Option<std::borrow::Cow<'a, str>>,
        }
        #[derive(Deserialize)]
        struct EventMessage {
            seq: u64,
            event_seq: u64,
            event: Box<RawValue>,
        }
        if serde_json::from_str::<Kind>(raw)?.kind.as_deref() == Some("event") {
            let m: EventMessage = serde_json::from_str(raw)?;
            return Ok(Message {
                seq: m.seq,
                body: MessageBody::Event {
                    event_seq: m.event_seq,
                    event: m.event,
                },
            });
        }
        serde_json::from_str(raw)
    }
}

/// What a message asks the receiver to do. The `kind` tag names the variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageBody {
    /// Evict these keys of one cache.
    Eviction { cache: String, keys: Vec<String> },
    /// Empty one cache.
    Flush { cache: String },
    /// Upsert (`doc` present) or delete (`deleted`) one index document at `version`.
    Index {
        index: String,
        id: String,
        version: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        doc: Option<serde_json::Value>,
    },
    /// One stream event of the batch's origin, with the origin's event sequence number.
    /// `event` is Gerrit's event JSON, kept byte for byte.
    Event {
        event_seq: u64,
        event: Box<RawValue>,
    },
    /// One REST call of Gerrit's high-availability plugin, received from the origin's master,
    /// to be replayed into each receiver's own master.
    Plugin(PluginCall),
}

/// A call of the high-availability plugin (reference §1.2), as its origin's master sent it:
/// replayed verbatim (method, path, body, `Content-Type`, `Event-Created-On`) into the
/// receiver's master under that master's own plugin name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginCall {
    /// `POST` or `DELETE`.
    pub method: String,
    /// The path under `/plugins/<pluginName>/`, still percent-encoded as sent
    /// (e.g. `index/change/tools%2Fgerrit~42`).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The `Event-Created-On` header (epoch ms; stable-3.14 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_on: Option<u64>,
    /// The body as sent (JSON for index, event and cache calls; none for deletes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// The payload of an index message, byte for byte what serializing the
/// [`MessageBody::Index`] would give, from borrowed parts (a bulk load needs no copy of its
/// documents to queue them).
pub fn encode_index(
    index: &str,
    id: &str,
    version: u64,
    deleted: bool,
    doc: Option<&serde_json::Value>,
) -> serde_json::Result<Vec<u8>> {
    #[derive(Serialize)]
    struct IndexRef<'a> {
        kind: &'static str,
        index: &'a str,
        id: &'a str,
        version: u64,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        doc: Option<&'a serde_json::Value>,
    }
    serde_json::to_vec(&IndexRef {
        kind: "index",
        index,
        id,
        version,
        deleted,
        doc,
    })
}

/// The receiver's answer to a batch it accepted (HTTP 200).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchReply {
    /// Messages applied now.
    pub applied: u64,
    /// Messages already applied before (seq at or below the high-water mark).
    pub duplicates: u64,
    /// Messages refused for good (bad content, unknown kind): the sender sets them aside.
    #[serde(default)]
    pub rejected: Vec<Rejection>,
}

/// One message the receiver will never accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub seq: u64,
    pub error: String,
}

/// Anti-entropy requests (`POST /v1/peer/index/*`, signed like batches). Digests and entries
/// come from the index store's 256 buckets (bucket = first byte of SHA-256(id)).
pub mod index_sync {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_index_is_the_message_body_serialized() {
        let doc = serde_json::json!({"subject": "fix \"it\"", "n": 1, "a": [1, {"b": null}]});
        for (deleted, doc) in [(false, Some(doc)), (true, None)] {
            let body = MessageBody::Index {
                index: "changes".into(),
                id: "c/1~é".into(),
                version: 7,
                deleted,
                doc: doc.clone(),
            };
            assert_eq!(
                encode_index("changes", "c/1~é", 7, deleted, doc.as_ref()).unwrap(),
                serde_json::to_vec(&body).unwrap()
            );
        }
    }
}
