//! The messages of a batch (`POST /v1/peer/batch`): [`PeerMessage`], borrowed from the batch
//! body and decoded once; its encoder (the outbox payload, without the seq); and the batch
//! body's encoder, which splices the stored payloads in without re-serialising them.

use std::borrow::Cow;
use std::io::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::PluginCall;
use crate::index::{Kind, RawDoc};

/// Which kind of message: the `kind` field, and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Eviction,
    Flush,
    Index,
    Event,
    Plugin,
    /// A kind this version does not know (a newer sender) or no kind at all.
    Unknown,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Eviction => "eviction",
            MessageKind::Flush => "flush",
            MessageKind::Index => "index",
            MessageKind::Event => "event",
            MessageKind::Plugin => "plugin",
            MessageKind::Unknown => "unknown",
        }
    }

    fn parse(kind: Option<&str>) -> MessageKind {
        match kind {
            Some("eviction") => MessageKind::Eviction,
            Some("flush") => MessageKind::Flush,
            Some("index") => MessageKind::Index,
            Some("event") => MessageKind::Event,
            Some("plugin") => MessageKind::Plugin,
            _ => MessageKind::Unknown,
        }
    }
}

/// An index document as a message carries it: the JSON text as received (decoding), or a
/// parsed value (a local write, encoding). Either serialises to the same bytes.
#[derive(Debug, Clone, Copy)]
pub enum Doc<'a> {
    Raw(&'a RawValue),
    Value(&'a serde_json::Value),
}

impl Serialize for Doc<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Raw(r) => r.serialize(s),
            Doc::Value(v) => v.serialize(s),
        }
    }
}

/// What a message asks the receiver to do. Decoded once from a batch, borrowing from its body
/// (documents and events stay the bytes that were sent); built from borrowed parts to encode.
#[derive(Debug, Clone)]
pub enum PeerMessage<'a> {
    /// Evict these keys of one cache.
    Eviction {
        cache: Cow<'a, str>,
        keys: Vec<Cow<'a, str>>,
    },
    /// Empty one cache.
    Flush { cache: Cow<'a, str> },
    /// Upsert (`doc`) or delete (`deleted`) one index document at `version`. Decoded messages
    /// carry exactly one of the two.
    Index {
        index: Kind,
        id: Cow<'a, str>,
        version: u64,
        deleted: bool,
        doc: Option<Doc<'a>>,
    },
    /// One stream event of the batch's origin, with the origin's event sequence number.
    /// `event` is Gerrit's event JSON (an object), kept byte for byte: validated by the event
    /// log when it was appended (sending) or by the decoder (receiving).
    Event { event_seq: u64, event: &'a [u8] },
    /// A call of Gerrit's high-availability plugin from the origin's master, to replay into
    /// the receiver's own master.
    Plugin(PluginCall),
}

/// Why a message of a batch cannot be read. Every variant but [`MessageError::NoSeq`] names a
/// message the receiver refuses for good (the sender dead-letters it).
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Without a seq the message cannot be named (refused as seq 0).
    #[error("message without a valid seq: {0}")]
    NoSeq(#[source] serde_json::Error),
    #[error("cannot read message: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error(
        "cannot read message: unknown kind {0:?} (known: eviction, flush, index, event, plugin)"
    )]
    UnknownKind(Option<String>),
    #[error("cannot read message: {kind} message without `{field}`")]
    Missing {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{0}")]
    BadIndex(#[source] crate::index::IndexError),
    #[error("cannot read message: {0}")]
    BadPlugin(#[source] super::plugin::PluginCallError),
    #[error("index message {kind}/{id} must carry either a doc or deleted: true")]
    DocOrDeleted { kind: Kind, id: String },
}

/// One message of a batch after its one decode: the seq and kind name it even when its body
/// cannot be read.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub seq: u64,
    pub kind: MessageKind,
    pub body: Result<PeerMessage<'a>, MessageError>,
}

/// Every field any kind may carry. One pass over the message fills it; the kind then says
/// which fields must be there. (serde's internally tagged enums buffer the whole message and
/// cannot carry a `RawValue`, so they would cost a second parse of documents and events.)
#[derive(Deserialize)]
struct Fields<'a> {
    seq: Option<u64>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cache: Option<Cow<'a, str>>,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(borrow, default)]
    index: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    version: Option<u64>,
    #[serde(default)]
    deleted: bool,
    /// `"doc": null` reads as `None`, as it did with `Option<Value>`.
    #[serde(borrow, default)]
    doc: Option<&'a RawValue>,
    event_seq: Option<u64>,
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    created_on: Option<u64>,
    #[serde(default)]
    body: Option<String>,
}

