//! The receiving side of the transport: applies a peer's batch to this node's stores, in order,
//! idempotently on `(origin, seq)`, with each origin's high-water mark persisted in
//! `<data>/inbox/<origin>.hwm`. It never forwards what it receives. This is the one place
//! that applies peer messages to the stores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;

use crate::cache::Caches;
use crate::events::{AppendOutcome, EventError, EventLog};
use crate::index::{IndexError, IndexStore, Kind, RawDoc};
use crate::locks::LockExt;
use crate::metrics::Metrics;
use crate::wire::{decode_message, BatchReply, Envelope, MessageError, PeerMessage, Rejection};

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("`{0}` is not a valid origin instanceId")]
    BadOrigin(String),
    /// A peer cannot speak for this node: a batch naming it is forged or misrouted.
    #[error("a batch from origin `{0}` cannot come from a peer: that is this node's own id")]
    OwnOrigin(String),
    #[error("cannot persist the high-water mark of {origin}: {source}")]
    Persist {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// A store failed in a way that may pass (i/o, shutting down): the sender retries.
    #[error("cannot apply message {seq} of {origin}: {source}")]
    Store {
        origin: String,
        seq: u64,
        #[source]
        source: EventError,
    },
    #[error("cannot apply index documents: {0}")]
    Index(#[source] IndexError),
    /// The master's queue failed (i/o): the sender retries.
    #[error("cannot queue message {seq} of {origin} for the master: {source}")]
    Master {
        origin: String,
        seq: u64,
        #[source]
        source: crate::peers::outbox::OutboxError,
    },
}

/// Why a message was not applied.
enum ApplyError {
    /// For good: the sender sets the message aside.
    Refuse(String),
    /// For now (the event log's i/o, shutting down): the batch fails and the sender retries.
    Retry(EventError),
}

/// The stores a peer message may touch.
pub struct Stores {
    pub caches: Arc<Caches>,
    /// A peer's logout arrives as an eviction of `web_sessions` keyed by token hashes.
    pub sessions: Arc<crate::sessions::Sessions>,
    pub events: Arc<EventLog>,
    pub index: Arc<IndexStore>,
    /// This node's master's queues (`[gerrit] url`); plugin calls are dropped without one.
    pub master: Option<Arc<crate::gerrit::delivery::MasterQueues>>,
}

/// An index message of a batch, held back so the batch's documents are applied together.
struct IndexWrite {
    seq: u64,
    kind: Kind,
    doc: RawDoc,
}

pub struct Receiver {
    dir: PathBuf,
    stores: Stores,
    metrics: Arc<Metrics>,
    origins: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<OriginMark>>>>>,
}

/// An origin's high-water mark and its file (`<data>/inbox/<origin>.hwm`).
struct OriginMark {
    value: u64,
    /// Taken out while a blocking thread writes it.
    file: Option<crate::durable::Mark>,
}

/// Why one message is refused for good (the sender dead-letters it).
fn reject(seq: u64, error: impl Into<String>) -> Rejection {
    Rejection {
        seq,
        error: error.into(),
    }
}

impl Receiver {
    pub fn new(data_dir: &Path, stores: Stores, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let dir = data_dir.join("inbox");
        std::fs::create_dir_all(&dir)?;
        Ok(Receiver {
            dir,
            stores,
            metrics,
            origins: Mutex::new(HashMap::new()),
        })
    }

    /// The highest seq applied from an origin.
    pub async fn high_water_mark(&self, origin: &str) -> Option<u64> {
        let slot = self.slot(origin);
        let mut g = slot.lock().await;
        self.load(origin, &mut g).await.ok()
    }

    fn slot(&self, origin: &str) -> Arc<tokio::sync::Mutex<Option<OriginMark>>> {
        self.origins
            .locked()
            .entry(origin.to_owned())
            .or_default()
            .clone()
    }

    async fn load(&self, origin: &str, g: &mut Option<OriginMark>) -> Result<u64, ReceiveError> {
        if let Some(m) = g {
            return Ok(m.value);
        }
        let path = self.dir.join(format!("{origin}.hwm"));
        let (file, value) = tokio::task::spawn_blocking(move || crate::durable::Mark::open(&path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| ReceiveError::Persist {
                origin: origin.to_owned(),
                source,
            })?;
        *g = Some(OriginMark {
            value,
            file: Some(file),
        });
        Ok(value)
    }

    /// Applies a batch. Each message is decoded once, here; messages at or below the
    /// origin's high-water mark are duplicates; the others are applied in order. The mark is
    /// made durable before the reply.
    pub async fn apply_batch(
        &self,
        origin: &str,
        messages: &[&RawValue],
    ) -> Result<BatchReply, ReceiveError> {
        if !crate::wire::valid_instance_id(origin) {
            return Err(ReceiveError::BadOrigin(origin.to_owned()));
        }
        if origin == self.stores.events.instance_id() {
            self.forged("own_origin");
            tracing::error!(origin, "refused a batch naming this node as its origin");
            return Err(ReceiveError::OwnOrigin(origin.to_owned()));
        }
        let decoded: Vec<Result<Envelope, MessageError>> = messages
            .iter()
            .map(|raw| decode_message(raw.get()))
            .collect();
        let slot = self.slot(origin);
        // One batch per origin at a time: a retry racing its original cannot apply twice.
        let mut g = slot.lock().await;
        let mut hwm = self.load(origin, &mut g).await?;
        let start = hwm;
        let now_us = crate::plausible::now_us();
        let mut reply = BatchReply::default();
        let mut appended = self.append_events(origin, hwm, now_us, &decoded).await;
        let mut index_writes = Vec::new();
        let mut plugin_calls = PluginCalls::default();
        for env in decoded {
            let env = match env {
                Ok(env) => env,
                Err(e) => {
                    // Without a seq the message cannot be named; refuse it as seq 0.
                    tracing::warn!(origin, error = %e, "peer message without a seq");
                    reply.rejected.push(reject(0, e.to_string()));
                    continue;
                }
            };
            let (seq, kind) = (env.seq, env.kind.as_str());
            if !self.is_new(origin, (seq, kind), hwm, now_us, &mut reply) {
                continue;
            }
            let applied = match env.body {
                Err(e) => Err(ApplyError::Refuse(e.to_string())),
                Ok(msg @ PeerMessage::Index { .. }) => {
                    // Held back: the batch's documents go to the store together (one fsync).
                    if let Some((kind, doc)) = msg.into_raw_doc() {
                        index_writes.push(IndexWrite { seq, kind, doc });
                    }
                    hwm = seq;
                    continue;
                }
                Ok(PeerMessage::Plugin(call)) => {
                    // Held back: made durable in the master's queues together, before the reply.
                    if let Some((cache, key)) = crate::gerrit::ingress::cache_eviction(&call) {
                        self.stores.caches.evict(cache, &[key]);
                    }
                    plugin_calls.push(seq, call);
                    hwm = seq;
                    continue;
                }
                Ok(PeerMessage::Event { event_seq, event }) => match appended.remove(&seq) {
                    Some(r) => event_outcome(&self.metrics, r),
                    None => {
                        let r = self
                            .stores
                            .events
                            .append_remote(origin, event_seq, event)
                            .await;
                        event_outcome(&self.metrics, r)
                    }
                },
                Ok(msg) => self.apply_cache(&msg),
            };
            match applied {
                Ok(kind) => self.applied(origin, seq, kind, &mut reply),
                Err(ApplyError::Refuse(why)) => {
                    self.refused(origin, seq, kind, &why);
                    reply.rejected.push(reject(seq, why));
                }
                Err(ApplyError::Retry(source)) => {
                    // Keep what was applied before it; the sender retries from here.
                    let held = std::mem::take(&mut index_writes);
                    self.settle(
                        origin,
                        held,
                        &mut plugin_calls,
                        &mut reply,
                        &mut g,
                        (start, hwm),
                    )
                    .await?;
                    tracing::warn!(origin, seq, error = %source, "cannot apply a peer message now");
                    return Err(ReceiveError::Store {
                        origin: origin.to_owned(),
                        seq,
                        source,
                    });
                }
            }
            hwm = seq;
        }
        self.settle(
            origin,
            index_writes,
            &mut plugin_calls,
            &mut reply,
            &mut g,
            (start, hwm),
        )
        .await?;
        Ok(reply)
    }

    /// Stores what a batch held back, together: its index documents (one fsync) and its plugin
    /// calls (durable in the master's queues); then moves the origin's mark from `start` to
    /// `hwm`. Runs before the reply, also when a message must be retried.
    async fn settle(
        &self,
        origin: &str,
        index_writes: Vec<IndexWrite>,
        plugin_calls: &mut PluginCalls,
        reply: &mut BatchReply,
        g: &mut Option<OriginMark>,
        (start, hwm): (u64, u64),
    ) -> Result<(), ReceiveError> {
        if !index_writes.is_empty() {
            self.apply_index(origin, index_writes, reply).await?;
        }
        self.queue_plugin_calls(origin, plugin_calls, reply).await?;
        if hwm != start {
            self.persist(origin, g, hwm).await?;
        }
        Ok(())
    }

    /// Whether message `seq` of `origin` is to be applied: not a duplicate (at or below the
    /// mark) and plausible. An implausible seq is refused without moving the mark: one forged
    /// seq must not silence the origin.
    fn is_new(
        &self,
        origin: &str,
        (seq, kind): (u64, &str),
        hwm: u64,
        now_us: u64,
        reply: &mut BatchReply,
    ) -> bool {
        if !crate::plausible::seq_ok(seq, hwm, now_us) {
            let why = implausible(seq, hwm, now_us);
            self.forged("seq_ahead");
            tracing::error!(origin, seq, mark = hwm, "refused a peer message: {why}");
            self.refused(origin, seq, kind, &why);
            reply.rejected.push(reject(seq, why));
            return false;
        }
        if seq <= hwm {
            reply.duplicates += 1;
            self.metrics
                .messages_duplicate
                .get_or_create(&Metrics::kind(kind))
                .inc();
            return false;
        }
        true
    }

    fn applied(&self, origin: &str, seq: u64, kind: &'static str, reply: &mut BatchReply) {
        tracing::debug!(origin, seq, kind, "applied");
        reply.applied += 1;
        self.metrics
            .messages_applied
            .get_or_create(&Metrics::kind(kind))
            .inc();
    }

    fn forged(&self, reason: &str) {
        self.metrics
            .forged_messages
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    fn refused(&self, origin: &str, seq: u64, kind: &str, why: &str) {
        self.metrics
            .messages_rejected
            .get_or_create(&Metrics::kind(kind))
            .inc();
        tracing::warn!(origin, seq, kind, error = why, "refused a peer message");
    }

    /// Applies an eviction or a flush (index messages and events go to their stores per batch).
    fn apply_cache(&self, msg: &PeerMessage<'_>) -> Result<&'static str, ApplyError> {
        match msg {
            PeerMessage::Eviction { cache, .. } | PeerMessage::Flush { cache }
                if !crate::wire::valid_cache_name(cache) =>
            {
                Err(ApplyError::Refuse(format!(
                    "`{cache}` is not a valid cache name"
                )))
            }
            PeerMessage::Eviction { cache, keys } => {
                self.stores.caches.evict(cache, keys);
                if cache == crate::sessions::SESSIONS_CACHE {
                    for k in keys {
                        self.stores.sessions.invalidate_hash(k);
                    }
                }
                Ok("eviction")
            }
            PeerMessage::Flush { cache } => {
                self.stores.caches.flush(cache);
                if cache == crate::sessions::SESSIONS_CACHE {
                    self.stores.sessions.invalidate_all();
                }
                Ok("flush")
            }
            PeerMessage::Index { .. } | PeerMessage::Event { .. } | PeerMessage::Plugin(_) => {
                Err(ApplyError::Refuse(format!(
                    "a {} message is applied with its batch",
                    msg.kind().as_str()
                )))
            }
        }
    }

    /// Appends the batch's new events to the log together (one group commit instead of an
    /// fsync each), in message order; the results are picked up by message seq.
    async fn append_events(
        &self,
        origin: &str,
        hwm: u64,
        now_us: u64,
        decoded: &[Result<Envelope<'_>, MessageError>],
    ) -> HashMap<u64, Result<AppendOutcome, EventError>> {
        let (seqs, events): (Vec<u64>, Vec<(u64, &[u8])>) = decoded
            .iter()
            .filter_map(|env| match env {
                Ok(Envelope {
                    seq,
                    body: Ok(PeerMessage::Event { event_seq, event }),
                    ..
                }) if *seq > hwm && crate::plausible::seq_ok(*seq, hwm, now_us) => {
                    Some((*seq, (*event_seq, *event)))
                }
                _ => None,
            })
            .unzip();
        if events.is_empty() {
            return HashMap::new();
        }
        let results = self.stores.events.append_remote_many(origin, events).await;
        seqs.into_iter().zip(results).collect()
    }

    /// Applies a batch's index documents, one store call (one fsync) per kind. A document the
    /// store refuses (bad, too large) is refused alone; a store failure fails the batch (the
    /// sender retries it, and the version rule makes the repeat harmless).
    async fn apply_index(
        &self,
        origin: &str,
        writes: Vec<IndexWrite>,
        reply: &mut BatchReply,
    ) -> Result<(), ReceiveError> {
        let mut by_kind: [Vec<IndexWrite>; 4] = Default::default();
        for w in writes {
            by_kind[Kind::ALL.iter().position(|k| *k == w.kind).unwrap_or(0)].push(w);
        }
        for writes in by_kind.into_iter().filter(|w| !w.is_empty()) {
            let kind = writes[0].kind;
            let (seqs, docs): (Vec<u64>, Vec<RawDoc>) =
                writes.into_iter().map(|w| (w.seq, w.doc)).unzip();
            let results = self
                .stores
                .index
                .apply_each_raw(kind, docs)
                .await
                .map_err(ReceiveError::Index)?;
            let mut outcomes = Vec::with_capacity(results.len());
            for (seq, r) in seqs.into_iter().zip(results) {
                match r {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        let why = e.to_string();
                        self.refused(origin, seq, "index", &why);
                        reply.rejected.push(reject(seq, why));
                    }
                }
            }
            self.metrics
                .index_outcomes(kind.as_str(), "peer", &outcomes);
            reply.applied += outcomes.len() as u64;
            self.metrics
                .messages_applied
                .get_or_create(&Metrics::kind("index"))
                .inc_by(outcomes.len() as u64);
        }
        Ok(())
    }

    /// Makes the batch's plugin calls durable in the master's queues, per family in seq order,
    /// before the batch is acknowledged (so a master that is down loses nothing). Never
    /// forwarded to peers: these queues lead only to this node's master.
    async fn queue_plugin_calls(
        &self,
        origin: &str,
        calls: &mut PluginCalls,
        reply: &mut BatchReply,
    ) -> Result<(), ReceiveError> {
        let held = std::mem::take(calls);
        let n = held.count;
        if n == 0 {
            return Ok(());
        }
        if let Some(master) = &self.stores.master {
            for f in held.by_family {
                master
                    .enqueue(f.family, f.payloads)
                    .await
                    .map_err(|source| ReceiveError::Master {
                        origin: origin.to_owned(),
                        seq: f.last_seq,
                        source,
                    })?;
            }
        }
        reply.applied += n;
        self.metrics
            .messages_applied
            .get_or_create(&Metrics::kind("plugin"))
            .inc_by(n);
        Ok(())
    }

    /// Makes the origin's new mark durable (one in-place `fdatasync`, `durable::Mark`) and
    /// only then records it in memory.
    async fn persist(
        &self,
        origin: &str,
        g: &mut Option<OriginMark>,
        hwm: u64,
    ) -> Result<(), ReceiveError> {
        let failed = |source| ReceiveError::Persist {
            origin: origin.to_owned(),
            source,
        };
        let m = g
            .as_mut()
            .expect("the mark is loaded before a batch is applied");
        let (file, path) = (m.file.take(), self.dir.join(format!("{origin}.hwm")));
        let (file, res) = tokio::task::spawn_blocking(move || {
            // `None`: a previous store panicked on its thread; open the file again.
            let mut file = match file {
                Some(f) => f,
                None => match crate::durable::Mark::open(&path) {
                    Ok((f, _)) => f,
                    Err(e) => return (None, Err(e)),
                },
            };
            let res = file.store(hwm);
            (Some(file), res)
        })
        .await
        .unwrap_or_else(|e| (None, Err(std::io::Error::other(e))));
        m.file = file;
        res.map_err(failed)?;
        m.value = hwm;
        Ok(())
    }
}

fn implausible(seq: u64, mark: u64, now_us: u64) -> String {
    format!(
        "seq {seq} is implausibly far ahead of the origin's mark {mark} (at most {} now)",
        crate::plausible::max_seq(mark, now_us)
    )
}

/// A batch's plugin calls, per family in seq order, as master-queue payloads.
#[derive(Default)]
struct PluginCalls {
    count: u64,
    by_family: Vec<FamilyCalls>,
}

struct FamilyCalls {
    family: crate::gerrit::Family,
    last_seq: u64,
    payloads: Vec<Vec<u8>>,
}

impl PluginCalls {
    /// The wire decoder has checked the call's endpoint family.
    fn push(&mut self, seq: u64, call: crate::wire::PluginCall) {
        let family = call.family();
        let payload = call.encode();
        self.count += 1;
        match self.by_family.iter_mut().find(|f| f.family == family) {
            Some(f) => {
                f.last_seq = seq;
                f.payloads.push(payload);
            }
            None => self.by_family.push(FamilyCalls {
                family,
                last_seq: seq,
                payloads: vec![payload],
            }),
        }
    }
}

/// What appending one peer event means for the batch reply.
fn event_outcome(
    metrics: &Metrics,
    r: Result<AppendOutcome, EventError>,
) -> Result<&'static str, ApplyError> {
    match r {
        Ok(AppendOutcome::Appended) => {
            metrics
                .events_appended
                .get_or_create(&Metrics::kind("remote"))
                .inc();
            Ok("event")
        }
        // Already held (a re-queue after a crash, or a catch-up got it first).
        Ok(AppendOutcome::Duplicate) => Ok("event"),
        Err(e @ EventError::ImplausibleSeq(_)) => {
            metrics
                .forged_messages
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: "event_seq_ahead".into(),
                })
                .inc();
            tracing::error!(error = %e, "refused a peer event");
            Err(ApplyError::Refuse(e.to_string()))
        }
        Err(
            e @ (EventError::BadEvent(_) | EventError::TooLarge { .. } | EventError::BadOrigin(_)),
        ) => Err(ApplyError::Refuse(e.to_string())),
        Err(e) => Err(ApplyError::Retry(e)),
    }
}
