//! One peer's durable queue: a directory of segments, the delivered position (`acked`), and the
//! reading side used by that peer's forwarder. The committer thread is the only writer.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::segment::{self, Record};
use super::OutboxError;
use crate::locks::LockExt;

/// Where delivery stands: the next record to send is at `offset` in segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug)]
struct SegmentInfo {
    first_seq: u64,
    path: PathBuf,
    /// Bytes made durable by the committer; readers never read past it.
    committed_len: u64,
    sealed: bool,
}

#[derive(Debug)]
struct State {
    segments: VecDeque<SegmentInfo>,
    acked: Position,
    acked_seq: u64,
    pending: u64,
    oldest_pending_ms: Option<u64>,
}

/// A batch read from the queue, to be acknowledged with [`Queue::ack`] once delivered.
#[derive(Debug)]
pub struct Peeked {
    pub records: Vec<Record>,
    pub end: Position,
    /// Corruption met while reading: the records after it in that segment are skipped.
    pub corrupt: Option<&'static str>,
}

/// The committer's open file for the active segment.
pub(super) struct Writer {
    /// The segment file; a failed append or fsync is cut back to its durable length.
    pub log: crate::durable::AppendLog<File>,
    pub first_seq: u64,
}

pub struct Queue {
    pub peer: String,
    dir: PathBuf,
    state: Mutex<State>,
    /// The `acked` file, open once it has its fixed size (then rewritten in place).
    acked_file: Mutex<Option<File>>,
    /// Wakes the forwarder when records are committed.
    pub notify: tokio::sync::Notify,
}

/// Counters shown in metrics and `/v1/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub pending: u64,
    pub oldest_pending_ms: Option<u64>,
    pub segments: usize,
    pub acked_seq: u64,
}

