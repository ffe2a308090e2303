//! The version map of one kind (id → version, tombstone) and its anti-entropy digests.
//!
//! The map is the authority for the version rule: the writer thread consults and updates it
//! before a write is journaled, so the check is exact at once, not only after a commit. It is
//! rebuilt from the index's fast fields at open. Ids are sharded into 256 buckets by the first
//! byte of SHA-256(id); each bucket keeps a count and a wrapping sum of a 64-bit hash of
//! (id, version, deleted), updated on every change, so a digest costs O(buckets), not O(docs),
//! and `entries(bucket)` walks one bucket only. Sums (not xors) so that equal entries on both
//! sides never cancel out.
//!
//! Memory: a `HashMap<Box<str>, Entry>` slot is 32 bytes (16 key + 16 entry) at ≤ 7/8 load,
//! plus the id's heap allocation (its length rounded up, plus allocator overhead): about
//! 80–100 bytes per document for 30–40 byte ids, i.e. ~90 MB per million documents. Documents
//! written since the last commit are also held in `pending` (their JSON), which is bounded
//! by the commit cadence.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::KindStats;

pub const BUCKETS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub version: u64,
    /// 0 for a live document; for a tombstone, when it was deleted (ms since the epoch, ≥ 1).
    pub deleted_at: u64,
}

impl Entry {
    pub fn deleted(&self) -> bool {
        self.deleted_at != 0
    }
}

/// Count and hash of one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDigest {
    pub bucket: u8,
    pub count: u64,
    pub hash: u64,
}

/// Digest of the buckets `first..=last` of one kind: the combined count and hash, and each bucket's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDigest {
    pub first: u8,
    pub last: u8,
    pub count: u64,
    pub hash: u64,
    pub buckets: Vec<BucketDigest>,
}

/// An id's bucket and the id part of its entry hash, from one SHA-256 (stable across nodes).
fn id_hash(id: &str) -> (u8, u64) {
    let h = Sha256::digest(id.as_bytes());
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&h[8..16]);
    (h[0], u64::from_le_bytes(eight))
}

