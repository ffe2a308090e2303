//! The outbox: one durable queue per peer in the node-local data directory, filled by a single
//! committer thread with group commit. A local mutation is appended to every peer's queue and
//! fsync'd before the local API answers 202; a peer's backlog lives on disk, not in memory.
//!
//! Sequence numbers are per origin (this node) and strictly increasing across restarts: blocks
//! of them are reserved in `seq.next` (fsync'd) before use, so a crash skips numbers but never
//! reuses one. Receivers only need them to increase.

mod queue;
pub mod segment;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, RwLock};
use std::thread::JoinHandle;

use crate::locks::{LockExt, RwLockExt};
use queue::Writer;
pub use queue::{Peeked, Position, Queue, QueueStats};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox i/o on {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("the outbox is shut down")]
    Closed,
}

/// Tuning knobs (tests use small segments to exercise reclamation).
#[derive(Debug, Clone)]
pub struct OutboxOptions {
    pub segment_bytes: u64,
    /// Most appends gathered into one group commit.
    pub max_group: usize,
    /// Where a full disk and damaged records are reported (the node's, shared with the other
    /// stores).
    pub disk: Arc<crate::durable::DiskWatch>,
    /// The label of this outbox's damaged records in `ha_corrupt_records_total{store}`.
    pub store: &'static str,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            segment_bytes: 64 << 20,
            max_group: 4096,
            disk: Arc::default(),
            store: "outbox",
        }
    }
}

const SEQ_BLOCK: u64 = 1 << 20;

enum Cmd {
    Append {
        payload: Vec<u8>,
        now_ms: u64,
        reply: Reply,
    },
    AddQueue {
        queue: Arc<Queue>,
        writer: Option<Writer>,
    },
    RemoveQueue {
        peer: String,
    },
    Shutdown,
}

/// Every peer's queue plus the committer thread that writes them.
pub struct Outbox {
    root: PathBuf,
    tx: mpsc::Sender<Cmd>,
    queues: Arc<RwLock<BTreeMap<String, Arc<Queue>>>>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    disk: Arc<crate::durable::DiskWatch>,
    store: &'static str,
    /// Appends queued for or in the committer (backpressure beyond it).
    bound: crate::durable::bound::Bound,
}

impl Outbox {
    /// Opens `<data>/outbox` and starts the committer. Queues are added with [`Outbox::add_peer`].
    pub fn open(data_dir: &Path, opts: OutboxOptions) -> Result<Outbox, OutboxError> {
        Self::open_at(data_dir.join("outbox"), opts)
    }

    /// Opens an outbox rooted at `root` (the master's delivery queues use their own, so that a
    /// peer message never enters them and theirs never reach a peer).
    pub fn open_at(root: PathBuf, opts: OutboxOptions) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(&root).map_err(|e| OutboxError::Io(root.clone(), e))?;
        let seq = SeqAllocator::open(&root)?;
        let (tx, rx) = mpsc::channel();
        let queues = Arc::new(RwLock::new(BTreeMap::new()));
        let (disk, store) = (opts.disk.clone(), opts.store);
        let committer = Committer {
            root: root.clone(),
            rx,
            seq,
            writers: BTreeMap::new(),
            queues: BTreeMap::new(),
            opts,
        };
        let thread = std::thread::Builder::new()
            .name("outbox-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| OutboxError::Io(root.clone(), e))?;
        Ok(Outbox {
            root,
            tx,
            queues,
            thread: std::sync::Mutex::new(Some(thread)),
            disk,
            store,
            bound: crate::durable::bound::Bound::default(),
        })
    }

    /// Directory name of a peer's queue: readable, filesystem-safe, unique per peer key.
    pub fn queue_dir_name(peer: &str) -> String {
        use sha2::Digest;
        let safe: String = peer
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(60)
            .collect();
        let h = hex::encode(&sha2::Sha256::digest(peer.as_bytes())[..4]);
        format!("{safe}-{h}")
    }

    /// Opens (or creates) the queue of a peer, keeping any backlog it had on disk.
    pub fn add_peer(&self, peer: &str) -> Result<Arc<Queue>, OutboxError> {
        if let Some(q) = self.queues.read_locked().get(peer) {
            return Ok(q.clone());
        }
        let dir = self.root.join(Self::queue_dir_name(peer));
        let (queue, writer) = Queue::open(peer, &dir, self.store, &self.disk)?;
        let queue = Arc::new(queue);
        self.queues
            .write_locked()
            .insert(peer.to_owned(), queue.clone());
        self.tx
            .send(Cmd::AddQueue {
                queue: queue.clone(),
                writer,
            })
            .map_err(|_| OutboxError::Closed)?;
        Ok(queue)
    }

