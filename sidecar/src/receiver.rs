//! The receiving side of the transport: applies a peer's batch to this node's stores, in order,
//! idempotently on `(origin, seq)`, with each origin's high-water mark persisted in
//! `<data>/inbox/<origin>.hwm`. It never forwards what it receives. This is the one place
//! that applies peer messages to the stores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;

use crate::cache::Caches;
use crate::index::{ExportedDoc, IndexError, IndexStore, Kind};
use crate::metrics::Metrics;
use crate::wire::{BatchReply, Message, MessageBody, Rejection};

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("`{0}` is not a valid origin instanceId")]
    BadOrigin(String),
    #[error("cannot persist the high-water mark of {origin}: {source}")]
    Persist {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot apply index documents: {0}")]
    Index(#[source] IndexError),
}

/// The stores a peer message may touch.
pub struct Stores {
    pub caches: Arc<Caches>,
    pub index: Arc<IndexStore>,
}

/// An index message of a batch, held back so the batch's documents are applied together.
struct IndexWrite {
    seq: u64,
    kind: Kind,
    doc: ExportedDoc,
}

pub struct Receiver {
    dir: PathBuf,
    stores: Stores,
    metrics: Arc<Metrics>,
    origins: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<u64>>>>>,
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

    fn slot(&self, origin: &str) -> Arc<tokio::sync::Mutex<Option<u64>>> {
        self.origins
            .lock()
            .expect("origins lock")
            .entry(origin.to_owned())
            .or_default()
            .clone()
    }

    async fn load(&self, origin: &str, g: &mut Option<u64>) -> Result<u64, ReceiveError> {
        if let Some(h) = *g {
            return Ok(h);
        }
        let path = self.dir.join(format!("{origin}.hwm"));
        let h = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t.trim().parse().unwrap_or(0),
            Err(_) => 0,
        };
        *g = Some(h);
        Ok(h)
    }

    /// Applies a batch. Messages at or below the origin's high-water mark are duplicates; the
    /// others are applied in order. The mark is made durable before the reply.
    pub async fn apply_batch(
        &self,
        origin: &str,
        messages: &[&RawValue],
    ) -> Result<BatchReply, ReceiveError> {
        if !crate::wire::valid_instance_id(origin) {
            return Err(ReceiveError::BadOrigin(origin.to_owned()));
        }
        let slot = self.slot(origin);
        // One batch per origin at a time: a retry racing its original cannot apply twice.
        let mut g = slot.lock().await;
        let mut hwm = self.load(origin, &mut g).await?;
        let start = hwm;
        let mut reply = BatchReply::default();
        let mut index_writes = Vec::new();
        for raw in messages {
            let seq = match serde_json::from_str::<SeqOnly>(raw.get()) {
                Ok(s) => s.seq,
                Err(e) => {
                    // Without a seq the message cannot be named; refuse the whole batch.
                    tracing::warn!(origin, error = %e, "peer message without a seq");
                    reply
                        .rejected
                        .push(reject(0, format!("message without a valid seq: {e}")));
                    continue;
                }
            };
            if seq <= hwm {
                reply.duplicates += 1;
                self.metrics
                    .messages_duplicate
                    .get_or_create(&Metrics::kind(kind_of(raw)))
                    .inc();
                continue;
            }
            match serde_json::from_str::<Message>(raw.get()) {
                Ok(Message {
                    body: body @ MessageBody::Index { .. },
                    ..
                }) => match index_write(seq, body) {
                    Ok(w) => index_writes.push(w),
                    Err(why) => {
                        self.refused(origin, seq, "index", &why);
                        reply.rejected.push(reject(seq, why));
                    }
                },
                Ok(m) => match self.apply(&m.body).await {
                    Ok(kind) => {
                        tracing::debug!(origin, seq, kind, "applied");
                        reply.applied += 1;
                        self.metrics
                            .messages_applied
                            .get_or_create(&Metrics::kind(kind))
                            .inc();
                    }
                    Err(why) => {
                        self.refused(origin, seq, kind_of(raw), &why);
                        reply.rejected.push(reject(seq, why));
                    }
                },
                Err(e) => {
                    let why = format!("cannot read message: {e}");
                    self.refused(origin, seq, kind_of(raw), &why);
                    reply.rejected.push(reject(seq, why));
                }
            }
            hwm = seq;
        }
        if !index_writes.is_empty() {
            self.apply_index(origin, index_writes, &mut reply).await?;
        }
        if hwm != start {
            self.persist(origin, hwm).await?;
            *g = Some(hwm);
        }
        Ok(reply)
    }

    fn refused(&self, origin: &str, seq: u64, kind: &str, why: &str) {
        self.metrics
            .messages_rejected
            .get_or_create(&Metrics::kind(kind))
            .inc();
        tracing::warn!(origin, seq, kind, error = why, "refused a peer message");
    }

    async fn apply(&self, body: &MessageBody) -> Result<&'static str, String> {
        match body {
            MessageBody::Eviction { cache, .. } | MessageBody::Flush { cache }
                if !crate::wire::valid_cache_name(cache) =>
            {
                Err(format!("`{cache}` is not a valid cache name"))
            }
            MessageBody::Eviction { cache, keys } => {
                self.stores.caches.evict(cache, keys);
                Ok("eviction")
            }
            MessageBody::Flush { cache } => {
                self.stores.caches.flush(cache);
                Ok("flush")
            }
            MessageBody::Index { .. } => {
                let w = index_write(0, body.clone())?;
                let outcome = self
                    .stores
                    .index
                    .apply(w.kind, vec![w.doc])
                    .await
                    .map_err(|e| e.to_string())?;
                self.metrics
                    .index_outcomes(w.kind.as_str(), "peer", &outcome);
                Ok("index")
            }
            MessageBody::Event { .. } => {
                Err("event messages are not supported by this node".into())
            }
        }
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
            let (seqs, docs): (Vec<u64>, Vec<ExportedDoc>) =
                writes.into_iter().map(|w| (w.seq, w.doc)).unzip();
            let results = self
                .stores
                .index
                .apply_each(kind, docs)
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

    async fn persist(&self, origin: &str, hwm: u64) -> Result<(), ReceiveError> {
        let path = self.dir.join(format!("{origin}.hwm"));
        let res = tokio::task::spawn_blocking(move || write_durably(&path, hwm))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        res.map_err(|source| ReceiveError::Persist {
            origin: origin.to_owned(),
            source,
        })
    }
}

