//! The writer thread: the one owner of every write decision, the journal and the commits.
//!
//! Async callers send prepared operations over a channel and await a oneshot reply. The thread
//! drains whatever is queued (group commit), applies the version rule against the version map,
//! hands applied operations to the tantivy writers, appends them to the journal, fsyncs once,
//! and only then replies. A commit of every touched index runs when the oldest uncommitted
//! write is about `refresh_interval` old (minus the last commit's cost, so it is visible to
//! `search` within the interval), or at once when too many writes are pending; the journal is
//! truncated after it. Expired tombstones are compacted on the same thread.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tantivy::{IndexWriter, TantivyDocument, Term};
use tokio::sync::oneshot;

use super::journal::Journal;
use super::store::Shared;
use super::versions::Entry;
use super::{IndexError, IndexOptions, Kind, Result, WriteOutcome};
use crate::locks::RwLockExt;

/// Commit at once when this many writes wait for a commit (bounds `pending` memory).
const MAX_PENDING: u64 = 50_000;
/// Commands drained into one group commit at most.
const MAX_BATCH: usize = 4096;

pub(crate) enum OpBody {
    Upsert {
        source: Arc<str>,
        doc: TantivyDocument,
    },
    Delete {
        deleted_at: u64,
    },
}

pub(crate) struct PreparedOp {
    pub kind: Kind,
    pub id: String,
    pub version: u64,
    pub body: OpBody,
}

pub(crate) enum Command {
    /// `durable`: journal and fsync before replying (every write but bulk loads).
    Write {
        ops: Vec<PreparedOp>,
        durable: bool,
        reply: oneshot::Sender<Result<Vec<WriteOutcome>>>,
    },
    Commit {
        reply: oneshot::Sender<Result<()>>,
    },
    /// Final commit, then the thread exits.
    Shutdown {
        reply: oneshot::Sender<Result<()>>,
    },
    /// Exit without committing: what a crash leaves behind (tests).
    Abort,
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub writers: Vec<IndexWriter>,
    pub journal: Journal,
    pub opts: IndexOptions,
    dirty: [bool; 4],
    dirty_since: Option<Instant>,
    last_commit_cost: Duration,
    last_compaction: Instant,
}

