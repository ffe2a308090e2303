//! Real load balancers for the membership tests: HAProxy and nginx run from the shipped
//! `examples/` configs with test ports substituted, client traffic through them that records
//! who answered (`X-HA-Instance`), and a tiny webhook receiver for alerts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Panics with how to install a missing program (CI installs it with `make deps`).
pub fn require(program: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "`{program}` not found: install the Debian package `{package}` \
         (`apt-get install -y {package}`; `make deps` does it when run as root)"
    );
}

/// The shipped example config, by name.
pub fn example(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Replaces every `(from, to)` and fails if one is missing: the test must notice when the
/// shipped example changes shape.
pub fn substitute(text: &str, pairs: &[(&str, String)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        assert!(
            out.contains(from),
            "the example no longer contains `{from}`"
        );
        out = out.replace(from, to);
    }
    out
}

/// HAProxy from the shipped `examples/haproxy.cfg` with `pairs` substituted (the admin socket
/// goes under `dir`), checked with `haproxy -c`, then started. Returns it and its admin socket.
pub fn start_haproxy(dir: &Path, pairs: &[(&str, String)]) -> (LbProc, PathBuf) {
    start_haproxy_recipe(dir, "haproxy.cfg", pairs)
}

/// Like [`start_haproxy`] from another shipped recipe (`examples/<recipe>`).
pub fn start_haproxy_recipe(
    dir: &Path,
    recipe: &str,
    pairs: &[(&str, String)],
) -> (LbProc, PathBuf) {
    let haproxy = require("haproxy", "haproxy");
    let socket = dir.join("haproxy.sock");
    let mut all = vec![("/run/haproxy/admin.sock", socket.display().to_string())];
    all.extend(pairs.iter().cloned());
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, substitute(&example(recipe), &all)).unwrap();
    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(check.status.success(), "haproxy -c: {check:?}");
    let p = LbProc::spawn(
        Command::new(&haproxy).arg("-db").arg("-f").arg(&cfg_path),
        dir.join("haproxy.log"),
    );
    (p, socket)
}

/// nginx started from the shipped `examples/nginx.conf`.
pub struct Nginx {
    pub proc: LbProc,
    pub prefix: PathBuf,
    pub conf: PathBuf,
    /// The config as written (a test rewrites it to mark servers down, then reloads).
    pub text: String,
}

/// nginx from the shipped `examples/nginx.conf` with `pairs` substituted (pid, logs and
/// temporary files go under `dir/nginx`), checked with `nginx -t`, then started in the
/// foreground.
pub fn start_nginx(dir: &Path, pairs: &[(&str, String)]) -> Nginx {
    let nginx = require("nginx", "nginx");
    let module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    assert!(
        module.exists(),
        "{} not found: install the Debian package `libnginx-mod-stream` (`make deps` does)",
        module.display()
    );
    let prefix = dir.join("nginx");
    for d in ["logs", "tmp"] {
        std::fs::create_dir_all(prefix.join(d)).unwrap();
    }
    let t = prefix.join("tmp");
    let mut all = vec![
        ("/run/nginx-review.pid", prefix.join("nginx.pid").display().to_string()),
        ("/var/log/nginx/", format!("{}/", prefix.join("logs").display())),
        (
            "http {\n",
            format!(
                "http {{\n    client_body_temp_path {t}/body;\n    proxy_temp_path {t}/proxy;\n    \
                 fastcgi_temp_path {t}/fastcgi;\n    uwsgi_temp_path {t}/uwsgi;\n    scgi_temp_path {t}/scgi;\n",
                t = t.display()
            ),
        ),
    ];
    all.extend(pairs.iter().cloned());
    let text = substitute(&example("nginx.conf"), &all);
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, &text).unwrap();
    let check = Command::new(&nginx)
        .arg("-t")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(check.status.success(), "nginx -t: {check:?}");
    let proc = LbProc::spawn(
        Command::new(&nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"]),
        dir.join("nginx.log"),
    );
    Nginx {
        proc,
        prefix,
        conf,
        text,
    }
}

