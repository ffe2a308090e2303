//! Hot-standby roles with real processes (SPEC §9): exactly one active node; a SIGKILLed active
//! replaced within ttl; the returning node stays standby; a SIGTERMed active hands over at once;
//! keep-oldest; manual promotion (HTTP and CLI); the status page rendered by headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::lb::{self, LbProc, Traffic, Webhook};
use integration::{bin, eventually, free_port, http, mesh_specs, patience, NodeSpec, Proc};

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
    let back = health(&h, &specs[first]).await;
    assert_eq!(back, Some((503, "standby".into())), "returning node");
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
    tokio::time::sleep(ttl * 2).await;
    assert!(actives(&h, &all).await.is_empty());
    assert_eq!(health(&h, &specs[0]).await, Some((503, "standby".into())));

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
    tokio::time::sleep(ttl * 2).await;
    assert!(actives(&h, &[&specs[0], &specs[1]]).await.is_empty());
    let (code, _) = promote(&h, &specs[0], ADMIN).await;
    assert_eq!(code, 200);
    assert_eq!(one_active(&h, &[&specs[0], &specs[1]], ttl).await, 0);
    let st = status(&h, &specs[1]).await;
    assert_eq!(st["election"]["active"], "node-a", "{st}");
}

/// Where the test keeps its screenshot (a test artifact under `target/`).
fn artifacts() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn chromium(args: &[&str], profile: &Path) -> std::process::Output {
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    // Give the page's first poll of /v1/status time to come back before the dump.
    .arg("--virtual-time-budget=5000")
    .args(args);
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run chromium ({e}): install it with `apt-get install -y chromium` (make deps does)"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_page_names_every_node_and_role_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 3, &hot("keep-majority"));
    let procs = spawn_all(&specs, dir.path());
    let h = http();
    for p in &procs {
        p.wait_ready(&h).await;
    }
    let all: Vec<&NodeSpec> = specs.iter().collect();
    let active = one_active(&h, &all, Duration::from_millis(TTL_MS * 4)).await;
    // Each node's view of its peers' roles settles within a heartbeat or two.
    let page_of = (active + 1) % 3;
    eventually("peers' roles known", Duration::from_secs(5), || {
        let (h, spec) = (h.clone(), specs[page_of].clone());
        async move {
            let st = status(&h, &spec).await;
            st["peers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["role"].is_string())
        }
    })
    .await;
    let url = specs[page_of].peer_url();
    let page = h.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );

    // Some traffic on the active node while the page is open, so its rates move (bounded:
    // at most 400 requests, 10 s).
    let (th, local) = (h.clone(), specs[active].local_url());
    let traffic = tokio::spawn(async move {
        let end = Instant::now() + Duration::from_secs(10);
        for i in 0..400u32 {
            if Instant::now() > end {
                break;
            }
            integration::api::evict(&th, &local, "projects", &[&format!("p{i}")]).await;
            let event =
                serde_json::json!({"type": "ref-updated", "eventCreatedOn": 1_764_900_000 + i});
            let _ = th
                .post(format!("{local}v1/events"))
                .json(&event)
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let profile = tempfile::tempdir().unwrap();
    let out = chromium(&["--dump-dom", &url], profile.path());
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, s) in specs.iter().enumerate() {
        let role = if i == active { "active" } else { "standby" };
        let at = dom
            .find(&format!("data-node=\"{}\"", s.id))
            .unwrap_or_else(|| panic!("the page does not name {}:\n{dom}", s.id));
        let row = &dom[at..at + dom[at..].find("</tr>").unwrap()];
        assert!(
            row.contains(&format!("data-role=\"{role}\"")),
            "{} should be {role}: {row}",
            s.id
        );
    }
    let shot = artifacts().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
            &url,
        ],
        profile.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    traffic.abort();
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    eprintln!("roles: status page screenshot in {}", shot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn haproxy_hot_standby_recipe_sends_traffic_to_the_active_node_only() {
    let haproxy = lb::require("haproxy", "haproxy");
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 3, &hot("keep-majority"));
    let mut procs = spawn_all(&specs, dir.path());
    let h = http();
    for p in &procs {
        p.wait_ready(&h).await;
    }
    let front = free_port();
    let socket = dir.path().join("haproxy.sock");
    let cfg = lb::substitute(
        &lb::example("haproxy-hot-standby.cfg"),
        &[
            ("/run/haproxy/admin.sock", socket.display().to_string()),
            ("bind :8080", format!("bind 127.0.0.1:{front}")),
            // The test's "masters" are the sidecars themselves (they answer /livez with their
            // X-HA-Instance), so the check goes to the server's own port.
            (" port 7710", String::new()),
            (
                "192.0.2.11:8080",
                format!("127.0.0.1:{}", specs[0].listen_port),
            ),
            (
                "192.0.2.12:8080",
                format!("127.0.0.1:{}", specs[1].listen_port),
            ),
            (
                "192.0.2.13:8080",
                format!("127.0.0.1:{}", specs[2].listen_port),
            ),
        ],
    );
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(check.status.success(), "haproxy -c: {check:?}");
    let _hp = LbProc::spawn(
        Command::new(&haproxy).arg("-db").arg("-f").arg(&cfg_path),
        dir.path().join("haproxy.log"),
    );
    let all: Vec<&NodeSpec> = specs.iter().collect();
    let ttl = Duration::from_millis(TTL_MS);
    let first = one_active(&h, &all, ttl * 4).await;
    let servers = ["master-1", "master-2", "master-3"];
    let up_is = |want: usize| {
        let socket = socket.clone();
        async move {
            for (i, s) in servers.iter().enumerate() {
                let st = lb::haproxy_status(&socket, "masters", s)
                    .await
                    .unwrap_or_default();
                if (i == want) != st.starts_with("UP") {
                    return false;
                }
            }
            true
        }
    };
    eventually(
        "haproxy: only the active node UP",
        Duration::from_secs(10),
        || up_is(first),
    )
    .await;
    let traffic = Traffic::start(format!("http://127.0.0.1:{front}/livez"));
    let t = Instant::now();
    let seen = traffic.next_answers(t, 30).await;
    assert!(
        seen.iter().all(|id| *id == specs[first].id),
        "only the active answers: {seen:?}"
    );

    // A graceful stop of the active: the check follows the role to the new active node.
    let moved_at = Instant::now();
    procs[first].terminate(libc::SIGTERM, Duration::from_secs(15));
    let rest: Vec<&NodeSpec> = (0..3).filter(|i| *i != first).map(|i| &specs[i]).collect();
    let next = one_active(&h, &rest, Duration::from_secs(3)).await;
    let next_id = rest[next].id.clone();
    let next_index = specs.iter().position(|s| s.id == next_id).unwrap();
    eventually(
        "haproxy: the new active UP",
        Duration::from_secs(10),
        || up_is(next_index),
    )
    .await;
    let switched = moved_at.elapsed();
    let t = Instant::now();
    let seen = traffic.next_answers(t, 30).await;
    assert!(
        seen.iter().all(|id| *id == next_id),
        "only the new active answers: {seen:?}"
    );
    let after: Vec<_> = traffic
        .all()
        .into_iter()
        .filter(|a| a.at > moved_at)
        .collect();
    let failed: Vec<_> = after
        .iter()
        .filter_map(|a| a.outcome.clone().err())
        .collect();
    eprintln!(
        "roles: haproxy moved traffic to the new active {switched:?} after SIGTERM; \
         {} of {} requests since the SIGTERM failed: {failed:?}",
        failed.len(),
        after.len()
    );
}