type Replies = Vec<(
    oneshot::Sender<Result<Vec<WriteOutcome>>>,
    Result<Vec<WriteOutcome>>,
)>;

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        writers: Vec<IndexWriter>,
        journal: Journal,
        opts: IndexOptions,
    ) -> Writer {
        Writer {
            shared,
            writers,
            journal,
            opts,
            dirty: [false; 4],
            dirty_since: None,
            last_commit_cost: Duration::ZERO,
            last_compaction: Instant::now(),
        }
    }

    pub fn run(mut self, rx: Receiver<Command>) {
        loop {
            let wait = match self.dirty_since {
                Some(_) => self
                    .commit_deadline()
                    .saturating_duration_since(Instant::now()),
                None => self.compaction_period(),
            };
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    if self.handle(batch) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // The store was dropped without `shutdown`: still leave a clean index.
                    let _ = self.commit();
                    return;
                }
            }
            self.maybe_commit();
            if self.last_compaction.elapsed() >= self.compaction_period() {
                self.compact();
            }
        }
    }

    fn commit_deadline(&self) -> Instant {
        let slack = self.last_commit_cost.min(self.opts.refresh_interval / 2);
        self.dirty_since.unwrap_or_else(Instant::now) + (self.opts.refresh_interval - slack)
    }

    fn compaction_period(&self) -> Duration {
        (self.opts.tombstone_ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(60))
    }

    fn pending_ops(&self) -> u64 {
        self.shared
            .kinds
            .iter()
            .map(|k| k.versions.read_locked().pending_ops())
            .sum()
    }

    fn maybe_commit(&mut self) {
        if self.dirty_since.is_some()
            && (Instant::now() >= self.commit_deadline() || self.pending_ops() >= MAX_PENDING)
        {
            if let Err(e) = self.commit() {
                // Retry after another interval, not in a tight loop (e.g. a full disk).
                self.dirty_since = Some(Instant::now());
                tracing::error!(error = %e, "index commit failed, will retry");
            }
        }
    }

    /// Handles a drained batch in order; returns true when the thread must exit.
    fn handle(&mut self, batch: Vec<Command>) -> bool {
        let mut replies: Replies = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Write {
                    ops,
                    durable,
                    reply,
                } => {
                    let outcomes = self.apply(ops, durable);
                    replies.push((reply, outcomes));
                    if !durable {
                        // Bulk loads: keep memory bounded between their batches.
                        self.flush(&mut replies);
                        self.maybe_commit();
                    }
                }
                Command::Commit { reply } => {
                    self.flush(&mut replies);
                    let _ = reply.send(self.commit());
                }
                Command::Shutdown { reply } => {
                    self.flush(&mut replies);
                    let r = self.commit();
                    tracing::info!(ok = r.is_ok(), "index writer stopped");
                    let _ = reply.send(r);
                    return true;
                }
                Command::Abort => {
                    // Replies are dropped unsent: their callers see the writer gone, as in a crash.
                    return true;
                }
            }
        }
        self.flush(&mut replies);
        false
    }

    /// Makes the batch durable (one fsync), then answers its writers.
    fn flush(&mut self, replies: &mut Replies) {
        let synced = self.journal.sync();
        match &synced {
            Ok(()) => self.opts.disk.succeeded(),
            Err(e) => {
                if let Some(io) = crate::durable::disk::io_source(e) {
                    self.opts.disk.failed(self.journal.path(), io);
                }
            }
        }
        self.shared
            .journal_bytes
            .store(self.journal.len(), Ordering::Relaxed);
        for (reply, outcome) in replies.drain(..) {
            let outcome = match (&synced, outcome) {
                // The i/o error keeps its kind, so a full disk answers 507.
                (Err(e), Ok(_)) => Err(match crate::durable::disk::io_source(e) {
                    Some(io) => IndexError::internal(
                        format!("append to journal {}", self.journal.path().display()),
                        crate::durable::copy_io(io),
                    ),
                    None => IndexError::internal("journal", e.to_string()),
                }),
                (_, o) => o,
            };
            let _ = reply.send(outcome);
        }
    }

    /// Applies operations under the version rule (also used to replay the journal at open).
    pub fn apply(&mut self, ops: Vec<PreparedOp>, durable: bool) -> Result<Vec<WriteOutcome>> {
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(self.apply_one(op, durable)?);
        }
        Ok(outcomes)
    }

    fn apply_one(&mut self, op: PreparedOp, durable: bool) -> Result<WriteOutcome> {
        let k = op.kind.index();
        let ks = &self.shared.kinds[k];
        let mut vm = ks.versions.write_locked();
        let stored = vm.get(&op.id);
        if let Some(stored) = stored {
            if stored.version >= op.version {
                return Ok(WriteOutcome::Stale {
                    stored_version: stored.version,
                });
            }
        }
        let writer = &self.writers[k];
        if stored.is_some() {
            // An id the map does not know is in no segment: a delete would cost a term lookup
            // per segment at the next commit for nothing (bulk loads are mostly new ids).
            writer.delete_term(Term::from_field_text(ks.schema.id, &op.id));
        }
        let (entry, source) = match op.body {
            OpBody::Upsert { source, doc } => {
                writer
                    .add_document(doc)
                    .map_err(|e| IndexError::internal(format!("add {}/{}", op.kind, op.id), e))?;
                if durable {
                    self.journal
                        .append(op.kind, &op.id, op.version, 0, Some(&source));
                }
                let entry = Entry {
                    version: op.version,
                    deleted_at: 0,
                };
                (entry, Some(source))
            }
            OpBody::Delete { deleted_at } => {
                let deleted_at = deleted_at.max(1);
                writer
                    .add_document(ks.schema.tombstone_document(&op.id, op.version, deleted_at))
                    .map_err(|e| {
                        IndexError::internal(format!("delete {}/{}", op.kind, op.id), e)
                    })?;
                if durable {
                    self.journal
                        .append(op.kind, &op.id, op.version, deleted_at, None);
                }
                let entry = Entry {
                    version: op.version,
                    deleted_at,
                };
                (entry, None)
            }
        };
        vm.set(&op.id, entry, source);
        vm.note_pending_op();
        self.dirty[k] = true;
        self.dirty_since.get_or_insert_with(Instant::now);
        Ok(WriteOutcome::Applied)
    }

    /// Commits every touched index, makes it visible to searches, then empties the journal.
    pub fn commit(&mut self) -> Result<()> {
        let started = Instant::now();
        for kind in Kind::ALL {
            let k = kind.index();
            if !self.dirty[k] {
                continue;
            }
            let ks = &self.shared.kinds[k];
            self.writers[k]
                .commit()
                .map_err(|e| IndexError::internal(format!("commit {kind}"), e))?;
            ks.reader
                .reload()
                .map_err(|e| IndexError::internal(format!("reload {kind}"), e))?;
            ks.versions.write_locked().clear_pending();
            self.dirty[k] = false;
        }
        self.journal.reset()?;
        self.shared.journal_bytes.store(0, Ordering::Relaxed);
        if self.dirty_since.take().is_some() {
            self.last_commit_cost = started.elapsed();
            self.shared.commits.fetch_add(1, Ordering::Relaxed);
            self.shared
                .last_commit_micros
                .store(self.last_commit_cost.as_micros() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Drops tombstones older than `tombstone_ttl` from the index and the version map.
    pub fn compact(&mut self) {
        self.last_compaction = Instant::now();
        let ttl_ms = self.opts.tombstone_ttl.as_millis() as u64;
        let cutoff = super::store::now_ms().saturating_sub(ttl_ms);
        for kind in Kind::ALL {
            let k = kind.index();
            let ks = &self.shared.kinds[k];
            // Scan under the read lock (gets go on); only this thread mutates the map, so the
            // expired set cannot change before the write lock is taken.
            let expired = ks.versions.read_locked().expired_tombstones(cutoff);
            if expired.is_empty() {
                continue;
            }
            let mut vm = ks.versions.write_locked();
            for id in &expired {
                self.writers[k].delete_term(Term::from_field_text(ks.schema.id, id));
                vm.remove(id);
            }
            tracing::debug!(kind = %kind, count = expired.len(), "compacted index tombstones");
            self.dirty[k] = true;
            self.dirty_since.get_or_insert_with(Instant::now);
        }
    }
}
