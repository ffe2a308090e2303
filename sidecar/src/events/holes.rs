//! Holes: events of an origin lost to mid-log damage, to be refilled from peers.
//!
//! Recovery ([`crate::durable::frame::recover`]) skips damaged records and keeps the ones
//! after them, so an origin's events can have a gap in the middle of the log. Seqs are dense
//! per origin, so the gap is known: at each place records were lost (a *cut*), every origin's
//! last seq before it and first seq after it. A [`Hole`] is written to `<events>/holes` when the
//! log opens, so it survives a restart until it is refilled.
//!
//! Refilled events go back into the segment they were lost from (the last one whose
//! checkpoint has the origin at or before the hole), right before the origin's next record
//! there or at the segment's end (see [`plan`]). Each
//! origin's events so stay in seq order in log order, and cursors keep their meaning. While
//! holes wait, reads of the stream answer 503 (`EventError::Refilling`): a reader passing the
//! hole would move its cursor beyond the refilled events and never see them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use super::record::{self, Decoded};
use super::state::State;
use super::{io_err, EventError, Result};

const FILE: &str = "holes";

/// Events of `origin` with `after < seq < before` that this log lost.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hole {
    pub origin: String,
    pub after: u64,
    pub before: u64,
}

impl Hole {
    pub fn contains(&self, seq: u64) -> bool {
        seq > self.after && seq < self.before
    }
}

impl std::fmt::Display for Hole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} seqs {}..{}",
            self.origin,
            self.after + 1,
            self.before
        )
    }
}

/// One place records were lost: every origin's last seq before it, and (filled in as the
/// scan goes on) its first seq after it.
struct Cut {
    before: BTreeMap<Arc<str>, u64>,
    after: BTreeMap<Arc<str>, u64>,
}

/// Collects the cuts of a recovery scan, then says which origins lost events at each.
#[derive(Default)]
pub(crate) struct Finder {
    cuts: Vec<Cut>,
}

impl Finder {
    /// Records lost here: snapshots where every origin stands.
    pub fn cut(&mut self, state: &State) {
        let before = state
            .origins
            .iter()
            .map(|(o, idx)| (o.clone(), idx.last_seq))
            .collect();
        self.cuts.push(Cut {
            before,
            after: BTreeMap::new(),
        });
    }

    /// A record read after the cuts so far.
    pub fn record(&mut self, origin: &Arc<str>, seq: u64) {
        for cut in &mut self.cuts {
            cut.after.entry(origin.clone()).or_insert(seq);
        }
    }

    /// The holes found, given the state after the whole scan (whose last seqs include later
    /// segments' checkpoints: a seq known to have been written but not read was lost).
    pub fn holes(self, state: &State) -> Vec<Hole> {
        let mut out = Vec::new();
        for cut in self.cuts {
            let origins = cut.before.keys().chain(cut.after.keys());
            let mut seen = std::collections::BTreeSet::new();
            for origin in origins {
                if !seen.insert(origin.clone()) {
                    continue;
                }
                let after = cut.before.get(origin).copied().unwrap_or(0);
                let hole = match cut.after.get(origin) {
                    Some(&next) if next > after.saturating_add(1) => Hole {
                        origin: origin.to_string(),
                        after,
                        before: next,
                    },
                    Some(_) => continue,
                    None => {
                        let last = state.origins.get(origin).map_or(0, |i| i.last_seq);
                        if last <= after {
                            // Lost events beyond the last known seq are fetched by the
                            // history restore like any other missing tail.
                            continue;
                        }
                        Hole {
                            origin: origin.to_string(),
                            after,
                            before: last.saturating_add(1),
                        }
                    }
                };
                out.push(hole);
            }
        }
        out
    }
}

/// At open: the holes still waiting from an earlier start, plus those recovery just `found`
/// (logged, and written down before the log is used).
pub(crate) fn note(dir: &Path, found: Vec<Hole>) -> Result<Vec<Hole>> {
    let mut holes = load(dir)?;
    if found.is_empty() {
        return Ok(holes);
    }
    for h in &found {
        tracing::error!(hole = %h, "events lost to damage in the event log; they will be refilled from peers");
    }
    add(dir, &mut holes, found)?;
    Ok(holes)
}

/// Adds `new` holes to `holes` (once each) and writes the list down.
pub(crate) fn add(dir: &Path, holes: &mut Vec<Hole>, new: Vec<Hole>) -> Result<()> {
    for h in new {
        if !holes.contains(&h) {
            holes.push(h);
        }
    }
    store(dir, holes)
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The holes still waiting, from an earlier start.
pub(crate) fn load(dir: &Path) -> Result<Vec<Hole>> {
    let p = path(dir);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| EventError::Corrupt {
            path: p,
            offset: 0,
            what: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(p)(e)),
    }
}

/// Writes the holes still waiting, durably (an empty list removes the file).
pub(crate) fn store(dir: &Path, holes: &[Hole]) -> Result<()> {
    let p = path(dir);
    if holes.is_empty() {
        return match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(p)(e)),
            _ => super::segment::sync_dir(dir),
        };
    }
    let bytes = serde_json::to_vec_pretty(holes).expect("holes serialize");
    crate::durable::write_small(&p, &bytes, crate::durable::Fsync::Durable).map_err(io_err(p))
}

/// The segment file a refill rewrites, and where the refilled records go in it.
pub(crate) struct Rewrite {
    path: PathBuf,
    /// Committed length: what the file holds.
    len: u64,
    insert_at: u64,
}

/// Where the refilled events of `hole` go: in the last segment whose checkpoint has the origin
/// at or before the hole's start (where they were: every later checkpoint counts them as
/// written before it), right before the first record of the origin past the hole, or at
/// the segment's end. No checkpoint changes, so the origin's last seq never goes down.
/// `None` when retention dropped that segment since (nothing to refill).
pub(crate) fn plan(state: &State, hole: &Hole) -> Result<Option<Rewrite>> {
    let Some(s) = state.segments.iter().rev().find(|s| {
        s.checkpoint
            .get(hole.origin.as_str())
            .map_or(0, |m| m.last_seq)
            <= hole.after
    }) else {
        return Ok(None);
    };
    let mut buf = vec![0; (s.len - s.header_len) as usize];
    s.seg
        .file
        .read_exact_at(&mut buf, s.header_len)
        .map_err(io_err(&s.seg.path))?;
    let mut at = 0;
    while at < buf.len() {
        let Decoded::Record(rec, size) = record::decode(&buf[at..]) else {
            break;
        };
        if rec.origin == hole.origin && rec.seq >= hole.before {
            break;
        }
        at += size;
    }
    Ok(Some(Rewrite {
        path: s.seg.path.clone(),
        len: s.len,
        insert_at: s.header_len + at as u64,
    }))
}

/// Carries out a plan: the segment rewritten with `records` inserted, aside and renamed over,
/// durably. (A crash before the hole is forgotten repeats the refill at the next start; the
/// second copies are then out of order and skipped by recovery.)
pub(crate) fn rewrite(r: &Rewrite, records: &[u8]) -> Result<()> {
    let mut bytes = std::fs::read(&r.path).map_err(io_err(&r.path))?;
    bytes.truncate(r.len as usize);
    let at = r.insert_at as usize;
    let mut out = Vec::with_capacity(bytes.len() + records.len());
    out.extend_from_slice(&bytes[..at]);
    out.extend_from_slice(records);
    out.extend_from_slice(&bytes[at..]);
    crate::durable::frame::rewrite(&r.path, &out).map_err(io_err(&r.path))
}
