//! Real processes of the built binary: nothing is lost through SIGSTOP, SIGKILL and restart;
//! graceful shutdown; exit codes of bad configs; the demo.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use integration::{api, eventually, http, mesh_specs, Proc};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_forward_evictions_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, "[cache]\n  pattern = ^my_.*\n");
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let b = Proc::spawn(&specs[1], dir.path(), &[]);
    let h = http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let (al, bl) = (specs[0].local_url(), specs[1].local_url());
    assert_eq!(api::put(&h, &bl, "my_cache", "k", json!(1)).await, 204);
    assert_eq!(api::put(&h, &bl, "my_cache", "j", json!(1)).await, 204);
    assert_eq!(api::put(&h, &bl, "other", "k", json!(1)).await, 204);
    assert_eq!(api::evict(&h, &al, "my_cache", &["k"]).await, 202);
    assert_eq!(api::evict(&h, &al, "other", &["k"]).await, 202);
    eventually("eviction on B", Duration::from_secs(10), || async {
        api::get(&h, &bl, "my_cache", "k").await == 404
    })
    .await;
    assert_eq!(api::flush(&h, &al, "my_cache").await, 202);
    eventually("flush on B", Duration::from_secs(10), || async {
        api::get(&h, &bl, "my_cache", "j").await == 404
    })
    .await;
    assert_eq!(
        api::get(&h, &bl, "other", "k").await,
        200,
        "not matching cache.pattern: not forwarded"
    );
}

