//! Deferred, bounded fsync of files already renamed into place (`websession.sync = batched`).
//!
//! A write made with [`crate::atomic`] and `fsync: false` is complete and visible to every
//! reader at once (the temp file was written in full, then renamed); what it lacks is
//! durability: until its data, its inode and its directory entry reach the disk, an OS crash or
//! a power loss of the machine holding the files can lose it, or leave it torn (the store's
//! checksum then quarantines it, it is never served). [`BatchSync`] closes that window within a
//! bound, like Redis's `appendfsync everysec`:
//!
//! * **Bounded.** One thread syncs every file handed to [`BatchSync::enqueue`] at most `bound`
//!   after it was handed over: it waits half the bound after the oldest queued file (to gather
//!   a batch), then fsyncs the batch's files and then their directories, many at once (the
//!   disk's queue is the resource: concurrent fsyncs measured 30× the rate of serial ones here).
//! * **Never silently past the bound.** When the disk falls behind (the oldest file not yet
//!   synced is older than `bound`), `enqueue` waits until its own file is synced: writers slow
//!   down to the disk's pace instead of piling up unsynced files (Redis blocks writes likewise
//!   when its background fsync lags).
//! * **By name.** A file is reopened by its path for its fsync (fsync acts on the inode, not on
//!   the descriptor): no descriptor is held between the write and the sync. A file gone by then
//!   (a logout, a newer write renamed over it — queued itself) has nothing left to make durable.
//! * **Stop.** [`BatchSync::flush`] syncs everything queued and waits (a graceful stop calls it);
//!   dropping the last handle flushes too.

use std::collections::BTreeSet;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::atomic;

/// Most fsyncs in flight at once during a round.
const SYNC_THREADS: usize = 16;

/// What [`BatchSync`] reports to its observer (called under its lock: keep it quick, e.g. set
/// a gauge).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SyncEvent {
    /// A file was queued; `pending` files are written but not yet known durable.
    Queued { pending: u64 },
    /// A round finished: `files` files and `dirs` directories fsync'd, `errors` failed (logged).
    Synced {
        pending: u64,
        files: u64,
        dirs: u64,
        errors: u64,
        took: Duration,
    },
}

type Observer = Box<dyn Fn(SyncEvent) + Send + Sync>;

/// Files written but not yet fsync'd, and the thread that syncs them within a bound.
pub struct BatchSync {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for BatchSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSync")
            .field("bound", &self.shared.bound)
            .field("pending", &self.pending())
            .finish()
    }
}

struct Shared {
    bound: Duration,
    state: Mutex<State>,
    /// Wakes the worker (work queued, flush asked, stop).
    work: Condvar,
    /// Wakes writers and flushers waiting for a round to end.
    done: Condvar,
    observer: Observer,
}

#[derive(Default)]
struct State {
    queue: Vec<PathBuf>,
    /// When the oldest file of `queue` was queued.
    queued_since: Option<Instant>,
    /// When the oldest file of the round in progress was queued.
    in_flight_since: Option<Instant>,
    /// Files queued so far, and how many of them are known durable (a prefix: rounds end in
    /// order).
    queued: u64,
    synced: u64,
    flush: bool,
    stop: bool,
}

impl State {
    fn pending(&self) -> u64 {
        self.queued - self.synced
    }

