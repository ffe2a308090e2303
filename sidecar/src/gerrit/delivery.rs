//! Egress into this node's own master: one durable queue per endpoint [`Family`] (an outbox of
//! its own under `<data>/master/<family>/`, so the peer queues never see these calls and these
//! queues never reach a peer), and one task per family that replays the calls into the master
//! in order. `409`, `5xx`, timeouts and refused connections are retried with back-off forever;
//! a permanent refusal is set aside in `<data>/deadletter/master-<family>.jsonl` with the
//! master's answer. One `500` is permanent in fact though retried like the others: the
//! plugin's answer to an event type its master does not know (or to a malformed key or id):
//! a call the master answers `500` with the same body `gerrit.setAsideAfter` times in a row,
//! each time while its health check passes, is set aside too ([`Poison`]), so one such call
//! stalls its family for minutes, not forever. Delivery is at least once: a crash may replay
//! up to one read batch.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::{Delivery, MasterClient, MasterError};
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
    pub fn open(
        data_dir: &Path,
        segment_bytes: u64,
        disk: Arc<crate::durable::DiskWatch>,
    ) -> Result<MasterQueues, OutboxError> {
        let mut outboxes = Vec::new();
        let mut queues = Vec::new();
        for f in Family::ALL {
            let opts = OutboxOptions {
                segment_bytes,
                disk: disk.clone(),
                store: "master",
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
    /// `gerrit.setAsideAfter`: identical `500`s from a healthy master before a call is set
    /// aside; 0: never.
    pub set_aside_after: u64,
}

/// Counts a call's identical `500`s answered while the master's health check passed; any
/// other answer, a different body, or an unhealthy master starts again. A sick master (down,
/// or failing its health check) therefore never causes a call to be set aside: only a master
/// that is well and refuses this one call the same way, again and again.
#[derive(Debug, Default)]
pub struct Poison {
    same: u64,
    answer: Option<String>,
}

impl Poison {
    /// Notes a failed attempt; true when the call should now be set aside.
    pub fn failed(&mut self, err: &MasterError, master_healthy: bool, limit: u64) -> bool {
        match err {
            MasterError::Status {
                status: 500,
                answer,
            } if master_healthy => {
                if self.answer.as_deref() == Some(answer.as_str()) {
                    self.same += 1;
                } else {
                    self.same = 1;
                    self.answer = Some(answer.clone());
                }
                limit > 0 && self.same >= limit
            }
            _ => {
                *self = Poison::default();
                false
            }
        }
    }
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
                    )
                    .await;
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
    let mut poison = Poison::default();
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
                set_aside(family, ctx, seq, status, &answer, payload).await;
                return true;
            }
            Delivery::Retry(why) => {
                ctx.metrics
                    .gerrit
                    .delivery_failures
                    .get_or_create(&label)
                    .inc();
                let healthy = ctx.metrics.gerrit.master_up.get() == 1;
                if poison.failed(&why, healthy, ctx.set_aside_after) {
                    ctx.metrics
                        .gerrit
                        .set_aside_after_500
                        .get_or_create(&label)
                        .inc();
                    tracing::error!(family = family.as_str(), path = %call.path, attempts = attempt + 1, error = %why, "the master answers this call the same 500 while healthy (an event type it does not know?); setting it aside");
                    set_aside(family, ctx, seq, 500, &why.to_string(), payload).await;
                    return true;
                }
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

/// Appends the call to `<data>/deadletter/master-<family>.jsonl` (an fsync'd append, on a
/// blocking thread) and counts it.
async fn set_aside(
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
    let (dead, answer, payload) = (ctx.dead.clone(), answer.to_owned(), payload.to_vec());
    let written = tokio::task::spawn_blocking(move || {
        dead.record(QUEUE, &file, seq, status, &answer, &payload)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    if let Err(e) = written {
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

#[cfg(test)]
mod tests {
    use super::{MasterError, Poison};

    fn status(status: u16, answer: &str) -> MasterError {
        MasterError::Status {
            status,
            answer: answer.into(),
        }
    }

    #[test]
    fn only_the_same_500_from_a_healthy_master_sets_a_call_aside() {
        let unknown = status(500, "JsonParseException: Unknown event type: x-custom");
        let mut p = Poison::default();
        assert!(!p.failed(&unknown, true, 3));
        assert!(!p.failed(&unknown, true, 3));
        assert!(p.failed(&unknown, true, 3), "the third identical 500");

        // A sick master starts the count again: it never sets a call aside.
        let mut p = Poison::default();
        for _ in 0..10 {
            assert!(!p.failed(&unknown, true, 3));
            assert!(!p.failed(&unknown, false, 3));
        }
        // So do another body, another status, no answer at all.
        let others = [
            status(500, "NullPointerException"),
            status(503, "Service Unavailable"),
            status(409, "in flight"),
            MasterError::Transport {
                what: "connect",
                cause: "Connection refused".into(),
            },
        ];
        for other in &others {
            let mut p = Poison::default();
            assert!(!p.failed(&unknown, true, 3));
            assert!(!p.failed(&unknown, true, 3));
            assert!(!p.failed(other, true, 3));
            assert!(!p.failed(&unknown, true, 3), "after {other}");
        }
        // 0: 500s are retried forever.
        let mut p = Poison::default();
        for _ in 0..100 {
            assert!(!p.failed(&unknown, true, 0));
        }
    }
}
