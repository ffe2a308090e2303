//! The one record framing of the append-only files: outbox and master-queue segments, event
//! log segments, the index journal.
//!
//! Frame: `MARK (4 bytes) | len: u32 LE | crc32(len bytes ‖ payload): u32 LE | payload`.
//! The marker lets recovery find the next record after damage: a frame that does not decode
//! (bad marker, length out of range, checksum mismatch, a payload its store refuses) is skipped
//! up to the next marker at which an intact frame starts, and only that span is lost. Damage
//! with no intact frame after it is a *torn tail* (a crash mid-append, never acknowledged).
//!
//! The previous framing (`len | crc32 | payload`, no marker; the outbox's `len` not counting its
//! 16-byte seq and timestamp) is still read: [`recover`] rewrites such a file in this framing
//! once, at open. A legacy file cannot be mistaken for a new one: its first four bytes are a
//! length, and [`MARK`] read as a little-endian length is above every store's maximum.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

/// Starts every frame. As a little-endian u32 it is 0xE7A55AC3 (3.9 GB), above any record
/// length of the previous framing, so the two cannot be confused.
pub const MARK: [u8; 4] = [0xC3, 0x5A, 0xA5, 0xE7];
/// Marker, length and checksum in front of every payload.
pub const FRAME: usize = 12;

/// The outcome of decoding at one offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// An intact frame's payload and the frame's size on disk.
    Intact(&'a [u8], usize),
    /// The buffer holds only the start of a frame; this many bytes are needed from its start.
    Incomplete(usize),
    /// The bytes here are not an intact frame.
    Corrupt(&'static str),
}

/// Reserves a frame header at the end of `out`; [`finish`] fills it once the payload follows.
pub fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    start
}

/// Completes the frame begun at `start`: everything after its header is its payload.
pub fn finish(out: &mut [u8], start: usize) {
    let len = (out.len() - start - FRAME) as u32;
    out[start..start + 4].copy_from_slice(&MARK);
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&out[start + FRAME..]);
    let crc = h.finalize();
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Appends `payload` as one frame.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let start = begin(out);
    out.extend_from_slice(payload);
    finish(out, start);
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes the frame at the start of `buf`; a payload longer than `max` is corruption.
pub fn decode(buf: &[u8], max: usize) -> Frame<'_> {
    let head = buf.len().min(MARK.len());
    if buf[..head] != MARK[..head] {
        return Frame::Corrupt("no record marker");
    }
    if buf.len() < FRAME {
        return Frame::Incomplete(FRAME);
    }
    let len = u32_at(buf, 4) as usize;
    if len > max {
        return Frame::Corrupt("record length out of range");
    }
    if buf.len() < FRAME + len {
        return Frame::Incomplete(FRAME + len);
    }
    let payload = &buf[FRAME..FRAME + len];
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[4..8]);
    h.update(payload);
    if h.finalize() != u32_at(buf, 8) {
        return Frame::Corrupt("record checksum mismatch");
    }
    Frame::Intact(payload, FRAME + len)
}

/// The offset of the next marker at or after `from`.
pub fn next_mark(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(MARK.len())
        .position(|w| w == MARK)
        .map(|i| from + i)
}

/// The next offset after `at` where an intact frame (one `accept` takes) starts, and how many
/// markers in between did not start one.
pub fn resync(
    buf: &[u8],
    at: usize,
    max: usize,
    accept: impl Fn(&[u8]) -> bool,
) -> (Option<usize>, u64) {
    let mut from = at + 1;
    let mut failed = 0;
    while let Some(m) = next_mark(buf, from) {
        if matches!(decode(&buf[m..], max), Frame::Intact(p, _) if accept(p)) {
            return (Some(m), failed);
        }
        failed += 1;
        from = m + 1;
    }
    (None, failed)
}

/// A span of damaged bytes between intact frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub len: u64,
    /// Records lost in it, as far as markers tell (at least one): a record whose marker was
    /// destroyed along with its predecessor's end counts with it.
    pub records: u64,
}

/// What a scan of a whole file found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Offset and size of every intact frame, in order.
    pub frames: Vec<(usize, usize)>,
    /// Damage followed by intact frames.
    pub damaged: Vec<Damage>,
    /// The end of the last intact frame: what follows is a torn tail.
    pub end: usize,
}

impl Scan {
    pub fn corrupt_records(&self) -> u64 {
        self.damaged.iter().map(|d| d.records).sum()
    }
}

/// Scans `buf` from `start`: every intact frame, damage skipped up to the next intact frame.
/// `accept` may refuse a payload whose checksum holds but which its store cannot read.
pub fn scan(buf: &[u8], start: usize, max: usize, accept: impl Fn(&[u8]) -> bool) -> Scan {
    let mut out = Scan {
        end: start,
        ..Scan::default()
    };
    let mut at = start;
    while at < buf.len() {
        match decode(&buf[at..], max) {
            Frame::Intact(p, n) if accept(p) => {
                out.frames.push((at, n));
                at += n;
                out.end = at;
            }
            _ => match resync(buf, at, max, &accept) {
                (Some(next), failed) => {
                    out.damaged.push(Damage {
                        offset: at as u64,
                        len: (next - at) as u64,
                        records: 1 + failed,
                    });
                    at = next;
                }
                (None, _) => break,
            },
        }
    }
    out
}

/// Records of the previous framing (`len | crc32 | body`, the body `extra + len` bytes, the
/// checksum over it): the bodies of the intact prefix. `None` when not even the first one is
/// intact (so the bytes are not a legacy file).
fn legacy_bodies(buf: &[u8], extra: usize, max: usize) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 8 {
        let len = u32_at(buf, at) as usize;
        let end = at + 8 + extra + len;
        if len > max || end > buf.len() {
            break;
        }
        let body = &buf[at + 8..end];
        if crc32fast::hash(body) != u32_at(buf, at + 4) {
            break;
        }
        out.push(body);
        at = end;
    }
    (!out.is_empty()).then_some(out)
}