impl Queue {
    /// Opens (or creates) a queue directory, cutting a torn tail and finding the delivered
    /// position. Returns the queue and the committer's writer for the last segment.
    pub(super) fn open(
        peer: &str,
        dir: &Path,
        store: &'static str,
        watch: &crate::durable::DiskWatch,
    ) -> Result<(Queue, Option<Writer>), OutboxError> {
        let ctx = |e: io::Error| OutboxError::Io(dir.to_path_buf(), e);
        std::fs::create_dir_all(dir).map_err(ctx)?;
        let acked_seq = read_acked(dir).map_err(ctx)?;
        let mut files = segment::list_segments(dir).map_err(ctx)?;
        // Segments wholly below the delivered seq are leftovers of a crash between ack and delete.
        while files.len() > 1 && files[1].0 <= acked_seq + 1 {
            let (_, p) = files.remove(0);
            std::fs::remove_file(&p).map_err(ctx)?;
        }
        let mut segments = VecDeque::new();
        let mut acked = None;
        let mut pending = 0;
        let mut oldest = None;
        let n = files.len();
        let mut writer = None;
        for (i, (first, path)) in files.into_iter().enumerate() {
            let last = i + 1 == n;
            // Cuts a torn tail, skips (and counts) damaged records, upgrades an old framing.
            let scan = segment::recover(&path, store, !last, watch).map_err(ctx)?;
            for (seq, ts, off) in &scan.seqs_ts {
                if *seq > acked_seq {
                    if acked.is_none() {
                        acked = Some(Position {
                            segment: first,
                            offset: *off,
                        });
                        oldest = Some(*ts);
                    }
                    pending += 1;
                }
            }
            if last {
                let file = OpenOptions::new().append(true).open(&path).map_err(ctx)?;
                writer = Some(Writer {
                    log: crate::durable::AppendLog::new(file, scan.valid_len),
                    first_seq: first,
                });
            }
            segments.push_back(SegmentInfo {
                first_seq: first,
                path,
                committed_len: scan.valid_len,
                sealed: !last,
            });
        }
        let acked = acked.unwrap_or_else(|| match segments.back() {
            Some(s) => Position {
                segment: s.first_seq,
                offset: s.committed_len,
            },
            None => Position {
                segment: 0,
                offset: 0,
            },
        });
        let q = Queue {
            peer: peer.to_owned(),
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                segments,
                acked,
                acked_seq,
                pending,
                oldest_pending_ms: oldest,
            }),
            acked_file: Mutex::new(None),
            notify: tokio::sync::Notify::new(),
        };
        q.reclaim().map_err(ctx)?;
        Ok((q, writer))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> QueueStats {
        let s = self.state.locked();
        QueueStats {
            pending: s.pending,
            oldest_pending_ms: s.oldest_pending_ms,
            segments: s.segments.len(),
            acked_seq: s.acked_seq,
        }
    }

    /// Opens a new segment for the committer, sealing the previous one.
    pub(super) fn roll(&self, first_seq: u64) -> Result<Writer, OutboxError> {
        let path = self.dir.join(segment::segment_name(first_seq));
        let ctx = |e: io::Error| OutboxError::Io(path.clone(), e);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(ctx)?;
        // The new name must survive a crash before records in it are acknowledged to clients.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(ctx)?;
        let mut s = self.state.locked();
        if let Some(last) = s.segments.back_mut() {
            last.sealed = true;
        }
        if s.segments.is_empty() {
            s.acked = Position {
                segment: first_seq,
                offset: 0,
            };
        }
        s.segments.push_back(SegmentInfo {
            first_seq,
            path,
            committed_len: 0,
            sealed: false,
        });
        Ok(Writer {
            log: crate::durable::AppendLog::new(file, 0),
            first_seq,
        })
    }

    /// Called by the committer after the writer's data is durable.
    pub(super) fn committed(&self, w: &Writer, added: u64, first_ts: u64) {
        let mut s = self.state.locked();
        if let Some(seg) = s
            .segments
            .iter_mut()
            .rev()
            .find(|x| x.first_seq == w.first_seq)
        {
            seg.committed_len = w.log.durable_len();
        }
        if s.pending == 0 {
            s.oldest_pending_ms = Some(first_ts);
        }
        s.pending += added;
        drop(s);
        self.notify.notify_one();
    }

    /// Reads the next batch after the delivered position, without consuming it.
    pub fn peek(&self, max_records: usize, max_bytes: usize) -> Result<Peeked, OutboxError> {
        loop {
            let (pos, path, limit, sealed, next) = {
                let s = self.state.locked();
                let Some(i) = s
                    .segments
                    .iter()
                    .position(|x| x.first_seq == s.acked.segment)
                else {
                    return Ok(Peeked {
                        records: vec![],
                        end: s.acked,
                        corrupt: None,
                    });
                };
                let seg = &s.segments[i];
                let next = s.segments.get(i + 1).map(|x| x.first_seq);
                (
                    s.acked,
                    seg.path.clone(),
                    seg.committed_len,
                    seg.sealed,
                    next,
                )
            };
            if pos.offset >= limit {
                match (sealed, next) {
                    (true, Some(next)) => {
                        // Finished a sealed segment: move on and let reclaim delete it.
                        self.advance(
                            Position {
                                segment: next,
                                offset: 0,
                            },
                            0,
                            None,
                        )?;
                        continue;
                    }
                    _ => {
                        return Ok(Peeked {
                            records: vec![],
                            end: pos,
                            corrupt: None,
                        })
                    }
                }
            }
            let (records, end, corrupt) =
                segment::read_records(&path, pos.offset, limit, max_records, max_bytes)
                    .map_err(|e| OutboxError::Io(path.clone(), e))?;
            let end = match (corrupt, next) {
                // Skip the damaged rest of a sealed segment rather than block delivery forever.
                (Some(_), Some(next)) => Position {
                    segment: next,
                    offset: 0,
                },
                (Some(_), None) => Position {
                    segment: pos.segment,
                    offset: limit,
                },
                (None, _) => Position {
                    segment: pos.segment,
                    offset: end,
                },
            };
            return Ok(Peeked {
                records,
                end,
                corrupt,
            });
        }
    }

    /// Marks everything before `end` delivered; `count` records, the last being `last_seq`.
    pub fn ack(&self, end: Position, count: u64, last_seq: Option<u64>) -> Result<(), OutboxError> {
        self.advance(end, count, last_seq)
    }

    fn advance(&self, end: Position, count: u64, last_seq: Option<u64>) -> Result<(), OutboxError> {
        let (acked_seq, next_ts) = {
            let mut s = self.state.locked();
            s.acked = end;
            s.pending = s.pending.saturating_sub(count);
            if let Some(l) = last_seq {
                s.acked_seq = s.acked_seq.max(l);
            }
            (s.acked_seq, s.pending > 0)
        };
        if last_seq.is_some() {
            self.write_acked(acked_seq)
                .map_err(|e| OutboxError::Io(self.dir.clone(), e))?;
        }
        let oldest = if next_ts { self.head_timestamp() } else { None };
        self.state.locked().oldest_pending_ms = oldest;
        self.reclaim()
            .map_err(|e| OutboxError::Io(self.dir.clone(), e))
    }

    /// Records the delivered seq in `acked`: the file keeps a fixed size (the seq padded to
    /// [`ACKED_LEN`]) and is rewritten in place, so an ack is one `pwrite` (no new inode, no
    /// rename, nothing for the file system's journal to wait on: a write-and-rename waited up
    /// to 4 ms on this path under load). A file of another size (older versions wrote
    /// `"<seq>\n"`) is replaced once by write-and-rename.
    ///
    /// Not fsync'd on purpose: losing the last update after a crash only re-sends messages
    /// the receiver already has, and it drops them by `(origin, seq)` (the master's queues
    /// replay them: delivery to a master is at least once). A crash cannot leave a value
    /// larger than one that was written: the page holds the old or the new padded text.
    fn write_acked(&self, seq: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let text = format!("{seq:<width$}\n", width = ACKED_LEN - 1);
        let mut file = self.acked_file.locked();
        if file.is_none() {
            let path = self.dir.join("acked");
            let fixed = std::fs::metadata(&path).is_ok_and(|m| m.len() == ACKED_LEN as u64);
            if !fixed {
                crate::durable::write_small(&path, text.as_bytes(), crate::durable::Fsync::No)?;
            }
            *file = Some(OpenOptions::new().write(true).open(&path)?);
            if !fixed {
                return Ok(());
            }
        }
        file.as_ref()
            .expect("opened above")
            .write_all_at(text.as_bytes(), 0)
    }

    fn head_timestamp(&self) -> Option<u64> {
        self.peek(1, 1)
            .ok()
            .and_then(|p| p.records.first().map(|r| r.accepted_at_ms))
    }

    /// Deletes sealed segments that lie wholly before the delivered position.
    fn reclaim(&self) -> io::Result<()> {
        let doomed: Vec<PathBuf> = {
            let mut s = self.state.locked();
            let mut out = Vec::new();
            while s.segments.len() > 1
                && s.segments[0].first_seq != s.acked.segment
                && s.segments[0].sealed
            {
                out.push(s.segments.pop_front().expect("non-empty").path);
            }
            out
        };
        for p in doomed {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Number of segment files on disk (for tests and status).
    pub fn segment_files(&self) -> usize {
        segment::list_segments(&self.dir)
            .map(|v| v.len())
            .unwrap_or(0)
    }
}

/// The `acked` file's size: a u64 in decimal, padded with spaces, and a newline.
const ACKED_LEN: usize = 21;

fn read_acked(dir: &Path) -> io::Result<u64> {
    match std::fs::read_to_string(dir.join("acked")) {
        Ok(t) => Ok(t.trim().parse().unwrap_or(0)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}
