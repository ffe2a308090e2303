//! A connection flood on a real process (issue 14, item 2): with `sidecar.maxConnections` = 64
//! and `reservedConnections` = 32, clients beyond the soft limit get `503` for ordinary paths at
//! once, idle ones are closed, and through a flood of 150 reconnecting idle connections `/health`
//! answers within a second and a peer's eviction is still delivered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::{api, eventually, http, mesh_specs, patience, Proc};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const MAX: usize = 64;
const RESERVED: usize = 32;

/// `/health` on `base` answers (any status) within a second.
async fn health_within_a_second(h: &reqwest::Client, base: &str) {
    let started = Instant::now();
    let r = h
        .get(format!("{base}health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let took = started.elapsed();
    assert!(r.is_ok(), "/health failed after {took:?}: {r:?}");
    assert!(took < Duration::from_secs(1), "/health took {took:?}");
}

/// `n` tasks each holding one idle connection to `port`, reconnecting when the server closes
/// it, until `stop` (and at most `bound`). Returns how many connections were opened in all.
fn flood(
    port: u16,
    n: usize,
    stop: Arc<AtomicBool>,
    bound: Duration,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let end = Instant::now() + bound;
                let mut opened = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    opened += 1;
                    let mut buf = [0u8; 64];
                    // Idle until the server closes it (or the flood ends).
                    loop {
                        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf))
                            .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(_)) => {}
                            Err(_) if stop.load(Ordering::Relaxed) || Instant::now() > end => break,
                            Err(_) => {}
                        }
                    }
                }
                opened
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_leaves_health_and_peer_traffic_answered() {
    let dir = tempfile::tempdir().unwrap();
    let extra =
        format!("[sidecar]\n  maxConnections = {MAX}\n  reservedConnections = {RESERVED}\n");
    let specs = mesh_specs(dir.path(), 2, &extra);
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let b = Proc::spawn(&specs[1], dir.path(), &[]);
    let h = http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let (al, bl, bp) = (
        specs[0].local_url(),
        specs[1].local_url(),
        specs[1].peer_url(),
    );
    let port = specs[1].listen_port;
    let open = |t: &str| api::metric_in(t, "ha_connections", &["listener=\"peer\""]);

    // Every series exists from the start.
    let text = api::metrics_text(&h, &bp).await;
    for reason in ["request", "idle"] {
        assert!(
            text.contains(&format!(
                "ha_connections_refused_total{{listener=\"peer\",reason=\"{reason}\"}} 0"
            )),
            "{reason}: {text}"
        );
    }

    // The soft limit (MAX − RESERVED) taken by idle connections: an ordinary request beyond it
    // is refused at once and its connection closed; a reserved one is served.
    let mut held = Vec::new();
    for _ in 0..MAX - RESERVED {
        held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    eventually(
        "the idle connections are counted",
        Duration::from_secs(3),
        || async {
            let t = api::metrics_text(&h, &bp).await;
            open(&t) >= (MAX - RESERVED) as f64
        },
    )
    .await;
    let started = Instant::now();
    let r = h.get(format!("{bp}v1/status")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503, "above the soft limit");
    assert_eq!(
        r.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    health_within_a_second(&h, &bp).await;
    drop(held);

    // A flood of 150 idle connections, reconnecting as the node closes them, for at most 20 s.
    let stop = Arc::new(AtomicBool::new(false));
    let flooders = flood(port, 150, stop.clone(), patience(Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        health_within_a_second(&h, &bp).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A's batch to B is a reserved path: the eviction arrives through the flood.
    assert_eq!(
        api::put(&h, &bl, "projects", "k1", json!({"v": 1})).await,
        204
    );
    assert_eq!(api::evict(&h, &al, "projects", &["k1"]).await, 202);
    eventually(
        "the eviction reaches B through the flood",
        Duration::from_secs(10),
        || async { api::get(&h, &bl, "projects", "k1").await == 404 },
    )
    .await;
    let text = api::metrics_text(&h, &bp).await;
    let now_open = open(&text);
    let idle = api::metric_in(
        &text,
        "ha_connections_refused_total",
        &["listener=\"peer\"", "reason=\"idle\""],
    );
    stop.store(true, Ordering::Relaxed);
    let mut opened = 0;
    for f in flooders {
        opened += f.await.unwrap();
    }
    eprintln!("flood: {opened} connections opened; {now_open} open at once; {idle} idle closed");
    assert!(now_open <= MAX as f64, "{now_open} connections open");
    assert!(
        idle > 0.0,
        "idle connections above the soft limit were closed"
    );
    assert!(opened > 150, "the flood reconnected: {opened}");

    // Once the flood is over, the node serves ordinary requests again.
    eventually(
        "ordinary requests are served again",
        Duration::from_secs(10),
        || async {
            h.get(format!("{bp}v1/status"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
                == 200
        },
    )
    .await;
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// B starts with an open-files limit of 400 it cannot raise: each listener gets 100 connections
/// (half of what is left once 200 are kept for the stores), so 600 idle connections flooding its
/// peer listener never bring it near the limit, and A's evictions still reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_open_files_limit_does_not_stop_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, "");
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let b = Proc::spawn_with_nofile(&specs[1], dir.path(), 400);
    let h = http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    assert!(b.log().contains("connection limit"), "{}", b.log());
    let (al, bl, bp) = (
        specs[0].local_url(),
        specs[1].local_url(),
        specs[1].peer_url(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flooders = flood(
        specs[1].listen_port,
        600,
        stop.clone(),
        patience(Duration::from_secs(30)),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut most_fds = 0;
    for i in 0..20 {
        let key = format!("k{i}");
        assert_eq!(
            api::put(&h, &bl, "projects", &key, json!({"v": i})).await,
            204
        );
        assert_eq!(api::evict(&h, &al, "projects", &[key.as_str()]).await, 202);
        eventually(
            "the eviction reaches B through the flood",
            Duration::from_secs(10),
            || async { api::get(&h, &bl, "projects", &key).await == 404 },
        )
        .await;
        health_within_a_second(&h, &bp).await;
        most_fds = most_fds.max(open_fds(b.pid()));
    }
    stop.store(true, Ordering::Relaxed);
    let mut opened = 0;
    for f in flooders {
        opened += f.await.unwrap();
    }
    eprintln!("flood: {opened} connections opened; B held at most {most_fds} descriptors of 400");
    assert!(most_fds < 400 - 100, "B held {most_fds} descriptors");
    assert!(!b.log().contains("Too many open files"), "{}", b.log());
}
