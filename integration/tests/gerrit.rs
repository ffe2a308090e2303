//! Gerrit integration (SPEC §8): fake masters modelled on the plugin's servlets behind real
//! sidecars; the plugin's exact request shapes of both wire generations (`fixtures/gerrit/`).

use std::time::Duration;

use integration::events::{stream_http, SseReader};
use integration::gerrit::{fixture, numbered_calls, Call, FakeMaster, PluginSender, Received};
use integration::{api, eventually, http, mesh_specs, start_in_process, NodeSpec, Proc};

const PLUGIN: &str = "high-availability";

fn gerrit_section(master: &FakeMaster) -> String {
    format!(
        "[gerrit]\n  url = {}\n  healthInterval = 100ms\n  user = sidecar\n  password = master-secret\n",
        master.url()
    )
}

/// A two-node mesh whose nodes each have their own fake master.
fn specs_with_masters(dir: &std::path::Path, ma: &FakeMaster, mb: &FakeMaster) -> Vec<NodeSpec> {
    let mut specs = mesh_specs(dir, 2, "");
    specs[0].extra = gerrit_section(ma);
    specs[1].extra = gerrit_section(mb);
    specs
}

fn family(path: &str) -> &'static str {
    if path.starts_with("cache/project_list/") {
        "project_list"
    } else if path.starts_with("cache/") {
        "cache"
    } else if path.starts_with("index/") {
        "index"
    } else {
        "event"
    }
}

