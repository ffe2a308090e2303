//! Streaming iteration over the files of a [`crate::store::Store`] (for cleanup).
//!
//! The walk holds at most one open `ReadDir` per level (root, `ab/`, `ab/c/`), so memory does
//! not grow with the number of entries: names are read in `getdents` batches as the caller pulls.
//! Directories that vanish under the walk (another node's cleanup) are skipped, not errors.

use std::ffi::OsStr;
use std::fs::ReadDir;
use std::io;
use std::path::{Path, PathBuf};

use crate::atomic;
use crate::store::{KeyHash, StoreError, EXTENSION};

/// One file found by a [`Scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanItem {
    /// An entry file, `ab/c/<hash>.json`.
    Entry {
        /// Its key hash.
        hash: KeyHash,
        /// Its full path.
        path: PathBuf,
    },
    /// A temp file of an atomic write (in flight, or left by a crash).
    Temp {
        /// Its full path.
        path: PathBuf,
    },
    /// Anything else found in a fan-out directory (left alone).
    Foreign {
        /// Its full path.
        path: PathBuf,
    },
}

/// Iterator over the files of a store; yields errors and keeps going.
#[derive(Debug)]
pub struct Scan {
    root: PathBuf,
    started: bool,
    /// Open directories, outermost first, each with its path.
    stack: Vec<(PathBuf, ReadDir)>,
}

impl Scan {
    pub(crate) fn new(root: &Path) -> Scan {
        Scan {
            root: root.to_path_buf(),
            started: false,
            stack: Vec::with_capacity(3),
        }
    }

    /// Opens `dir` and pushes it; a vanished directory is skipped.
    fn push(&mut self, dir: PathBuf) -> Option<Result<ScanItem, StoreError>> {
        match std::fs::read_dir(&dir) {
            Ok(rd) => {
                self.stack.push((dir, rd));
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(StoreError::Io {
                op: "read dir",
                path: dir,
                source: e,
            })),
        }
    }
}

/// A fan-out directory name at `depth` (1: two hex digits, 2: one).
fn is_fanout_name(name: &OsStr, depth: usize) -> bool {
    name.to_str().is_some_and(|s| {
        s.len() == 3 - depth && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn classify(path: PathBuf, name: &OsStr) -> ScanItem {
    if atomic::is_temp_name(name) {
        return ScanItem::Temp { path };
    }
    let hash = name
        .to_str()
        .and_then(|n| n.strip_suffix(&format!(".{EXTENSION}")))
        .and_then(KeyHash::from_hex);
    match hash {
        Some(hash) => ScanItem::Entry { hash, path },
        None => ScanItem::Foreign { path },
    }
}

impl Iterator for Scan {
    type Item = Result<ScanItem, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started {
            self.started = true;
            if let Some(err) = self.push(self.root.clone()) {
                return Some(err);
            }
        }
        loop {
            let depth = self.stack.len();
            let (dir, rd) = self.stack.last_mut()?;
            let entry = match rd.next() {
                None => {
                    self.stack.pop();
                    continue;
                }
                Some(Err(e)) => {
                    let path = dir.clone();
                    self.stack.pop();
                    if e.kind() == io::ErrorKind::NotFound {
                        continue;
                    }
                    return Some(Err(StoreError::Io {
                        op: "read dir",
                        path,
                        source: e,
                    }));
                }
                Some(Ok(entry)) => entry,
            };
            let name = entry.file_name();
            let path = entry.path();
            if depth < 3 {
                // Only the two fan-out levels are walked (this skips `quarantine/`).
                if is_fanout_name(&name, depth) {
                    if let Some(err) = self.push(path) {
                        return Some(err);
                    }
                }
                continue;
            }
            return Some(Ok(classify(path, &name)));
        }
    }
}
