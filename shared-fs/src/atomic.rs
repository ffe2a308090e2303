//! Atomic file replacement on a possibly shared (NFS) directory: temp file, fsync, rename, fsync dir.
//!
//! Every write goes to a temp file in the target's own directory (so the rename never crosses a
//! file system), created `0600` with `O_EXCL` and opened write-only (the gvfs FUSE client of the
//! lab cannot `open(O_RDWR)`), then renamed over the target. `rename` and `O_EXCL` are atomic on
//! local file systems and on NFSv4, so a reader sees either the old or the new file, never a
//! partial one. Temp files are named `.<target>.tmp.<16 hex>`: a crash leaves a file that
//! [`is_temp_name`] recognises and that cleanup removes; nothing ever reads it as data.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rand::RngCore;

/// Marker between the target name and the random suffix of a temp file.
const TEMP_MARKER: &str = ".tmp.";
/// Hex digits of randomness at the end of a temp file name.
const TEMP_RANDOM_HEX: usize = 16;

/// What failed while writing or renaming a file, with the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation that failed (`create temp`, `rename`, ...).
        op: &'static str,
        /// The path it failed on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The target path has no parent directory or no file name.
    #[error("not a file path: {path}")]
    NotAFilePath {
        /// The offending path.
        path: PathBuf,
    },
}

impl AtomicError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        AtomicError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the temp file could not be created because its directory does not exist (the
    /// caller may create the directory and write again).
    pub fn is_missing_dir(&self) -> bool {
        matches!(self, AtomicError::Io { op: "create temp", source, .. }
            if source.kind() == io::ErrorKind::NotFound)
    }

    /// The OS error kind, when this is an I/O error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            AtomicError::Io { source, .. } => Some(source.kind()),
            AtomicError::NotAFilePath { .. } => None,
        }
    }
}

/// How a write is made durable and stamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// fsync the file before the rename and the directory after it. Turn off only for tests
    /// or scratch data: without it a crash can leave an empty file under the target name.
    pub fsync: bool,
    /// Set the file's mtime to this before the rename (the store uses it as an expiry hint;
    /// a time set explicitly is stored as given, so it does not depend on the NFS server clock).
    pub mtime: Option<SystemTime>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            fsync: true,
            mtime: None,
        }
    }
}

/// Replaces `path` with `bytes` atomically and durably (fsync file, rename, fsync directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AtomicError> {
    write_atomic_with(path, bytes, &WriteOptions::default())
}

/// Replaces `path` with `bytes` atomically, with explicit [`WriteOptions`].
pub fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    opts: &WriteOptions,
) -> Result<(), AtomicError> {
    let temp = write_temp(path, bytes, opts)?;
    if let Err(e) = std::fs::rename(&temp, path) {
        discard(&temp);
        return Err(AtomicError::io("rename", path, e));
    }
    finish(path, opts)
}

/// Writes `path` only if it does not exist yet; returns `false` (and writes nothing) if it does.
///
/// The content is complete before the name appears. Uses `renameat2(RENAME_NOREPLACE)` where the
/// file system supports it, else `link` (atomic on NFS: the classic NFS-safe exclusive create),
/// else a check-then-rename that is only safe for names nobody else can guess (random tokens).
///
/// On Linux it first tries an unnamed file (`O_TMPFILE`) linked in under the target name
/// (`linkat`, which refuses an existing name): no temp name ever appears in the directory, so a
/// watcher of it sees one event (the name appearing, complete) instead of six or more (temp
/// created, written, stamped, closed, renamed away, renamed in), and a crash leaves no temp
/// file. Where the file system has no `O_TMPFILE` (NFS, FUSE) or `/proc` is missing, the temp
/// name is used as described above.
pub fn create_new_atomic(
    path: &Path,
    bytes: &[u8],
    opts: &WriteOptions,
) -> Result<bool, AtomicError> {
    #[cfg(target_os = "linux")]
    if let Some(created) = create_new_unnamed(path, bytes, opts)? {
        return Ok(created);
    }
    create_new_named(path, bytes, opts)
}

/// [`create_new_atomic`] through a temp name and `rename_noreplace`.
fn create_new_named(path: &Path, bytes: &[u8], opts: &WriteOptions) -> Result<bool, AtomicError> {
    let temp = write_temp(path, bytes, opts)?;
    match rename_noreplace(&temp, path) {
        Ok(true) => finish(path, opts).map(|()| true),
        Ok(false) => {
            discard(&temp);
            Ok(false)
        }
        Err(e) => {
            discard(&temp);
            Err(e)
        }
    }
}

