//! Reports files changed under a directory tree: notify's native backend plus a polling scan.
//!
//! inotify sees only changes made through this host's own mount; over NFS it never reports
//! another client's (or the server's) writes. So one worker thread both applies native events
//! (the fast path) and, every `poll_interval`, walks the tree comparing `(len, mtime, inode)` per
//! file with what it saw last. Both feed the same per-file state, so a change is reported once.
//!
//! * **Cost of a poll**: one `readdir` per directory and one `stat` per file; with the store's
//!   fan-out, 100,000 sessions are 4,096 leaf directories + 100,000 files. The next poll is
//!   scheduled `poll_interval` after the previous one *ends*, so the worker is never a hot loop:
//!   its duty cycle is at most `scan / (scan + interval)`. [`Watcher::stats`] reports the last
//!   scan's duration so an operator can size the interval.
//! * **Hidden names** (starting with `.`: the temp files of atomic writes) are ignored, and so
//!   are native events for `#<inode>`, an unnamed (`O_TMPFILE`) file not yet linked in.
//! * The callback runs on the worker thread; it should be quick (e.g. invalidate a cache entry).
//! * Dropping the [`Watcher`] stops the native watch and joins the worker (a poll in progress is
//!   abandoned between two directories).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher as _};

/// Native events buffered before the worker falls back to a full rescan.
const NATIVE_QUEUE: usize = 4096;

/// What failed when starting a watcher.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The root cannot be read.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The path it failed on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The worker thread could not be started.
    #[error("spawning the watch thread: {0}")]
    Spawn(#[source] io::Error),
}

/// How a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A file appeared.
    Created,
    /// A file's length, mtime or inode changed (an atomic rewrite changes the inode).
    Modified,
    /// A file disappeared.
    Removed,
}

/// One changed file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    /// Path relative to the watched root, e.g. `ab/c/<hash>.json`.
    pub path: PathBuf,
    /// How it changed.
    pub kind: ChangeKind,
}

impl Change {
    /// The file name without its extension (for the store: the key hash).
    pub fn file_stem(&self) -> Option<&str> {
        self.path.file_stem().and_then(|s| s.to_str())
    }
}

/// How a [`Watcher`] watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Time between the end of one poll and the start of the next.
    pub poll_interval: Duration,
    /// Use the native backend (inotify) as a fast path. Off: polling alone (e.g. to prove it).
    pub native: bool,
}

/// Figures about the polling scans so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Polls completed.
    pub polls: u64,
    /// Duration of the last completed poll.
    pub last_poll: Duration,
    /// Files tracked after the last poll.
    pub files: u64,
    /// Directories read by the last poll.
    pub dirs: u64,
}

