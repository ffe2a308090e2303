//! Reading pages from the log: pick a start from the sparse index, then scan segments with
//! positioned reads. Bounded memory per call: one read buffer plus the page's events.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use super::cursor::{Cursor, StartPoint};
use super::filter::TypeFilter;
use super::log::{Page, Shared};
use super::record::{self, Decoded, RecordView};
use super::state::{Pos, Segment, State};
use super::{EventError, EventId, Result};

const CHUNK: usize = 256 << 10;
/// A read returns (with `caught_up: false`) after scanning this much without filling its page,
/// so a narrow type filter over a big log never holds a caller for long.
const MAX_SCAN_BYTES: u64 = 32 << 20;

/// The committed extent of one segment at the time of the read.
struct SegView {
    seg: Arc<Segment>,
    start: u64,
    end: u64,
}

/// The cursor a start point stands for on this node (see the module docs).
pub(crate) fn resolve(state: &State, local: &str, from: &StartPoint, now_ms: u64) -> Cursor {
    match from {
        StartPoint::Beginning => Cursor::beginning(),
        StartPoint::SinceEpochSeconds(s) => Cursor::since(*s),
        StartPoint::Cursor(c) => c.clone(),
        StartPoint::Now => {
            // This node's own origin goes by seq even before its first event, so an event
            // created a moment before the client connected but appended after still counts.
            let mut c = Cursor::since(now_ms / 1000);
            c.set(local, state.local_floor);
            for (origin, idx) in &state.origins {
                c.set(origin, idx.last_seq);
            }
            c
        }
    }
}

const WHAT_TO_DO: &str =
    "resume with since=beginning (everything still retained) or since=<epoch seconds>, \
     or from a node that still holds them";

/// Refuses (400) a cursor that claims to have read an origin implausibly far beyond what this
/// node knows of it (the bound of [`crate::plausible`]): it would silently skip every event of
/// that origin until its seqs caught up. A cursor a little ahead (taken on a node that has
/// received more of an origin than this one) is fine: the reader waits for the rest.
fn check_plausible(state: &State, local: &str, cursor: &Cursor, now_ms: u64) -> Result<()> {
    let now_us = now_ms.saturating_mul(1000);
    for (origin, seq) in cursor.all_seqs() {
        let mut known = state.origins.get(origin).map_or(0, |idx| idx.last_seq);
        if origin == local {
            known = known.max(state.local_floor);
        }
        if !crate::plausible::seq_ok(seq, known, now_us) {
            return Err(EventError::BadCursor(format!(
                "the cursor has read {origin} up to seq {seq}, implausibly far beyond what this \
                 node knows of it ({known}); take the cursor from an event's `id:`"
            )));
        }
    }
    Ok(())
}

/// Refuses a cursor that still has to deliver events this node no longer holds.
fn check_expired(state: &State, cursor: &Cursor) -> Result<()> {
    for (origin, &last) in cursor.seqs() {
        let Some(idx) = state.origins.get(origin.as_str()) else {
            continue;
        };
        let floor = idx.effective_floor();
        if last < floor {
            let held = match idx.first_retained() {
                Some(first) => format!("the oldest event of {origin} held here is seq {first}"),
                None => format!("no event of {origin} is held here any more"),
            };
            return Err(EventError::CursorExpired(format!(
                "events of {origin} after seq {last} were removed by retention ({held}); {WHAT_TO_DO}"
            )));
        }
    }
    let since = cursor.since_seconds();
    if since > 0 {
        for (origin, idx) in &state.origins {
            let passed = cursor.skipped(origin).unwrap_or(0);
            if cursor.seq(origin).is_none()
                && idx.floor.last_seq > passed
                && idx.floor.max_created >= since
            {
                return Err(EventError::CursorExpired(format!(
                    "events of {origin} created at or after {since} were removed by retention; {WHAT_TO_DO}"
                )));
            }
        }
    }
    Ok(())
}

/// Where a scan serving `cursor` must start, `None` when nothing retained is ahead of it.
fn start_pos(state: &State, cursor: &Cursor) -> Option<Pos> {
    let since = cursor.since_seconds();
    // Segments whose events were all created before `since` hold nothing for unseen origins.
    let time_start = state
        .segments
        .iter()
        .find(|s| s.records > 0 && s.max_created >= since)
        .map(|s| Pos {
            seg: s.seg.id,
            offset: s.header_len,
        });
    let mut start: Option<Pos> = None;
    for (origin, idx) in &state.origins {
        let pos = match cursor.seq(origin) {
            Some(last) if last >= idx.last_seq => None,
            Some(last) => idx.lookup(last + 1),
            None => {
                let passed = cursor.skipped(origin).unwrap_or(0);
                match (idx.lookup(passed.saturating_add(1)), time_start) {
                    (Some(first), Some(t)) if passed < idx.last_seq => Some(first.max(t)),
                    _ => None,
                }
            }
        };
        if let Some(p) = pos {
            start = Some(start.map_or(p, |s| s.min(p)));
        }
    }
    start
}

