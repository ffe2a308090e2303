//! Hot-standby roles with real processes (SPEC §9): exactly one active node; a SIGKILLed active
//! replaced within ttl; the returning node stays standby; a SIGTERMed active hands over at once;
//! keep-oldest; manual promotion (HTTP and CLI); the status page rendered by headless Chromium;
//! the HAProxy hot-standby recipe; keep-majority across a network partition (`partition`).

mod lb;
mod page;
mod partition;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration::lb::Webhook;
use integration::{bin, eventually, http, mesh_specs, patience, NodeSpec, Proc};

const ADMIN: &str = "roles-admin-token-0123456789";
/// Short enough that the file runs fast, long enough for a loaded 2-core machine.
const TTL_MS: u64 = 1500;

fn hot(strategy: &str) -> String {
    format!(
        "[main]\n  mode = hot-standby\n[election]\n  strategy = {strategy}\n\
         [sidecar]\n  adminToken = {ADMIN}\n\
         [peerInfo \"shared-fs\"]\n  heartbeat = 200ms\n  ttl = {TTL_MS}ms\n"
    )
}

/// `/health` of a node: its status and reason (`None` when it does not answer).
async fn health(h: &reqwest::Client, spec: &NodeSpec) -> Option<(u16, String)> {
    let r = h
        .get(format!("{}health", spec.peer_url()))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    Some((status, body["status"].as_str().unwrap_or("").to_owned()))
}

/// The ids of the nodes answering `/health` 204, among those running.
async fn actives(h: &reqwest::Client, specs: &[&NodeSpec]) -> Vec<String> {
    let mut out = Vec::new();
    for s in specs {
        if let Some((204, _)) = health(h, s).await {
            out.push(s.id.clone());
        }
    }
    out
}

async fn status(h: &reqwest::Client, spec: &NodeSpec) -> serde_json::Value {
    integration::api::status(h, &spec.peer_url()).await
}