/// [`create_new_atomic`] through an unnamed file: `None` when this file system (or a missing
/// `/proc`) does not allow it, and nothing was written.
#[cfg(target_os = "linux")]
fn create_new_unnamed(
    path: &Path,
    bytes: &[u8],
    opts: &WriteOptions,
) -> Result<Option<bool>, AtomicError> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let (dir, _) = split(path)?;
    let opened = OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir);
    let mut file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(AtomicError::io("create temp", dir, e))
        }
        Err(e) if unsupported(&e) || e.raw_os_error() == Some(libc::EISDIR) => return Ok(None),
        Err(e) => return Err(AtomicError::io("create temp", dir, e)),
    };
    file.write_all(bytes)
        .map_err(|e| AtomicError::io("write", path, e))?;
    if let Some(mtime) = opts.mtime {
        file.set_modified(mtime)
            .map_err(|e| AtomicError::io("set mtime", path, e))?;
    }
    if opts.fsync {
        file.sync_all()
            .map_err(|e| AtomicError::io("fsync", path, e))?;
    }
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| AtomicError::io("link", path, io::ErrorKind::InvalidInput.into()))?;
    let to = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| AtomicError::io("link", path, io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EEXIST) => Ok(Some(false)),
            // No `/proc` (or the directory vanished meanwhile): the named way decides.
            Some(libc::ENOENT) => Ok(None),
            _ if unsupported(&e) => Ok(None),
            _ => Err(AtomicError::io("link", path, e)),
        };
    }
    drop(file);
    finish(path, opts).map(|()| Some(true))
}

/// Replaces `path` only if it exists; returns `false` (and writes nothing) if it does not.
///
/// On Linux file systems that support `renameat2(RENAME_EXCHANGE)` the check and the swap are one
/// atomic step, so a concurrent delete is never undone. Elsewhere (NFS, FUSE) it checks
/// existence right before the rename: a delete landing in that window of microseconds is undone.
pub fn replace_existing_atomic(
    path: &Path,
    bytes: &[u8],
    opts: &WriteOptions,
) -> Result<bool, AtomicError> {
    let temp = write_temp(path, bytes, opts)?;
    let outcome = exchange(&temp, path);
    let replaced = match outcome {
        Ok(Some(true)) => {
            // The temp name now holds the old content.
            discard(&temp);
            true
        }
        Ok(Some(false)) => {
            discard(&temp);
            return Ok(false);
        }
        Ok(None) => match std::fs::symlink_metadata(path) {
            Ok(_) => match std::fs::rename(&temp, path) {
                Ok(()) => true,
                Err(e) => {
                    discard(&temp);
                    return Err(AtomicError::io("rename", path, e));
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                discard(&temp);
                return Ok(false);
            }
            Err(e) => {
                discard(&temp);
                return Err(AtomicError::io("stat", path, e));
            }
        },
        Err(e) => {
            discard(&temp);
            return Err(e);
        }
    };
    finish(path, opts).map(|()| replaced)
}

/// Renames `from` to `to` unless `to` exists; `Ok(false)` when it does (then `from` is kept).
///
/// Tries `renameat2(RENAME_NOREPLACE)`, then `link` + `unlink` (NFS), then, where neither is
/// supported (some FUSE file systems), a check-then-rename with a tiny race window.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<bool, AtomicError> {
    #[cfg(target_os = "linux")]
    match renameat2(from, to, libc::RENAME_NOREPLACE) {
        Ok(()) => return Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) if !unsupported(&e) => return Err(AtomicError::io("rename", to, e)),
        Err(_) => {}
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            if let Err(e) = std::fs::remove_file(from) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(AtomicError::io("unlink", from, e));
                }
            }
            return Ok(true);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) if !unsupported(&e) => return Err(AtomicError::io("link", to, e)),
        Err(_) => {}
    }
    match std::fs::symlink_metadata(to) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::rename(from, to)
            .map(|()| true)
            .map_err(|e| AtomicError::io("rename", to, e)),
        Err(e) => Err(AtomicError::io("stat", to, e)),
    }
}

/// fsyncs a directory so that a rename or unlink in it survives a crash.
///
/// `EINVAL`/`ENOTSUP` are ignored: some network and FUSE file systems cannot fsync a directory
/// (NFS makes the rename itself synchronous on the server).
pub fn sync_dir(dir: &Path) -> Result<(), AtomicError> {
    let f = File::open(dir).map_err(|e| AtomicError::io("open dir", dir, e))?;
    match f.sync_all() {
        Ok(()) => Ok(()),
        Err(e) if unsupported(&e) => Ok(()),
        Err(e) => Err(AtomicError::io("fsync dir", dir, e)),
    }
}

/// True for a name this module gives its temp files (`.<target>.tmp.<16 hex>`).
pub fn is_temp_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    match rest.rfind(TEMP_MARKER) {
        Some(i) => {
            let suffix = &rest[i + TEMP_MARKER.len()..];
            i > 0
                && suffix.len() == TEMP_RANDOM_HEX
                && suffix.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// A fresh temp path beside `path` (same directory), recognised by [`is_temp_name`].
pub fn temp_path_for(path: &Path) -> Result<PathBuf, AtomicError> {
    let (dir, name) = split(path)?;
    let mut rnd = [0u8; TEMP_RANDOM_HEX / 2];
    rand::rng().fill_bytes(&mut rnd);
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(TEMP_MARKER);
    temp.push(hex::encode(rnd));
    Ok(dir.join(temp))
}

fn split(path: &Path) -> Result<(&Path, &OsStr), AtomicError> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(AtomicError::NotAFilePath {
            path: path.to_path_buf(),
        }),
    }
}

