//! Gerrit integration (SPEC §8): fake masters modelled on the plugin's servlets behind real
//! sidecars; the plugin's exact request shapes of both wire generations (`fixtures/gerrit/`).

use std::time::Duration;

use integration::events::{stream_http, SseReader};
use integration::gerrit::{fixture, Call, FakeMaster, PluginSender, Received};
use integration::{api, eventually, http, mesh_specs, start_in_process, NodeSpec};

pub(crate) const PLUGIN: &str = "high-availability";

pub(crate) fn gerrit_section(master: &FakeMaster) -> String {
    format!(
        "[gerrit]\n  url = {}\n  healthInterval = 100ms\n  user = sidecar\n  password = master-secret\n",
        master.url()
    )
}

/// A two-node mesh whose nodes each have their own fake master.
pub(crate) fn specs_with_masters(
    dir: &std::path::Path,
    ma: &FakeMaster,
    mb: &FakeMaster,
) -> Vec<NodeSpec> {
    let mut specs = mesh_specs(dir, 2, "");
    specs[0].extra = gerrit_section(ma);
    specs[1].extra = gerrit_section(mb);
    specs
}

pub(crate) fn family(path: &str) -> &'static str {
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
pub(crate) fn assert_delivered_in_family_order(sent: &[Call], got: &[Received]) {
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
    // A plugin without its health servlet: core's /config/server/version decides.
    master.set_health_servlet(false);
    master.set_healthy(false);
    eventually(
        "503 by /config/server/version",
        Duration::from_secs(10),
        || async { health().await.0 == 503 },
    )
    .await;
    master.set_healthy(true);
    eventually(
        "204 by /config/server/version",
        Duration::from_secs(10),
        || async { health().await.0 == 204 },
    )
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

/// A plugin admin's `high-availability.config` (JGroups, indexSync, autoReindex, websession,
/// healthcheck) loads unchanged with warnings; only the sidecar's own keys are added.
#[test]
fn the_plugin_config_loads_with_warnings() {
    use std::collections::BTreeMap;
    let dir = integration::gerrit::fixtures_dir();
    // A checkout gives the fixture key the umask's mode; a group-readable secret is refused.
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("peer.key");
    std::fs::copy(dir.join("../config/peer.key"), &secret).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let env = BTreeMap::from([
        ("HA_MAIN_INSTANCEID".to_owned(), "gerrit-01".to_owned()),
        (
            "HA_AUTH_SECRETFILE".to_owned(),
            secret.display().to_string(),
        ),
        (
            "HA_GERRIT_URL".to_owned(),
            "http://127.0.0.1:8080".to_owned(),
        ),
    ]);
    let (c, report) =
        ha_sidecar::config::load_path(Some(&dir.join("high-availability.config")), &env)
            .unwrap_or_else(|r| panic!("{:#?}", r.errors));
    assert!(matches!(
        c.peers.discovery,
        ha_sidecar::config::Discovery::SharedFs { .. }
    ));
    assert_eq!(
        c.gerrit.url.as_ref().unwrap().as_str(),
        "http://127.0.0.1:8080/"
    );
    assert_eq!(c.gerrit.plugin_name, "high-availability");
    assert_eq!(
        c.gerrit.user.as_deref(),
        Some("ha-user"),
        "defaults to http.user"
    );
    assert!(c.gerrit.password.is_some(), "defaults to http.password");
    let warned = |key: &str, text: &str| {
        report
            .warnings
            .iter()
            .any(|w| w.key.eq_ignore_ascii_case(key) && w.message.contains(text))
    };
    assert!(
        warned("peerInfo.strategy", "shared-fs"),
        "{:#?}",
        report.warnings
    );
    assert!(
        warned("http.retryInterval", "back-off"),
        "{:#?}",
        report.warnings
    );
    for key in [
        "main.transport",
        "peerinfo.jgroups.myurl",
        "jgroups.clustername",
        "jgroups.kubernetes.namespace",
        "indexsync.enabled",
        "autoreindex.enabled",
        "index.batchthreadpoolsize",
        "index.synchronizeforced",
        "ref-database.enabled",
        "event.allowedlisteners",
    ] {
        assert!(warned(key, "plugin"), "{key}: {:#?}", report.warnings);
    }
    assert!(
        report
            .warnings
            .iter()
            .all(|w| !w.message.contains("unknown key")),
        "every key of the plugin is classified: {:#?}",
        report.warnings
    );
}

/// The plugin's own session files (`websessions/<cookie>`, Java-serialized, and its temp
/// files) share the directory; sessions, watcher and cleanup never modify or remove them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_session_files_are_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = mesh_specs(dir.path(), 1, "").remove(0);
    spec.extra = "[websession]\n  cleanupInterval = 100ms\n  maxAge = 1s\n".into();
    let sessions = spec.shared_dir.join("websessions");
    std::fs::create_dir_all(&sessions).unwrap();
    // `WebSessionManager$Val` as Java serialization writes it (magic, class descriptor, ...).
    let mut java = vec![0xac, 0xed, 0x00, 0x05, 0x73, 0x72, 0x00, 0x2c];
    java.extend_from_slice(b"com.google.gerrit.httpd.WebSessionManager$Val");
    java.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 2, 0x03, 0, 0, 0x78, 0x70, 0x77, 0x25, 0x01,
    ]);
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86_400);
    let names = [
        "aOFdpHqZ4DjVGCp7bS3BLkS8a5ndzmRnAa",
        "aSceprtZpEGCjbTR0uUZzE0YXm4DTCkR6A",
        "6f1c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f1234567890.tmp",
    ];
    for n in names {
        let p = sessions.join(n);
        std::fs::write(&p, &java).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let node = start_in_process(&spec, dir.path()).await;
    let h = http();
    let base = node.local_url();
    // The sidecar's own sessions come and go beside them.
    for account in 1..=3u64 {
        let r = h
            .post(format!("{base}v1/sessions"))
            .json(&serde_json::json!({"account_id": account}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let token = r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let st = h
            .delete(format!("{base}v1/sessions/{token}"))
            .send()
            .await
            .unwrap()
            .status();
        assert!(st.is_success(), "{st}");
    }
    eventually("three cleanup passes", Duration::from_secs(20), || async {
        api::metric(&h, &node.peer_url(), "ha_session_cleanup_runs_total", &[]).await >= 3.0
    })
    .await;
    for n in names {
        let p = sessions.join(n);
        assert_eq!(std::fs::read(&p).unwrap(), java, "{n} unchanged");
        assert_eq!(
            std::fs::metadata(&p).unwrap().modified().unwrap(),
            old,
            "{n} untouched"
        );
    }
    let quarantined = std::fs::read_dir(sessions.join("quarantine"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(quarantined, 0, "nothing quarantined");
}
