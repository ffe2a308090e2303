//! Prometheus metrics of one node (no globals: every node owns its registry, so tests can run
//! several nodes in one process).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabel {
    pub listener: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerStateLabel {
    pub peer: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IndexWriteLabel {
    /// changes, accounts, groups, projects
    pub kind: String,
    /// local (the master), peer (forwarded), sync (anti-entropy)
    pub source: String,
    /// applied, stale
    pub outcome: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Web session figures (`ha_session_*`).
#[derive(Default)]
pub struct SessionMetrics {
    pub creates: Counter,
    pub reads: Family<ResultLabel, Counter>,
    pub refreshes: Counter,
    pub deletes: Counter,
    pub quarantined: Counter,
    pub invalidations: Family<SourceLabel, Counter>,
    pub cleanup_runs: Counter,
    pub cleanup_scanned: Counter,
    pub cleanup_removed: Counter,
    pub cleanup_seconds: FloatGauge,
}

impl SessionMetrics {
    /// Counts one read by its result: `hit` (cache), `miss` (read from the file), `absent`.
    pub fn read(&self, result: &str) {
        self.reads
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The counter of reads with this result, to keep and increment without a lookup (the
    /// cached read path counts every request).
    pub fn reads_counter(&self, result: &str) -> Counter {
        self.reads
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .clone()
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "session_creates",
            "Web sessions created",
            self.creates.clone(),
        );
        r.register(
            "session_reads",
            "Web session reads by result: hit (cache), miss (file read), absent (unknown or expired)",
            self.reads.clone(),
        );
        r.register(
            "session_refreshes",
            "Web sessions refreshed",
            self.refreshes.clone(),
        );
        r.register(
            "session_deletes",
            "Web sessions deleted (logouts)",
            self.deletes.clone(),
        );
        r.register(
            "session_quarantined",
            "Corrupt session files found (by reads and cleanup) and quarantined",
            self.quarantined.clone(),
        );
        r.register(
            "session_invalidations",
            "Cached sessions dropped because of a peer's logout or a watched change",
            self.invalidations.clone(),
        );
        r.register(
            "session_cleanup_runs",
            "Session cleanup passes",
            self.cleanup_runs.clone(),
        );
        r.register(
            "session_cleanup_scanned",
            "Session files looked at by cleanup",
            self.cleanup_scanned.clone(),
        );
        r.register(
            "session_cleanup_removed",
            "Expired session files removed by cleanup",
            self.cleanup_removed.clone(),
        );
        r.register(
            "session_cleanup_last_seconds",
            "Duration of the last session cleanup pass",
            self.cleanup_seconds.clone(),
        );
    }
}

/// The Gerrit integration (SPEC §8), labelled by endpoint family (`kind`).
#[derive(Default)]
pub struct GerritMetrics {
    pub calls_received: Family<KindLabel, Counter>,
    pub delivered: Family<KindLabel, Counter>,
    pub dead_lettered: Family<KindLabel, Counter>,
    pub delivery_failures: Family<KindLabel, Counter>,
    pub pending: Family<KindLabel, Gauge>,
    pub master_up: Gauge,
}

impl GerritMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "gerrit_calls_received",
            "Plugin calls accepted from this node's master, per endpoint family",
            self.calls_received.clone(),
        );
        r.register(
            "gerrit_delivered",
            "Plugin calls replayed into this node's master, per endpoint family",
            self.delivered.clone(),
        );
        r.register(
            "gerrit_dead_lettered",
            "Plugin calls the master refused for good (400, 405, 415), set aside",
            self.dead_lettered.clone(),
        );
        r.register(
            "gerrit_delivery_failures",
            "Attempts to replay a call into the master that will be retried (409, 5xx, down)",
            self.delivery_failures.clone(),
        );
        r.register(
            "gerrit_pending",
            "Plugin calls queued for this node's master, per endpoint family",
            self.pending.clone(),
        );
        r.register(
            "gerrit_master_up",
            "1 while this node's master answers its health check",
            self.master_up.clone(),
        );
    }
}