/// Acceptance: B frozen, 10,000 evictions accepted on A, A SIGKILLed and restarted, B thawed:
/// every eviction reaches B once, in order; then the outbox is empty and its files reclaimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_through_freeze_kill_and_restart() {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, "[sidecar]\n  outboxSegmentSize = 64k\n");
    let mut a = Proc::spawn(&specs[0], dir.path(), &[]);
    let b = Proc::spawn(
        &specs[1],
        dir.path(),
        &[
            ("HA_LOG", "info,ha_sidecar::receiver=debug"),
            ("HA_LOG_FORMAT", "json"),
        ],
    );
    let h = http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let (al, bl, ap) = (
        specs[0].local_url(),
        specs[1].local_url(),
        specs[0].peer_url(),
    );

    // Keys on B that the evictions will remove.
    futures_util::stream::iter(0..N)
        .for_each_concurrent(16, |i| {
            let (h, bl) = (h.clone(), bl.clone());
            async move {
                assert_eq!(
                    api::put(&h, &bl, "projects", &format!("k{i}"), json!(i)).await,
                    204
                )
            }
        })
        .await;

    b.freeze();
    futures_util::stream::iter(0..N)
        .for_each_concurrent(32, |i| {
            let (h, al) = (h.clone(), al.clone());
            async move {
                assert_eq!(
                    api::evict(&h, &al, "projects", &[&format!("k{i}")]).await,
                    202
                )
            }
        })
        .await;
    let st = api::status(&h, &ap).await;
    assert_eq!(
        st["peers"][0]["outbox_depth"], N as u64,
        "all accepted and queued: {st}"
    );
    let queue_dir = std::fs::read_dir(specs[0].data_dir.join("outbox"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    let segs = |p: &std::path::Path| {
        std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .count()
    };
    assert!(
        segs(&queue_dir) > 5,
        "backlog spans several segments on disk"
    );

    a.kill9();
    a.start();
    a.wait_ready(&h).await;
    b.thaw();

    eventually(
        "B applied all evictions",
        Duration::from_secs(60),
        || async {
            api::metric(
                &h,
                &specs[1].peer_url(),
                "ha_messages_applied_total",
                &["eviction"],
            )
            .await
                >= N as f64
        },
    )
    .await;
    eventually("A's outbox is empty", Duration::from_secs(10), || async {
        api::status(&h, &ap).await["peers"][0]["outbox_depth"] == 0
    })
    .await;
    assert!(
        segs(&queue_dir) <= 1,
        "delivered segments reclaimed, {} left",
        segs(&queue_dir)
    );
    for i in (0..N).step_by(97) {
        assert_eq!(
            api::get(&h, &bl, "projects", &format!("k{i}")).await,
            404,
            "k{i} evicted on B"
        );
    }
    // B's log: every message from node-a applied exactly once, in increasing seq order.
    let seqs: Vec<u64> = b
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "applied" && v["fields"]["origin"] == "node-a")
        .map(|v| v["fields"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), N, "each eviction applied once");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "applied in order");
    assert_eq!(seqs.iter().collect::<BTreeSet<_>>().len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero_and_the_backlog_survives() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, "");
    let mut a = Proc::spawn(&specs[0], dir.path(), &[]);
    let h = http();
    a.wait_ready(&h).await;
    // B is not running: evictions queue up on A.
    for i in 0..50 {
        assert_eq!(
            api::evict(&h, &specs[0].local_url(), "projects", &[&format!("q{i}")]).await,
            202
        );
    }
    let status = a.terminate(libc::SIGTERM, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", a.log());
    assert!(a.log().contains("node stopped"));
    // After restart the backlog is still there and goes to B once B is up.
    a.start();
    a.wait_ready(&h).await;
    let st = api::status(&h, &specs[0].peer_url()).await;
    assert_eq!(st["peers"][0]["outbox_depth"], 50, "{st}");
    let b = Proc::spawn(&specs[1], dir.path(), &[]);
    b.wait_ready(&h).await;
    eventually(
        "backlog delivered after restart",
        Duration::from_secs(20),
        || async {
            api::metric(
                &h,
                &specs[1].peer_url(),
                "ha_messages_applied_total",
                &["eviction"],
            )
            .await
                == 50.0
        },
    )
    .await;
    let status = a.terminate(libc::SIGINT, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.config");
    std::fs::write(
        &cfg,
        "[http]\n  retryInterval = soon\n[peerInfo]\n  strategy = carrier-pigeon\n",
    )
    .unwrap();
    let out = std::process::Command::new(integration::bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("peerInfo.strategy") && err.contains("and 1 more"),
        "{err}"
    );
    let out = std::process::Command::new(integration::bin())
        .args(["check-config", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("error: http.retryInterval"), "{text}");
    assert!(text.contains("error: peerInfo.strategy"), "{text}");
    let good = dir.path().join("good.config");
    std::fs::write(&good, "[main]\n  instanceId = solo\n").unwrap();
    let out = std::process::Command::new(integration::bin())
        .args(["check-config", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `make run` is `ha-sidecar demo`: every kind of round shows its effect on the other node
/// (an eviction, an index write, an event on a tail, a session, an outage and its catch-up),
/// with latencies rounded and no access log; it stops cleanly on Ctrl-C.
#[test]
fn demo_shows_traffic_and_stops_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(integration::bin())
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = std::time::Instant::now() + integration::patience(Duration::from_secs(40));
    let mut want = vec![
        "gone from B after",
        "finds it on B after",
        "on B's stream after",
        "gone on A after",
        "caught up",
    ];
    let mut printed = Vec::new();
    while !want.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "demo did not show {want:?}: {printed:#?}"
        );
        let line = lines.next().expect("demo output").unwrap();
        want.retain(|w| !line.contains(w));
        if line.starts_with("round ") {
            // Rounded: `12.3 ms`, never `0.055804000000000006 ms`.
            for (i, _) in line.match_indices(" ms") {
                let num = line[..i].rsplit(' ').next().unwrap_or("");
                if num.parse::<f64>().is_ok() {
                    assert!(
                        num.split_once('.').is_none_or(|(_, f)| f.len() <= 1),
                        "{line}"
                    );
                }
            }
        }
        printed.push(line);
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        rest.iter().any(|l| l.contains("stopping both nodes")),
        "{rest:?}"
    );
    eprintln!("demo:\n{}", printed.join("\n"));
    // Quiet: no access log line (target `access`) drowns the rounds.
    assert!(
        !stderr.contains("access: request"),
        "access log in the demo: {stderr}"
    );
}
