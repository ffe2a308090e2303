//! `EventLog`: the public face of the event log. Async appends hand work to the appender
//! thread; reads are synchronous positioned reads of committed data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::appender::{Appender, Request};
use super::cursor::{Cursor, StartPoint};
use super::filter::TypeFilter;
use super::holes::{self, Hole};
use super::ring::{Recent, RecentEvent, Ring};
use super::state::State;
use super::{event, read, segment, EventError, EventId, EventLogOptions, Result};
use crate::locks::{LockExt, RwLockExt};
use crate::wire::valid_instance_id;

/// The largest event the format can hold with room to spare.
const MAX_EVENT_BYTES_LIMIT: usize = 64 << 20;

/// What [`EventLog::append_remote`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended,
    /// The log already holds this origin at or past this seq.
    Duplicate,
}

/// A local event as stored: its id and its bytes (with `instanceId` filled in), ready to forward.
#[derive(Debug, Clone)]
pub struct LocalEvent {
    pub id: EventId,
    pub bytes: Bytes,
}

/// One page of a read.
#[derive(Debug, Clone)]
pub struct Page {
    /// Matching events in this node's log order (seq order within each origin).
    pub events: Vec<(EventId, Bytes)>,
    /// Where the next read starts: past every event of this page and every event skipped by
    /// the type filter. The cursor right after one event of the page is the read's start
    /// cursor advanced ([`Cursor::advance`]) through the page up to that event.
    pub next: Cursor,
    /// The read reached the end of the log: wait for a wake-up before reading again. When
    /// false, read again at once; the page may even be empty when a type filter skipped
    /// everything in the (bounded) stretch of log one read scans.
    pub caught_up: bool,
    /// When `caught_up`: the read saw every record up to this log position, so it can go on
    /// with [`EventLog::read_recent`] from there.
    pub position: u64,
}

/// Figures for metrics and the status page.
#[derive(Debug, Clone, PartialEq)]
pub struct EventStats {
    pub events: u64,
    pub segments: usize,
    pub bytes: u64,
    pub oldest_received_ms: Option<u64>,
    pub last_seq_by_origin: BTreeMap<String, u64>,
    /// Approximate memory of the in-memory index.
    pub index_bytes: usize,
}

/// What the appender thread and readers share.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub opts: EventLogOptions,
    pub local: Arc<str>,
    state: RwLock<State>,
    /// The newest committed records, for live tailers (see [`ring`](super::ring)).
    ring: RwLock<Ring>,
    pub notify: watch::Sender<u64>,
    /// Events this log lacks in the middle of an origin's run (lost to damage, or never
    /// received), waiting to be refilled from peers ([`holes`](super::holes)).
    pub holes: Mutex<Vec<Hole>>,
}

impl Shared {
    /// A panic while holding the lock cannot leave the state half-updated in a way readers
    /// would misread (updates are append-only), so poisoning is ignored.
    pub fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read_locked()
    }

    pub fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write_locked()
    }

    pub fn intern(&self, origin: &str) -> Arc<str> {
        self.read_state().intern(origin)
    }

    pub fn read_ring(&self) -> RwLockReadGuard<'_, Ring> {
        self.ring.read_locked()
    }

    pub fn write_ring(&self) -> RwLockWriteGuard<'_, Ring> {
        self.ring.write_locked()
    }
}