/// A running watch; stops (and joins its thread) on drop.
pub struct Watcher {
    tx: SyncSender<Msg>,
    stop: Arc<AtomicBool>,
    native: Option<notify::RecommendedWatcher>,
    worker: Option<JoinHandle<()>>,
    stats: Arc<Mutex<WatchStats>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("native", &self.native.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

enum Msg {
    Native(notify::Result<notify::Event>),
    Rescan,
    Stop,
}

type Callback = Box<dyn Fn(Change) + Send + 'static>;

impl Watcher {
    /// Watches `root` with the native backend and a poll every `poll_interval`.
    pub fn new(
        root: &Path,
        poll_interval: Duration,
        callback: impl Fn(Change) + Send + 'static,
    ) -> Result<Watcher, WatchError> {
        let opts = WatchOptions {
            poll_interval,
            native: true,
        };
        Watcher::with_options(root, opts, callback)
    }

    /// Watches `root` as `opts` say. If the native backend cannot start (e.g. the inotify watch
    /// limit), it logs a warning and polls alone: see [`Watcher::native_active`].
    pub fn with_options(
        root: &Path,
        opts: WatchOptions,
        callback: impl Fn(Change) + Send + 'static,
    ) -> Result<Watcher, WatchError> {
        let root = root.to_path_buf();
        let (tx, rx) = mpsc::sync_channel(NATIVE_QUEUE);
        let native = if opts.native {
            start_native(&root, tx.clone())
        } else {
            None
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(WatchStats::default()));
        let mut worker = Worker {
            root: root.clone(),
            dirs: HashMap::new(),
            callback: Box::new(callback),
            stop: stop.clone(),
            stats: stats.clone(),
        };
        // The baseline is taken before returning, so every later change is reported.
        std::fs::read_dir(&root).map_err(|e| WatchError::Io {
            op: "read dir",
            path: root.clone(),
            source: e,
        })?;
        worker.poll(false);
        let interval = opts.poll_interval;
        let handle = std::thread::Builder::new()
            .name("shared-fs-watch".to_owned())
            .spawn(move || worker.run(rx, interval))
            .map_err(WatchError::Spawn)?;
        Ok(Watcher {
            tx,
            stop,
            native,
            worker: Some(handle),
            stats,
        })
    }

    /// True if the native backend is running (false: polling only).
    pub fn native_active(&self) -> bool {
        self.native.is_some()
    }

    /// Figures about the polls so far.
    pub fn stats(&self) -> WatchStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks for a poll now instead of at the next interval.
    pub fn poll_now(&self) {
        let _ = self.tx.try_send(Msg::Rescan);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Dropping notify's watcher shuts its event loop down.
        self.native.take();
        let _ = self.tx.send(Msg::Stop);
        if let Some(handle) = self.worker.take() {
            if handle.join().is_err() {
                tracing::error!("watch thread panicked");
            }
        }
    }
}

fn start_native(root: &Path, tx: SyncSender<Msg>) -> Option<notify::RecommendedWatcher> {
    let handler = move |res: notify::Result<notify::Event>| match tx.try_send(Msg::Native(res)) {
        Ok(()) | Err(TrySendError::Disconnected(_)) => {}
        // The queue is full: one rescan will catch up with whatever these events said.
        Err(TrySendError::Full(_)) => {
            let _ = tx.try_send(Msg::Rescan);
        }
    };
    let started = notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(root, RecursiveMode::Recursive).map(|()| w));
    match started {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(root = %root.display(), error = %e, "native watch unavailable, polling only");
            None
        }
    }
}

/// What a file looked like; any difference is a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sig {
    len: u64,
    mtime: SystemTime,
    ino: u64,
}

impl Sig {
    fn of(m: &std::fs::Metadata) -> Sig {
        Sig {
            len: m.len(),
            mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ino: m.ino(),
        }
    }
}

struct Worker {
    root: PathBuf,
    /// Relative directory → file name → signature.
    dirs: HashMap<PathBuf, HashMap<OsString, Sig>>,
    callback: Callback,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<WatchStats>>,
}

/// `#<inode>`: the name Linux reports for an unnamed (`O_TMPFILE`) file being written before it
/// is linked in under its real name (which is reported then). Nothing to look at.
fn unnamed(rel: &Path) -> bool {
    rel.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix('#'))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

fn hidden(rel: &Path) -> bool {
    rel.iter()
        .any(|c| c.as_encoded_bytes().first() == Some(&b'.'))
}

impl Worker {
    fn run(mut self, rx: Receiver<Msg>, interval: Duration) {
        let mut next_poll = Instant::now() + interval;
        loop {
            let wait = next_poll.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Native(Ok(event))) => {
                    if event.need_rescan() {
                        self.poll(true);
                    } else if !matches!(event.kind, EventKind::Access(_)) {
                        for path in &event.paths {
                            self.native_path(path);
                        }
                    }
                }
                Ok(Msg::Native(Err(e))) => {
                    tracing::warn!(error = %e, "native watch error, rescanning");
                    self.poll(true);
                }
                Ok(Msg::Rescan) => self.poll(true),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    self.poll(true);
                    next_poll = Instant::now() + interval;
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    fn emit(&self, path: PathBuf, kind: ChangeKind) {
        (self.callback)(Change { path, kind });
    }

    /// Applies one path named by a native event.
    fn native_path(&mut self, abs: &Path) {
        let Ok(rel) = abs.strip_prefix(&self.root) else {
            return;
        };
        if rel.as_os_str().is_empty() || hidden(rel) || unnamed(rel) {
            return;
        }
        let rel = rel.to_path_buf();
        match std::fs::symlink_metadata(abs) {
            Ok(m) if m.is_dir() => self.scan_subtree(&rel),
            Ok(m) if m.is_file() => {
                let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                    return;
                };
                let sig = Sig::of(&m);
                let files = self.dirs.entry(parent.to_path_buf()).or_default();
                let kind = match files.insert(name.to_owned(), sig) {
                    None => ChangeKind::Created,
                    Some(old) if old != sig => ChangeKind::Modified,
                    Some(_) => return,
                };
                self.emit(rel, kind);
            }
            Ok(_) => {}
            Err(_) => self.forget(&rel),
        }
    }

