//! Peers: who this node forwards to, their durable outboxes, forwarders and delivery status.
//! The flow is one way: local API → outbox → forwarder → client → the peer's API.

pub mod client;
pub mod deadletter;
pub mod discovery;
pub mod forwarder;
pub mod membership;
pub mod outbox;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::Scope;
use crate::locks::LockExt;
use outbox::{Outbox, OutboxError, Queue};

/// What this node believes about a peer's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Known and expected to be serving.
    #[default]
    Up,
    /// Said goodbye (graceful stop) or its heartbeat says it is leaving.
    Left,
    /// Vanished without a word: stale heartbeat, lost DNS record or unreachable beyond `ttl`.
    Failed,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Up => "up",
            MemberState::Left => "left",
            MemberState::Failed => "failed",
        }
    }
}

/// Delivery and membership status of one peer, as `/v1/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerStatus {
    pub reachable: Option<bool>,
    pub last_success_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    pub consecutive_failures: u64,
    /// The peer's `instanceId`, once known (heartbeat, `X-HA-Instance` of a probe, a leave).
    pub instance_id: Option<String>,
    pub state: MemberState,
    pub state_since_ms: u64,
    /// Set while discovery no longer lists the peer: its queue still receives every message
    /// until `absent_since_ms + retainAbsent`, then its files are deleted.
    pub absent_since_ms: Option<u64>,
}

/// A peer's backlog (messages not yet delivered) from which `/v1/status` reports a warning.
pub const BACKLOG_WARNING: u64 = 1_000;
/// A peer's backlog from which `/v1/status` reports an error.
pub const BACKLOG_ERROR: u64 = 100_000;
/// Age of a peer's oldest undelivered message from which `/v1/status` reports an error.
pub const OLDEST_UNDELIVERED_ERROR_MS: u64 = 3_600_000;

/// How worrying a peer looks, in `/v1/status` and `ha-sidecar status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warning,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

impl PeerStatus {
    /// The level of a peer in this state with `pending` messages queued for it, the oldest
    /// `oldest_age_ms` old. A peer that left is fine for `ttl_ms`; gone longer (at `now_ms`) it
    /// is a warning: it may never come back.
    pub fn level(
        &self,
        pending: u64,
        oldest_age_ms: Option<u64>,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Level {
        if pending >= BACKLOG_ERROR
            || oldest_age_ms.is_some_and(|a| a > OLDEST_UNDELIVERED_ERROR_MS)
        {
            Level::Error
        } else if pending >= BACKLOG_WARNING
            || self.state == MemberState::Failed
            || (self.state == MemberState::Up && self.reachable == Some(false))
            || (self.state == MemberState::Left
                && now_ms.saturating_sub(self.state_since_ms) > ttl_ms)
        {
            Level::Warning
        } else {
            Level::Ok
        }
    }
}

pub struct Peer {
    /// The peer's identity for queues, metrics and logs: its instanceId when discovery knows it
    /// (shared-fs), else its URL (static, dns).
    pub key: String,
    url: Mutex<url::Url>,
    pub queue: Arc<Queue>,
    status: Mutex<PeerStatus>,
    /// Cuts a forwarder's back-off short (the peer came back, or asked for its backlog).
    pub(crate) wake: tokio::sync::Notify,
    /// The running forwarder's stop token; `None` while the peer is absent.
    forwarder: Mutex<Option<CancellationToken>>,
    /// Held by the running forwarder: a restarted one waits for the old one to finish, so two
    /// never acknowledge the same records.
    running: tokio::sync::Mutex<()>,
}

impl Peer {
    pub fn status(&self) -> PeerStatus {
        self.status.locked().clone()
    }

    pub fn url(&self) -> url::Url {
        self.url.locked().clone()
    }

    pub fn is_forwarding(&self) -> bool {
        self.forwarder.locked().is_some()
    }

    /// Changes the membership state; returns the previous one.
    pub fn set_state(&self, state: MemberState) -> MemberState {
        let mut s = self.status.locked();
        let old = s.state;
        if old != state {
            s.state = state;
            s.state_since_ms = outbox::now_ms();
        }
        old
    }

    pub fn set_instance_id(&self, id: &str) {
        let mut s = self.status.locked();
        if s.instance_id.as_deref() != Some(id) {
            s.instance_id = Some(id.to_owned());
        }
    }

    /// Wakes the forwarder if it is waiting out a back-off.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn record_success(&self) {
        let mut s = self.status.locked();
        s.reachable = Some(true);
        s.last_success_ms = Some(outbox::now_ms());
        s.consecutive_failures = 0;
    }

    fn record_failure(&self, why: &str) {
        let mut s = self.status.locked();
        s.reachable = Some(false);
        s.last_error = Some(why.to_owned());
        s.last_error_ms = Some(outbox::now_ms());
        s.consecutive_failures += 1;
    }
}

/// The set of peers, their queues and forwarders. Policy (who is present, who failed) belongs
/// to `membership`; this is the mechanism.
pub struct Peers {
    outbox: Arc<Outbox>,
    ctx: Arc<forwarder::ForwarderCtx>,
    peers: Mutex<BTreeMap<String, Arc<Peer>>>,
    /// The forwarders' scope: one child scope per running forwarder.
    scope: Scope,
}

