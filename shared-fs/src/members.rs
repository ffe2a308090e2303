//! Membership heartbeats in `<sharedDirectory>/members/<instanceId>.json`, and who is fresh.
//!
//! Each node rewrites its own file every heartbeat interval (atomically) with
//! `{instance_id, listen_url, started_at, heartbeat_at, state}`. Graceful leave: write
//! `state: "leaving"` as soon as the node starts draining (readers stop forwarding to it at
//! once), then [`Members::remove`] the file on exit. A node killed without leaving goes stale.
//!
//! Freshness has two readings. [`Members::list`] compares `heartbeat_at` with the reader's wall
//! clock: simple, but wrong under clock skew between hosts. [`MembersView`] is skew-safe: it
//! remembers the content it last saw per member and the *local monotonic* instant it first saw
//! that content; a member is fresh while its content keeps changing within `ttl`. File mtimes
//! are never used: over NFS they come from the server's clock.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::atomic::{self, AtomicError, WriteOptions};
use crate::store::Read;

/// Directory under the shared directory that holds the heartbeat files.
pub const MEMBERS_DIR: &str = "members";
/// Longest heartbeat file read (a heartbeat is ~200 bytes; a bigger file is not one).
const MAX_HEARTBEAT_BYTES: u64 = 64 * 1024;

/// What failed in membership.
#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    /// The instance id cannot name a file (`[A-Za-z0-9._-]{1,64}`, no leading dot).
    #[error("invalid instance id {0:?}")]
    InvalidInstanceId(String),
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
    /// Writing the heartbeat file failed.
    #[error(transparent)]
    Write(#[from] AtomicError),
    /// The heartbeat could not be encoded.
    #[error("encoding heartbeat: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Whether a member takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Serving.
    Up,
    /// Draining before a graceful exit: do not forward to it.
    Leaving,
}

/// The content of a heartbeat file. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node's `main.instanceId`.
    pub instance_id: String,
    /// The node's peer URL (`sidecar.listenUrl`).
    pub listen_url: String,
    /// When the node started.
    pub started_at: u64,
    /// When the node wrote this heartbeat (its own clock).
    pub heartbeat_at: u64,
    /// Up or leaving.
    pub state: MemberState,
}

/// A member as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The last heartbeat read.
    pub heartbeat: Heartbeat,
    /// `state` is up and the heartbeat is recent enough (see the module doc for the two readings).
    pub fresh: bool,
    /// How old the heartbeat is by the reading used.
    pub age: Duration,
}

/// True if `id` may name a heartbeat file: `[A-Za-z0-9._-]{1,64}`, not starting with a dot
/// (which also excludes `.` and `..`, and keeps ids apart from hidden temp files).
pub fn instance_id_is_valid(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The heartbeat files of one shared directory.
#[derive(Debug, Clone)]
pub struct Members {
    dir: PathBuf,
    fsync: bool,
}

impl Members {
    /// Opens `<shared_dir>/members`, creating it `0700` if needed. `fsync` makes each heartbeat
    /// durable; heartbeats are rewritten every few seconds, so it may be turned off.
    pub fn open(shared_dir: &Path, fsync: bool) -> Result<Members, MembersError> {
        let dir = shared_dir.join(MEMBERS_DIR);
        crate::store::mkdirs_io(&dir).map_err(|e| MembersError::Io {
            op: "mkdir",
            path: dir.clone(),
            source: e,
        })?;
        Ok(Members { dir, fsync })
    }

    /// The `members` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_for(&self, id: &str) -> Result<PathBuf, MembersError> {
        if !instance_id_is_valid(id) {
            return Err(MembersError::InvalidInstanceId(id.to_owned()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// Writes this node's heartbeat file atomically.
    pub fn write_heartbeat(&self, hb: &Heartbeat) -> Result<(), MembersError> {
        let path = self.path_for(&hb.instance_id)?;
        let body = serde_json::to_vec(hb).map_err(MembersError::Encode)?;
        let opts = WriteOptions {
            fsync: self.fsync,
            mtime: None,
        };
        atomic::write_atomic_with(&path, &body, &opts)?;
        Ok(())
    }

    /// Removes a member's file (at graceful exit, after a `leaving` heartbeat); `false` if absent.
    pub fn remove(&self, id: &str) -> Result<bool, MembersError> {
        let path = self.path_for(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(MembersError::Io {
                op: "unlink",
                path,
                source: e,
            }),
        }
    }

    /// Every readable heartbeat. Files that do not parse, or whose name does not match their
    /// `instance_id`, are skipped with a warning (never fatal: one bad file must not hide the rest).
    pub fn read_all(&self) -> Result<Vec<Heartbeat>, MembersError> {
        let read = std::fs::read_dir(&self.dir).map_err(|e| MembersError::Io {
            op: "read dir",
            path: self.dir.clone(),
            source: e,
        })?;
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| MembersError::Io {
                op: "read dir",
                path: self.dir.clone(),
                source: e,
            })?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !instance_id_is_valid(id) {
                continue;
            }
            let path = entry.path();
            // Untrusted like every file of the shared directory: no symlink followed, no FIFO
            // read (see `store::read_regular`).
            let bytes = match crate::store::read_regular(&path, MAX_HEARTBEAT_BYTES) {
                Ok(Read::Regular(b, _)) => b,
                Ok(Read::Absent) => continue,
                Ok(Read::NotRegular(kind, _)) => {
                    tracing::warn!(path = %path.display(), kind, "heartbeat is not a regular file; skipped");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "reading heartbeat failed");
                    continue;
                }
            };
            match serde_json::from_slice::<Heartbeat>(&bytes) {
                Ok(hb) if hb.instance_id == id => out.push(hb),
                Ok(_) => tracing::warn!(path = %path.display(), "heartbeat names another instance"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable heartbeat")
                }
            }
        }
        out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(out)
    }

    /// Members by the wall-clock reading: fresh if up and `now_ms - heartbeat_at <= ttl`.
    /// Wrong under clock skew between hosts; prefer [`MembersView`].
    pub fn list(&self, now_ms: u64, ttl: Duration) -> Result<Vec<Member>, MembersError> {
        Ok(self
            .read_all()?
            .into_iter()
            .map(|hb| {
                let age = wall_age(&hb, now_ms);
                Member {
                    fresh: hb.state == MemberState::Up && age <= ttl,
                    age,
                    heartbeat: hb,
                }
            })
            .collect())
    }
}

fn wall_age(hb: &Heartbeat, now_ms: u64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(hb.heartbeat_at))
}

