//! Membership, health and load balancers: real HAProxy and nginx (from the shipped examples) in
//! front of real sidecar processes (drain, undrain, SIGKILL, the maintenance procedure);
//! shared-fs discovery through join, crash, return and graceful leave; dns discovery; drain
//! across a restart, the admin token and X-Forwarded-For; `ha-sidecar status` in an outage.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::lb::{self, Traffic, Webhook};
use integration::{api, eventually, free_port, http, mesh_specs, patience, NodeSpec, Proc};

const ADMIN: &str = "admin-token-0123456789";

/// Fast membership timings for tests: a heartbeat every 200 ms, failed after 1 s of silence.
fn fast(extra: &str) -> String {
    format!(
        "[sidecar]\n  adminToken = {ADMIN}\n[peerInfo \"shared-fs\"]\n  heartbeat = 200ms\n  ttl = 1s\n{extra}"
    )
}

async fn health(h: &reqwest::Client, base: &str) -> u16 {
    match h.get(format!("{base}health")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn set_health(h: &reqwest::Client, base: &str, drain: bool, token: Option<&str>) -> u16 {
    let url = format!("{base}health");
    let mut req = if drain { h.delete(url) } else { h.post(url) };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn applied_evictions(h: &reqwest::Client, base: &str) -> f64 {
    api::metric(h, base, "ha_messages_applied_total", &["eviction"]).await
}

async fn peers(h: &reqwest::Client, base: &str) -> serde_json::Value {
    h.get(format!("{base}v1/peers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The state of `peer` (instance id) in `/v1/status` of the node at `base`.
async fn peer_state(h: &reqwest::Client, base: &str, peer: &str) -> Option<String> {
    let st = api::status(h, base).await;
    st["peers"].as_array()?.iter().find_map(|p| {
        (p["instance_id"] == peer || p["key"] == peer)
            .then(|| p["state"].as_str().unwrap().to_owned())
    })
}

/// Evicts `n` distinct keys of the forwarded `projects` cache through the local API.
async fn evictions(h: &reqwest::Client, local: &str, tag: &str, n: usize) {
    for i in 0..n {
        assert_eq!(
            api::evict(h, local, "projects", &[&format!("{tag}-{i}")]).await,
            202
        );
    }
}

/// How a test takes a node out of the load balancer and puts it back.
enum Lb {
    Haproxy {
        socket: PathBuf,
        backend: &'static str,
    },
    Nginx {
        prefix: PathBuf,
        conf: PathBuf,
        text: String,
    },
}

impl Lb {
    async fn wait_state(&self, server: &str, want: &str) -> Duration {
        let Lb::Haproxy { socket, backend } = self else {
            return Duration::ZERO;
        };
        let t = Instant::now();
        eventually(
            &format!("{backend}/{server} {want}"),
            Duration::from_secs(10),
            || async {
                lb::haproxy_status(socket, backend, server)
                    .await
                    .is_some_and(|s| s.starts_with(want))
            },
        )
        .await;
        t.elapsed()
    }

    /// nginx only: mark the upstream server of `addr` down (or not) and reload gracefully.
    fn nginx_mark(&self, addr: &str, down: bool) {
        let Lb::Nginx { prefix, conf, text } = self else {
            return;
        };
        let line = format!("server {addr} max_fails=1 fail_timeout=5s backup;");
        let new = if down {
            text.replace(
                &line,
                &format!("server {addr} max_fails=1 fail_timeout=5s backup down;"),
            )
            .replace(
                &format!("server {addr} max_fails=1 fail_timeout=5s;"),
                &format!("server {addr} max_fails=1 fail_timeout=5s down;"),
            )
        } else {
            text.clone()
        };
        std::fs::write(conf, new).unwrap();
        let out = Command::new(lb::require("nginx", "nginx"))
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(conf)
            .args(["-s", "reload"])
            .output()
            .unwrap();
        assert!(out.status.success(), "nginx reload: {out:?}");
    }

    /// Drain a node: DELETE /health on its sidecar (and, for nginx, which cannot read /health,
    /// mark it down and reload).
    async fn take_out(&self, h: &reqwest::Client, node: &NodeSpec, server: &str) {
        assert_eq!(
            set_health(h, &node.peer_url(), true, Some(ADMIN)).await,
            204
        );
        assert_eq!(health(h, &node.peer_url()).await, 503);
        self.nginx_mark(&format!("127.0.0.1:{}", node.listen_port), true);
        self.wait_state(server, "DOWN").await;
    }

    async fn put_back(&self, h: &reqwest::Client, node: &NodeSpec, server: &str) {
        assert_eq!(
            set_health(h, &node.peer_url(), false, Some(ADMIN)).await,
            204
        );
        self.nginx_mark(&format!("127.0.0.1:{}", node.listen_port), false);
        self.wait_state(server, "UP").await;
    }
}

/// Waits until every answer after some instant came from `who`, and at least `n` of them.
async fn all_from(t: &Traffic, who: &str, n: usize) -> Instant {
    // Requests already in flight when the switch happened may still come from the other node:
    // look for a run of `n` consecutive answers from `who`, starting after the switch began.
    let start = Instant::now();
    let mut from = start;
    eventually(
        &format!("{n} consecutive answers from {who}"),
        Duration::from_secs(10),
        || {
            let answers: Vec<lb::Answer> = t.all().into_iter().filter(|a| a.at > start).collect();
            let mut run = 0;
            let mut run_start = start;
            for a in &answers {
                if a.outcome.as_deref() == Ok(who) {
                    if run == 0 {
                        run_start = a.at;
                    }
                    run += 1;
                } else {
                    run = 0;
                }
            }
            if run >= n {
                from = run_start;
            }
            async move { run >= n }
        },
    )
    .await;
    from
}

/// Drives both load balancers through the same story: drain moves traffic, undrain brings it
/// back, SIGKILL fails over, `status` shows the outage, the maintenance procedure loses nothing.
/// One load balancer in front of nodes A and B: its two frontends and how to drive them.
struct LbSetup<'a> {
    kind: &'static str,
    specs: &'a [NodeSpec],
    /// The active/passive frontend (node-a primary, node-b backup) and its port.
    passive: Lb,
    f1: u16,
    /// The active/active frontend and its port.
    active: Lb,
    f2: u16,
}

async fn lb_story(setup: LbSetup<'_>, a: &mut Proc, b: &mut Proc) {
    let LbSetup {
        kind: lb_kind,
        specs,
        passive,
        f1,
        active,
        f2,
    } = setup;
    let h = http();
    let (ap, bp) = (specs[0].peer_url(), specs[1].peer_url());
    // Active/passive: node-a takes all traffic.
    passive.wait_state("master-1", "UP").await;
    passive.wait_state("master-2", "UP").await;
    let t1 = Traffic::start(format!("http://127.0.0.1:{f1}/v1/status"));
    all_from(&t1, "node-a", 10).await;
    assert!(
        !t1.answered_after(Instant::now() - Duration::from_secs(60))
            .iter()
            .any(|w| w == "node-b"),
        "{lb_kind}: the backup took traffic while the primary was healthy"
    );

    // Drain A: all traffic moves to B, no request fails.
    passive.take_out(&h, &specs[0], "master-1").await;
    all_from(&t1, "node-b", 20).await;
    // Undrain: traffic comes back to A.
    passive.put_back(&h, &specs[0], "master-1").await;
    all_from(&t1, "node-a", 20).await;
    assert!(
        t1.failures().is_empty(),
        "{lb_kind}: failed requests during drain/undrain: {:?}",
        t1.failures()
    );

    // Active/active: SIGKILL of B moves every request to A.
    let t2 = Traffic::start(format!("http://127.0.0.1:{f2}/v1/status"));
    active.wait_state("master-2", "UP").await;
    eventually(
        "both nodes answer active/active",
        Duration::from_secs(10),
        || {
            let seen = t2.answered_after(Instant::now() - Duration::from_secs(60));
            async move { seen.iter().any(|w| w == "node-a") && seen.iter().any(|w| w == "node-b") }
        },
    )
    .await;
    let killed = Instant::now();
    b.kill9();
    let down_after = active.wait_state("master-2", "DOWN").await;
    let moved = all_from(&t2, "node-a", 20).await;
    eprintln!(
        "{lb_kind}: B SIGKILLed; marked DOWN after {down_after:?}; all traffic on A from {:?} after the kill",
        moved.saturating_duration_since(killed)
    );
    if matches!(active, Lb::Haproxy { .. }) {
        assert!(
            down_after <= patience(Duration::from_secs(2)),
            "{lb_kind}: B marked down after {down_after:?}"
        );
    }
    assert!(
        t2.failures().is_empty(),
        "{lb_kind}: failed requests after SIGKILL: {:?}",
        t2.failures()
    );
    drop(t2);

    // `ha-sidecar status` during the outage: B failed, unreachable, with a backlog.
    evictions(&h, &specs[0].local_url(), "outage", 5).await;
    let mut last = String::new();
    eventually(
        "status shows node-b failed with its backlog",
        Duration::from_secs(10),
        || {
            let out = Command::new(integration::bin())
                .args(["status", "--url", &ap])
                .output()
                .unwrap();
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let row = last
                .lines()
                .find(|l| l.starts_with("node-b") || l.contains(&bp))
                .unwrap_or("")
                .to_owned();
            let cells: Vec<&str> = row.split_whitespace().collect();
            let ok = out.status.code() == Some(1)
                && last.lines().nth(1).is_some_and(|l| l.starts_with("PEER"))
                // PEER URL ROLE STATE REACHABLE BACKLOG ...
                && cells.get(3) == Some(&"failed")
                && cells.get(4) == Some(&"NO")
                && cells.get(5) == Some(&"5")
                && row.contains("connection failed")
                && row.ends_with("WARNING");
            async move { ok }
        },
    )
    .await;
    eprintln!("{lb_kind}: `ha-sidecar status` during the outage:\n{last}");

    // B comes back: /health stays 503 until A delivered the backlog ("catching up").
    b.start();
    b.wait_ready(&h).await;
    eventually("B healthy", Duration::from_secs(10), || async {
        health(&h, &bp).await == 204
    })
    .await;
    assert_eq!(
        applied_evictions(&h, &bp).await,
        5.0,
        "{lb_kind}: B turned healthy before it caught up"
    );
    active.wait_state("master-2", "UP").await;

    // The maintenance procedure on the primary, under traffic: drain → stop → (update) →
    // start → catch up → healthy. No request fails; what B accepted meanwhile reaches A.
    passive.take_out(&h, &specs[0], "master-1").await;
    all_from(&t1, "node-b", 10).await;
    let st = a.terminate(libc::SIGTERM, Duration::from_secs(20));
    assert!(st.success(), "graceful stop: {st:?}");
    eventually(
        "B sees A as left (not failed)",
        Duration::from_secs(10),
        || async { peer_state(&h, &bp, "node-a").await.as_deref() == Some("left") },
    )
    .await;
    evictions(&h, &specs[1].local_url(), "maintenance", 20).await;
    a.start();
    a.wait_ready(&h).await;
    eventually(
        "A caught up (still drained)",
        Duration::from_secs(15),
        || async { api::status(&h, &ap).await["health"] == "drained" },
    )
    .await;
    assert_eq!(
        applied_evictions(&h, &ap).await,
        20.0,
        "{lb_kind}: A left catching-up before receiving the backlog"
    );
    assert_eq!(health(&h, &ap).await, 503, "the drain survived the restart");
    passive.put_back(&h, &specs[0], "master-1").await;
    all_from(&t1, "node-a", 20).await;
    eventually("B sees A up again", Duration::from_secs(10), || async {
        peer_state(&h, &bp, "node-a").await.as_deref() == Some("up")
    })
    .await;
    assert!(
        t1.failures().is_empty(),
        "{lb_kind}: failed requests during maintenance: {:?}",
        t1.failures()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_drain_kill_and_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, &fast(""));
    let mut a = Proc::spawn(&specs[0], dir.path(), &[]);
    let mut b = Proc::spawn(&specs[1], dir.path(), &[]);
    let h = http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let (f1, f2) = (free_port(), free_port());
    let (_hp, socket) = lb::start_haproxy(
        dir.path(),
        &[
            ("bind :8080", format!("bind 127.0.0.1:{f1}")),
            ("bind :8081", format!("bind 127.0.0.1:{f2}")),
            ("bind :29418", format!("bind 127.0.0.1:{}", free_port())),
            ("bind :29419", format!("bind 127.0.0.1:{}", free_port())),
            // The test's "masters" are the sidecars themselves: they serve /v1/status and
            // /health on one port, so the check goes to the server's own port.
            (" port 7710", String::new()),
            (
                "192.0.2.11:8080",
                format!("127.0.0.1:{}", specs[0].listen_port),
            ),
            (
                "192.0.2.12:8080",
                format!("127.0.0.1:{}", specs[1].listen_port),
            ),
        ],
    );
    let passive = Lb::Haproxy {
        socket: socket.clone(),
        backend: "masters",
    };
    let active = Lb::Haproxy {
        socket,
        backend: "masters-active-active",
    };
    lb_story(
        LbSetup {
            kind: "haproxy",
            specs: &specs,
            passive,
            f1,
            active,
            f2,
        },
        &mut a,
        &mut b,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passive_failover_drain_by_reload_and_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, &fast(""));
    let mut a = Proc::spawn(&specs[0], dir.path(), &[]);
    let mut b = Proc::spawn(&specs[1], dir.path(), &[]);
    let h = http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let (f1, f2) = (free_port(), free_port());
    let (aa, ba) = (
        format!("127.0.0.1:{}", specs[0].listen_port),
        format!("127.0.0.1:{}", specs[1].listen_port),
    );
    let lb::Nginx {
        proc: _ng,
        prefix,
        conf,
        text,
    } = lb::start_nginx(
        dir.path(),
        &[
            ("listen 8080;", format!("listen 127.0.0.1:{f1};")),
            ("listen 8081;", format!("listen 127.0.0.1:{f2};")),
            (
                "listen 29418;",
                format!("listen 127.0.0.1:{};", free_port()),
            ),
            (
                "listen 29419;",
                format!("listen 127.0.0.1:{};", free_port()),
            ),
            ("192.0.2.11:8080", aa.clone()),
            ("192.0.2.12:8080", ba.clone()),
        ],
    );
    eventually("nginx listens", Duration::from_secs(5), || async {
        h.get(format!("http://127.0.0.1:{f1}/v1/status"))
            .send()
            .await
            .is_ok()
    })
    .await;
    let passive = Lb::Nginx {
        prefix: prefix.clone(),
        conf: conf.clone(),
        text: text.clone(),
    };
    let active = Lb::Nginx { prefix, conf, text };
    lb_story(
        LbSetup {
            kind: "nginx",
            specs: &specs,
            passive,
            f1,
            active,
            f2,
        },
        &mut a,
        &mut b,
    )
    .await;
}

/// Specs for `n` shared-fs nodes (no static peers) sharing one directory.
fn shared_fs_specs(dir: &Path, n: usize, extra: &str) -> Vec<NodeSpec> {
    let mut specs = mesh_specs(
        dir,
        n,
        &fast(&format!("[peerInfo]\n  strategy = shared-fs\n{extra}")),
    );
    for s in &mut specs {
        s.peers.clear();
    }
    specs
}

async fn present_ids(h: &reqwest::Client, base: &str) -> Vec<String> {
    let mut v: Vec<String> = peers(h, base).await["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["instance_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_fs_join_crash_return_and_leave() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::start().await;
    let specs = shared_fs_specs(
        dir.path(),
        3,
        &format!("[alert]\n  webhookUrl = {}\n", hook.url),
    );
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let b = Proc::spawn(&specs[1], dir.path(), &[]);
    let h = http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let (ap, bp, cp) = (
        specs[0].peer_url(),
        specs[1].peer_url(),
        specs[2].peer_url(),
    );
    eventually(
        "A and B find each other",
        Duration::from_secs(10),
        || async {
            present_ids(&h, &ap).await == ["node-b"] && present_ids(&h, &bp).await == ["node-a"]
        },
    )
    .await;

    // C joins: it finds A and B, and they find it, within heartbeat + ttl.
    let mut c = Proc::spawn(&specs[2], dir.path(), &[]);
    c.wait_ready(&h).await;
    let ready = Instant::now();
    eventually(
        "C discovers A and B and is discovered",
        Duration::from_secs(10),
        || async {
            present_ids(&h, &cp).await == ["node-a", "node-b"]
                && present_ids(&h, &ap).await == ["node-b", "node-c"]
                && present_ids(&h, &bp).await == ["node-a", "node-c"]
        },
    )
    .await;
    let joined = ready.elapsed();
    eprintln!("shared-fs: C discovered both ways {joined:?} after it was ready");
    assert!(
        joined <= patience(Duration::from_millis(1200)),
        "heartbeat + ttl is 1.2 s; took {joined:?}"
    );

    // C crashes: reported as failed (log, metric, status, webhook); its queue is kept and filled.
    c.kill9();
    let killed = Instant::now();
    eventually(
        "A and B report C failed",
        Duration::from_secs(10),
        || async {
            peer_state(&h, &ap, "node-c").await.as_deref() == Some("failed")
                && peer_state(&h, &bp, "node-c").await.as_deref() == Some("failed")
        },
    )
    .await;
    eprintln!(
        "shared-fs: C reported failed {:?} after SIGKILL",
        killed.elapsed()
    );
    let st = api::status(&h, &ap).await;
    let row = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "node-c")
        .unwrap()
        .clone();
    assert_eq!(row["level"], "warning", "{row}");
    assert_eq!(
        api::metric(&h, &ap, "ha_peer_failures_total", &["node-c"]).await,
        1.0
    );
    assert!(a.log().contains("peer failed"), "warning log");
    eventually(
        "webhook got both failure alerts",
        Duration::from_secs(5),
        || async {
            let b = hook.bodies();
            ["node-a", "node-b"].iter().all(|n| {
                b.iter().any(|v| {
                    v["event"] == "peer_failed" && v["peer"] == "node-c" && v["node"] == *n
                })
            })
        },
    )
    .await;
    evictions(&h, &specs[0].local_url(), "while-c-down-a", 10).await;
    evictions(&h, &specs[1].local_url(), "while-c-down-b", 7).await;
    let retained = peers(&h, &ap).await["retained"].clone();
    assert_eq!(retained[0]["key"], "node-c", "{retained}");
    assert_eq!(retained[0]["outbox_depth"], 10, "{retained}");

    // C returns within retainAbsent: it is healthy only once it received everything it missed.
    c.start();
    c.wait_ready(&h).await;
    eventually("C healthy", Duration::from_secs(10), || async {
        health(&h, &cp).await == 204
    })
    .await;
    assert_eq!(
        applied_evictions(&h, &cp).await,
        17.0,
        "C turned healthy before catching up"
    );
    eventually(
        "A and B see C up; webhook got recovery",
        Duration::from_secs(10),
        || async {
            peer_state(&h, &ap, "node-c").await.as_deref() == Some("up")
                && peer_state(&h, &bp, "node-c").await.as_deref() == Some("up")
                && hook.bodies().iter().any(|v| v["event"] == "peer_recovered")
        },
    )
    .await;

    // C stops gracefully: reported as left, not failed; its heartbeat file is gone.
    let st = c.terminate(libc::SIGTERM, Duration::from_secs(20));
    assert!(st.success());
    eventually("A and B report C left", Duration::from_secs(5), || async {
        peer_state(&h, &ap, "node-c").await.as_deref() == Some("left")
            && peer_state(&h, &bp, "node-c").await.as_deref() == Some("left")
    })
    .await;
    assert!(!specs[2].shared_dir.join("members/node-c.json").exists());
    assert_eq!(
        api::metric(&h, &ap, "ha_peer_failures_total", &["node-c"]).await,
        1.0,
        "a leave is not a failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_peer_queue_is_kept_then_deleted_after_retain_absent() {
    let dir = tempfile::tempdir().unwrap();
    let specs = shared_fs_specs(dir.path(), 2, "[peerInfo]\n  retainAbsent = 1500ms\n");
    let a = integration::start_in_process(&specs[0], dir.path()).await;
    let b = integration::start_in_process(&specs[1], dir.path()).await;
    let h = http();
    let ap = specs[0].peer_url();
    eventually("A finds B", Duration::from_secs(10), || async {
        present_ids(&h, &ap).await == ["node-b"]
    })
    .await;
    b.shutdown().await;
    eventually(
        "A keeps B's queue as a left peer",
        Duration::from_secs(5),
        || async {
            let p = peers(&h, &ap).await;
            p["peers"].as_array().unwrap().is_empty() && p["retained"][0]["state"] == "left"
        },
    )
    .await;
    evictions(&h, &specs[0].local_url(), "kept", 3).await;
    assert_eq!(peers(&h, &ap).await["retained"][0]["outbox_depth"], 3);
    let outbox = specs[0].data_dir.join("outbox");
    let queues = || {
        std::fs::read_dir(&outbox)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .count()
    };
    assert_eq!(queues(), 1);
    eventually(
        "B's queue deleted after retainAbsent",
        Duration::from_secs(10),
        || async {
            let p = peers(&h, &ap).await;
            p["retained"].as_array().unwrap().is_empty() && queues() == 0
        },
    )
    .await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_strategy_forwards_to_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let secret = integration::write_secret(
        dir.path(),
        "peer.key",
        "0123456789abcdef0123456789abcdef-dns",
    );
    let hosts = dir.path().join("hosts");
    let write_hosts = |ips: &[&str]| {
        let text: String = ips
            .iter()
            .map(|ip| format!("{ip} ha-sidecar.review.test\n"))
            .collect();
        std::fs::write(
            &hosts,
            format!("# test resolver\n127.0.0.9 unrelated.test\n{text}"),
        )
        .unwrap();
    };
    write_hosts(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    let port = free_port();
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let mut nodes = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let id = format!("dns-{i}");
        let text = format!(
            "[main]\n  instanceId = {id}\n  sharedDirectory = {shared}\n  dataDirectory = {data}\n\
             [sidecar]\n  listenUrl = http://{ip}:{port}/\n  localListenUrl = http://127.0.0.1:0/\n\
             [peerInfo]\n  strategy = dns\n[peerInfo \"dns\"]\n  name = ha-sidecar.review.test\n  port = {port}\n  \
             interval = 200ms\n  hostsFile = {hosts}\n[peerInfo \"shared-fs\"]\n  heartbeat = 200ms\n  ttl = 1s\n\
             [http]\n  retryInterval = 50ms\n  maxRetryInterval = 500ms\n[auth]\n  secretFile = {secret}\n",
            shared = dir.path().join("shared").display(),
            data = dir.path().join(&id).display(),
            hosts = hosts.display(),
            secret = secret.display(),
        );
        let cfg = integration::parse_config(&text, dir.path());
        let listeners = ha_sidecar::app::Listeners {
            peer: std::net::TcpListener::bind((*ip, port)).unwrap(),
            local: std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap(),
        };
        nodes.push(ha_sidecar::app::Node::start(cfg, listeners).await.unwrap());
    }
    let h = http();
    let base = |i: usize| format!("http://{}:{port}/", ips[i]);
    let urls = |i: usize| -> Vec<String> { (0..3).filter(|j| *j != i).map(base).collect() };
    for i in 0..3 {
        let want = urls(i);
        eventually(
            &format!("node {i} resolves its two peers"),
            Duration::from_secs(10),
            || {
                let (h, b, want) = (h.clone(), base(i), want.clone());
                async move {
                    let mut got: Vec<String> = peers(&h, &b).await["peers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p["url"].as_str().unwrap().to_owned())
                        .collect();
                    got.sort();
                    got == want
                }
            },
        )
        .await;
    }
    // An eviction on node 0 reaches both records.
    let l0 = nodes[0].local_url();
    for n in &nodes[1..] {
        assert_eq!(
            api::put(&h, &n.local_url(), "projects", "k", serde_json::json!(1)).await,
            204
        );
    }
    assert_eq!(api::evict(&h, &l0, "projects", &["k"]).await, 202);
    for n in &nodes[1..] {
        let l = n.local_url();
        eventually(
            "eviction reached a dns peer",
            Duration::from_secs(10),
            || {
                let (h, l) = (h.clone(), l.clone());
                async move { api::get(&h, &l, "projects", "k").await == 404 }
            },
        )
        .await;
    }
    // A record disappears: node 0 stops forwarding to it and keeps its queue (failed: no leave).
    write_hosts(&["127.0.0.1", "127.0.0.2"]);
    eventually(
        "the vanished record is retained, not forwarded to",
        Duration::from_secs(10),
        || async {
            let p = peers(&h, &base(0)).await;
            p["peers"].as_array().unwrap().len() == 1
                && p["retained"][0]["url"] == base(2)
                && p["retained"][0]["state"] == "failed"
        },
    )
    .await;
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_survives_restart_admin_token_and_forwarded_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = mesh_specs(
        dir.path(),
        1,
        &fast("[sidecar]\n  trustedProxies = 10.9.0.0/16\n"),
    )
    .remove(0);
    spec.peers.clear();
    let json = ("HA_LOG_FORMAT", "json");
    let mut n = Proc::spawn(&spec, dir.path(), &[json]);
    let h = http();
    n.wait_ready(&h).await;
    let p = spec.peer_url();
    eventually("healthy", Duration::from_secs(5), || async {
        health(&h, &p).await == 204
    })
    .await;
    assert_eq!(set_health(&h, &p, true, None).await, 401, "no token");
    assert_eq!(
        set_health(&h, &p, true, Some("wrong-token-0123456789")).await,
        401,
        "wrong token"
    );
    assert_eq!(health(&h, &p).await, 204, "a refused drain changes nothing");
    assert_eq!(set_health(&h, &p, true, Some(ADMIN)).await, 204);
    assert_eq!(health(&h, &p).await, 503);

    // X-Forwarded-For from an untrusted address is ignored in the access log.
    let xff = |ip: &'static str| {
        let (h, p) = (h.clone(), p.clone());
        async move {
            let r = h
                .get(format!("{p}v1/status"))
                .header("x-forwarded-for", ip)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    xff("203.0.113.5").await;
    eventually("access log line", Duration::from_secs(5), || async {
        n.log()
            .lines()
            .any(|l| l.contains("access") && l.contains("/v1/status"))
    })
    .await;
    let log = n.log();
    assert!(log.contains(r#""client":"127.0.0.1""#), "{log}");
    assert!(
        !log.contains("203.0.113.5"),
        "an untrusted X-Forwarded-For was believed:\n{log}"
    );

    // Restart trusting loopback: still drained; now the forwarded address is the client.
    assert!(n
        .terminate(libc::SIGTERM, Duration::from_secs(20))
        .success());
    let mut n2 = Proc::spawn(
        &spec,
        dir.path(),
        &[json, ("HA_SIDECAR_TRUSTEDPROXIES", "127.0.0.1/32")],
    );
    n2.wait_ready(&h).await;
    // 503 all along: "catching up" first, then "drained" — never healthy in between.
    eventually(
        "drained after the restart",
        Duration::from_secs(5),
        || async {
            let r = h.get(format!("{p}health")).send().await.unwrap();
            assert_eq!(r.status(), 503, "the drain survived the restart");
            r.text().await.unwrap().contains("drained")
        },
    )
    .await;
    xff("203.0.113.7").await;
    eventually(
        "trusted X-Forwarded-For used",
        Duration::from_secs(5),
        || async { n2.log().contains(r#""client":"203.0.113.7""#) },
    )
    .await;
    assert_eq!(set_health(&h, &p, false, Some(ADMIN)).await, 204);
    assert_eq!(health(&h, &p).await, 204);
    let _ = n2.terminate(libc::SIGTERM, Duration::from_secs(20));
}
