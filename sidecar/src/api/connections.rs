//! The connection bound of a listener, with a reserve (issue 14): a flood of clients cannot take
//! the descriptors the stores need, nor the slots `/health`, `/readyz`, `/metrics` and the peers'
//! `/v1/peer/*` traffic need.
//!
//! * **Descriptor budget.** At start the open-files limit is raised to the hard limit
//!   (`app::raise_open_files_limit`); `sidecar.fileDescriptorReserve` descriptors of it are kept
//!   for the stores (outbox, event log, index, inbox marks, logs) and outgoing connections, and
//!   the rest is split between the two listeners. `sidecar.maxConnections` (0: the whole split)
//!   is the most connections one listener holds: actix stops accepting there (`max_connections`
//!   per worker), so further clients wait in the kernel's backlog and use no descriptor here.
//! * **Reserve.** The last `sidecar.reservedConnections` of them are for the reserved paths: a
//!   connection accepted while the listener holds more than `maxConnections −
//!   reservedConnections` is on probation. Its requests for other paths are answered `503` with
//!   `Connection: close` (also after a reserved one); if it has sent no reserved request within
//!   [`PROBATION`], its socket is shut down. So idle or slow clients above the soft limit free their slot within [`PROBATION`]
//!   and a load balancer's probe or a peer's batch queued behind them gets in. A real client
//!   sends its request with (plain) or right after (TLS: `on_connect` follows the handshake) the
//!   last packet of the connection's setup, so 0.1 s is ample; a client that waited in the
//!   backlog has its request already there. Clients beyond `maxConnections` wait in the backlog;
//!   a connection accepted while the listener is full (every slot taken) is one of them, so its
//!   probation is [`PROBATION_FULL`], and during a flood the backlog drains at
//!   `reservedConnections` per [`PROBATION_FULL`] (a probe queued behind 550 idle flooders with
//!   50 reserved slots: about 0.2 s).
//! * **Counting.** `on_connect` counts a connection and leaves a [`Conn`] in its extensions; the
//!   count drops when actix drops the connection. `ha_connections{listener}` is the count,
//!   `ha_connections_refused_total{listener,reason}` the refusals (`request`: a `503`, `idle`: a
//!   probation that ended).

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// How long a connection accepted above the soft limit may stay without a reserved request.
pub const PROBATION: Duration = Duration::from_millis(100);
/// The same for a connection accepted while the listener is full: it waited in the kernel's
/// backlog for a slot, so a real client's request is already in its socket when it is accepted.
pub const PROBATION_FULL: Duration = Duration::from_millis(20);

/// The listeners the descriptor budget is split between.
const LISTENERS: usize = 2;

/// The most connections one listener may hold: `configured` (0: no own limit) within its share
/// of the open-files limit `nofile` once `fd_reserve` descriptors are kept back (at most half of
/// `nofile`, so a low limit still leaves connections).
pub fn connection_limit(nofile: u64, fd_reserve: usize, configured: usize) -> usize {
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    let spare = nofile.saturating_sub(fd_reserve.min(nofile / 2));
    let share = (spare / LISTENERS).max(1);
    match configured {
        0 => share,
        n => n.min(share),
    }
}

/// The open-files limit now (the soft one, after the start raised it).
pub fn open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Paths served on any connection, also above the soft limit.
pub fn is_reserved(path: &str) -> bool {
    matches!(path, "/health" | "/readyz" | "/metrics") || path.starts_with("/v1/peer/")
}

/// One listener's connections.
pub struct Connections {
    listener: &'static str,
    open: AtomicUsize,
    /// Most connections (actix's bound, summed over the workers).
    pub hard: usize,
    /// Above this many, a new connection is on probation.
    pub soft: usize,
    gauge: Gauge,
    refused_request: Counter,
    refused_idle: Counter,
}

impl Connections {
    /// The bound of `listener` from the config's keys and the open-files limit `nofile`.
    pub fn new(
        listener: &'static str,
        limits: &crate::config::Limits,
        nofile: u64,
        metrics: &Metrics,
    ) -> Arc<Connections> {
        let hard = connection_limit(nofile, limits.fd_reserve, limits.max_connections);
        let reserved = limits.reserved_connections.min(hard / 2);
        if limits.max_connections > hard {
            tracing::warn!(
                listener,
                configured = limits.max_connections,
                limit = hard,
                nofile,
                "sidecar.maxConnections lowered to fit the open-files limit"
            );
        }
        tracing::info!(listener, max = hard, reserved, nofile, "connection limit");
        let m = &metrics.connections;
        Arc::new(Connections {
            listener,
            open: AtomicUsize::new(0),
            hard,
            soft: hard - reserved,
            gauge: m.open(listener),
            refused_request: m.refused(listener, "request"),
            refused_idle: m.refused(listener, "idle"),
        })
    }

