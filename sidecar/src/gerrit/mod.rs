//! Gerrit integration (SPEC §8): the sidecar as the transport of the high-availability plugin.
//! `ingress` reads the plugin's REST calls (reference §1.2, both wire generations of §1.9) into
//! [`PluginCall`]s; `client` is the HTTP client to this node's own master; `delivery` keeps one
//! durable queue per [`Family`] for the master and replays each call into it, in order.
//!
//! ```text
//! master A ─plugin REST─▶ api/plugin ─ingress─▶ outbox ─▶ peer B: receiver ─▶ delivery ─▶ master B
//! ```

pub mod client;
pub mod delivery;
pub mod ingress;
pub mod probe;

pub use crate::wire::{Family, PluginCall};

use std::sync::Arc;

use crate::config::Config;
use crate::health::Health;
use crate::lifecycle::Scope;
use crate::metrics::Metrics;
use crate::peers::deadletter::DeadLetters;
use client::{MasterClient, MasterError};
use delivery::{DeliveryCtx, MasterQueues};

/// This node's own master (`[gerrit] url`): its client, its durable queues, and the delivery
/// and health tasks once started.
pub struct Master {
    pub client: MasterClient,
    pub queues: Arc<MasterQueues>,
    /// Delivery and the health probe run here.
    scope: Scope,
}

impl Master {
    /// Opens the master's queues; `None` without `gerrit.url`.
    pub fn open(
        config: &Config,
        disk: Arc<crate::durable::DiskWatch>,
        scope: Scope,
    ) -> Result<Option<Master>, MasterError> {
        let Some(client) = MasterClient::new(&config.gerrit, &config.http)? else {
            return Ok(None);
        };
        let queues = MasterQueues::open(&config.data_dir, config.limits.outbox_segment_bytes, disk)
            .map_err(MasterError::Queues)?;
        Ok(Some(Master {
            client,
            queues: Arc::new(queues),
            scope,
        }))
    }

    /// Starts delivery (one task per family) and the health probe.
    pub fn start(&self, config: &Config, metrics: Arc<Metrics>, health: Arc<Health>) {
        let ctx = Arc::new(DeliveryCtx {
            client: self.client.clone(),
            dead: Arc::new(DeadLetters::new(&config.data_dir)),
            metrics: metrics.clone(),
            retry_interval: config.http.retry_interval,
            max_retry_interval: config.http.max_retry_interval,
            set_aside_after: config.gerrit.set_aside_after,
        });
        self.queues.start(ctx, &self.scope);
        self.scope.spawn(probe::run(
            self.client.clone(),
            health,
            metrics,
            config.gerrit.health_interval,
            self.scope.token().clone(),
        ));
    }

    /// The master's queues for `/v1/status`, refreshing the `gerrit_pending` gauges.
    pub fn status(&self, metrics: &Metrics) -> serde_json::Value {
        let now = crate::peers::outbox::now_ms();
        let queues: Vec<serde_json::Value> = self
            .queues
            .stats()
            .into_iter()
            .map(|(f, q)| {
                metrics
                    .gerrit
                    .pending
                    .get_or_create(&Metrics::kind(f.as_str()))
                    .set(q.pending as i64);
                serde_json::json!({
                    "family": f.as_str(),
                    "pending": q.pending,
                    "oldest_undelivered_age_ms": q.oldest_pending_ms.map(|t| now.saturating_sub(t)),
                })
            })
            .collect();
        serde_json::json!({
            "url": self.client.base_url(),
            "up": metrics.gerrit.master_up.get() == 1,
            "queues": queues,
        })
    }

    /// Stops the tasks (a call being replayed is replayed again at the next start) and closes
    /// the queues.
    pub async fn shutdown(&self) {
        self.scope.stop().await;
        let queues = self.queues.clone();
        let _ = tokio::task::spawn_blocking(move || queues.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Family;

    #[test]
    fn families_follow_the_endpoint_paths() {
        for (path, f) in [
            ("cache/projects", Some(Family::Cache)),
            ("cache/project_list/a%2Fb", Some(Family::ProjectList)),
            ("index/change/batch/a~1", Some(Family::Index)),
            ("index/group/abc", Some(Family::Index)),
            ("event/ref-updated", Some(Family::Event)),
            ("query/changes.updated.since/1h", None),
            ("health", None),
        ] {
            assert_eq!(Family::of(path), f, "{path}");
        }
        for (i, f) in Family::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
    }
}
