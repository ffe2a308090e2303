//! Debian's `redis-server` as the peer an operator would pick instead of ha-sidecar, measured in
//! the same run: pub/sub fan-out of invalidations to one subscriber (what a Redis-based cache
//! eviction scheme does), and streams (XADD of ~1 KB events delivered to a blocking XREAD reader,
//! and a replay of the whole stream with XREAD). Spoken to in raw RESP over TCP (no client crate
//! to pin), on loopback, in a temp dir, on its own port; stopped (by PID) at the end.
//!
//! [`Redis`] and [`Resp`] also serve the sessions bench's SET/GET phases.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::report::Report;
use crate::Budget;

/// A `redis-server` on a free loopback port in a temp dir; killed (by PID) on drop. It starts
/// with `appendonly yes` and `appendfsync always` (the durable comparison); `CONFIG SET
/// appendonly no` turns that off.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one in a new temp dir under `parent` (the system's temp dir when `None`).
    pub fn start(parent: Option<&std::path::Path>) -> anyhow::Result<Redis> {
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p)?,
            None => tempfile::tempdir()?,
        };
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
            // A subscriber that falls behind is not disconnected during a bounded phase.
            .args(["--client-output-buffer-limit", "pubsub 0 0 0"])
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

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One RESP connection: commands are encoded into a buffer (so several can be pipelined) and
/// replies are read back, skipped or parsed just enough.
pub struct Resp {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl Resp {
    pub async fn connect(port: u16) -> anyhow::Result<Resp> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Resp {
            r: BufReader::with_capacity(1 << 16, r),
            w,
            out: Vec::with_capacity(1 << 16),
            line: Vec::with_capacity(64),
        })
    }

    /// Queues one command (sent by `flush`).
    pub fn push(&mut self, args: &[&[u8]]) {
        use std::io::Write;
        let _ = write!(self.out, "*{}\r\n", args.len());
        for a in args {
            let _ = write!(self.out, "${}\r\n", a.len());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.w.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Sends one command and skips its reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<()> {
        self.push(args);
        self.flush().await?;
        self.skip_reply().await
    }

    /// Reads one header line (without `\r\n`) into `self.line`.
    async fn read_line(&mut self) -> anyhow::Result<()> {
        self.line.clear();
        let n = self.r.read_until(b'\n', &mut self.line).await?;
        anyhow::ensure!(n > 0, "redis closed the connection");
        while matches!(self.line.last(), Some(b'\n' | b'\r')) {
            self.line.pop();
        }
        Ok(())
    }

    fn line_int(&self) -> anyhow::Result<i64> {
        Ok(std::str::from_utf8(&self.line[1..])?.parse()?)
    }

    async fn skip_bytes(&mut self, mut n: usize) -> anyhow::Result<()> {
        while n > 0 {
            let buf = self.r.fill_buf().await?;
            anyhow::ensure!(!buf.is_empty(), "redis closed the connection");
            let k = buf.len().min(n);
            self.r.consume(k);
            n -= k;
        }
        Ok(())
    }

    /// Reads and discards one whole reply (nested arrays included), without allocating.
    pub async fn skip_reply(&mut self) -> anyhow::Result<()> {
        let mut pending = 1i64;
        while pending > 0 {
            self.read_line().await?;
            pending -= 1;
            match self.line.first() {
                Some(b'*') => pending += self.line_int()?.max(0),
                Some(b'$') => {
                    let n = self.line_int()?;
                    if n >= 0 {
                        self.skip_bytes(n as usize + 2).await?;
                    }
                }
                Some(b'-') => {
                    anyhow::bail!("redis error: {}", String::from_utf8_lossy(&self.line))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads a bulk string reply's bytes.
    async fn bulk(&mut self) -> anyhow::Result<Vec<u8>> {
        self.read_line().await?;
        anyhow::ensure!(
            self.line.first() == Some(&b'$'),
            "expected a bulk string, got {}",
            String::from_utf8_lossy(&self.line)
        );
        let n = self.line_int()?;
        anyhow::ensure!(n >= 0, "nil bulk string");
        let mut v = vec![0u8; n as usize + 2];
        self.r.read_exact(&mut v).await?;
        v.truncate(n as usize);
        Ok(v)
    }

    /// Reads an array header; `None` for a nil array.
    async fn array_len(&mut self) -> anyhow::Result<Option<usize>> {
        self.read_line().await?;
        match self.line.first() {
            Some(b'*') => {
                let n = self.line_int()?;
                Ok((n >= 0).then_some(n as usize))
            }
            Some(b'-') => anyhow::bail!("redis error: {}", String::from_utf8_lossy(&self.line)),
            _ => anyhow::bail!(
                "expected an array, got {}",
                String::from_utf8_lossy(&self.line)
            ),
        }
    }

    /// Reads an XREAD reply on one stream: (entries, id of the last one). A nil reply (BLOCK
    /// timed out) is (0, None). Field values are skipped, not copied.
    pub async fn xread_reply(&mut self) -> anyhow::Result<(u64, Option<Vec<u8>>)> {
        let Some(streams) = self.array_len().await? else {
            return Ok((0, None));
        };
        let mut count = 0;
        let mut last = None;
        for _ in 0..streams {
            anyhow::ensure!(self.array_len().await? == Some(2), "bad XREAD reply");
            self.skip_reply().await?; // the stream's name
            let entries = self.array_len().await?.unwrap_or(0);
            for _ in 0..entries {
                anyhow::ensure!(self.array_len().await? == Some(2), "bad stream entry");
                last = Some(self.bulk().await?);
                self.skip_reply().await?; // [field, value, …]
                count += 1;
            }
        }
        Ok((count, last))
    }
}

/// An invalidation as a Redis-based scheme would publish it: cache and key, ~40 bytes.
fn invalidation(t: usize, i: u64) -> Vec<u8> {
    format!(r#"{{"cache":"projects","key":"t{t}-r{i}"}}"#).into_bytes()
}

/// Waits until `count` reaches `want` (bounded); returns whether it did.
async fn wait_for(count: &AtomicU64, want: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while count.load(Ordering::Relaxed) < want {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// `publishers` connections PUBLISH invalidations for `dur`, `pipeline` commands per round trip;
/// one subscriber counts what it receives. Returns messages delivered to the subscriber per
/// second, over the time until it had every message published (as our delivered rates are).
async fn pubsub(
    port: u16,
    publishers: usize,
    pipeline: usize,
    dur: Duration,
) -> anyhow::Result<f64> {
    let mut sub = Resp::connect(port).await?;
    sub.call(&[b"SUBSCRIBE", b"invalidations"]).await?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, s) = (received.clone(), stop.clone());
    let subscriber = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            // Bounded: every read ends when the phase's messages have arrived or the
            // connection is dropped (the task is aborted after the wait below).
            if sub.skip_reply().await.is_err() {
                break;
            }
            r.fetch_add(1, Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..publishers {
        tasks.push(tokio::spawn(async move {
            let mut c = Resp::connect(port).await?;
            let mut n = 0u64;
            while start.elapsed() < dur {
                for _ in 0..pipeline {
                    let m = invalidation(t, n);
                    c.push(&[b"PUBLISH", b"invalidations", &m]);
                    n += 1;
                }
                c.flush().await?;
                for _ in 0..pipeline {
                    c.skip_reply().await?;
                }
            }
            anyhow::Ok(n)
        }));
    }
    let mut published = 0;
    for t in tasks {
        published += t.await??;
    }
    let complete = wait_for(&received, published, Duration::from_secs(120)).await;
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    subscriber.abort();
    let got = received.load(Ordering::Relaxed);
    if !complete {
        eprintln!("  pub/sub: the subscriber received {got} of {published} messages");
    }
    Ok(got as f64 / secs)
}

/// `clients` connections XADD ~1 KB events (one per round trip) for `dur`; one reader follows
/// the stream with `XREAD BLOCK`. Returns entries delivered to the reader per second, over the
/// time until it had them all.
async fn xadd_followed(
    port: u16,
    stream: &'static str,
    clients: usize,
    dur: Duration,
) -> anyhow::Result<f64> {
    let added = Arc::new(AtomicU64::new(0));
    let read = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (rd, s) = (read.clone(), stop.clone());
    let mut reader = Resp::connect(port).await?;
    let follower = tokio::spawn(async move {
        // Each phase has its own new stream: follow it from its first entry.
        let mut last = b"0-0".to_vec();
        while !s.load(Ordering::Relaxed) {
            reader.push(&[
                b"XREAD",
                b"COUNT",
                b"1000",
                b"BLOCK",
                b"100",
                b"STREAMS",
                stream.as_bytes(),
                &last,
            ]);
            reader.flush().await?;
            let (n, id) = reader.xread_reply().await?;
            rd.fetch_add(n, Ordering::Relaxed);
            if let Some(id) = id {
                last = id;
            }
        }
        anyhow::Ok(())
    });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let added = added.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Resp::connect(port).await?;
            while start.elapsed() < dur {
                let n = added.fetch_add(1, Ordering::Relaxed);
                let ev = integration::events::gerrit_event("patchset-created", n, 1024);
                c.call(&[b"XADD", stream.as_bytes(), b"*", b"event", &ev])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let want = added.load(Ordering::Relaxed);
    let complete = wait_for(&read, want, Duration::from_secs(120)).await;
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), follower).await;
    let got = read.load(Ordering::Relaxed);
    if !complete {
        eprintln!("  streams: the reader received {got} of {want} entries");
    }
    Ok(got as f64 / secs)
}

/// Fills the stream up to `n` entries (pipelined, no fsync), then times one client reading it
/// all from the start, 1,000 entries per XREAD.
async fn xread_replay(port: u16, n: u64) -> anyhow::Result<f64> {
    let mut c = Resp::connect(port).await?;
    c.push(&[b"XLEN", b"events"]);
    c.flush().await?;
    c.read_line().await?;
    let mut have = c.line_int().unwrap_or(0).max(0) as u64;
    while have < n {
        let k = (n - have).min(500);
        for i in 0..k {
            let ev = integration::events::gerrit_event("patchset-created", have + i, 1024);
            c.push(&[b"XADD", b"events", b"*", b"event", &ev]);
        }
        c.flush().await?;
        for _ in 0..k {
            c.skip_reply().await?;
        }
        have += k;
    }
    let start = Instant::now();
    let mut got = 0u64;
    let mut last = b"0-0".to_vec();
    let deadline = start + Duration::from_secs(300);
    while got < n && Instant::now() < deadline {
        c.push(&[b"XREAD", b"COUNT", b"1000", b"STREAMS", b"events", &last]);
        c.flush().await?;
        let (k, id) = c.xread_reply().await?;
        anyhow::ensure!(k > 0, "the stream ended after {got} of {n} entries");
        got += k;
        if let Some(id) = id {
            last = id;
        }
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

fn rss_mib(pid: i32) -> f64 {
    crate::evictions::rss_mib(pid)
}

pub async fn run(report: &mut Report, budget: Budget) -> anyhow::Result<()> {
    let redis = match Redis::start(None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("redis: skipped: {e} (make deps-bench installs redis-server)");
            return Ok(());
        }
    };
    let port = redis.port;
    let d = budget.sustain;
    eprintln!("redis: pub/sub fan-out of invalidations to one subscriber");
    report.set("redis_pubsub_msgs_per_s", pubsub(port, 8, 100, d).await?);
    report.set(
        "redis_pubsub_msgs_per_s_single",
        pubsub(port, 32, 1, d).await?,
    );

    eprintln!("redis: streams, ~1 KB events (XADD with appendfsync always, one XREAD follower)");
    report.set(
        "redis_xadd_per_s",
        xadd_followed(port, "events", 32, d).await?,
    );
    let mut c = Resp::connect(port).await?;
    c.call(&[b"CONFIG", b"SET", b"appendonly", b"no"]).await?;
    report.set(
        "redis_xadd_per_s_nofsync",
        xadd_followed(port, "events-nofsync", 32, d).await?,
    );
    let n: u64 = if budget.sustain >= Duration::from_secs(10) {
        1_000_000
    } else {
        100_000
    };
    eprintln!("redis: XREAD replay of {n} entries from the start");
    report.set("redis_xread_per_s", xread_replay(port, n).await?);
    report.set("redis_rss_after_streams_mib", rss_mib(redis.pid()));
    drop(redis);

    report.row(
        "redis_pubsub_msgs_per_s",
        None,
        "Redis PUBLISH → one subscriber, 8 publishers pipelining 100 (not durable; compare evictions_per_s_batched)",
    );
    report.row(
        "redis_pubsub_msgs_per_s_single",
        None,
        "same, 32 publishers, one PUBLISH per round trip (compare evictions_per_s_single)",
    );
    report.row(
        "redis_xadd_per_s",
        None,
        "Redis XADD of ~1 KB events (32 clients, appendfsync always) delivered to one XREAD BLOCK reader (compare events_per_s)",
    );
    report.row(
        "redis_xadd_per_s_nofsync",
        None,
        "same with appendonly no (not durable)",
    );
    report.row(
        "redis_xread_per_s",
        None,
        "Redis XREAD of the whole stream from 0, 1,000 per call (compare event_replay_per_s; same count of events)",
    );
    report.row(
        "redis_rss_after_streams_mib",
        None,
        "RSS of redis-server holding the replayed stream (ours keeps events on disk)",
    );
    Ok(())
}