pub struct Metrics {
    registry: Registry,
    pub outbox_depth: Family<PeerLabel, Gauge>,
    pub outbox_oldest_age_seconds: Family<PeerLabel, FloatGauge>,
    pub batches_sent: Family<PeerLabel, Counter>,
    pub batches_failed: Family<PeerLabel, Counter>,
    pub batches_retried: Family<PeerLabel, Counter>,
    pub messages_sent: Family<PeerLabel, Counter>,
    pub dead_lettered: Family<PeerLabel, Counter>,
    pub delivery_seconds: Family<PeerLabel, Histogram>,
    pub messages_applied: Family<KindLabel, Counter>,
    pub messages_duplicate: Family<KindLabel, Counter>,
    pub messages_rejected: Family<KindLabel, Counter>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub http_seconds: Family<HttpLabel, Histogram>,
    pub local_mutations: Family<KindLabel, Counter>,
    pub sessions: SessionMetrics,
    /// Calls on the shared directory running now (see `shared_dir`).
    pub shared_dir_in_flight: Gauge,
    /// Calls on the shared directory answered "not responding" (deadline or no free slot).
    pub shared_dir_not_responding: Counter,
    pub peer_state: Family<PeerStateLabel, Gauge>,
    pub peer_failures: Family<PeerLabel, Counter>,
    pub alerts_failed: Counter,
    /// Events appended to the log, `kind` = `local` or `remote`.
    pub events_appended: Family<KindLabel, Counter>,
    pub event_tailers: Gauge,
    pub events_streamed: Counter,
    pub index_writes: Family<IndexWriteLabel, Counter>,
    pub index_docs: Family<KindLabel, Gauge>,
    pub index_tombstones: Family<KindLabel, Gauge>,
    pub index_sync_rounds: Family<PeerLabel, Counter>,
    pub index_sync_failures: Family<PeerLabel, Counter>,
    pub index_docs_pulled: Family<PeerLabel, Counter>,
    pub index_docs_pushed: Family<PeerLabel, Counter>,
    pub gerrit: GerritMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("ha");
        let m = Metrics {
            outbox_depth: Family::default(),
            outbox_oldest_age_seconds: Family::default(),
            batches_sent: Family::default(),
            batches_failed: Family::default(),
            batches_retried: Family::default(),
            messages_sent: Family::default(),
            dead_lettered: Family::default(),
            delivery_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 18))
            }),
            messages_applied: Family::default(),
            messages_duplicate: Family::default(),
            messages_rejected: Family::default(),
            auth_failures: Family::default(),
            http_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
            local_mutations: Family::default(),
            sessions: SessionMetrics::default(),
            shared_dir_in_flight: Gauge::default(),
            shared_dir_not_responding: Counter::default(),
            peer_state: Family::default(),
            peer_failures: Family::default(),
            alerts_failed: Counter::default(),
            events_appended: Family::default(),
            event_tailers: Gauge::default(),
            events_streamed: Counter::default(),
            index_writes: Family::default(),
            index_docs: Family::default(),
            index_tombstones: Family::default(),
            index_sync_rounds: Family::default(),
            index_sync_failures: Family::default(),
            index_docs_pulled: Family::default(),
            index_docs_pushed: Family::default(),
            gerrit: GerritMetrics::default(),
            registry: Registry::default(),
        };
        r.register(
            "outbox_depth",
            "Messages accepted but not yet delivered, per peer",
            m.outbox_depth.clone(),
        );
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest undelivered message, per peer",
            m.outbox_oldest_age_seconds.clone(),
        );
        r.register(
            "batches_sent",
            "Batches a peer accepted",
            m.batches_sent.clone(),
        );
        r.register(
            "batches_failed",
            "Batch attempts that failed (refused, timed out, 5xx)",
            m.batches_failed.clone(),
        );
        r.register(
            "batches_retried",
            "Batch attempts that were retries of a failed one",
            m.batches_retried.clone(),
        );
        r.register(
            "messages_sent",
            "Messages a peer accepted",
            m.messages_sent.clone(),
        );
        r.register(
            "dead_lettered",
            "Messages a peer refused for good, set aside in the dead-letter file",
            m.dead_lettered.clone(),
        );
        r.register(
            "delivery_seconds",
            "Time from local acceptance to the peer's acknowledgement",
            m.delivery_seconds.clone(),
        );
        r.register(
            "messages_applied",
            "Peer messages applied, by kind",
            m.messages_applied.clone(),
        );
        r.register(
            "messages_duplicate",
            "Peer messages ignored as already applied, by kind",
            m.messages_duplicate.clone(),
        );
        r.register(
            "messages_rejected",
            "Peer messages refused, by kind",
            m.messages_rejected.clone(),
        );
        r.register(
            "auth_failures",
            "Peer requests refused by authentication, by reason",
            m.auth_failures.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            m.http_seconds.clone(),
        );
        r.register(
            "local_mutations",
            "Mutations accepted on the local API, by kind",
            m.local_mutations.clone(),
        );
        m.sessions.register(&mut r);
        r.register(
            "shared_dir_in_flight",
            "Calls on the shared directory running now (bounded by main.sharedDirectoryConcurrency)",
            m.shared_dir_in_flight.clone(),
        );
        r.register(
            "shared_dir_not_responding",
            "Calls on the shared directory that missed main.sharedDirectoryTimeout (answered 503)",
            m.shared_dir_not_responding.clone(),
        );
        r.register(
            "peer_state",
            "1 for the membership state (up, left, failed) a peer is in, per peer",
            m.peer_state.clone(),
        );
        r.register(
            "peer_failures",
            "Times a peer was declared failed (vanished without leaving)",
            m.peer_failures.clone(),
        );
        r.register(
            "alerts_failed",
            "Alert webhook calls that failed",
            m.alerts_failed.clone(),
        );
        r.register(
            "events_appended",
            "Stream events appended to the log, by kind (local, remote)",
            m.events_appended.clone(),
        );
        r.register(
            "event_tailers",
            "Clients connected to /v1/events/stream",
            m.event_tailers.clone(),
        );
        r.register(
            "events_streamed",
            "Events sent to stream clients",
            m.events_streamed.clone(),
        );
        r.register(
            "index_writes",
            "Index writes by kind, source (local, peer, sync) and outcome (applied, stale)",
            m.index_writes.clone(),
        );
        r.register(
            "index_docs",
            "Live index documents, by kind",
            m.index_docs.clone(),
        );
        r.register(
            "index_tombstones",
            "Index tombstones (deletes kept for the version rule), by kind",
            m.index_tombstones.clone(),
        );
        r.register(
            "index_sync_rounds",
            "Anti-entropy rounds completed with a peer",
            m.index_sync_rounds.clone(),
        );
        r.register(
            "index_sync_failures",
            "Anti-entropy rounds that failed, per peer",
            m.index_sync_failures.clone(),
        );
        r.register(
            "index_docs_pulled",
            "Index documents and tombstones pulled from a peer by anti-entropy",
            m.index_docs_pulled.clone(),
        );
        r.register(
            "index_docs_pushed",
            "Index documents and tombstones pushed to a peer by anti-entropy",
            m.index_docs_pushed.clone(),
        );
        m.gerrit.register(&mut r);
        Metrics { registry: r, ..m }
    }

    pub fn peer(peer: &str) -> PeerLabel {
        PeerLabel {
            peer: peer.to_owned(),
        }
    }

    pub fn source(source: &str) -> SourceLabel {
        SourceLabel {
            source: source.to_owned(),
        }
    }

    pub fn kind(kind: &str) -> KindLabel {
        KindLabel {
            kind: kind.to_owned(),
        }
    }

    /// Counts index write outcomes of one kind from one source.
    pub fn index_outcomes(
        &self,
        kind: &str,
        source: &str,
        outcomes: &[crate::index::WriteOutcome],
    ) {
        let applied = outcomes
            .iter()
            .filter(|o| **o == crate::index::WriteOutcome::Applied)
            .count() as u64;
        let stale = outcomes.len() as u64 - applied;
        for (outcome, n) in [("applied", applied), ("stale", stale)] {
            if n > 0 {
                self.index_writes
                    .get_or_create(&IndexWriteLabel {
                        kind: kind.to_owned(),
                        source: source.to_owned(),
                        outcome: outcome.to_owned(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
