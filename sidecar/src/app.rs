//! Wiring: builds one node from a validated [`Config`] and pre-bound listeners. No globals, so a
//! test can start several nodes in one process on `127.0.0.1:0`.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::ServerHandle;

use crate::api::{self, AppState};
use crate::auth::Verifier;
use crate::cache::Caches;
use crate::config::Config;
use crate::event_relay::EventRelay;
use crate::events::{EventLog, EventLogOptions};
use crate::health::Health;
use crate::index::{IndexOptions, IndexStore};
use crate::index_sync::IndexSync;
use crate::lifecycle::Scope;
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
    #[error("cannot set up this node's master: {0}")]
    Master(#[from] crate::gerrit::client::MasterError),
    #[error("{0}")]
    Other(String),
}

/// Opens a store off the executor: opening replays journals, scans segments or takes a first
/// scan of the session tree.
async fn open_blocking<T, E>(
    what: &str,
    open: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<Arc<T>, StartError>
where
    T: Send + 'static,
    E: Send + 'static,
    StartError: From<E>,
{
    let opened = tokio::task::spawn_blocking(open)
        .await
        .map_err(|e| StartError::Other(format!("opening the {what}: {e}")))??;
    Ok(Arc::new(opened))
}

/// The node's local stores, opened before anything serves or forwards.
struct Opened {
    outbox: Arc<Outbox>,
    sessions: Arc<Sessions>,
    events: Arc<EventLog>,
    index: Arc<IndexStore>,
}

impl Opened {
    async fn open(
        config: &Config,
        health: &Health,
        shared_dir: &Arc<SharedDir>,
        metrics: &Arc<Metrics>,
    ) -> Result<Opened, StartError> {
        let disk = health.disk();
        let outbox_opts = OutboxOptions {
            segment_bytes: config.limits.outbox_segment_bytes,
            disk: disk.clone(),
            ..OutboxOptions::default()
        };
        let dir = config.data_dir.clone();
        let outbox = open_blocking("outbox", move || Outbox::open(&dir, outbox_opts)).await?;
        let (dir, cfg, sd, m) = (
            config.shared_dir.clone(),
            config.websession.clone(),
            shared_dir.clone(),
            metrics.clone(),
        );
        let sessions =
            open_blocking("web sessions", move || Sessions::open(&dir, cfg, sd, m)).await?;
        let dir = config.data_dir.join("events");
        let opts = EventLogOptions {
            disk: disk.clone(),
            ..event_log_options(config)
        };
        let events = open_blocking("event log", move || EventLog::open(dir, opts)).await?;
        let dir = config.data_dir.join("index");
        let opts = IndexOptions {
            refresh_interval: config.index.refresh_interval,
            tombstone_ttl: config.index.tombstone_ttl,
            max_doc_bytes: config.index.max_doc_bytes,
            disk: disk.clone(),
        };
        let index = open_blocking("index", move || IndexStore::open(&dir, opts)).await?;
        Ok(Opened {
            outbox,
            sessions,
            events,
            index,
        })
    }
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
    /// Every background task of the node, in one tree of scopes (see `lifecycle`).
    scopes: Scopes,
    handles: Vec<ServerHandle>,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    /// Held until the stores are closed; released last.
    lock: crate::durable::DirLock,
}

/// Creates the data and shared directories and locks the data directory, before anything in
/// it is opened: one process per directory.
fn prepare_dirs(config: &Config) -> Result<crate::durable::DirLock, StartError> {
    let create = |dir: &std::path::Path| {
        std::fs::create_dir_all(dir).map_err(|source| StartError::Dir {
            path: dir.display().to_string(),
            source,
        })
    };
    create(&config.data_dir)?;
    let lock = crate::durable::DirLock::acquire(&config.data_dir)?;
    create(&config.shared_dir)?;
    Ok(lock)
}

/// Starts both listeners' servers in `scope`; their handles stop them gracefully.
fn serve(
    state: &Arc<AppState>,
    listeners: Listeners,
    scope: &Scope,
) -> Result<(Vec<ServerHandle>, SocketAddr, SocketAddr), StartError> {
    let addr = |l: &TcpListener| l.local_addr().map_err(|e| StartError::Other(e.to_string()));
    let (peer_addr, local_addr) = (addr(&listeners.peer)?, addr(&listeners.local)?);
    let io = |source, addr, what| StartError::Bind { what, addr, source };
    let peer_server = api::serve_peer(state.clone(), listeners.peer)
        .map_err(|e| io(e, peer_addr, "listenUrl"))?;
    let local_server = api::serve_local(state.clone(), listeners.local)
        .map_err(|e| io(e, local_addr, "localListenUrl"))?;
    let handles = vec![local_server.handle(), peer_server.handle()];
    scope.spawn(local_server);
    scope.spawn(peer_server);
    Ok((handles, peer_addr, local_addr))
}

/// Starts anti-entropy with the peers' indexes. An empty index catches up from the peers before
/// this node takes traffic (`/health` says "catching up" meanwhile).
fn start_index_sync(state: &AppState, client: PeerClient, scope: &Scope) {
    let stats = state.index.stats();
    let empty = stats.kinds.iter().all(|(_, k)| k.docs + k.tombstones == 0);
    if empty {
        state.health.begin_catch_up("index");
    }
    let config = &state.config;
    let sync = IndexSync {
        store: state.index.clone(),
        peers: state.peers.clone(),
        client,
        metrics: state.metrics.clone(),
        health: state.health.clone(),
        interval: config.index.anti_entropy_interval,
        retry_interval: config.http.retry_interval,
        max_retry_interval: config.http.max_retry_interval,
        max_push_bytes: config.http.max_batch_bytes,
    };
    scope.spawn(sync.run(empty, scope.token().clone()));
}

/// What the node needs to talk to its peers: the receiver of their batches, the verifier of
/// their signatures, TLS, the client of outgoing calls and the forwarders' context.
struct Transport {
    receiver: Receiver,
    verifier: Verifier,
    tls: Arc<NodeTls>,
    client: PeerClient,
    forwarding: ForwarderCtx,
}

impl Transport {
    fn build(
        config: &Config,
        metrics: &Arc<Metrics>,
        stores: Stores,
    ) -> Result<Transport, StartError> {
        let receiver =
            Receiver::new(&config.data_dir, stores, metrics.clone()).map_err(|source| {
                StartError::Dir {
                    path: config.data_dir.join("inbox").display().to_string(),
                    source,
                }
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
        let forwarding = ForwarderCtx {
            origin: config.instance_id.clone(),
            client: client.clone(),
            metrics: metrics.clone(),
            dead: Arc::new(DeadLetters::new(&config.data_dir)),
            max_messages: config.http.max_batch_messages,
            max_bytes: config.http.max_batch_bytes,
            retry_interval: config.http.retry_interval,
            max_retry_interval: config.http.max_retry_interval,
        };
        Ok(Transport {
            receiver,
            verifier,
            tls,
            client,
            forwarding,
        })
    }
}

/// Two of the largest peer bodies in flight at once (authenticated or from senders that do not
/// declare their body's hash); more wait, then 503. In KiB: the semaphore's permits.
fn peer_bodies_kib(config: &Config) -> u32 {
    (config.limits.max_peer_body * 2)
        .div_ceil(1024)
        .min(u32::MAX as usize >> 4) as u32
}

/// Until the event log has fetched the history it lacks (a wiped or new node): 503 "catching
/// up", and peer batches' events wait. `None` when events are not synchronized.
fn prepare_history(
    state: &AppState,
    client: &PeerClient,
) -> Option<crate::event_history::EventHistory> {
    state.config.event.synchronize.then(|| {
        state.health.begin_catch_up("events");
        state.events.set_restoring(true);
        crate::event_history::EventHistory {
            events: state.events.clone(),
            client: client.clone(),
            health: state.health.clone(),
        }
    })
}

/// Starts the node's background work once its listeners serve: session cleanup, the history
/// restore, membership, the election and index anti-entropy.
fn start_background(
    state: &Arc<AppState>,
    history: Option<crate::event_history::EventHistory>,
    client: PeerClient,
    scopes: &Scopes,
) {
    let config = &state.config;
    state.sessions.spawn_cleanup(&scopes.housekeeping);
    crate::memory::spawn_trimmer(&scopes.housekeeping);
    // 503 "catching up" until the peers have delivered what they held for this node.
    state.health.begin_catch_up("peers");
    if let Some(history) = history {
        let peer_urls: Vec<url::Url> = state.peers.list().iter().map(|p| p.url()).collect();
        let (timeout, stop) = (config.catch_up_timeout, scopes.housekeeping.token().clone());
        scopes.housekeeping.spawn(async move {
            history.run(peer_urls, timeout, stop).await;
        });
    }
    state.membership.start();
    // Hot-standby: the election's rounds run and stop with membership.
    scopes.membership.spawn(
        state
            .election
            .clone()
            .run(scopes.membership.token().clone()),
    );
    if config.index.synchronize {
        start_index_sync(state, client, &scopes.index_sync);
    }
}

/// The node's scopes, one per stop stage, in the order `Node::shutdown` stops them.
struct Scopes {
    root: Scope,
    index_sync: Scope,
    membership: Scope,
    servers: Scope,
    relay: Scope,
    peers: Scope,
    master: Scope,
    housekeeping: Scope,
}

impl Scopes {
    fn new() -> Scopes {
        let root = Scope::root();
        Scopes {
            index_sync: root.child(),
            membership: root.child(),
            servers: root.child(),
            relay: root.child(),
            peers: root.child(),
            master: root.child(),
            housekeeping: root.child(),
            root,
        }
    }
}

impl Node {
    pub async fn start(config: Config, listeners: Listeners) -> Result<Node, StartError> {
        let lock = prepare_dirs(&config)?;
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let caches = Arc::new(Caches::new(config.cache.clone()));
        let health = Arc::new(Health::new(&config.data_dir));
        let shared_dir = Arc::new(SharedDir::new(
            config.limits.shared_dir_concurrency,
            config.limits.shared_dir_timeout,
            metrics.clone(),
        ));
        let Opened {
            outbox,
            sessions,
            events,
            index,
        } = Opened::open(&config, &health, &shared_dir, &metrics).await?;
        let scopes = Scopes::new();
        let master =
            crate::gerrit::Master::open(&config, health.disk().clone(), scopes.master.clone())?
                .map(Arc::new);
        let Transport {
            receiver,
            verifier,
            tls,
            client,
            forwarding,
        } = Transport::build(
            &config,
            &metrics,
            Stores {
                caches: caches.clone(),
                sessions: sessions.clone(),
                events: events.clone(),
                index: index.clone(),
                master: master.as_ref().map(|m| m.queues.clone()),
            },
        )?;
        let peers = Arc::new(Peers::new(outbox.clone(), forwarding, scopes.peers.clone()));
        let membership = Arc::new(Membership::new(
            config.clone(),
            peers.clone(),
            metrics.clone(),
            health.clone(),
            shared_dir.clone(),
            scopes.membership.clone(),
        )?);
        let election = Arc::new(crate::election::Election::new(
            config.clone(),
            peers.clone(),
            health.clone(),
            metrics.clone(),
            scopes.membership.clone(),
        ));
        // Started after membership has added the known peers, so re-queued events reach every peer's queue.
        let relay = config.event.synchronize.then(|| {
            EventRelay::start(
                events.clone(),
                outbox.clone(),
                &config.data_dir,
                &scopes.relay,
            )
        });
        let local = Arc::new(Local {
            caches: caches.clone(),
            index: index.clone(),
            index_synchronize: config.index.synchronize,
            events: events.clone(),
            event_relay: relay,
            sessions: sessions.clone(),
            outbox: outbox.clone(),
            metrics: metrics.clone(),
        });
        let peer_bodies_kib = peer_bodies_kib(&config);
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
            sessions,
            membership,
            election,
            events,
            master: master.clone(),
            stop: scopes.servers.token().child_token(),
            tls,
            peer_bodies: Arc::new(tokio::sync::Semaphore::new(peer_bodies_kib as usize)),
            peer_bodies_kib,
        });
        if let Some(m) = &master {
            m.start(&config, state.metrics.clone(), health.clone());
        }
        // Set before the listeners open, so no newer event can overtake the restored ones.
        let history = prepare_history(&state, &client);
        let (handles, peer_addr, local_addr) = serve(&state, listeners, &scopes.servers)?;
        start_background(&state, history, client, &scopes);
        tracing::info!(
            instance = %config.instance_id,
            listen = %peer_addr,
            local = %local_addr,
            peers = state.peers.list().len(),
            "node started"
        );
        Ok(Node {
            state,
            scopes,
            handles,
            peer_addr,
            local_addr,
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

    /// Graceful stop: health goes 503, an active node steps down, peers are told this node leaves
    /// (and its heartbeat is removed), listeners stop accepting, in-flight requests finish,
    /// forwarders stop, the outbox commits what it holds and closes.
    pub async fn shutdown(self) {
        let scopes = &self.scopes;
        // Stopped first, so a catch-up ending now cannot mark a stopping node ready.
        scopes.index_sync.stop().await;
        self.state.health.set_stopping();
        // Event streams never end by themselves: end them so the drain does not wait on them.
        self.state.stop.cancel();
        scopes.membership.stop().await;
        // An active node gives the role up before the goodbye, which lets the peers elect at once.
        self.state.election.step_down_for_stop();
        self.state.membership.leave().await;
        for h in &self.handles {
            h.stop(true).await;
        }
        scopes.servers.stop().await;
        scopes.relay.stop().await;
        self.state.peers.shutdown().await;
        if let Some(m) = &self.state.master {
            m.shutdown().await;
        }
        scopes.housekeeping.stop().await;
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
        // Every stage has stopped; the root only confirms that nothing else was left running.
        let left = scopes.root.running();
        if tokio::time::timeout(std::time::Duration::from_secs(1), scopes.root.stop())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = left,
                "background tasks still running after the stop"
            );
        }
        drop(self.lock);
        tracing::info!(instance = %self.state.config.instance_id, "node stopped");
    }
}
