//! A hashed key → file store over one directory: checksummed envelopes, fan-out, quarantine.
//!
//! * **Names.** A key (e.g. a session token) is never part of a path: an entry lives at
//!   `<root>/ab/c/<sha256-hex of key>.json`, where `ab` and `c` are the first three hex digits
//!   of the hash: 4,096 leaf directories, so a million entries are ~250 per directory and a
//!   hundred million ~24,000. Not `ab/cd/` (65,536 leaves): every directory costs one `READDIR`
//!   per cleanup or poll and a `mkdir` on first use (~2 ms on the project's disks), and below
//!   ~65,000 sessions that layout holds about one file per directory (measured: 100,000
//!   sessions made 51,600 directories and a poll cost 0.95 s in a debug build).
//!   Directories are created `0700`, files `0600`.
//! * **Envelope.** A file is one JSON object `{"v":1,"sha256":"<hex>","data":<payload>}` where the
//!   payload is the caller's JSON, stored byte for byte, and `sha256` is the hash of those bytes.
//!   Files stay readable with `jq`, and a truncated, partial or bit-flipped file is detected.
//! * **Quarantine.** A file that fails the envelope check or the caller's validation is moved to
//!   `<root>/quarantine/<hash>.<unix ms>.json` and reported as [`StoreError::Corrupt`]; it is
//!   never served. The move is verified afterwards (same inode as the bytes judged corrupt), so a
//!   valid file renamed in by another node meanwhile is put back, not quarantined.
//! * **Writes** go through [`crate::atomic`]; the caller may stamp the file's mtime with an
//!   expiry hint so that cleanup can skip live entries with a `stat` instead of a read.

use std::fs::DirBuilder;
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::atomic::{self, AtomicError, WriteOptions};

pub use crate::scan::{Scan, ScanItem};

/// Name of the quarantine directory under the store root.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Extension of entry files.
pub const EXTENSION: &str = "json";
/// Version written in every envelope.
const ENVELOPE_VERSION: u32 = 1;
/// Room for the envelope around the payload when bounding a read.
const ENVELOPE_OVERHEAD: u64 = 256;
/// Reads retried on `EIO`: a read racing a rename over gvfs/NFS can fail transiently.
const READ_ATTEMPTS: u32 = 3;

/// What failed in the store, with the path (never the key) it failed on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A system call failed.
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
    /// An atomic write failed.
    #[error(transparent)]
    Write(#[from] AtomicError),
    /// The payload is bigger than [`StoreOptions::max_payload`].
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload handed to `put` is not JSON.
    #[error("payload is not JSON: {reason}")]
    NotJson {
        /// The parser's message.
        reason: String,
    },
    /// The file was corrupt or partial; it was not served and was moved to quarantine.
    #[error("corrupt file {path} ({reason}), quarantined to {quarantined:?}")]
    Corrupt {
        /// Where the file was.
        path: PathBuf,
        /// Why it was judged corrupt.
        reason: String,
        /// Where it went; `None` if another node moved or replaced it first.
        quarantined: Option<PathBuf>,
    },
}

impl StoreError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when a corrupt file was detected (and quarantined): log it and count it.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }
}

/// The SHA-256 of a key, as 64 lowercase hex digits: the only form of a key the store keeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(String);

impl KeyHash {
    /// Hashes a key.
    pub fn of(key: &[u8]) -> KeyHash {
        KeyHash(lower_hex(&Sha256::digest(key)))
    }

    /// Parses a hash already in hex form (64 lowercase hex digits).
    pub fn from_hex(s: &str) -> Option<KeyHash> {
        let ok = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| KeyHash(s.to_owned()))
    }

    /// The hex form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hash named by a path relative to the root, e.g. `ab/c/<hash>.json` (as reported by
    /// the watcher); `None` for any other path (temp files, quarantine, foreign files).
    pub fn from_relative_path(rel: &Path) -> Option<KeyHash> {
        let mut parts = rel.iter();
        let (a, b, file) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let stem = file.to_str()?.strip_suffix(".json")?;
        let hash = KeyHash::from_hex(stem)?;
        (a.to_str()? == &stem[0..2] && b.to_str()? == &stem[2..3]).then_some(hash)
    }
}

