//! A durable mark: one `u64` that only grows (the receiver's high-water mark per origin),
//! rewritten **in place** with one `fdatasync` per update (`store`), or without it for a mark
//! that may go back after a crash (`store_relaxed`: the event relay's marker).
//!
//! The file is created once with its full size (two slots, each in its own 4 KiB block, so
//! one torn sector cannot damage both) by `write_small` with `Fsync::Durable` (a temporary
//! file, `fsync`, `rename`, directory `fsync`). After that an update overwrites one slot (`value | crc32(value)`),
//! alternating, and `fdatasync`s: no allocation, no size change, no rename, so no journal
//! commit — one device write instead of the two journal commits of write-a-copy-and-rename
//! (measured 2–4 ms against 8–12 ms per update on the bench machine, see `bench/NOTES.md`).
//!
//! Crash safety: an update is acknowledged only after its `fdatasync`. A crash during an
//! update can tear only the slot being written; its CRC then fails and the other slot still
//! holds the previous durable value. Reading takes the largest value among valid slots, which
//! is the last durable one because values only grow. A file in the old format (the value as
//! decimal text) is read as such and replaced by the slotted format at the first update.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Slot `i` starts at `i * SLOT_STRIDE`.
const SLOT_STRIDE: u64 = 4096;
const SLOT_LEN: usize = 12;
/// The file's size once created: both slots written (never sparse, never grown).
const FILE_LEN: u64 = SLOT_STRIDE + SLOT_LEN as u64;

/// An open mark file; `store` is the only writer (callers serialise it).
#[derive(Debug)]
pub struct Mark {
    path: PathBuf,
    /// `None` until the slotted file exists (a new mark, or one in the old text format).
    file: Option<File>,
    /// The slot the next update overwrites (the one not holding the current value).
    next_slot: u64,
}

fn encode(value: u64) -> [u8; SLOT_LEN] {
    let mut b = [0u8; SLOT_LEN];
    b[..8].copy_from_slice(&value.to_le_bytes());
    let crc = crc32fast::hash(&b[..8]);
    b[8..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<u64> {
    let b: &[u8; SLOT_LEN] = b.get(..SLOT_LEN)?.try_into().ok()?;
    let value = u64::from_le_bytes(b[..8].try_into().ok()?);
    let crc = u32::from_le_bytes(b[8..].try_into().ok()?);
    (crc32fast::hash(&b[..8]) == crc && b != &[0u8; SLOT_LEN]).then_some(value)
}

impl Mark {
    /// Opens the mark at `path` and reads its value (0 when the file does not exist or holds
    /// no valid value).
    pub fn open(path: &Path) -> io::Result<(Mark, u64)> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut mark = Mark {
            path: path.to_path_buf(),
            file: None,
            next_slot: 0,
        };
        if bytes.len() as u64 != FILE_LEN {
            // Absent, or the old format: the value as text.
            let value = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            return Ok((mark, value));
        }
        let slots = [
            decode(&bytes[..SLOT_LEN]),
            decode(&bytes[SLOT_STRIDE as usize..]),
        ];
        let (slot, value) = match slots {
            [Some(a), Some(b)] if b > a => (1, b),
            [Some(a), _] => (0, a),
            [None, Some(b)] => (1, b),
            [None, None] => (1, 0),
        };
        mark.next_slot = 1 - slot;
        mark.file = Some(OpenOptions::new().read(true).write(true).open(path)?);
        Ok((mark, value))
    }

    /// Makes `value` durable; returns once it is.
    pub fn store(&mut self, value: u64) -> io::Result<()> {
        let Some(file) = &self.file else {
            self.create(value)?;
            return Ok(());
        };
        file.write_all_at(&encode(value), self.next_slot * SLOT_STRIDE)?;
        file.sync_data()?;
        self.next_slot = 1 - self.next_slot;
        Ok(())
    }

    /// Writes `value` in place without waiting for the device: for marks whose loss only
    /// repeats idempotent work (the event relay's `events.queued`). A crash may bring back an
    /// older value (the slot written is torn, or never reached the disk), never a larger one.
    /// The file itself is created durably once, like [`Mark::store`] does.
    pub fn store_relaxed(&mut self, value: u64) -> io::Result<()> {
        let Some(file) = &self.file else {
            self.create(value)?;
            return Ok(());
        };
        file.write_all_at(&encode(value), self.next_slot * SLOT_STRIDE)?;
        self.next_slot = 1 - self.next_slot;
        Ok(())
    }

    /// Writes the full-size file holding `value` (`write_small`, durably: aside, fsync,
    /// rename, directory fsync).
    fn create(&mut self, value: u64) -> io::Result<()> {
        let mut bytes = vec![0u8; FILE_LEN as usize];
        bytes[..SLOT_LEN].copy_from_slice(&encode(value));
        super::write_small(&self.path, &bytes, super::Fsync::Durable)?;
        self.file = Some(OpenOptions::new().read(true).write(true).open(&self.path)?);
        self.next_slot = 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_values_are_read_back_and_an_old_text_mark_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.queued");
        std::fs::write(&p, "41\n").unwrap();
        let (mut m, v) = Mark::open(&p).unwrap();
        assert_eq!(v, 41, "the old text format");
        for value in [42, 43, 10_000] {
            m.store_relaxed(value).unwrap();
            assert_eq!(Mark::open(&p).unwrap().1, value);
            assert_eq!(std::fs::metadata(&p).unwrap().len(), FILE_LEN);
        }
        // The inode stays the same: rewritten in place, not replaced.
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&p).unwrap().ino();
        m.store_relaxed(10_001).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino);
    }

    #[test]
    fn values_survive_reopening_and_alternate_slots() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.hwm");
        let (mut m, v) = Mark::open(&p).unwrap();
        assert_eq!(v, 0);
        for value in [5, 6, 1_000_000_007, u64::MAX - 1] {
            m.store(value).unwrap();
            assert_eq!(Mark::open(&p).unwrap().1, value);
            assert_eq!(std::fs::metadata(&p).unwrap().len(), FILE_LEN);
        }
    }

    #[test]
    fn the_old_text_format_is_read_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.hwm");
        std::fs::write(&p, "42\n").unwrap();
        let (mut m, v) = Mark::open(&p).unwrap();
        assert_eq!(v, 42);
        m.store(43).unwrap();
        assert_eq!(Mark::open(&p).unwrap().1, 43);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), FILE_LEN);
    }

    /// A torn update (any prefix of the slot written, or garbage in it) leaves the previous
    /// value readable.
    #[test]
    fn a_torn_update_keeps_the_previous_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.hwm");
        let (mut m, _) = Mark::open(&p).unwrap();
        m.store(100).unwrap();
        m.store(200).unwrap();
        // The next update goes to slot 0 (which holds 100); tear it in every way.
        let new = encode(300);
        for cut in 0..SLOT_LEN {
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            let mut torn = encode(100);
            torn[..cut].copy_from_slice(&new[..cut]);
            f.write_all_at(&torn, 0).unwrap();
            let v = Mark::open(&p).unwrap().1;
            assert!(v == 200, "cut at {cut}: read {v}");
        }
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[0xff; SLOT_LEN], 0).unwrap();
        assert_eq!(Mark::open(&p).unwrap().1, 200);
        // And the mark keeps working after reopening over the damage.
        let (mut m, _) = Mark::open(&p).unwrap();
        m.store(300).unwrap();
        m.store(400).unwrap();
        assert_eq!(Mark::open(&p).unwrap().1, 400);
    }
}
