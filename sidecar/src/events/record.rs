//! Byte layout of segment headers (checkpoints) and event records.
//!
//! Segment: `"HAEVSEG2"`, `u32 len`, `u32 crc32`, checkpoint payload (`u32 count`, then per
//! origin `u8 len, origin, u64 last_seq, u64 max_created_on`), then records.
//! Record: a frame of [`crate::durable::frame`] (marker, length, CRC) whose payload is
//! `u8 origin_len, origin, u64 seq, u64 received_ms, u64 created_on, u8 type_len, type, body`.
//! Integers are little-endian. A `"HAEVSEG1"` segment (records framed `u32 len, u32 crc32`,
//! no marker) is rewritten in this framing when the log opens.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::durable::frame::{self, Frame};

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"HAEVSEG2";
/// The magic of segments in the previous record framing.
pub(crate) const LEGACY_MAGIC: &[u8; 8] = b"HAEVSEG1";
/// `len` + `crc` in front of the checkpoint.
pub(crate) const HEADER_FRAME: usize = 8;
/// The frame in front of every record.
pub(crate) const FRAME: usize = frame::FRAME;
/// No valid record is bigger: a larger length field is corruption, not a record.
pub(crate) const MAX_PAYLOAD: usize = 256 << 20;
const MIN_PAYLOAD: usize = 1 + 1 + 8 + 8 + 8 + 1 + 1 + 2;

/// Where one origin stood when a segment was started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OriginMark {
    pub last_seq: u64,
    /// Newest `eventCreatedOn` among the origin's events so far.
    pub max_created: u64,
}

pub(crate) type Checkpoint = BTreeMap<Arc<str>, OriginMark>;

/// A record decoded in place from a read buffer.
#[derive(Debug)]
pub(crate) struct RecordView<'a> {
    pub origin: &'a str,
    pub seq: u64,
    pub received_ms: u64,
    pub created_on: u64,
    pub event_type: &'a str,
    pub body: &'a [u8],
}

pub(crate) enum Decoded<'a> {
    /// A whole, intact record and its size on disk.
    Record(RecordView<'a>, usize),
    /// The buffer holds only part of a record; this many bytes are needed from its start.
    Incomplete(usize),
    Corrupt(String),
}

pub(crate) struct NewRecord<'a> {
    pub origin: &'a str,
    pub seq: u64,
    pub received_ms: u64,
    pub created_on: u64,
    pub event_type: &'a str,
    pub body: &'a [u8],
}

impl NewRecord<'_> {
    pub fn encoded_len(&self) -> usize {
        FRAME + 1 + self.origin.len() + 24 + 1 + self.event_type.len() + self.body.len()
    }

    /// Origin and type lengths were checked on the way in (instanceId ≤ 64, type ≤ 255).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = frame::begin(out);
        out.push(self.origin.len() as u8);
        out.extend_from_slice(self.origin.as_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.received_ms.to_le_bytes());
        out.extend_from_slice(&self.created_on.to_le_bytes());
        out.push(self.event_type.len() as u8);
        out.extend_from_slice(self.event_type.as_bytes());
        out.extend_from_slice(self.body);
        frame::finish(out, start);
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes the record at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Decoded<'_> {
    match frame::decode(buf, MAX_PAYLOAD) {
        Frame::Intact(p, size) => match view(p) {
            Ok(v) => Decoded::Record(v, size),
            Err(what) => Decoded::Corrupt(what.into()),
        },
        Frame::Incomplete(n) => Decoded::Incomplete(n),
        Frame::Corrupt(what) => Decoded::Corrupt(what.into()),
    }
}

/// Whether an intact frame's payload is a record (for recovery).
pub(crate) fn is_record(p: &[u8]) -> bool {
    view(p).is_ok()
}

/// Reads a record's payload.
fn view(p: &[u8]) -> Result<RecordView<'_>, &'static str> {
    if p.len() < MIN_PAYLOAD {
        return Err("record too short");
    }
    let olen = p[0] as usize;
    let fixed = 1 + olen + 24;
    if fixed + 1 > p.len() {
        return Err("record origin overruns record");
    }
    let tlen = p[fixed] as usize;
    let body_at = fixed + 1 + tlen;
    if body_at > p.len() {
        return Err("record type overruns record");
    }
    let (Ok(origin), Ok(event_type)) = (
        std::str::from_utf8(&p[1..1 + olen]),
        std::str::from_utf8(&p[fixed + 1..body_at]),
    ) else {
        return Err("record origin or type is not UTF-8");
    };
    Ok(RecordView {
        origin,
        seq: u64_at(p, 1 + olen),
        received_ms: u64_at(p, 1 + olen + 8),
        created_on: u64_at(p, 1 + olen + 16),
        event_type,
        body: &p[body_at..],
    })
}

