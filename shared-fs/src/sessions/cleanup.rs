//! The session cleanup pass: expired sessions, old quarantined files, stale temp files.
//!
//! * **Cost.** One streaming walk of the fan-out directories and one `stat` per file. A file
//!   whose mtime (the session's `expires_at`, set by the writer) is still in the future is
//!   skipped without being read; only expiry candidates are read. Nothing is held in memory per
//!   session, and request reads never wait for it (it is a separate pass on the caller's thread).
//! * **Every node at once.** Each removal is a rename-aside of one file; a node that loses the
//!   race gets `ENOENT` and moves on, so concurrent passes neither fail nor double-count.
//! * **A refresh is never undone.** Before removing, the file is renamed aside and compared
//!   (inode, length, mtime) with the one read and judged expired; if another node replaced it in
//!   between, the new file is renamed back (no-replace). The only remaining effect of that race
//!   is that readers may see the session absent for the microseconds between the two renames;
//!   a refresh landing after the rename-aside simply recreates the file. If the process dies
//!   between the two renames, the aside file is a temp file (removed after `temp_grace`).
//! * **Clocks.** Expiry compares `expires_at` (written by the master's clock) with `now`; temp
//!   files are judged by their ctime (the NFS server's clock), hence a generous grace period
//!   (a node whose clock runs ahead of the server by more than `temp_grace` would remove other
//!   nodes' writes in flight: their rename then fails and the write reports an error);
//!   quarantined files by the timestamp in their name (the quarantining node's clock).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::store::{unix_ms, Reap, ScanItem, Store, StoreError};

use super::{decode, SessionOptions};

/// What one cleanup pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Session files looked at.
    pub scanned: u64,
    /// Expired sessions removed.
    pub expired_removed: u64,
    /// Quarantined files removed after their retention.
    pub quarantined_removed: u64,
    /// Stale temp files (crash leftovers) removed.
    pub temp_removed: u64,
    /// Corrupt session files found by this pass and moved to quarantine.
    pub corrupt_quarantined: u64,
    /// Expired sessions that were refreshed by another node just before removal, and kept.
    pub refreshed_kept: u64,
    /// Errors met (each logged); the pass goes on after an error.
    pub errors: u64,
}

pub(super) fn run(
    store: &Store,
    opts: &SessionOptions,
    now_ms: u64,
    before_reap: &mut dyn FnMut(&Path),
) -> CleanupReport {
    let mut report = CleanupReport::default();
    let temp_grace_ms = opts.temp_grace.as_millis() as u64;
    for item in store.scan() {
        let result = match item {
            Ok(ScanItem::Entry { hash, path }) => {
                report.scanned += 1;
                expire_one(store, &hash, &path, now_ms, &mut report, before_reap)
            }
            Ok(ScanItem::Temp { path }) => {
                remove_stale_temp(&path, now_ms, temp_grace_ms, &mut report)
            }
            Ok(ScanItem::Foreign { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            report.errors += 1;
            tracing::warn!(error = %e, "session cleanup step failed");
        }
    }
    if let Err(e) = remove_old_quarantine(store, now_ms, opts, &mut report) {
        report.errors += 1;
        tracing::warn!(error = %e, "session quarantine cleanup failed");
    }
    tracing::info!(
        scanned = report.scanned,
        expired_removed = report.expired_removed,
        quarantined_removed = report.quarantined_removed,
        temp_removed = report.temp_removed,
        corrupt_quarantined = report.corrupt_quarantined,
        refreshed_kept = report.refreshed_kept,
        errors = report.errors,
        "session cleanup done"
    );
    report
}

fn expire_one(
    store: &Store,
    hash: &crate::store::KeyHash,
    path: &Path,
    now_ms: u64,
    report: &mut CleanupReport,
    before_reap: &mut dyn FnMut(&Path),
) -> Result<(), StoreError> {
    let Some(meta) = stat(path)? else {
        return Ok(());
    };
    let hint_ms = meta.modified().map(unix_ms).unwrap_or(0);
    if hint_ms > now_ms {
        return Ok(()); // live by its expiry hint: not even read
    }
    let (record, judged) = match store.read_path(path, hash, decode) {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(()),
        Err(StoreError::Corrupt { .. }) => {
            report.corrupt_quarantined += 1;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if record.expires_at > now_ms {
        return Ok(()); // the hint was stale (e.g. a file system that ignores set mtime)
    }
    before_reap(path);
    match store.reap_if_unchanged(path, &judged)? {
        Reap::Removed => report.expired_removed += 1,
        Reap::Changed => report.refreshed_kept += 1,
        Reap::Gone => {}
    }
    Ok(())
}

/// The entry's metadata (links not followed); `None` once it is gone.
fn stat(path: &Path) -> Result<Option<std::fs::Metadata>, StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            op: "stat",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn remove_stale_temp(
    path: &Path,
    now_ms: u64,
    grace_ms: u64,
    report: &mut CleanupReport,
) -> Result<(), StoreError> {
    let Some(meta) = stat(path)? else {
        return Ok(());
    };
    // ctime, not mtime: a writer stamps the temp file's mtime with the expiry before renaming.
    let ctime_ms =
        (meta.ctime().max(0) as u64) * 1000 + (meta.ctime_nsec().max(0) as u64) / 1_000_000;
    if ctime_ms.saturating_add(grace_ms) > now_ms {
        return Ok(()); // possibly a write in flight
    }
    match std::fs::remove_file(path) {
        Ok(()) => report.temp_removed += 1,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StoreError::Io {
                op: "unlink",
                path: path.to_path_buf(),
                source: e,
            })
        }
    }
    Ok(())
}

/// Quarantined files are named `<hash>.<unix ms>.json`; the timestamp dates them.
fn remove_old_quarantine(
    store: &Store,
    now_ms: u64,
    opts: &SessionOptions,
    report: &mut CleanupReport,
) -> Result<(), StoreError> {
    let dir = store.quarantine_dir();
    let read = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::Io {
                op: "read dir",
                path: dir,
                source: e,
            })
        }
    };
    let retention_ms = opts.quarantine_retention.as_millis() as u64;
    for entry in read {
        let entry = entry.map_err(|e| StoreError::Io {
            op: "read dir",
            path: dir.clone(),
            source: e,
        })?;
        let name = entry.file_name();
        let Some(stamp) = name.to_str().and_then(quarantine_stamp) else {
            continue;
        };
        if stamp.saturating_add(retention_ms) > now_ms {
            continue;
        }
        // A directory found in place of a session file was quarantined as it was.
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        match removed {
            Ok(()) => report.quarantined_removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                report.errors += 1;
                tracing::warn!(path = %entry.path().display(), error = %e, "removing quarantined file failed");
            }
        }
    }
    Ok(())
}

fn quarantine_stamp(name: &str) -> Option<u64> {
    let rest = name.strip_suffix(".json")?;
    let (_, stamp) = rest.rsplit_once('.')?;
    stamp.parse().ok()
}
