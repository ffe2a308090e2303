//! The node-local write-ahead journal: accepted writes not yet in a tantivy commit.
//!
//! A write is acknowledged only after its record is fsync'd here (one `fdatasync` per batch of
//! writes the writer thread drains at once: group commit). At open the records are replayed
//! through the version rule, so replaying an already committed write is a no-op; after every
//! commit of all indexes the journal is truncated. Records are framed as
//! `len: u32 LE | crc32(payload): u32 LE | payload`; a torn or corrupt tail (a crash in the
//! middle of an append, never acknowledged) ends the replay and is cut off.
//!
//! Payload: `kind: u8 | flags: u8 (1 = delete) | version: u64 LE | deleted_at: u64 LE |
//! id_len: u32 LE | id | source JSON (the rest; empty for a delete)`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{IndexError, Kind, Result};

const HEADER: usize = 8;
const FIXED: usize = 1 + 1 + 8 + 8 + 4;

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
    file: File,
    len: u64,
    buf: Vec<u8>,
}

fn io_err(context: &str, path: &Path, e: io::Error) -> IndexError {
    IndexError::internal(format!("{context} {}", path.display()), e)
}

impl Journal {
    /// Opens (or creates) the journal and returns the intact records it holds.
    pub fn open(path: &Path) -> Result<(Journal, Vec<Record>)> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)
                    .map_err(|e| io_err("read journal", path, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("open journal", path, e)),
        }
        let (records, valid) = decode(&bytes);
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), offset = valid, dropped = bytes.len() - valid, "index journal has a torn tail, cutting it off");
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io_err("open journal", path, e))?;
        if valid < bytes.len() {
            file.set_len(valid as u64)
                .map_err(|e| io_err("truncate journal", path, e))?;
        }
        file.sync_all()
            .map_err(|e| io_err("sync journal", path, e))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("sync directory of journal", path, e))?;
        }
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            len: valid as u64,
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
        let payload_len = FIXED + id.len() + source.len();
        let start = self.buf.len();
        self.buf
            .extend_from_slice(&(payload_len as u32).to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.push(kind as u8);
        self.buf.push(u8::from(deleted_at != 0));
        self.buf.extend_from_slice(&version.to_le_bytes());
        self.buf.extend_from_slice(&deleted_at.to_le_bytes());
        self.buf.extend_from_slice(&(id.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(id.as_bytes());
        self.buf.extend_from_slice(source.as_bytes());
        let crc = crc32fast::hash(&self.buf[start + HEADER..]);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes the buffered records and fsyncs them: after this they survive a crash.
    pub fn sync(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        let added = self.buf.len() as u64;
        self.buf.clear();
        self.buf.shrink_to(1 << 20);
        match r {
            Ok(()) => {
                self.len += added;
                Ok(())
            }
            Err(e) => {
                // No partial record may stay: later records would land behind it and the
                // replay would stop there. Cut back to the durable length, durably.
                if let Err(cut) = crate::durable::truncate_durably(&self.file, self.len) {
                    tracing::error!(path = %self.path.display(), error = %cut, "cannot cut a failed journal append");
                }
                Err(io_err("append to journal", &self.path, e))
            }
        }
    }

    /// Empties the journal once every record in it is in a tantivy commit.
    pub fn reset(&mut self) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_err("truncate journal", &self.path, e))?;
        self.len = 0;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }
}

/// The intact records of `bytes`, and the length of the intact prefix.
pub(crate) fn decode(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(rec) = decode_one(bytes, at) {
        let (record, next) = rec;
        records.push(record);
        at = next;
    }
    (records, at)
}

fn decode_one(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
    let u32_at = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?))
    };
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?))
    };
    let len = u32_at(at)? as usize;
    let crc = u32_at(at + 4)?;
    let p = at + HEADER;
    let payload = bytes.get(p..p.checked_add(len)?)?;
    if len < FIXED || crc32fast::hash(payload) != crc {
        return None;
    }
    let kind = Kind::from_u8(payload[0])?;
    let deleted = payload[1] & 1 == 1;
    let version = u64_at(p + 2)?;
    let deleted_at = u64_at(p + 10)?;
    let id_len = u32_at(p + 18)? as usize;
    let id = std::str::from_utf8(payload.get(FIXED..FIXED.checked_add(id_len)?)?).ok()?;
    let source = std::str::from_utf8(&payload[FIXED + id_len..]).ok()?;
    let record = Record {
        kind,
        id: id.to_string(),
        version,
        deleted_at,
        source: (!deleted).then(|| source.to_string()),
    };
    Some((record, p + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, recs) = Journal::open(&path).unwrap();
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
        let (mut j, recs) = Journal::open(&path).unwrap();
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
        assert!(Journal::open(&path).unwrap().1.is_empty());
    }
}
