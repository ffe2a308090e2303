//! Peers: who this node forwards to, their durable outboxes, forwarders and delivery status.
//! The flow is one way: local API → outbox → forwarder → client → the peer's API.

pub mod client;
pub mod deadletter;
pub mod forwarder;
pub mod outbox;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use outbox::{Outbox, OutboxError, Queue};

/// Delivery status of one peer, as `/v1/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerStatus {
    pub reachable: Option<bool>,
    pub last_success_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    pub consecutive_failures: u64,
}

pub struct Peer {
    /// The peer's identity for queues, metrics and logs: its URL.
    pub key: String,
    pub url: url::Url,
    pub queue: Arc<Queue>,
    status: Mutex<PeerStatus>,
    stop: CancellationToken,
}

impl Peer {
    pub fn status(&self) -> PeerStatus {
        self.status.lock().expect("status lock").clone()
    }

    fn record_success(&self) {
        let mut s = self.status.lock().expect("status lock");
        s.reachable = Some(true);
        s.last_success_ms = Some(outbox::now_ms());
        s.consecutive_failures = 0;
    }

    fn record_failure(&self, why: &str) {
        let mut s = self.status.lock().expect("status lock");
        s.reachable = Some(false);
        s.last_error = Some(why.to_owned());
        s.last_error_ms = Some(outbox::now_ms());
        s.consecutive_failures += 1;
    }
}

/// The set of peers and their forwarders.
pub struct Peers {
    outbox: Arc<Outbox>,
    ctx: Arc<forwarder::ForwarderCtx>,
    peers: Mutex<BTreeMap<String, Arc<Peer>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shutdown: CancellationToken,
}

impl Peers {
    pub fn new(
        outbox: Arc<Outbox>,
        ctx: forwarder::ForwarderCtx,
        shutdown: CancellationToken,
    ) -> Self {
        Peers {
            outbox,
            ctx: Arc::new(ctx),
            peers: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
            shutdown,
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Adds a peer (keeping its on-disk backlog, if any) and starts its forwarder.
    pub fn add(&self, url: url::Url) -> Result<Arc<Peer>, OutboxError> {
        let key = url.to_string();
        if let Some(p) = self.peers.lock().expect("peers lock").get(&key) {
            return Ok(p.clone());
        }
        let queue = self.outbox.add_peer(&key)?;
        let peer = Arc::new(Peer {
            key: key.clone(),
            url,
            queue,
            status: Mutex::new(PeerStatus::default()),
            stop: self.shutdown.child_token(),
        });
        self.peers
            .lock()
            .expect("peers lock")
            .insert(key.clone(), peer.clone());
        let task = tokio::spawn(forwarder::run(
            peer.clone(),
            self.ctx.clone(),
            peer.stop.clone(),
        ));
        self.tasks.lock().expect("tasks lock").push(task);
        tracing::info!(peer = %key, pending = peer.queue.stats().pending, "forwarding to peer");
        Ok(peer)
    }

    /// Stops forwarding to a peer; its queue files stay on disk.
    pub fn remove(&self, key: &str) {
        if let Some(p) = self.peers.lock().expect("peers lock").remove(key) {
            p.stop.cancel();
            self.outbox.remove_peer(key);
        }
    }

    pub fn list(&self) -> Vec<Arc<Peer>> {
        self.peers
            .lock()
            .expect("peers lock")
            .values()
            .cloned()
            .collect()
    }

    /// Refreshes the per-peer gauges before a scrape.
    pub fn update_gauges(&self, m: &crate::metrics::Metrics) {
        let now = outbox::now_ms();
        for p in self.list() {
            let s = p.queue.stats();
            let label = crate::metrics::Metrics::peer(&p.key);
            m.outbox_depth.get_or_create(&label).set(s.pending as i64);
            let age = s
                .oldest_pending_ms
                .map(|t| now.saturating_sub(t) as f64 / 1000.0)
                .unwrap_or(0.0);
            m.outbox_oldest_age_seconds.get_or_create(&label).set(age);
        }
    }

    /// Stops every forwarder and waits for them (in-flight sends are abandoned; they are
    /// re-sent after restart and dropped by the receiver as duplicates).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let tasks: Vec<_> = self.tasks.lock().expect("tasks lock").drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}
