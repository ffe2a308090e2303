//! In-process clusters: evictions and flushes reach peers; patterns select what is forwarded;
//! refused messages become dead letters without blocking; secrets rotate without downtime.

use std::time::Duration;

use integration::{api, eventually, http, mesh_specs, start_in_process, write_secret};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_and_flush_reach_the_peer_and_patterns_select() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, "[cache]\n  pattern = ^my_.*\n");
    let a = start_in_process(&specs[0], dir.path()).await;
    let b = start_in_process(&specs[1], dir.path()).await;
    let h = http();
    let (al, bl) = (a.local_url(), b.local_url());

    // Eviction of a forwarded cache (built-in `projects`) and one matching cache.pattern.
    for cache in ["projects", "my_cache"] {
        assert_eq!(api::put(&h, &bl, cache, "k1", json!({"v": 1})).await, 204);
        assert_eq!(api::put(&h, &bl, cache, "k2", json!({"v": 2})).await, 204);
        assert_eq!(api::get(&h, &bl, cache, "k1").await, 200);
        assert_eq!(api::evict(&h, &al, cache, &["k1"]).await, 202);
        eventually("eviction reaches B", Duration::from_secs(10), || async {
            api::get(&h, &bl, cache, "k1").await == 404
        })
        .await;
        assert_eq!(api::get(&h, &bl, cache, "k2").await, 200, "other keys stay");
        // Flush empties the cache on B.
        assert_eq!(api::flush(&h, &al, cache).await, 202);
        eventually("flush reaches B", Duration::from_secs(10), || async {
            api::get(&h, &bl, cache, "k2").await == 404
        })
        .await;
    }

    // A cache matching no pattern is not forwarded: evict on A, then prove a later forwarded
    // eviction arrived (so the first one had its chance) and the unmatched value is still on B.
    assert_eq!(api::put(&h, &bl, "accounts", "x", json!(1)).await, 204);
    assert_eq!(api::put(&h, &bl, "projects", "marker", json!(1)).await, 204);
    let r: serde_json::Value = h
        .post(format!("{al}v1/cache/accounts/evict"))
        .json(&json!({"keys": ["x"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["forwarded"], false);
    assert_eq!(api::evict(&h, &al, "projects", &["marker"]).await, 202);
    eventually(
        "marker eviction reaches B",
        Duration::from_secs(10),
        || async { api::get(&h, &bl, "projects", "marker").await == 404 },
    )
    .await;
    assert_eq!(
        api::get(&h, &bl, "accounts", "x").await,
        200,
        "unmatched cache not forwarded"
    );

    // Every response names the node that answered.
    let resp = h
        .get(format!("{}v1/status", b.peer_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-ha-instance"], "node-b");
    let resp = h.get(format!("{al}v1/cache/none/x")).send().await.unwrap();
    assert_eq!(resp.headers()["x-ha-instance"], "node-a");

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_are_dead_lettered_and_do_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, "");
    let a = start_in_process(&specs[0], dir.path()).await;
    let b = start_in_process(&specs[1], dir.path()).await;
    let h = http();
    let (al, bl) = (a.local_url(), b.local_url());
    for k in ["k1", "k2", "k3"] {
        assert_eq!(api::put(&h, &bl, "projects", k, json!(k)).await, 204);
    }
    // Freeze delivery order: queue a good eviction, a message of a kind B does not know (as
    // from a newer version during a rolling upgrade), a body that breaks the whole batch's
    // JSON, then more good evictions. All go into one batch.
    let outbox = a.state().outbox.clone();
    let good = |k: &str| {
        format!(r#"{{"kind":"eviction","cache":"projects","keys":["{k}"]}}"#).into_bytes()
    };
    let first = outbox.append(good("k1")).await.unwrap().unwrap();
    let unknown = outbox
        .append(br#"{"kind":"teleport","to":"mars"}"#.to_vec())
        .await
        .unwrap()
        .unwrap();
    let broken = outbox
        .append(br#"{"kind":"eviction","cache":"#.to_vec())
        .await
        .unwrap()
        .unwrap();
    outbox.append(good("k2")).await.unwrap();
    assert_eq!(api::evict(&h, &al, "projects", &["k3"]).await, 202);
    assert!(first < unknown && unknown < broken);

    eventually(
        "good messages behind the bad ones are delivered",
        Duration::from_secs(15),
        || async {
            api::get(&h, &bl, "projects", "k2").await == 404
                && api::get(&h, &bl, "projects", "k3").await == 404
        },
    )
    .await;
    assert_eq!(api::get(&h, &bl, "projects", "k1").await, 404);

    let metrics = a.peer_url();
    eventually(
        "both bad messages counted as dead letters",
        Duration::from_secs(10),
        || async { api::metric(&h, &metrics, "ha_dead_lettered_total", &[]).await == 2.0 },
    )
    .await;
    let dl_dir = specs[0].data_dir.join("deadletter");
    let files: Vec<_> = std::fs::read_dir(&dl_dir).unwrap().collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![unknown, broken]);
    assert!(
        lines[0]["error"].as_str().unwrap().contains("teleport"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[0]["message"]["to"], "mars");
    assert_eq!(lines[1]["status"], 400);
    // The dead letter is counted just before its batch is acknowledged: wait for the ack.
    eventually("outbox empty", Duration::from_secs(5), || async {
        api::status(&h, &metrics).await["peers"][0]["outbox_depth"] == 0
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotation_without_downtime() {
    let dir = tempfile::tempdir().unwrap();
    let old = write_secret(dir.path(), "old.key", "old-secret-0123456789abcdef-old");
    let new = write_secret(dir.path(), "new.key", "new-secret-0123456789abcdef-new");
    let h = http();
    // Each step of a rotation next to the following one: [old,new] (signs old) with [new,old]
    // (signs new); then [new,old] with [new] (after old was dropped).
    for (sa, sb) in [
        (
            vec![old.clone(), new.clone()],
            vec![new.clone(), old.clone()],
        ),
        (vec![new.clone(), old.clone()], vec![new.clone()]),
    ] {
        let sub = tempfile::tempdir_in(dir.path()).unwrap();
        let mut specs = mesh_specs(sub.path(), 2, "");
        specs[0].secrets = sa.clone();
        specs[1].secrets = sb.clone();
        let a = start_in_process(&specs[0], sub.path()).await;
        let b = start_in_process(&specs[1], sub.path()).await;
        for (from, to) in [(&a, &b), (&b, &a)] {
            assert_eq!(
                api::put(&h, &to.local_url(), "projects", "r", json!(1)).await,
                204
            );
            assert_eq!(
                api::evict(&h, &from.local_url(), "projects", &["r"]).await,
                202
            );
            let to_url = to.local_url();
            eventually(
                "eviction crosses during rotation",
                Duration::from_secs(10),
                || async { api::get(&h, &to_url, "projects", "r").await == 404 },
            )
            .await;
        }
        a.shutdown().await;
        b.shutdown().await;
    }
    // And a node that signs with a secret the other lacks is refused (401), loudly.
    let sub = tempfile::tempdir_in(dir.path()).unwrap();
    let mut specs = mesh_specs(sub.path(), 2, "");
    specs[0].secrets = vec![old.clone()];
    specs[1].secrets = vec![new.clone()];
    let a = start_in_process(&specs[0], sub.path()).await;
    let b = start_in_process(&specs[1], sub.path()).await;
    assert_eq!(
        api::evict(&h, &a.local_url(), "projects", &["z"]).await,
        202
    );
    let b_url = b.peer_url();
    eventually(
        "B counts the refused requests",
        Duration::from_secs(10),
        || async {
            // Anti-entropy requests are refused too: also wait for the forwarder's own failure.
            api::metric(&h, &b_url, "ha_auth_failures_total", &["bad_signature"]).await >= 1.0
                && api::status(&h, &a.peer_url()).await["peers"][0]["last_error"].is_string()
        },
    )
    .await;
    // B also refuses A's other signed calls (the catch-up after start), so wait for A's own
    // delivery attempt to have failed too.
    let a_url = a.peer_url();
    eventually("A reports the 401", Duration::from_secs(10), || async {
        api::status(&h, &a_url).await["peers"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("401"))
    })
    .await;
    let st = api::status(&h, &a.peer_url()).await;
    assert_eq!(
        st["peers"][0]["outbox_depth"], 1,
        "kept for retry, not dropped: {st}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