/// A load balancer process (killed on drop).
pub struct LbProc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl LbProc {
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> LbProc {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start the load balancer");
        LbProc {
            child: Some(child),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LbProc {
    /// SIGTERM first: nginx's master then stops its workers (a SIGKILLed master leaves them
    /// behind as orphans); SIGKILL only if it has not exited within a deadline.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One line of HAProxy's `show stat` for `backend/server`: its status (UP, DOWN, MAINT, …).
pub async fn haproxy_status(socket: &Path, backend: &str, server: &str) -> Option<String> {
    let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
    s.write_all(b"show stat\n").await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    out.lines().find_map(|l| {
        let f: Vec<&str> = l.split(',').collect();
        (f.len() > 17 && f[0] == backend && f[1] == server).then(|| f[17].to_owned())
    })
}

/// One answer seen by [`Traffic`].
#[derive(Debug, Clone)]
pub struct Answer {
    pub at: Instant,
    /// `Ok(instance)` for a 2xx with `X-HA-Instance`, else the error.
    pub outcome: Result<String, String>,
}

/// A client sending `GET url` every few milliseconds until dropped.
pub struct Traffic {
    answers: Arc<Mutex<Vec<Answer>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    pub fn start(url: String) -> Traffic {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let a = answers.clone();
        let task = tokio::spawn(async move {
            // A new connection per request: a kept-alive connection that the load balancer
            // closes (nginx's old workers after a reload) races the next request on it, a
            // client-side artefact that browsers retry and that would hide real failures here.
            let http = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            loop {
                let outcome = match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r
                        .headers()
                        .get("x-ha-instance")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                        .ok_or_else(|| "no X-HA-Instance".to_owned()),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                a.lock().unwrap().push(Answer {
                    at: Instant::now(),
                    outcome,
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Traffic { answers, task }
    }

    pub fn all(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    pub fn failures(&self) -> Vec<Answer> {
        self.all()
            .into_iter()
            .filter(|a| a.outcome.is_err())
            .collect()
    }

    /// Instances that answered after `t`.
    pub fn answered_after(&self, t: Instant) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|a| a.at > t)
            .filter_map(|a| a.outcome.ok())
            .collect()
    }

    /// Waits until `n` answers after `t` came, then returns them.
    pub async fn next_answers(&self, t: Instant, n: usize) -> Vec<String> {
        crate::eventually(
            &format!("{n} answers through the load balancer"),
            Duration::from_secs(10),
            || async { self.answered_after(t).len() >= n },
        )
        .await;
        self.answered_after(t)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tiny HTTP server that records every JSON body POSTed to it (the alert webhook).
pub struct Webhook {
    pub url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    pub async fn start() -> Webhook {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = bodies.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let b = b.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        if let Ok(v) = serde_json::from_slice(&buf[end + 4..end + 4 + len]) {
                            b.lock().unwrap().push(v);
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                });
            }
        });
        Webhook { url, bodies, task }
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server standing in for a master's SSH port: greets each connection with
/// `<name>\n`, then echoes what it receives. `stop` closes the port (connection refused).
pub struct TcpEcho {
    pub port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpEcho {
    pub async fn start(name: &str) -> TcpEcho {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let greeting = format!("{name}\n");
                tokio::spawn(async move {
                    if s.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        TcpEcho {
            port,
            task: Some(task),
        }
    }

    /// Stops accepting: new connections are refused.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects to `port` through a load balancer: the greeting (who answered) and whether a line
/// sent comes back.
pub async fn tcp_greeting(port: u16) -> Result<String, String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.contains(&b'\n') {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed before the greeting"));
            }
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"ping\n").await?;
        let mut echo = Vec::new();
        while echo.len() < 5 {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed before the echo"));
            }
            echo.extend_from_slice(&buf[..n]);
        }
        if echo != b"ping\n" {
            return Err(std::io::Error::other("wrong echo"));
        }
        Ok(String::from_utf8_lossy(&got).trim().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())
}
