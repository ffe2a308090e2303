//! Stream-event log: durable, replayable, per-origin ordered, with live tailing.
//!
//! # Ids
//! Every event has an [`EventId`]: the instanceId of the node that first accepted it (its
//! *origin*) and that origin's sequence number, increasing (dense from 1 by default). Local
//! events get the next local seq inside the appender thread, so seq order is log order; the last
//! seq is recovered from the log at open (and from segment checkpoints when retention has dropped
//! every local event), so a seq is never handed out twice while the data directory survives.
//! When the log knows nothing of its own origin and [`EventLogOptions::seq_from_clock`] is set
//! (the node sets it), the first local seq is the clock in microseconds plus one instead: a node
//! whose data directory was lost then still issues seqs above its old ones, which its peers
//! remember (like the outbox's seqs; it holds while a node averages under a million events a
//! second). That start is the origin's *floor* here: a cursor taken before the first local event
//! holds it, so it resumes without a spurious expiry. Remote events with this node's own origin
//! are accepted like any other (restoring history after a data loss) and the local seq
//! continues above them.
//!
//! # On disk
//! A directory of segment files `NNNNNNNNNNNNNNNNNNNN.seg` (see [`record`] for the format). Each
//! segment starts with a checkpoint: per origin, the last seq and newest `eventCreatedOn` of
//! everything before it, so dropping older segments never loses the high-water marks. Records
//! carry length, CRC32, origin, seq, received-at (ms), `eventCreatedOn`, `type` and the event's
//! original bytes. A torn tail is truncated at open. One dedicated appender thread writes and
//! group-commits (one `fdatasync` per batch of concurrent appenders); readers only ever see
//! fsync'd records. Retention drops whole sealed segments by age of their newest record and by
//! total size; the active segment is rolled first when it is itself too old.
//!
//! Memory: per segment ~150 bytes plus its checkpoint; per origin a sparse index with one entry
//! (24 bytes) per 128 events of that origin, per 256 KiB of log, and per segment it appears in,
//! i.e. about 0.2 bytes per event. Event bodies are held in memory only in one read page per
//! reader and in the ring of recent records (at most 8,192 records and about 16 MiB).
//!
//! # Cursor semantics
//! A [`Cursor`] is `{since: epoch seconds, seqs: {origin: last seq read}}`. Reading from it on
//! any node yields, in that node's log order (which is seq order per origin):
//! - for an origin present in `seqs`: every retained event with seq > `seqs[origin]`;
//! - for an origin absent from `seqs`: its first event (in seq order) whose `eventCreatedOn` is
//!   at or after `since`, and every later event of that origin, whatever its `eventCreatedOn`.
//!
//! After reading an event (or skipping it because of the type filter) its origin enters the
//! cursor with that seq. Both rules depend only on the events themselves, never on the node, so
//! a cursor taken on one node resumes on any other with nothing lost and nothing repeated, as
//! long as both nodes hold the same events of each origin.
//!
//! Start points map onto cursors: [`StartPoint::Beginning`] is `since = 0`, no seqs (everything
//! retained); [`StartPoint::SinceEpochSeconds`] is `since = s`, no seqs; [`StartPoint::Now`] is
//! `since = now` plus every origin this node knows at its last seq, and this node's own origin
//! even at seq 0. So "no cursor" means new events only: of a known origin, those past its seq
//! then; of an origin this node had not heard of, those created from the connect time on,
//! whichever node they are read from. (The time rule needs roughly synchronised clocks, and
//! only ever applies to origins the first node had not seen.)
//!
//! A cursor is *expired* ([`EventError::CursorExpired`]) when events it still has to deliver were
//! removed: for an origin in `seqs`, when `seqs[origin]` is below the first seq this node still
//! holds (retention dropped the rest, or this node's log of that origin starts later); for an
//! absent origin with `since > 0`, when retention dropped an event of that origin created at or
//! after `since`. `since = 0` never expires. A gap in the middle of an origin's events (the origin
//! set a message aside as undeliverable, or its own retention dropped events before this node
//! caught up) is accepted by [`EventLog::append_remote`] and skipped silently by readers.
//!
//! Encoding: `v1~<since>~<origin>~<seq>~<origin>~<seq>...`, e.g. `v1~1686214571~node-a~500~node-b~321`.
//! A seq written `s<seq>` (`node-c~s12`) marks an origin not started yet, passed over through
//! that seq because its events were created before `since`; it saves rescanning only.
//! instanceIds use `[A-Za-z0-9._-]`, so `~` never clashes; the text is URL-safe without escaping
//! and valid as an SSE `id:`.
//!
//! # Tailing
//! [`EventLog::subscribe`] gives a `watch` receiver bumped after every commit. A tailer calls
//! `borrow_and_update()`, reads pages until [`Page::caught_up`], then awaits `changed()`. Every
//! tailer reads the log at its own pace; nothing is buffered per tailer. [`EventLog::read`] does
//! blocking file I/O (page cache reads): async callers run it in `spawn_blocking`.
//!
//! A caught-up page also gives the log *position* it read up to (records committed since
//! open). From there [`EventLog::read_recent`] serves what follows from memory: the appender
//! keeps the newest records (bounded, see `ring.rs`) with their SSE `data:` lines formatted
//! once, so live tailers cost no file read and no blocking task. It never blocks and never
//! drops anyone: a reader whose next record left memory is told [`Recent::Behind`] and reads
//! the log from its cursor again. The caller applies its cursor (`Cursor::visit`) and type
//! filter to every record it is fed, exactly as a read of the log would.
//!
//! # Errors
//! [`EventError`] maps to HTTP as: `BadEvent`, `BadCursor`, `BadOrigin`, `ImplausibleSeq` → 400; `TooLarge` → 413;
//! `CursorExpired` → 410; `Io`, `Corrupt`, `Closed`, `Internal` → 500 (503 for `Closed`,
//! `Restoring` and `Refilling`).
//!
//! # Damage and gaps
//! Recovery skips damaged records and keeps the rest; the events lost in the middle of an
//! origin's run, and gaps noted at run time, are [`holes`], refilled from peers in place (in
//! the segment they belong to, which is rewritten), so log order stays seq order per origin.