/// The segment header: magic plus framed checkpoint.
pub(crate) fn encode_header(cp: &Checkpoint) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + cp.len() * 32);
    payload.extend_from_slice(&(cp.len() as u32).to_le_bytes());
    for (origin, mark) in cp {
        payload.push(origin.len() as u8);
        payload.extend_from_slice(origin.as_bytes());
        payload.extend_from_slice(&mark.last_seq.to_le_bytes());
        payload.extend_from_slice(&mark.max_created.to_le_bytes());
    }
    let mut out = Vec::with_capacity(SEGMENT_MAGIC.len() + HEADER_FRAME + payload.len());
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Length of the header at the start of `buf`, or `Err(needed)` when `buf` is too short.
pub(crate) fn header_len(buf: &[u8]) -> Result<usize, usize> {
    let fixed = SEGMENT_MAGIC.len() + HEADER_FRAME;
    if buf.len() < fixed {
        return Err(fixed);
    }
    Ok(fixed + u32_at(buf, SEGMENT_MAGIC.len()) as usize)
}

/// Decodes a whole header (`buf` holds at least [`header_len`] bytes), of either framing.
pub(crate) fn decode_header(buf: &[u8]) -> Result<Checkpoint, String> {
    let magic = &buf[..SEGMENT_MAGIC.len()];
    if magic != SEGMENT_MAGIC && magic != LEGACY_MAGIC {
        return Err("not an event log segment (bad magic)".into());
    }
    let total = header_len(buf).map_err(|_| "segment header is truncated".to_string())?;
    if total > buf.len() || total > MAX_PAYLOAD {
        return Err("segment header is truncated".into());
    }
    let p = &buf[SEGMENT_MAGIC.len() + HEADER_FRAME..total];
    if crc32fast::hash(p) != u32_at(buf, SEGMENT_MAGIC.len() + 4) {
        return Err("segment header checksum mismatch".into());
    }
    let short = || "segment checkpoint is malformed".to_string();
    let count = u32_at(p.get(..4).ok_or_else(short)?, 0) as usize;
    let mut at = 4;
    let mut cp = Checkpoint::new();
    for _ in 0..count {
        let olen = *p.get(at).ok_or_else(short)? as usize;
        let rest = p.get(at + 1..at + 1 + olen + 16).ok_or_else(short)?;
        let origin = std::str::from_utf8(&rest[..olen]).map_err(|_| short())?;
        let mark = OriginMark {
            last_seq: u64_at(rest, olen),
            max_created: u64_at(rest, olen + 8),
        };
        cp.insert(Arc::from(origin), mark);
        at += 1 + olen + 16;
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_corruption() {
        let rec = NewRecord {
            origin: "node-a",
            seq: 42,
            received_ms: 7,
            created_on: 1686214571,
            event_type: "ref-updated",
            body: br#"{"type":"ref-updated"}"#,
        };
        let mut buf = Vec::new();
        rec.encode(&mut buf);
        assert_eq!(buf.len(), rec.encoded_len());
        match decode(&buf) {
            Decoded::Record(v, n) => {
                assert_eq!(n, buf.len());
                assert_eq!((v.origin, v.seq, v.received_ms), ("node-a", 42, 7));
                assert_eq!((v.created_on, v.event_type), (1686214571, "ref-updated"));
                assert_eq!(v.body, rec.body);
            }
            _ => panic!("record did not decode"),
        }
        assert!(matches!(decode(&buf[..buf.len() - 1]), Decoded::Incomplete(n) if n == buf.len()));
        let last = buf.len() - 2;
        buf[last] ^= 0xff;
        assert!(matches!(decode(&buf), Decoded::Corrupt(_)));
        assert!(matches!(decode(&[0u8; 64]), Decoded::Corrupt(_)));
    }

    #[test]
    fn header_round_trip() {
        let mut cp = Checkpoint::new();
        cp.insert(
            Arc::from("a"),
            OriginMark {
                last_seq: 5,
                max_created: 9,
            },
        );
        cp.insert(
            Arc::from("node-b"),
            OriginMark {
                last_seq: 1,
                max_created: 2,
            },
        );
        let h = encode_header(&cp);
        assert_eq!(header_len(&h), Ok(h.len()));
        assert_eq!(decode_header(&h).unwrap(), cp);
        let mut bad = h.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decode_header(&bad).is_err());
    }
}