    /// Stops appending to a peer's queue (its files stay until [`Outbox::delete_peer_files`]).
    pub fn remove_peer(&self, peer: &str) {
        self.queues.write_locked().remove(peer);
        let _ = self.tx.send(Cmd::RemoveQueue {
            peer: peer.to_owned(),
        });
    }

    /// Deletes the files of a peer's queue (after `retainAbsent`).
    pub fn delete_peer_files(&self, peer: &str) -> Result<(), OutboxError> {
        let dir = self.root.join(Self::queue_dir_name(peer));
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(OutboxError::Io(dir, e)),
            _ => Ok(()),
        }
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read_locked().values().cloned().collect()
    }

    pub fn has_peers(&self) -> bool {
        !self.queues.read_locked().is_empty()
    }

    /// Appends one message body to every peer's queue; resolves once it is durable, with its
    /// seq. With no peers it resolves at once with `None`.
    pub async fn append(&self, payload: Vec<u8>) -> Result<Option<u64>, OutboxError> {
        if !self.has_peers() {
            return Ok(None);
        }
        let _room = self.bound.enter(1).await;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Cmd::Append {
                payload,
                now_ms: now_ms(),
                reply,
            })
            .map_err(|_| OutboxError::Closed)?;
        match rx.await {
            Ok(Ok(seq)) => Ok(Some(seq)),
            Ok(Err(e)) => Err(OutboxError::Io(self.root.clone(), e)),
            Err(_) => Err(OutboxError::Closed),
        }
    }

    /// Appends several message bodies, in this order, to every peer's queue (they may share
    /// one group commit); resolves once all are durable, with the last seq. For callers whose
    /// messages must reach peers in a given order (stream events).
    pub async fn append_many(&self, payloads: Vec<Vec<u8>>) -> Result<Option<u64>, OutboxError> {
        if !self.has_peers() || payloads.is_empty() {
            return Ok(None);
        }
        let _room = self.bound.enter(payloads.len()).await;
        let now = now_ms();
        let mut replies = Vec::with_capacity(payloads.len());
        // Sent synchronously, in order: the committer assigns seqs in arrival order.
        for payload in payloads {
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.tx
                .send(Cmd::Append {
                    payload,
                    now_ms: now,
                    reply,
                })
                .map_err(|_| OutboxError::Closed)?;
            replies.push(rx);
        }
        let mut last = None;
        for rx in replies {
            match rx.await {
                Ok(Ok(seq)) => last = Some(seq),
                Ok(Err(e)) => return Err(OutboxError::Io(self.root.clone(), e)),
                Err(_) => return Err(OutboxError::Closed),
            }
        }
        Ok(last)
    }

    /// Finishes every append already queued, closes the files and stops the committer.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Cmd::Shutdown);
        if let Some(t) = self.thread.locked().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub use crate::clock::now_ms;

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
        .max(1)
}

/// Hands out seqs from a reserved block; the block's end is fsync'd before any seq in it is used.
struct SeqAllocator {
    path: PathBuf,
    next: u64,
    reserved_until: u64,
}

impl SeqAllocator {
    fn open(root: &Path) -> Result<Self, OutboxError> {
        let path = root.join("seq.next");
        // Without a reservation file (first start, or a wiped data directory) seqs start at the
        // clock in microseconds: peers keep this origin's high-water mark across our wipe, and
        // seqs that restarted at 1 would be dropped as duplicates. The clock stays ahead as long
        // as a node averages under a million messages a second.
        let next = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().parse().unwrap_or_else(|_| clock_seed()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => clock_seed(),
            Err(e) => return Err(OutboxError::Io(path, e)),
        };
        // Also never go below what queues on disk already hold (belt and braces).
        let mut max_seen = 0;
        if let Ok(dirs) = std::fs::read_dir(root) {
            for d in dirs.flatten() {
                if let Ok(segs) = segment::list_segments(&d.path()) {
                    if let Some((_, last)) = segs.last() {
                        if let Ok(Some(s)) = segment::last_seq(last) {
                            max_seen = max_seen.max(s);
                        }
                    }
                }
            }
        }
        let next = next.max(max_seen.saturating_add(1));
        Ok(SeqAllocator {
            path,
            next,
            reserved_until: next,
        })
    }

    fn take(&mut self) -> std::io::Result<u64> {
        if self.next >= self.reserved_until {
            // Checked: a seq that wrapped to 0 would be dropped by every peer as a duplicate.
            let until = self
                .next
                .checked_add(SEQ_BLOCK)
                .ok_or_else(|| std::io::Error::other("the outbox seqs are exhausted (u64::MAX)"))?;
            crate::durable::write_small(
                &self.path,
                format!("{until}\n").as_bytes(),
                crate::durable::Fsync::Durable,
            )?;
            self.reserved_until = until;
        }
        let s = self.next;
        self.next += 1;
        Ok(s)
    }
}

