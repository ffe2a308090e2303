//! Stream consumers (issue 15 item 11): a consumer's token shows only its projects' events, on
//! the stream (from the log and live) and in the events-log replay API, which answers the
//! request Jenkins Gerrit Trigger sends on reconnect.

use std::time::Duration;

use ha_sidecar::stream_client::SseParser;
use integration::events::{publish, stream_http};
use integration::{http, mesh_specs, start_in_process};
use serde_json::{json, Value};

const ALL_TOKEN: &str = "all-projects-stream-token-0123";
const JENKINS_TOKEN: &str = "jenkins-consumer-token-0123456";

fn consumers_config(return_limit: usize) -> String {
    format!(
        "[event]\n  streamToken = {ALL_TOKEN}\n  returnLimit = {return_limit}\n\
         [event \"consumer jenkins\"]\n  token = {JENKINS_TOKEN}\n  project = tools/.*\n  \
         project = plugins/replication\n"
    )
}

/// A Gerrit event of `project` (written the way its type carries it), created at `created`.
fn event(event_type: &str, project: &str, created: u64, n: u64) -> Value {
    match event_type {
        "ref-updated" => json!({"type": event_type, "eventCreatedOn": created, "n": n,
            "refUpdate": {"refName": "refs/heads/master", "project": project}}),
        "project-created" => json!({"type": event_type, "eventCreatedOn": created, "n": n,
            "projectName": project}),
        "dropped-output" => json!({"type": event_type, "eventCreatedOn": created, "n": n}),
        _ => json!({"type": event_type, "eventCreatedOn": created, "n": n, "project": project,
            "change": {"project": project, "number": n}}),
    }
}

async fn publish_ok(h: &reqwest::Client, local: &str, e: Value) {
    let (status, reply) = publish(h, local, serde_json::to_vec(&e).unwrap()).await;
    assert_eq!(status, 202, "{reply}");
}

/// Reads SSE events (data only) until `n` arrived; their `n` fields.
async fn take(resp: &mut reqwest::Response, parser: &mut SseParser, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    let deadline = integration::patience(Duration::from_secs(10));
    while got.len() < n {
        let chunk = tokio::time::timeout(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("timed out with {got:?}"))
            .unwrap()
            .expect("stream open");
        for m in parser.push(&chunk) {
            if !m.data.is_empty() {
                let v: Value = serde_json::from_str(&m.data).unwrap();
                got.push(v["n"].as_u64().unwrap());
            }
        }
    }
    got
}

fn now_s() -> u64 {
    ha_sidecar::clock::now_ms() / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_sees_only_its_projects_on_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 1, &consumers_config(5000));
    let a = start_in_process(&specs[0], dir.path()).await;
    let (h, sh, al, ap) = (http(), stream_http(), a.local_url(), a.peer_url());
    let t = now_s();
    // Visible to jenkins: 1, 3, 5 (no project: shown to every consumer, as Gerrit does).
    for (n, ty, project) in [
        (1, "patchset-created", "tools/gerrit"),
        (2, "patchset-created", "secret/x"),
        (3, "ref-updated", "plugins/replication"),
        (4, "ref-updated", "secret/tools/y"),
        (5, "dropped-output", ""),
        (6, "project-created", "plugins/replication-2"),
    ] {
        publish_ok(&h, &al, event(ty, project, t, n)).await;
    }
    let url = format!("{ap}v1/events/stream?since=beginning");
    // No token, a wrong one: 401 with a Basic challenge.
    let r = sh.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = sh
        .get(&url)
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let mut jenkins = sh
        .get(&url)
        .bearer_auth(JENKINS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(jenkins.status(), 200);
    let mut jp = SseParser::default();
    assert_eq!(
        take(&mut jenkins, &mut jp, 3).await,
        [1, 3, 5],
        "from the log"
    );
    // The whole-stream token sees every project, here as a Basic password.
    let mut all = sh
        .get(&url)
        .basic_auth("ops", Some(ALL_TOKEN))
        .send()
        .await
        .unwrap();
    let mut ap_ = SseParser::default();
    assert_eq!(take(&mut all, &mut ap_, 6).await, [1, 2, 3, 4, 5, 6]);
    // Live events (served from memory): a hidden one between two visible ones.
    for (n, ty, project) in [
        (7, "comment-added", "tools/zuul"),
        (8, "comment-added", "secret/x"),
        (9, "change-merged", "plugins/replication"),
    ] {
        publish_ok(&h, &al, event(ty, project, t, n)).await;
    }
    assert_eq!(take(&mut jenkins, &mut jp, 2).await, [7, 9], "live");
    assert_eq!(take(&mut all, &mut ap_, 3).await, [7, 8, 9]);
    drop((jenkins, all));
    a.shutdown().await;
}

