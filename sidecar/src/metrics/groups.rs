//! Metric groups owned by one subsystem each (web sessions, the Gerrit relay, roles), registered by
//! [`super::Metrics`] under its prefix.

use super::*;

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
    /// `websession.sync = batched`: files written but not yet fsync'd, and the sync rounds.
    pub sync_pending: Gauge,
    pub sync_rounds: Counter,
    pub sync_errors: Counter,
    pub sync_round_seconds: FloatGauge,
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

    pub(super) fn register(&self, r: &mut Registry) {
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
        r.register(
            "session_sync_pending",
            "websession.sync = batched: session files written (and answered) but not yet fsync'd; back to 0 within syncInterval",
            self.sync_pending.clone(),
        );
        r.register(
            "session_sync_rounds",
            "websession.sync = batched: rounds of deferred fsyncs",
            self.sync_rounds.clone(),
        );
        r.register(
            "session_sync_errors",
            "websession.sync = batched: deferred fsyncs that failed (logged)",
            self.sync_errors.clone(),
        );
        r.register(
            "session_sync_last_round_seconds",
            "websession.sync = batched: duration of the last round of deferred fsyncs",
            self.sync_round_seconds.clone(),
        );
    }
}

/// The Gerrit integration (SPEC §8), labelled by endpoint family (`kind`).
#[derive(Default)]
pub struct GerritMetrics {
    pub calls_received: Family<KindLabel, Counter>,
    pub delivered: Family<KindLabel, Counter>,
    pub dead_lettered: Family<KindLabel, Counter>,
    pub set_aside_after_500: Family<KindLabel, Counter>,
    pub coalesced: Family<KindLabel, Counter>,
    pub delivery_failures: Family<KindLabel, Counter>,
    pub pending: Family<KindLabel, Gauge>,
    pub master_up: Gauge,
}

impl GerritMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
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
            "gerrit_set_aside_after_500",
            "Plugin calls set aside after the same 500 from a healthy master (gerrit.setAsideAfter times)",
            self.set_aside_after_500.clone(),
        );
        r.register(
            "gerrit_coalesced",
            "Index calls not replayed because a newer call for the same id was pending with them",
            self.coalesced.clone(),
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

/// This node's role (`ha_role`, `ha_election_epoch`, `ha_role_changes_total`), set by `election`.
#[derive(Default)]
pub struct RoleMetrics {
    pub role: Family<RoleLabel, Gauge>,
    pub epoch: Gauge,
    pub changes: Counter,
}

impl RoleMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "role",
            "1 for this node's role (active, standby); every node is active with main.mode = active-active",
            self.role.clone(),
        );
        r.register(
            "election_epoch",
            "Epoch of the active node this node is or follows (hot-standby; 0 before any)",
            self.epoch.clone(),
        );
        r.register(
            "role_changes",
            "Times this node's role changed",
            self.changes.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    pub listener: String,
    /// request (a 503 above the soft limit), idle (a probation that ended)
    pub reason: String,
}

/// The listeners' connections (`ha_connections`, `ha_connections_refused_total`), owned by
/// `api::connections`; every series exists from the start.
#[derive(Default)]
pub struct ConnectionMetrics {
    pub open: Family<ListenerLabel, Gauge>,
    pub refused: Family<RefusedLabel, Counter>,
}

impl ConnectionMetrics {
    pub fn open(&self, listener: &str) -> Gauge {
        self.open
            .get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
            })
            .clone()
    }

    pub fn refused(&self, listener: &str, reason: &str) -> Counter {
        self.refused
            .get_or_create(&RefusedLabel {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .clone()
    }

    pub(super) fn register(&self, r: &mut Registry) {
        for listener in ["local", "peer"] {
            self.open(listener);
            for reason in ["request", "idle"] {
                self.refused(listener, reason);
            }
        }
        r.register(
            "connections",
            "Connections open now, per listener (at most sidecar.maxConnections)",
            self.open.clone(),
        );
        r.register(
            "connections_refused",
            "Above the soft limit (maxConnections - reservedConnections): requests answered 503 (request) and idle connections closed (idle)",
            self.refused.clone(),
        );
    }
}
