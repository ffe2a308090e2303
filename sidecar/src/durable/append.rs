//! The append path shared by the stores' files: a write that fails (ENOSPC, EIO, a short
//! write) never leaves a partial record behind. The file is cut back to the last durable
//! length and the cut is fsync'd before the error is returned, so readers and later appends
//! never meet garbage between records (the bug that lost acknowledged messages after a full
//! disk: a partly written record stayed and later appends landed behind it).

use std::io;

/// What an append log needs from its file; a test injects one that fails on demand.
pub trait Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
}

impl Sink for std::fs::File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(self, buf)
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// Cuts `file` to `len` and makes the cut durable.
pub fn truncate_durably(file: &std::fs::File, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    file.sync_data()
}

/// An append-only file with a durable length: `append` then `commit`; any failure rolls the
/// file back to what the last commit made durable.
#[derive(Debug)]
pub struct AppendLog<S: Sink> {
    sink: S,
    /// Bytes appended (durable or not).
    len: u64,
    /// Bytes made durable by the last commit.
    durable: u64,
    /// Something may be in the file beyond `durable` (a write was attempted since the commit).
    dirty: bool,
    /// A failed write or fsync could not be cut back yet: nothing is appended (so nothing is
    /// acknowledged) until a retried cut succeeds.
    uncut: bool,
}

