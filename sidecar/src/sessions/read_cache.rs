//! The sessions' read cache: a short-TTL cache of decoded records, with generation stripes so a
//! read racing an invalidation (this node's write, or the watcher seeing a peer's) never caches
//! the stale record it read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use shared_fs::KeyHash;

use super::{SessionJson, CACHE_CAPACITY, CACHE_TTL, STRIPES};
use crate::locks::LockExt;

/// The read cache and its generation stripes (shared with the watcher's callback).
pub(super) struct ReadCache {
    pub(super) cache: moka::sync::Cache<KeyHash, SessionJson>,
    generations: Vec<AtomicU64>,
    locks: Vec<Mutex<()>>,
}

impl ReadCache {
    pub(super) fn new() -> Self {
        ReadCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
            generations: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    pub(super) fn stripe(hash: &KeyHash) -> usize {
        // The hash is hex: its first two digits are uniformly spread.
        usize::from_str_radix(&hash.as_str()[..2], 16).unwrap_or(0) % STRIPES
    }

    pub(super) fn generation(&self, hash: &KeyHash) -> u64 {
        self.generations[Self::stripe(hash)].load(Ordering::SeqCst)
    }

    /// Drops the entry and makes every read in flight for its stripe skip its insert.
    pub(super) fn invalidate(&self, hash: &KeyHash) {
        let s = Self::stripe(hash);
        let _g = self.locks[s].locked();
        self.generations[s].fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(hash);
    }

    /// Replaces the entry with a record this node just wrote.
    pub(super) fn store_written(&self, hash: &KeyHash, record: SessionJson) {
        let s = Self::stripe(hash);
        let _g = self.locks[s].locked();
        self.generations[s].fetch_add(1, Ordering::SeqCst);
        self.cache.insert(hash.clone(), record);
    }

    /// Inserts a record read from the file if nothing invalidated its stripe since `seen`.
    pub(super) fn store_read(&self, hash: &KeyHash, seen: u64, record: SessionJson) {
        let s = Self::stripe(hash);
        let _g = self.locks[s].locked();
        if self.generations[s].load(Ordering::SeqCst) == seen {
            self.cache.insert(hash.clone(), record);
        }
    }

    pub(super) fn invalidate_all(&self) {
        for (s, lock) in self.locks.iter().enumerate() {
            let _g = lock.locked();
            self.generations[s].fetch_add(1, Ordering::SeqCst);
        }
        self.cache.invalidate_all();
    }
}
