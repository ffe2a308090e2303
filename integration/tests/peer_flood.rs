//! Hostile clients on the peer API (issue 14, item 2), on a real process: requests without a
//! valid signature are refused `401` before one body byte is read (a declared 31 MiB body is
//! never sent, yet the answer comes), so 40 unsigned 31 MiB bodies do not grow the process;
//! 2,000 connections trickling unsigned bodies are answered and closed while `/health` answers
//! within a second.

use std::time::{Duration, Instant};

use integration::{http, mesh_specs, patience, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY: usize = 31 << 20;

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn head(port: u16, len: usize, extra: &str) -> String {
    format!(
        "POST /v1/peer/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n{extra}\r\n"
    )
}

/// The status line's code of whatever the server answered (0 when it closed without one).
async fn status_of(s: &mut TcpStream, within: Duration) -> u16 {
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            Ok(_) => return 0,
            Err(_) => panic!("no answer within {within:?}"),
        }
    }
    let line = String::from_utf8_lossy(&got);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn node() -> (tempfile::TempDir, integration::NodeSpec, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let spec = mesh_specs(dir.path(), 1, "").remove(0);
    let p = Proc::spawn(&spec, dir.path(), &[]);
    (dir, spec, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_before_the_body_and_memory_stays_flat() {
    let (_dir, spec, p) = node();
    p.wait_ready(&http()).await;
    let port = spec.listen_port;
    let now = ha_sidecar::peers::outbox::now_ms();
    let hash = "ab".repeat(32);
    let bad = [
        ("unsigned", String::new()),
        (
            "malformed",
            format!("X-HA-Timestamp: soon\r\nX-HA-Nonce: {hash}\r\nX-HA-Signature: zz\r\n"),
        ),
        (
            "stale",
            format!(
                "X-HA-Timestamp: {}\r\nX-HA-Nonce: {hash}\r\nX-HA-Signature: {hash}\r\nX-HA-Content-SHA256: {hash}\r\n",
                now - 3_600_000
            ),
        ),
        (
            "wrong",
            format!(
                "X-HA-Timestamp: {now}\r\nX-HA-Nonce: {hash}\r\nX-HA-Signature: {hash}\r\nX-HA-Content-SHA256: {hash}\r\n"
            ),
        ),
    ];
    // Headers only: the 31 MiB body is never sent, so an answer proves it was not awaited.
    for (what, headers) in &bad {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(head(port, BODY, headers).as_bytes())
            .await
            .unwrap();
        let code = status_of(&mut s, patience(Duration::from_secs(2))).await;
        assert_eq!(code, 401, "{what}");
    }

    // 40 unsigned 31 MiB bodies at once: refused without being buffered.
    let before = rss_kib(p.pid());
    let pid = p.pid();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let sampler = tokio::spawn(async move {
        let mut most = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            most = most.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        most
    });
    let senders: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                s.write_all(head(port, BODY, "").as_bytes()).await.unwrap();
                let chunk = vec![b' '; 1 << 20];
                let mut sent = 0;
                // Until the server stops taking bytes (it closed) or the body is out.
                while sent < BODY {
                    match tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk)).await {
                        Ok(Ok(())) => sent += chunk.len(),
                        _ => break,
                    }
                }
                (status_of(&mut s, Duration::from_secs(10)).await, sent)
            })
        })
        .collect();
    for t in senders {
        let (code, _sent) = t.await.unwrap();
        assert!(matches!(code, 401 | 0), "{code}");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = sampler.await.unwrap();
    let grew = peak.saturating_sub(before) / 1024;
    // Before this change the node buffered every body: 40 × 31 MiB = 1.2 GiB.
    assert!(grew < 150, "RSS peaked {grew} MiB above {before} KiB");
    eprintln!("rss before {before} KiB, peak {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_unsigned_bodies_are_closed_while_health_answers() {
    ha_sidecar::app::raise_open_files_limit();
    let (_dir, spec, p) = node();
    let h = http();
    p.wait_ready(&h).await;
    let port = spec.listen_port;
    let mut conns = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(head(port, 1 << 20, "").as_bytes())
            .await
            .unwrap();
        // One byte of the body, then nothing: a trickle.
        s.write_all(b"{").await.unwrap();
        conns.push(s);
    }
    let health = format!("{}health", spec.peer_url());
    for _ in 0..5 {
        let started = Instant::now();
        let r = h.get(&health).send().await.unwrap();
        assert!(r.status().as_u16() < 600);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/health took {:?}",
            started.elapsed()
        );
    }
    // Every one was answered 401 and closed; none is left holding the node.
    let mut refused = 0;
    for s in conns.iter_mut() {
        if status_of(s, patience(Duration::from_secs(10))).await == 401 {
            refused += 1;
        }
    }
    assert_eq!(refused, 2000);
}
