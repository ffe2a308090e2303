//! Follows this node's master's health (SPEC §8): every `gerrit.healthInterval`, the master's
//! `/plugins/<pluginName>/health` (or `/config/server/version`); while it fails, `/health` is
//! `503 master unhealthy`, so one load-balancer check on the sidecar covers both processes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::MasterClient;
use crate::health::Health;
use crate::metrics::Metrics;

pub async fn run(
    client: MasterClient,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            r = client.health() => r,
            _ = stop.cancelled() => return,
        };
        let healthy = result.is_ok();
        metrics.gerrit.master_up.set(healthy as i64);
        if health.set_master_healthy(healthy) {
            match &result {
                Ok(()) => tracing::info!("the master is healthy again"),
                Err(e) => {
                    tracing::warn!(error = %e, "the master is unhealthy; /health answers 503")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}
