//! Anti-entropy of the index: one task that compares this node's per-kind bucket digests with
//! every peer's and transfers what differs, so nodes converge whatever the transport lost
//! (a wiped data directory, a node that joins empty, a crash between a local write and its
//! outbox append, a peer's dead letters).
//!
//! A round with one peer, per kind: fetch the peer's 256 bucket digests (O(buckets) on both
//! sides, whatever the number of documents); for each bucket whose count or hash differs,
//! fetch the peer's `(id, version, deleted)` entries and merge them with ours; pull (export
//! there, apply here) what the peer has newer, push (export here, apply there) what we have
//! newer. Both sides apply under the version rule, so a round racing live writes is harmless,
//! and nothing received this way is forwarded. Rounds run at start, every
//! `antiEntropyInterval`, as soon as the forwarder sees a peer reachable again, and with
//! back-off after a failed round.
//!
//! A node that starts with an empty index is "catching up" (`/health` 503) until it has
//! completed a round with every peer it can reach; a peer that fails three rounds in a row is
//! not waited for, and with no reachable peer at all the node reports ready (nothing to catch
//! up from: a first deployment, or the whole cluster down).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff;
use crate::health::Health;
use crate::index::{ExportedDoc, IndexStore, Kind, WriteOutcome, BUCKETS};
use crate::metrics::Metrics;
use crate::peers::client::{ClientError, PeerClient, SendError};
use crate::peers::{Peer, Peers};
use crate::wire::index_sync::{
    ApplyReply, ApplyRequest, DigestRequest, EntriesReply, EntriesRequest, ExportReply,
    ExportRequest, RangeDigest,
};

/// Differing buckets whose entries are asked for in one request.
const BUCKETS_PER_REQUEST: usize = 16;
/// Ids asked for in one export request (the peer also caps the reply's size).
const IDS_PER_EXPORT: usize = 1_000;
/// How often peers' reachability and due rounds are checked.
const TICK: Duration = Duration::from_millis(200);
/// Failed rounds after which a catching-up node stops waiting for that peer.
const GIVE_UP_CATCHING_UP: u32 = 3;

/// Why a round with a peer failed: the kind it was comparing and the call that failed.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {source}")]
pub struct SyncError {
    pub kind: Kind,
    #[source]
    pub source: SendError,
}

pub struct IndexSync {
    pub store: Arc<IndexStore>,
    pub peers: Arc<Peers>,
    pub client: PeerClient,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub interval: Duration,
    pub retry_interval: Duration,
    pub max_retry_interval: Duration,
    /// Largest body pushed to a peer in one request.
    pub max_push_bytes: usize,
}

/// What one round moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundStats {
    pub differing_buckets: usize,
    pub pulled: u64,
    pub pushed: u64,
}

impl std::ops::AddAssign for RoundStats {
    fn add_assign(&mut self, o: RoundStats) {
        self.differing_buckets += o.differing_buckets;
        self.pulled += o.pulled;
        self.pushed += o.pushed;
    }
}

#[derive(Default)]
struct PeerState {
    next_due: Option<Instant>,
    failures: u32,
    synced: bool,
    last_reachable: Option<bool>,
}

/// Whether a node whose index is empty at start has caught up: every peer synced once or
/// failing, and not waiting on any that may still answer.
fn caught_up(states: &[&PeerState]) -> bool {
    states
        .iter()
        .all(|s| s.synced || s.failures >= GIVE_UP_CATCHING_UP)
}

