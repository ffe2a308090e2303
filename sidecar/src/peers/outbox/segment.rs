//! Outbox segment files: a sequence of CRC-checked records, named by the first record's seq.
//!
//! Record layout (little endian): `len u32 | crc32 u32 | seq u64 | accepted_at_ms u64 | payload`,
//! the CRC covering seq, timestamp and payload. A torn tail (crash mid-write) fails the CRC or the
//! length check and is cut off when the segment is opened for appending.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const HEADER_LEN: usize = 24;
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
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&accepted_at_ms.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&accepted_at_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Outcome of decoding at one offset.
pub enum Decoded {
    Record(Record, usize),
    /// Not enough bytes for a whole record (end of data, or a torn tail).
    Incomplete,
    /// The bytes are not a record.
    Corrupt(&'static str),
}

pub fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < HEADER_LEN {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_RECORD {
        return Decoded::Corrupt("record length out of range");
    }
    if buf.len() < HEADER_LEN + len {
        return Decoded::Incomplete;
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[8..HEADER_LEN + len]);
    if h.finalize() != crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    let seq = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let ts = u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes"));
    Decoded::Record(
        Record {
            seq,
            accepted_at_ms: ts,
            payload: buf[HEADER_LEN..HEADER_LEN + len].to_vec(),
        },
        HEADER_LEN + len,
    )
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
                Decoded::Incomplete
                    if out.is_empty() && (buf.len() as u64) < remaining && buf.len() >= 4 =>
                {
                    // The first record is larger than the read: read exactly it.
                    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as u64;
                    want = remaining.min(HEADER_LEN as u64 + len);
                    break;
                }
                Decoded::Incomplete => return Ok((out, offset + pos as u64, None)),
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
            u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")),
            u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
        ))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Scans a whole segment: the valid length (where a torn tail begins), the number of records
/// and the last seq. Used at start-up only.
pub fn scan(path: &Path) -> io::Result<ScanResult> {
    let buf = std::fs::read(path)?;
    let mut pos = 0;
    let mut result = ScanResult::default();
    while let Decoded::Record(r, n) = decode(&buf[pos..]) {
        result.records += 1;
        result.last_seq = Some(r.seq);
        result.seqs_ts.push((r.seq, r.accepted_at_ms, pos as u64));
        pos += n;
    }
    result.valid_len = pos as u64;
    result.file_len = buf.len() as u64;
    Ok(result)
}

#[derive(Debug, Default)]
pub struct ScanResult {
    pub valid_len: u64,
    pub file_len: u64,
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
        let s = scan(&p).unwrap();
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
            Decoded::Corrupt("checksum mismatch")
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
        assert_eq!(read_header(&p, 124).unwrap(), Some((1, 0)));
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
