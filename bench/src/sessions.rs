//! Web sessions on one real node (shared directory on the local disk): creates/s (each one an
//! fsync'd file), reads/s from the read cache and from the files, and in the same run Debian's
//! `redis-server` — what an operator would pick instead — with session-sized values at the same
//! concurrency: SET with `appendfsync always` (the comparable durability), SET without, GET.
//! Redis is spoken to in raw RESP over TCP (no client crate to pin).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::{api, mesh_specs, Proc};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::report::Report;
use crate::Budget;

/// Concurrent clients, for the sidecar and for Redis alike.
const CONCURRENCY: usize = 16;
/// Bytes of the master's extra fields in each session (a realistic session file is ~0.5 KiB).
const EXTRA_BYTES: usize = 300;

pub async fn run(report: &mut Report, budget: Budget) -> anyhow::Result<()> {
    eprintln!("web sessions: one node, {CONCURRENCY} clients");
    let dir = tempfile::tempdir()?;
    let specs = mesh_specs(dir.path(), 1, "");
    let node = Proc::spawn(&specs[0], dir.path(), &[]);
    let h = integration::http();
    node.wait_ready(&h).await;
    let base = specs[0].local_url();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;

    let pad = "p".repeat(EXTRA_BYTES);
    let tokens = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (c, b, p, t) = (client.clone(), base.clone(), pad.clone(), tokens.clone());
    let rate = load(budget.sustain, move |_, _| {
        let (client, base, pad, tokens) = (c.clone(), b.clone(), p.clone(), t.clone());
        async move {
            let r = client
                .post(format!("{base}v1/sessions"))
                .json(&serde_json::json!({ "account_id": 1000, "user_agent": pad }))
                .send()
                .await
                .ok()?;
            let body: serde_json::Value = r.json().await.ok()?;
            tokens.lock().unwrap().push(body["id"].as_str()?.to_owned());
            Some(())
        }
    })
    .await;
    report.set("session_creates_per_s", rate);

    let hot: Arc<Vec<String>> =
        Arc::new(tokens.lock().unwrap().iter().take(100).cloned().collect());
    let (c, b) = (client.clone(), base.clone());
    let rate = load(budget.sustain, move |w, i| {
        let (client, base, hot) = (c.clone(), b.clone(), hot.clone());
        async move {
            let t = &hot[(w * 7 + i as usize) % hot.len()];
            let r = client
                .get(format!("{base}v1/sessions/{t}"))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())?;
            r.bytes().await.ok().map(|_| ())
        }
    })
    .await;
    report.set("session_reads_per_s_cached", rate);

    // Uncached: many sessions written straight to the directory, read in a scattered order, so
    // almost every read misses the 1 s cache and reads its file.
    let shared = specs[0].shared_dir.clone();
    let cold: Arc<Vec<String>> = Arc::new(
        tokio::task::spawn_blocking(move || write_sessions(&shared, budget.uncached_sessions))
            .await??,
    );
    let peer = specs[0].peer_url();
    let misses0 = api::metric(&h, &peer, "ha_session_reads_total", &["miss"]).await;
    let hits0 = api::metric(&h, &peer, "ha_session_reads_total", &["hit"]).await;
    let (c, b) = (client.clone(), base.clone());
    let rate = load(budget.sustain, move |w, i| {
        let (client, base, cold) = (c.clone(), b.clone(), cold.clone());
        async move {
            let k = (i as usize * 7919 + w * 104_729) % cold.len();
            let r = client
                .get(format!("{base}v1/sessions/{}", cold[k]))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())?;
            r.bytes().await.ok().map(|_| ())
        }
    })
    .await;
    let misses = api::metric(&h, &peer, "ha_session_reads_total", &["miss"]).await - misses0;
    let hits = api::metric(&h, &peer, "ha_session_reads_total", &["hit"]).await - hits0;
    eprintln!(
        "  uncached phase: {:.0}% of reads read the file",
        100.0 * misses / (misses + hits).max(1.0)
    );
    report.set("session_reads_per_s_uncached", rate);
    drop(node);

    match Redis::start(dir.path()) {
        Ok(redis) => redis_figures(report, budget, &redis).await?,
        Err(e) => eprintln!("  redis figures skipped: {e} (make deps-bench installs redis-server)"),
    }
    report.row(
        "session_creates_per_s",
        Some("redis_set_fsync_per_s"),
        "create (fsync'd file + rename) vs Redis SET with appendfsync always; target ≥ 0.5",
    );
    report.row(
        "session_reads_per_s_cached",
        Some("redis_get_per_s"),
        "GET from the read cache (over HTTP) vs Redis GET (RESP); target ≥ 1",
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

/// Runs `op(worker, i)` from `CONCURRENCY` workers for `dur`; returns successful ops per second.
async fn load<F, Fut>(dur: Duration, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<()>> + Send + 'static,
{
    let ok = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let (op, ok) = (op.clone(), ok.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while start.elapsed() < dur {
                    if op(w, i).await.is_some() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
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

/// A `redis-server` on a free loopback port in a temp dir; killed (by PID) on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(parent: &std::path::Path) -> anyhow::Result<Redis> {
        let dir = tempfile::tempdir_in(parent)?;
        let port = integration::free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run redis-server: {e}"))?;
        let r = Redis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(r)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One RESP connection.
struct Resp {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    line: String,
}

impl Resp {
    async fn connect(port: u16) -> anyhow::Result<Resp> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Resp {
            r: BufReader::new(r),
            w,
            line: String::new(),
        })
    }

    /// Sends one command; returns the reply's first line (for a bulk string, reads its body).
    async fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<()> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&buf).await?;
        self.line.clear();
        self.r.read_line(&mut self.line).await?;
        match self.line.as_bytes().first() {
            Some(b'$') => {
                let n: i64 = self.line[1..].trim().parse()?;
                if n >= 0 {
                    let mut body = vec![0u8; n as usize + 2];
                    self.r.read_exact(&mut body).await?;
                }
                Ok(())
            }
            Some(b'-') => anyhow::bail!("redis error: {}", self.line.trim()),
            _ => Ok(()),
        }
    }
}

async fn redis_phase(port: u16, dur: Duration, get: bool, value: &[u8]) -> anyhow::Result<f64> {
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
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn redis_figures(report: &mut Report, budget: Budget, redis: &Redis) -> anyhow::Result<()> {
    // A session-sized value: what a session file holds.
    let value = vec![b'v'; 200 + EXTRA_BYTES];
    let fsync = redis_phase(redis.port, budget.sustain, false, &value).await?;
    report.set("redis_set_fsync_per_s", fsync);
    let mut c = Resp::connect(redis.port).await?;
    c.call(&[b"CONFIG", b"SET", b"appendonly", b"no"]).await?;
    let set = redis_phase(redis.port, budget.sustain, false, &value).await?;
    report.set("redis_set_per_s", set);
    let get = redis_phase(redis.port, budget.sustain, true, &value).await?;
    report.set("redis_get_per_s", get);
    Ok(())
}
