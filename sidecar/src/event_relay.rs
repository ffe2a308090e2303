//! Moves this node's own stream events from the event log into the outbox, in seq order, and
//! remembers how far it got (`<data>/events.queued`, a `durable::Mark` rewritten in place
//! without fsync), so an event fsync'd in the log reaches
//! every peer even when the process dies between the log append and the outbox append: at
//! start the relay re-queues every local event after the marker.
//!
//! One task does it, so events enter the outbox (and reach each peer) in seq order; a peer's
//! log would otherwise take a later seq first and drop the earlier one as a duplicate. The
//! marker is written without fsync: a stale marker only re-queues events that peers already
//! hold, and they drop them as duplicates (`EventLog::append_remote` dedups on the event id).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::durable::Mark;
use crate::events::EventLog;
use crate::lifecycle::Scope;
use crate::peers::outbox::Outbox;
use crate::wire::PeerMessage;

/// Most events moved per round (one read of the log, one ordered outbox append).
const ROUND: usize = 2048;

#[derive(Debug, thiserror::Error)]
#[error("the event relay stopped before queueing event {0} for peers")]
pub struct RelayStopped(pub u64);

pub struct EventRelay {
    queued: watch::Sender<u64>,
    stopped: CancellationToken,
}

impl EventRelay {
    /// Reads the marker and starts the relay task in `scope`; it runs until the scope is
    /// cancelled.
    pub fn start(
        log: Arc<EventLog>,
        outbox: Arc<Outbox>,
        data_dir: &Path,
        scope: &Scope,
    ) -> Arc<EventRelay> {
        let marker = data_dir.join("events.queued");
        let (marker, start) = match Mark::open(&marker) {
            Ok((mark, start)) => (Some(mark), start),
            Err(e) => {
                // Without it the relay re-queues from the log's start of this origin: peers
                // drop what they hold as duplicates.
                tracing::warn!(path = %marker.display(), error = %e, "cannot read the event relay marker; re-queueing from the oldest local event");
                (None, 0)
            }
        };
        let relay = Arc::new(EventRelay {
            queued: watch::Sender::new(start),
            stopped: CancellationToken::new(),
        });
        let stop = scope.token().clone();
        scope.spawn(run(relay.clone(), log, outbox, marker, stop));
        relay
    }

    /// The highest local event seq durably queued for every peer (all below it are too).
    pub fn queued(&self) -> u64 {
        *self.queued.borrow()
    }

    /// Resolves once the local event `seq` is durably in every peer's queue.
    pub async fn wait_queued(&self, seq: u64) -> Result<(), RelayStopped> {
        let mut rx = self.queued.subscribe();
        tokio::select! {
            r = rx.wait_for(|q| *q >= seq) => r.map(|_| ()).map_err(|_| RelayStopped(seq)),
            _ = self.stopped.cancelled() => {
                if self.queued() >= seq { Ok(()) } else { Err(RelayStopped(seq)) }
            }
        }
    }
}

/// Not fsync'd: a marker that goes back after a crash re-queues events peers drop as duplicates.
/// In place (no new file per update): the relay writes it each time it catches up.
async fn write_marker(marker: &mut Option<Mark>, seq: u64) -> bool {
    let Some(mut mark) = marker.take() else {
        return false;
    };
    let (mark, r) = tokio::task::spawn_blocking(move || {
        let r = mark.store_relaxed(seq);
        (mark, r)
    })
    .await
    .map_err(|e| tracing::warn!(error = %e, "event relay marker task failed"))
    .ok()
    .unzip();
    *marker = mark;
    match r {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot write the event relay marker");
            false
        }
        None => false,
    }
}

async fn run(
    relay: Arc<EventRelay>,
    log: Arc<EventLog>,
    outbox: Arc<Outbox>,
    mut marker: Option<Mark>,
    stop: CancellationToken,
) {
    let origin = log.instance_id().to_owned();
    let mut wake = log.subscribe();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let mut written = relay.queued();
    if written > 0 {
        tracing::info!(
            after = written,
            "event relay resumes queueing local events for peers"
        );
    }
    loop {
        wake.borrow_and_update();
        let mut after = relay.queued();
        // What the log does not hold cannot be queued: local seqs that start above the marker
        // (a new or wiped data directory seeds them from the clock), or events retention
        // removed before they were queued (a node down for longer than the retention).
        let floor = log.origin_floor(&origin);
        if after < floor {
            if after > 0 {
                tracing::warn!(
                    after,
                    floor,
                    "local events were removed from the log before the relay queued them"
                );
            }
            after = floor;
            relay.queued.send_replace(after);
        }
        let (l, o) = (log.clone(), origin.clone());
        let read = tokio::task::spawn_blocking(move || l.read_origin(&o, after, ROUND)).await;
        let result = match read {
            Ok(Ok(events)) if events.is_empty() => {
                if after != written && write_marker(&mut marker, after).await {
                    written = after;
                }
                tokio::select! {
                    _ = wake.changed() => continue,
                    _ = stop.cancelled() => break,
                }
            }
            Ok(Ok(events)) => {
                let last = events.last().map(|(id, _)| id.seq).unwrap_or(after);
                let payloads = events
                    .iter()
                    .map(|(id, bytes)| {
                        PeerMessage::Event {
                            event_seq: id.seq,
                            event: bytes,
                        }
                        .encode()
                    })
                    .collect();
                outbox
                    .append_many(payloads)
                    .await
                    .map(|_| last)
                    .map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(last) => {
                backoff.reset();
                relay.queued.send_replace(last);
            }
            Err(e) => {
                tracing::error!(error = %e, after, "cannot queue local events for peers; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
        if stop.is_cancelled() {
            break;
        }
    }
    let q = relay.queued();
    if q != written {
        write_marker(&mut marker, q).await;
    }
    relay.stopped.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requeues_local_events_after_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            EventLog::open(
                dir.path().join("events"),
                crate::events::EventLogOptions::new("node-a"),
            )
            .unwrap(),
        );
        for i in 0..5 {
            log.append_local(format!(r#"{{"type":"t","eventCreatedOn":{i}}}"#).as_bytes())
                .await
                .unwrap();
        }
        // A crash after the log append, before the outbox append: the marker says 2 (in the
        // text format of earlier versions, which is upgraded in place at the first update).
        std::fs::write(dir.path().join("events.queued"), "2\n").unwrap();
        let outbox = Arc::new(
            Outbox::open(dir.path(), crate::peers::outbox::OutboxOptions::default()).unwrap(),
        );
        let queue = outbox.add_peer("http://peer/").unwrap();
        let scope = Scope::root();
        let relay = EventRelay::start(log.clone(), outbox.clone(), dir.path(), &scope);
        relay.wait_queued(5).await.unwrap();
        assert_eq!(queue.stats().pending, 3, "events 3, 4 and 5 re-queued");
        scope.stop().await;
        assert_eq!(Mark::open(&dir.path().join("events.queued")).unwrap().1, 5);
        log.shutdown().await.unwrap();
    }
}
