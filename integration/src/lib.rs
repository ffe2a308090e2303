//! The cluster harness for ha-sidecar's multi-node tests: in-process nodes on `127.0.0.1:0`,
//! real processes of the built binary (SIGKILL, SIGSTOP, restart), a signing peer client for
//! hostile-input tests, and `eventually` (every wait has a deadline).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod events;
pub mod gerrit;

use ha_sidecar::app::{Listeners, Node};
use ha_sidecar::config::{self, Secret};

pub mod lb;
pub mod nfs;
pub mod nfs_vm;
pub mod tls;

/// How long `eventually` waits unless told otherwise; scaled by `HA_TEST_PATIENCE`.
pub fn patience(base: Duration) -> Duration {
    let k: f64 = std::env::var("HA_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    base.mul_f64(k)
}

/// Waits until `f` returns true, polling; panics with `what` after the deadline.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + patience(timeout);
    loop {
        if f().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port, for a process that must know its (or its peer's) port before it
/// starts, so the port cannot stay bound here.
///
/// A port taken with `bind(:0)` and released comes from the kernel's ephemeral range, where any
/// outgoing connection of the machine may take it before the child binds it. These ports come
/// from below that range (the kernel never hands those out by itself), from a block chosen by
/// this process's id, each one at most once per process, and are checked free by binding them.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000; // 20000..32000, below Linux's default ephemeral range (32768..)
    let block = (std::process::id() % 60) * (SPAN / 60);
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (block + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// Writes a secret file (0600) and returns its path.
pub fn write_secret(dir: &Path, name: &str, value: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    p
}

/// What goes into one node's config file.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: String,
    pub listen_port: u16,
    pub local_port: u16,
    pub peers: Vec<String>,
    pub secrets: Vec<PathBuf>,
    pub data_dir: PathBuf,
    pub shared_dir: PathBuf,
    /// Extra git-config text appended verbatim.
    pub extra: String,
    /// Scheme of `listenUrl`: `http`, or `https` (then `extra` names the certificate).
    pub scheme: &'static str,
}

impl NodeSpec {
    pub fn text(&self) -> String {
        let mut t = format!(
            "[main]\n  instanceId = {}\n  sharedDirectory = {}\n  dataDirectory = {}\n\
             [sidecar]\n  listenUrl = {}://127.0.0.1:{}/\n  localListenUrl = http://127.0.0.1:{}/\n\
             [http]\n  retryInterval = 50ms\n  maxRetryInterval = 1s\n  socketTimeout = 2s\n",
            self.id,
            self.shared_dir.display(),
            self.data_dir.display(),
            self.scheme,
            self.listen_port,
            self.local_port
        );
        t.push_str("[peerInfo \"static\"]\n");
        for p in &self.peers {
            t.push_str(&format!("  url = {p}\n"));
        }
        t.push_str("[auth]\n");
        for s in &self.secrets {
            t.push_str(&format!("  secretFile = {}\n", s.display()));
        }
        t.push_str(&self.extra);
        t
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}/", self.scheme, self.listen_port)
    }

    pub fn local_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.local_port)
    }
}

/// Specs for an `n`-node full mesh under `dir`, all sharing one secret.
pub fn mesh_specs(dir: &Path, n: usize, extra: &str) -> Vec<NodeSpec> {
    let secret = write_secret(
        dir,
        "peer.key",
        "0123456789abcdef0123456789abcdef-test-secret",
    );
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    (0..n)
        .map(|i| {
            let id = format!("node-{}", (b'a' + i as u8) as char);
            NodeSpec {
                id: id.clone(),
                listen_port: ports[i].0,
                local_port: ports[i].1,
                peers: (0..n)
                    .filter(|j| *j != i)
                    .map(|j| format!("http://127.0.0.1:{}/", ports[j].0))
                    .collect(),
                secrets: vec![secret.clone()],
                data_dir: dir.join(&id).join("data"),
                shared_dir: dir.join("shared"),
                extra: extra.to_owned(),
                scheme: "http",
            }
        })
        .collect()
}

/// Parses a config text as `run` would (no environment).
pub fn parse_config(text: &str, dir: &Path) -> config::Config {
    let env = BTreeMap::new();
    let path = dir.join("test.config");
    match config::load(config::Source {
        file: Some((text, &path)),
        env: &env,
    }) {
        Ok((c, _)) => c,
        Err(r) => panic!("test config invalid: {r:?}\n{text}"),
    }
}

/// Starts an in-process node from a spec, binding its ports now.
pub async fn start_in_process(spec: &NodeSpec, dir: &Path) -> Node {
    let cfg = parse_config(&spec.text(), dir);
    let listeners = Listeners {
        peer: TcpListener::bind(("127.0.0.1", spec.listen_port)).unwrap(),
        local: TcpListener::bind(("127.0.0.1", spec.local_port)).unwrap(),
    };
    Node::start(cfg, listeners).await.unwrap()
}

/// The `ha-sidecar` binary under test: `HA_SIDECAR_BIN`, else the workspace's target dir.
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("HA_SIDECAR_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("ha-sidecar");
        if p.exists() {
            return p;
        }
    }
    panic!("ha-sidecar binary not found: run `cargo build --release` or set HA_SIDECAR_BIN");
}

/// A real `ha-sidecar run` process.
pub struct Proc {
    pub spec: NodeSpec,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// The open-files limit (soft and hard) the process starts with, when set.
    pub nofile: Option<u64>,
}

