//! The appender thread: assigns local seqs, deduplicates remote events, writes, group-commits
//! with one fdatasync per batch, rolls segments and applies retention. The only writer.

use std::collections::HashMap;
use std::fs;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::event::EventHead;
use super::holes::{self, Hole};
use super::log::{AppendOutcome, LocalEvent, Shared};
use super::record::{Checkpoint, NewRecord, OriginMark};
use super::ring::{self, RecentEvent};
use super::segment::{self, Active};
use super::state::Pos;
use super::{io_err, EventError, EventId, Result};
use crate::locks::LockExt;

/// A batch stops growing at this many requests or bytes, to bound commit latency.
const MAX_BATCH_REQUESTS: usize = 4096;
const MAX_BATCH_BYTES: usize = 16 << 20;

pub(crate) enum Request {
    Local {
        body: Bytes,
        head: EventHead,
        reply: oneshot::Sender<Result<LocalEvent>>,
    },
    Remote {
        origin: String,
        seq: u64,
        body: Bytes,
        head: EventHead,
        reply: oneshot::Sender<Result<AppendOutcome>>,
    },
    Retention(oneshot::Sender<Result<()>>),
    /// Events of a hole fetched from a peer, checked, seq ascending ([`super::holes`]).
    Refill {
        hole: Hole,
        events: Vec<(u64, Bytes, EventHead)>,
        reply: oneshot::Sender<Result<()>>,
    },
    Shutdown(oneshot::Sender<Result<()>>),
}

enum Reply {
    Local(oneshot::Sender<Result<LocalEvent>>, LocalEvent),
    Remote(oneshot::Sender<Result<AppendOutcome>>, AppendOutcome),
}

/// A record written to the file but not yet fsync'd.
struct Pending {
    origin: Arc<str>,
    seq: u64,
    pos: Pos,
    size: u64,
    received_ms: u64,
    created_on: u64,
    /// The origin's mark before this record, to undo it if the write fails.
    prev: OriginMark,
    event_type: Box<str>,
    /// The event as SSE `data:` lines, for the ring of recent events.
    sse_data: Bytes,
}

pub(crate) struct Appender {
    shared: Arc<Shared>,
    active: Active,
    /// Committed length of the active segment; pending bytes follow it.
    committed_len: u64,
    /// Per-origin high-water marks including pending records: the dedup and seq authority.
    hw: HashMap<Arc<str>, OriginMark>,
    /// Local seqs are above this (`State::local_floor`).
    local_floor: u64,
    buf: Vec<u8>,
    pending: Vec<Pending>,
    replies: Vec<Reply>,
    /// Gaps in origins' seqs staged in this batch, noted as holes once it is committed.
    gaps: Vec<Hole>,
    /// Records in the active segment, pending ones included (an empty segment never rolls).
    active_records: u64,
    /// A segment was sealed since the last retention pass (the size limit may be exceeded).
    rolled: bool,
    last_retention: Instant,
}

impl Appender {
    pub fn new(shared: Arc<Shared>, active: Active) -> Self {
        let (committed_len, active_records, hw, local_floor) = {
            let st = shared.read_state();
            let hw = st
                .origins
                .iter()
                .map(|(o, i)| (o.clone(), i.mark()))
                .collect();
            let active = st.segments.back();
            (
                active.map_or(0, |s| s.len),
                active.map_or(0, |s| s.records),
                hw,
                st.local_floor,
            )
        };
        Appender {
            shared,
            active,
            committed_len,
            hw,
            local_floor,
            buf: Vec::with_capacity(1 << 20),
            pending: Vec::new(),
            replies: Vec::new(),
            gaps: Vec::new(),
            active_records,
            rolled: false,
            last_retention: Instant::now(),
        }
    }