/// Waits until exactly one of `specs` is active and the others say `standby`; returns its index.
async fn one_active(h: &reqwest::Client, specs: &[&NodeSpec], within: Duration) -> usize {
    let deadline = Instant::now() + patience(within);
    loop {
        let mut active = Vec::new();
        let mut settled = true;
        for (i, s) in specs.iter().enumerate() {
            match health(h, s).await {
                Some((204, _)) => active.push(i),
                Some((503, why)) if why == "standby" => {}
                _ => settled = false,
            }
        }
        if settled && active.len() == 1 {
            return active[0];
        }
        assert!(
            Instant::now() < deadline,
            "no single active node among {:?} within {within:?} (actives: {active:?})",
            specs.iter().map(|s| &s.id).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// For `d`, samples every node: never two actives at once.
async fn stays_single(h: &reqwest::Client, specs: &[&NodeSpec], d: Duration) -> String {
    let end = Instant::now() + d;
    let mut last = String::new();
    while Instant::now() < end {
        let a = actives(h, specs).await;
        assert!(a.len() <= 1, "two actives at once: {a:?}");
        if let Some(a) = a.first() {
            last = a.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// For `d`, samples every node: none is active.
async fn nobody_active(h: &reqwest::Client, specs: &[&NodeSpec], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let a = actives(h, specs).await;
        assert!(a.is_empty(), "a node promoted itself: {a:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_all(specs: &[NodeSpec], dir: &Path) -> Vec<Proc> {
    specs.iter().map(|s| Proc::spawn(s, dir, &[])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_majority_one_active_takeover_on_kill_return_as_standby_and_handover_on_term() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::start().await;
    let extra = format!(
        "{}[alert]\n  webhookUrl = {}\n",
        hot("keep-majority"),
        hook.url
    );
    let specs = mesh_specs(dir.path(), 3, &extra);
    let mut procs = spawn_all(&specs, dir.path());
    let h = http();
    for p in &procs {
        p.wait_ready(&h).await;
    }
    let all: Vec<&NodeSpec> = specs.iter().collect();
    let ttl = Duration::from_millis(TTL_MS);
    let first = one_active(&h, &all, ttl * 4).await;
    assert_eq!(stays_single(&h, &all, ttl).await, specs[first].id);

    // Roles everywhere an operator looks: /v1/status of every node, ha-sidecar status, metrics.
    for s in &specs {
        let st = status(&h, s).await;
        assert_eq!(st["mode"], "hot-standby");
        let want = if s.id == specs[first].id {
            "active"
        } else {
            "standby"
        };
        assert_eq!(st["role"], want, "{}: {st}", s.id);
        assert_eq!(st["election"]["active"], specs[first].id.as_str(), "{st}");
        for p in st["peers"].as_array().unwrap() {
            let role = if p["instance_id"] == specs[first].id.as_str() {
                "active"
            } else {
                "standby"
            };
            assert_eq!(
                p["role"], role,
                "{}'s view of {}: {st}",
                s.id, p["instance_id"]
            );
        }
        let metric = |role: &str| {
            let (h, base, role) = (h.clone(), s.peer_url(), role.to_owned());
            async move {
                integration::api::metric(&h, &base, "ha_role", &[&format!("role=\"{role}\"")]).await
            }
        };
        assert_eq!(metric(want).await, 1.0);
    }
    // Standbys stay hot: what the active node's master does reaches them.
    let code = integration::api::evict(&h, &specs[first].local_url(), "projects", &["hot"]).await;
    assert_eq!(code, 202);
    for (i, s) in specs.iter().enumerate().filter(|(i, _)| *i != first) {
        eventually(
            &format!("node {i} applies the eviction"),
            Duration::from_secs(5),
            || {
                let (h, base) = (h.clone(), s.peer_url());
                async move {
                    integration::api::metric(
                        &h,
                        &base,
                        "ha_messages_applied_total",
                        &["kind=\"eviction\""],
                    )
                    .await
                        >= 1.0
                }
            },
        )
        .await;
    }
    // The role change was alerted.
    eventually("a role_changed alert", Duration::from_secs(5), || async {
        hook.bodies().iter().any(|b| {
            b["event"] == "role_changed"
                && b["role"] == "active"
                && b["node"] == specs[first].id.as_str()
        })
    })
    .await;
    let cli = Command::new(bin())
        .args(["status", "--url", &specs[(first + 1) % 3].peer_url()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(table.contains("role: standby (hot-standby)"), "{table}");
    assert!(
        table.contains("ROLE") && table.contains("active"),
        "{table}"
    );
    // Not manual: promotion is refused with the reason.
    let refused = Command::new(bin())
        .args([
            "promote",
            "--url",
            &specs[first].peer_url(),
            "--token",
            ADMIN,
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("election.strategy = manual"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // SIGKILL of the active: another takes over within ttl + a few seconds.
    let killed_at = Instant::now();
    procs[first].kill9();
    let rest: Vec<&NodeSpec> = (0..3).filter(|i| *i != first).map(|i| &specs[i]).collect();
    let second = one_active(&h, &rest, ttl + Duration::from_secs(4)).await;
    let took = killed_at.elapsed();
    eprintln!("roles: a SIGKILLed active was replaced after {took:?} (ttl {ttl:?})");
    assert!(took <= patience(ttl + Duration::from_secs(4)));
    let second_id = rest[second].id.clone();

    // The killed node returns as a standby and stays one (no flapping).
    procs[first].start();
    procs[first].wait_ready(&h).await;
    // It may be catching up on its backlog first; it is never active meanwhile.
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    loop {
        let back = health(&h, &specs[first]).await;
        assert_ne!(
            back.as_ref().map(|b| b.0),
            Some(204),
            "the returning node took the role"
        );
        if back == Some((503, "standby".into())) {
            break;
        }
        assert!(Instant::now() < deadline, "returning node: {back:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stays_single(&h, &all, ttl * 2).await, second_id);
    assert_eq!(
        one_active(&h, &all, ttl).await,
        all.iter().position(|s| s.id == second_id).unwrap()
    );

    // SIGTERM of the active: the role moves at once (well under ttl).
    let term = specs.iter().position(|s| s.id == second_id).unwrap();
    let stop_at = Instant::now();
    let exit = procs[term].terminate(libc::SIGTERM, Duration::from_secs(15));
    assert!(exit.success(), "graceful exit: {exit:?}");
    let rest: Vec<&NodeSpec> = (0..3).filter(|i| *i != term).map(|i| &specs[i]).collect();
    one_active(&h, &rest, Duration::from_secs(3)).await;
    let handover = stop_at.elapsed();
    eprintln!("roles: SIGTERM of the active handed over after {handover:?}");
    assert!(handover < patience(Duration::from_secs(3)));
    stays_single(&h, &rest, ttl).await;
    assert!(procs[term]
        .log()
        .contains("role changed: this node is now standby"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_oldest_picks_the_first_started_and_a_returning_node_stays_standby() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 3, &hot("keep-oldest"));
    let h = http();
    // Started one after the other: node-a is the oldest.
    let mut procs = Vec::new();
    for s in &specs {
        let p = Proc::spawn(s, dir.path(), &[]);
        p.wait_ready(&h).await;
        procs.push(p);
    }
    let all: Vec<&NodeSpec> = specs.iter().collect();
    let ttl = Duration::from_millis(TTL_MS);
    assert_eq!(one_active(&h, &all, ttl * 4).await, 0);
    stays_single(&h, &all, ttl / 2).await;
    procs[0].kill9();
    let rest = [&specs[1], &specs[2]];
    assert_eq!(
        one_active(&h, &rest, ttl + Duration::from_secs(4)).await,
        0,
        "node-b, the oldest left"
    );
    procs[0].start();
    procs[0].wait_ready(&h).await;
    assert_eq!(stays_single(&h, &all, ttl * 2).await, "node-b");

    // Draining the active node moves the role (to node-c: node-a restarted, so it is the
    // youngest); restoring it does not take the role back (no flapping).
    let drain = |method: reqwest::Method| {
        let (h, url) = (h.clone(), format!("{}health", specs[1].peer_url()));
        async move {
            h.request(method, url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(drain(reqwest::Method::DELETE).await, 204);
    let rest = [&specs[0], &specs[2]];
    assert_eq!(
        one_active(&h, &rest, Duration::from_secs(3)).await,
        1,
        "node-c took over"
    );
    assert_eq!(health(&h, &specs[1]).await, Some((503, "drained".into())));
    assert_eq!(drain(reqwest::Method::POST).await, 204);
    assert_eq!(stays_single(&h, &all, ttl * 2).await, "node-c");
    assert_eq!(health(&h, &specs[1]).await, Some((503, "standby".into())));
}

async fn promote(h: &reqwest::Client, spec: &NodeSpec, token: &str) -> (u16, serde_json::Value) {
    let r = h
        .post(format!("{}v1/election/promote", spec.peer_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_nodes_never_promote_themselves_and_an_operator_moves_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 3, &hot("manual"));
    let mut procs = spawn_all(&specs, dir.path());
    let h = http();
    for p in &procs {
        p.wait_ready(&h).await;
    }
    let all: Vec<&NodeSpec> = specs.iter().collect();
    let ttl = Duration::from_millis(TTL_MS);
    // Nobody stands: well past ttl, every node is still standby.
    nobody_active(&h, &all, ttl * 2).await;
    assert_eq!(health(&h, &specs[0]).await, Some((503, "standby".into())));

    // A claim must be signed by a peer.
    let forged = serde_json::json!({"instance_id": "node-c", "listen_url": specs[2].peer_url(),
        "started_at_ms": 0, "claim": "active", "epoch": 1_000_000, "health": "healthy"});
    let r = h
        .post(format!("{}v1/peer/election", specs[0].peer_url()))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "an unsigned claim");
    // The admin token is required.
    assert_eq!(
        promote(&h, &specs[1], "wrong-token-0123456789abcdef")
            .await
            .0,
        401
    );
    // The CLI verb.
    let out = Command::new(bin())
        .args(["promote", "--url", &specs[1].peer_url()])
        .env("HA_SIDECAR_ADMINTOKEN", ADMIN)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("node-b is active"), "{said}");
    assert_eq!(one_active(&h, &all, ttl).await, 1);
    // Another promotion moves the role; the previous active steps down at once.
    let (code, body) = promote(&h, &specs[2], ADMIN).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["unreachable"].as_array().unwrap().len(), 0, "{body}");
    assert_eq!(one_active(&h, &all, ttl).await, 2);
    // A killed active is not replaced: nodes never promote themselves.
    procs[2].kill9();
    nobody_active(&h, &[&specs[0], &specs[1]], ttl * 2).await;
    let (code, _) = promote(&h, &specs[0], ADMIN).await;
    assert_eq!(code, 200);
    assert_eq!(one_active(&h, &[&specs[0], &specs[1]], ttl).await, 0);
    let st = status(&h, &specs[1]).await;
    assert_eq!(st["election"]["active"], "node-a", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_majority_with_peers_found_through_shared_fs_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}[peerInfo]\n  strategy = shared-fs\n",
        hot("keep-majority")
    );
    let mut specs = mesh_specs(dir.path(), 3, &extra);
    for s in &mut specs {
        s.peers.clear();
    }
    let mut procs = spawn_all(&specs, dir.path());
    let h = http();
    for p in &procs {
        p.wait_ready(&h).await;
    }
    let all: Vec<&NodeSpec> = specs.iter().collect();
    let ttl = Duration::from_millis(TTL_MS);
    let first = one_active(&h, &all, ttl * 4).await;
    stays_single(&h, &all, ttl).await;
    for s in &specs {
        let st = status(&h, s).await;
        assert_eq!(st["election"]["known"], 3, "{}: {st}", s.id);
    }
    procs[first].kill9();
    let rest: Vec<&NodeSpec> = (0..3).filter(|i| *i != first).map(|i| &specs[i]).collect();
    one_active(&h, &rest, ttl + Duration::from_secs(4)).await;
    // The dead node is still known (its heartbeat is stale, its queue kept): 2 of 3 hold.
    let st = status(&h, rest[0]).await;
    assert_eq!(st["election"]["known"], 3, "{st}");
    assert_eq!(st["election"]["live"], 2, "{st}");
}
