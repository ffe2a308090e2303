//! Web sessions on real nodes (shared directory on the local disk): creates/s per sync mode,
//! reads/s from the read cache and from the files, and in the same run Debian's `redis-server`
//! — what an operator would pick instead — with session-sized values at the same concurrency:
//! SET with `appendfsync always` and with `everysec` (the comparable durabilities), SET
//! without, GET.
//!
//! **Fair by construction.** Both servers are driven the same way, from the same process, on the
//! same two cores: [`CONCURRENCY`] workers, one keep-alive TCP connection each, one request in
//! flight per connection (no pipelining on either side), each request written with one
//! `write_all` and its answer read in full before the next. The clients are equally lean: a
//! hand-written HTTP/1.1 client ([`Http`]: request bytes out, status line + headers + a
//! `Content-Length`-framed body in) for the sidecar, a hand-written RESP client ([`Resp`]) for
//! Redis; no client crate on either side (an earlier version drove the sidecar with reqwest,
//! whose per-request cost on these shared cores was charged to the sidecar). What remains
//! different is the protocol itself — HTTP/1.1 headers and JSON versus RESP — which is the
//! comparison an operator makes. Both servers run for the whole part, and each compared pair
//! of figures is measured in [`SLICES`] alternated slices (sidecar, Redis, sidecar, ...), so
//! the load of other processes on this shared machine falls on both sides alike.
//!
//! Creates are measured for each `websession.sync` mode, each beside the Redis setting that
//! promises the same: `sync = always` (a `201` means the file is fsync'd) beside Redis with
//! `appendonly yes, appendfsync always` (it `fdatasync`s its log once per event-loop iteration
//! for every client served in it), and `sync = batched` (a `201` means the file is in place,
//! fsync'd within `syncInterval`, 1 s) beside a second Redis with `appendfsync everysec`. Each
//! mode runs on a node of its own (both up for the whole create part), so the four phases
//! alternate slice by slice. The batched node is stopped before the read phases, and those start
//! once the remaining node's watcher has worked through the creates' inotify events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::{api, mesh_specs, Proc};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::redis::{Redis, Resp};
use crate::report::Report;
use crate::Budget;

/// Concurrent clients, for the sidecar and for Redis alike.
const CONCURRENCY: usize = 16;
/// Bytes of the master's extra fields in each session (a realistic session file is ~0.5 KiB).
const EXTRA_BYTES: usize = 300;

