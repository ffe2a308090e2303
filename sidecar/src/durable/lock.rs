//! One process per data directory: an exclusive `flock` on `<dataDirectory>/lock`, taken before
//! anything else in the directory is opened and held for the life of the node. A second
//! process (or a second node in this process) on the same directory is refused with a message
//! naming it, having changed nothing: the lock file is the only thing it touches, and it is
//! never truncated or removed (its content is informative: the holder's pid).
//!
//! `flock` locks belong to the open file description, so the lock goes with the `File`: it is
//! released when the node drops its [`DirLock`], and by the kernel when the process dies
//! (SIGKILL included), so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the data directory {0} is in use by another ha-sidecar process{1}: \
         one process per data directory"
    )]
    Busy(PathBuf, String),
    #[error("cannot lock the data directory {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
}

/// The held lock of one data directory.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (which must exist), without waiting.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join("lock");
        let io = |e| LockError::Io(dir.to_path_buf(), e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared with the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .map_or_else(String::new, |pid| format!(" (pid {pid})"));
                return Err(LockError::Busy(dir.to_path_buf(), holder));
            }
            return Err(io(e));
        }
        // Ours now: say who holds it (best effort, for the message of the next one).
        let _ = file
            .set_len(0)
            .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()));
        Ok(DirLock { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock; unlocking first makes it explicit.
        // SAFETY: as in `acquire`.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let e = DirLock::acquire(dir.path()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, LockError::Busy(..)), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
