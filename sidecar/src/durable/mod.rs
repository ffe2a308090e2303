//! The durability core of the node's data directory.
//!
//! - [`lock`]: one process per data directory.

pub mod lock;

pub use lock::{DirLock, LockError};