/// Lowercase hex of `bytes`, by table: the read cache hashes the token of every session read,
/// and `hex::encode`'s char iterator showed in the profile of cached reads (~1 %).
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Tuning of a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// fsync each write (file and directory). Off only for tests and benchmarks of bulk data.
    pub fsync: bool,
    /// Largest payload accepted by `put` and read back by `get`.
    pub max_payload: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            fsync: true,
            max_payload: 64 * 1024,
        }
    }
}

/// What the file an entry was read from looked like (from `fstat` of the file actually read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// File length in bytes (envelope included).
    pub len: u64,
    /// The file's mtime (the expiry hint when the writer gave one).
    pub modified: SystemTime,
    /// Inode number: every atomic write makes a new one.
    pub ino: u64,
}

impl EntryMeta {
    fn of(m: &std::fs::Metadata) -> EntryMeta {
        EntryMeta {
            len: m.len(),
            modified: m.modified().unwrap_or(UNIX_EPOCH),
            ino: m.ino(),
        }
    }
}

/// An entry read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The payload as given to `put`.
    pub bytes: Vec<u8>,
    /// The file it was read from.
    pub meta: EntryMeta,
}

/// What [`Store::reap_if_unchanged`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// The file was still the one described and was removed.
    Removed,
    /// The file was already gone (another node removed it).
    Gone,
    /// The file had been replaced meanwhile; the new one was left in place.
    Changed,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    v: u32,
    sha256: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// A hashed key → JSON file store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    opts: StoreOptions,
}

