//! Group commit of atomic file writes: many concurrent callers, one writer thread, one wave of
//! concurrent fsyncs per batch.
//!
//! **Same guarantees as [`crate::atomic`].** Each file is written to a temp file beside its
//! target and fsync'd *before* it is renamed into place, and its directory is fsync'd *after*
//! the rename, before the caller hears of success. A crash at any point leaves the old file, or
//! the new one complete, plus at worst a temp file that cleanup removes; never a partial file
//! under the target name. Nothing is acknowledged that is not durable.
//!
//! **What changes is who pays for the syncs.** Every fsync of this machine's disks (and of a
//! typical VM's) ends in a device cache flush, ~2–7 ms; one thread issuing them one after the
//! other pays one flush each (measured: 16 files, then their 16 directories, one by one, ~130
//! files/s). Issued at the same moment from several threads, they share one journal commit and
//! one flush. So the writer thread takes every write queued since its last round (a batch),
//! writes their temp files, then issues in one *wave*, concurrently from a small pool:
//!
//! * the fsync of every temp file of this batch, and
//! * the fsync of every distinct directory touched by the renames of the *previous* batch;
//!
//! then answers the previous batch (now durable) and renames this batch into place. One wave
//! (≈ one flush) thus completes one batch, however large, as Redis's `appendfsync always`
//! completes every client served in one event-loop iteration with one `fdatasync`; a caller
//! waits two waves. When nothing new arrives, the next wave carries only directory fsyncs.
//!
//! Not `syncfs(2)`: it would also flush every other process's dirty data on the file system
//! (on a shared host, builds and logs), and FUSE clients do not pass it on. The fan-out puts
//! each file of a batch in a different directory (4,096 leaves), so a batch of *n* writes
//! costs *n* directory fsyncs; in one wave they cost one commit, and the ones after the first
//! find nothing left to commit.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use crate::atomic::{self, AtomicError};

/// Most writes taken into one batch.
const MAX_BATCH: usize = 512;
/// Threads issuing the fsyncs of a wave concurrently.
const SYNC_THREADS: usize = 32;

/// What a write does when its target exists or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Only if the target does not exist (see [`atomic::create_new_atomic`]); `false` if it does.
    CreateNew,
    /// Only if the target exists (see [`atomic::replace_existing_atomic`]); `false` if not.
    ReplaceExisting,
    /// Whether or not it exists (see [`atomic::write_atomic_with`]); always `true`.
    Put,
}

/// One write handed to the [`GroupWriter`].
#[derive(Debug)]
pub struct GroupWrite {
    /// The target file; its directory is created (`0700`) if missing.
    pub path: PathBuf,
    /// The whole new content.
    pub bytes: Vec<u8>,
    /// The mtime to stamp on the file before the rename.
    pub mtime: Option<SystemTime>,
    /// Create, replace or either.
    pub mode: WriteMode,
}

/// Called once, on the writer thread, with the write's outcome: `Ok(true)` once it is durable
/// in place, `Ok(false)` when its mode refused it (nothing written), or the error.
pub type Done = Box<dyn FnOnce(Result<bool, AtomicError>) + Send>;

struct Job {
    write: GroupWrite,
    done: Done,
}