    /// Records that `rel` (a file or a whole directory) is gone.
    fn forget(&mut self, rel: &Path) {
        let gone_file = match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => self
                .dirs
                .get_mut(parent)
                .and_then(|files| files.remove(name))
                .is_some(),
            _ => false,
        };
        if gone_file {
            self.emit(rel.to_path_buf(), ChangeKind::Removed);
        }
        // Only a directory seen before can have subdirectories seen before: for a file (the
        // common case) this skips a walk over every known directory.
        if !self.dirs.contains_key(rel) {
            return;
        }
        let gone_dirs: Vec<PathBuf> = self
            .dirs
            .keys()
            .filter(|d| d.starts_with(rel))
            .cloned()
            .collect();
        for dir in gone_dirs {
            self.drop_dir(&dir);
        }
    }

    fn drop_dir(&mut self, dir: &Path) {
        if let Some(files) = self.dirs.remove(dir) {
            for name in files.into_keys() {
                self.emit(dir.join(name), ChangeKind::Removed);
            }
        }
    }

    /// Scans a directory that just appeared (files may have landed before its watch did).
    fn scan_subtree(&mut self, rel: &Path) {
        let mut stack = vec![rel.to_path_buf()];
        while let Some(dir) = stack.pop() {
            self.scan_dir(&dir, true, &mut stack);
        }
    }

    /// A full walk: reports differences when `emit` is true (false: the baseline).
    fn poll(&mut self, emit: bool) {
        let started = Instant::now();
        let mut seen_dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(dir) = stack.pop() {
            if self.stop.load(Ordering::SeqCst) {
                return; // abandoned: the state is left as it is
            }
            if self.scan_dir(&dir, emit, &mut stack) {
                seen_dirs.push(dir);
            }
        }
        let seen: std::collections::HashSet<PathBuf> = seen_dirs.into_iter().collect();
        let vanished: Vec<PathBuf> = self
            .dirs
            .keys()
            .filter(|d| !seen.contains(*d))
            .cloned()
            .collect();
        for dir in vanished {
            self.drop_dir(&dir);
        }
        let files = self.dirs.values().map(|f| f.len() as u64).sum();
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.polls += u64::from(emit);
        stats.last_poll = started.elapsed();
        stats.files = files;
        stats.dirs = seen.len() as u64;
    }

    /// Reads one directory, diffs its files, pushes its subdirectories; false if it is gone.
    fn scan_dir(&mut self, rel: &Path, emit: bool, stack: &mut Vec<PathBuf>) -> bool {
        let abs = self.root.join(rel);
        let read = match std::fs::read_dir(&abs) {
            Ok(r) => r,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %abs.display(), error = %e, "watch cannot read directory");
                }
                return false;
            }
        };
        let mut now: HashMap<OsString, Sig> = HashMap::new();
        for entry in read.flatten() {
            let name = entry.file_name();
            if name.as_encoded_bytes().first() == Some(&b'.') {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(rel.join(&name)),
                Ok(t) if t.is_file() => {
                    if let Ok(m) = entry.metadata() {
                        now.insert(name, Sig::of(&m));
                    }
                }
                _ => {}
            }
        }
        let before = self.dirs.remove(rel).unwrap_or_default();
        if emit {
            for (name, sig) in &now {
                match before.get(name) {
                    None => self.emit(rel.join(name), ChangeKind::Created),
                    Some(old) if old != sig => self.emit(rel.join(name), ChangeKind::Modified),
                    Some(_) => {}
                }
            }
            for name in before.keys().filter(|n| !now.contains_key(*n)) {
                self.emit(rel.join(name), ChangeKind::Removed);
            }
        }
        self.dirs.insert(rel.to_path_buf(), now);
        true
    }
}

#[cfg(test)]
mod tests;
