//! Egress into this node's own master: one durable queue per endpoint [`Family`] (an outbox of
//! its own under `<data>/master/<family>/`, so the peer queues never see these calls and these
//! queues never reach a peer), and one task per family that replays the calls into the master
//! in order. `409`, `5xx`, timeouts and refused connections are retried with back-off forever;
//! a permanent refusal is set aside in `<data>/deadletter/master-<family>.jsonl` with the
//! master's answer. Delivery is at least once: a crash may replay up to one read batch.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::{Delivery, MasterClient};
use super::{Family, PluginCall};
use crate::backoff::Backoff;
use crate::lifecycle::Scope;
use crate::metrics::Metrics;
use crate::peers::deadletter::DeadLetters;
use crate::peers::outbox::{Outbox, OutboxError, OutboxOptions, Peeked, Queue, QueueStats};

/// Most calls read from a queue at once (and replayed again after a crash at worst).
const READ_BATCH: usize = 64;
const QUEUE: &str = "master";

/// The master's queues, one per family.
pub struct MasterQueues {
    outboxes: Vec<Arc<Outbox>>,
    queues: Vec<Arc<Queue>>,
}

impl MasterQueues {
    /// Opens `<data>/master/<family>/`, keeping any backlog on disk.
    pub fn open(data_dir: &Path, segment_bytes: u64) -> Result<MasterQueues, OutboxError> {
        let mut outboxes = Vec::new();
        let mut queues = Vec::new();
        for f in Family::ALL {
            let opts = OutboxOptions {
                segment_bytes,
                ..OutboxOptions::default()
            };
            let outbox = Outbox::open_at(data_dir.join("master").join(f.as_str()), opts)?;
            queues.push(outbox.add_peer(QUEUE)?);
            outboxes.push(Arc::new(outbox));
        }
        Ok(MasterQueues { outboxes, queues })
    }

    /// Makes calls of one family durable, in this order (one group commit).
    pub async fn enqueue(&self, family: Family, calls: Vec<Vec<u8>>) -> Result<(), OutboxError> {
        self.outboxes[family.index()].append_many(calls).await?;
        Ok(())
    }

    /// Pending calls per family.
    pub fn stats(&self) -> Vec<(Family, QueueStats)> {
        Family::ALL
            .iter()
            .map(|f| (*f, self.queues[f.index()].stats()))
            .collect()
    }

    /// Starts one delivery task per family.
    pub fn start(&self, ctx: Arc<DeliveryCtx>, scope: &Scope) {
        for f in Family::ALL {
            let (q, ctx, stop) = (
                self.queues[f.index()].clone(),
                ctx.clone(),
                scope.token().clone(),
            );
            scope.spawn(run(f, q, ctx, stop));
        }
    }

    pub fn shutdown(&self) {
        for o in &self.outboxes {
            o.shutdown();
        }
    }
}

pub struct DeliveryCtx {
    pub client: MasterClient,
    pub dead: Arc<DeadLetters>,
    pub metrics: Arc<Metrics>,
    pub retry_interval: Duration,
    pub max_retry_interval: Duration,
}

async fn run(family: Family, queue: Arc<Queue>, ctx: Arc<DeliveryCtx>, stop: CancellationToken) {
    let label = Metrics::kind(family.as_str());
    loop {
        let q = queue.clone();
        let batch = match tokio::task::spawn_blocking(move || q.peek(READ_BATCH, 16 << 20)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(family = family.as_str(), error = %e, "cannot read the master queue; retrying");
                if sleep_or_stop(Duration::from_secs(1), &stop).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::error!(family = family.as_str(), error = %e, "master queue reader failed");
                if sleep_or_stop(Duration::from_secs(1), &stop).await {
                    return;
                }
                continue;
            }
        };
        ctx.metrics
            .gerrit
            .pending
            .get_or_create(&label)
            .set(queue.stats().pending as i64);
        if let Some(why) = batch.corrupt {
            tracing::error!(
                family = family.as_str(),
                reason = why,
                "corrupt master queue segment: the rest of it is skipped"
            );
        }
        if batch.records.is_empty() {
            if batch.corrupt.is_some() {
                ack(&queue, &batch).await;
                continue;
            }
            tokio::select! {
                _ = queue.notify.notified() => continue,
                _ = stop.cancelled() => return,
            }
        }
        for r in &batch.records {
            let call = match PluginCall::decode(&r.payload) {
                Ok(c) => c,
                Err(e) => {
                    set_aside(
                        family,
                        &ctx,
                        r.seq,
                        0,
                        &format!("unreadable: {e}"),
                        &r.payload,
                    );
                    continue;
                }
            };
            if !deliver_one(family, &call, r.seq, &r.payload, &ctx, &stop).await {
                return;
            }
        }
        ack(&queue, &batch).await;
    }
}

/// Replays one call until the master takes it or refuses it for good; false when stopping.
async fn deliver_one(
    family: Family,
    call: &PluginCall,
    seq: u64,
    payload: &[u8],
    ctx: &DeliveryCtx,
    stop: &CancellationToken,
) -> bool {
    let label = Metrics::kind(family.as_str());
    let mut backoff = Backoff::new(ctx.retry_interval, ctx.max_retry_interval);
    loop {
        let attempt = backoff.attempt();
        let outcome = tokio::select! {
            d = ctx.client.deliver(call) => d,
            _ = stop.cancelled() => return false,
        };
        match outcome {
            Delivery::Done => {
                ctx.metrics.gerrit.delivered.get_or_create(&label).inc();
                if attempt > 0 {
                    tracing::info!(
                        family = family.as_str(),
                        after_attempts = attempt,
                        "master took the call; delivering"
                    );
                }
                return true;
            }
            Delivery::Refused { status, answer } => {
                set_aside(family, ctx, seq, status, &answer, payload);
                return true;
            }
            Delivery::Retry(why) => {
                ctx.metrics
                    .gerrit
                    .delivery_failures
                    .get_or_create(&label)
                    .inc();
                let delay = backoff.next_delay();
                if attempt == 0 || attempt.is_power_of_two() {
                    tracing::warn!(family = family.as_str(), path = %call.path, attempt, retry_in_ms = delay.as_millis() as u64, error = %why, "delivery to the master failed; will retry");
                }
                if sleep_or_stop(delay, stop).await {
                    return false;
                }
            }
        }
    }
}

fn set_aside(
    family: Family,
    ctx: &DeliveryCtx,
    seq: u64,
    status: u16,
    answer: &str,
    payload: &[u8],
) {
    ctx.metrics
        .gerrit
        .dead_lettered
        .get_or_create(&Metrics::kind(family.as_str()))
        .inc();
    let file = format!("master-{}", family.as_str());
    tracing::warn!(family = family.as_str(), seq, status, answer, file = %ctx.dead.path_for(&file).display(), "the master refused a plugin call for good; set aside as a dead letter");
    if let Err(e) = ctx.dead.record(QUEUE, &file, seq, status, answer, payload) {
        tracing::error!(seq, error = %e, "cannot write the dead-letter file; the call is dropped");
    }
}

async fn ack(queue: &Arc<Queue>, batch: &Peeked) {
    let q = queue.clone();
    let (end, n, last) = (
        batch.end,
        batch.records.len() as u64,
        batch.records.last().map(|r| r.seq),
    );
    match tokio::task::spawn_blocking(move || q.ack(end, n, last)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot record delivery to the master; calls may be replayed")
        }
        Err(e) => tracing::error!(error = %e, "master ack task failed"),
    }
}

/// True when stopping.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}