/// Checks an index message and turns it into a store write.
fn index_write(seq: u64, body: MessageBody) -> Result<IndexWrite, String> {
    let MessageBody::Index {
        index,
        id,
        version,
        deleted,
        doc,
    } = body
    else {
        return Err("not an index message".into());
    };
    let kind: Kind = index.parse().map_err(|e: IndexError| e.to_string())?;
    if deleted == doc.is_some() {
        return Err(format!(
            "index message {kind}/{id} must carry either a doc or deleted: true"
        ));
    }
    Ok(IndexWrite {
        seq,
        kind,
        doc: ExportedDoc {
            id,
            version,
            deleted,
            doc,
            deleted_at: None,
        },
    })
}

#[derive(serde::Deserialize)]
struct SeqOnly {
    seq: u64,
}

fn kind_of(raw: &RawValue) -> &'static str {
    #[derive(serde::Deserialize)]
    struct K<'a> {
        #[serde(borrow)]
        kind: Option<&'a str>,
    }
    match serde_json::from_str::<K>(raw.get())
        .ok()
        .and_then(|k| k.kind)
    {
        Some("eviction") => "eviction",
        Some("flush") => "flush",
        Some("index") => "index",
        Some("event") => "event",
        _ => "unknown",
    }
}

fn write_durably(path: &Path, value: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{value}\n").as_bytes())?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
