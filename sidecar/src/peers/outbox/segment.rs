//! Outbox segment files: a sequence of CRC-checked records, named by the first record's seq.
//!
//! Records are frames of [`crate::durable::frame`] (marker, length, CRC) whose payload is
//! `seq u64 | accepted_at_ms u64 | message` (little endian). Recovery at open
//! ([`recover`]) cuts a torn tail, skips damaged records (keeping the ones after them) and
//! rewrites a segment of the previous framing.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::durable::frame::{self, Frame, FRAME};

pub const HEADER_LEN: usize = FRAME + 16;
/// A record larger than this is corruption, not data (the API limits bodies far below).
pub const MAX_RECORD: usize = 64 << 20;

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub accepted_at_ms: u64,
    pub payload: Vec<u8>,
}

pub fn encode(seq: u64, accepted_at_ms: u64, payload: &[u8], out: &mut Vec<u8>) {
    let start = frame::begin(out);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&accepted_at_ms.to_le_bytes());
    out.extend_from_slice(payload);
    frame::finish(out, start);
}

/// Outcome of decoding at one offset.
pub enum Decoded {
    Record(Record, usize),
    /// Not enough bytes for a whole record (end of data, or a torn tail); this many are needed.
    Incomplete(usize),
    /// The bytes are not a record.
    Corrupt(&'static str),
}

/// Whether an intact frame's payload is a record (seq and timestamp present).
fn is_record(payload: &[u8]) -> bool {
    payload.len() >= 16
}

pub fn decode(buf: &[u8]) -> Decoded {
    match frame::decode(buf, MAX_RECORD + 16) {
        Frame::Intact(p, _) if !is_record(p) => Decoded::Corrupt("record too short"),
        Frame::Intact(p, n) => Decoded::Record(
            Record {
                seq: u64::from_le_bytes(p[0..8].try_into().expect("8 bytes")),
                accepted_at_ms: u64::from_le_bytes(p[8..16].try_into().expect("8 bytes")),
                payload: p[16..].to_vec(),
            },
            n,
        ),
        Frame::Incomplete(n) => Decoded::Incomplete(n),
        Frame::Corrupt(why) => Decoded::Corrupt(why),
    }
}

pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

pub fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")
        .filter(|s| s.len() == 20)
        .and_then(|s| s.parse().ok())
}

/// Segment files of a queue directory, oldest first.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads records from `offset` up to `limit` bytes of the file, at most `max_records` and
/// about `max_bytes` of payload (one record always, however large). Returns the records and the
/// offset after the last one; stops early at corruption and reports it.
pub fn read_records(
    path: &Path,
    offset: u64,
    limit: u64,
    max_records: usize,
    max_bytes: usize,
) -> io::Result<(Vec<Record>, u64, Option<&'static str>)> {
    let mut f = File::open(path)?;
    let remaining = limit.saturating_sub(offset);
    let mut want = remaining.min((max_bytes + HEADER_LEN * max_records.min(1 << 16) + 4096) as u64);
    loop {
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(want as usize);
        (&mut f).take(want).read_to_end(&mut buf)?;
        let mut pos = 0usize;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max_records {
            match decode(&buf[pos..]) {
                Decoded::Record(r, n) => {
                    if !out.is_empty() && bytes + r.payload.len() > max_bytes {
                        break;
                    }
                    bytes += r.payload.len();
                    pos += n;
                    out.push(r);
                }
                Decoded::Incomplete(need) if out.is_empty() && (buf.len() as u64) < remaining => {
                    // The first record is larger than the read: read exactly it.
                    want = remaining.min(need as u64);
                    break;
                }
                Decoded::Incomplete(_) => return Ok((out, offset + pos as u64, None)),
                Decoded::Corrupt(why) => return Ok((out, offset + pos as u64, Some(why))),
            }
        }
        if !out.is_empty() || (buf.len() as u64) >= remaining {
            return Ok((out, offset + pos as u64, None));
        }
    }
}