mod appender;
mod cursor;
mod event;
mod filter;
pub mod holes;
mod log;
mod read;
pub(crate) mod record;
pub mod replay;
mod ring;
mod segment;
mod state;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_concurrency;
#[cfg(test)]
mod tests_damage;
#[cfg(test)]
mod tests_durability;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use cursor::{Cursor, StartPoint};
pub use filter::{project_of, ProjectFilter, TypeFilter};
pub use log::{AppendOutcome, EventLog, EventStats, LocalEvent, Page};
pub use ring::{sse_data_lines, Recent, RecentEvent};

/// An event's `eventCreatedOn` (epoch seconds), read by the one parser of event heads.
pub fn created_on(body: &[u8]) -> Option<u64> {
    event::validate(body, usize::MAX).ok().map(|h| h.created_on)
}

/// What went wrong in the event log. See the module docs for the HTTP status of each variant.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The event is not acceptable: not JSON, not an object, or a required field is missing.
    #[error("bad event: {0}")]
    BadEvent(String),
    /// The event is bigger than `max_event_bytes`.
    #[error("event is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// A cursor or `since` value that does not parse.
    #[error("bad cursor: {0}")]
    BadCursor(String),
    /// An origin instanceId or seq that cannot be right.
    #[error("bad origin: {0}")]
    BadOrigin(String),
    /// A seq implausibly far beyond the origin's last (see [`crate::plausible`]): forged.
    #[error("implausible seq: {0}")]
    ImplausibleSeq(String),
    /// Events the cursor still has to deliver were removed by retention.
    #[error("cursor expired: {0}")]
    CursorExpired(String),
    #[error("event log i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt event log {path} at offset {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    /// The log was shut down (or its appender thread died).
    #[error("event log is closed")]
    Closed,
    /// The log is restoring its history from peers (`event_history`): events from peer
    /// batches wait (the sender retries), so a newer event cannot overtake older restored ones.
    #[error("the event log is restoring its history from peers; retry shortly")]
    Restoring,
    /// Events lost to damage are being refilled from peers ([`holes`]): reading now could
    /// pass them by for good.
    #[error("the event log is refilling events lost to damage from its peers; retry shortly")]
    Refilling,
    #[error("event log internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = EventError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EventError {
    let path = path.into();
    move |source| EventError::Io { path, source }
}

/// The id of one event: its origin's instanceId and the origin's sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    pub origin: Arc<str>,
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.origin, self.seq)
    }
}

/// Milliseconds since the epoch. Injectable so retention can be tested without waiting.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Clock(Arc::new(crate::clock::now_ms))
    }

    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Clock(Arc::new(f))
    }

    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// How an [`EventLog`] behaves. `instance_id` is this node's; the rest have working defaults.
#[derive(Debug, Clone)]
pub struct EventLogOptions {
    pub instance_id: String,
    /// Events older than this (by the time this node received them) are dropped, a segment at a time.
    pub retention: Duration,
    /// Older segments are dropped while the log is bigger than this.
    pub max_bytes: u64,
    /// A segment is sealed and a new one started once it passes this size.
    pub segment_bytes: u64,
    pub max_event_bytes: usize,
    /// How often the appender thread applies retention when idle.
    pub retention_interval: Duration,
    /// When the log knows nothing of this node's own origin (first start, or a lost data
    /// directory), local seqs continue from the clock in microseconds instead of 1, so they
    /// are above anything this node issued before and peers do not drop them as duplicates
    /// (see the module docs). Off by default: library users and unit tests get seqs from 1.
    pub seq_from_clock: bool,
    pub clock: Clock,
    /// Where a full disk is reported (the node's, shared with the other stores).
    pub disk: std::sync::Arc<crate::durable::DiskWatch>,
}

impl EventLogOptions {
    pub fn new(instance_id: impl Into<String>) -> Self {
        EventLogOptions {
            instance_id: instance_id.into(),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 10 << 30,
            segment_bytes: 64 << 20,
            max_event_bytes: 1 << 20,
            retention_interval: Duration::from_secs(10),
            seq_from_clock: false,
            clock: Clock::system(),
            disk: std::sync::Arc::default(),
        }
    }
}