/// Writes `bytes` to a new temp file beside `path` and returns its path (content complete).
fn write_temp(path: &Path, bytes: &[u8], opts: &WriteOptions) -> Result<PathBuf, AtomicError> {
    let mut attempt = 0;
    let (temp, mut file) = loop {
        let temp = temp_path_for(path)?;
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
        {
            Ok(f) => break (temp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 3 => attempt += 1,
            Err(e) => return Err(AtomicError::io("create temp", &temp, e)),
        }
    };
    let result = (|| {
        file.write_all(bytes)
            .map_err(|e| AtomicError::io("write", &temp, e))?;
        if let Some(mtime) = opts.mtime {
            file.set_modified(mtime)
                .map_err(|e| AtomicError::io("set mtime", &temp, e))?;
        }
        if opts.fsync {
            file.sync_all()
                .map_err(|e| AtomicError::io("fsync", &temp, e))?;
        }
        Ok(())
    })();
    drop(file);
    match result {
        Ok(()) => Ok(temp),
        Err(e) => {
            discard(&temp);
            Err(e)
        }
    }
}

fn finish(path: &Path, opts: &WriteOptions) -> Result<(), AtomicError> {
    if opts.fsync {
        let (dir, _) = split(path)?;
        sync_dir(dir)?;
    }
    Ok(())
}

/// Best effort: a temp file left behind is removed later by cleanup anyway.
fn discard(temp: &Path) {
    if let Err(e) = std::fs::remove_file(temp) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %temp.display(), error = %e, "removing temp file failed");
        }
    }
}

/// `Some(true)`: swapped; `Some(false)`: `to` missing; `None`: not supported here.
fn exchange(from: &Path, to: &Path) -> Result<Option<bool>, AtomicError> {
    #[cfg(target_os = "linux")]
    match renameat2(from, to, libc::RENAME_EXCHANGE) {
        Ok(()) => return Ok(Some(true)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(false)),
        Err(e) if unsupported(&e) => return Ok(None),
        Err(e) => return Err(AtomicError::io("rename exchange", to, e)),
    }
    #[allow(unreachable_code)]
    {
        let _ = (from, to);
        Ok(None)
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) | Some(libc::EPERM)
    )
}

#[cfg(target_os = "linux")]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(from.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let to = CString::new(to.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_creates_0600_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }

    #[test]
    fn create_new_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        assert!(create_new_atomic(&p, b"1", &WriteOptions::default()).unwrap());
        assert!(!create_new_atomic(&p, b"2", &WriteOptions::default()).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"1");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_new_by_temp_name_refuses_existing_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let opts = WriteOptions::default();
        assert!(create_new_named(&p, b"1", &opts).unwrap());
        assert!(!create_new_named(&p, b"2", &opts).unwrap());
        assert!(!create_new_atomic(&p, b"3", &opts).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"1");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_new_stamps_mtime_and_mode_and_reports_a_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(4_000_000_000);
        let opts = WriteOptions {
            fsync: true,
            mtime: Some(when),
        };
        let p = dir.path().join("b");
        assert!(create_new_atomic(&p, b"x", &opts).unwrap());
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.modified().unwrap(), when);
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        let missing = dir.path().join("no/such/c");
        let e = create_new_atomic(&missing, b"x", &opts).unwrap_err();
        assert!(e.is_missing_dir(), "{e}");
    }

    #[test]
    fn replace_existing_never_resurrects() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let opts = WriteOptions::default();
        assert!(!replace_existing_atomic(&p, b"x", &opts).unwrap());
        assert!(!p.exists());
        write_atomic(&p, b"old").unwrap();
        assert!(replace_existing_atomic(&p, b"new", &opts).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn mtime_is_set_before_rename() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(4_000_000_000);
        let opts = WriteOptions {
            fsync: false,
            mtime: Some(when),
        };
        write_atomic_with(&p, b"x", &opts).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), when);
    }

    #[test]
    fn temp_names_are_recognised() {
        let t = temp_path_for(Path::new("/d/abc.json")).unwrap();
        assert!(is_temp_name(t.file_name().unwrap()));
        for n in [
            "abc.json",
            ".abc.json",
            ".tmp.0123456789abcdef",
            ".a.tmp.0123",
            "a.tmp.0123456789abcdef",
        ] {
            assert!(!is_temp_name(OsStr::new(n)), "{n}");
        }
        assert!(is_temp_name(OsStr::new(".a.tmp.0123456789abcdef")));
    }
}