pub async fn run(report: &mut Report, budget: Budget) -> anyhow::Result<()> {
    eprintln!(
        "web sessions: one node per sync mode, {CONCURRENCY} clients, {SLICES} alternated slices"
    );
    let dir = tempfile::tempdir()?;
    let specs = mesh_specs(dir.path(), 1, "");
    let node = Proc::spawn(&specs[0], dir.path(), &[]);
    // A second single node, `websession.sync = batched`, on a shared directory of its own.
    let bdir = tempfile::tempdir()?;
    let bspecs = mesh_specs(bdir.path(), 1, "[websession]\n  sync = batched\n");
    let batched = Proc::spawn(&bspecs[0], bdir.path(), &[]);
    let h = integration::http();
    node.wait_ready(&h).await;
    batched.wait_ready(&h).await;
    let port = specs[0].local_port;
    let bport = bspecs[0].local_port;
    // Redis beside each mode: `appendfsync always` (a reply means fsync'd) and `everysec`
    // (fsync'd within a second, like `sync = batched`).
    let redis = match Redis::start(Some(dir.path())) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("  redis figures skipped: {e} (make deps-bench installs redis-server)");
            None
        }
    };
    let everysec = match &redis {
        Some(_) => {
            let r = Redis::start(Some(bdir.path()))?;
            let mut c = Resp::connect(r.port).await?;
            c.call(&[b"CONFIG", b"SET", b"appendfsync", b"everysec"])
                .await?;
            Some(r)
        }
        None => None,
    };
    let slice = budget.sustain / SLICES;
    // A session-sized value: what a session file holds.
    let value: Arc<[u8]> = vec![b'v'; 200 + EXTRA_BYTES].into();

    let create_body: Arc<[u8]> = serde_json::to_vec(
        &serde_json::json!({ "account_id": 1000, "user_agent": "p".repeat(EXTRA_BYTES) }),
    )?
    .into();
    // Each node's created tokens, kept apart: only the `always` node's are read below.
    let creates = |tokens: Arc<std::sync::Mutex<Vec<String>>>| {
        let body = create_body.clone();
        move |mut c: Http, _: usize, _: u64| {
            let (body, tokens) = (body.clone(), tokens.clone());
            async move {
                let status = c.call("POST", "/v1/sessions", Some(&body)).await?;
                let ok = status == 201;
                if ok {
                    let token = created_token(&c.body)?;
                    tokens.lock().unwrap().push(token);
                }
                Ok::<_, anyhow::Error>((c, ok))
            }
        }
    };
    let tokens = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let create = creates(tokens.clone());
    let create_batched = creates(Arc::default());
    let mut rates = [Rate::default(); 4];
    for _ in 0..SLICES {
        rates[0] += http_phase(port, slice, create.clone()).await?;
        if let Some(r) = &redis {
            rates[1] += redis_phase(r.port, slice, false, &value).await?;
        }
        rates[2] += http_phase(bport, slice, create_batched.clone()).await?;
        if let Some(r) = &everysec {
            rates[3] += redis_phase(r.port, slice, false, &value).await?;
        }
    }
    let [ours, theirs, ours_batched, theirs_everysec] = rates;
    report.set("session_creates_per_s", ours.per_s());
    report.set("session_creates_per_s_batched", ours_batched.per_s());
    if redis.is_some() {
        report.set("redis_set_fsync_per_s", theirs.per_s());
        report.set("redis_set_everysec_per_s", theirs_everysec.per_s());
    }
    // What the batched node's deferred fsyncs looked like (a round slower than half the bound
    // makes writers wait for their own fsync).
    let bpeer = bspecs[0].peer_url();
    eprintln!(
        "  batched node: {} sync rounds, last {:.3} s, {} pending",
        api::metric(&h, &bpeer, "ha_session_sync_rounds_total", &[]).await,
        api::metric(&h, &bpeer, "ha_session_sync_last_round_seconds", &[]).await,
        api::metric(&h, &bpeer, "ha_session_sync_pending", &[]).await,
    );
    // The batched node's deferred fsyncs and its watcher's backlog must not run during the
    // read phases of the other node.
    drop(everysec);
    drop(batched);
    if let Some(r) = &redis {
        let mut c = Resp::connect(r.port).await?;
        c.call(&[b"CONFIG", b"SET", b"appendonly", b"no"]).await?;
        let set = redis_phase(r.port, budget.sustain, false, &value).await?;
        report.set("redis_set_per_s", set.per_s());
    }
    let peer = specs[0].peer_url();
    settle(&h, &peer).await;

    let hot: Arc<Vec<String>> = Arc::new(
        tokens
            .lock()
            .unwrap()
            .iter()
            .take(100)
            .map(|t| format!("/v1/sessions/{t}"))
            .collect(),
    );
    anyhow::ensure!(!hot.is_empty(), "no session was created");
    let cached = move |mut c: Http, w: usize, i: u64| {
        let hot = hot.clone();
        async move {
            let path = &hot[(w * 7 + i as usize) % hot.len()];
            let ok = c.call("GET", path, None).await? == 200;
            Ok::<_, anyhow::Error>((c, ok))
        }
    };
    let (mut ours, mut theirs) = (Rate::default(), Rate::default());
    for _ in 0..SLICES {
        ours += http_phase(port, slice, cached.clone()).await?;
        if let Some(r) = &redis {
            theirs += redis_phase(r.port, slice, true, &value).await?;
        }
    }
    report.set("session_reads_per_s_cached", ours.per_s());
    if redis.is_some() {
        report.set("redis_get_per_s", theirs.per_s());
    }
    drop(redis);

    // Uncached: many sessions written straight to the directory, read in a scattered order, so
    // almost every read misses the 1 s cache and reads its file.
    let shared = specs[0].shared_dir.clone();
    let cold: Arc<Vec<String>> = Arc::new(
        tokio::task::spawn_blocking(move || write_sessions(&shared, budget.uncached_sessions))
            .await??
            .into_iter()
            .map(|t| format!("/v1/sessions/{t}"))
            .collect(),
    );
    let misses0 = api::metric(&h, &peer, "ha_session_reads_total", &["miss"]).await;
    let hits0 = api::metric(&h, &peer, "ha_session_reads_total", &["hit"]).await;
    let rate = http_phase(port, budget.sustain, move |mut c, w, i| {
        let cold = cold.clone();
        async move {
            let k = (i as usize * 7919 + w * 104_729) % cold.len();
            let ok = c.call("GET", &cold[k], None).await? == 200;
            Ok((c, ok))
        }
    })
    .await?;
    let misses = api::metric(&h, &peer, "ha_session_reads_total", &["miss"]).await - misses0;
    let hits = api::metric(&h, &peer, "ha_session_reads_total", &["hit"]).await - hits0;
    eprintln!(
        "  uncached phase: {:.0}% of reads read the file",
        100.0 * misses / (misses + hits).max(1.0)
    );
    report.set("session_reads_per_s_uncached", rate.per_s());
    drop(node);
    let t = Instant::now();
    let removed = tokio::task::spawn_blocking(move || {
        unlink_files(&[dir.path(), bdir.path()]);
        (dir, bdir)
    })
    .await?;
    drop(removed);
    eprintln!(
        "  session files removed in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    report.row(
        "session_creates_per_s",
        Some("redis_set_fsync_per_s"),
        "create, sync = always (2xx: file fsync'd) vs Redis SET with appendfsync always, alternated; target ≥ 0.5",
    );
    report.row(
        "session_creates_per_s_batched",
        Some("redis_set_everysec_per_s"),
        "create, sync = batched (2xx: file visible, fsync'd within 1 s) vs Redis SET with appendfsync everysec, alternated",
    );
    report.row(
        "session_reads_per_s_cached",
        Some("redis_get_per_s"),
        "GET from the read cache (HTTP/1.1) vs Redis GET (RESP), alternated, equally lean clients; target ≥ 1",
    );
    report.row(
        "session_reads_per_s_uncached",
        Some("redis_get_per_s"),
        "GET that reads the session file vs Redis GET",
    );
    report.row(
        "redis_set_per_s",
        None,
        "Redis SET without fsync (appendonly no)",
    );
    Ok(())
}