impl Store {
    /// Opens (creating it `0700` if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>, opts: StoreOptions) -> Result<Store, StoreError> {
        let root = root.into();
        mkdirs(&root)?;
        Ok(Store { root, opts })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// The quarantine directory.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.join(QUARANTINE_DIR)
    }

    /// Where the entry for `hash` lives.
    pub fn path_for(&self, hash: &KeyHash) -> PathBuf {
        let h = hash.as_str();
        self.root
            .join(&h[0..2])
            .join(&h[2..3])
            .join(format!("{h}.{EXTENSION}"))
    }

    /// Writes (creates or replaces) the entry. `expiry_hint` becomes the file's mtime; it must
    /// not be later than the moment the entry may be removed (cleanup trusts a future mtime).
    pub fn put(
        &self,
        hash: &KeyHash,
        payload: &[u8],
        expiry_hint: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let (path, body, opts) = self.prepare(hash, payload, expiry_hint)?;
        in_dir(&path, || atomic::write_atomic_with(&path, &body, &opts))
    }

    /// Writes the entry only if there is none yet; `false` if one exists (nothing written).
    pub fn create_new(
        &self,
        hash: &KeyHash,
        payload: &[u8],
        expiry_hint: Option<SystemTime>,
    ) -> Result<bool, StoreError> {
        let (path, body, opts) = self.prepare(hash, payload, expiry_hint)?;
        in_dir(&path, || atomic::create_new_atomic(&path, &body, &opts))
    }

    /// Replaces the entry only if it exists; `false` if there is none (nothing written), so a
    /// refresh does not resurrect a deleted entry (see [`atomic::replace_existing_atomic`]).
    pub fn replace_existing(
        &self,
        hash: &KeyHash,
        payload: &[u8],
        expiry_hint: Option<SystemTime>,
    ) -> Result<bool, StoreError> {
        let (path, body, opts) = self.prepare(hash, payload, expiry_hint)?;
        in_dir(&path, || {
            atomic::replace_existing_atomic(&path, &body, &opts)
        })
    }

    /// Reads an entry; `Ok(None)` if absent; [`StoreError::Corrupt`] if it failed the envelope check.
    pub fn get(&self, hash: &KeyHash) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .get_with(hash, |b| Ok(b.to_vec()))?
            .map(|(bytes, meta)| Entry { bytes, meta }))
    }

    /// Reads an entry and runs the caller's validation on the payload; a payload the validation
    /// rejects is quarantined like one that failed the envelope check.
    pub fn get_with<T>(
        &self,
        hash: &KeyHash,
        validate: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<(T, EntryMeta)>, StoreError> {
        let path = self.path_for(hash);
        self.read_path(&path, hash, validate)
    }

    /// Reads and validates the entry file at `path` (which must be `path_for(hash)`).
    pub(crate) fn read_path<T>(
        &self,
        path: &Path,
        hash: &KeyHash,
        validate: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<(T, EntryMeta)>, StoreError> {
        let checked = match self.read_file(path)? {
            Read::Absent => return Ok(None),
            Read::Regular(raw, meta) => match open_envelope(&raw).and_then(validate) {
                Ok(v) => Ok((v, meta)),
                Err(reason) => Err((reason, meta)),
            },
            Read::NotRegular(kind, meta) => Err((format!("{kind}, not a regular file"), meta)),
        };
        let (checked, meta) = match checked {
            Ok((v, meta)) => (Ok(v), meta),
            Err((reason, meta)) => (Err(reason), meta),
        };
        match checked {
            Ok(value) => Ok(Some((value, meta))),
            Err(reason) => {
                let quarantined = self.quarantine(path, hash, &meta)?;
                tracing::warn!(path = %path.display(), reason = %reason, "corrupt entry quarantined");
                Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    reason,
                    quarantined,
                })
            }
        }
    }

    /// Removes an entry; `false` if it was not there.
    pub fn remove(&self, hash: &KeyHash) -> Result<bool, StoreError> {
        let path = self.path_for(hash);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("unlink", &path, e)),
        }
    }

    /// Removes the entry at `path` only if it is still the file described by `expected`
    /// (rename-then-verify): the file is first renamed aside, which is atomic, then compared;
    /// if another node replaced it meanwhile, the replacement is renamed back (no-replace).
    /// A reader may see the entry absent for that instant, but a refresh is never lost.
    pub fn reap_if_unchanged(&self, path: &Path, expected: &EntryMeta) -> Result<Reap, StoreError> {
        let aside = atomic::temp_path_for(path)?;
        match std::fs::rename(path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Reap::Gone),
            Err(e) => return Err(StoreError::io("rename aside", path, e)),
        }
        let now = match std::fs::symlink_metadata(&aside) {
            Ok(m) => m,
            // Another node's cleanup took our aside file for a stale temp file (clock skew
            // beyond the temp grace); either way the entry is gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Reap::Gone),
            Err(e) => return Err(StoreError::io("stat", &aside, e)),
        };
        if EntryMeta::of(&now) == *expected {
            remove_if_present(&aside)?;
            return Ok(Reap::Removed);
        }
        if !atomic::rename_noreplace(&aside, path)? {
            // An even newer file took the name: it wins.
            remove_if_present(&aside)?;
        }
        Ok(Reap::Changed)
    }

    /// Iterates over every file of the store (entries and temp files), streaming directory by
    /// directory; the quarantine directory is not visited.
    pub fn scan(&self) -> Scan {
        Scan::new(&self.root)
    }

    fn prepare(
        &self,
        hash: &KeyHash,
        payload: &[u8],
        expiry_hint: Option<SystemTime>,
    ) -> Result<(PathBuf, Vec<u8>, WriteOptions), StoreError> {
        if payload.len() > self.opts.max_payload {
            return Err(StoreError::TooLarge {
                len: payload.len(),
                max: self.opts.max_payload,
            });
        }
        let raw: &RawValue = serde_json::from_slice(payload).map_err(|e| StoreError::NotJson {
            reason: e.to_string(),
        })?;
        let path = self.path_for(hash);
        let body = seal_envelope(raw.get().as_bytes());
        let opts = WriteOptions {
            fsync: self.opts.fsync,
            mtime: expiry_hint,
        };
        Ok((path, body, opts))
    }

    /// Reads the whole file (bounded), retrying transient `EIO`.
    fn read_file(&self, path: &Path) -> Result<Read, StoreError> {
        let limit = self.opts.max_payload as u64 + ENVELOPE_OVERHEAD;
        let mut attempt = 1;
        loop {
            match read_regular(path, limit) {
                Ok(r) => return Ok(r),
                Err(e) if e.raw_os_error() == Some(libc::EIO) && attempt < READ_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(StoreError::io("read", path, e)),
            }
        }
    }

    /// Moves a corrupt file to quarantine, verifying it moved the file that was judged.
    fn quarantine(
        &self,
        path: &Path,
        hash: &KeyHash,
        judged: &EntryMeta,
    ) -> Result<Option<PathBuf>, StoreError> {
        let qdir = self.quarantine_dir();
        mkdirs(&qdir)?;
        let target = qdir.join(format!(
            "{}.{}.{EXTENSION}",
            hash.as_str(),
            unix_ms(SystemTime::now())
        ));
        match std::fs::rename(path, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("quarantine", path, e)),
        }
        let moved =
            std::fs::symlink_metadata(&target).map_err(|e| StoreError::io("stat", &target, e))?;
        if moved.ino() == judged.ino {
            return Ok(Some(target));
        }
        // A new file replaced the corrupt one between our read and the rename: put it back.
        if !atomic::rename_noreplace(&target, path)? {
            remove_if_present(&target)?;
        }
        Ok(None)
    }
}