impl Proc {
    /// Writes the config and starts the process; logs go to `<dir>/<id>.log` (appended).
    pub fn spawn(spec: &NodeSpec, dir: &Path, env: &[(&str, &str)]) -> Proc {
        Self::launch(spec, dir, env, None)
    }

    /// As [`Proc::spawn`], with an open-files limit of `nofile` (soft and hard: the node cannot
    /// raise it).
    pub fn spawn_with_nofile(spec: &NodeSpec, dir: &Path, nofile: u64) -> Proc {
        Self::launch(spec, dir, &[], Some(nofile))
    }

    fn launch(spec: &NodeSpec, dir: &Path, env: &[(&str, &str)], nofile: Option<u64>) -> Proc {
        let config_path = dir.join(format!("{}.config", spec.id));
        std::fs::write(&config_path, spec.text()).unwrap();
        let mut p = Proc {
            spec: spec.clone(),
            config_path,
            log_path: dir.join(format!("{}.log", spec.id)),
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            nofile,
        };
        p.start();
        p
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run").arg("-c").arg(&self.config_path);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe; it only reads `lim`.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        self.child = Some(cmd.spawn().expect("spawn ha-sidecar"));
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (or SIGINT) and wait for the exit status, with a deadline.
    pub fn terminate(&mut self, sig: i32, timeout: Duration) -> std::process::ExitStatus {
        self.signal(sig);
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{} did not exit within {timeout:?} after signal {sig}",
                    self.spec.id
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until `/health` is 204: started, and done catching up (history restore, refill,
    /// index catch-up).
    pub async fn wait_healthy(&self, http: &reqwest::Client) {
        let url = format!("{}health", self.spec.peer_url());
        let what = format!("{} healthy", self.spec.id);
        eventually(&what, Duration::from_secs(30), || {
            let (h, url) = (http.clone(), url.clone());
            async move { h.get(&url).send().await.is_ok_and(|r| r.status() == 204) }
        })
        .await;
    }

    pub async fn wait_ready(&self, http: &reqwest::Client) {
        let url = format!("{}readyz", self.spec.peer_url());
        let id = self.spec.id.clone();
        let log = self.log_path.clone();
        let deadline = Instant::now() + patience(Duration::from_secs(20));
        loop {
            if let Ok(r) = http.get(&url).send().await {
                // A drained node is up but not ready for traffic: it counts as started here.
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                if status == 200 || body.contains("drained") {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{id} not ready; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // A frozen process must be thawed to die promptly with its sockets.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
        }
        self.kill9();
    }
}

/// A reqwest client for tests (no proxy, short timeouts). No idle connections are kept: a
/// process that was frozen closes them as it wakes, and a reused one would fail the request.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Local-API helpers.
pub mod api {

    pub async fn put(
        http: &reqwest::Client,
        base: &str,
        cache: &str,
        key: &str,
        value: serde_json::Value,
    ) -> u16 {
        http.put(format!("{base}v1/cache/{cache}/{key}"))
            .json(&value)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn get(http: &reqwest::Client, base: &str, cache: &str, key: &str) -> u16 {
        http.get(format!("{base}v1/cache/{cache}/{key}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn evict(http: &reqwest::Client, base: &str, cache: &str, keys: &[&str]) -> u16 {
        http.post(format!("{base}v1/cache/{cache}/evict"))
            .json(&serde_json::json!({ "keys": keys }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn flush(http: &reqwest::Client, base: &str, cache: &str) -> u16 {
        http.post(format!("{base}v1/cache/{cache}/flush"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn status(http: &reqwest::Client, peer_base: &str) -> serde_json::Value {
        http.get(format!("{peer_base}v1/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Sum of a metric's samples whose label text contains every `needle`.
    pub async fn metric(
        http: &reqwest::Client,
        peer_base: &str,
        name: &str,
        needles: &[&str],
    ) -> f64 {
        metric_in(&metrics_text(http, peer_base).await, name, needles)
    }

    /// The node's `/metrics` page, for several [`metric_in`] reads of one scrape.
    pub async fn metrics_text(http: &reqwest::Client, peer_base: &str) -> String {
        http.get(format!("{peer_base}metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn metric_in(text: &str, name: &str, needles: &[&str]) -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }
}

/// Sends a peer batch with chosen signature parts (for hostile-input tests).
pub async fn post_signed(
    http: &reqwest::Client,
    peer_base: &str,
    body: Vec<u8>,
    secret: Option<&Secret>,
    ts_offset_ms: i64,
    reuse: Option<&ha_sidecar::auth::SignatureHeaders>,
) -> (u16, String, Option<ha_sidecar::auth::SignatureHeaders>) {
    let url = format!("{peer_base}v1/peer/batch");
    let mut req = http.post(&url).header("content-type", "application/json");
    let mut used = None;
    if let Some(h) = reuse {
        req = req
            .header("x-ha-timestamp", &h.timestamp_ms)
            .header("x-ha-nonce", &h.nonce)
            .header("x-ha-signature", &h.signature);
        used = Some(h.clone());
    } else if let Some(s) = secret {
        let now = ha_sidecar::peers::outbox::now_ms() as i64 + ts_offset_ms;
        let h = ha_sidecar::auth::sign(s, "POST", "/v1/peer/batch", &body, now as u64);
        req = req
            .header(
                ha_sidecar::auth::HEADER_CONTENT_SHA256,
                ha_sidecar::auth::content_sha256(&body),
            )
            .header("x-ha-timestamp", &h.timestamp_ms)
            .header("x-ha-nonce", &h.nonce)
            .header("x-ha-signature", &h.signature);
        used = Some(h);
    }
    let r = req.body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default(), used)
}
