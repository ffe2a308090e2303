//! [`IndexStore`]: opening the indexes, and the write side of the public API.
//!
//! Layout under the store's directory: one tantivy index per kind in `<kind>/`, and
//! `journal` (see `journal`). `open` rebuilds the version maps from the indexes' fast fields,
//! replays the journal, commits, and starts the writer thread. `open`, `get`, `search` and the
//! digest calls are synchronous (microseconds to milliseconds, no fsync); writes are async and
//! never block the executor: they are answered by the writer thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use serde_json::Value;
use tantivy::directory::MmapDirectory;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy};
use tokio::sync::oneshot;

use super::journal::Journal;
use super::schema::KindSchema;
use super::versions::{Entry, VersionMap};
use super::writer::{Command, OpBody, PreparedOp, Writer};
use super::{
    BulkOutcome, ExportedDoc, IndexError, IndexOptions, IndexStats, Kind, RawDoc, Result,
    WriteOutcome,
};
use crate::locks::{LockExt, RwLockExt};

/// Largest accepted document id, in bytes.
const MAX_ID_BYTES: usize = 1024;
/// Operations per message to the writer during a bulk load.
const BULK_CHUNK: usize = 2_000;

pub(crate) struct KindShared {
    pub schema: KindSchema,
    pub index: Index,
    pub reader: IndexReader,
    pub versions: RwLock<VersionMap>,
}

pub(crate) struct Shared {
    pub kinds: Vec<KindShared>,
    pub commits: AtomicU64,
    pub last_commit_micros: AtomicU64,
    pub journal_bytes: AtomicU64,
}

/// The secondary index of one node: four tantivy indexes, their version maps and journal.
pub struct IndexStore {
    pub(crate) shared: Arc<Shared>,
    pub(crate) opts: IndexOptions,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    /// Writes queued for or in the writer thread (backpressure beyond it).
    bound: crate::durable::bound::Bound,
    thread: Mutex<Option<JoinHandle<()>>>,
}

pub(crate) use crate::clock::now_ms;

fn tantivy_err(context: String) -> impl FnOnce(tantivy::TantivyError) -> IndexError {
    move |e| IndexError::internal(context, e)
}

fn open_kind(dir: &Path, kind: Kind) -> Result<(KindShared, IndexWriter)> {
    let path: PathBuf = dir.join(kind.as_str());
    std::fs::create_dir_all(&path)
        .map_err(|e| IndexError::internal(format!("create {}", path.display()), e))?;
    let schema = KindSchema::new(kind);
    let mmap = MmapDirectory::open(&path)
        .map_err(|e| IndexError::internal(format!("open {}", path.display()), e))?;
    let index = Index::open_or_create(mmap, schema.schema.clone()).map_err(tantivy_err(
        format!("open {} (if the schema changed, reindex)", path.display()),
    ))?;
    let (threads, budget) = match kind {
        Kind::Changes => (2, 40_000_000),
        _ => (1, 20_000_000),
    };
    let writer = index
        .writer_with_num_threads(threads, threads * budget)
        .map_err(tantivy_err(format!("lock writer of {}", path.display())))?;
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .map_err(tantivy_err(format!("open reader of {}", path.display())))?;
    let versions = RwLock::new(load_versions(&schema, &reader)?);
    let ks = KindShared {
        schema,
        index,
        reader,
        versions,
    };
    Ok((ks, writer))
}

/// Rebuilds a version map from the committed index (fast fields only: no stored documents read).
fn load_versions(schema: &KindSchema, reader: &IndexReader) -> Result<VersionMap> {
    let kind = schema.kind;
    let mut vm = VersionMap::default();
    let searcher = reader.searcher();
    let mut id = String::new();
    for seg in searcher.segment_readers() {
        let ff = seg.fast_fields();
        let err = |e| IndexError::internal(format!("read version columns of {kind}"), e);
        let ids = ff.str("_id").map_err(err)?;
        let versions = ff.u64("_version").map_err(err)?;
        let deleted = ff.u64("_deleted_at").map_err(err)?;
        let Some(ids) = ids else { continue };
        for doc in seg.doc_ids_alive() {
            let Some(ord) = ids.ords().first(doc) else {
                continue;
            };
            id.clear();
            ids.ord_to_str(ord, &mut id)
                .map_err(|e| IndexError::internal(format!("read id column of {kind}"), e))?;
            let entry = Entry {
                version: versions.first(doc).unwrap_or(0),
                deleted_at: deleted.first(doc).unwrap_or(0),
            };
            if vm.get(&id).is_none_or(|old| old.version < entry.version) {
                vm.set(&id, entry, None);
            }
        }
    }
    Ok(vm)
}