/// Reads only the header of the record at `offset`: its seq and acceptance time.
pub fn read_header(path: &Path, offset: u64) -> io::Result<Option<(u64, u64)>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut h = [0u8; HEADER_LEN];
    match f.read_exact(&mut h) {
        Ok(()) => Ok(Some((
            u64::from_le_bytes(h[FRAME..FRAME + 8].try_into().expect("8 bytes")),
            u64::from_le_bytes(h[FRAME + 8..FRAME + 16].try_into().expect("8 bytes")),
        ))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Recovers a whole segment (see [`frame::recover`]): the torn tail of the active one is cut,
/// damaged records are skipped and counted under `store`, a segment of the previous framing is
/// rewritten. Then scans it: its length, records and seqs. Used at open only.
pub fn recover(
    path: &Path,
    store: &'static str,
    sealed: bool,
    watch: &crate::durable::DiskWatch,
) -> io::Result<ScanResult> {
    let buf = std::fs::read(path)?;
    let layout = frame::Layout {
        store,
        max: MAX_RECORD + 16,
        legacy_extra: 16,
        accept: &is_record,
    };
    let r = frame::recover(path, buf, 0, &[], &layout, sealed, watch)?;
    let mut result = ScanResult {
        valid_len: r.bytes.len() as u64,
        corrupt: r.corrupt,
        ..ScanResult::default()
    };
    for &(at, n) in &r.frames {
        if let Decoded::Record(rec, _) = decode(&r.bytes[at..at + n]) {
            result.records += 1;
            result.last_seq = Some(rec.seq);
            result
                .seqs_ts
                .push((rec.seq, rec.accepted_at_ms, at as u64));
        }
    }
    Ok(result)
}

/// The last seq of a segment's intact records, read only (recovery happens when its queue
/// opens).
pub fn last_seq(path: &Path) -> io::Result<Option<u64>> {
    let buf = std::fs::read(path)?;
    let scan = frame::scan(&buf, 0, MAX_RECORD + 16, is_record);
    Ok(scan
        .frames
        .last()
        .and_then(|&(at, n)| match decode(&buf[at..at + n]) {
            Decoded::Record(r, _) => Some(r.seq),
            _ => None,
        }))
}

#[derive(Debug, Default)]
pub struct ScanResult {
    /// The segment's length after recovery.
    pub valid_len: u64,
    /// Damaged records skipped.
    pub corrupt: u64,
    pub records: u64,
    pub last_seq: Option<u64>,
    /// (seq, accepted_at_ms, offset) of every record.
    pub seqs_ts: Vec<(u64, u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_tail() {
        let mut buf = Vec::new();
        encode(7, 100, b"hello", &mut buf);
        encode(8, 101, b"world!", &mut buf);
        let full = buf.len();
        buf.extend_from_slice(&[1, 2, 3]); // torn header
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(segment_name(7));
        std::fs::write(&p, &buf).unwrap();
        let s = recover(&p, "outbox", false, &crate::durable::DiskWatch::default()).unwrap();
        assert_eq!(
            (s.records, s.last_seq, s.valid_len),
            (2, Some(8), full as u64)
        );
        let (recs, end, err) = read_records(&p, 0, s.valid_len, 10, 1 << 20).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].payload, b"world!");
        assert_eq!((end, err), (full as u64, None));
    }

    #[test]
    fn corruption_is_detected() {
        let mut buf = Vec::new();
        encode(1, 1, b"abc", &mut buf);
        buf[HEADER_LEN] ^= 0xff;
        assert!(matches!(
            decode(&buf),
            Decoded::Corrupt("record checksum mismatch")
        ));
    }

    #[test]
    fn batches_respect_limits() {
        let mut buf = Vec::new();
        for i in 0..10 {
            encode(i, 0, &[b'x'; 100], &mut buf);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(segment_name(0));
        std::fs::write(&p, &buf).unwrap();
        let (recs, _, _) = read_records(&p, 0, buf.len() as u64, 3, 1 << 20).unwrap();
        assert_eq!(recs.len(), 3);
        let (recs, _, _) = read_records(&p, 0, buf.len() as u64, 100, 250).unwrap();
        assert_eq!(recs.len(), 2);
        let (recs, _, _) = read_records(&p, 0, buf.len() as u64, 100, 10).unwrap();
        assert_eq!(recs.len(), 1, "one oversized record still goes alone");
        assert_eq!(read_header(&p, 128).unwrap(), Some((1, 0)));
    }

    #[test]
    fn a_record_larger_than_the_read_window_is_read_whole() {
        let mut buf = Vec::new();
        encode(1, 0, &vec![b'y'; 3 << 20], &mut buf);
        encode(2, 0, b"small", &mut buf);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(segment_name(1));
        std::fs::write(&p, &buf).unwrap();
        let (recs, end, err) = read_records(&p, 0, buf.len() as u64, 10, 1).unwrap();
        assert_eq!((recs.len(), err), (1, None));
        assert_eq!(recs[0].payload.len(), 3 << 20);
        let (recs, _, _) = read_records(&p, end, buf.len() as u64, 10, 1).unwrap();
        assert_eq!(recs[0].payload, b"small");
    }
}