/// Runs a write into `path`'s directory, creating the directory (`0700`, with its parents) only
/// when the write finds it missing: the leaf directories exist after the first write into each,
/// so a `mkdir -p` before every write (measured at 5 % of a create's CPU) is one failed `open`
/// on the first write instead.
fn in_dir<T>(path: &Path, write: impl Fn() -> Result<T, AtomicError>) -> Result<T, StoreError> {
    match write() {
        Err(e) if e.is_missing_dir() => {
            if let Some(dir) = path.parent() {
                mkdirs(dir)?;
            }
            Ok(write()?)
        }
        r => Ok(r?),
    }
}

/// Wraps a JSON payload in the checksummed envelope.
fn seal_envelope(payload: &[u8]) -> Vec<u8> {
    let sum = hex::encode(Sha256::digest(payload));
    let head = format!("{{\"v\":{ENVELOPE_VERSION},\"sha256\":\"{sum}\",\"data\":");
    let mut out = Vec::with_capacity(head.len() + payload.len() + 2);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"}\n");
    out
}

/// Checks the envelope and returns the payload bytes, or why the file is corrupt.
fn open_envelope(raw: &[u8]) -> Result<&[u8], String> {
    let env: Envelope<'_> =
        serde_json::from_slice(raw).map_err(|e| format!("bad envelope: {e}"))?;
    if env.v != ENVELOPE_VERSION {
        return Err(format!("unknown envelope version {}", env.v));
    }
    let data = env.data.get().as_bytes();
    if hex::encode(Sha256::digest(data)) != env.sha256 {
        return Err("checksum mismatch".to_owned());
    }
    // `data` borrows from `raw`; find it there to return a slice of the caller's buffer.
    let start = data.as_ptr() as usize - raw.as_ptr() as usize;
    Ok(&raw[start..start + data.len()])
}

/// What was found at an entry's path.
pub(crate) enum Read {
    /// Nothing.
    Absent,
    /// A regular file: its first `limit + 1` bytes and its metadata.
    Regular(Vec<u8>, EntryMeta),
    /// Something else (named: "a FIFO", "a symbolic link", ...), never opened for reading
    /// beyond a non-blocking open; its metadata comes from `lstat`/`fstat`.
    NotRegular(&'static str, EntryMeta),
}

/// Reads a file of the shared directory as untrusted: opened with `O_NOFOLLOW | O_NONBLOCK`
/// (a symlink is not followed; a FIFO or a device does not block the open), and read only if
/// `fstat` says it is a regular file; at most `limit + 1` bytes (one byte over the limit is
/// enough to know the file is too big).
pub(crate) fn read_regular(path: &Path, limit: u64) -> io::Result<Read> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Read::Absent),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return match std::fs::symlink_metadata(path) {
                Ok(m) => Ok(Read::NotRegular(kind_of(&m.file_type()), EntryMeta::of(&m))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Read::Absent),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    let m = file.metadata()?;
    let meta = EntryMeta::of(&m);
    if !m.file_type().is_file() {
        return Ok(Read::NotRegular(kind_of(&m.file_type()), meta));
    }
    let mut buf = Vec::with_capacity(meta.len.min(limit) as usize + 1);
    file.take(limit + 1).read_to_end(&mut buf)?;
    Ok(Read::Regular(buf, meta))
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_file() {
        "a regular file"
    } else {
        "an unknown file type"
    }
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("unlink", path, e)),
    }
}

/// `mkdir -p` with mode 0700 for every directory it creates.
pub(crate) fn mkdirs(dir: &Path) -> Result<(), StoreError> {
    mkdirs_io(dir).map_err(|e| StoreError::io("mkdir", dir, e))
}

/// `mkdir -p` with mode 0700, returning the bare OS error.
pub(crate) fn mkdirs_io(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
#[cfg(test)]
mod tests;
