//! The node-local write-ahead journal: accepted writes not yet in a tantivy commit.
//!
//! A write is acknowledged only after its record is fsync'd here (one `fdatasync` per batch of
//! writes the writer thread drains at once: group commit). At open the records are replayed
//! through the version rule, so replaying an already committed write is a no-op; after every
//! commit of all indexes the journal is truncated. Records are frames of
//! [`crate::durable::frame`] (marker, length, CRC): at open a torn tail (a crash in the middle of
//! an append, never acknowledged) is cut, damaged records are skipped (counted in
//! `ha_corrupt_records_total{store="journal"}`; the records after them are replayed; the index's
//! anti-entropy brings back what they held), and a journal of the previous framing is rewritten.
//! Appends go through [`crate::durable::AppendLog`]: a failed write or fsync is cut back to the
//! last durable length before the error is returned, and nothing more is appended (nothing
//! acknowledged) until that cut has succeeded.
//!
//! Payload: `kind: u8 | flags: u8 (1 = delete) | version: u64 LE | deleted_at: u64 LE |
//! id_len: u32 LE | id | source JSON (the rest; empty for a delete)`.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::{IndexError, Kind, Result};
use crate::durable::frame::{self, Frame};
use crate::durable::{AppendLog, DiskWatch};

const FIXED: usize = 1 + 1 + 8 + 8 + 4;
/// A payload larger than this is damage (documents are bounded far below by the API).
const MAX_PAYLOAD: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub kind: Kind,
    pub id: String,
    pub version: u64,
    /// 0 for an upsert; the delete time (ms since the epoch) for a delete.
    pub deleted_at: u64,
    /// The document's JSON for an upsert.
    pub source: Option<String>,
}

pub(crate) struct Journal {
    path: PathBuf,
    log: AppendLog<File>,
    buf: Vec<u8>,
}

fn io_err(context: &str, path: &Path, e: io::Error) -> IndexError {
    IndexError::internal(format!("{context} {}", path.display()), e)
}