    pub fn run(mut self, rx: Receiver<Request>) {
        let interval = self.shared.opts.retention_interval;
        loop {
            let first = match rx.recv_timeout(interval) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    self.retention_logged();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut shutdown = None;
            let mut retention = Vec::new();
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(req) = next.take() {
                taken += 1;
                match req {
                    Request::Local { body, head, reply } => self.local(body, head, reply),
                    Request::Remote {
                        origin,
                        seq,
                        body,
                        head,
                        reply,
                    } => self.remote(origin, seq, body, head, reply),
                    Request::Retention(reply) => retention.push(reply),
                    Request::Refill {
                        hole,
                        events,
                        reply,
                    } => {
                        self.commit();
                        let _ = reply.send(self.refill(&hole, &events));
                    }
                    Request::Shutdown(reply) => {
                        shutdown = Some(reply);
                        break;
                    }
                }
                if taken < MAX_BATCH_REQUESTS && self.buf.len() < MAX_BATCH_BYTES {
                    // Empty or disconnected: commit what we have (a disconnect shows at the next recv).
                    next = rx.try_recv().ok();
                }
            }
            self.commit();
            let due = self.rolled || self.last_retention.elapsed() >= interval;
            if !retention.is_empty() || due {
                let result = self.retention();
                if let Err(e) = &result {
                    error!(error = %e, "event log retention failed");
                }
                for reply in retention {
                    let _ = reply.send(
                        result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| EventError::Internal(e.to_string())),
                    );
                }
            }
            if let Some(reply) = shutdown {
                let result = self
                    .active
                    .log
                    .sink()
                    .sync_all()
                    .map_err(io_err(self.active_path()));
                info!("event log appender stopped");
                let _ = reply.send(result);
                return;
            }
        }
        self.commit();
    }

    fn active_path(&self) -> std::path::PathBuf {
        segment::segment_path(&self.shared.dir, self.active.id)
    }

    fn local(&mut self, body: Bytes, head: EventHead, reply: oneshot::Sender<Result<LocalEvent>>) {
        let origin = self.shared.local.clone();
        let Some(seq) = self
            .hw
            .get(&origin)
            .map_or(0, |m| m.last_seq)
            .max(self.local_floor)
            .checked_add(1)
        else {
            // Never wraps to 0: the log would hide every later event behind the old ones.
            let _ = reply.send(Err(EventError::Internal(
                "the local event seq is exhausted (u64::MAX)".into(),
            )));
            return;
        };
        match self.stage(&origin, seq, &body, &head) {
            Ok(()) => {
                let id = EventId { origin, seq };
                self.replies
                    .push(Reply::Local(reply, LocalEvent { id, bytes: body }));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn remote(
        &mut self,
        origin: String,
        seq: u64,
        body: Bytes,
        head: EventHead,
        reply: oneshot::Sender<Result<AppendOutcome>>,
    ) {
        let origin = match self.hw.get_key_value(origin.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(origin),
        };
        let last = self.hw.get(&origin).map_or(0, |m| m.last_seq);
        if seq <= last {
            // Answered after the commit, so "duplicate" never overtakes the original's fsync.
            self.replies
                .push(Reply::Remote(reply, AppendOutcome::Duplicate));
            return;
        }
        // A gap after events already held (the origin set some aside, its retention dropped
        // them before they came, or they were lost to damage in its outbox): noted as a hole,
        // refilled in place from peers at the next start where they still hold them.
        let gap = (last > 0 && seq > last.saturating_add(1)).then(|| Hole {
            origin: origin.to_string(),
            after: last,
            before: seq,
        });
        match self.stage(&origin, seq, &body, &head) {
            Ok(()) => {
                if let Some(hole) = gap {
                    warn!(hole = %hole, "gap in an origin's events; noted to be refilled from peers");
                    self.gaps.push(hole);
                }
                self.replies
                    .push(Reply::Remote(reply, AppendOutcome::Appended))
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Encodes one record into the batch buffer, rolling the segment first when it is full.
    fn stage(&mut self, origin: &Arc<str>, seq: u64, body: &[u8], head: &EventHead) -> Result<()> {
        let rec = NewRecord {
            origin,
            seq,
            received_ms: self.shared.opts.clock.now_ms(),
            created_on: head.created_on,
            event_type: &head.event_type,
            body,
        };
        let size = rec.encoded_len() as u64;
        let used = self.committed_len + self.buf.len() as u64;
        if self.active_records > 0 && used + size > self.shared.opts.segment_bytes {
            self.commit();
            if !self.active.log.is_clean() {
                // Sealing a segment whose failed write is not cut back yet would keep it.
                return Err(EventError::Internal(
                    "the event log's last failed write could not be cut back yet".into(),
                ));
            }
            self.roll()?;
        }
        let pos = Pos {
            seg: self.active.id,
            offset: self.committed_len + self.buf.len() as u64,
        };
        rec.encode(&mut self.buf);
        self.active_records += 1;
        let mark = self.hw.entry(origin.clone()).or_default();
        let prev = *mark;
        mark.last_seq = seq;
        mark.max_created = mark.max_created.max(head.created_on);
        let mut sse = Vec::with_capacity(body.len() + 8);
        ring::sse_data_lines(body, &mut sse);
        self.pending.push(Pending {
            origin: origin.clone(),
            seq,
            pos,
            size,
            received_ms: rec.received_ms,
            created_on: head.created_on,
            prev,
            event_type: head.event_type.as_str().into(),
            sse_data: Bytes::from(sse),
        });
        Ok(())
    }

    /// Writes and fsyncs the batch, publishes it to readers, wakes tailers, answers appenders.
    fn commit(&mut self) {
        if !self.buf.is_empty() {
            let path = self.active_path();
            // A failed write or fsync is cut back to the last commit by the append log (and
            // nothing more is appended until that cut succeeds).
            let log = &mut self.active.log;
            let written = log.append(&self.buf).and_then(|()| log.commit());
            if let Err(e) = written {
                self.shared.opts.disk.failed(&path, &e);
                self.fail_batch(path, e);
                return;
            }
            self.shared.opts.disk.succeeded();
            let mut st = self.shared.write_state();
            for p in &self.pending {
                st.note_record(&p.origin, p.seq, p.pos, p.size, p.received_ms, p.created_on);
            }
            let first = st.appended + 1;
            st.appended += self.pending.len() as u64;
            let appended = st.appended;
            drop(st);
            self.committed_len += self.buf.len() as u64;
            self.buf.clear();
            {
                let mut ring = self.shared.write_ring();
                for (i, p) in self.pending.drain(..).enumerate() {
                    ring.push(RecentEvent {
                        position: first + i as u64,
                        origin: p.origin,
                        seq: p.seq,
                        created_on: p.created_on,
                        event_type: p.event_type,
                        sse_data: p.sse_data,
                    });
                }
            }
            self.shared.notify.send_replace(appended);
            if !self.gaps.is_empty() {
                self.note_gaps();
            }
        }
        for reply in self.replies.drain(..) {
            match reply {
                Reply::Local(tx, ev) => drop(tx.send(Ok(ev))),
                Reply::Remote(tx, outcome) => drop(tx.send(Ok(outcome))),
            }
        }
    }

    /// Adds the gaps of a committed batch to the holes to refill, durably (rare: an origin's
    /// run of seqs has a gap only when events were set aside, dropped or lost).
    fn note_gaps(&mut self) {
        let gaps = std::mem::take(&mut self.gaps);
        let mut holes = self.shared.holes.locked();
        if let Err(e) = holes::add(&self.shared.dir, &mut holes, gaps) {
            error!(error = %e, "cannot write the event log's holes; they are refilled only if this node restarts before it stops");
        }
    }

    /// Undoes a batch whose write or fsync failed (the append log cut its bytes), so no reader
    /// or later seq ever sees it.
    fn fail_batch(&mut self, path: std::path::PathBuf, source: std::io::Error) {
        error!(path = %path.display(), error = %source, "event log write failed; failing the batch");
        self.active_records -= self.pending.len() as u64;
        self.gaps.clear();
        for p in self.pending.drain(..).rev() {
            self.hw.insert(p.origin, p.prev);
        }
        self.buf.clear();
        // Every request gets the error with its kind, so a full disk answers 507, not 500.
        let err = || EventError::Io {
            path: path.clone(),
            source: crate::durable::copy_io(&source),
        };
        for reply in self.replies.drain(..) {
            match reply {
                Reply::Local(tx, _) => drop(tx.send(Err(err()))),
                Reply::Remote(tx, _) => drop(tx.send(Err(err()))),
            }
        }
    }

    /// Puts a hole's events back where they belong (see [`super::holes`]), then reloads the
    /// state from the files (positions after the insertion moved). Readers in flight keep the
    /// segments they hold open (the old files); the ring of recent events is left as it is:
    /// refilled events are old ones, for cursors from before the hole.
    fn refill(&mut self, hole: &Hole, events: &[(u64, Bytes, EventHead)]) -> Result<()> {
        if !self.active.log.is_clean() {
            return Err(EventError::Internal(
                "the event log's last failed write could not be cut back yet".into(),
            ));
        }
        let received_ms = self.shared.opts.clock.now_ms();
        let mut records = Vec::new();
        for (seq, body, head) in events {
            NewRecord {
                origin: &hole.origin,
                seq: *seq,
                received_ms,
                created_on: head.created_on,
                event_type: &head.event_type,
                body,
            }
            .encode(&mut records);
        }
        let plan = holes::plan(&self.shared.read_state(), hole)?;
        let Some(plan) = plan else {
            warn!(hole = %hole, "events lost to damage are past retention now; not refilled");
            return Ok(());
        };
        holes::rewrite(&plan, &records)?;
        let (mut state, active, _) = segment::recover(&self.shared.dir, &self.shared.opts.disk)?;
        let mut current = self.shared.write_state();
        state.appended = current.appended;
        state.local_floor = current.local_floor;
        self.hw = state
            .origins
            .iter()
            .map(|(o, i)| (o.clone(), i.mark()))
            .collect();
        let back = state.segments.back().expect("the log always has a segment");
        self.committed_len = back.len;
        self.active_records = back.records;
        *current = state;
        drop(current);
        self.active = active;
        info!(hole = %hole, events = events.len(), "refilled events lost to damage from a peer");
        Ok(())
    }

    /// Seals the active segment (already committed) and starts the next one.
    fn roll(&mut self) -> Result<()> {
        let cp: Checkpoint = self.hw.iter().map(|(o, m)| (o.clone(), *m)).collect();
        let (active, meta) = segment::create(&self.shared.dir, self.active.id + 1, cp)?;
        self.committed_len = meta.len;
        self.active_records = 0;
        self.rolled = true;
        self.active = active;
        self.shared.write_state().segments.push_back(meta);
        Ok(())
    }

    fn retention_logged(&mut self) {
        if let Err(e) = self.retention() {
            error!(error = %e, "event log retention failed");
        }
    }

    /// Drops whole sealed segments older than the retention or beyond the size limit.
    fn retention(&mut self) -> Result<()> {
        self.last_retention = Instant::now();
        self.rolled = false;
        let shared = self.shared.clone();
        let opts = &shared.opts;
        let cutoff = opts
            .clock
            .now_ms()
            .saturating_sub(opts.retention.as_millis() as u64);
        let stale_active = {
            let st = self.shared.read_state();
            let a = st.segments.back().expect("the log always has a segment");
            a.records > 0 && a.newest_received_ms < cutoff
        };
        if stale_active && self.pending.is_empty() {
            self.roll()?;
        }
        let mut removed = 0;
        loop {
            let gone = {
                let mut st = self.shared.write_state();
                let front = st.segments.front().expect("the log always has a segment");
                let expired = front.newest_received_ms < cutoff;
                if st.segments.len() < 2 || !(expired || st.total_bytes() > opts.max_bytes) {
                    break;
                }
                st.drop_oldest()
            };
            let Some(seg) = gone else { break };
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(EventError::Io {
                        path: seg.path.clone(),
                        source: e,
                    })
                }
            }
            info!(segment = %seg.path.display(), "event log segment dropped by retention");
            removed += 1;
        }
        if removed > 0 {
            segment::sync_dir(&self.shared.dir)?;
        }
        Ok(())
    }
}