/// Decodes one message of a batch (`raw` is one element of its `messages`). A message whose
/// fields cannot be read at all is read a second time, for its seq and kind only, so its
/// refusal can name it (the cold path).
pub fn decode_message(raw: &str) -> Result<Envelope<'_>, MessageError> {
    let f: Fields = match serde_json::from_str(raw) {
        Ok(f) => f,
        Err(e) => {
            #[derive(Deserialize)]
            struct Head<'a> {
                seq: u64,
                #[serde(borrow, default)]
                kind: Option<Cow<'a, str>>,
            }
            let head: Head = serde_json::from_str(raw).map_err(MessageError::NoSeq)?;
            return Ok(Envelope {
                seq: head.seq,
                kind: MessageKind::parse(head.kind.as_deref()),
                body: Err(MessageError::Malformed(e)),
            });
        }
    };
    let Some(seq) = f.seq else {
        return Err(MessageError::NoSeq(serde::de::Error::missing_field("seq")));
    };
    let kind = MessageKind::parse(f.kind.as_deref());
    Ok(Envelope {
        seq,
        kind,
        body: body(kind, f),
    })
}

fn body(kind: MessageKind, f: Fields<'_>) -> Result<PeerMessage<'_>, MessageError> {
    let missing = |field| MessageError::Missing {
        kind: kind.as_str(),
        field,
    };
    match kind {
        MessageKind::Eviction => Ok(PeerMessage::Eviction {
            cache: f.cache.ok_or_else(|| missing("cache"))?,
            keys: f
                .keys
                .ok_or_else(|| missing("keys"))?
                .into_iter()
                .map(Cow::Owned)
                .collect(),
        }),
        MessageKind::Flush => Ok(PeerMessage::Flush {
            cache: f.cache.ok_or_else(|| missing("cache"))?,
        }),
        MessageKind::Index => {
            let index: Kind = f
                .index
                .ok_or_else(|| missing("index"))?
                .parse()
                .map_err(MessageError::BadIndex)?;
            let id = f.id.ok_or_else(|| missing("id"))?;
            let version = f.version.ok_or_else(|| missing("version"))?;
            if f.deleted == f.doc.is_some() {
                return Err(MessageError::DocOrDeleted {
                    kind: index,
                    id: id.into_owned(),
                });
            }
            Ok(PeerMessage::Index {
                index,
                id,
                version,
                deleted: f.deleted,
                doc: f.doc.map(Doc::Raw),
            })
        }
        MessageKind::Event => Ok(PeerMessage::Event {
            event_seq: f.event_seq.ok_or_else(|| missing("event_seq"))?,
            event: f.event.ok_or_else(|| missing("event"))?.get().as_bytes(),
        }),
        MessageKind::Plugin => {
            let call = PluginCall {
                method: f.method.ok_or_else(|| missing("method"))?,
                path: f.path.ok_or_else(|| missing("path"))?,
                content_type: f.content_type,
                created_on: f.created_on,
                body: f.body,
            };
            call.check().map_err(MessageError::BadPlugin)?;
            Ok(PeerMessage::Plugin(call))
        }
        MessageKind::Unknown => Err(MessageError::UnknownKind(f.kind.map(Cow::into_owned))),
    }
}

impl<'a> PeerMessage<'a> {
    pub fn kind(&self) -> MessageKind {
        match self {
            PeerMessage::Eviction { .. } => MessageKind::Eviction,
            PeerMessage::Flush { .. } => MessageKind::Flush,
            PeerMessage::Index { .. } => MessageKind::Index,
            PeerMessage::Event { .. } => MessageKind::Event,
            PeerMessage::Plugin(_) => MessageKind::Plugin,
        }
    }

    /// The outbox payload of this message: the message as a batch carries it, without its
    /// seq (the forwarder adds it, [`encode_batch`]). Documents and events are written as
    /// they are, never re-serialised from a copy.
    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        enum Tagged<'b> {
            Eviction {
                cache: &'b str,
                keys: &'b [Cow<'b, str>],
            },
            Flush {
                cache: &'b str,
            },
            Index {
                index: &'static str,
                id: &'b str,
                version: u64,
                #[serde(skip_serializing_if = "std::ops::Not::not")]
                deleted: bool,
                #[serde(skip_serializing_if = "Option::is_none")]
                doc: Option<Doc<'b>>,
            },
            Plugin(&'b PluginCall),
        }
        let tagged = match self {
            PeerMessage::Eviction { cache, keys } => Tagged::Eviction { cache, keys },
            PeerMessage::Flush { cache } => Tagged::Flush { cache },
            PeerMessage::Index {
                index,
                id,
                version,
                deleted,
                doc,
            } => Tagged::Index {
                index: index.as_str(),
                id,
                version: *version,
                deleted: *deleted,
                doc: *doc,
            },
            PeerMessage::Plugin(call) => Tagged::Plugin(call),
            PeerMessage::Event { event_seq, event } => {
                // The event's bytes are a JSON object already: spliced in unchanged.
                let mut out = Vec::with_capacity(event.len() + 48);
                let _ = write!(
                    out,
                    "{{\"kind\":\"event\",\"event_seq\":{event_seq},\"event\":"
                );
                out.extend_from_slice(event);
                out.push(b'}');
                return out;
            }
        };
        // Strings, numbers and JSON values only: serialising cannot fail.
        serde_json::to_vec(&tagged).expect("a peer message serialises")
    }

    /// An index message as the index store applies it (the document's text as received).
    pub fn into_raw_doc(self) -> Option<(Kind, RawDoc)> {
        match self {
            PeerMessage::Index {
                index,
                id,
                version,
                deleted,
                doc,
            } => Some((
                index,
                RawDoc {
                    id: id.into_owned(),
                    version,
                    deleted,
                    source: doc.map(|d| match d {
                        Doc::Raw(r) => r.get().to_owned(),
                        Doc::Value(v) => v.to_string(),
                    }),
                },
            )),
            _ => None,
        }
    }
}