/// Unlinks every file under `roots` from 16 threads (the directories are left to the temp
/// dirs' drop). This disk is mounted with `discard`, and without a journal ext4 issues the
/// discard of a freed block at the `unlink`: removing 5,000 small files one by one took 19 s
/// here, from 16 threads 0.7 s. Tens of thousands of session files removed serially took most
/// of the quick bench's time.
fn unlink_files(roots: &[&std::path::Path]) {
    let mut files = Vec::new();
    let mut dirs: Vec<std::path::PathBuf> = roots.iter().map(|r| r.to_path_buf()).collect();
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(e.path()),
                Ok(_) => files.push(e.path()),
                Err(_) => {}
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(f) = files.get(i) else { return };
                let _ = std::fs::remove_file(f);
            });
        }
    });
}

/// Waits (at most 10 s) until the node's watcher has worked through the inotify events of the
/// creates (its count of invalidations stops moving for 300 ms), so that the read phases measure
/// reads, not the tail of the create phase.
async fn settle(h: &reqwest::Client, peer: &str) {
    let start = Instant::now();
    let mut last = -1.0;
    while start.elapsed() < Duration::from_secs(10) {
        let now = api::metric(h, peer, "ha_session_invalidations_total", &["watch"]).await;
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "  watcher settled after the creates in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// Slices of each compared pair of phases: the sidecar's and Redis's alternate
/// (ours, theirs, ours, ...), so that a neighbour's burst of CPU or disk work on the shared
/// machine lands on both alike instead of on whichever phase it happened to overlap.
const SLICES: u32 = 3;

/// Operations done and time taken, summed over slices.
#[derive(Default, Clone, Copy)]
struct Rate {
    ops: u64,
    secs: f64,
}

impl Rate {
    fn per_s(self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
}

impl std::ops::AddAssign for Rate {
    fn add_assign(&mut self, o: Rate) {
        self.ops += o.ops;
        self.secs += o.secs;
    }
}

/// The token in a create's answer (`{"id":"<64 hex>",...}`), found without a JSON parser (the
/// Redis side parses nothing either).
fn created_token(body: &[u8]) -> anyhow::Result<String> {
    const KEY: &[u8] = b"\"id\":\"";
    let at = body
        .windows(KEY.len())
        .position(|w| w == KEY)
        .ok_or_else(|| anyhow::anyhow!("no id in the create answer"))?;
    let token = body
        .get(at + KEY.len()..at + KEY.len() + 64)
        .ok_or_else(|| anyhow::anyhow!("short id in the create answer"))?;
    Ok(std::str::from_utf8(token)?.to_owned())
}

/// Runs `op(connection, worker, i)` from [`CONCURRENCY`] workers, each on its own keep-alive
/// connection, for `dur`; returns the operations that succeeded and the time taken. An I/O
/// error ends the phase with an error (as in [`redis_phase`]).
async fn http_phase<F, Fut>(port: u16, dur: Duration, op: F) -> anyhow::Result<Rate>
where
    F: Fn(Http, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<(Http, bool)>> + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Http::connect(port).await?;
            let (mut i, mut ok) = (0u64, 0u64);
            while start.elapsed() < dur {
                let (back, done) = op(c, w, i).await?;
                c = back;
                ok += u64::from(done);
                i += 1;
            }
            anyhow::Ok(ok)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(Rate {
        ops: total,
        secs: start.elapsed().as_secs_f64(),
    })
}

fn write_sessions(shared: &std::path::Path, n: usize) -> anyhow::Result<Vec<String>> {
    use shared_fs::{SessionFiles, SessionOptions, SessionRecord};
    let files = SessionFiles::open(
        shared,
        SessionOptions {
            fsync: false,
            ..SessionOptions::default()
        },
    )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let mut extra = serde_json::Map::new();
    extra.insert("user_agent".into(), "p".repeat(EXTRA_BYTES).into());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let rec = SessionRecord {
            account_id: i as u64,
            created_at: now,
            expires_at: now + 3_600_000,
            refresh_at: now + 1_800_000,
            xsrf_token: "x".repeat(64),
            extra: extra.clone(),
        };
        out.push(files.create(&rec)?.as_str().to_owned());
    }
    Ok(out)
}

/// One HTTP/1.1 keep-alive connection, as lean as [`Resp`]: the request is written in one go,
/// the answer is a status line, headers and a `Content-Length`-framed body (the sidecar never
/// answers these requests in chunks). One request in flight at a time.
struct Http {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    port: u16,
    line: String,
    req: Vec<u8>,
    /// The body of the last answer.
    body: Vec<u8>,
}

impl Http {
    async fn connect(port: u16) -> anyhow::Result<Http> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Http {
            r: BufReader::new(r),
            w,
            port,
            line: String::new(),
            req: Vec::with_capacity(1024),
            body: Vec::with_capacity(1024),
        })
    }

    /// Sends one request and reads its answer; returns the status.
    async fn call(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<u16> {
        use std::io::Write;
        self.req.clear();
        write!(
            self.req,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            self.port
        )?;
        if let Some(b) = body {
            write!(
                self.req,
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                b.len()
            )?;
            self.req.extend_from_slice(b);
        } else {
            self.req.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&self.req).await?;
        self.line.clear();
        self.r.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line {:?}", self.line))?;
        let mut len = None;
        loop {
            self.line.clear();
            anyhow::ensure!(
                self.r.read_line(&mut self.line).await? > 0,
                "connection closed"
            );
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = Some(v.trim().parse::<usize>()?);
                }
            }
        }
        let len = len.ok_or_else(|| anyhow::anyhow!("answer without Content-Length"))?;
        self.body.resize(len, 0);
        self.r.read_exact(&mut self.body).await?;
        Ok(status)
    }
}

async fn redis_phase(port: u16, dur: Duration, get: bool, value: &[u8]) -> anyhow::Result<Rate> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let value = value.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut c = Resp::connect(port).await?;
            let mut n = 0u64;
            while start.elapsed() < dur {
                let key = format!("session:{w}:{}", n % 1000);
                if get {
                    c.call(&[b"GET", key.as_bytes()]).await?;
                } else {
                    c.call(&[b"SET", key.as_bytes(), &value]).await?;
                }
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(Rate {
        ops: total,
        secs: start.elapsed().as_secs_f64(),
    })
}