impl Journal {
    /// Opens (or creates) the journal and returns the intact records it holds.
    pub fn open(path: &Path, watch: &DiskWatch) -> Result<(Journal, Vec<Record>)> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read journal", path, e)),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io_err("open journal", path, e))?;
        drop(file);
        let accept = |p: &[u8]| decode_payload(p).is_some();
        let layout = frame::Layout {
            store: "journal",
            max: MAX_PAYLOAD,
            legacy_extra: 0,
            accept: &accept,
        };
        let recovered = frame::recover(path, bytes, 0, &[], &layout, false, watch)
            .map_err(|e| io_err("recover journal", path, e))?;
        let records = recovered
            .frames
            .iter()
            .filter_map(
                |&(at, n)| match frame::decode(&recovered.bytes[at..at + n], MAX_PAYLOAD) {
                    Frame::Intact(p, _) => decode_payload(p),
                    _ => None,
                },
            )
            .collect();
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io_err("open journal", path, e))?;
        file.sync_all()
            .map_err(|e| io_err("sync journal", path, e))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("sync directory of journal", path, e))?;
        }
        let journal = Journal {
            path: path.to_path_buf(),
            log: AppendLog::new(file, recovered.bytes.len() as u64),
            buf: Vec::new(),
        };
        Ok((journal, records))
    }

    /// Buffers one record; nothing is written before `sync`.
    pub fn append(
        &mut self,
        kind: Kind,
        id: &str,
        version: u64,
        deleted_at: u64,
        source: Option<&str>,
    ) {
        let source = source.unwrap_or("");
        let start = frame::begin(&mut self.buf);
        self.buf.push(kind as u8);
        self.buf.push(u8::from(deleted_at != 0));
        self.buf.extend_from_slice(&version.to_le_bytes());
        self.buf.extend_from_slice(&deleted_at.to_le_bytes());
        self.buf.extend_from_slice(&(id.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(id.as_bytes());
        self.buf.extend_from_slice(source.as_bytes());
        frame::finish(&mut self.buf, start);
    }

    /// Writes the buffered records and fsyncs them: after this they survive a crash. On any
    /// failure no part of them stays in the file (the append log cuts back, durably), and the
    /// error keeps its kind (a full disk answers 507).
    pub fn sync(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.log.append(&self.buf).and_then(|()| self.log.commit());
        self.buf.clear();
        self.buf.shrink_to(1 << 20);
        r.map_err(|e| io_err("append to journal", &self.path, e))
    }

    /// Empties the journal once every record in it is in a tantivy commit.
    pub fn reset(&mut self) -> Result<()> {
        if self.log.is_empty() {
            return Ok(());
        }
        self.log
            .reset()
            .map_err(|e| io_err("truncate journal", &self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.log.len()
    }
}

/// The intact records of `bytes` (damaged ones skipped, read only: for the parsers' checks).
pub(crate) fn decode(bytes: &[u8]) -> Vec<Record> {
    let accept = |p: &[u8]| decode_payload(p).is_some();
    frame::scan(bytes, 0, MAX_PAYLOAD, accept)
        .frames
        .iter()
        .filter_map(
            |&(at, n)| match frame::decode(&bytes[at..at + n], MAX_PAYLOAD) {
                Frame::Intact(p, _) => decode_payload(p),
                _ => None,
            },
        )
        .collect()
}

fn decode_payload(payload: &[u8]) -> Option<Record> {
    let u32_at = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(payload.get(i..i + 4)?.try_into().ok()?))
    };
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(payload.get(i..i + 8)?.try_into().ok()?))
    };
    if payload.len() < FIXED {
        return None;
    }
    let kind = Kind::from_u8(payload[0])?;
    let deleted = payload[1] & 1 == 1;
    let version = u64_at(2)?;
    let deleted_at = u64_at(10)?;
    let id_len = u32_at(18)? as usize;
    let id = std::str::from_utf8(payload.get(FIXED..FIXED.checked_add(id_len)?)?).ok()?;
    let source = std::str::from_utf8(&payload[FIXED + id_len..]).ok()?;
    Some(Record {
        kind,
        id: id.to_string(),
        version,
        deleted_at,
        source: (!deleted).then(|| source.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let watch = DiskWatch::default();
        let (mut j, recs) = Journal::open(&path, &watch).unwrap();
        assert!(recs.is_empty());
        j.append(Kind::Changes, "c1", 3, 0, Some(r#"{"a":1}"#));
        j.append(Kind::Groups, "g1", 4, 1234, None);
        j.sync().unwrap();
        let good = j.len();
        j.append(Kind::Changes, "c2", 5, 0, Some("{}"));
        j.sync().unwrap();
        drop(j);
        // A crash in the middle of the last append.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(good + 7).unwrap();
        let (mut j, recs) = Journal::open(&path, &watch).unwrap();
        assert_eq!(
            recs,
            vec![
                Record {
                    kind: Kind::Changes,
                    id: "c1".into(),
                    version: 3,
                    deleted_at: 0,
                    source: Some(r#"{"a":1}"#.into())
                },
                Record {
                    kind: Kind::Groups,
                    id: "g1".into(),
                    version: 4,
                    deleted_at: 1234,
                    source: None
                },
            ]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        j.reset().unwrap();
        drop(j);
        assert!(Journal::open(&path, &watch).unwrap().1.is_empty());
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                kind: Kind::Changes,
                id: format!("change-{i}"),
                version: i as u64 + 1,
                deleted_at: 0,
                source: Some(format!(r#"{{"n":{i},"pad":"{}"}}"#, "p".repeat(i % 30))),
            })
            .collect()
    }

    /// 8 flipped bytes at 20 offsets (each on a fresh journal): the reopen replays every record
    /// but the damaged ones, counts them, and later appends are replayed too.
    #[test]
    fn damage_at_20_offsets_loses_only_the_damaged_records() {
        let dir = tempfile::tempdir().unwrap();
        let want = records(50);
        let path = dir.path().join("clean");
        let watch = DiskWatch::default();
        let (mut j, _) = Journal::open(&path, &watch).unwrap();
        for r in &want {
            j.append(r.kind, &r.id, r.version, 0, r.source.as_deref());
        }
        j.sync().unwrap();
        drop(j);
        let clean = std::fs::read(&path).unwrap();
        let spans: Vec<(usize, usize)> = frame::scan(&clean, 0, MAX_PAYLOAD, |_| true)
            .frames
            .iter()
            .map(|&(at, n)| (at, at + n))
            .collect();
        assert_eq!(spans.len(), 50);
        let mut seed = 0xdead_beef_cafe_f00du64;
        for round in 0..20 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let offset = (seed as usize) % (spans[48].1 - 8);
            let mut bytes = clean.clone();
            for b in &mut bytes[offset..offset + 8] {
                *b = !*b;
            }
            let path = dir.path().join(format!("j{round}"));
            std::fs::write(&path, &bytes).unwrap();
            let watch = DiskWatch::default();
            let (mut j, got) = Journal::open(&path, &watch).unwrap();
            let kept: Vec<Record> = (0..50)
                .filter(|&i| !(spans[i].0 < offset + 8 && offset < spans[i].1))
                .map(|i| want[i].clone())
                .collect();
            assert_eq!(got, kept, "round {round}: damage at {offset}");
            let counted = watch.corrupt_records()[3];
            assert_eq!(counted.0, "journal");
            assert!((1..=(50 - kept.len()) as u64).contains(&counted.1));
            j.append(Kind::Groups, "after", 9, 0, Some("{}"));
            j.sync().unwrap();
            drop(j);
            let (_, again) = Journal::open(&path, &watch).unwrap();
            assert_eq!(again.len(), kept.len() + 1, "round {round}");
        }
    }

    /// A journal of the previous framing (`len | crc | payload`) is replayed whole and
    /// rewritten.
    #[test]
    fn a_journal_of_the_previous_framing_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let want = records(3);
        let mut old = Vec::new();
        for r in &want {
            let mut new = Vec::new();
            let watch = DiskWatch::default();
            let p = dir.path().join("one");
            let _ = std::fs::remove_file(&p);
            let (mut j, _) = Journal::open(&p, &watch).unwrap();
            j.append(r.kind, &r.id, r.version, 0, r.source.as_deref());
            j.sync().unwrap();
            new.extend(std::fs::read(&p).unwrap());
            let payload = &new[frame::FRAME..];
            old.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            old.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
            old.extend_from_slice(payload);
        }
        std::fs::write(&path, &old).unwrap();
        let watch = DiskWatch::default();
        let (_, got) = Journal::open(&path, &watch).unwrap();
        assert_eq!(got, want);
        assert!(std::fs::read(&path).unwrap().starts_with(&frame::MARK));
        assert_eq!(Journal::open(&path, &watch).unwrap().1, want);
    }
}
