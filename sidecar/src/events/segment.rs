//! Segment files: naming, creation, and recovery at open (scan, index rebuild, torn-tail truncation).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use super::record::{self, Checkpoint, Decoded, FRAME, MAX_PAYLOAD};
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

/// The writable handle of the active segment.
pub(crate) struct Active {
    pub id: u64,
    pub file: File,
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
    let meta = SegmentMeta {
        seg: Arc::new(Segment {
            id,
            path,
            file: reader,
        }),
        header_len: header.len() as u64,
        len: header.len() as u64,
        records: 0,
        newest_received_ms: 0,
        oldest_received_ms: 0,
        max_created: 0,
        checkpoint,
    };
    Ok((Active { id, file }, meta))
}

/// Opens (or creates) the log in `dir`: rebuilds the state, truncates a torn tail, and
/// returns the writer of the last segment.
pub(crate) fn recover(dir: &Path) -> Result<(State, Active)> {
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
    let count = ids.len();
    for (i, id) in ids.into_iter().enumerate() {
        let last = i + 1 == count;
        let writer = open_segment(dir, id, last, &mut state)?;
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
    Ok((state, active))
}

/// Scans one segment into `state`. Returns the writer when it is the last segment, `None` when
/// the last segment had no valid header and no records (a crash while creating it) and was removed.
fn open_segment(dir: &Path, id: u64, last: bool, state: &mut State) -> Result<Option<Active>> {
    let path = segment_path(dir, id);
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let file_len = file.metadata().map_err(io_err(&path))?.len();
    let header = read_header(&mut file, file_len).map_err(io_err(&path))?;
    let (checkpoint, header_len) = match header {
        Ok(h) => h,
        Err(what) if last && file_len <= 64 << 10 => {
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
    let reader = File::open(&path).map_err(io_err(&path))?;
    state.segments.push_back(SegmentMeta {
        seg: Arc::new(Segment {
            id,
            path: path.clone(),
            file: reader,
        }),
        header_len: header_len as u64,
        len: header_len as u64,
        records: 0,
        newest_received_ms: 0,
        oldest_received_ms: 0,
        max_created: 0,
        checkpoint: checkpoint.clone(),
    });
    for (origin, mark) in &checkpoint {
        let idx = state.origins.entry(origin.clone()).or_default();
        idx.last_seq = idx.last_seq.max(mark.last_seq);
    }

    let valid = scan_records(&mut file, &path, id, header_len as u64, state)?;
    state.active().len = valid;
    if valid < file_len {
        if last {
            warn!(path = %path.display(), valid, file_len, "truncating a torn tail");
            file.set_len(valid)
                .and_then(|_| file.sync_all())
                .map_err(io_err(&path))?;
        } else {
            warn!(path = %path.display(), valid, file_len, "sealed segment is damaged; ignoring what follows the last intact record");
        }
    }
    Ok(last.then_some(Active { id, file }))
}

/// Reads and checks the segment header: `Ok(Err(what))` when it is not intact.
fn read_header(
    file: &mut File,
    file_len: u64,
) -> std::io::Result<Result<(Checkpoint, usize), String>> {
    let truncated = || Ok(Err("segment header is truncated".to_string()));
    let mut head = vec![0u8; FRAME + record::SEGMENT_MAGIC.len()];
    let n = read_full(file, &mut head)?;
    let Ok(total) = record::header_len(&head[..n]) else {
        return truncated();
    };
    if total > MAX_PAYLOAD || total as u64 > file_len {
        return truncated();
    }
    head.resize(total, 0);
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut head)?;
    Ok(record::decode_header(&head).map(|cp| (cp, total)))
}

/// Indexes every intact record from `start`; returns the offset just past the last one.
fn scan_records(
    file: &mut File,
    path: &Path,
    id: u64,
    start: u64,
    state: &mut State,
) -> Result<u64> {
    file.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut offset = start;
    let mut buf = Vec::with_capacity(64 << 10);
    loop {
        buf.resize(FRAME, 0);
        let n = read_full(&mut reader, &mut buf).map_err(io_err(path))?;
        if n < FRAME {
            return Ok(offset);
        }
        let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len <= MAX_PAYLOAD {
            buf.resize(FRAME + len, 0);
            let n = read_full(&mut reader, &mut buf[FRAME..]).map_err(io_err(path))?;
            buf.truncate(FRAME + n);
        }
        let (rec, size) = match record::decode(&buf) {
            Decoded::Record(rec, size) => (rec, size),
            Decoded::Incomplete(_) | Decoded::Corrupt(_) => return Ok(offset),
        };
        let origin = state.intern(rec.origin);
        let prev = state.origins.get(&origin).map_or(0, |i| i.last_seq);
        if rec.seq <= prev {
            warn!(path = %path.display(), offset, origin = %origin, seq = rec.seq, "skipping an out-of-order record");
        } else {
            let pos = Pos { seg: id, offset };
            state.note_record(
                &origin,
                rec.seq,
                pos,
                size as u64,
                rec.received_ms,
                rec.created_on,
            );
        }
        offset += size as u64;
    }
}

/// Reads as much of `buf` as the source holds; returns the count.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
