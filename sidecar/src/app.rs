//! Wiring: builds one node from a validated [`Config`] and pre-bound listeners. No globals, so a
//! test can start several nodes in one process on `127.0.0.1:0`.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::Verifier;
use crate::cache::Caches;
use crate::config::Config;
use crate::event_relay::EventRelay;
use crate::events::{EventLog, EventLogOptions};
use crate::health::Health;
use crate::index::{IndexOptions, IndexStore};
use crate::index_sync::IndexSync;
use crate::local::Local;
use crate::metrics::Metrics;
use crate::peers::client::PeerClient;
use crate::peers::deadletter::DeadLetters;
use crate::peers::forwarder::ForwarderCtx;
use crate::peers::membership::Membership;
use crate::peers::outbox::{Outbox, OutboxOptions};
use crate::peers::Peers;
use crate::receiver::{Receiver, Stores};
use crate::sessions::Sessions;
use crate::shared_dir::SharedDir;
use crate::tls::NodeTls;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Locked(#[from] crate::durable::LockError),
    #[error("cannot open the outbox: {0}")]
    Outbox(#[from] crate::peers::outbox::OutboxError),
    #[error("cannot open the web sessions: {0}")]
    Sessions(#[from] crate::sessions::SessionsError),
    #[error("cannot open the event log: {0}")]
    Events(#[from] crate::events::EventError),
    #[error("cannot open the index: {0}")]
    Index(#[from] crate::index::IndexError),
    #[error("cannot start the peer client: {0}")]
    Client(#[from] crate::peers::client::ClientError),
    #[error("cannot start membership: {0}")]
    Membership(#[from] crate::peers::membership::MembershipError),
    #[error("{0}")]
    Other(String),
}

/// Opens `<dataDirectory>/index` off the executor (it replays the journal).
async fn open_index(
    config: &Config,
    disk: Arc<crate::durable::DiskWatch>,
) -> Result<IndexStore, StartError> {
    let dir = config.data_dir.join("index");
    let opts = IndexOptions {
        refresh_interval: config.index.refresh_interval,
        tombstone_ttl: config.index.tombstone_ttl,
        max_doc_bytes: config.index.max_doc_bytes,
        disk,
    };
    tokio::task::spawn_blocking(move || IndexStore::open(&dir, opts))
        .await
        .map_err(|e| StartError::Other(format!("index open task: {e}")))?
        .map_err(StartError::Index)
}

/// The two listening sockets of a node, bound before the node starts.
pub struct Listeners {
    pub peer: TcpListener,
    pub local: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub fn bind(config: &Config) -> Result<Listeners, StartError> {
        let bind = |what, addr: SocketAddr| {
            TcpListener::bind(addr).map_err(|source| StartError::Bind { what, addr, source })
        };
        Ok(Listeners {
            peer: bind("listenUrl", config.listen.addr)?,
            local: bind("localListenUrl", config.local_listen.addr)?,
        })
    }
}

/// Raises the soft limit of open files to the hard limit (many peers, tailers and clients at
/// once; a flood of connections must not starve the outbox and the logs of descriptors).
/// Process-wide, so the binary calls it at start, not `Node::start`.
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let from = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            tracing::info!(from, to = lim.rlim_max, "raised the open files limit");
        }
    }
}

/// The event log's options from the config. Retention is checked often enough for short
/// test retentions, and at most every 10 s.
pub fn event_log_options(config: &Config) -> EventLogOptions {
    let mut o = EventLogOptions::new(config.instance_id.clone());
    o.retention = config.event.retention;
    o.segment_bytes = config.event.segment_bytes;
    o.max_bytes = config.event.max_bytes;
    o.max_event_bytes = config.event.max_event_bytes;
    // A node whose data directory was lost must not restart its seqs at 1.
    o.seq_from_clock = true;
    o.retention_interval = (config.event.retention / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(10),
    );
    o
}

/// A running node.
pub struct Node {
    state: Arc<AppState>,
    stop_background: CancellationToken,
    background: Vec<tokio::task::JoinHandle<()>>,
    handles: Vec<ServerHandle>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    relay: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    index_sync: Option<tokio::task::JoinHandle<()>>,
    index_sync_stop: CancellationToken,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    membership_stop: CancellationToken,
    membership_task: tokio::task::JoinHandle<()>,
    /// Held until the stores are closed; released last.
    lock: crate::durable::DirLock,
}

impl Node {
    pub async fn start(config: Config, listeners: Listeners) -> Result<Node, StartError> {
        let dir_err = |dir: &std::path::Path| {
            let path = dir.display().to_string();
            move |source| StartError::Dir { path, source }
        };
        std::fs::create_dir_all(&config.data_dir).map_err(dir_err(&config.data_dir))?;
        // Before anything in the data directory is opened: one process per directory.
        let lock = crate::durable::DirLock::acquire(&config.data_dir)?;
        std::fs::create_dir_all(&config.shared_dir).map_err(dir_err(&config.shared_dir))?;
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let caches = Arc::new(Caches::new(config.cache.clone()));
        let health = Arc::new(Health::new(&config.data_dir));
        let outbox_opts = OutboxOptions {
            segment_bytes: config.limits.outbox_segment_bytes,
            disk: health.disk().clone(),
            ..OutboxOptions::default()
        };
        // Opening reads every queue's segments (recovery): off the executor.
        let outbox = {
            let dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || Outbox::open(&dir, outbox_opts))
                .await
                .map_err(|e| StartError::Other(format!("opening the outbox: {e}")))??
        };
        let outbox = Arc::new(outbox);
        let shared_dir = Arc::new(SharedDir::new(
            config.limits.shared_dir_concurrency,
            config.limits.shared_dir_timeout,
            metrics.clone(),
        ));
        let sessions = {
            let (dir, cfg, sd, m) = (
                config.shared_dir.clone(),
                config.websession.clone(),
                shared_dir.clone(),
                metrics.clone(),
            );
            // Opening takes the watcher's first scan of the session tree: off the executor.
            tokio::task::spawn_blocking(move || Sessions::open(&dir, cfg, sd, m))
                .await
                .map_err(|e| StartError::Other(format!("opening the web sessions: {e}")))??
        };
        let sessions = Arc::new(sessions);
        // Opening scans the log's segments and checkpoints: off the executor.
        let events = {
            let dir = config.data_dir.join("events");
            let opts = EventLogOptions {
                disk: health.disk().clone(),
                ..event_log_options(&config)
            };
            tokio::task::spawn_blocking(move || EventLog::open(dir, opts))
                .await
                .map_err(|e| StartError::Other(format!("opening the event log: {e}")))??
        };
        let events = Arc::new(events);
        let index = Arc::new(open_index(&config, health.disk().clone()).await?);
        let master = crate::gerrit::Master::open(&config, health.disk().clone())
            .map_err(StartError::Other)?
            .map(Arc::new);
        let receiver = Receiver::new(
            &config.data_dir,
            Stores {
                caches: caches.clone(),
                sessions: sessions.clone(),
                events: events.clone(),
                index: index.clone(),
                master: master.as_ref().map(|m| m.queues.clone()),
            },
            metrics.clone(),
        )
        .map_err(|source| StartError::Dir {
            path: config.data_dir.join("inbox").display().to_string(),
            source,
        })?;
        let verifier = Verifier::new(config.auth.secrets.clone(), config.auth.max_clock_skew);
        let tls =
            Arc::new(NodeTls::load(&config.tls).map_err(|e| StartError::Other(e.to_string()))?);
        let client = PeerClient::new(
            &config.http,
            config.auth.secrets.first().cloned(),
            &config.instance_id,
            tls.client(),
        )?;
        let peers = Arc::new(Peers::new(
            outbox.clone(),
            ForwarderCtx {
                origin: config.instance_id.clone(),
                client: client.clone(),
                metrics: metrics.clone(),
                dead: Arc::new(DeadLetters::new(&config.data_dir)),
                max_messages: config.http.max_batch_messages,
                max_bytes: config.http.max_batch_bytes,
                retry_interval: config.http.retry_interval,
                max_retry_interval: config.http.max_retry_interval,
            },
            CancellationToken::new(),
        ));
        let membership = Arc::new(Membership::new(
            config.clone(),
            peers.clone(),
            metrics.clone(),
            health.clone(),
            shared_dir.clone(),
        )?);
        // Started after membership has added the known peers, so re-queued events reach every peer's queue.
        let relay = config.event.synchronize.then(|| {
            let stop = CancellationToken::new();
            let (relay, task) = EventRelay::start(
                events.clone(),
                outbox.clone(),
                &config.data_dir,
                stop.clone(),
            );
            (relay, stop, task)
        });
        let local = Arc::new(Local {
            caches: caches.clone(),
            index: index.clone(),
            index_synchronize: config.index.synchronize,
            events: events.clone(),
            event_relay: relay.as_ref().map(|(r, _, _)| r.clone()),
            sessions: sessions.clone(),
            outbox: outbox.clone(),
            metrics: metrics.clone(),
        });
        // Two of the largest peer bodies in flight at once (authenticated or from senders that
        // do not declare their body's hash); more wait, then 503.
        let peer_bodies_kib = (config.limits.max_peer_body * 2)
            .div_ceil(1024)
            .min(u32::MAX as usize >> 4) as u32;
        let state = Arc::new(AppState {
            config: config.clone(),
            caches,
            index: index.clone(),
            outbox,
            local,
            peers,
            receiver: Arc::new(receiver),
            verifier: Arc::new(verifier),
            metrics,
            health: health.clone(),
            sessions: sessions.clone(),
            membership: membership.clone(),
            events,
            master: master.clone(),
            stop: CancellationToken::new(),
            tls,
            peer_bodies: Arc::new(tokio::sync::Semaphore::new(peer_bodies_kib as usize)),
            peer_bodies_kib,
        });
        if let Some(m) = &master {
            m.start(&config, state.metrics.clone(), health.clone());
        }
        let peer_addr = listeners
            .peer
            .local_addr()
            .map_err(|e| StartError::Other(e.to_string()))?;
        let local_addr = listeners
            .local
            .local_addr()
            .map_err(|e| StartError::Other(e.to_string()))?;
        // Until the event log has fetched the history it lacks (a wiped or new node): 503
        // "catching up", and peer batches' events wait (set before the listeners open, so no
        // newer event can overtake the restored ones).
        let history = config.event.synchronize.then(|| {
            health.begin_catch_up("events");
            state.events.set_restoring(true);
            crate::event_history::EventHistory {
                events: state.events.clone(),
                client: client.clone(),
                health: health.clone(),
            }
        });
        let io = |source, addr, what| StartError::Bind { what, addr, source };
        let peer_server = api::serve_peer(state.clone(), listeners.peer)
            .map_err(|e| io(e, peer_addr, "listenUrl"))?;
        let local_server = api::serve_local(state.clone(), listeners.local)
            .map_err(|e| io(e, local_addr, "localListenUrl"))?;
        let handles = vec![local_server.handle(), peer_server.handle()];
        let servers = vec![tokio::spawn(local_server), tokio::spawn(peer_server)];
        let stop_background = CancellationToken::new();
        let mut background = vec![sessions.spawn_cleanup(stop_background.clone())];
        // 503 "catching up" until the peers have delivered what they held for this node.
        health.begin_catch_up("peers");
        if let Some(history) = history {
            let peer_urls: Vec<url::Url> = state.peers.list().iter().map(|p| p.url()).collect();
            let (timeout, stop) = (config.catch_up_timeout, stop_background.clone());
            background.push(tokio::spawn(async move {
                history.run(peer_urls, timeout, stop).await;
            }));
        }
        let membership_stop = CancellationToken::new();
        let membership_task = tokio::spawn(membership.run(membership_stop.clone()));
        let index_sync_stop = CancellationToken::new();
        let mut index_sync = None;
        if config.index.synchronize {
            // An empty index catches up from the peers before this node takes traffic.
            let stats = index.stats();
            let empty = stats.kinds.iter().all(|(_, k)| k.docs + k.tombstones == 0);
            if empty {
                health.begin_catch_up("index");
            }
            let sync = IndexSync {
                store: index.clone(),
                peers: state.peers.clone(),
                client,
                metrics: state.metrics.clone(),
                health: health.clone(),
                interval: config.index.anti_entropy_interval,
                retry_interval: config.http.retry_interval,
                max_retry_interval: config.http.max_retry_interval,
                max_push_bytes: config.http.max_batch_bytes,
            };
            index_sync = Some(tokio::spawn(sync.run(empty, index_sync_stop.clone())));
        }
        tracing::info!(
            instance = %config.instance_id,
            listen = %peer_addr,
            local = %local_addr,
            peers = state.peers.list().len(),
            "node started"
        );
        Ok(Node {
            state,
            stop_background,
            background,
            handles,
            servers,
            relay: relay.map(|(_, stop, task)| (stop, task)),
            index_sync,
            index_sync_stop,
            peer_addr,
            local_addr,
            membership_stop,
            membership_task,
            lock,
        })
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// `http(s)://addr/` of the peer/ops listener.
    pub fn peer_url(&self) -> String {
        let scheme = self.state.config.listen.url.scheme();
        format!("{scheme}://{}/", self.peer_addr)
    }

    /// `http(s)://addr/` of the local API listener.
    pub fn local_url(&self) -> String {
        let scheme = self.state.config.local_listen.url.scheme();
        format!("{scheme}://{}/", self.local_addr)
    }

    /// Graceful stop: health goes 503, peers are told this node leaves (and its heartbeat is
    /// removed), listeners stop accepting, in-flight requests finish,
    /// forwarders stop, the outbox commits what it holds and closes.
    pub async fn shutdown(self) {
        // Stopped first, so a catch-up ending now cannot mark a stopping node ready.
        self.index_sync_stop.cancel();
        if let Some(t) = self.index_sync {
            let _ = t.await;
        }
        self.state.health.set_stopping();
        // Event streams never end by themselves: end them so the drain does not wait on them.
        self.state.stop.cancel();
        self.membership_stop.cancel();
        let _ = self.membership_task.await;
        self.state.membership.leave().await;
        for h in &self.handles {
            h.stop(true).await;
        }
        for s in self.servers {
            let _ = s.await;
        }
        if let Some((stop, task)) = self.relay {
            stop.cancel();
            let _ = task.await;
        }
        self.state.peers.shutdown().await;
        if let Some(m) = &self.state.master {
            m.shutdown().await;
        }
        self.stop_background.cancel();
        for task in self.background {
            // A cleanup pass in progress finishes on its blocking thread; don't wait for it.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), task).await;
        }
        let sessions = self.state.sessions.clone();
        let _ = tokio::task::spawn_blocking(move || sessions.stop_watching()).await;
        let outbox = self.state.outbox.clone();
        let _ = tokio::task::spawn_blocking(move || outbox.shutdown()).await;
        if let Err(e) = self.state.events.shutdown().await {
            tracing::error!(error = %e, "closing the event log failed");
        }
        if let Err(e) = self.state.index.shutdown().await {
            tracing::error!(error = %e, "index did not close cleanly; its journal replays at the next start");
        }
        drop(self.lock);
        tracing::info!(instance = %self.state.config.instance_id, "node stopped");
    }
}