struct Committer {
    /// `<data>/outbox`, named in errors.
    root: PathBuf,
    rx: mpsc::Receiver<Cmd>,
    seq: SeqAllocator,
    writers: BTreeMap<String, Writer>,
    queues: BTreeMap<String, Arc<Queue>>,
    opts: OutboxOptions,
}

impl Committer {
    fn run(mut self) {
        let mut group = Vec::new();
        let mut record = Vec::new();
        loop {
            let Ok(first) = self.rx.recv() else { return };
            let mut stop = false;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Append {
                        payload,
                        now_ms,
                        reply,
                    } => group.push((payload, now_ms, reply)),
                    Cmd::AddQueue { queue, writer } => {
                        self.flush(&mut group, &mut record);
                        if let Some(w) = writer {
                            self.writers.insert(queue.peer.clone(), w);
                        }
                        self.queues.insert(queue.peer.clone(), queue);
                    }
                    Cmd::RemoveQueue { peer } => {
                        self.flush(&mut group, &mut record);
                        self.queues.remove(&peer);
                        self.writers.remove(&peer);
                    }
                    Cmd::Shutdown => stop = true,
                }
                if group.len() < self.opts.max_group && !stop {
                    next = self.rx.try_recv().ok();
                }
            }
            self.flush(&mut group, &mut record);
            if stop {
                return;
            }
        }
    }

    fn flush(&mut self, group: &mut Vec<(Vec<u8>, u64, Reply)>, buf: &mut Vec<u8>) {
        if group.is_empty() {
            return;
        }
        let result = self.write_group(group, buf);
        match &result {
            Ok(_) => self.opts.disk.succeeded(),
            Err(e) => {
                self.opts.disk.failed(&self.root, e);
                tracing::error!(error = %e, "outbox append failed; the requests get an error");
                // Cut whatever part of this group reached the files (a short write included),
                // back to what was last made durable, so readers and later appends never meet
                // a partial record; the cut is fsync'd.
                for (peer, w) in self.writers.iter_mut() {
                    if let Err(e) = w.log.rollback() {
                        tracing::error!(peer, error = %e, "cannot cut a failed outbox append; the queue's later records may be unreadable");
                    }
                }
            }
        }
        for (i, (_, _, reply)) in group.drain(..).enumerate() {
            let r = match &result {
                Ok(seqs) => Ok(seqs[i]),
                Err(e) => Err(crate::durable::copy_io(e)),
            };
            let _ = reply.send(r);
        }
    }

    fn write_group(
        &mut self,
        group: &[(Vec<u8>, u64, Reply)],
        buf: &mut Vec<u8>,
    ) -> std::io::Result<Vec<u64>> {
        let mut seqs = Vec::with_capacity(group.len());
        // Per peer: records written since the last sync, and the first one's timestamp.
        let mut unsynced: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (payload, ts, _) in group {
            let seq = self.seq.take()?;
            seqs.push(seq);
            buf.clear();
            segment::encode(seq, *ts, payload, buf);
            for (peer, queue) in &self.queues {
                let roll = match self.writers.get(peer) {
                    None => true,
                    Some(w) => {
                        !w.log.is_empty()
                            && w.log.len() + buf.len() as u64 > self.opts.segment_bytes
                    }
                };
                if roll {
                    if let Some(w) = self.writers.get_mut(peer) {
                        sync_writer(w, queue, unsynced.remove(peer))?;
                    }
                    let w = queue.roll(seq).map_err(std::io::Error::other)?;
                    self.writers.insert(peer.clone(), w);
                }
                let w = self
                    .writers
                    .get_mut(peer)
                    .expect("writer exists after roll");
                w.log.append(buf)?;
                let e = unsynced.entry(peer.clone()).or_insert((0, *ts));
                e.0 += 1;
            }
        }
        for (peer, queue) in &self.queues {
            if let Some(w) = self.writers.get_mut(peer) {
                sync_writer(w, queue, unsynced.remove(peer))?;
            }
        }
        Ok(seqs)
    }
}

/// A request's answer: its seq, or the group's i/o error (its kind kept: a full disk is
/// `StorageFull`, not "some error").
type Reply = tokio::sync::oneshot::Sender<std::io::Result<u64>>;

fn sync_writer(w: &mut Writer, queue: &Queue, added: Option<(u64, u64)>) -> std::io::Result<()> {
    w.log.commit()?;
    if let Some((count, first_ts)) = added {
        queue.committed(w, count, first_ts);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
