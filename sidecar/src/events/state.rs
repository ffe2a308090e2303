//! The in-memory view of the log: retained segments and a sparse per-origin index.
//!
//! Written only by the appender thread (at commit and retention) and by `open`; readers take
//! the read lock just long enough to pick a start position and clone `Arc`s of segments.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::record::{Checkpoint, OriginMark};

/// Index every this many events of an origin...
const INDEX_EVERY_EVENTS: u32 = 128;
/// ...or after this many bytes of log since the origin's last entry.
const INDEX_EVERY_BYTES: u64 = 256 << 10;

/// One segment file. Readers keep the `Arc` (and so the open descriptor) while reading, so
/// retention may unlink the file under them.
#[derive(Debug)]
pub(crate) struct Segment {
    pub id: u64,
    pub path: PathBuf,
    pub file: File,
}

#[derive(Debug)]
pub(crate) struct SegmentMeta {
    pub seg: Arc<Segment>,
    pub header_len: u64,
    /// Bytes that are committed (fsync'd) and visible to readers, header included.
    pub len: u64,
    pub records: u64,
    /// Received-at of the newest record, 0 while empty.
    pub newest_received_ms: u64,
    pub oldest_received_ms: u64,
    /// Newest `eventCreatedOn` of the segment's records.
    pub max_created: u64,
    /// Where every origin stood before this segment: what is gone once it is the oldest.
    pub checkpoint: Checkpoint,
}

impl SegmentMeta {
    /// A segment holding only its header (records are counted in as they are read or written).
    pub(crate) fn empty(seg: Segment, header_len: u64, checkpoint: Checkpoint) -> SegmentMeta {
        SegmentMeta {
            seg: Arc::new(seg),
            header_len,
            len: header_len,
            records: 0,
            newest_received_ms: 0,
            oldest_received_ms: 0,
            max_created: 0,
            checkpoint,
        }
    }
}

/// A byte position in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub seg: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexEntry {
    pub seq: u64,
    pub pos: Pos,
}

#[derive(Debug, Default)]
pub(crate) struct OriginIndex {
    pub last_seq: u64,
    /// Newest `eventCreatedOn` of the retained events.
    pub max_created: u64,
    /// What retention removed: seqs up to `floor.last_seq` are gone.
    pub floor: OriginMark,
    /// Sparse, ascending in seq and position; the first record of the origin in every segment
    /// has an entry, so `sparse[0]` is the oldest retained event.
    pub sparse: VecDeque<IndexEntry>,
    since_entry: u32,
}

impl OriginIndex {
    /// Where the origin stands now, as a segment checkpoint records it.
    pub fn mark(&self) -> OriginMark {
        OriginMark {
            last_seq: self.last_seq,
            max_created: self.max_created.max(self.floor.max_created),
        }
    }

    pub fn first_retained(&self) -> Option<u64> {
        self.sparse.front().map(|e| e.seq)
    }

    /// Events with a seq at or below this cannot be served here: retention removed them, or
    /// this node's log of the origin starts later.
    pub fn effective_floor(&self) -> u64 {
        match self.first_retained() {
            Some(first) => self.floor.last_seq.max(first - 1),
            None => self.floor.last_seq.max(self.last_seq),
        }
    }

    /// A position at or before the record of the first retained seq ≥ `seq`.
    pub fn lookup(&self, seq: u64) -> Option<Pos> {
        let i = self.sparse.partition_point(|e| e.seq <= seq);
        let e = if i == 0 {
            self.sparse.front()
        } else {
            self.sparse.get(i - 1)
        };
        e.map(|e| e.pos)
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub segments: VecDeque<SegmentMeta>,
    pub origins: BTreeMap<Arc<str>, OriginIndex>,
    /// Records committed since open; what tailers are woken with.
    pub appended: u64,
    /// Local seqs start above this when the log held nothing of its own origin at open (see
    /// `EventLogOptions::seq_from_clock`); 0 otherwise.
    pub local_floor: u64,
}

impl State {
    pub fn intern(&self, origin: &str) -> Arc<str> {
        match self.origins.get_key_value(origin) {
            Some((k, _)) => k.clone(),
            None => Arc::from(origin),
        }
    }

    pub fn active(&mut self) -> &mut SegmentMeta {
        self.segments
            .back_mut()
            .expect("the log always has a segment")
    }

    /// Accounts one committed record at `pos` (of `size` bytes) in the index and its segment.
    pub fn note_record(
        &mut self,
        origin: &Arc<str>,
        seq: u64,
        pos: Pos,
        size: u64,
        received_ms: u64,
        created_on: u64,
    ) {
        let meta = self.active();
        debug_assert_eq!(meta.seg.id, pos.seg);
        meta.len = pos.offset + size;
        meta.records += 1;
        if meta.oldest_received_ms == 0 {
            meta.oldest_received_ms = received_ms;
        }
        meta.newest_received_ms = meta.newest_received_ms.max(received_ms);
        meta.max_created = meta.max_created.max(created_on);
        let idx = self.origins.entry(origin.clone()).or_default();
        idx.last_seq = idx.last_seq.max(seq);
        idx.max_created = idx.max_created.max(created_on);
        let new_entry = match idx.sparse.back() {
            None => true,
            Some(last) => {
                last.pos.seg != pos.seg
                    || idx.since_entry >= INDEX_EVERY_EVENTS
                    || pos.offset - last.pos.offset >= INDEX_EVERY_BYTES
            }
        };
        if new_entry {
            idx.sparse.push_back(IndexEntry { seq, pos });
            idx.since_entry = 0;
        } else {
            idx.since_entry += 1;
        }
    }

    /// Takes the oldest segment out of the view (the caller deletes its file) and moves every
    /// origin's floor to the checkpoint of the segment that is now the oldest.
    pub fn drop_oldest(&mut self) -> Option<Arc<Segment>> {
        if self.segments.len() < 2 {
            return None;
        }
        let gone = self.segments.pop_front()?;
        let id = gone.seg.id;
        for idx in self.origins.values_mut() {
            while idx.sparse.front().is_some_and(|e| e.pos.seg == id) {
                idx.sparse.pop_front();
            }
        }
        let front = self.segments.front().expect("two segments were there");
        for (origin, mark) in &front.checkpoint {
            let idx = self.origins.entry(origin.clone()).or_default();
            idx.floor = *mark;
            idx.last_seq = idx.last_seq.max(mark.last_seq);
        }
        Some(gone.seg)
    }

    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    pub fn events(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    pub fn last_seqs(&self) -> BTreeMap<String, u64> {
        self.origins
            .iter()
            .map(|(o, idx)| (o.to_string(), idx.last_seq))
            .collect()
    }

    /// Index memory in bytes, for the documentation's per-event figure and for stats.
    pub fn index_bytes(&self) -> usize {
        self.origins
            .values()
            .map(|i| i.sparse.len() * std::mem::size_of::<IndexEntry>() + 64)
            .sum::<usize>()
            + self.segments.len() * (std::mem::size_of::<SegmentMeta>() + 64)
    }
}
