//! History for a wiped, damaged or new node: at start, before `/health` turns 204 (reason
//! `catching up`), the event log fetches from its peers every origin's events within their
//! retention that it lacks, through the signed catch-up endpoints
//! (`GET /v1/peer/events`, `GET /v1/peer/events/{origin}?after=N`), so a cursor taken on any
//! node resumes here too.
//!
//! Order: an origin's events enter the log only upwards (a lower seq after a higher one is a
//! duplicate), so while the history is restored the log refuses the events of peer batches
//! (`503`, the senders retry after it): a new event delivered by the outbox cannot overtake
//! the older ones still to be fetched. Bounded by `sidecar.catchUpTimeout`; a peer that does
//! not answer is skipped (its events come later through the outbox, or from another peer).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::events::holes::Hole;
use crate::events::EventLog;
use crate::health::Health;
use crate::peers::client::PeerClient;
use crate::wire::{CatchUpReply, OriginsReply};

/// Events asked for per request (the endpoint's maximum).
const PAGE: usize = 5_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct EventHistory {
    pub events: Arc<EventLog>,
    pub client: PeerClient,
    pub health: Arc<Health>,
}

/// Why a peer's history could not be restored (the restore goes on with the next peer).
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Client(#[from] crate::peers::client::ClientError),
    #[error("{path}: status {status}: {message}")]
    Status {
        path: String,
        status: u16,
        message: String,
    },
    #[error("bad {what} reply: {source}")]
    BadReply {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("bad origin {0:?} in the origins reply")]
    BadOrigin(String),
    #[error("asked for {asked}, got {got}")]
    WrongOrigin { asked: String, got: String },
    #[error("cannot append {origin}'s events: {source}")]
    Append {
        origin: String,
        #[source]
        source: crate::events::EventError,
    },
}

/// What one restore did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub events: u64,
    pub peers_unanswered: usize,
    /// Events lost to damage put back in place ([`crate::events::holes`]).
    pub refilled: u64,
    /// Holes no peer answered for (kept for the next start).
    pub holes_left: usize,
}

impl EventHistory {
    /// Restores from `peers` (their base URLs), then lets peer batches in and ends the
    /// `events` catch-up of `/health` (begun by the caller before the listeners opened).
    pub async fn run(
        self,
        peers: Vec<url::Url>,
        timeout: Duration,
        stop: CancellationToken,
    ) -> Restored {
        let started = Instant::now();
        self.events.set_restoring(true);
        let deadline = started + timeout;
        let r = tokio::select! {
            r = self.restore(&peers, deadline) => r,
            _ = stop.cancelled() => Restored::default(),
        };
        self.events.set_restoring(false);
        self.health.end_catch_up("events");
        if r.holes_left > 0 {
            tracing::error!(
                holes = r.holes_left,
                "events lost to damage could not be refilled: no peer answered; retried at the next start"
            );
        }
        if r.events > 0 || r.peers_unanswered > 0 || r.refilled > 0 {
            tracing::info!(
                events = r.events,
                refilled = r.refilled,
                peers_unanswered = r.peers_unanswered,
                took_ms = started.elapsed().as_millis() as u64,
                "event history restored from peers"
            );
        }
        r
    }

