//! Membership policy: turns what discovery sees (and probes, and leave messages) into peers that
//! are up, left or failed; keeps the queue of an absent peer for `retainAbsent` so a restart
//! loses nothing; remembers the roster across restarts; raises alerts; writes this node's
//! heartbeat; catches up after a start; says goodbye at a graceful stop. `roster` keeps the
//! roster across restarts; `handshake` holds the catch-up and the goodbye; `state` is the
//! state machine without I/O (what a transition means, when failed probes fail a peer, when an
//! absent peer's queue expires), unit-tested with paused time.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::client::Probe;
use super::discovery::{Found, Heartbeats, HostsFile, Presence, Resolve, Source, SystemResolver};
use super::outbox::now_ms;
use super::{MemberState, Peer, Peers};
use crate::config::{Config, Discovery};
use crate::health::Health;
use crate::lifecycle::Scope;
use crate::locks::LockExt;
use crate::metrics::Metrics;
use crate::shared_dir::{SharedDir, SharedDirError};
use crate::wire::{BacklogReply, Hello};

mod handshake;
mod roster;
mod state;

use roster::RosterEntry;

/// Why a node's membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot open the members directory: {0}")]
    Members(#[from] shared_fs::members::MembersError),
    #[error("cannot open a peer's queue: {0}")]
    Queue(#[from] super::outbox::OutboxError),
}

#[derive(Default)]
struct Inner {
    /// Runs of failed probes, per peer.
    unreachable: state::Unreachable,
    /// Keys found to be this node itself (a DNS record of our own address).
    selves: HashSet<String>,
    last_roster: Option<Vec<RosterEntry>>,
}

pub struct Membership {
    config: Arc<Config>,
    peers: Arc<Peers>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The bulkhead every heartbeat write and shared-fs discovery goes through.
    shared_dir: Arc<SharedDir>,
    /// `None` for static peers: the config is the roster.
    source: Option<Arc<Source>>,
    heartbeats: Option<Arc<Heartbeats>>,
    roster_path: PathBuf,
    inner: Mutex<Inner>,
    /// The rounds, the catch-up and alert deliveries run here.
    scope: Scope,
}

impl Membership {
    /// Builds the membership of a node and opens the queues of the peers it knows now: the
    /// static list, or the roster remembered from the last run (as absent until seen again).
    pub fn new(
        config: Arc<Config>,
        peers: Arc<Peers>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        shared_dir: Arc<SharedDir>,
        scope: Scope,
    ) -> Result<Membership, MembershipError> {
        let heartbeats = if config.advertise_url_is_usable() {
            let members = shared_fs::Members::open(&config.shared_dir, false)?;
            Some(Arc::new(Heartbeats::new(
                members,
                &config.instance_id,
                &config.advertise_url,
            )))
        } else {
            tracing::warn!(url = %config.advertise_url, "listenUrl binds every interface and no sidecar.advertiseUrl is set: no heartbeat is written");
            None
        };
        let source = match &config.peers.discovery {
            Discovery::Static { urls } => {
                for u in urls {
                    peers.add(u.as_str(), u.clone())?;
                }
                None
            }
            Discovery::SharedFs { ttl, .. } => {
                let members = shared_fs::Members::open(&config.shared_dir, false)?;
                Some(Arc::new(Source::SharedFs {
                    view: Mutex::new(shared_fs::MembersView::new(members)),
                    ttl: *ttl,
                    own_id: config.instance_id.clone(),
                    own_routable: !super::discovery::is_loopback(&config.advertise_url),
                }))
            }
            Discovery::Dns {
                name,
                port,
                hosts_file,
                ..
            } => {
                let resolver: Arc<dyn Resolve> = match hosts_file {
                    Some(p) => Arc::new(HostsFile(p.clone())),
                    None => Arc::new(SystemResolver),
                };
                Some(Arc::new(Source::Dns {
                    name: name.clone(),
                    port: *port,
                    resolver,
                    own: config.advertise_url.clone(),
                }))
            }
        };
        let m = Membership {
            roster_path: config.data_dir.join("peers.json"),
            config,
            peers,
            metrics,
            health,
            shared_dir,
            source,
            heartbeats,
            inner: Mutex::new(Inner::default()),
            scope,
        };
        if m.source.is_some() {
            m.load_roster();
        }
        Ok(m)
    }

    fn expired(&self, absent_since_ms: u64, now: u64) -> bool {
        state::expired(absent_since_ms, now, self.config.peers.retain_absent)
    }

    fn forget(&self, key: &str) {
        Self::forgotten(key, self.peers.forget(key));
    }

    fn forgotten(key: &str, result: Result<(), super::outbox::OutboxError>) {
        match result {
            Ok(()) => {
                tracing::info!(peer = %key, "absent longer than peerInfo.retainAbsent: its queue is deleted")
            }
            Err(e) => {
                tracing::error!(peer = %key, error = %e, "cannot delete an absent peer's queue")
            }
        }
    }

    /// Starts the rounds in this membership's scope.
    pub fn start(self: &Arc<Self>) {
        self.scope
            .spawn(self.clone().run(self.scope.token().clone()));
    }

    /// Heartbeats, discovery, probes and expiry until `stop`; the first round is followed by
    /// the catch-up that turns `/health` from "catching up" to healthy.
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let tick = self.config.peers.heartbeat.max(Duration::from_millis(20));
        let dns_every = match &self.config.peers.discovery {
            Discovery::Dns { interval, .. } => *interval,
            _ => tick,
        };
        let mut next_resolve = Instant::now();
        let mut first = true;
        loop {
            let resolve = Instant::now() >= next_resolve;
            if resolve {
                next_resolve = Instant::now() + dns_every;
            }
            // A hung peer or NFS server must not hold up a shutdown: the round is abandoned.
            tokio::select! {
                _ = self.round(resolve) => {}
                _ = stop.cancelled() => return,
            }
            if first {
                first = false;
                self.scope.spawn(self.clone().catch_up(stop.clone()));
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn round(&self, resolve: bool) {
        self.write_heartbeat(false).await;
        if resolve {
            self.discover().await;
        }
        self.probe_all().await;
        self.expire().await;
        self.save_roster().await;
    }

    async fn write_heartbeat(&self, leaving: bool) {
        let Some(hb) = self.heartbeats.clone() else {
            return;
        };
        match self.shared_dir.run(move || hb.write(leaving)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write this node's heartbeat"),
            Err(e) => tracing::warn!(error = %e, "heartbeat task failed"),
        }
    }

    async fn discover(&self) {
        let Some(src) = self.source.clone() else {
            return;
        };
        // Shared-fs discovery reads the shared directory: through the bulkhead. DNS lookups
        // block too but on another resource; they keep their own blocking thread.
        let found = if matches!(*src, Source::SharedFs { .. }) {
            self.shared_dir.run(move || src.discover()).await
        } else {
            tokio::task::spawn_blocking(move || src.discover())
                .await
                .map_err(|e| SharedDirError::Failed(e.to_string()))
        };
        match found {
            Ok(Ok(found)) => self.reconcile(found),
            Err(e) => tracing::warn!(error = %e, "discovery task failed"),
            Ok(Err(e)) => {
                tracing::warn!(strategy = self.config.peers.discovery.name(), error = %e, "discovery failed; keeping the current peers")
            }
        }
    }

    fn reconcile(&self, found: Vec<Found>) {
        let selves = self.inner.locked().selves.clone();
        let mut listed = HashSet::new();
        for f in found {
            if selves.contains(&f.key) {
                continue;
            }
            listed.insert(f.key.clone());
            match f.presence {
                Presence::Fresh => self.present(&f),
                Presence::Leaving => self.absent(
                    &f.key,
                    MemberState::Left,
                    "its heartbeat says it is leaving",
                ),
                Presence::Stale => self.absent(
                    &f.key,
                    MemberState::Failed,
                    "its heartbeat stopped without a leave",
                ),
            }
        }
        let gone_state = match self.config.peers.discovery {
            // Only a graceful stop removes a heartbeat file; a crash leaves it to go stale.
            Discovery::SharedFs { .. } => MemberState::Left,
            _ => MemberState::Failed,
        };
        for p in self.peers.list() {
            if !listed.contains(&p.key) {
                let why = "discovery no longer lists it";
                if p.status().state == MemberState::Up {
                    self.absent(&p.key, gone_state, why);
                } else {
                    self.peers.set_absent(&p.key);
                }
            }
        }
    }

    fn present(&self, f: &Found) {
        let (peer, new) = match self.peers.set_present(&f.key, f.url.clone()) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(peer = %f.key, error = %e, "cannot open the queue of a discovered peer");
                return;
            }
        };
        if let Some(id) = &f.instance_id {
            peer.set_instance_id(id);
        }
        if new {
            tracing::info!(peer = %f.key, url = %f.url, "peer appeared: forwarding from now on");
        }
        self.became_up(&peer);
    }

    fn became_up(&self, peer: &Arc<Peer>) {
        let old = peer.set_state(MemberState::Up);
        self.inner.locked().unreachable.answered(&peer.key);
        self.carry_out(peer, state::transition(old, MemberState::Up), "");
    }

    fn absent(&self, key: &str, state: MemberState, why: &str) {
        let Some(peer) = self.peers.get(key) else {
            return; // never knew it: a stale or leaving file of a node we never forwarded to
        };
        if self.source.is_some() {
            self.peers.set_absent(key);
        }
        self.set_down(&peer, state, why);
    }

    fn set_down(&self, peer: &Arc<Peer>, down: MemberState, why: &str) {
        let old = peer.set_state(down);
        self.carry_out(peer, state::transition(old, down), why);
    }

    /// Says what a change of a peer's state means: logs, the failure metric, alerts, and a
    /// wake of the forwarder of a peer that is back.
    fn carry_out(&self, peer: &Arc<Peer>, t: state::Transition, why: &str) {
        use state::Transition;
        match t {
            Transition::Unchanged => {}
            Transition::Recovered => {
                tracing::info!(peer = %peer.key, pending = peer.queue.stats().pending, "failed peer recovered");
                self.alert("peer_recovered", peer, "the peer is back");
                peer.wake();
            }
            Transition::Rejoined => {
                tracing::info!(peer = %peer.key, pending = peer.queue.stats().pending, "peer rejoined");
                peer.wake();
            }
            Transition::Failed => {
                tracing::warn!(peer = %peer.key, url = %peer.url(), reason = why, "peer failed: it vanished without leaving; its messages are kept");
                self.metrics
                    .peer_failures
                    .get_or_create(&Metrics::peer(&peer.key))
                    .inc();
                self.alert("peer_failed", peer, why);
            }
            Transition::Left => {
                tracing::info!(peer = %peer.key, reason = why, "peer left gracefully; its messages are kept")
            }
        }
    }

    /// A signed leave from a peer (`POST /v1/peer/leave`).
    pub fn on_leave(&self, hello: &Hello) -> bool {
        let url = url::Url::parse(&hello.listen_url).ok();
        let Some(peer) = self.peers.find(&hello.instance_id, url.as_ref()) else {
            return false;
        };
        peer.set_instance_id(&hello.instance_id);
        if self.source.is_some() {
            self.peers.set_absent(&peer.key);
        }
        self.set_down(&peer, MemberState::Left, "it said goodbye");
        true
    }

    /// A peer asking how much this node still holds for it (`POST /v1/peer/backlog`): wakes the
    /// forwarder so a restarted peer catches up at once. `None` if the asker is unknown.
    pub fn on_backlog(&self, hello: &Hello) -> Option<u64> {
        let url = url::Url::parse(&hello.listen_url).ok();
        let peer = self.peers.find(&hello.instance_id, url.as_ref())?;
        peer.set_instance_id(&hello.instance_id);
        peer.wake();
        Some(peer.queue.stats().pending)
    }

    /// Static and dns peers: a failed readiness probe for longer than `ttl` means failed; a
    /// ready answer means up. (shared-fs peers are judged by their heartbeats.)
    async fn probe_all(&self) {
        if matches!(self.config.peers.discovery, Discovery::SharedFs { .. }) {
            return;
        }
        let timeout = self
            .config
            .http
            .connection_timeout
            .min(self.config.peers.heartbeat)
            .max(Duration::from_millis(200));
        let client = self.peers.client();
        let present: Vec<_> = self
            .peers
            .list()
            .into_iter()
            .filter(|p| p.is_forwarding())
            .collect();
        let probes = present.iter().map(|p| {
            let url = p.url();
            async move { client.probe(&url, timeout).await }
        });
        let results = futures_util::future::join_all(probes).await;
        for (peer, probe) in present.iter().zip(results) {
            self.judge(peer, probe);
        }
    }

    fn judge(&self, peer: &Arc<Peer>, probe: Probe) {
        match probe {
            Probe::Ready(Some(id)) | Probe::NotReady(Some(id)) if id == self.config.instance_id => {
                tracing::warn!(peer = %peer.key, "this peer address is this node itself; not a peer");
                self.inner.locked().selves.insert(peer.key.clone());
                self.forget(&peer.key);
            }
            Probe::Ready(id) => {
                if let Some(id) = id {
                    peer.set_instance_id(&id);
                }
                self.became_up(peer);
            }
            Probe::NotReady(_) => {
                self.inner.locked().unreachable.answered(&peer.key);
            }
            Probe::Unreachable(why) => {
                let failed = self.inner.locked().unreachable.failed(
                    &peer.key,
                    tokio::time::Instant::now(),
                    self.config.peers.ttl,
                );
                if failed && peer.status().state == MemberState::Up {
                    let why = format!("unreachable for more than peerInfo.shared-fs.ttl: {why}");
                    self.set_down(peer, MemberState::Failed, &why);
                }
            }
        }
    }

    /// Deletes the queues of peers absent beyond `retainAbsent` (file deletions, on a
    /// blocking thread).
    async fn expire(&self) {
        let now = now_ms();
        for p in self.peers.list() {
            if p.status()
                .absent_since_ms
                .is_some_and(|since| self.expired(since, now))
            {
                let (peers, key) = (self.peers.clone(), p.key.clone());
                let r = tokio::task::spawn_blocking(move || peers.forget(&key))
                    .await
                    .unwrap_or_else(|e| {
                        Err(super::outbox::OutboxError::Io(
                            "outbox".into(),
                            std::io::Error::other(e),
                        ))
                    });
                Self::forgotten(&p.key, r);
            }
        }
    }

    fn alert(&self, event: &'static str, peer: &Arc<Peer>, why: &str) {
        let Some(url) = self.config.alert_webhook.clone() else {
            return;
        };
        let s = peer.status();
        let body = serde_json::json!({
            "event": event,
            "node": self.config.instance_id,
            "peer": peer.key,
            "peer_instance_id": s.instance_id,
            "peer_url": peer.url().as_str(),
            "state": s.state.as_str(),
            "reason": why,
            "outbox_depth": peer.queue.stats().pending,
            "at_ms": now_ms(),
        });
        self.peers
            .client()
            .spawn_alert(&self.scope, url, body, self.metrics.clone());
    }
}