impl Peers {
    pub fn new(outbox: Arc<Outbox>, ctx: forwarder::ForwarderCtx, scope: Scope) -> Self {
        Peers {
            outbox,
            ctx: Arc::new(ctx),
            peers: Mutex::new(BTreeMap::new()),
            scope,
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub(crate) fn client(&self) -> &client::PeerClient {
        &self.ctx.client
    }

    /// Adds a present peer (keeping its on-disk backlog, if any) and starts its forwarder.
    pub fn add(&self, key: &str, url: url::Url) -> Result<Arc<Peer>, OutboxError> {
        let (peer, _) = self.set_present(key, url)?;
        Ok(peer)
    }

    /// Opens a peer's queue without forwarding: it receives every message from now on, and
    /// delivery starts when [`Peers::set_present`] is called. Used for peers remembered across
    /// a restart until discovery sees them again.
    pub fn add_absent(
        &self,
        key: &str,
        url: url::Url,
        absent_since_ms: u64,
        state: MemberState,
    ) -> Result<Arc<Peer>, OutboxError> {
        if let Some(p) = self.get(key) {
            return Ok(p);
        }
        let peer = self.open(key, url)?;
        {
            let mut s = peer.status.locked();
            s.absent_since_ms = Some(absent_since_ms);
            s.state = state;
        }
        Ok(peer)
    }

    fn open(&self, key: &str, url: url::Url) -> Result<Arc<Peer>, OutboxError> {
        let queue = self.outbox.add_peer(key)?;
        let peer = Arc::new(Peer {
            key: key.to_owned(),
            url: Mutex::new(url),
            queue,
            status: Mutex::new(PeerStatus {
                state_since_ms: outbox::now_ms(),
                ..PeerStatus::default()
            }),
            wake: tokio::sync::Notify::new(),
            forwarder: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
        });
        self.peers.locked().insert(key.to_owned(), peer.clone());
        Ok(peer)
    }

    /// Makes a peer present at `url`: opens its queue if new (returns `true`), updates its URL,
    /// and starts its forwarder if it was not running.
    pub fn set_present(&self, key: &str, url: url::Url) -> Result<(Arc<Peer>, bool), OutboxError> {
        let (peer, new) = match self.get(key) {
            Some(p) => (p, false),
            None => (self.open(key, url.clone())?, true),
        };
        let moved = {
            let mut u = peer.url.locked();
            let moved = *u != url;
            *u = url;
            moved
        };
        peer.status.locked().absent_since_ms = None;
        let mut fwd = peer.forwarder.locked();
        if moved {
            // The forwarder holds no URL across batches, but a send in flight to the old
            // address is abandoned quickly by restarting it.
            if let Some(t) = fwd.take() {
                t.cancel();
            }
        }
        if fwd.is_none() {
            let scope = self.scope.child();
            *fwd = Some(scope.token().clone());
            let (p, ctx, stop) = (peer.clone(), self.ctx.clone(), scope.token().clone());
            scope.spawn(async move {
                let _running = p.running.lock().await;
                if !stop.is_cancelled() {
                    forwarder::run(p.clone(), ctx, stop).await;
                }
            });
            tracing::info!(peer = %key, url = %peer.url(), pending = peer.queue.stats().pending, "forwarding to peer");
        }
        drop(fwd);
        Ok((peer, new))
    }

    /// Stops forwarding to a peer that discovery no longer lists; its queue keeps receiving
    /// messages (so nothing is lost if it returns) until [`Peers::forget`].
    pub fn set_absent(&self, key: &str) {
        if let Some(p) = self.get(key) {
            if let Some(t) = p.forwarder.locked().take() {
                t.cancel();
            }
            let mut s = p.status.locked();
            if s.absent_since_ms.is_none() {
                s.absent_since_ms = Some(outbox::now_ms());
            }
        }
    }

    /// Stops forwarding to a peer; its queue files stay on disk.
    pub fn remove(&self, key: &str) {
        if let Some(p) = self.peers.locked().remove(key) {
            if let Some(t) = p.forwarder.locked().take() {
                t.cancel();
            }
            self.outbox.remove_peer(key);
        }
    }

    /// Removes a peer and deletes its queue files (absent beyond `retainAbsent`).
    pub fn forget(&self, key: &str) -> Result<(), OutboxError> {
        self.remove(key);
        self.outbox.delete_peer_files(key)
    }

    pub fn get(&self, key: &str) -> Option<Arc<Peer>> {
        self.peers.locked().get(key).cloned()
    }

    /// The peer a request from `instance_id` at `url` comes from, by key, known instance id or URL.
    pub fn find(&self, instance_id: &str, url: Option<&url::Url>) -> Option<Arc<Peer>> {
        let list = self.list();
        list.iter()
            .find(|p| p.key == instance_id)
            .or_else(|| {
                list.iter()
                    .find(|p| p.status().instance_id.as_deref() == Some(instance_id))
            })
            .or_else(|| url.and_then(|u| list.iter().find(|p| &p.url() == u)))
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<Peer>> {
        self.peers.locked().values().cloned().collect()
    }

    /// Refreshes the per-peer gauges before a scrape.
    pub fn update_gauges(&self, m: &crate::metrics::Metrics) {
        let now = outbox::now_ms();
        for p in self.list() {
            let s = p.queue.stats();
            m.peer_series(&p.key);
            let label = crate::metrics::Metrics::peer(&p.key);
            m.outbox_depth.get_or_create(&label).set(s.pending as i64);
            let age = s
                .oldest_pending_ms
                .map(|t| now.saturating_sub(t) as f64 / 1000.0)
                .unwrap_or(0.0);
            m.outbox_oldest_age_seconds.get_or_create(&label).set(age);
            let st = p.status().state;
            for state in [MemberState::Up, MemberState::Left, MemberState::Failed] {
                let l = crate::metrics::PeerStateLabel {
                    peer: p.key.clone(),
                    state: state.as_str().to_owned(),
                };
                m.peer_state.get_or_create(&l).set(i64::from(st == state));
            }
        }
    }

    /// Stops every forwarder and waits for them (in-flight sends are abandoned; they are
    /// re-sent after restart and dropped by the receiver as duplicates).
    pub async fn shutdown(&self) {
        self.scope.stop().await;
    }
}