impl IndexStore {
    /// Opens (or creates) the store in `dir` and replays its journal. Blocking: call it before
    /// serving, or from `spawn_blocking`.
    pub fn open(dir: &Path, opts: IndexOptions) -> Result<IndexStore> {
        opts.validate()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| IndexError::internal(format!("create {}", dir.display()), e))?;
        let mut kinds = Vec::new();
        let mut writers = Vec::new();
        for kind in Kind::ALL {
            let (ks, w) = open_kind(dir, kind)?;
            kinds.push(ks);
            writers.push(w);
        }
        let shared = Arc::new(Shared {
            kinds,
            commits: AtomicU64::new(0),
            last_commit_micros: AtomicU64::new(0),
            journal_bytes: AtomicU64::new(0),
        });
        let (journal, records) = Journal::open(&dir.join("journal"), &opts.disk)?;
        let mut writer = Writer::new(shared.clone(), writers, journal, opts.clone());
        let replayed = records.len();
        let mut ops = Vec::with_capacity(records.len());
        for r in records {
            let ks = &shared.kinds[r.kind.index()];
            let body = match r.source {
                Some(source) => {
                    let doc: Value = serde_json::from_str(&source).map_err(|e| {
                        IndexError::internal(format!("replay {}/{}", r.kind, r.id), e)
                    })?;
                    OpBody::Upsert {
                        doc: ks.schema.live_document(&r.id, r.version, &source, &doc),
                        source: source.into(),
                    }
                }
                None => OpBody::Delete {
                    deleted_at: r.deleted_at,
                },
            };
            ops.push(PreparedOp {
                kind: r.kind,
                id: r.id,
                version: r.version,
                body,
            });
        }
        let applied = writer
            .apply(ops, false)?
            .iter()
            .filter(|o| **o == WriteOutcome::Applied)
            .count();
        writer.commit()?;
        writer.compact();
        if replayed > 0 {
            tracing::info!(dir = %dir.display(), replayed, applied, "replayed index journal");
        }
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| IndexError::internal("start index writer thread", e))?;
        Ok(IndexStore {
            shared,
            opts,
            tx: Mutex::new(Some(tx)),
            bound: crate::durable::bound::Bound::default(),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, cmd: Command) -> Result<()> {
        let tx = self.tx.locked();
        tx.as_ref()
            .ok_or(IndexError::WriterStopped)?
            .send(cmd)
            .map_err(|_| IndexError::WriterStopped)
    }

    fn prepare_upsert(
        &self,
        kind: Kind,
        id: &str,
        version: u64,
        doc: &Value,
    ) -> Result<PreparedOp> {
        check_write(kind, id, version)?;
        if !doc.is_object() {
            return Err(not_an_object(kind, id));
        }
        let source = serde_json::to_string(doc)
            .map_err(|e| IndexError::internal(format!("serialize {kind}/{id}"), e))?;
        self.prepare_source(kind, id, version, source, doc)
    }

    /// An upsert whose JSON text is given (a peer's message): parsed once, stored as given.
    fn prepare_raw_upsert(
        &self,
        kind: Kind,
        id: &str,
        version: u64,
        source: String,
    ) -> Result<PreparedOp> {
        check_write(kind, id, version)?;
        // Parsing is bounded by the request's own size limit; the document's limit is on its
        // compact serialization, as for a `Value` (whitespace in the given text is not held
        // against it).
        let doc: Value = serde_json::from_str(&source).map_err(|e| IndexError::BadDocument {
            kind,
            id: id.into(),
            reason: format!("not JSON: {e}"),
        })?;
        if !doc.is_object() {
            return Err(not_an_object(kind, id));
        }
        let source = if source.len() > self.opts.max_doc_bytes {
            serde_json::to_string(&doc)
                .map_err(|e| IndexError::internal(format!("serialize {kind}/{id}"), e))?
        } else {
            source
        };
        self.prepare_source(kind, id, version, source, &doc)
    }

    fn prepare_source(
        &self,
        kind: Kind,
        id: &str,
        version: u64,
        source: String,
        doc: &Value,
    ) -> Result<PreparedOp> {
        if source.len() > self.opts.max_doc_bytes {
            return Err(IndexError::DocumentTooLarge {
                kind,
                id: id.into(),
                size: source.len(),
                max: self.opts.max_doc_bytes,
            });
        }
        let tdoc = self.shared.kinds[kind.index()]
            .schema
            .live_document(id, version, &source, doc);
        Ok(PreparedOp {
            kind,
            id: id.into(),
            version,
            body: OpBody::Upsert {
                source: source.into(),
                doc: tdoc,
            },
        })
    }

    async fn write(&self, ops: Vec<PreparedOp>, durable: bool) -> Result<Vec<WriteOutcome>> {
        let _room = self.bound.enter(1).await;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Write {
            ops,
            durable,
            reply,
        })?;
        rx.await.map_err(|_| IndexError::WriterStopped)?
    }

    /// Stores `doc` as version `version` of `kind`/`id` unless a version ≥ `version` (document
    /// or tombstone) is stored. Returns once the write is durable (journaled and fsync'd);
    /// `get` sees it at once, `search` within `refresh_interval`.
    pub async fn upsert(
        &self,
        kind: Kind,
        id: &str,
        version: u64,
        doc: Value,
    ) -> Result<WriteOutcome> {
        let op = self.prepare_upsert(kind, id, version, &doc)?;
        Ok(self.write(vec![op], true).await?[0])
    }

    /// Deletes `kind`/`id`, leaving a tombstone with `version`, unless a version ≥ `version` is stored.
    pub async fn delete(&self, kind: Kind, id: &str, version: u64) -> Result<WriteOutcome> {
        check_write(kind, id, version)?;
        let op = PreparedOp {
            kind,
            id: id.into(),
            version,
            body: OpBody::Delete {
                deleted_at: now_ms(),
            },
        };
        Ok(self.write(vec![op], true).await?[0])
    }

    /// Applies many upserts and deletes at once, with one fsync: for a peer's batch or an
    /// anti-entropy transfer. Outcomes are in the order of `docs`. A bad document fails the
    /// whole call before anything is written.
    pub async fn apply(&self, kind: Kind, docs: Vec<ExportedDoc>) -> Result<Vec<WriteOutcome>> {
        let now = now_ms();
        let ops = docs
            .into_iter()
            .map(|d| self.prepare(kind, d, now))
            .collect::<Result<Vec<_>>>()?;
        self.write(ops, true).await
    }

    /// Like [`IndexStore::apply`], but a bad document (`BadDocument`, `DocumentTooLarge`) is
    /// refused alone: each document gets its own result, the good ones are written (one fsync).
    /// The outer error is a failure of the store itself.
    pub async fn apply_each(
        &self,
        kind: Kind,
        docs: Vec<ExportedDoc>,
    ) -> Result<Vec<Result<WriteOutcome>>> {
        let now = now_ms();
        let ops = docs
            .into_iter()
            .map(|d| self.prepare(kind, d, now))
            .collect();
        self.write_each(ops).await
    }

    /// Writes the operations that could be prepared (one fsync); a preparation error is that
    /// document's result.
    async fn write_each(
        &self,
        prepared: Vec<Result<PreparedOp>>,
    ) -> Result<Vec<Result<WriteOutcome>>> {
        let mut results: Vec<Result<WriteOutcome>> = Vec::with_capacity(prepared.len());
        let mut ops = Vec::with_capacity(prepared.len());
        for p in prepared {
            match p {
                Ok(op) => {
                    ops.push(op);
                    results.push(Ok(WriteOutcome::Applied));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let mut written = self.write(ops, true).await?.into_iter();
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = Ok(written.next().ok_or(IndexError::WriterStopped)?);
        }
        Ok(results)
    }

    /// Like [`IndexStore::apply_each`] for documents whose JSON text is given as received
    /// (a peer's batch): each text is parsed once and stored as it is, without the second
    /// serialization `apply_each` needs to turn a `Value` back into text.
    pub async fn apply_each_raw(
        &self,
        kind: Kind,
        docs: Vec<RawDoc>,
    ) -> Result<Vec<Result<WriteOutcome>>> {
        let now = now_ms();
        let ops = docs
            .into_iter()
            .map(|d| self.prepare_raw(kind, d, now))
            .collect();
        self.write_each(ops).await
    }

    /// Like [`IndexStore::apply`] (a bad document fails the whole call before anything is
    /// written) for documents given as JSON text (the master's own writes, as its request
    /// carried them): parsed once, stored as given.
    pub async fn apply_raw(&self, kind: Kind, docs: Vec<RawDoc>) -> Result<Vec<WriteOutcome>> {
        let now = now_ms();
        let ops = docs
            .into_iter()
            .map(|d| self.prepare_raw(kind, d, now))
            .collect::<Result<Vec<_>>>()?;
        self.write(ops, true).await
    }

    fn prepare_raw(&self, kind: Kind, d: RawDoc, now: u64) -> Result<PreparedOp> {
        match (d.deleted, d.source) {
            (true, _) => self.prepare(
                kind,
                ExportedDoc {
                    id: d.id,
                    version: d.version,
                    deleted: true,
                    doc: None,
                    deleted_at: None,
                },
                now,
            ),
            (false, Some(source)) => self.prepare_raw_upsert(kind, &d.id, d.version, source),
            (false, None) => Err(IndexError::BadDocument {
                kind,
                id: d.id,
                reason: "an upsert needs a document".into(),
            }),
        }
    }

    fn prepare(&self, kind: Kind, d: ExportedDoc, now: u64) -> Result<PreparedOp> {
        match (d.deleted, d.doc) {
            (true, _) => {
                check_write(kind, &d.id, d.version)?;
                Ok(PreparedOp {
                    kind,
                    id: d.id,
                    version: d.version,
                    body: OpBody::Delete {
                        deleted_at: d.deleted_at.unwrap_or(now).clamp(1, now.max(1)),
                    },
                })
            }
            (false, Some(doc)) => self.prepare_upsert(kind, &d.id, d.version, &doc),
            (false, None) => Err(IndexError::BadDocument {
                kind,
                id: d.id,
                reason: "an upsert needs a document".into(),
            }),
        }
    }

    /// Bulk load (reindex): not journaled, committed in large batches and once at the end, so
    /// it is durable when this returns; if interrupted, run it again (the version rule makes
    /// that harmless).
    pub async fn bulk_upsert<I>(&self, kind: Kind, docs: I) -> Result<BulkOutcome>
    where
        I: IntoIterator<Item = (String, u64, Value)>,
    {
        let mut out = BulkOutcome::default();
        let mut count = |outcomes: Vec<WriteOutcome>| {
            for o in outcomes {
                match o {
                    WriteOutcome::Applied => out.applied += 1,
                    WriteOutcome::Stale { .. } => out.stale += 1,
                }
            }
        };
        let mut docs = docs.into_iter().peekable();
        // One chunk in flight while the next is prepared: the writer thread and this task overlap.
        let mut in_flight: Option<oneshot::Receiver<Result<Vec<WriteOutcome>>>> = None;
        while docs.peek().is_some() {
            let mut chunk = Vec::with_capacity(BULK_CHUNK);
            for (id, version, doc) in docs.by_ref().take(BULK_CHUNK) {
                chunk.push(self.prepare_upsert(kind, &id, version, &doc)?);
            }
            let (reply, rx) = oneshot::channel();
            self.send(Command::Write {
                ops: chunk,
                durable: false,
                reply,
            })?;
            if let Some(prev) = in_flight.replace(rx) {
                count(prev.await.map_err(|_| IndexError::WriterStopped)??);
            }
        }
        if let Some(prev) = in_flight {
            count(prev.await.map_err(|_| IndexError::WriterStopped)??);
        }
        self.commit().await?;
        Ok(out)
    }

    /// Commits now (normally the writer commits on its own within `refresh_interval`).
    pub async fn commit(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Commit { reply })?;
        rx.await.map_err(|_| IndexError::WriterStopped)?
    }

    /// Final commit and stop of the writer thread; later writes fail with `WriterStopped`.
    pub async fn shutdown(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Shutdown { reply })?;
        self.tx.locked().take();
        let r = rx.await.map_err(|_| IndexError::WriterStopped)?;
        let thread = self.thread.locked().take();
        if let Some(t) = thread {
            // The thread has answered and is exiting; joining releases the index locks.
            tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|e| IndexError::internal("join index writer", e))?
                .map_err(|_| IndexError::internal("index writer", "panicked"))?;
        }
        r
    }

    /// Stops the writer thread without its final commit, as a crash would (for crash tests;
    /// what was acknowledged must come back from the journal at the next open). Blocking.
    pub fn abort(self) {
        let _ = self.send(Command::Abort);
        self.tx.locked().take();
        if let Some(t) = self.thread.locked().take() {
            let _ = t.join();
        }
    }

    pub fn stats(&self) -> IndexStats {
        IndexStats {
            kinds: Kind::ALL
                .iter()
                .map(|k| {
                    (
                        *k,
                        self.shared.kinds[k.index()].versions.read_locked().stats(),
                    )
                })
                .collect(),
            commits: self.shared.commits.load(Ordering::Relaxed),
            last_commit_micros: self.shared.last_commit_micros.load(Ordering::Relaxed),
            journal_bytes: self.shared.journal_bytes.load(Ordering::Relaxed),
        }
    }
}

fn not_an_object(kind: Kind, id: &str) -> IndexError {
    IndexError::BadDocument {
        kind,
        id: id.into(),
        reason: "the document must be a JSON object".into(),
    }
}

/// The largest version a write may carry: the largest integer every JSON reader holds exactly
/// (2^53 − 1). A larger one could never be superseded by a master writing through JavaScript
/// or a double, so the document could no longer be updated or deleted.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// Checks what every write path shares: the id's size and the version's range.
fn check_write(kind: Kind, id: &str, version: u64) -> Result<()> {
    let bad = |reason: String| IndexError::BadDocument {
        kind,
        id: id.chars().take(64).collect(),
        reason,
    };
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(bad(format!("the id must have 1 to {MAX_ID_BYTES} bytes")));
    }
    if version > MAX_VERSION {
        return Err(bad(format!(
            "version {version} is above {MAX_VERSION} (2^53 - 1, the largest JSON-safe integer)"
        )));
    }
    Ok(())
}