/// Under the read lock: checks the cursor and takes the segment extents to scan.
/// Also returns how many records were committed then: a scan of the views that reaches their
/// end has seen every record up to that position.
fn plan(
    shared: &Shared,
    cursor: &Cursor,
    origin_only: Option<&str>,
) -> Result<(Option<Vec<SegView>>, u64)> {
    let st = shared.read_state();
    check_plausible(&st, &shared.local, cursor, shared.opts.clock.now_ms())?;
    check_expired(&st, cursor)?;
    let appended = st.appended;
    let start = match origin_only {
        Some(o) => match (st.origins.get(o), cursor.seq(o)) {
            (Some(idx), Some(last)) if last < idx.last_seq => idx.lookup(last + 1),
            _ => None,
        },
        None => start_pos(&st, cursor),
    };
    let Some(start) = start else {
        return Ok((None, appended));
    };
    let views = st
        .segments
        .iter()
        .filter(|s| s.seg.id >= start.seg)
        .map(|s| SegView {
            seg: s.seg.clone(),
            start: if s.seg.id == start.seg {
                start.offset
            } else {
                s.header_len
            },
            end: s.len,
        })
        .collect();
    Ok((Some(views), appended))
}

/// Serves [`EventLog::read`](super::EventLog::read).
pub(crate) fn read_page(
    shared: &Shared,
    from: &StartPoint,
    filter: &TypeFilter,
    max: usize,
) -> Result<Page> {
    let now_ms = shared.opts.clock.now_ms();
    let mut cursor = resolve(&shared.read_state(), &shared.local, from, now_ms);
    let (views, position) = plan(shared, &cursor, None)?;
    let Some(views) = views else {
        return Ok(Page {
            events: Vec::new(),
            next: cursor,
            caught_up: true,
            position,
        });
    };
    let mut events = Vec::new();
    // Consecutive events mostly share an origin: intern without taking the lock each time.
    let mut last_origin: Option<Arc<str>> = None;
    let caught_up = scan(&views, Some(MAX_SCAN_BYTES), |rec| {
        if !cursor.visit(rec.origin, rec.seq, rec.created_on) {
            return Flow::Go;
        }
        if filter.admits(rec.event_type, || rec.body) {
            let origin = match &last_origin {
                Some(o) if &**o == rec.origin => o.clone(),
                _ => last_origin.insert(shared.intern(rec.origin)).clone(),
            };
            events.push((
                EventId {
                    origin,
                    seq: rec.seq,
                },
                Bytes::copy_from_slice(rec.body),
            ));
            if events.len() >= max {
                return Flow::Stop;
            }
        }
        Flow::Go
    })?;
    Ok(Page {
        events,
        next: cursor,
        caught_up,
        position,
    })
}

/// Serves [`EventLog::read_origin`](super::EventLog::read_origin).
pub(crate) fn read_origin(
    shared: &Shared,
    origin: &str,
    after_seq: u64,
    max: usize,
) -> Result<Vec<(EventId, Bytes)>> {
    let mut cursor = Cursor::beginning();
    cursor.set(origin, after_seq);
    let Some(views) = plan(shared, &cursor, Some(origin))?.0 else {
        return Ok(Vec::new());
    };
    let interned = shared.intern(origin);
    let mut events = Vec::new();
    scan(&views, None, |rec| {
        if rec.origin != origin || rec.seq <= after_seq {
            return Flow::Go;
        }
        events.push((
            EventId {
                origin: interned.clone(),
                seq: rec.seq,
            },
            Bytes::copy_from_slice(rec.body),
        ));
        if events.len() >= max {
            Flow::Stop
        } else {
            Flow::Go
        }
    })?;
    Ok(events)
}

enum Flow {
    Go,
    Stop,
}

/// Feeds every committed record of `views` to `f` until it says stop or `limit` bytes were
/// scanned (the cursor records its progress, so stopping anywhere is safe). Returns whether the
/// scan reached the end of what was committed when the read began.
fn scan(
    views: &[SegView],
    limit: Option<u64>,
    mut f: impl FnMut(&RecordView<'_>) -> Flow,
) -> Result<bool> {
    let mut buf = Vec::new();
    let mut scanned = 0u64;
    for v in views {
        let mut off = v.start;
        let mut buf_off = off;
        buf.clear();
        while off < v.end {
            let rel = (off - buf_off) as usize;
            let (flow, size) = match record::decode(&buf[rel.min(buf.len())..]) {
                Decoded::Record(rec, size) => (f(&rec), size as u64),
                Decoded::Incomplete(need) => {
                    if off + need as u64 > v.end {
                        return Err(corrupt(&v.seg, off, "record runs past the committed end"));
                    }
                    let want = need.max(CHUNK).min((v.end - off) as usize);
                    buf.resize(want, 0);
                    v.seg
                        .file
                        .read_exact_at(&mut buf, off)
                        .map_err(|e| EventError::Io {
                            path: v.seg.path.clone(),
                            source: e,
                        })?;
                    buf_off = off;
                    continue;
                }
                Decoded::Corrupt(what) => return Err(corrupt(&v.seg, off, &what)),
            };
            off += size;
            scanned += size;
            if matches!(flow, Flow::Stop) || limit.is_some_and(|l| scanned >= l) {
                return Ok(off >= v.end && std::ptr::eq(v, views.last().expect("non-empty")));
            }
        }
    }
    Ok(true)
}

fn corrupt(seg: &Segment, offset: u64, what: &str) -> EventError {
    EventError::Corrupt {
        path: seg.path.clone(),
        offset,
        what: what.to_string(),
    }
}