    fn oldest(&self) -> Option<Instant> {
        match (self.in_flight_since, self.queued_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl BatchSync {
    /// Starts the sync thread; every queued file is fsync'd at most `bound` after it was queued
    /// (or its writer waits). `observer` sees every change of the pending count.
    pub fn new(
        bound: Duration,
        observer: impl Fn(SyncEvent) + Send + Sync + 'static,
    ) -> std::io::Result<BatchSync> {
        let shared = Arc::new(Shared {
            bound: bound.max(Duration::from_millis(1)),
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            observer: Box::new(observer),
        });
        let s = shared.clone();
        let worker = std::thread::Builder::new()
            .name("shared-fs-sync".to_owned())
            .spawn(move || run(&s))?;
        Ok(BatchSync {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// The bound given at start.
    pub fn bound(&self) -> Duration {
        self.shared.bound
    }

    /// Files written but not yet fsync'd.
    pub fn pending(&self) -> u64 {
        self.shared.lock().pending()
    }

    /// Queues a file just renamed into place for its fsync (and its directory's). Returns at
    /// once, unless the syncs lag behind the bound: then it waits for this file's sync.
    pub fn enqueue(&self, file: PathBuf) {
        let sh = &self.shared;
        let mut st = sh.lock();
        let now = Instant::now();
        st.queue.push(file);
        st.queued += 1;
        let mine = st.queued;
        if st.queued_since.is_none() {
            st.queued_since = Some(now);
            sh.work.notify_one();
        }
        (sh.observer)(SyncEvent::Queued {
            pending: st.pending(),
        });
        let behind = st
            .oldest()
            .is_some_and(|t| now.saturating_duration_since(t) > sh.bound);
        if behind {
            st.flush = true;
            sh.work.notify_one();
            while st.synced < mine && !st.stop {
                st = sh.done.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    /// Syncs everything queued so far now and waits for it, at most `timeout`; `false` if the
    /// time ran out first (a hung mount).
    pub fn flush(&self, timeout: Duration) -> bool {
        let sh = &self.shared;
        let deadline = Instant::now() + timeout;
        let mut st = sh.lock();
        let target = st.queued;
        if st.synced >= target {
            return true;
        }
        st.flush = true;
        sh.work.notify_one();
        while st.synced < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = sh
                .done
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl Drop for BatchSync {
    /// Syncs what is queued, then stops the thread.
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stop = true;
            self.shared.work.notify_one();
        }
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = worker {
            if w.join().is_err() {
                tracing::error!("session sync thread panicked");
            }
        }
    }
}

fn run(sh: &Shared) {
    loop {
        let (batch, upto) = {
            let mut st = sh.lock();
            loop {
                if let Some(since) = st.queued_since {
                    // Gather for half the bound; the round itself has the other half.
                    let due = since + sh.bound / 2;
                    let now = Instant::now();
                    if st.flush || st.stop || now >= due {
                        break;
                    }
                    st = sh
                        .work
                        .wait_timeout(st, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                } else if st.stop {
                    return;
                } else {
                    st.flush = false;
                    st = sh.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
            }
            st.flush = false;
            st.in_flight_since = st.queued_since.take();
            (std::mem::take(&mut st.queue), st.queued)
        };
        let started = Instant::now();
        let (files, dirs, errors) = sync_batch(batch);
        let mut st = sh.lock();
        st.synced = upto;
        st.in_flight_since = None;
        (sh.observer)(SyncEvent::Synced {
            pending: st.pending(),
            files,
            dirs,
            errors,
            took: started.elapsed(),
        });
        sh.done.notify_all();
    }
}

/// fsyncs the files, then their directories, [`SYNC_THREADS`] at a time; returns the files and
/// directories synced and the failures (each logged).
fn sync_batch(mut batch: Vec<PathBuf>) -> (u64, u64, u64) {
    batch.sort_unstable();
    batch.dedup();
    let dirs: Vec<PathBuf> = batch
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let file_errors = in_parallel(&batch, sync_file);
    // Directories after their files: the entry must not be durable before the content is.
    let dir_errors = in_parallel(&dirs, |d| atomic::sync_dir(d).map_err(|e| e.to_string()));
    (
        batch.len() as u64,
        dirs.len() as u64,
        file_errors + dir_errors,
    )
}

fn sync_file(path: &Path) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    match f {
        Ok(f) => match f.sync_all() {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTSUP)) => {
                Ok(())
            }
            Err(e) => Err(format!("fsync {}: {e}", path.display())),
        },
        // Removed or replaced since (a newer write is queued on its own).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("open {}: {e}", path.display())),
    }
}

/// Runs `f` on every item from up to [`SYNC_THREADS`] threads; returns the failures (logged).
fn in_parallel(items: &[PathBuf], f: impl Fn(&Path) -> Result<(), String> + Sync) -> u64 {
    let next = AtomicUsize::new(0);
    let errors = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(i) else { return };
        if let Err(e) = f(item) {
            errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "deferred fsync failed");
        }
    };
    let threads = items.len().min(SYNC_THREADS);
    if threads <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(work);
            }
            work();
        });
    }
    errors.into_inner() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn write(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        atomic::write_atomic_with(
            &p,
            b"x",
            &atomic::WriteOptions {
                fsync: false,
                mtime: None,
            },
        )
        .unwrap();
        p
    }

    #[test]
    fn queued_files_are_synced_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(AtomicU64::new(u64::MAX));
        let s = seen.clone();
        let bound = Duration::from_millis(200);
        let sync = BatchSync::new(bound, move |e| {
            let pending = match e {
                SyncEvent::Queued { pending } | SyncEvent::Synced { pending, .. } => pending,
            };
            s.store(pending, Ordering::SeqCst);
        })
        .unwrap();
        let start = Instant::now();
        for i in 0..50 {
            sync.enqueue(write(dir.path(), &format!("f{i}")));
        }
        if start.elapsed() < bound / 4 {
            assert!(sync.pending() > 0, "nothing synced before half the bound");
        }
        while sync.pending() > 0 {
            assert!(
                start.elapsed() < bound * 4,
                "still {} pending after {:?}",
                sync.pending(),
                start.elapsed()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(start.elapsed() >= bound / 2, "a batch is gathered first");
        assert_eq!(seen.load(Ordering::SeqCst), 0, "the observer saw the end");
    }

    #[test]
    fn flush_and_drop_sync_everything_and_missing_files_are_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let errors = Arc::new(AtomicU64::new(0));
        let e2 = errors.clone();
        let sync = BatchSync::new(Duration::from_secs(3600), move |e| {
            if let SyncEvent::Synced { errors, .. } = e {
                e2.fetch_add(errors, Ordering::SeqCst);
            }
        })
        .unwrap();
        let p = write(dir.path(), "a");
        sync.enqueue(p.clone());
        sync.enqueue(dir.path().join("gone"));
        assert_eq!(sync.pending(), 2);
        assert!(
            sync.flush(Duration::from_secs(10)),
            "flush ends long before the bound"
        );
        assert_eq!(sync.pending(), 0);
        assert_eq!(errors.load(Ordering::SeqCst), 0);
        sync.enqueue(p);
        drop(sync); // syncs the last one and joins
    }
}