    /// actix's `max_connections` (per worker) for `workers` workers.
    pub fn per_worker(&self, workers: usize) -> usize {
        self.hard.div_ceil(workers.max(1))
    }

    /// Counts a new connection (`on_connect`): its [`Conn`], on probation above the soft limit.
    /// `fd` is its socket, shut down if the probation ends without a reserved request.
    pub fn accept(self: &Arc<Self>, fd: Option<RawFd>) -> Conn {
        let n = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.gauge.inc();
        let state = Rc::new(Cell::new(if n > self.soft {
            State::Probation
        } else {
            State::Admitted
        }));
        if let (State::Probation, Some(fd)) = (state.get(), fd) {
            let probation = if n >= self.hard {
                PROBATION_FULL
            } else {
                PROBATION
            };
            let state = state.clone();
            let this = self.clone();
            // On the connection's own worker thread: the check and the shutdown cannot race the
            // connection's close (which sets `Closed` on this thread), so `fd` is still its socket.
            actix_web::rt::spawn(async move {
                actix_web::rt::time::sleep(probation).await;
                if state.get() == State::Probation {
                    state.set(State::Closed);
                    this.refused_idle.inc();
                    tracing::debug!(
                        listener = this.listener,
                        "idle connection above the soft limit closed"
                    );
                    // SAFETY: `fd` is this open connection's socket (see above); shutdown only
                    // ends its traffic, actix closes the descriptor.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
            });
        }
        Conn {
            conns: self.clone(),
            state,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Below the soft limit: any request is served.
    Admitted,
    /// Above the soft limit, no request yet: reserved paths only, closed after [`PROBATION`].
    Probation,
    /// Above the soft limit, it asked for a reserved path: kept, reserved paths only.
    Reserved,
    Closed,
}

/// A counted connection, in its extensions; dropped with the connection.
pub struct Conn {
    conns: Arc<Connections>,
    state: Rc<Cell<State>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.state.set(State::Closed);
        self.conns.open.fetch_sub(1, Ordering::Relaxed);
        self.conns.gauge.dec();
    }
}

/// Whether this request may be served on its connection; counts a refusal.
pub fn admit(req: &HttpRequest) -> bool {
    let Some(conn) = req.conn_data::<Conn>() else {
        return true;
    };
    match conn.state.get() {
        State::Admitted => true,
        _ if is_reserved(req.path()) => {
            conn.state.set(State::Reserved);
            true
        }
        _ => {
            conn.conns.refused_request.inc();
            false
        }
    }
}

/// The socket of an accepted connection, plain or TLS.
pub fn socket_of(conn: &dyn std::any::Any) -> Option<RawFd> {
    use actix_tls::accept::rustls_0_23::TlsStream;
    use actix_web::rt::net::TcpStream;
    if let Some(s) = conn.downcast_ref::<TcpStream>() {
        return Some(s.as_raw_fd());
    }
    conn.downcast_ref::<TlsStream<TcpStream>>()
        .map(|t| t.get_ref().0.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_fits_the_open_files_limit() {
        // 20,000 open files, 1,024 kept back: 9,488 per listener.
        assert_eq!(connection_limit(20_000, 1024, 0), 9_488);
        assert_eq!(connection_limit(20_000, 1024, 500), 500);
        assert_eq!(connection_limit(20_000, 1024, 50_000), 9_488);
        // A low limit keeps half for the stores.
        assert_eq!(connection_limit(1024, 1024, 0), 256);
        assert_eq!(connection_limit(0, 1024, 0), 1);
    }

    #[test]
    fn reserved_paths() {
        for p in [
            "/health",
            "/readyz",
            "/metrics",
            "/v1/peer/batch",
            "/v1/peer/index/digest",
        ] {
            assert!(is_reserved(p), "{p}");
        }
        for p in [
            "/v1/status",
            "/v1/events/stream",
            "/",
            "/healthz",
            "/v1/peer",
            "/v1/cache/x",
        ] {
            assert!(!is_reserved(p), "{p}");
        }
    }
}