/// Every call arrived exactly once, exactly as sent, in the order sent within its family.
fn assert_delivered_in_family_order(sent: &[Call], got: &[Received]) {
    assert_eq!(got.len(), sent.len(), "calls delivered");
    for f in ["cache", "index", "event", "project_list"] {
        let s: Vec<&Call> = sent.iter().filter(|c| family(&c.path) == f).collect();
        let g: Vec<&Received> = got.iter().filter(|r| family(&r.path) == f).collect();
        assert_eq!(s.len(), g.len(), "{f}: count");
        for (i, (c, r)) in s.iter().zip(&g).enumerate() {
            assert!(c.matches(r), "{f} #{i}: sent {c:?}, master got {r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_of_both_generations_reaches_the_other_master_only() {
    let dir = tempfile::tempdir().unwrap();
    let (ma, mb) = (FakeMaster::start(PLUGIN), FakeMaster::start(PLUGIN));
    let specs = specs_with_masters(dir.path(), &ma, &mb);
    let a = start_in_process(&specs[0], dir.path()).await;
    let b = start_in_process(&specs[1], dir.path()).await;
    let old = fixture("calls-stable-3.13.jsonl");
    let new = fixture("calls-3.14.jsonl");
    PluginSender::new(&a.local_url(), PLUGIN)
        .send_all(&old)
        .await;
    PluginSender::new(&b.local_url(), PLUGIN)
        .send_all(&new)
        .await;

    eventually(
        "A's calls reach master B",
        Duration::from_secs(20),
        || async { mb.accepted().len() >= old.len() },
    )
    .await;
    eventually(
        "B's calls reach master A",
        Duration::from_secs(20),
        || async { ma.accepted().len() >= new.len() },
    )
    .await;
    assert_delivered_in_family_order(&old, &mb.received());
    // No call reaches the master it came from.
    assert_delivered_in_family_order(&new, &ma.received());
    // Preemptive Basic auth with the configured credentials.
    let basic = "Basic c2lkZWNhcjptYXN0ZXItc2VjcmV0";
    assert!(mb
        .received()
        .iter()
        .all(|r| r.authorization.as_deref() == Some(basic)));

    // Events that entered through either plugin are in both sidecars' event logs.
    for node in [&a, &b] {
        let mut s =
            SseReader::open(&stream_http(), &node.peer_url(), "since=beginning", None).await;
        let got = s.take(3, Duration::from_secs(10)).await;
        let types: Vec<String> = got
            .iter()
            .map(|m| {
                serde_json::from_str::<serde_json::Value>(&m.data).unwrap()["type"].to_string()
            })
            .collect();
        for t in ["ref-replication-done", "patchset-created", "ref-updated"] {
            assert!(types.iter().any(|x| x.contains(t)), "{t} in {types:?}");
        }
    }

    // indexSync: the union of what the peers' masters answer, asked through their sidecars.
    mb.set_changes(&["foo/bar~2", "foo/bar~1"]);
    ma.set_changes(&["only-on-a~9"]);
    let r = http()
        .get(format!(
            "{}plugins/{PLUGIN}/query/changes.updated.since/1hour",
            a.local_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ids: Vec<String> = r.json().await.unwrap();
    assert_eq!(ids, ["foo/bar~1", "foo/bar~2"]);
    let r = http()
        .get(format!(
            "{}plugins/{PLUGIN}/query/changes.updated.since/1%20hour;DROP",
            a.local_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusals_are_dead_lettered_and_storms_retried_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (ma, mb) = (FakeMaster::start(PLUGIN), FakeMaster::start(PLUGIN));
    let specs = specs_with_masters(dir.path(), &ma, &mb);
    let a = start_in_process(&specs[0], dir.path()).await;
    let b = start_in_process(&specs[1], dir.path()).await;
    mb.storm(409, 12);
    mb.storm(503, 12);
    let json = Some("application/json; charset=utf-8".to_owned());
    let refused = [
        // The master knows no such cache: 400 "cache not found".
        Call {
            method: "POST".into(),
            path: "cache/plugin_only_cache".into(),
            content_type: json.clone(),
            created_on: None,
            body: Some("\"k\"".into()),
        },
        // The event servlet wants exactly `application/json; charset=utf-8`: 415.
        Call {
            method: "POST".into(),
            path: "event/ref-updated".into(),
            content_type: Some("application/json".into()),
            created_on: None,
            body: Some(r#"{"type":"ref-updated","eventCreatedOn":1700000000}"#.into()),
        },
    ];
    let calls = numbered_calls(200);
    let sender = PluginSender::new(&a.local_url(), PLUGIN);
    sender.send_all(&refused).await;
    sender.send_all(&calls).await;
    eventually(
        "every good call reaches master B",
        Duration::from_secs(60),
        || async { mb.accepted().len() >= calls.len() },
    )
    .await;
    assert_delivered_in_family_order(&calls, &mb.accepted());
    let statuses: Vec<u16> = mb.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 12);
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 12);
    assert_eq!(
        statuses.iter().filter(|s| **s == 400 || **s == 415).count(),
        2,
        "refusals are not retried"
    );
    let h = http();
    let dead = api::metric(&h, &b.peer_url(), "ha_gerrit_dead_lettered_total", &[]).await;
    assert_eq!(dead, 2.0);
    let dl = |f: &str| {
        std::fs::read_to_string(
            specs[1]
                .data_dir
                .join(format!("deadletter/master-{f}.jsonl")),
        )
        .unwrap_or_default()
    };
    assert!(dl("cache").contains("cache not found") && dl("cache").contains("plugin_only_cache"));
    assert!(dl("event").contains("\"status\":415"));
    assert!(ma.received().is_empty(), "nothing goes back to master A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_calls_are_refused_and_local_token_challenges_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let master = FakeMaster::start(PLUGIN);
    let mut spec = mesh_specs(dir.path(), 1, "").remove(0);
    spec.extra = format!(
        "{}[sidecar]\n  localToken = local-token-0123456789\n",
        gerrit_section(&master)
    );
    let node = start_in_process(&spec, dir.path()).await;
    let mut sender = PluginSender::new(&node.local_url(), PLUGIN);
    let call = &fixture("calls-3.14.jsonl")[0];
    // Unauthenticated: a Basic challenge (the plugin's client only then sends credentials).
    let r = sender
        .http
        .post(format!("{}{}", sender.base, call.path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    sender.credentials = Some(("gerrit".into(), "wrong".into()));
    assert_eq!(sender.send(call).await, 401);
    sender.credentials = Some(("gerrit".into(), "local-token-0123456789".into()));
    assert_eq!(sender.send(call).await, 204);
    for line in std::fs::read_to_string(integration::gerrit::fixtures_dir().join("refused.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let c: Call = serde_json::from_value(v.clone()).unwrap();
        let st = sender.send(&c).await;
        assert_eq!(u64::from(st), v["status"].as_u64().unwrap(), "{line}");
    }
    let other = PluginSender {
        base: format!("{}plugins/other-plugin/", node.local_url()),
        ..sender
    };
    assert_eq!(other.send(call).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = FakeMaster::start(PLUGIN);
    let mut spec = mesh_specs(dir.path(), 1, "").remove(0);
    spec.extra = gerrit_section(&master);
    let node = start_in_process(&spec, dir.path()).await;
    let h = http();
    let health = || async {
        let r = h
            .get(format!("{}health", node.peer_url()))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    eventually("healthy", Duration::from_secs(10), || async {
        health().await.0 == 204
    })
    .await;
    master.set_healthy(false);
    eventually("503 master unhealthy", Duration::from_secs(10), || async {
        let (st, body) = health().await;
        st == 503 && body.contains("master unhealthy")
    })
    .await;
    master.set_healthy(true);
    eventually("healthy again", Duration::from_secs(10), || async {
        health().await.0 == 204
    })
    .await;
    master.stop().await;
    eventually(
        "503 while the master is down",
        Duration::from_secs(10),
        || async { health().await.0 == 503 },
    )
    .await;
    master.restart();
    eventually(
        "healthy after the restart",
        Duration::from_secs(10),
        || async { health().await.0 == 204 },
    )
    .await;
}

/// 2,000 calls from four concurrent plugin threads (one per family) keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_calls_keep_their_order_per_family() {
    let dir = tempfile::tempdir().unwrap();
    let (ma, mb) = (FakeMaster::start(PLUGIN), FakeMaster::start(PLUGIN));
    let specs = specs_with_masters(dir.path(), &ma, &mb);
    let a = start_in_process(&specs[0], dir.path()).await;
    let _b = start_in_process(&specs[1], dir.path()).await;
    let calls = numbered_calls(2_000);
    send_per_family(&a.local_url(), &calls).await;
    eventually(
        "2,000 calls reach master B",
        Duration::from_secs(120),
        || async { mb.accepted().len() >= calls.len() },
    )
    .await;
    assert_delivered_in_family_order(&calls, &mb.received());
}

/// One sender per family, concurrently (so each family's order is defined by its sender).
async fn send_per_family(local_url: &str, calls: &[Call]) {
    let mut tasks = Vec::new();
    for f in ["cache", "index", "event", "project_list"] {
        let mine: Vec<Call> = calls
            .iter()
            .filter(|c| family(&c.path) == f)
            .cloned()
            .collect();
        let sender = PluginSender::new(local_url, PLUGIN);
        tasks.push(tokio::spawn(async move { sender.send_all(&mine).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Master B is down while its sidecar is SIGKILLed and restarted: nothing is lost, nothing
/// repeated, order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_down_and_sidecar_killed_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ma, mut mb) = (FakeMaster::start(PLUGIN), FakeMaster::start(PLUGIN));
    let specs = specs_with_masters(dir.path(), &ma, &mb);
    mb.stop().await;
    let h = http();
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let mut b = Proc::spawn(&specs[1], dir.path(), &[]);
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let calls = numbered_calls(400);
    send_per_family(&specs[0].local_url(), &calls).await;
    let b_url = specs[1].peer_url();
    eventually(
        "B holds every call for its master",
        Duration::from_secs(30),
        || async {
            api::metric(&h, &b_url, "ha_messages_applied_total", &["plugin"]).await >= 400.0
        },
    )
    .await;
    b.kill9();
    b.start();
    b.wait_ready(&h).await;
    mb.restart();
    eventually(
        "every call reaches master B",
        Duration::from_secs(60),
        || async { mb.accepted().len() >= calls.len() },
    )
    .await;
    assert_delivered_in_family_order(&calls, &mb.accepted());
    assert!(ma.received().is_empty(), "nothing goes back to master A");
}
