//! Memory after floods (issue 14, item 6), on a real process: RSS before, during and after
//! 10,000 connections each sending a peer request head and one body byte, and after 40
//! unsigned 31 MiB bodies.

use std::time::{Duration, Instant};

use integration::{http, mesh_specs, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap()
        / 1024.0
}

fn head(port: u16, len: usize) -> String {
    format!(
        "POST /v1/peer/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// `n` connections open at once, each sending a request head without its end (so the node
/// holds it until its request timeout) and waiting until the node closes it; returns the
/// highest RSS seen meanwhile.
async fn connections(pid: i32, port: u16, n: usize) -> f64 {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                let part = format!("POST /v1/peer/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
                let _ = s.write_all(part.as_bytes()).await;
                let mut buf = [0u8; 512];
                let _ = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
            })
        })
        .collect();
    let mut most: f64 = 0.0;
    let end = Instant::now() + Duration::from_secs(25);
    while !tasks.iter().all(|t| t.is_finished()) && Instant::now() < end {
        most = most.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    most
}

/// 40 unsigned 31 MiB bodies at once (refused before the body; sent until the node closes).
async fn big_bodies(port: u16) {
    const BODY: usize = 31 << 20;
    let senders: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                s.write_all(head(port, BODY).as_bytes()).await.unwrap();
                let chunk = vec![b' '; 1 << 20];
                let mut sent = 0;
                while sent < BODY {
                    match tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk)).await {
                        Ok(Ok(())) => sent += chunk.len(),
                        _ => break,
                    }
                }
            })
        })
        .collect();
    for t in senders {
        t.await.unwrap();
    }
}

/// How long after a flood its memory is looked at: two of the trimmer's intervals and a second.
const SETTLE: Duration = Duration::from_secs(11);

/// The RSS (MiB) of a node: idle, during and after the connection flood, after the big bodies;
/// `env` for the allocator's variables.
pub async fn measure(env: &[(&str, &str)]) -> [f64; 4] {
    ha_sidecar::app::raise_open_files_limit();
    let dir = tempfile::tempdir().unwrap();
    let spec = mesh_specs(dir.path(), 1, "").remove(0);
    let p = Proc::spawn(&spec, dir.path(), env);
    let h = http();
    p.wait_ready(&h).await;
    let idle = rss_mib(p.pid());
    let during = connections(p.pid(), spec.listen_port, 10_000).await;
    tokio::time::sleep(SETTLE).await;
    let after = rss_mib(p.pid());
    big_bodies(spec.listen_port).await;
    tokio::time::sleep(SETTLE).await;
    let after_bodies = rss_mib(p.pid());
    [idle, during, after, after_bodies]
}

/// The node's memory comes back after 10,000 connections held at once have closed (it stayed at
/// the peak, ~125 MiB, before the trimmer) and after 40 unsigned 31 MiB bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_returns_after_a_connection_flood() {
    let [idle, during, after, bodies] = measure(&[]).await;
    eprintln!("idle {idle:.1} MiB, during {during:.1}, after 10k connections {after:.1}, after 40 bodies {bodies:.1}");
    // The flood did take memory (else this would prove nothing) …
    assert!(
        during > idle + 40.0,
        "the flood took {during:.1} MiB from {idle:.1}"
    );
    // … and it was given back.
    assert!(
        after < idle + 30.0,
        "{after:.1} MiB after the flood (idle {idle:.1})"
    );
    assert!(
        bodies < idle + 30.0,
        "{bodies:.1} MiB after the bodies (idle {idle:.1})"
    );
}

/// Measurement for `bench/NOTES.md`: glibc (with the trimmer), glibc with two arenas, jemalloc
/// preloaded, in one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand"]
async fn rss_after_floods_by_allocator() {
    let jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
    for (name, env) in [
        ("glibc", vec![]),
        (
            "glibc arena_max=2",
            vec![("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")],
        ),
        ("jemalloc (LD_PRELOAD)", vec![("LD_PRELOAD", jemalloc)]),
    ] {
        let [idle, during, after, bodies] = measure(&env).await;
        eprintln!(
            "{name}: idle {idle:.1} MiB, during {during:.1}, after 10k connections {after:.1}, after 40 bodies {bodies:.1}"
        );
    }
}
