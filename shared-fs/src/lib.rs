//! Everything ha-sidecar does on the shared (NFS) directory; synchronous, no HTTP, no async.
//!
//! * [`atomic`] — atomic, durable file replacement (temp file, fsync, rename, fsync dir).
//! * [`batch_sync`] — deferred fsync within a bound (`websession.sync = batched`).
//! * [`store`] — a hashed key → file store with fan-out, checksummed envelopes and quarantine.
//! * [`sessions`] — web session files (`websessions/`): tokens, expiry, cleanup.
//! * [`members`] — heartbeat files (`members/`) and clock-skew-safe freshness.
//! * [`watch`] — a watcher combining notify's native backend with polling (NFS needs both).
//!
//! Every call here blocks on the file system: async callers run it on a blocking thread.
//!
//! NFS mount options operators must use for the shared directory: NFSv4 (`vers=4.1` or later;
//! rename and `O_EXCL` are atomic), `hard` (a soft mount may turn a slow server into `EIO` on
//! writes), and `lookupcache=positive` (otherwise a session created on another node can stay
//! invisible for ~30 s after a failed lookup of the same name).

pub mod atomic;
pub mod batch_sync;
pub mod members;
mod scan;
pub mod sessions;
pub mod store;
#[cfg(test)]
mod test_util;
pub mod watch;

pub use batch_sync::{BatchSync, SyncEvent};
pub use members::{Heartbeat, Member, MemberState, Members, MembersView};
pub use sessions::{CleanupReport, SessionFiles, SessionOptions, SessionRecord, SessionToken};
pub use store::{KeyHash, Store, StoreOptions};
pub use watch::{Change, ChangeKind, WatchOptions, Watcher};
