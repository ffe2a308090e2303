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
pub struct StoreLabel {
    pub store: String,
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
pub struct RoleLabel {
    /// active, standby
    pub role: String,
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

mod groups;
pub use groups::{ConnectionMetrics, GerritMetrics, RoleMetrics, SessionMetrics};

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
    /// Peer batches or messages refused as forged, by reason (`own_origin`, `seq_ahead`).
    pub forged_messages: Family<ReasonLabel, Counter>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// Damaged records recovery skipped, per store (see [`Metrics::corrupt_records`]).
    pub corrupt_records: Family<StoreLabel, Counter>,
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
    pub roles: RoleMetrics,
    pub connections: ConnectionMetrics,
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
            forged_messages: Family::default(),
            auth_failures: Family::default(),
            corrupt_records: Family::default(),
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
            roles: RoleMetrics::default(),
            connections: ConnectionMetrics::default(),
            registry: Registry::default(),
        };
        m.register_delivery(&mut r);
        m.register_stores(&mut r);
        let m = Metrics { registry: r, ..m };
        m.create_fixed_series();
        m
    }

    /// The transport: outbox, batches, receiver, peers and web sessions.
    fn register_delivery(&self, r: &mut Registry) {
        r.register(
            "outbox_depth",
            "Messages accepted but not yet delivered, per peer",
            self.outbox_depth.clone(),
        );
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest undelivered message, per peer",
            self.outbox_oldest_age_seconds.clone(),
        );
        r.register(
            "batches_sent",
            "Batches a peer accepted",
            self.batches_sent.clone(),
        );
        r.register(
            "batches_failed",
            "Batch attempts that failed (refused, timed out, 5xx)",
            self.batches_failed.clone(),
        );
        r.register(
            "batches_retried",
            "Batch attempts that were retries of a failed one",
            self.batches_retried.clone(),
        );
        r.register(
            "messages_sent",
            "Messages a peer accepted",
            self.messages_sent.clone(),
        );
        r.register(
            "dead_lettered",
            "Messages a peer refused for good, set aside in the dead-letter file",
            self.dead_lettered.clone(),
        );
        r.register(
            "delivery_seconds",
            "Time from local acceptance to the peer's acknowledgement",
            self.delivery_seconds.clone(),
        );
        r.register(
            "messages_applied",
            "Peer messages applied, by kind",
            self.messages_applied.clone(),
        );
        r.register(
            "messages_duplicate",
            "Peer messages ignored as already applied, by kind",
            self.messages_duplicate.clone(),
        );
        r.register(
            "messages_rejected",
            "Peer messages refused, by kind",
            self.messages_rejected.clone(),
        );
        r.register(
        "forged_messages",
        "Peer batches or messages refused as forged (own origin, seq implausibly far ahead), by reason",
        self.forged_messages.clone(),
    );
        r.register(
            "auth_failures",
            "Peer requests refused by authentication, by reason",
            self.auth_failures.clone(),
        );
        r.register(
            "corrupt_records",
            "Damaged records skipped when a store's files were opened (the intact ones after them kept), by store",
            self.corrupt_records.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            self.http_seconds.clone(),
        );
        r.register(
            "local_mutations",
            "Mutations accepted on the local API, by kind",
            self.local_mutations.clone(),
        );
        self.sessions.register(r);
    }

    /// The stores: shared directory, events, index and the Gerrit master.
    fn register_stores(&self, r: &mut Registry) {
        r.register(
        "shared_dir_in_flight",
        "Calls on the shared directory running now (bounded by main.sharedDirectoryConcurrency)",
        self.shared_dir_in_flight.clone(),
    );
        r.register(
            "shared_dir_not_responding",
            "Calls on the shared directory that missed main.sharedDirectoryTimeout (answered 503)",
            self.shared_dir_not_responding.clone(),
        );
        r.register(
            "peer_state",
            "1 for the membership state (up, left, failed) a peer is in, per peer",
            self.peer_state.clone(),
        );
        r.register(
            "peer_failures",
            "Times a peer was declared failed (vanished without leaving)",
            self.peer_failures.clone(),
        );
        r.register(
            "alerts_failed",
            "Alert webhook calls that failed",
            self.alerts_failed.clone(),
        );
        r.register(
            "events_appended",
            "Stream events appended to the log, by kind (local, remote)",
            self.events_appended.clone(),
        );
        r.register(
            "event_tailers",
            "Clients connected to /v1/events/stream",
            self.event_tailers.clone(),
        );
        r.register(
            "events_streamed",
            "Events sent to stream clients",
            self.events_streamed.clone(),
        );
        r.register(
            "index_writes",
            "Index writes by kind, source (local, peer, sync) and outcome (applied, stale)",
            self.index_writes.clone(),
        );
        r.register(
            "index_docs",
            "Live index documents, by kind",
            self.index_docs.clone(),
        );
        r.register(
            "index_tombstones",
            "Index tombstones (deletes kept for the version rule), by kind",
            self.index_tombstones.clone(),
        );
        r.register(
            "index_sync_rounds",
            "Anti-entropy rounds completed with a peer",
            self.index_sync_rounds.clone(),
        );
        r.register(
            "index_sync_failures",
            "Anti-entropy rounds that failed, per peer",
            self.index_sync_failures.clone(),
        );
        r.register(
            "index_docs_pulled",
            "Index documents and tombstones pulled from a peer by anti-entropy",
            self.index_docs_pulled.clone(),
        );
        r.register(
            "index_docs_pushed",
            "Index documents and tombstones pushed to a peer by anti-entropy",
            self.index_docs_pushed.clone(),
        );
        self.gerrit.register(r);
        self.roles.register(r);
        self.connections.register(r);
    }

    /// Creates every series whose labels are known at start, at zero, so an alert rule can tell
    /// "none yet" from "missing" (per-peer series are created by [`Metrics::peer_series`]).
    fn create_fixed_series(&self) {
        for kind in MESSAGE_KINDS {
            let l = Self::kind(kind);
            let _ = self.messages_applied.get_or_create(&l);
            let _ = self.messages_duplicate.get_or_create(&l);
            let _ = self.messages_rejected.get_or_create(&l);
        }
        for reason in AUTH_FAILURE_REASONS {
            let _ = self.auth_failures.get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            });
        }
        for store in crate::durable::disk::STORES {
            let _ = self.corrupt_records.get_or_create(&Self::store(store));
        }
        for kind in LOCAL_MUTATION_KINDS {
            let _ = self.local_mutations.get_or_create(&Self::kind(kind));
        }
        for result in ["hit", "miss", "absent"] {
            self.sessions.reads_counter(result);
        }
        for source in ["peer", "watch"] {
            let _ = self
                .sessions
                .invalidations
                .get_or_create(&Self::source(source));
        }
        for kind in ["local", "remote"] {
            let _ = self.events_appended.get_or_create(&Self::kind(kind));
        }
        for family in crate::wire::Family::ALL {
            let l = Self::kind(family.as_str());
            let g = &self.gerrit;
            let _ = g.calls_received.get_or_create(&l);
            let _ = g.delivered.get_or_create(&l);
            let _ = g.dead_lettered.get_or_create(&l);
            let _ = g.set_aside_after_500.get_or_create(&l);
            let _ = g.coalesced.get_or_create(&l);
            let _ = g.delivery_failures.get_or_create(&l);
            let _ = g.pending.get_or_create(&l);
        }
        for kind in crate::index::Kind::ALL {
            let _ = self.index_docs.get_or_create(&Self::kind(kind.as_str()));
            let _ = self
                .index_tombstones
                .get_or_create(&Self::kind(kind.as_str()));
            for source in ["local", "peer", "sync"] {
                for outcome in ["applied", "stale"] {
                    let _ = self.index_writes.get_or_create(&IndexWriteLabel {
                        kind: kind.as_str().to_owned(),
                        source: source.to_owned(),
                        outcome: outcome.to_owned(),
                    });
                }
            }
        }
    }

    fn store(store: &str) -> StoreLabel {
        StoreLabel {
            store: store.to_owned(),
        }
    }

    /// Brings `ha_corrupt_records_total` up to the counts the data directory's watch holds.
    pub fn corrupt_records(&self, counts: &[(&'static str, u64)]) {
        for &(store, n) in counts {
            let c = self.corrupt_records.get_or_create(&Self::store(store));
            c.inc_by(n.saturating_sub(c.get()));
        }
    }

    /// Creates every per-peer series at zero (called for each known peer before a scrape).
    pub fn peer_series(&self, peer: &str) {
        let l = Self::peer(peer);
        let _ = self.outbox_depth.get_or_create(&l);
        let _ = self.outbox_oldest_age_seconds.get_or_create(&l);
        for f in [
            &self.batches_sent,
            &self.batches_failed,
            &self.batches_retried,
            &self.messages_sent,
            &self.dead_lettered,
            &self.peer_failures,
            &self.index_sync_rounds,
            &self.index_sync_failures,
            &self.index_docs_pulled,
            &self.index_docs_pushed,
        ] {
            let _ = f.get_or_create(&l);
        }
        let _ = self.delivery_seconds.get_or_create(&l);
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

    /// OpenMetrics text exposition (`application/openmetrics-text; version=1.0.0`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The classic Prometheus text format (`text/plain; version=0.0.4`), which `promtool check
    /// metrics` and older scrapers read.
    pub fn encode_classic(&self) -> String {
        openmetrics_to_classic(&self.encode())
    }
}

/// Message kinds on the peer path (`messages_*_total{kind}`).
pub const MESSAGE_KINDS: [&str; 5] = ["eviction", "flush", "index", "event", "plugin"];
/// Why a peer request was refused (`auth_failures_total{reason}`), as `api/peer` names them.
pub const AUTH_FAILURE_REASONS: [&str; 6] = [
    "unsigned",
    "malformed",
    "stale",
    "bad_signature",
    "replayed",
    "no_secret",
];
/// Mutations of the local API (`local_mutations_total{kind}`).
pub const LOCAL_MUTATION_KINDS: [&str; 6] = [
    "eviction",
    "flush",
    "index",
    "event",
    "session_create",
    "session_delete",
];

/// Rewrites OpenMetrics text into the classic format: a counter's HELP and TYPE name its
/// `_total` sample (OpenMetrics names the family without it), `# UNIT` and `# EOF` go.
fn openmetrics_to_classic(text: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, "counter")) = rest.split_once(' ') {
                counters.insert(name.to_owned());
            }
        }
    }
    let mut out = String::with_capacity(text.len() + 64 * counters.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) && !name.ends_with("_total") {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None if line.split(['{', ' ']).next().is_some_and(|n| {
                n.ends_with("_created") && counters.contains(n.trim_end_matches("_created"))
            }) => {}
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_fixed_series_exists_at_zero() {
        let m = Metrics::new();
        m.peer_series("master-2");
        let text = m.encode();
        for needle in [
            "ha_dead_lettered_total{peer=\"master-2\"} 0",
            "ha_auth_failures_total{reason=\"bad_signature\"} 0",
            "ha_messages_rejected_total{kind=\"event\"} 0",
            "ha_session_reads_total{result=\"absent\"} 0",
            "ha_delivery_seconds_count{peer=\"master-2\"} 0",
        ] {
            assert!(text.contains(needle), "no {needle} in\n{text}");
        }
    }

    #[test]
    fn classic_format_names_counters_with_total() {
        let m = Metrics::new();
        m.alerts_failed.inc();
        let text = m.encode_classic();
        assert!(
            text.contains("# TYPE ha_alerts_failed_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP ha_alerts_failed_total Alert webhook"),
            "{text}"
        );
        assert!(text.contains("\nha_alerts_failed_total 1\n"), "{text}");
        assert!(text.contains("# TYPE ha_event_tailers gauge\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
