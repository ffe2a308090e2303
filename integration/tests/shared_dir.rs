//! The shared directory as an untrusted, possibly hung file system (issue 14, item 4), on real
//! processes: a FIFO or a symlink in place of a session file answers at once and is
//! quarantined; a frozen NFS server (ganesha under SIGSTOP, behind a gvfs FUSE client) makes
//! session reads answer `503 shared directory not responding` within the configured deadline,
//! without the process growing a thread per request, and sessions come back with the server.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::{eventually, http, mesh_specs, patience, Proc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

async fn create(h: &reqwest::Client, base: &str) -> String {
    let r = h
        .post(format!("{base}v1/sessions"))
        .json(&json!({ "account_id": 7 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// Status, body and how long one session read took.
async fn timed_get(h: &reqwest::Client, base: &str, token: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let r = h
        .get(format!("{base}v1/sessions/{token}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    (status, body, started.elapsed())
}

fn session_file(shared: &Path, token: &str) -> PathBuf {
    let h = hex::encode(Sha256::digest(token.as_bytes()));
    shared
        .join("websessions")
        .join(&h[0..2])
        .join(&h[2..3])
        .join(format!("{h}.json"))
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

fn threads(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_symlink_in_place_of_a_session_file_answers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = mesh_specs(dir.path(), 1, "").remove(0);
    let node = Proc::spawn(&spec, dir.path(), &[]);
    let h = http();
    node.wait_ready(&h).await;
    let base = spec.local_url();
    let (fifo, linked, target) = (
        create(&h, &base).await,
        create(&h, &base).await,
        create(&h, &base).await,
    );
    let fifo_path = session_file(&spec.shared_dir, &fifo);
    std::fs::remove_file(&fifo_path).unwrap();
    mkfifo(&fifo_path);
    let link_path = session_file(&spec.shared_dir, &linked);
    std::fs::remove_file(&link_path).unwrap();
    std::os::unix::fs::symlink(session_file(&spec.shared_dir, &target), &link_path).unwrap();
    for token in [&fifo, &linked] {
        // Served from the cache for up to a second, then read from the "file": never a hang,
        // never the symlink target's session.
        let mut last = 0;
        let deadline = Instant::now() + patience(Duration::from_secs(5));
        while last != 404 {
            assert!(Instant::now() < deadline, "still {last}");
            let (status, body, took) = timed_get(&h, &base, token).await;
            assert!(
                took < patience(Duration::from_secs(1)),
                "read took {took:?}"
            );
            assert!(matches!(status, 200 | 404), "{status} {body}");
            if status == 200 {
                // The cached record of this session, not the target's.
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["account_id"], 7);
            }
            last = status;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Both were moved to quarantine unread; the symlink's target is intact and still served.
    assert!(fifo_path.symlink_metadata().is_err() && link_path.symlink_metadata().is_err());
    let quarantined = std::fs::read_dir(spec.shared_dir.join("websessions/quarantine"))
        .unwrap()
        .count();
    assert_eq!(quarantined, 2);
    assert_eq!(timed_get(&h, &base, &target).await.0, 200);
    let log = node.log();
    assert!(log.contains("a FIFO, not a regular file"), "{log}");
    assert!(log.contains("a symbolic link, not a regular file"), "{log}");
}

/// Needs root, `/dev/fuse`, nfs-ganesha and gvfs (`make deps`); fails saying so otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_nfs_server_answers_503_fast_without_piling_up_threads() {
    const CONCURRENCY: usize = 4;
    let nfs = integration::nfs::GvfsNfs::start();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = mesh_specs(
        dir.path(),
        1,
        &format!(
            "[main]\n  sharedDirectoryTimeout = 1s\n  sharedDirectoryConcurrency = {CONCURRENCY}\n"
        ),
    )
    .remove(0);
    spec.shared_dir = nfs.mount_a().join("hung");
    std::fs::create_dir_all(&spec.shared_dir).unwrap();
    let node = Proc::spawn(&spec, dir.path(), &[]);
    let h = http();
    node.wait_ready(&h).await;
    let base = spec.local_url();
    let token = create(&h, &base).await;
    let unknown = || hex::encode(rand::random::<[u8; 32]>());
    // Warm the blocking pool as ordinary traffic would, then take the baseline.
    for _ in 0..CONCURRENCY * 2 {
        assert_eq!(timed_get(&h, &base, &unknown()).await.0, 404);
    }
    let baseline = threads(node.pid());

    let frozen = nfs.freeze();
    let mut most_threads = baseline;
    for wave in 0..2 {
        let reads: Vec<_> = (0..64)
            .map(|_| {
                let (h, base, t) = (h.clone(), base.clone(), unknown());
                tokio::spawn(async move { timed_get(&h, &base, &t).await })
            })
            .collect();
        for r in reads {
            let (status, body, took) = r.await.unwrap();
            assert_eq!(status, 503, "wave {wave}: {body}");
            assert!(body.contains("shared directory not responding"), "{body}");
            assert!(
                took < patience(Duration::from_secs(3)),
                "wave {wave}: {took:?}"
            );
        }
        most_threads = most_threads.max(threads(node.pid()));
        // The node itself still answers.
        let started = Instant::now();
        let r = h
            .get(format!("{}livez", spec.peer_url()))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        assert!(started.elapsed() < patience(Duration::from_secs(1)));
    }
    // 128 reads of a hung mount pinned at most the bulkhead's threads (plus a heartbeat).
    assert!(
        most_threads <= baseline + CONCURRENCY + 4,
        "threads grew from {baseline} to {most_threads}"
    );
    let metrics = integration::api::metrics_text(&h, &spec.peer_url()).await;
    let refused = integration::api::metric_in(&metrics, "ha_shared_dir_not_responding_total", &[]);
    assert!(refused >= 128.0, "{refused}");

    drop(frozen);
    eventually("sessions are served again", Duration::from_secs(60), || {
        let (h, base, t) = (h.clone(), base.clone(), token.clone());
        async move { timed_get(&h, &base, &t).await.0 == 200 }
    })
    .await;
}
