//! Durability and integrity (issue 13): origins that cannot be forged into silence, bounded
//! seqs, versions and cursors, deep event JSON, and one process per data directory.

use std::io::Read;
use std::time::{Duration, Instant};

use ha_sidecar::config::Secret;
use integration::{api, http, mesh_specs, post_signed, start_in_process, Proc};
use serde_json::json;

fn secret_of(spec: &integration::NodeSpec) -> Secret {
    Secret(
        std::fs::read(&spec.secrets[0])
            .unwrap()
            .trim_ascii()
            .to_vec(),
    )
}

fn eviction(origin: &str, seq: u64, key: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "origin": origin,
        "messages": [{"seq": seq, "kind": "eviction", "cache": "projects", "keys": [key]}]
    }))
    .unwrap()
}

fn event(origin: &str, seq: u64, event_seq: u64, n: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "origin": origin,
        "messages": [{"seq": seq, "kind": "event", "event_seq": event_seq,
                      "event": {"type": "ref-updated", "eventCreatedOn": 1_700_000_000, "n": n}}]
    }))
    .unwrap()
}

/// A signed batch naming the receiver as origin is refused; a seq (or event seq) far beyond the
/// clock-derived bound is refused and counted without moving the origin's mark, so the origin's
/// real messages still apply; index versions above 2^53 − 1, cursors beyond what the node knows
/// and event JSON nested deeper than 128 are refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_origins_seqs_versions_and_cursors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 1, "");
    let node = start_in_process(&specs[0], dir.path()).await;
    let secret = secret_of(&specs[0]);
    let h = http();
    let (bl, bp) = (node.local_url(), node.peer_url());
    for k in ["own", "max", "real"] {
        assert_eq!(api::put(&h, &bl, "projects", k, json!(k)).await, 204);
    }

    // The receiver's own id as origin: 400, nothing applied.
    let (s, body, _) = post_signed(
        &h,
        &bp,
        eviction("node-a", 1, "own"),
        Some(&secret),
        0,
        None,
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("own id"), "{body}");
    assert_eq!(api::get(&h, &bl, "projects", "own").await, 200);

    // seq = u64::MAX from another origin: refused alone, mark unmoved.
    let (s, body, _) = post_signed(
        &h,
        &bp,
        eviction("node-x", u64::MAX, "max"),
        Some(&secret),
        0,
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["applied"], 0, "{body}");
    assert!(
        reply["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("implausibly far ahead"),
        "{body}"
    );
    assert_eq!(api::get(&h, &bl, "projects", "max").await, 200);
    // The origin's real next message still applies.
    let (s, body, _) = post_signed(
        &h,
        &bp,
        eviction("node-x", 5, "real"),
        Some(&secret),
        0,
        None,
    )
    .await;
    assert_eq!((s, body.contains("\"applied\":1")), (200, true), "{body}");
    assert_eq!(api::get(&h, &bl, "projects", "real").await, 404);

    // The same for an event's own seq: a forged one cannot hide the origin's later events.
    let (s, body, _) = post_signed(
        &h,
        &bp,
        event("node-x", 6, u64::MAX, 1),
        Some(&secret),
        0,
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("implausibly far ahead"), "{body}");
    let (s, body, _) = post_signed(&h, &bp, event("node-x", 7, 3, 2), Some(&secret), 0, None).await;
    assert_eq!((s, body.contains("\"applied\":1")), (200, true), "{body}");
    assert_eq!(
        node.state().events.last_seq_by_origin().get("node-x"),
        Some(&3)
    );
    let forged = api::metric(&h, &bp, "ha_forged_messages_total", &[]).await;
    assert!(
        forged >= 3.0,
        "own origin, seq and event seq counted: {forged}"
    );

    // A cursor that claims far more than this node knows: 400, not a silent skip.
    let far = format!("v1~0~node-x~{}", u64::MAX);
    let stream = |cursor: &str| {
        reqwest::Url::parse_with_params(&format!("{bp}v1/events/stream"), &[("cursor", cursor)])
            .unwrap()
    };
    let r = h.get(stream(&far)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("implausibly far"));
    let near = "v1~0~node-x~2";
    let r = h.get(stream(near)).send().await.unwrap();
    assert_eq!(r.status(), 200, "a cursor within what is known streams");
    drop(r);

    // Index versions: 2^53 − 1 is the largest accepted.
    let put = |version: u64| {
        let h = h.clone();
        let url = format!("{bl}v1/index/changes/v{version}");
        async move {
            h.put(url)
                .json(&json!({"version": version, "doc": {"subject": "s"}}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(put((1 << 53) - 1).await, 202);
    assert_eq!(put(1 << 53).await, 400);
    assert_eq!(put(u64::MAX).await, 400);

    // Event JSON nested deeper than 128: 400 like the other JSON endpoints.
    let deep = format!(
        r#"{{"type":"x","eventCreatedOn":1,"a":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = h
        .post(format!("{bl}v1/events"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("nested deeper"));
    node.shutdown().await;
}

/// Waits for a child to exit, with a deadline.
fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + integration::patience(timeout);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second process did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                out.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Two real processes on one data directory: the second exits non-zero with a message naming
/// the directory, and changes nothing in it; the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_data_directory_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 1, "");
    let first = Proc::spawn(&specs[0], dir.path(), &[]);
    let h = http();
    first.wait_ready(&h).await;
    let bl = specs[0].local_url();
    assert_eq!(api::put(&h, &bl, "projects", "k", json!(1)).await, 204);
    let ev = r#"{"type":"ref-updated","eventCreatedOn":1700000000}"#;
    let r = h
        .post(format!("{bl}v1/events"))
        .body(ev)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let mut second_spec = specs[0].clone();
    second_spec.id = "node-a".into();
    second_spec.listen_port = integration::free_port();
    second_spec.local_port = integration::free_port();
    let config = dir.path().join("second.config");
    std::fs::write(&config, second_spec.text()).unwrap();
    let data = &specs[0].data_dir;
    // The first node's own background writes (relay marker, index commits) settle first.
    let deadline = Instant::now() + integration::patience(Duration::from_secs(10));
    let before = loop {
        let a = snapshot(data);
        std::thread::sleep(Duration::from_millis(300));
        if snapshot(data) == a {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the data directory never settled"
        );
    };
    let mut child = std::process::Command::new(integration::bin())
        .arg("run")
        .arg("-c")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let mut log = String::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut s = stream;
        s.read_to_string(&mut log).unwrap();
    }
    assert!(!status.success(), "the second process must fail: {log}");
    assert!(
        log.contains(&data.display().to_string()),
        "names the directory: {log}"
    );
    assert!(
        log.contains("in use by another ha-sidecar process"),
        "{log}"
    );
    assert_eq!(
        snapshot(data),
        before,
        "the second process changed the data directory"
    );
    // The first is untouched and still serves.
    let r = h
        .post(format!("{bl}v1/events"))
        .body(ev)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(first.log().find("torn tail").is_none(), "{}", first.log());
}

/// A tmpfs mounted for a test, unmounted when dropped (a failing test included).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount (the durability tests run as root)");
        assert!(
            st.success(),
            "mount tmpfs on {} failed (run as root)",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `dir` but for about `leave` bytes.
fn fill(dir: &std::path::Path, leave: u64) {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 16 << 10];
    let mut len = 0u64;
    while f.write_all(&chunk).is_ok() {
        len += chunk.len() as u64;
    }
    let _ = f.sync_all();
    f.set_len(len.saturating_sub(leave)).unwrap();
    f.sync_all().unwrap();
}

/// Issue 13, full disk: with A's data directory (a small tmpfs) full, the master gets `507`
/// naming the data directory and `/health` is `503 disk full`; once the file system grows, A
/// accepts again without a restart, `/health` is back to 204, and every eviction answered 202
/// (before or after) reaches B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_directory_answers_507_and_every_202_is_delivered_after_it_grows() {
    const KEYS: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(
        dir.path(),
        2,
        "[cache]\n  pattern = ^my_.*\n[sidecar]\n  outboxSegmentSize = 64k\n",
    );
    let tmpfs = Tmpfs::mount(&specs[0].data_dir, "4m");
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let b = Proc::spawn(&specs[1], dir.path(), &[]);
    let h = http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let (al, bl) = (specs[0].local_url(), specs[1].local_url());
    let key = |i: usize| format!("k{i}");
    for i in 0..KEYS {
        assert_eq!(api::put(&h, &bl, "my_cache", &key(i), json!(i)).await, 204);
    }
    // Less room than one outbox segment: the active segment cannot roll and be reclaimed.
    fill(&specs[0].data_dir, 24 << 10);

    let mut accepted = Vec::new();
    let mut full_seen = 0;
    let mut i = 0;
    while i < KEYS && full_seen < 20 {
        let r = h
            .post(format!("{al}v1/cache/my_cache/evict"))
            .json(&json!({"keys": [key(i)]}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => accepted.push(i),
            507 => {
                let body = r.text().await.unwrap();
                let data = specs[0].data_dir.display().to_string();
                assert!(body.contains(&data), "507 names the data directory: {body}");
                full_seen += 1;
            }
            s => panic!("eviction {i}: {s} {}", r.text().await.unwrap_or_default()),
        }
        i += 1;
    }
    assert!(
        full_seen > 0,
        "the disk never filled ({} accepted)",
        accepted.len()
    );
    let r = h
        .get(format!("{}health", specs[0].peer_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("disk full"));

    tmpfs.resize("64m");
    integration::eventually("A healthy again", Duration::from_secs(10), || async {
        h.get(format!("{}health", specs[0].peer_url()))
            .send()
            .await
            .is_ok_and(|r| r.status() == 204)
    })
    .await;
    while i < KEYS {
        assert_eq!(
            api::evict(&h, &al, "my_cache", &[&key(i)]).await,
            202,
            "after growth"
        );
        accepted.push(i);
        i += 1;
    }
    integration::eventually("every 202 reached B", Duration::from_secs(30), || async {
        for &k in &accepted {
            if api::get(&h, &bl, "my_cache", &key(k)).await != 404 {
                return false;
            }
        }
        true
    })
    .await;
    drop(a);
    drop(b);
}

/// Finding 4: a wiped node gets the event history back from its peer before `/health` turns
/// 204, so a cursor taken before the wipe resumes there with nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_restores_the_event_history_and_an_old_cursor_resumes_there() {
    use integration::events::{gerrit_event, origin_and_n, publish, stream_http, SseReader};
    let dir = tempfile::tempdir().unwrap();
    let specs = integration::mesh_specs(dir.path(), 2, "");
    let a = integration::Proc::spawn(&specs[0], dir.path(), &[]);
    let mut b = integration::Proc::spawn(&specs[1], dir.path(), &[]);
    let (h, sh) = (integration::http(), stream_http());
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    for (node, n) in [(0, 0..12), (1, 100..108)] {
        for i in n {
            let (status, reply) = publish(
                &h,
                &specs[node].local_url(),
                gerrit_event("ref-updated", i, 200),
            )
            .await;
            assert_eq!(status, 202, "{reply}");
        }
    }
    // Read everything on B, keeping the cursor after the 7th event.
    let mut tail = SseReader::open(&sh, &specs[1].peer_url(), "since=beginning", None).await;
    let all = tail.take(20, Duration::from_secs(30)).await;
    let all: Vec<(String, u64, Option<String>)> = all
        .into_iter()
        .map(|m| {
            let (o, n) = origin_and_n(&m.data);
            (o, n, m.id)
        })
        .collect();
    let cursor = all[6].2.clone().expect("every event has an id");
    drop(tail);
    // What B had not forwarded yet would go with its data directory: wait until A has it all.
    integration::eventually("A holds B's events", Duration::from_secs(30), || {
        let (h, url) = (h.clone(), specs[0].peer_url());
        async move {
            api::metric(&h, &url, "ha_events_appended_total", &["kind=\"remote\""]).await == 8.0
        }
    })
    .await;

    b.kill9();
    std::fs::remove_dir_all(&specs[1].data_dir).unwrap();
    b.start();
    b.wait_ready(&h).await;
    b.wait_healthy(&h).await;
    let mut resumed = SseReader::open(&sh, &specs[1].peer_url(), "", Some(&cursor)).await;
    let rest: Vec<(String, u64)> = resumed
        .take(13, Duration::from_secs(10))
        .await
        .iter()
        .map(|m| origin_and_n(&m.data))
        .collect();
    let want: Vec<(String, u64)> = all[7..].iter().map(|(o, n, _)| (o.clone(), *n)).collect();
    // Per origin the same events in the same order (origins may interleave differently).
    for origin in ["node-a", "node-b"] {
        let got: Vec<_> = rest.iter().filter(|(o, _)| o == origin).collect();
        let exp: Vec<_> = want.iter().filter(|(o, _)| o == origin).collect();
        assert_eq!(
            got, exp,
            "{origin}'s events after the cursor, on the wiped node"
        );
    }
    let mut again = SseReader::open(&sh, &specs[1].peer_url(), "since=beginning", None).await;
    assert_eq!(again.take(20, Duration::from_secs(30)).await.len(), 20);
    drop(a);
}
