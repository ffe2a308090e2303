//! One forwarder task per peer: reads ordered batches from the peer's outbox queue, sends them,
//! and acknowledges them only when the peer has applied them. Retries forever with exponential
//! back-off and jitter; a message the peer refuses for good is set aside as a dead letter so it
//! never blocks the ones behind it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::{PeerClient, SendError};
use super::deadletter::DeadLetters;
use super::outbox::{now_ms, Outbox, Peeked};
use super::Peer;
use crate::backoff::Backoff;
use crate::metrics::Metrics;

pub struct ForwarderCtx {
    pub origin: String,
    pub client: PeerClient,
    pub metrics: Arc<Metrics>,
    pub dead: Arc<DeadLetters>,
    pub max_messages: usize,
    pub max_bytes: usize,
    pub retry_interval: Duration,
    pub max_retry_interval: Duration,
}

pub async fn run(peer: Arc<Peer>, ctx: Arc<ForwarderCtx>, shutdown: CancellationToken) {
    let label = Metrics::peer(&peer.key);
    let mut backoff = Backoff::new(ctx.retry_interval, ctx.max_retry_interval);
    let mut limit = ctx.max_messages;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let q = peer.queue.clone();
        let (max_n, max_b) = (limit, ctx.max_bytes);
        let peeked = tokio::task::spawn_blocking(move || q.peek(max_n, max_b)).await;
        let batch = match peeked {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(peer = %peer.key, error = %e, "cannot read the outbox; retrying");
                sleep_or_stop(Duration::from_secs(1), &shutdown).await;
                continue;
            }
            Err(e) => {
                tracing::error!(peer = %peer.key, error = %e, "outbox reader task failed");
                sleep_or_stop(Duration::from_secs(1), &shutdown).await;
                continue;
            }
        };
        if let Some(why) = batch.corrupt {
            tracing::error!(peer = %peer.key, reason = why, "corrupt outbox segment: the rest of it is skipped");
        }
        if batch.records.is_empty() {
            if batch.corrupt.is_some() {
                ack(&peer, &batch, &ctx).await;
                continue;
            }
            tokio::select! {
                _ = peer.queue.notify.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let body = crate::wire::encode_batch(
            &ctx.origin,
            batch.records.iter().map(|r| (r.seq, r.payload.as_slice())),
        );
        if backoff.attempt() > 0 {
            ctx.metrics.batches_retried.get_or_create(&label).inc();
        }
        let url = peer.url();
        let sent = tokio::select! {
            r = ctx.client.send_batch(&url, body) => r,
            _ = shutdown.cancelled() => return,
        };
        match sent {
            Ok(reply) => {
                for rej in &reply.rejected {
                    if let Some(r) = batch.records.iter().find(|r| r.seq == rej.seq) {
                        dead_letter(&peer, &ctx, r.seq, 200, &rej.error, &r.payload).await;
                    }
                }
                {
                    // The metric guard must not live across an await.
                    let now = now_ms();
                    let hist = ctx.metrics.delivery_seconds.get_or_create(&label);
                    for r in &batch.records {
                        hist.observe(now.saturating_sub(r.accepted_at_ms) as f64 / 1000.0);
                    }
                }
                ctx.metrics.batches_sent.get_or_create(&label).inc();
                ctx.metrics
                    .messages_sent
                    .get_or_create(&label)
                    .inc_by(batch.records.len() as u64);
                ack(&peer, &batch, &ctx).await;
                peer.record_success();
                if backoff.attempt() > 0 {
                    tracing::info!(peer = %peer.key, after_attempts = backoff.attempt(), "peer reachable again; delivering");
                }
                backoff.reset();
                limit = ctx.max_messages;
            }
            Err(SendError::Refused { status, message }) => {
                ctx.metrics.batches_failed.get_or_create(&label).inc();
                if batch.records.len() > 1 {
                    // Find the bad message by halving; the good ones go through meanwhile.
                    limit = (batch.records.len() / 2).max(1);
                    continue;
                }
                let r = &batch.records[0];
                dead_letter(&peer, &ctx, r.seq, status, &message, &r.payload).await;
                ack(&peer, &batch, &ctx).await;
            }
            Err(SendError::Retry(why)) => {
                ctx.metrics.batches_failed.get_or_create(&label).inc();
                let attempt = backoff.attempt();
                let delay = backoff.next_delay();
                if attempt == 0 || attempt.is_power_of_two() {
                    tracing::warn!(peer = %peer.key, attempt, retry_in_ms = delay.as_millis() as u64, error = %why, "delivery failed; will retry");
                }
                peer.record_failure(&why.to_string());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = peer.wake.notified() => {
                        tracing::debug!(peer = %peer.key, "back-off cut short: the peer is back");
                    }
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }
}

async fn ack(peer: &Arc<Peer>, batch: &Peeked, _ctx: &ForwarderCtx) {
    let q = peer.queue.clone();
    let end = batch.end;
    let n = batch.records.len() as u64;
    let last = batch.records.last().map(|r| r.seq);
    match tokio::task::spawn_blocking(move || q.ack(end, n, last)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(peer = %peer.key, error = %e, "cannot record delivery; messages may be sent again")
        }
        Err(e) => tracing::error!(peer = %peer.key, error = %e, "ack task failed"),
    }
}

/// Sets a refused message aside in `<data>/deadletter/` (a file append, on a blocking thread).
async fn dead_letter(
    peer: &Peer,
    ctx: &ForwarderCtx,
    seq: u64,
    status: u16,
    error: &str,
    payload: &[u8],
) {
    ctx.metrics
        .dead_lettered
        .get_or_create(&Metrics::peer(&peer.key))
        .inc();
    let file = Outbox::queue_dir_name(&peer.key);
    tracing::warn!(peer = %peer.key, seq, status, error, file = %ctx.dead.path_for(&file).display(), "peer refused a message for good; set aside as a dead letter");
    let (dead, key, error, payload) = (
        ctx.dead.clone(),
        peer.key.clone(),
        error.to_owned(),
        payload.to_vec(),
    );
    let written = tokio::task::spawn_blocking(move || {
        dead.record(&key, &file, seq, status, &error, &payload)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    if let Err(e) = written {
        tracing::error!(peer = %peer.key, seq, error = %e, "cannot write the dead-letter file; the message is dropped");
    }
}

async fn sleep_or_stop(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}