fn mix(mut z: u64) -> u64 {
    // splitmix64's finalizer.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn entry_hash(idh: u64, e: &Entry) -> u64 {
    mix(idh ^ mix(e.version) ^ mix(u64::from(e.deleted()).wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// A document accepted since the last commit: what `get` returns until `search` can see it.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub version: u64,
    pub source: Arc<str>,
}

pub(crate) struct VersionMap {
    shards: Vec<HashMap<Box<str>, Entry>>,
    digests: Vec<BucketDigest>,
    pending: HashMap<Box<str>, Pending>,
    pending_ops: u64,
    docs: u64,
    tombstones: u64,
}

impl Default for VersionMap {
    fn default() -> Self {
        VersionMap {
            shards: (0..BUCKETS).map(|_| HashMap::new()).collect(),
            digests: (0..BUCKETS)
                .map(|b| BucketDigest {
                    bucket: b as u8,
                    ..Default::default()
                })
                .collect(),
            pending: HashMap::new(),
            pending_ops: 0,
            docs: 0,
            tombstones: 0,
        }
    }
}

impl VersionMap {
    pub fn get(&self, id: &str) -> Option<Entry> {
        let (b, _) = id_hash(id);
        self.shards[b as usize].get(id).copied()
    }

    pub fn pending(&self, id: &str) -> Option<&Pending> {
        self.pending.get(id)
    }

    /// Records the new state of `id` (the caller has checked the version rule); `source` is the
    /// JSON of a live document not yet committed, `None` for a tombstone or a committed state.
    pub fn set(&mut self, id: &str, e: Entry, source: Option<Arc<str>>) {
        let (b, idh) = id_hash(id);
        let old = match self.shards[b as usize].get_mut(id) {
            Some(slot) => Some(std::mem::replace(slot, e)),
            None => {
                self.shards[b as usize].insert(id.into(), e);
                None
            }
        };
        if let Some(old) = old {
            self.tally(b, idh, &old, false);
        }
        self.tally(b, idh, &e, true);
        match source {
            Some(source) => {
                self.pending.insert(
                    id.into(),
                    Pending {
                        version: e.version,
                        source,
                    },
                );
            }
            None => {
                self.pending.remove(id);
            }
        }
    }

    /// Forgets `id` entirely (tombstone compaction).
    pub fn remove(&mut self, id: &str) {
        let (b, idh) = id_hash(id);
        if let Some(old) = self.shards[b as usize].remove(id) {
            self.tally(b, idh, &old, false);
        }
        self.pending.remove(id);
    }

    /// Counts an entry of bucket `b` in (`add`) or out of its digest and the doc/tombstone counts.
    fn tally(&mut self, b: u8, idh: u64, e: &Entry, add: bool) {
        let digest = &mut self.digests[b as usize];
        let counter = if e.deleted() {
            &mut self.tombstones
        } else {
            &mut self.docs
        };
        let h = entry_hash(idh, e);
        if add {
            digest.count += 1;
            digest.hash = digest.hash.wrapping_add(h);
            *counter += 1;
        } else {
            digest.count -= 1;
            digest.hash = digest.hash.wrapping_sub(h);
            *counter -= 1;
        }
    }

    pub fn note_pending_op(&mut self) {
        self.pending_ops += 1;
    }

    pub fn pending_ops(&self) -> u64 {
        self.pending_ops
    }

    /// After a commit and reader reload: everything pending is now visible to searches.
    pub fn clear_pending(&mut self) {
        self.pending.clear();
        self.pending.shrink_to(4096);
        self.pending_ops = 0;
    }

    /// Tombstones deleted at or before `cutoff_ms`.
    pub fn expired_tombstones(&self, cutoff_ms: u64) -> Vec<Box<str>> {
        self.shards
            .iter()
            .flat_map(|s| s.iter())
            .filter(|(_, e)| e.deleted() && e.deleted_at <= cutoff_ms)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn digest(&self, range: RangeInclusive<u8>) -> RangeDigest {
        let buckets: Vec<BucketDigest> =
            self.digests[*range.start() as usize..=*range.end() as usize].to_vec();
        RangeDigest {
            first: *range.start(),
            last: *range.end(),
            count: buckets.iter().map(|b| b.count).sum(),
            hash: buckets.iter().fold(0u64, |h, b| h.wrapping_add(b.hash)),
            buckets,
        }
    }

    /// (id, version, deleted) of every entry of one bucket, sorted by id.
    pub fn entries(&self, bucket: u8) -> Vec<(String, u64, bool)> {
        let mut v: Vec<_> = self.shards[bucket as usize]
            .iter()
            .map(|(id, e)| (id.to_string(), e.version, e.deleted()))
            .collect();
        v.sort_unstable();
        v
    }

    pub fn stats(&self) -> KindStats {
        KindStats {
            docs: self.docs,
            tombstones: self.tombstones,
            pending: self.pending_ops,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_follows_the_set_of_entries_not_the_history() {
        let live = |v| Entry {
            version: v,
            deleted_at: 0,
        };
        let mut a = VersionMap::default();
        let mut b = VersionMap::default();
        a.set("x", live(1), None);
        a.set("y", live(2), None);
        a.set("x", live(3), None);
        b.set("y", live(2), None);
        b.set("x", live(3), None);
        assert_eq!(a.digest(0..=255), b.digest(0..=255));
        b.set(
            "y",
            Entry {
                version: 2,
                deleted_at: 5,
            },
            None,
        );
        assert_ne!(
            a.digest(0..=255),
            b.digest(0..=255),
            "a tombstone differs from a live doc"
        );
        b.remove("y");
        b.set("y", live(2), None);
        assert_eq!(a.digest(0..=255), b.digest(0..=255));
        assert_eq!(a.stats().docs, 2);
        let (bucket, _) = id_hash("x");
        assert!(a.entries(bucket).contains(&("x".to_string(), 3, false)));
        assert_eq!(
            a.digest(bucket..=bucket).count,
            a.entries(bucket).len() as u64
        );
    }
}