    async fn restore(&self, peers: &[url::Url], deadline: Instant) -> Restored {
        let mut out = Restored::default();
        // Holes first: an origin's missing tail fetched below goes after them.
        for hole in self.events.holes() {
            match self.refill(peers, &hole, deadline).await {
                Some(n) => out.refilled += n,
                None => out.holes_left += 1,
            }
        }
        // Each peer in turn: what one lacks, another may hold.
        for peer in peers {
            if Instant::now() >= deadline {
                tracing::warn!("event history restore stopped at sidecar.catchUpTimeout");
                out.peers_unanswered += 1;
                continue;
            }
            match self.restore_peer(peer, deadline).await {
                Ok(n) => out.events += n,
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "cannot restore event history from a peer");
                    out.peers_unanswered += 1;
                }
            }
        }
        out
    }

    /// Fetches every origin's events the peer holds beyond this log's last seq of it.
    async fn restore_peer(&self, peer: &url::Url, deadline: Instant) -> Result<u64, HistoryError> {
        let body = self.get(peer, "v1/peer/events").await?;
        let theirs: OriginsReply =
            serde_json::from_slice(&body).map_err(|source| HistoryError::BadReply {
                what: "origins".into(),
                source,
            })?;
        let mut restored = 0;
        for (origin, their_last) in theirs.origins {
            if !crate::wire::valid_instance_id(&origin) {
                return Err(HistoryError::BadOrigin(origin));
            }
            loop {
                let mine = self.mine().get(&origin).copied().unwrap_or(0);
                if mine >= their_last || Instant::now() >= deadline {
                    break;
                }
                let page = self.page(peer, &origin, mine).await?;
                let events: Vec<(u64, &[u8])> = page
                    .iter()
                    .filter(|(seq, _)| *seq > mine)
                    .map(|(seq, event)| (*seq, event.as_ref()))
                    .collect();
                if events.is_empty() {
                    break;
                }
                let asked = events.len();
                for r in self.events.restore_many(&origin, events).await {
                    match r {
                        Ok(crate::events::AppendOutcome::Appended) => restored += 1,
                        Ok(_) => {}
                        Err(source) => return Err(HistoryError::Append { origin, source }),
                    }
                }
                if asked < PAGE {
                    break;
                }
            }
        }
        Ok(restored)
    }

    /// Fetches a hole's events from the first peer that answers and puts them back. `None`
    /// when no peer answered (the hole is kept).
    async fn refill(&self, peers: &[url::Url], hole: &Hole, deadline: Instant) -> Option<u64> {
        // Peers that answered they no longer hold the hole's start (410): when all did, the
        // events are gone everywhere and the hole is closed.
        let mut gone = 0;
        for peer in peers {
            if Instant::now() >= deadline {
                return None;
            }
            let fetched = match self.fetch_hole(peer, hole).await {
                Ok(events) => events,
                Err(e) => {
                    if matches!(e, HistoryError::Status { status: 410, .. }) {
                        gone += 1;
                    }
                    tracing::warn!(peer = %peer, hole = %hole, error = %e, "cannot fetch events lost to damage from a peer");
                    if gone == peers.len() {
                        tracing::error!(hole = %hole, "no peer holds the events lost to damage any more; they are lost here");
                        return self.events.refill(hole, Vec::new()).await.ok().map(|_| 0);
                    }
                    continue;
                }
            };
            let events = fetched
                .iter()
                .map(|(seq, bytes)| (*seq, bytes.as_ref()))
                .collect();
            match self.events.refill(hole, events).await {
                Ok(n) => {
                    let missing = (hole.before - hole.after - 1).saturating_sub(n as u64);
                    if missing > 0 {
                        tracing::warn!(peer = %peer, hole = %hole, refilled = n, missing,
                            "a peer did not hold every event of a hole (dropped by its origin or by retention)");
                    }
                    return Some(n as u64);
                }
                Err(e) => {
                    tracing::error!(peer = %peer, hole = %hole, error = %e, "cannot refill events lost to damage");
                    return None;
                }
            }
        }
        None
    }

    /// A peer's events inside `hole`, page by page.
    async fn fetch_hole(
        &self,
        peer: &url::Url,
        hole: &Hole,
    ) -> Result<Vec<(u64, bytes::Bytes)>, HistoryError> {
        let mut out: Vec<(u64, bytes::Bytes)> = Vec::new();
        let mut after = hole.after;
        loop {
            let page = self.page(peer, &hole.origin, after).await?;
            let full = page.len() == PAGE;
            let mut beyond = false;
            for (seq, event) in page {
                if seq >= hole.before {
                    beyond = true;
                } else if seq > after {
                    out.push((seq, event));
                    after = seq;
                }
            }
            if beyond || !full || after + 1 >= hole.before {
                return Ok(out);
            }
        }
    }

    /// One page of a peer's events of `origin` after seq `after` (from its oldest when it
    /// holds none that early), checked to be that origin's.
    async fn page(
        &self,
        peer: &url::Url,
        origin: &str,
        after: u64,
    ) -> Result<Vec<(u64, bytes::Bytes)>, HistoryError> {
        let body = self
            .get(
                peer,
                &format!("v1/peer/events/{origin}?after={after}&limit={PAGE}&from_oldest=true"),
            )
            .await?;
        let reply = CatchUpReply::decode(&body).map_err(|source| HistoryError::BadReply {
            what: format!("catch-up ({origin})"),
            source,
        })?;
        if reply.origin != origin {
            return Err(HistoryError::WrongOrigin {
                asked: origin.to_owned(),
                got: reply.origin.to_string(),
            });
        }
        Ok(reply
            .events
            .iter()
            .map(|e| (e.seq, bytes::Bytes::copy_from_slice(e.event)))
            .collect())
    }

    fn mine(&self) -> BTreeMap<String, u64> {
        self.events.last_seq_by_origin()
    }

    async fn get(&self, peer: &url::Url, path: &str) -> Result<Vec<u8>, HistoryError> {
        match self.client.get_signed(peer, path, REQUEST_TIMEOUT).await? {
            (200, body) => Ok(body),
            (status, body) => Err(HistoryError::Status {
                path: path.to_owned(),
                status,
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            }),
        }
    }
}
