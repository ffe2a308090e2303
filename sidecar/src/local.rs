//! The master's mutations, the mirror of `receiver`: each one is applied to this node's stores,
//! queued durably for every peer (the outbox's group commit), and only then answered
//! ([`Accepted`]). Nothing here waits on a peer. The HTTP handlers (`api/local`, `api/index`,
//! `api/events`, `api/sessions`) parse a request, call one of these, and map the result.

use std::borrow::Cow;
use std::sync::Arc;

use crate::cache::{CacheError, Caches};
use crate::event_relay::{EventRelay, RelayStopped};
use crate::events::{EventError, EventLog, LocalEvent};
use serde_json::value::RawValue;

use crate::index::{IndexError, IndexStore, Kind, RawDoc, WriteOutcome};
use crate::metrics::Metrics;
use crate::peers::outbox::{Outbox, OutboxError};
use crate::sessions::{Sessions, SessionsError, SESSIONS_CACHE};
use crate::wire::{Doc, Family, PeerMessage, PluginCall};

/// A mutation applied here and, when `forwarded`, durable in every peer's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The mutation is (or the mutations are) queued for the peers.
    pub forwarded: bool,
    /// The outbox seq of the (last) queued message; `None` when nothing was queued (or there is
    /// no peer).
    pub seq: Option<u64>,
}