#[derive(Debug)]
struct Seen {
    heartbeat: Heartbeat,
    /// Local instant the current content was first seen; `None` if never trusted.
    changed_at: Option<Instant>,
}

/// A skew-safe view of membership: fresh = its heartbeat content changed within `ttl`, measured
/// by this process's monotonic clock. Call [`MembersView::refresh`] at least every `ttl / 2`.
///
/// On first sight of a member (a new view, or a new member) there is no change to measure yet:
/// the member counts as changed "now" if its `heartbeat_at` is within `ttl` of the local wall
/// clock, else as never changed (stale until its content changes).
#[derive(Debug)]
pub struct MembersView {
    members: Members,
    seen: HashMap<String, Seen>,
}

impl MembersView {
    /// A view over `members` that has seen nothing yet.
    pub fn new(members: Members) -> MembersView {
        MembersView {
            members,
            seen: HashMap::new(),
        }
    }

    /// Re-reads the directory and returns every member with its skew-safe freshness.
    pub fn refresh(&mut self, ttl: Duration) -> Result<Vec<Member>, MembersError> {
        let now_ms = crate::store::unix_ms(std::time::SystemTime::now());
        self.refresh_at(now_ms, Instant::now(), ttl)
    }

    /// [`MembersView::refresh`] with explicit clocks (wall clock only for first sight).
    pub fn refresh_at(
        &mut self,
        now_ms: u64,
        local_now: Instant,
        ttl: Duration,
    ) -> Result<Vec<Member>, MembersError> {
        let current = self.members.read_all()?;
        self.seen
            .retain(|id, _| current.iter().any(|hb| &hb.instance_id == id));
        let mut out = Vec::with_capacity(current.len());
        for hb in current {
            let seen = match self.seen.get_mut(&hb.instance_id) {
                Some(seen) => {
                    if seen.heartbeat != hb {
                        seen.heartbeat = hb.clone();
                        seen.changed_at = Some(local_now);
                    }
                    seen
                }
                None => {
                    let first = (wall_age(&hb, now_ms) <= ttl).then_some(local_now);
                    self.seen.entry(hb.instance_id.clone()).or_insert(Seen {
                        heartbeat: hb.clone(),
                        changed_at: first,
                    })
                }
            };
            let age = match seen.changed_at {
                Some(t) => local_now.saturating_duration_since(t),
                None => wall_age(&hb, now_ms),
            };
            let fresh = hb.state == MemberState::Up && seen.changed_at.is_some() && age <= ttl;
            out.push(Member {
                heartbeat: hb,
                fresh,
                age,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
