//! Full disks, told apart and watched. A write that fails with ENOSPC or EDQUOT marks the data
//! directory full: the master gets `507 Insufficient Storage` naming the path, `/health` is
//! `503 disk full`. The mark clears by itself once space is back, without a restart: at the
//! next successful store write, or when `/health` asks and a probe write (64 KiB, fsync'd,
//! removed) succeeds, at most once a second.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PROBE_BYTES: usize = 64 << 10;
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Whether an i/o error means the file system (or the user's quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// The first i/o error in an error's source chain (itself included).
pub fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// Whether anything in an error's source chain is a full disk.
pub fn chain_is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    io_source(e).is_some_and(is_disk_full)
}

/// A copy of an i/o error that keeps its kind (io::Error is not `Clone`), for answering every
/// request of a failed group commit.
pub fn copy_io(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

#[derive(Default)]
struct State {
    full: Option<String>,
    last_probe: Option<Instant>,
    /// Damaged records skipped at recovery, per store.
    corrupt: std::collections::BTreeMap<&'static str, u64>,
}

/// The stores whose recovery counts damaged records (`ha_corrupt_records_total{store}`).
pub const STORES: [&str; 4] = ["outbox", "master", "events", "journal"];

/// The data directory's watch, shared by every store of a node: its "disk full" mark, and the
/// damaged records recovery skipped (metrics, `/v1/status` level `warning`).
#[derive(Default)]
pub struct DiskWatch {
    /// Where probes are written; none for a detached watch (library defaults, tests).
    dir: Option<PathBuf>,
    state: Mutex<State>,
}

impl std::fmt::Debug for DiskWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskWatch").field("dir", &self.dir).finish()
    }
}

impl DiskWatch {
    pub fn new(data_dir: &Path) -> Self {
        DiskWatch {
            dir: Some(data_dir.to_path_buf()),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a failed store write; true when it was a full disk.
    pub fn failed(&self, what: &Path, e: &io::Error) -> bool {
        if !is_disk_full(e) {
            return false;
        }
        let mut s = self.lock();
        if s.full.is_none() {
            tracing::error!(path = %what.display(), error = %e, "the data directory is full: writes fail until space is freed");
        }
        s.full = Some(format!("{}: {e}", what.display()));
        true
    }

    /// Notes a successful store write: there is space again.
    pub fn succeeded(&self) {
        let mut s = self.lock();
        if s.full.take().is_some() {
            tracing::info!("the data directory has space again");
        }
    }

    /// Notes `records` damaged records that `store`'s recovery skipped.
    pub fn corrupt(&self, store: &'static str, records: u64) {
        *self.lock().corrupt.entry(store).or_default() += records;
    }

    /// Damaged records skipped since start, per store (every store of [`STORES`] listed).
    pub fn corrupt_records(&self) -> Vec<(&'static str, u64)> {
        let s = self.lock();
        STORES
            .iter()
            .map(|&k| (k, s.corrupt.get(k).copied().unwrap_or(0)))
            .collect()
    }

    /// What is full, if the last write said so and a probe does not find space now. Blocking
    /// (the probe writes and fsyncs a small file): call it off the executor.
    pub fn full(&self) -> Option<String> {
        let mut s = self.lock();
        s.full.as_ref()?;
        let due = s.last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY);
        if let (true, Some(dir)) = (due, &self.dir) {
            s.last_probe = Some(Instant::now());
            if probe(dir).is_ok() {
                tracing::info!("the data directory has space again");
                s.full = None;
                return None;
            }
        }
        s.full.clone()
    }
}

fn probe(dir: &Path) -> io::Result<()> {
    let path = dir.join(".space-probe");
    let r = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_data()
    });
    let _ = std::fs::remove_file(&path);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_are_told_apart_and_the_mark_clears_when_space_is_back() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EIO)));
        let copied = copy_io(&io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(is_disk_full(&copied));
        assert!(chain_is_disk_full(&io::Error::from_raw_os_error(
            libc::ENOSPC
        )));

        let dir = tempfile::tempdir().unwrap();
        let w = DiskWatch::new(dir.path());
        assert_eq!(w.full(), None);
        assert!(!w.failed(dir.path(), &io::Error::from_raw_os_error(libc::EIO)));
        assert_eq!(w.full(), None);
        assert!(w.failed(dir.path(), &io::Error::from_raw_os_error(libc::ENOSPC)));
        // The probe finds space here: the mark clears without another store write.
        assert_eq!(w.full(), None);
        let detached = DiskWatch::default();
        detached.failed(dir.path(), &io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(detached.full().unwrap().contains("No space left"));
        detached.succeeded();
        assert_eq!(detached.full(), None);
    }
}