/// How one store frames its files, for [`recover`].
pub struct Layout<'a> {
    /// The label of `ha_corrupt_records_total{store}`.
    pub store: &'static str,
    pub max: usize,
    /// Bytes in a legacy record's body beyond its `len` (the outbox's seq and timestamp).
    pub legacy_extra: usize,
    /// Whether a payload whose checksum holds is one the store can read.
    pub accept: &'a dyn Fn(&[u8]) -> bool,
}

/// A file after recovery: what [`recover`] left on disk.
#[derive(Debug)]
pub struct Recovered {
    /// The file's bytes now: the prefix, then only intact frames.
    pub bytes: Vec<u8>,
    /// Offset and size of every frame.
    pub frames: Vec<(usize, usize)>,
    /// Damaged records skipped (counted in `ha_corrupt_records_total`).
    pub corrupt: u64,
    /// A torn tail was cut.
    pub torn: u64,
    /// Where records were lost: for each damaged span (and a damaged end of a sealed file),
    /// how many of `frames` precede it. Stores that can refill lost records from elsewhere
    /// (the event log, from its peers) find what is missing around these points.
    pub cuts: Vec<usize>,
}

/// Recovers one file whose frames start at `prefix.len()` (the caller checked and re-encoded
/// the prefix, e.g. the event log's segment header; `old_prefix` is its length in the file).
/// Mid-file damage is skipped: the intact frames are rewritten into a clean file (written
/// aside, fsync'd, renamed over, directory fsync'd), so readers never meet it. A torn tail is
/// cut; in a `sealed` file (complete when it was closed) a bad end is damage too. A file in the
/// previous framing is rewritten in this one. When nothing is wrong the file is not touched.
/// Damage is logged (error, naming file and offset) and counted in `damage`.
pub fn recover(
    path: &Path,
    bytes: Vec<u8>,
    old_prefix: usize,
    prefix: &[u8],
    layout: &Layout<'_>,
    sealed: bool,
    damage: &super::DiskWatch,
) -> io::Result<Recovered> {
    let body = &bytes[old_prefix.min(bytes.len())..];
    if !body.is_empty() && decode(body, layout.max) != Frame::Corrupt("no record marker") {
        // Starts like a frame: this framing.
    } else if let Some(old) = legacy_bodies(body, layout.legacy_extra, layout.max) {
        let mut out = prefix.to_vec();
        let mut frames = Vec::with_capacity(old.len());
        let legacy_len: usize = old.iter().map(|b| 8 + b.len()).sum();
        for b in &old {
            let at = out.len();
            encode(b, &mut out);
            frames.push((at, out.len() - at));
        }
        tracing::info!(path = %path.display(), records = old.len(), "rewriting a file of the previous record framing");
        if legacy_len < body.len() {
            tracing::warn!(path = %path.display(), offset = old_prefix + legacy_len, "a file of the previous framing had a torn tail; cut it");
        }
        rewrite(path, &out)?;
        return Ok(Recovered {
            torn: (body.len() - legacy_len) as u64,
            bytes: out,
            frames,
            corrupt: 0,
            cuts: Vec::new(),
        });
    }
    let scan = scan(&bytes, old_prefix, layout.max, layout.accept);
    let torn = (bytes.len() - scan.end) as u64;
    let mut corrupt = 0;
    let mut cuts = Vec::new();
    for d in &scan.damaged {
        cuts.push(
            scan.frames
                .partition_point(|&(at, _)| (at as u64) < d.offset),
        );
        tracing::error!(path = %path.display(), offset = d.offset, bytes = d.len, records = d.records, store = layout.store,
            "damaged records skipped (the intact records after them are kept)");
        corrupt += d.records;
    }
    if torn > 0 && sealed {
        // Nothing was being appended here: a bad end is damage, not a crash mid-append.
        let marks = (scan.end..bytes.len())
            .filter(|&i| bytes[i..].starts_with(&MARK))
            .count() as u64;
        tracing::error!(path = %path.display(), offset = scan.end, bytes = torn, store = layout.store,
            "the end of a sealed file is damaged; cut it");
        corrupt += marks.max(1);
        cuts.push(scan.frames.len());
    } else if torn > 0 {
        tracing::warn!(path = %path.display(), offset = scan.end, cut = torn, "cutting a torn tail");
    }
    if corrupt > 0 {
        damage.corrupt(layout.store, corrupt);
    }
    if scan.damaged.is_empty() && bytes.get(..old_prefix) == Some(prefix) {
        if torn > 0 {
            let f = OpenOptions::new().write(true).open(path)?;
            super::truncate_durably(&f, scan.end as u64)?;
        }
        let mut bytes = bytes;
        bytes.truncate(scan.end);
        return Ok(Recovered {
            bytes,
            frames: scan.frames,
            corrupt,
            torn,
            cuts,
        });
    }
    let mut out = prefix.to_vec();
    let mut frames = Vec::with_capacity(scan.frames.len());
    for &(at, n) in &scan.frames {
        frames.push((out.len(), n));
        out.extend_from_slice(&bytes[at..at + n]);
    }
    rewrite(path, &out)?;
    Ok(Recovered {
        bytes: out,
        frames,
        corrupt,
        torn,
        cuts,
    })
}

/// Replaces `path` with `bytes`, durably: written aside, fsync'd, renamed over, directory fsync'd.
pub fn rewrite(path: &Path, bytes: &[u8]) -> io::Result<()> {
    super::write_small(path, bytes, super::Fsync::Durable)
}

#[cfg(test)]
mod tests;