impl IndexSync {
    /// Runs until `shutdown`. With `catching_up`, `/health` is set ready once caught up.
    pub async fn run(self, mut catching_up: bool, shutdown: CancellationToken) {
        let mut states: HashMap<String, PeerState> = HashMap::new();
        let started = Instant::now();
        loop {
            let peers = self.peers.list();
            for p in &peers {
                let st = states.entry(p.key.clone()).or_default();
                let reachable = p.status().reachable;
                if reachable == Some(true) && st.last_reachable == Some(false) {
                    tracing::info!(peer = %p.key, "peer reachable again: comparing index digests");
                    st.next_due = None;
                }
                st.last_reachable = reachable;
                if st.next_due.is_some_and(|t| Instant::now() < t) {
                    continue;
                }
                let r = tokio::select! {
                    r = self.sync_peer(p) => r,
                    _ = shutdown.cancelled() => return,
                };
                let label = Metrics::peer(&p.key);
                match r {
                    Ok(stats) => {
                        self.metrics.index_sync_rounds.get_or_create(&label).inc();
                        if stats.pulled + stats.pushed > 0 || st.failures > 0 {
                            tracing::info!(peer = %p.key, buckets = stats.differing_buckets, pulled = stats.pulled, pushed = stats.pushed, "index anti-entropy round done");
                        }
                        st.failures = 0;
                        st.synced = true;
                        st.next_due = Some(Instant::now() + self.interval);
                    }
                    Err(why) => {
                        self.metrics.index_sync_failures.get_or_create(&label).inc();
                        let delay = backoff::delay(
                            st.failures,
                            self.retry_interval,
                            self.max_retry_interval,
                        )
                        .min(self.interval);
                        if st.failures == 0 || st.failures.is_power_of_two() {
                            tracing::warn!(peer = %p.key, attempt = st.failures, retry_in_ms = delay.as_millis() as u64, error = %why, "index anti-entropy round failed");
                        }
                        st.failures = st.failures.saturating_add(1);
                        st.next_due = Some(Instant::now() + delay);
                    }
                }
            }
            if catching_up {
                let current: Vec<&PeerState> =
                    peers.iter().filter_map(|p| states.get(&p.key)).collect();
                if current.len() == peers.len() && caught_up(&current) {
                    catching_up = false;
                    let synced = current.iter().filter(|s| s.synced).count();
                    // What was pulled is searchable before the node takes traffic.
                    if let Err(e) = self.store.commit().await {
                        tracing::error!(error = %e, "index commit after catching up failed");
                    }
                    if shutdown.is_cancelled() {
                        return;
                    }
                    self.health.end_catch_up("index");
                    if synced == 0 && !peers.is_empty() {
                        tracing::warn!(
                            peers = peers.len(),
                            "empty index and no peer reachable: ready without catching up"
                        );
                    } else {
                        tracing::info!(
                            peers = synced,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "index caught up with peers: ready"
                        );
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One anti-entropy round with one peer over every kind.
    pub async fn sync_peer(&self, peer: &Peer) -> Result<RoundStats, SyncError> {
        let mut total = RoundStats::default();
        for kind in Kind::ALL {
            total += self
                .sync_kind(peer, kind)
                .await
                .map_err(|source| SyncError { kind, source })?;
        }
        Ok(total)
    }

    async fn sync_kind(&self, peer: &Peer, kind: Kind) -> Result<RoundStats, SendError> {
        let remote: RangeDigest = self
            .client
            .call(&peer.url(), "v1/peer/index/digest", &DigestRequest { kind })
            .await?;
        let local = self.store.digest(kind, 0..=255);
        if remote.count == local.count && remote.hash == local.hash {
            return Ok(RoundStats::default());
        }
        if remote.buckets.len() != BUCKETS {
            return Err(SendError::Retry(ClientError::BadReply(format!(
                "peer sent {} bucket digests, expected {BUCKETS}",
                remote.buckets.len()
            ))));
        }
        let differing: Vec<u8> = local
            .buckets
            .iter()
            .zip(&remote.buckets)
            .filter(|(l, r)| l.count != r.count || l.hash != r.hash)
            .map(|(l, _)| l.bucket)
            .collect();
        let mut stats = RoundStats {
            differing_buckets: differing.len(),
            ..RoundStats::default()
        };
        let (mut pull, mut push) = (Vec::new(), Vec::new());
        for buckets in differing.chunks(BUCKETS_PER_REQUEST) {
            let reply: EntriesReply = self
                .client
                .call(
                    &peer.url(),
                    "v1/peer/index/entries",
                    &EntriesRequest {
                        kind,
                        buckets: buckets.to_vec(),
                    },
                )
                .await?;
            for b in reply.buckets {
                let ours = self.store.entries(kind, b.bucket);
                diff(&ours, &b.entries, &mut pull, &mut push);
            }
        }
        stats.pulled = self.pull(peer, kind, pull).await?;
        stats.pushed = self.push(peer, kind, push).await?;
        Ok(stats)
    }

    /// Exports `ids` from the peer and applies them here; the next export is in flight while
    /// the previous one is applied.
    async fn pull(&self, peer: &Peer, kind: Kind, ids: Vec<String>) -> Result<u64, SendError> {
        let mut applied = 0;
        let mut rest: &[String] = &ids;
        let mut in_flight: Option<tokio::task::JoinHandle<_>> = None;
        while !rest.is_empty() {
            let ask = &rest[..rest.len().min(IDS_PER_EXPORT)];
            let reply: ExportReply = self
                .client
                .call(
                    &peer.url(),
                    "v1/peer/index/export",
                    &ExportRequest {
                        kind,
                        ids: ask.to_vec(),
                    },
                )
                .await?;
            if reply.consumed == 0 || reply.consumed > ask.len() {
                return Err(SendError::Retry(ClientError::BadReply(format!(
                    "peer export consumed {} of {} ids",
                    reply.consumed,
                    ask.len()
                ))));
            }
            rest = &rest[reply.consumed..];
            if let Some(prev) = in_flight.take() {
                applied += self.finish_apply(peer, kind, prev).await?;
            }
            let store = self.store.clone();
            in_flight = Some(tokio::spawn(async move {
                store.apply_each(kind, reply.docs).await
            }));
        }
        if let Some(prev) = in_flight {
            applied += self.finish_apply(peer, kind, prev).await?;
        }
        Ok(applied)
    }

    async fn finish_apply(
        &self,
        peer: &Peer,
        kind: Kind,
        h: tokio::task::JoinHandle<crate::index::Result<Vec<crate::index::Result<WriteOutcome>>>>,
    ) -> Result<u64, SendError> {
        let results = h
            .await
            .map_err(|e| ClientError::Local(format!("apply task: {e}")))?
            .map_err(|e| ClientError::Local(format!("cannot apply pulled documents: {e}")))?;
        let mut outcomes = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    tracing::warn!(kind = %kind, error = %e, "refused a pulled index document")
                }
            }
        }
        self.metrics
            .index_outcomes(kind.as_str(), "sync", &outcomes);
        let applied = outcomes
            .iter()
            .filter(|o| **o == WriteOutcome::Applied)
            .count() as u64;
        self.metrics
            .index_docs_pulled
            .get_or_create(&Metrics::peer(&peer.key))
            .inc_by(applied);
        Ok(applied)
    }

    /// Exports `ids` here and applies them on the peer, in requests of at most `max_push_bytes`.
    async fn push(&self, peer: &Peer, kind: Kind, ids: Vec<String>) -> Result<u64, SendError> {
        let mut applied = 0;
        for chunk in ids.chunks(IDS_PER_EXPORT) {
            let store = self.store.clone();
            let chunk = chunk.to_vec();
            let docs = tokio::task::spawn_blocking(move || store.export(kind, &chunk))
                .await
                .map_err(|e| ClientError::Local(format!("export task: {e}")))?
                .map_err(|e| ClientError::Local(format!("cannot export: {e}")))?;
            for docs in split_by_size(docs, self.max_push_bytes) {
                let reply: ApplyReply = self
                    .client
                    .call(
                        &peer.url(),
                        "v1/peer/index/apply",
                        &ApplyRequest { kind, docs },
                    )
                    .await?;
                applied += reply.applied;
                self.metrics
                    .index_docs_pushed
                    .get_or_create(&Metrics::peer(&peer.key))
                    .inc_by(reply.applied);
            }
        }
        Ok(applied)
    }
}

/// Merges one bucket's entries (both sorted by id): ids the peer has newer go to `pull`, ids
/// we have newer to `push`. Equal versions are the same write, whatever else differs.
pub fn diff(
    ours: &[(String, u64, bool)],
    theirs: &[(String, u64, bool)],
    pull: &mut Vec<String>,
    push: &mut Vec<String>,
) {
    let (mut i, mut j) = (0, 0);
    while i < ours.len() || j < theirs.len() {
        match (ours.get(i), theirs.get(j)) {
            (Some(o), Some(t)) if o.0 == t.0 => {
                if t.1 > o.1 {
                    pull.push(t.0.clone());
                } else if o.1 > t.1 {
                    push.push(o.0.clone());
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(t)) if o.0 < t.0 => {
                push.push(o.0.clone());
                i += 1;
            }
            (Some(o), None) => {
                push.push(o.0.clone());
                i += 1;
            }
            (_, Some(t)) => {
                pull.push(t.0.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
}

/// Splits documents into groups whose JSON stays under `max_bytes` (a larger single document
/// travels alone).
fn split_by_size(docs: Vec<ExportedDoc>, max_bytes: usize) -> Vec<Vec<ExportedDoc>> {
    let mut groups = Vec::new();
    let mut group = Vec::new();
    let mut size = 0;
    for d in docs {
        let n = d.id.len()
            + 64
            + d.doc
                .as_ref()
                .and_then(|v| serde_json::to_vec(v).ok())
                .map_or(0, |v| v.len());
        if !group.is_empty() && size + n > max_bytes {
            groups.push(std::mem::take(&mut group));
            size = 0;
        }
        size += n;
        group.push(d);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, v: u64) -> (String, u64, bool) {
        (id.to_string(), v, false)
    }

    #[test]
    fn diff_pulls_newer_and_pushes_ours() {
        let ours = vec![e("a", 1), e("b", 5), e("d", 2), e("f", 1)];
        let theirs = vec![e("a", 1), e("b", 3), e("c", 1), e("d", 4), e("g", 1)];
        let (mut pull, mut push) = (Vec::new(), Vec::new());
        diff(&ours, &theirs, &mut pull, &mut push);
        assert_eq!(pull, ["c", "d", "g"]);
        assert_eq!(push, ["b", "f"]);
    }

    #[test]
    fn split_keeps_every_doc_and_respects_the_size() {
        let doc = |i: usize| ExportedDoc {
            id: format!("d{i}"),
            version: 1,
            deleted: false,
            doc: Some(serde_json::json!({"text": "x".repeat(100)})),
            deleted_at: None,
        };
        let groups = split_by_size((0..50).map(doc).collect(), 1_000);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 50);
        assert!(groups.len() >= 5 && groups.iter().all(|g| !g.is_empty()));
    }

    #[test]
    fn catching_up_waits_for_reachable_peers_only() {
        let synced = PeerState {
            synced: true,
            ..PeerState::default()
        };
        let failing = PeerState {
            failures: GIVE_UP_CATCHING_UP,
            ..PeerState::default()
        };
        let trying = PeerState {
            failures: 1,
            ..PeerState::default()
        };
        assert!(caught_up(&[&synced, &failing]));
        assert!(!caught_up(&[&synced, &trying]));
        assert!(caught_up(&[]));
    }
}