/// A plugin time (`yyyy-MM-dd HH:mm:ss`) of epoch seconds in this machine's local zone, as
/// Jenkins' `SimpleDateFormat` writes it.
fn plugin_time(epoch: u64) -> String {
    jiff::Timestamp::from_second(epoch as i64)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Java's `URLEncoder.encode` of a plugin time: space as `+`, `:` as `%3A`.
fn java_url_encode(s: &str) -> String {
    s.replace(' ', "+").replace(':', "%3A")
}

fn lines_n(body: &str) -> Vec<u64> {
    body.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("one event JSON per line")["n"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jenkins_replays_missed_events_from_events_log() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 1, &consumers_config(3));
    let a = start_in_process(&specs[0], dir.path()).await;
    let (h, al, ap) = (http(), a.local_url(), a.peer_url());
    let t0 = now_s() - 3600;
    // Published out of creation order; 20 and 21 are another project's.
    for (n, created, project) in [
        (4, t0 + 10, "tools/gerrit"),
        (0, t0 - 100, "tools/gerrit"),
        (1, t0, "tools/gerrit"),
        (20, t0 + 1, "secret/x"),
        (2, t0 + 5, "plugins/replication"),
        (3, t0 + 7, "tools/gerrit"),
        (21, t0 + 8, "secret/y"),
        (5, t0 + 11, "tools/gerrit"),
    ] {
        publish_ok(&h, &al, event("patchset-created", project, created, n)).await;
    }
    // Gerrit Trigger first checks that the plugin is installed (GerritPluginChecker: 200).
    let r = h
        .get(format!("{ap}plugins/events-log/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The request Gerrit Trigger sends on reconnect (GerritMissedEventsPlaybackManager):
    // `<frontEndUrl>a/plugins/events-log/events/?t1=<URLEncoder(yyyy-MM-dd HH:mm:ss)>`, with
    // Basic credentials sent once challenged (Apache HttpClient).
    let url = format!(
        "{ap}a/plugins/events-log/events/?t1={}",
        java_url_encode(&plugin_time(t0))
    );
    let r = h.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Basic "), "{challenge}");
    let r = h
        .get(&url)
        .basic_auth("jenkins", Some(JENKINS_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("charset=utf-8"));
    // t1 included, oldest first by creation, returnLimit = 3, other projects never shown.
    assert_eq!(lines_n(&r.text().await.unwrap()), [1, 2, 3]);

    // Both bounds included; `;` separates them as in the plugin's documentation.
    let window = format!(
        "{ap}plugins/events-log/events/?t1={};t2={}",
        java_url_encode(&plugin_time(t0 + 7)),
        java_url_encode(&plugin_time(t0 + 10))
    );
    let body = h
        .get(&window)
        .bearer_auth(JENKINS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(lines_n(&body), [3, 4]);
    // Reversed bounds are swapped; the whole-stream token sees secret/y too.
    let reversed = format!(
        "{ap}a/plugins/events-log/events/?t1={}&t2={}",
        java_url_encode(&plugin_time(t0 + 10)),
        java_url_encode(&plugin_time(t0 + 7))
    );
    let r = h
        .get(&reversed)
        .basic_auth("ops", Some(ALL_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(lines_n(&r.text().await.unwrap()), [3, 21, 4]);
    // A time the plugin's formats do not have is 400 naming the parameter.
    let bad = format!("{ap}a/plugins/events-log/events/?t1=2024-02-31+10%3A00%3A00");
    let r = h.get(&bad).bearer_auth(JENKINS_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .starts_with("t1: `2024-02-31 10:00:00`"),
        "{e}"
    );
    a.shutdown().await;
}