/// The writer thread of one store (see the module docs). Dropping it finishes every write
/// already submitted, then stops the thread.
pub struct GroupWriter {
    tx: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupWriter {
    /// Starts the writer thread. With `fsync` off (tests, scratch data) nothing is synced and
    /// each write is answered as soon as it is renamed.
    pub fn start(name: &str, fsync: bool) -> io::Result<GroupWriter> {
        let (tx, rx) = mpsc::channel();
        let pool = if fsync {
            Some(SyncPool::start(name)?)
        } else {
            None
        };
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(rx, pool))?;
        Ok(GroupWriter {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a write; `done` is called with its outcome (at once with an error if the writer
    /// has stopped).
    pub fn submit(&self, write: GroupWrite, done: Done) {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let job = Job { write, done };
        let rejected = match tx.as_ref() {
            Some(tx) => tx.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        drop(tx);
        if let Some(job) = rejected {
            (job.done)(Err(stopped(&job.write.path)));
        }
    }

    /// Queues a write and blocks until it is durable (or refused, or failed).
    pub fn write(&self, write: GroupWrite) -> Result<bool, AtomicError> {
        let path = write.path.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            write,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or_else(|_| Err(stopped(&path)))
    }

    /// Finishes every write already queued and stops the thread (idempotent).
    pub fn shutdown(&self) {
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for GroupWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for GroupWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupWriter")
    }
}

fn stopped(path: &Path) -> AtomicError {
    AtomicError::Io {
        op: "queue write",
        path: path.to_path_buf(),
        source: io::Error::other("the writer thread has stopped"),
    }
}

/// A write whose temp file is complete (not yet synced or renamed).
struct Staged {
    temp: PathBuf,
    file: Arc<File>,
    job: Job,
}

/// The writer thread's loop.
fn run(rx: Receiver<Job>, pool: Option<SyncPool>) {
    // Renamed into place, waiting for the fsync of their directory (only with a pool).
    let mut renamed: Vec<(PathBuf, Done)> = Vec::new();
    let mut open = true;
    loop {
        let mut jobs = Vec::new();
        if renamed.is_empty() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(j) => jobs.push(j),
                Err(_) => return,
            }
        }
        while open && jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }

        let mut staged = Vec::with_capacity(jobs.len());
        for job in jobs {
            match stage(&job.write) {
                Ok((temp, file)) => staged.push(Staged {
                    temp,
                    file: Arc::new(file),
                    job,
                }),
                Err(e) => (job.done)(Err(e)),
            }
        }

        if let Some(pool) = &pool {
            // The wave: this batch's files and the previous batch's directories, together.
            let mut dirs: Vec<PathBuf> = renamed.iter().map(|(d, _)| d.clone()).collect();
            dirs.sort();
            dirs.dedup();
            let mut targets: Vec<SyncTarget> = staged
                .iter()
                .map(|s| SyncTarget::File(s.file.clone()))
                .collect();
            targets.extend(dirs.iter().cloned().map(SyncTarget::Dir));
            let results = pool.sync(targets);
            let (file_results, dir_results) = results.split_at(staged.len());
            for (dir, done) in renamed.drain(..) {
                let i = dirs
                    .binary_search(&dir)
                    .expect("every directory was synced");
                done(match &dir_results[i] {
                    Ok(()) => Ok(true),
                    Err(e) => Err(AtomicError::Io {
                        op: "fsync dir",
                        path: dir,
                        source: io::Error::new(e.kind(), e.to_string()),
                    }),
                });
            }
            let mut synced = Vec::with_capacity(staged.len());
            for (s, r) in staged.into_iter().zip(file_results) {
                match r {
                    Ok(()) => synced.push(s),
                    Err(e) => {
                        let err = AtomicError::Io {
                            op: "fsync",
                            path: s.temp.clone(),
                            source: io::Error::new(e.kind(), e.to_string()),
                        };
                        drop(s.file);
                        atomic::discard(&s.temp);
                        (s.job.done)(Err(err));
                    }
                }
            }
            staged = synced;
        }

        for s in staged {
            drop(s.file);
            let Job { write, done } = s.job;
            match atomic::commit_temp(&s.temp, &write.path, write.mode) {
                Ok(true) if pool.is_some() => match write.path.parent() {
                    Some(dir) => renamed.push((dir.to_path_buf(), done)),
                    None => done(Ok(true)),
                },
                other => done(other),
            }
        }
    }
}

/// Creates the target's directory if needed and writes the temp file (no fsync).
fn stage(w: &GroupWrite) -> Result<(PathBuf, File), AtomicError> {
    if let Some(dir) = w.path.parent() {
        crate::store::mkdirs_io(dir).map_err(|e| AtomicError::Io {
            op: "mkdir",
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    atomic::stage_temp(&w.path, &w.bytes, w.mtime)
}

enum SyncTarget {
    File(Arc<File>),
    Dir(PathBuf),
}

impl SyncTarget {
    fn sync(&self) -> io::Result<()> {
        match self {
            SyncTarget::File(f) => f.sync_all(),
            SyncTarget::Dir(d) => match atomic::sync_dir(d) {
                Ok(()) => Ok(()),
                Err(AtomicError::Io { source, .. }) => Err(source),
                Err(e) => Err(io::Error::other(e.to_string())),
            },
        }
    }
}

type SyncJob = (SyncTarget, usize, Sender<(usize, io::Result<()>)>);

/// Threads that run the fsyncs of one wave at the same time.
struct SyncPool {
    tx: Sender<SyncJob>,
}

impl SyncPool {
    fn start(name: &str) -> io::Result<SyncPool> {
        let (tx, rx) = mpsc::channel::<SyncJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..SYNC_THREADS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-sync{i}"))
                .stack_size(64 * 1024)
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok((target, i, reply)) = job else { return };
                    let _ = reply.send((i, target.sync()));
                })?;
        }
        Ok(SyncPool { tx })
    }

    /// Syncs every target, concurrently; the results in the targets' order.
    fn sync(&self, targets: Vec<SyncTarget>) -> Vec<io::Result<()>> {
        let n = targets.len();
        if n <= 1 {
            return targets.iter().map(SyncTarget::sync).collect();
        }
        let (tx, rx) = mpsc::channel();
        let mut results: Vec<Option<io::Result<()>>> = (0..n).map(|_| None).collect();
        for (i, t) in targets.into_iter().enumerate() {
            if let Err(mpsc::SendError((t, i, _))) = self.tx.send((t, i, tx.clone())) {
                results[i] = Some(t.sync());
            }
        }
        drop(tx);
        while let Ok((i, r)) = rx.recv() {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(io::Error::other("sync thread lost"))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, body: &[u8], mode: WriteMode) -> GroupWrite {
        GroupWrite {
            path: dir.join("a").join("b").join(name),
            bytes: body.to_vec(),
            mtime: None,
            mode,
        }
    }

    #[test]
    fn modes_behave_like_the_single_writes() {
        for fsync in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let w = GroupWriter::start("test-writer", fsync).unwrap();
            let d = dir.path();
            assert!(w.write(write(d, "x", b"1", WriteMode::CreateNew)).unwrap());
            assert!(!w.write(write(d, "x", b"2", WriteMode::CreateNew)).unwrap());
            assert!(!w
                .write(write(d, "y", b"1", WriteMode::ReplaceExisting))
                .unwrap());
            assert!(w
                .write(write(d, "x", b"3", WriteMode::ReplaceExisting))
                .unwrap());
            assert!(w.write(write(d, "z", b"4", WriteMode::Put)).unwrap());
            let leaf = d.join("a").join("b");
            assert_eq!(std::fs::read(leaf.join("x")).unwrap(), b"3");
            assert_eq!(std::fs::read(leaf.join("z")).unwrap(), b"4");
            assert!(!leaf.join("y").exists());
            let mode = std::fs::metadata(leaf.join("x"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
            assert_eq!(
                std::fs::read_dir(&leaf).unwrap().count(),
                2,
                "no temp file left"
            );
            w.shutdown();
            let late = w.write(write(d, "late", b"1", WriteMode::Put));
            assert!(late.is_err(), "a stopped writer refuses");
        }
    }

    #[test]
    fn concurrent_writes_share_waves_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let w = Arc::new(GroupWriter::start("test-writer", true).unwrap());
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (w, d) = (w.clone(), dir.path().to_path_buf());
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let p = d.join(format!("{t:02x}")).join(format!("{i}"));
                        let ok = w.write(GroupWrite {
                            path: p.clone(),
                            bytes: format!("{t}-{i}").into_bytes(),
                            mtime: None,
                            mode: WriteMode::CreateNew,
                        });
                        assert!(ok.unwrap());
                        // Acknowledged means in place.
                        assert_eq!(std::fs::read(&p).unwrap(), format!("{t}-{i}").as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn queued_writes_finish_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let w = GroupWriter::start("test-writer", true).unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..50 {
            let tx = tx.clone();
            w.submit(
                write(dir.path(), &format!("f{i}"), b"x", WriteMode::Put),
                Box::new(move |r| tx.send(r.unwrap()).unwrap()),
            );
        }
        drop(tx);
        w.shutdown();
        assert_eq!(rx.iter().filter(|ok| *ok).count(), 50);
    }
}