/// A batch as the receiver reads it: each message kept raw, so one bad message never spoils
/// the batch; [`decode_message`] reads each one once.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch<'a> {
    pub origin: String,
    #[serde(borrow)]
    pub messages: Vec<&'a RawValue>,
}

/// The body of `POST /v1/peer/batch` around stored payloads ([`PeerMessage::encode`]), each
/// given its seq, without re-serialising them. A payload that is not a JSON object (a bug or a
/// corrupt record) breaks the batch's JSON, the peer answers 400, and the forwarder's
/// bisection sets that message aside alone.
pub fn encode_batch<'p, I>(origin: &str, messages: I) -> Vec<u8>
where
    I: Iterator<Item = (u64, &'p [u8])> + Clone,
{
    let size: usize = messages.clone().map(|(_, p)| p.len() + 24).sum();
    let mut out = Vec::with_capacity(size + 64);
    out.extend_from_slice(b"{\"origin\":");
    serde_json::to_writer(&mut out, origin).expect("a string serialises");
    out.extend_from_slice(b",\"messages\":[");
    for (i, (seq, payload)) in messages.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_message(&mut out, seq, payload);
    }
    out.extend_from_slice(b"]}");
    out
}

/// One message of a batch: `{"seq":N,` then the payload's fields.
pub(super) fn push_message(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let _ = write!(out, "{{\"seq\":{seq}");
    match payload.strip_prefix(b"{") {
        Some(rest) if rest.first().is_some_and(|c| *c != b'}') => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        _ => out.push(b'}'),
    }
}
