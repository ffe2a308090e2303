//! The durability core of the node's data directory.
//!
//! - [`lock`]: one process per data directory.
//! - [`append`]: the append path: a failed write or fsync (ENOSPC, EIO, a short write) is cut
//!   back to the last durable length, durably, so no partial record is ever left behind.
//! - [`bound`]: the bound on requests waiting for a committer thread (backpressure).
//! - [`frame`]: the one record framing of the append-only files, with a marker so recovery
//!   skips only damaged records (and tells them from a torn tail), and the upgrade of files in
//!   the previous framing.
//! - [`small`]: `write_small`, the one writer of small whole files (marks, flags, rosters,
//!   cursors), its fsync policy named at each call.
//! - [`mark`]: a `u64` that only grows (the receiver's high-water marks), rewritten in place
//!   with one `fdatasync`, two checksummed slots so a torn update keeps the previous value.
//! - [`disk`]: full disks told apart (ENOSPC, EDQUOT) and watched: `507`, `/health` `503 disk
//!   full`, cleared without a restart once space is back.

pub mod append;
pub mod bound;
pub mod disk;
pub mod frame;
pub mod lock;
pub mod mark;
pub mod small;

pub use append::{truncate_durably, AppendLog, Sink};
pub use disk::{chain_is_disk_full, copy_io, is_disk_full, DiskWatch};
pub use lock::{DirLock, LockError};
pub use mark::Mark;
pub use small::{write_small, Fsync};