impl Accepted {
    const LOCAL_ONLY: Accepted = Accepted {
        forwarded: false,
        seq: None,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Events(#[from] EventError),
    #[error(transparent)]
    Sessions(#[from] SessionsError),
    /// The mutation is applied here but could not be queued for the peers.
    #[error("cannot queue for peers: {0}")]
    Queue(#[from] OutboxError),
    /// The event is in the log, but the relay stopped before queueing it for the peers.
    #[error(transparent)]
    Relay(#[from] RelayStopped),
}

/// The stores a local mutation touches, and the outbox.
pub struct Local {
    pub caches: Arc<Caches>,
    pub index: Arc<IndexStore>,
    /// `[index] synchronize`.
    pub index_synchronize: bool,
    pub events: Arc<EventLog>,
    /// Moves local events into the outbox; `None` when `[event] synchronize` is off.
    pub event_relay: Option<Arc<EventRelay>>,
    pub sessions: Arc<Sessions>,
    pub outbox: Arc<Outbox>,
    pub metrics: Arc<Metrics>,
}

impl Local {
    /// Evicts `keys` of `cache` here; forwarded when the cache is (Gerrit's rule) and there
    /// are keys. Returns how many entries were evicted here.
    pub async fn evict(
        &self,
        cache: &str,
        keys: &[String],
    ) -> Result<(usize, Accepted), LocalError> {
        check_cache(cache)?;
        let evicted = self.caches.evict(cache, keys);
        let forwarded = self.caches.is_forwarded(cache);
        let mut seq = None;
        if forwarded && !keys.is_empty() {
            let keys = keys.iter().map(|k| Cow::Borrowed(k.as_str())).collect();
            let msg = PeerMessage::Eviction {
                cache: Cow::Borrowed(cache),
                keys,
            };
            seq = self.queue(&msg).await?;
        }
        self.count("eviction", 1);
        Ok((evicted, Accepted { forwarded, seq }))
    }

    /// Empties `cache` here; forwarded when the cache is.
    pub async fn flush(&self, cache: &str) -> Result<Accepted, LocalError> {
        check_cache(cache)?;
        self.caches.flush(cache);
        let forwarded = self.caches.is_forwarded(cache);
        let mut seq = None;
        if forwarded {
            let msg = PeerMessage::Flush {
                cache: Cow::Borrowed(cache),
            };
            seq = self.queue(&msg).await?;
        }
        self.count("flush", 1);
        Ok(Accepted { forwarded, seq })
    }

    /// Writes index documents and tombstones (a put, a delete, a bulk load) under the version
    /// rule; only the writes applied here are queued for the peers (one group commit), when
    /// `[index] synchronize`. `forwarded` says whether the index is synchronized. Each
    /// document's JSON text is used as the master sent it: spliced into its peer message and
    /// stored as `_source` (parsed once, for the indexed fields), never serialized again.
    pub async fn index_write(
        &self,
        kind: Kind,
        docs: Vec<LocalIndexDoc>,
    ) -> Result<(Vec<WriteOutcome>, Accepted), LocalError> {
        // Encoded before the write, from borrowed documents, so they are not copied for it; a
        // bulk load's encoding is CPU work of milliseconds, so it runs off the executor.
        let (docs, payloads) = if !self.index_synchronize {
            (docs, Vec::new())
        } else if docs.len() < BLOCKING_PREP_DOCS {
            let payloads = encode_index_messages(kind, &docs);
            (docs, payloads)
        } else {
            tokio::task::spawn_blocking(move || {
                let payloads = encode_index_messages(kind, &docs);
                (docs, payloads)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        };
        let raw = docs.into_iter().map(LocalIndexDoc::into_raw).collect();
        let outcomes = self.index.apply_raw(kind, raw).await?;
        self.metrics
            .index_outcomes(kind.as_str(), "local", &outcomes);
        self.count("index", outcomes.len() as u64);
        if !self.index_synchronize {
            return Ok((outcomes, Accepted::LOCAL_ONLY));
        }
        let applied: Vec<Vec<u8>> = payloads
            .into_iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == WriteOutcome::Applied)
            .map(|(p, _)| p)
            .collect();
        let seq = self.outbox.append_many(applied).await?;
        Ok((
            outcomes,
            Accepted {
                forwarded: true,
                seq,
            },
        ))
    }

    /// Appends one Gerrit event to the log (fsync'd) and, when `[event] synchronize`, waits
    /// until the relay has queued it for every peer (the relay keeps events in seq order).
    pub async fn publish_event(&self, body: &[u8]) -> Result<(LocalEvent, Accepted), LocalError> {
        let event = self.events.append_local_event(body).await?;
        self.metrics
            .events_appended
            .get_or_create(&Metrics::kind("local"))
            .inc();
        let accepted = match &self.event_relay {
            Some(relay) => {
                relay.wait_queued(event.id.seq).await?;
                Accepted {
                    forwarded: true,
                    seq: None,
                }
            }
            None => Accepted::LOCAL_ONLY,
        };
        self.count("event", 1);
        Ok((event, accepted))
    }

    /// Extends a web session and merges `fields` into it; peers drop their cached copy.
    /// `None`: no such session.
    pub async fn refresh(
        &self,
        token: &str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<shared_fs::SessionRecord>, LocalError> {
        let Some(rec) = self.sessions.refresh(token, fields).await? else {
            return Ok(None);
        };
        if self.sessions.synchronize() {
            if let Some(hash) = shared_fs::sessions::token_hash(token) {
                self.forget_session(hash.as_str()).await?;
            }
        }
        Ok(Some(rec))
    }

    /// Logs a session out everywhere: removes its file, drops the cached copy here, and queues
    /// its hash for every peer so they drop theirs at once. `None`: no such session.
    pub async fn logout(&self, token: &str) -> Result<Option<Accepted>, LocalError> {
        let Some((true, hash)) = self.sessions.delete(token).await? else {
            return Ok(None);
        };
        let forwarded = self.sessions.synchronize();
        let mut seq = None;
        if forwarded {
            seq = self.forget_session(hash.as_str()).await?;
        }
        self.count("session_delete", 1);
        Ok(Some(Accepted { forwarded, seq }))
    }

    /// A session's change reaches peers as an eviction of `web_sessions` keyed by its hash.
    async fn forget_session(&self, hash: &str) -> Result<Option<u64>, LocalError> {
        let msg = PeerMessage::Eviction {
            cache: Cow::Borrowed(SESSIONS_CACHE),
            keys: vec![Cow::Borrowed(hash)],
        };
        self.queue(&msg).await
    }

    /// Durably queues a message for every peer (group-committed with concurrent requests).
    /// A call of the high-availability plugin from this node's master (read by
    /// `gerrit::ingress`): an eviction also evicts this node's own entry of that key, an event
    /// also goes to this node's log (first: the log checks what it needs), then the call is
    /// queued for every peer, which replays it into its own master.
    pub async fn plugin_call(&self, call: PluginCall) -> Result<Accepted, LocalError> {
        if let Some((cache, key)) = crate::gerrit::ingress::cache_eviction(&call) {
            self.caches.evict(cache, &[key]);
        }
        if call.family() == Family::Event {
            let body = call.body.as_deref().unwrap_or_default();
            self.publish_event(body.as_bytes()).await?;
        }
        let family = call.family();
        let seq = self.queue(&PeerMessage::Plugin(call)).await?;
        self.metrics
            .gerrit
            .calls_received
            .get_or_create(&Metrics::kind(family.as_str()))
            .inc();
        Ok(Accepted {
            forwarded: true,
            seq,
        })
    }

    async fn queue(&self, msg: &PeerMessage<'_>) -> Result<Option<u64>, LocalError> {
        Ok(self.outbox.append(msg.encode()).await?)
    }

    fn count(&self, kind: &str, n: u64) {
        self.metrics
            .local_mutations
            .get_or_create(&Metrics::kind(kind))
            .inc_by(n);
    }
}

fn check_cache(cache: &str) -> Result<(), CacheError> {
    if crate::wire::valid_cache_name(cache) {
        Ok(())
    } else {
        Err(CacheError::BadName(cache.to_owned()))
    }
}

/// From this many documents on, a write's peer messages are encoded on a blocking thread.
const BLOCKING_PREP_DOCS: usize = 256;

/// One document of a local index write: an upsert (`doc`, the JSON text as the master sent
/// it) or a delete (`deleted`; a `doc` beside it is ignored).
#[derive(Debug)]
pub struct LocalIndexDoc {
    pub id: String,
    pub version: u64,
    pub deleted: bool,
    pub doc: Option<Box<RawValue>>,
}

impl LocalIndexDoc {
    fn into_raw(self) -> RawDoc {
        RawDoc {
            id: self.id,
            version: self.version,
            deleted: self.deleted,
            source: match self.deleted {
                true => None,
                false => self.doc.map(|d| Box::<str>::from(d).into_string()),
            },
        }
    }
}

/// The peer message of each document, in order.
fn encode_index_messages(kind: Kind, docs: &[LocalIndexDoc]) -> Vec<Vec<u8>> {
    docs.iter()
        .map(|d| {
            PeerMessage::Index {
                index: kind,
                id: Cow::Borrowed(&d.id),
                version: d.version,
                deleted: d.deleted,
                doc: match d.deleted {
                    true => None,
                    false => d.doc.as_deref().map(Doc::Raw),
                },
            }
            .encode()
        })
        .collect()
}

#[cfg(test)]
mod tests;