impl<S: Sink> AppendLog<S> {
    /// Wraps a sink whose first `len` bytes are intact and durable.
    pub fn new(sink: S, len: u64) -> Self {
        AppendLog {
            sink,
            len,
            durable: len,
            dirty: false,
            uncut: false,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn durable_len(&self) -> u64 {
        self.durable
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// No failed write is waiting to be cut back.
    pub fn is_clean(&self) -> bool {
        !self.uncut
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Writes all of `bytes` (not yet durable). On failure the log is rolled back to its
    /// durable length, uncommitted appends included.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.uncut {
            // The last failure left bytes that could not be cut: try again before anything else.
            self.rollback()?;
        }
        self.dirty = true;
        let mut done = 0;
        while done < bytes.len() {
            match self.sink.write(&bytes[done..]) {
                Ok(0) => {
                    return self.fail(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "short write: the file took no more bytes",
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(e),
            }
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes every append durable (one fsync). On failure, rolled back like `append`.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.uncut {
            // Every append since the failure was refused: after the cut nothing is pending.
            self.rollback()?;
        }
        if !self.dirty {
            return Ok(());
        }
        if let Err(e) = self.sink.sync() {
            return self.fail(e);
        }
        self.durable = self.len;
        self.dirty = false;
        Ok(())
    }

    /// Cuts whatever follows the durable length, durably. Returns the error that made the
    /// rollback necessary; if the cut itself fails, that error instead.
    fn fail(&mut self, e: io::Error) -> io::Result<()> {
        self.rollback()?;
        Err(e)
    }

    /// Cuts the file back to its durable length and fsyncs the cut. Until that succeeds (here
    /// or at a later call) the log refuses appends.
    pub fn rollback(&mut self) -> io::Result<()> {
        if !self.dirty && !self.uncut {
            return Ok(());
        }
        self.uncut = true;
        self.sink.truncate(self.durable)?;
        self.sink.sync()?;
        self.len = self.durable;
        self.dirty = false;
        self.uncut = false;
        Ok(())
    }

    /// Empties the file, durably (the index journal, once its records are in a commit).
    pub fn reset(&mut self) -> io::Result<()> {
        self.durable = 0;
        self.dirty = true;
        self.rollback()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in memory that fails once at a chosen point: after `fail_after` bytes of the
    /// next writes (a short write, then the error), or at the next sync.
    struct Flaky {
        data: Vec<u8>,
        /// Bytes of `data` that survive a crash.
        durable: Vec<u8>,
        fail_after: Option<usize>,
        fail_sync: bool,
        error: i32,
    }

    impl Sink for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.fail_after {
                Some(0) => {
                    self.fail_after = None;
                    Err(io::Error::from_raw_os_error(self.error))
                }
                Some(n) => {
                    let k = n.min(buf.len());
                    self.data.extend_from_slice(&buf[..k]);
                    self.fail_after = Some(n - k);
                    Ok(k)
                }
                None => {
                    self.data.extend_from_slice(buf);
                    Ok(buf.len())
                }
            }
        }
        fn truncate(&mut self, len: u64) -> io::Result<()> {
            self.data.truncate(len as usize);
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            if std::mem::take(&mut self.fail_sync) {
                return Err(io::Error::from_raw_os_error(self.error));
            }
            self.durable = self.data.clone();
            Ok(())
        }
    }

    fn record(i: u8) -> Vec<u8> {
        let mut r = vec![i; 5 + i as usize];
        r.push(b'\n');
        r
    }

    /// Every offset of a record, for ENOSPC, EIO and a short write (then EDQUOT): the file
    /// afterwards holds exactly the acknowledged records, and the next append works.
    #[test]
    fn a_failure_at_any_offset_of_a_record_leaves_exactly_the_acknowledged_records() {
        for error in [libc::ENOSPC, libc::EIO, libc::EDQUOT] {
            let rec = record(9);
            for offset in 0..=rec.len() {
                for fail_sync in [false, true] {
                    let mut sink = Flaky {
                        data: Vec::new(),
                        durable: Vec::new(),
                        fail_after: None,
                        fail_sync: false,
                        error,
                    };
                    sink.data.extend(record(1));
                    sink.sync().unwrap();
                    let mut log = AppendLog::new(sink, record(1).len() as u64);
                    log.append(&record(2)).unwrap();
                    log.commit().unwrap();
                    let acked = [record(1), record(2)].concat();
                    if fail_sync {
                        log.sink.fail_sync = true;
                    } else {
                        log.sink.fail_after = Some(offset);
                    }
                    let r = log.append(&rec).and_then(|()| log.commit());
                    let failed = fail_sync || offset < rec.len();
                    assert_eq!(r.is_err(), failed, "error {error} offset {offset}");
                    if failed {
                        let e = r.unwrap_err();
                        assert!(
                            e.raw_os_error() == Some(error),
                            "the error keeps its kind: {e}"
                        );
                        assert_eq!(log.sink.data, acked, "offset {offset}");
                        assert_eq!(log.sink.durable, acked, "the cut is durable");
                        assert_eq!(log.len(), acked.len() as u64);
                    }
                    // Space is back: the next append lands right after the acknowledged ones.
                    log.sink.fail_after = None;
                    log.append(&record(3)).unwrap();
                    log.commit().unwrap();
                    let mut want = acked.clone();
                    if !failed {
                        want.extend(&rec);
                    }
                    want.extend(record(3));
                    assert_eq!(log.sink.durable, want);
                }
            }
        }
    }

    /// An fsync fails and so does the cut after it (EIO): the log refuses every append until a
    /// cut succeeds, so nothing is acknowledged behind bytes that are not durable.
    #[test]
    fn a_cut_that_fails_blocks_appends_until_it_succeeds() {
        struct Stuck {
            data: Vec<u8>,
            fail: u32,
        }
        impl Sink for Stuck {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.data.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn truncate(&mut self, len: u64) -> io::Result<()> {
                if self.fail > 0 {
                    self.fail -= 1;
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                self.data.truncate(len as usize);
                Ok(())
            }
            fn sync(&mut self) -> io::Result<()> {
                if self.fail > 0 {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                Ok(())
            }
        }
        let mut log = AppendLog::new(
            Stuck {
                data: vec![],
                fail: 0,
            },
            0,
        );
        log.append(b"one").unwrap();
        log.commit().unwrap();
        log.sink.fail = 2; // the fsync and its cut, then the next cut
        log.append(b"two").unwrap();
        assert!(log.commit().is_err());
        assert_eq!(log.sink.data, b"onetwo", "the cut failed");
        assert!(log.append(b"three").is_err(), "refused while uncut");
        log.commit().unwrap(); // cuts, and nothing was pending
        assert_eq!(log.sink.data, b"one");
        log.append(b"four").unwrap();
        log.commit().unwrap();
        assert_eq!(log.sink.data, b"onefour");
        assert_eq!(log.durable_len(), 7);
        log.reset().unwrap();
        assert_eq!((log.sink.data.len(), log.len()), (0, 0));
    }

    #[test]
    fn a_zero_length_write_is_a_failure_too() {
        struct Zero(Vec<u8>);
        impl Sink for Zero {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn truncate(&mut self, len: u64) -> io::Result<()> {
                self.0.truncate(len as usize);
                Ok(())
            }
            fn sync(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut log = AppendLog::new(Zero(Vec::new()), 0);
        let e = log.append(b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        assert_eq!(log.len(), 0);
    }
}
