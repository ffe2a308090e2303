//! Segment files: naming, creation, and recovery at open (scan, index rebuild, torn-tail truncation).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::holes::{Finder, Hole};
use super::record::{self, Checkpoint, Decoded, MAX_PAYLOAD};
use super::state::{Pos, Segment, SegmentMeta, State};
use super::{io_err, EventError, Result};

const SUFFIX: &str = ".seg";

pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SUFFIX}"))
}

fn segment_id(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Makes a directory entry change (create, unlink) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The writable handle of the active segment: appends go through the durable core's append
/// log (a failed write or fsync is cut back to the last commit).
pub(crate) struct Active {
    pub id: u64,
    pub log: crate::durable::AppendLog<File>,
}

/// Creates segment `id` with its checkpoint, durably, and returns its writer and meta.
pub(crate) fn create(dir: &Path, id: u64, checkpoint: Checkpoint) -> Result<(Active, SegmentMeta)> {
    let path = segment_path(dir, id);
    let header = record::encode_header(&checkpoint);
    // Ids only grow, so a file with this id is what a failed roll left behind: nothing in it
    // was ever committed.
    match fs::remove_file(&path) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io_err(&path)(e)),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.write_all(&header)
        .and_then(|_| file.sync_data())
        .map_err(io_err(&path))?;
    sync_dir(dir)?;
    let reader = File::open(&path).map_err(io_err(&path))?;
    let meta = SegmentMeta::empty(
        Segment {
            id,
            path,
            file: reader,
        },
        header.len() as u64,
        checkpoint,
    );
    let log = crate::durable::AppendLog::new(file, header.len() as u64);
    Ok((Active { id, log }, meta))
}

/// Opens (or creates) the log in `dir`: rebuilds the state, truncates a torn tail, and
/// returns the writer of the last segment and the holes mid-log damage left (see
/// [`holes`](super::holes)).
pub(crate) fn recover(
    dir: &Path,
    watch: &crate::durable::DiskWatch,
) -> Result<(State, Active, Vec<Hole>)> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let mut state = State::default();
    let mut active = None;
    let mut finder = Finder::default();
    let count = ids.len();
    for (i, id) in ids.into_iter().enumerate() {
        let last = i + 1 == count;
        let writer = open_segment(dir, id, last, &mut state, &mut finder, watch)?;
        if last {
            active = writer;
        }
    }
    if let Some(front) = state.segments.front() {
        for (origin, mark) in front.checkpoint.clone() {
            let idx = state.origins.entry(origin).or_default();
            idx.floor = mark;
            idx.last_seq = idx.last_seq.max(mark.last_seq);
        }
    }
    let active = match active {
        Some(a) => a,
        None => {
            // Empty log, or a last segment that died while being created: start a fresh one
            // that remembers every origin's high-water mark.
            let next = state.segments.back().map_or(1, |s| s.seg.id + 1);
            let cp = state
                .origins
                .iter()
                .map(|(o, idx)| (o.clone(), idx.mark()))
                .collect();
            let (a, meta) = create(dir, next, cp)?;
            state.segments.push_back(meta);
            a
        }
    };
    info!(
        dir = %dir.display(),
        segments = state.segments.len(),
        events = state.events(),
        bytes = state.total_bytes(),
        "event log opened"
    );
    let holes = finder.holes(&state);
    Ok((state, active, holes))
}

/// Scans one segment into `state`. Returns the writer when it is the last segment, `None` when
/// the last segment had no valid header and no records (a crash while creating it) and was removed.
/// Recovery ([`crate::durable::frame::recover`]) cuts a torn tail of the last segment, skips
/// damaged records (counted, the ones after them kept) and rewrites a segment of the previous
/// framing.
fn open_segment(
    dir: &Path,
    id: u64,
    last: bool,
    state: &mut State,
    finder: &mut Finder,
    watch: &crate::durable::DiskWatch,
) -> Result<Option<Active>> {
    let path = segment_path(dir, id);
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let (checkpoint, header_len) = match read_header(&bytes) {
        Ok(h) => h,
        Err(what) if last && bytes.len() <= 64 << 10 => {
            // Headers are fsync'd before any record is written, so no record can be lost here.
            warn!(path = %path.display(), error = %what, "removing a segment that was never finished");
            fs::remove_file(&path).map_err(io_err(&path))?;
            sync_dir(dir)?;
            return Ok(None);
        }
        Err(what) => {
            return Err(EventError::Corrupt {
                path,
                offset: 0,
                what,
            })
        }
    };
    let header = record::encode_header(&checkpoint);
    let layout = crate::durable::frame::Layout {
        store: "events",
        max: MAX_PAYLOAD,
        legacy_extra: 0,
        accept: &record::is_record,
    };
    let recovered =
        crate::durable::frame::recover(&path, bytes, header_len, &header, &layout, !last, watch)
            .map_err(io_err(&path))?;
    let reader = File::open(&path).map_err(io_err(&path))?;
    state.segments.push_back(SegmentMeta::empty(
        Segment {
            id,
            path: path.clone(),
            file: reader,
        },
        header.len() as u64,
        checkpoint.clone(),
    ));
    for (origin, mark) in &checkpoint {
        let idx = state.origins.entry(origin.clone()).or_default();
        idx.last_seq = idx.last_seq.max(mark.last_seq);
    }
    let mut cuts = recovered.cuts.iter().peekable();
    for (i, &(offset, size)) in recovered.frames.iter().enumerate() {
        while cuts.next_if(|&&c| c <= i).is_some() {
            finder.cut(state);
        }
        let Decoded::Record(rec, _) = record::decode(&recovered.bytes[offset..offset + size])
        else {
            continue;
        };
        let origin = state.intern(rec.origin);
        let prev = state.origins.get(&origin).map_or(0, |i| i.last_seq);
        if rec.seq <= prev {
            warn!(path = %path.display(), offset, origin = %origin, seq = rec.seq, "skipping an out-of-order record");
        } else {
            finder.record(&origin, rec.seq);
            let pos = Pos {
                seg: id,
                offset: offset as u64,
            };
            state.note_record(
                &origin,
                rec.seq,
                pos,
                size as u64,
                rec.received_ms,
                rec.created_on,
            );
        }
    }
    for _ in cuts {
        finder.cut(state);
    }
    state.active().len = recovered.bytes.len() as u64;
    if !last {
        return Ok(None);
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let log = crate::durable::AppendLog::new(file, recovered.bytes.len() as u64);
    Ok(Some(Active { id, log }))
}

/// Reads and checks the segment header (of either framing): the checkpoint and its length.
pub(crate) fn read_header(bytes: &[u8]) -> std::result::Result<(Checkpoint, usize), String> {
    let truncated = || Err("segment header is truncated".to_string());
    let Ok(total) = record::header_len(bytes) else {
        return truncated();
    };
    if total > MAX_PAYLOAD || total > bytes.len() {
        return truncated();
    }
    record::decode_header(&bytes[..total]).map(|cp| (cp, total))
}