/// A durable, replayable log of stream events. See the module docs for ids and cursors.
pub struct EventLog {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
    /// Appends queued for or in the appender (backpressure beyond it).
    bound: crate::durable::bound::Bound,
    /// Set while the history is restored from peers: peer batches' events are refused.
    restoring: std::sync::atomic::AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EventLog {
    /// Opens the log in `dir` (created if missing), recovering from a crash: a torn tail is
    /// truncated, the index rebuilt, the local seq recovered. Blocking: call it at startup or
    /// from `spawn_blocking`.
    pub fn open(dir: impl AsRef<Path>, opts: EventLogOptions) -> Result<EventLog> {
        if !valid_instance_id(&opts.instance_id) {
            return Err(EventError::BadOrigin(format!(
                "invalid instanceId {:?}",
                opts.instance_id
            )));
        }
        if opts.max_event_bytes == 0 || opts.max_event_bytes > MAX_EVENT_BYTES_LIMIT {
            return Err(EventError::Internal(format!(
                "max_event_bytes must be between 1 and {MAX_EVENT_BYTES_LIMIT}"
            )));
        }
        let dir = dir.as_ref().to_path_buf();
        let (mut state, active, found) = segment::recover(&dir, &opts.disk)?;
        let holes = holes::note(&dir, found)?;
        let appended = state.appended;
        let local = state.intern(&opts.instance_id);
        if opts.seq_from_clock && !state.origins.contains_key(&local) {
            state.local_floor = opts.clock.now_ms().saturating_mul(1000);
        }
        let shared = Arc::new(Shared {
            dir,
            opts,
            local,
            state: RwLock::new(state),
            ring: RwLock::new(Ring::new(appended + 1)),
            notify: watch::Sender::new(appended),
            holes: Mutex::new(holes),
        });
        let appender = Appender::new(shared.clone(), active);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("event-log-appender".into())
            .spawn(move || appender.run(rx))
            .map_err(|e| EventError::Internal(format!("cannot start the appender thread: {e}")))?;
        Ok(EventLog {
            shared,
            tx,
            bound: crate::durable::bound::Bound::default(),
            restoring: std::sync::atomic::AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn instance_id(&self) -> &str {
        &self.shared.local
    }

    /// Validates and appends an event of this node; returns once it is fsync'd.
    pub async fn append_local(&self, body: &[u8]) -> Result<EventId> {
        self.append_local_event(body).await.map(|e| e.id)
    }

    /// Like [`append_local`](Self::append_local), also returning the stored bytes to forward.
    pub async fn append_local_event(&self, body: &[u8]) -> Result<LocalEvent> {
        let head = event::validate(body, self.shared.opts.max_event_bytes)?;
        let body = if head.has_instance_id {
            Bytes::copy_from_slice(body)
        } else {
            Bytes::from(event::with_instance_id(body, &self.shared.local))
        };
        let _room = self.bound.enter(1).await;
        let (reply, rx) = oneshot::channel();
        self.send(Request::Local { body, head, reply })?;
        rx.await.map_err(|_| EventError::Closed)?
    }

    /// Appends an event another node originated, idempotently: a seq at or below the origin's
    /// last is a `Duplicate`. A seq beyond last + 1 is accepted: the origin dropped the events
    /// in between (its retention, or a message it set aside), and readers skip the gap.
    pub async fn append_remote(
        &self,
        origin: &str,
        seq: u64,
        bytes: &[u8],
    ) -> Result<AppendOutcome> {
        self.check_restoring()?;
        self.check_remote(origin, seq)?;
        let head = event::validate(bytes, self.shared.opts.max_event_bytes)?;
        let _room = self.bound.enter(1).await;
        let (reply, rx) = oneshot::channel();
        let body = Bytes::copy_from_slice(bytes);
        self.send(Request::Remote {
            origin: origin.to_string(),
            seq,
            body,
            head,
            reply,
        })?;
        rx.await.map_err(|_| EventError::Closed)?
    }

    /// Like [`append_remote`](Self::append_remote) for several events of one origin, in seq
    /// order, sharing group commits (one fsync for the lot instead of one each). Results are
    /// in the same order. A transient failure of one commit may leave later events appended
    /// while an earlier one is not (a later retry of it is then a duplicate): only i/o errors
    /// cause that, and they fail the whole group.
    pub async fn append_remote_many(
        &self,
        origin: &str,
        events: Vec<(u64, &[u8])>,
    ) -> Vec<Result<AppendOutcome>> {
        if self.check_restoring().is_err() {
            return events.iter().map(|_| Err(EventError::Restoring)).collect();
        }
        self.remote_many(origin, events).await
    }

    /// While set, events of peer batches are refused with [`EventError::Restoring`] (the
    /// sender retries); [`restore_many`](Self::restore_many) is the one way in.
    pub fn set_restoring(&self, on: bool) {
        self.restoring
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Events this log lacks (lost to damage, or gaps in an origin's run) and has not
    /// refilled yet.
    pub fn holes(&self) -> Vec<Hole> {
        self.shared.holes.locked().clone()
    }

    /// Puts the events of `hole` fetched from a peer (seq ascending, each inside the hole)
    /// back where they belong in the log, and forgets the hole. Returns how many were put back.
    /// Events a peer does not hold any more stay lost (logged); the hole is closed either way.
    pub async fn refill(&self, hole: &Hole, events: Vec<(u64, &[u8])>) -> Result<usize> {
        let mut checked = Vec::with_capacity(events.len());
        let mut prev = hole.after;
        for (seq, bytes) in events {
            if !hole.contains(seq) || seq <= prev {
                return Err(EventError::BadOrigin(format!(
                    "seq {seq} of {} is not the next one inside the hole {hole}",
                    hole.origin
                )));
            }
            prev = seq;
            match event::validate(bytes, self.shared.opts.max_event_bytes) {
                Ok(head) => checked.push((seq, Bytes::copy_from_slice(bytes), head)),
                // Refused here like it was refused when it came (why it is missing): the
                // hole still closes, or it would be asked for at every start.
                Err(e) => {
                    tracing::warn!(origin = %hole.origin, seq, error = %e, "a refilled event is refused");
                }
            }
        }
        let n = checked.len();
        if n > 0 {
            let (reply, rx) = oneshot::channel();
            self.send(Request::Refill {
                hole: hole.clone(),
                events: checked,
                reply,
            })?;
            rx.await.map_err(|_| EventError::Closed)??;
        }
        let mut holes = self.shared.holes.locked();
        holes.retain(|h| h != hole);
        holes::store(&self.shared.dir, &holes)?;
        Ok(n)
    }

    fn check_restoring(&self) -> Result<()> {
        if self.restoring.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(EventError::Restoring);
        }
        Ok(())
    }

    /// Appends events of `origin` fetched from a peer's log (history restore), like
    /// [`append_remote_many`](Self::append_remote_many) but while peer batches wait.
    pub async fn restore_many(
        &self,
        origin: &str,
        events: Vec<(u64, &[u8])>,
    ) -> Vec<Result<AppendOutcome>> {
        self.remote_many(origin, events).await
    }

    async fn remote_many(
        &self,
        origin: &str,
        events: Vec<(u64, &[u8])>,
    ) -> Vec<Result<AppendOutcome>> {
        let _room = self.bound.enter(events.len()).await;
        let mut waiting = Vec::with_capacity(events.len());
        for (seq, bytes) in events {
            let sent = self.check_remote(origin, seq).and_then(|()| {
                event::validate(bytes, self.shared.opts.max_event_bytes).and_then(|head| {
                    let (reply, rx) = oneshot::channel();
                    self.send(Request::Remote {
                        origin: origin.to_string(),
                        seq,
                        body: Bytes::copy_from_slice(bytes),
                        head,
                        reply,
                    })
                    .map(|_| rx)
                })
            });
            waiting.push(sent);
        }
        let mut out = Vec::with_capacity(waiting.len());
        for w in waiting {
            out.push(match w {
                Ok(rx) => rx.await.map_err(|_| EventError::Closed).and_then(|r| r),
                Err(e) => Err(e),
            });
        }
        out
    }

    /// What may be appended for an origin: a seq from 1 up to the plausible bound (see
    /// [`crate::plausible`]), so a forged seq cannot push the origin's mark out of reach of
    /// its real events. (This node's own origin is allowed: its history restored from a peer.
    /// The receiver refuses batches that claim to come from this node.)
    fn check_remote(&self, origin: &str, seq: u64) -> Result<()> {
        if !valid_instance_id(origin) {
            return Err(EventError::BadOrigin(format!(
                "invalid origin instanceId {origin:?}"
            )));
        }
        if seq == 0 {
            return Err(EventError::BadOrigin(format!(
                "event seq of {origin} must start at 1"
            )));
        }
        let mark = self
            .shared
            .read_state()
            .origins
            .get(origin)
            .map_or(0, |idx| idx.last_seq);
        let now_us = self.shared.opts.clock.now_ms().saturating_mul(1000);
        if !crate::plausible::seq_ok(seq, mark, now_us) {
            return Err(EventError::ImplausibleSeq(format!(
                "event seq {seq} of {origin} is implausibly far ahead of its last {mark} (at most {})",
                crate::plausible::max_seq(mark, now_us)
            )));
        }
        Ok(())
    }

    fn send(&self, req: Request) -> Result<()> {
        self.tx.send(req).map_err(|_| EventError::Closed)
    }

    /// Reads up to `max` events from `from`. Blocking file reads: async callers use
    /// `spawn_blocking`. Errors with `CursorExpired` when retention removed events the cursor
    /// still had to deliver.
    pub fn read(&self, from: &StartPoint, filter: &TypeFilter, max: usize) -> Result<Page> {
        // A reader passing a hole now would move its cursor beyond the events refilled into
        // it; while the history restore (which refills) runs, it waits.
        if self.restoring.load(std::sync::atomic::Ordering::SeqCst)
            && !self.shared.holes.locked().is_empty()
        {
            return Err(EventError::Refilling);
        }
        read::read_page(&self.shared, from, filter, max.max(1))
    }

    /// Feeds `f` the records committed after log `position` (see [`Page::position`]) from
    /// memory, in log order, up to `max` of them, while `f` returns `true`. Every record fed
    /// counts as read, matching or not: the caller applies its cursor and filter. Returns
    /// [`Recent::Behind`] when the records right after `position` are no longer in memory:
    /// read the log from the cursor then. Never blocks on i/o.
    pub fn read_recent(
        &self,
        position: u64,
        max: usize,
        f: impl FnMut(&RecentEvent) -> bool,
    ) -> Recent {
        self.shared.read_ring().read_after(position, max.max(1), f)
    }

    /// Events of `origin` with seq > `after_seq`, up to `max`, for peers catching up.
    pub fn read_origin(
        &self,
        origin: &str,
        after_seq: u64,
        max: usize,
    ) -> Result<Vec<(EventId, Bytes)>> {
        read::read_origin(&self.shared, origin, after_seq, max.max(1))
    }

    /// Events of `origin` with a seq at or below this are not held here (never were, or
    /// retention removed them): [`read_origin`](Self::read_origin) after a lower seq is
    /// `CursorExpired`. 0 for an origin this log has not seen.
    pub fn origin_floor(&self, origin: &str) -> u64 {
        self.shared
            .read_state()
            .origins
            .get(origin)
            .map_or(0, |idx| idx.effective_floor())
    }

    /// The cursor of a reader starting now: new events only.
    pub fn cursor_now(&self) -> Cursor {
        let now_ms = self.shared.opts.clock.now_ms();
        read::resolve(
            &self.shared.read_state(),
            &self.shared.local,
            &StartPoint::Now,
            now_ms,
        )
    }

    /// Bumped after every commit (local or remote). Mark the value seen before reading, read
    /// until caught up, then await `changed()`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.notify.subscribe()
    }

    pub fn last_seq_by_origin(&self) -> BTreeMap<String, u64> {
        self.shared.read_state().last_seqs()
    }

    pub fn stats(&self) -> EventStats {
        let st = self.shared.read_state();
        EventStats {
            events: st.events(),
            segments: st.segments.len(),
            bytes: st.total_bytes(),
            oldest_received_ms: st
                .segments
                .iter()
                .find(|s| s.records > 0)
                .map(|s| s.oldest_received_ms),
            last_seq_by_origin: st.last_seqs(),
            index_bytes: st.index_bytes(),
        }
    }

    /// Applies retention now instead of at the next tick.
    pub async fn enforce_retention(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Retention(reply))?;
        rx.await.map_err(|_| EventError::Closed)?
    }

    /// Commits what is pending, stops the appender thread and waits for it. Later appends fail
    /// with `Closed`; reads keep working.
    pub async fn shutdown(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        if self.send(Request::Shutdown(reply)).is_err() {
            return Ok(());
        }
        let result = rx.await.unwrap_or(Ok(()));
        let handle = self.thread.locked().take();
        if let Some(h) = handle {
            tokio::task::spawn_blocking(move || h.join())
                .await
                .map_err(|e| EventError::Internal(format!("joining the appender: {e}")))?
                .map_err(|_| EventError::Internal("the appender thread panicked".into()))?;
        }
        result
    }
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("dir", &self.shared.dir)
            .finish()
    }
}
