//! The shipped load-balancer recipes for Gerrit (`examples/haproxy.cfg`, `examples/nginx.conf`,
//! issue 15 item 3), run with the real HAProxy and nginx in front of two stand-in masters
//! (`FakeMaster`: HTTP; `TcpEcho`: SSH) with their sidecars: a 3 MB git push passes, writes
//! are pinned in active/active while reads spread and git fetches stick, SSH goes through
//! L4, the sidecars' event stream and the events-log replay are routed (the stream unbuffered:
//! an event arrives promptly), and a dead master (its sidecar alive) is failed over.

use std::time::{Duration, Instant};

use integration::events::{publish, stream_http};
use integration::gerrit::FakeMaster;
use integration::lb::{self, TcpEcho, Traffic};
use integration::{eventually, free_port, http, mesh_specs, patience, start_in_process};

const PLUGIN: &str = "high-availability";
/// A git push's pack of 3 MB (nginx refused 1 MB+ bodies before `client_max_body_size`).
const PUSH_BYTES: usize = 3 << 20;

/// Two masters (HTTP and SSH stand-ins) and their sidecars, probing their master's health.
struct Site {
    masters: Vec<FakeMaster>,
    ssh: Vec<TcpEcho>,
    nodes: Vec<ha_sidecar::app::Node>,
    specs: Vec<integration::NodeSpec>,
    /// Front ports: HTTP active/passive, HTTP active/active, SSH active/passive, SSH a/a.
    front: [u16; 4],
}

async fn site(dir: &std::path::Path) -> Site {
    let masters = vec![
        FakeMaster::start_named(PLUGIN, "master-1"),
        FakeMaster::start_named(PLUGIN, "master-2"),
    ];
    let ssh = vec![
        TcpEcho::start("master-1").await,
        TcpEcho::start("master-2").await,
    ];
    let mut specs = mesh_specs(dir, 2, "");
    for (spec, m) in specs.iter_mut().zip(&masters) {
        spec.extra = format!(
            "[gerrit]\n  url = {}\n  healthInterval = 100ms\n  user = sidecar\n  password = master-secret\n",
            m.url()
        );
    }
    let mut nodes = Vec::new();
    for spec in &specs {
        nodes.push(start_in_process(spec, dir).await);
    }
    let h = http();
    for spec in &specs {
        eventually("sidecar healthy", Duration::from_secs(10), || async {
            h.get(format!("{}health", spec.peer_url()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 204)
        })
        .await;
    }
    Site {
        masters,
        ssh,
        nodes,
        specs,
        front: [free_port(), free_port(), free_port(), free_port()],
    }
}

impl Site {
    fn http_url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.front[i])
    }

    async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

/// `(who answered, body)` of one request through the load balancer.
async fn send(
    h: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Vec<u8>,
) -> (String, String) {
    let r = h.request(method, url).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    let who = r.headers()["x-ha-instance"].to_str().unwrap().to_owned();
    (who, r.text().await.unwrap())
}

/// What both recipes must do, whichever load balancer runs them.
async fn gerrit_story(kind: &str, site: &mut Site, wait_master_1_down: impl AsyncFnOnce()) {
    let h = http();
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    // Active/passive: master-1 takes everything, a 3 MB push included.
    let (who, _) = send(&h, get.clone(), &site.http_url(0, "c/tools/+/1"), vec![]).await;
    assert_eq!(who, "master-1", "{kind}");
    let (who, body) = send(
        &h,
        post.clone(),
        &site.http_url(0, "a/tools/git-receive-pack"),
        vec![b'p'; PUSH_BYTES],
    )
    .await;
    assert_eq!(
        (who.as_str(), body),
        (
            "master-1",
            format!("POST /a/tools/git-receive-pack {PUSH_BYTES}")
        ),
        "{kind}"
    );

    // Active/active: reads on both masters, every write and push on master-1, one client's git
    // fetch on one master.
    let mut readers = std::collections::BTreeSet::new();
    for _ in 0..8 {
        readers.insert(
            send(
                &h,
                get.clone(),
                &site.http_url(1, "changes/?q=status:open"),
                vec![],
            )
            .await
            .0,
        );
    }
    assert_eq!(
        readers.len(),
        2,
        "{kind}: reads spread over both masters: {readers:?}"
    );
    for path in ["a/changes/1/revisions/1/review", "a/projects/new-project"] {
        for _ in 0..4 {
            let (who, _) = send(&h, post.clone(), &site.http_url(1, path), b"{}".to_vec()).await;
            assert_eq!(who, "master-1", "{kind}: write {path} pinned");
        }
    }
    let (who, _) = send(
        &h,
        get.clone(),
        &site.http_url(1, "a/tools/info/refs?service=git-receive-pack"),
        vec![],
    )
    .await;
    assert_eq!(who, "master-1", "{kind}: push advertisement pinned");
    let (who, body) = send(
        &h,
        post.clone(),
        &site.http_url(1, "a/tools/git-receive-pack"),
        vec![b'p'; PUSH_BYTES],
    )
    .await;
    assert_eq!(who, "master-1", "{kind}: push pinned");
    assert!(body.ends_with(&format!(" {PUSH_BYTES}")), "{kind}: {body}");
    let mut fetchers = std::collections::BTreeSet::new();
    for _ in 0..4 {
        fetchers.insert(
            send(
                &h,
                get.clone(),
                &site.http_url(1, "a/tools/info/refs?service=git-upload-pack"),
                vec![],
            )
            .await
            .0,
        );
        fetchers.insert(
            send(
                &h,
                post.clone(),
                &site.http_url(1, "a/tools/git-upload-pack"),
                b"0000".to_vec(),
            )
            .await
            .0,
        );
    }
    assert_eq!(
        fetchers.len(),
        1,
        "{kind}: one client's fetches on one master: {fetchers:?}"
    );

    // SSH through L4: active/passive on master-1; active/active sticky by client address.
    assert_eq!(
        lb::tcp_greeting(site.front[2]).await.as_deref(),
        Ok("master-1"),
        "{kind}"
    );
    let mut ssh = std::collections::BTreeSet::new();
    for _ in 0..4 {
        ssh.insert(lb::tcp_greeting(site.front[3]).await.unwrap());
    }
    assert_eq!(ssh.len(), 1, "{kind}: SSH sticky: {ssh:?}");

    // The event stream through the load balancer, unbuffered: an event published on the
    // master-2 side reaches a tail opened through the LB at once; events-log replays it.
    let sh = stream_http();
    let mut tail = sh
        .get(site.http_url(0, "v1/events/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200, "{kind}");
    let _opening = tail.chunk().await.unwrap();
    let created = ha_sidecar::clock::now_ms() / 1000;
    let event = format!(
        r#"{{"type":"ref-updated","eventCreatedOn":{created},"refUpdate":{{"project":"tools","refName":"refs/heads/lb"}}}}"#
    );
    let sent = Instant::now();
    let (status, _) = publish(&h, &site.specs[1].local_url(), event.clone().into_bytes()).await;
    assert_eq!(status, 202);
    let mut seen = String::new();
    while !seen.contains("refs/heads/lb") {
        let chunk = tokio::time::timeout(patience(Duration::from_secs(5)), tail.chunk())
            .await
            .unwrap_or_else(|_| panic!("{kind}: the event did not come through the LB: {seen}"))
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let took = sent.elapsed();
    eprintln!("{kind}: event through the LB after {took:?}");
    // Unbuffered means at once: a proxy holding small chunks (HAProxy without
    // `option http-no-delay` took ~210 ms here) fails this.
    assert!(
        took < patience(Duration::from_millis(150)),
        "{kind}: the event took {took:?} through the load balancer"
    );
    drop(tail);
    let since = jiff::Timestamp::from_second(created as i64 - 1)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d+%H%%3A%M%%3A%S")
        .to_string();
    let replay = h
        .get(site.http_url(0, &format!("a/plugins/events-log/events/?t1={since}")))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200, "{kind}");
    assert!(
        replay.text().await.unwrap().contains("refs/heads/lb"),
        "{kind}: events-log through the LB"
    );

    // master-1 dies (HTTP and SSH; its sidecar lives on): traffic moves to master-2 and no
    // request fails (reads on active/active: a refused request is retried on the other).
    let traffic = Traffic::start(site.http_url(1, "c/tools/+/1"));
    traffic.next_answers(Instant::now(), 5).await;
    // Active/passive too: the primary's death costs no request either.
    let primary = Traffic::start(site.http_url(0, "c/tools/+/1"));
    primary.next_answers(Instant::now(), 5).await;
    let died = Instant::now();
    site.masters[0].stop().await;
    site.ssh[0].stop();
    wait_master_1_down().await;
    let moved = traffic.next_answers(Instant::now(), 20).await;
    assert!(
        moved.iter().rev().take(20).all(|w| w == "master-2"),
        "{kind}: {moved:?}"
    );
    eprintln!(
        "{kind}: master-1 died; traffic on master-2 within {:?}",
        died.elapsed()
    );
    assert!(
        traffic.failures().is_empty(),
        "{kind}: failed requests: {:?}",
        traffic.failures()
    );
    let moved = primary.next_answers(Instant::now(), 10).await;
    assert!(
        moved.iter().rev().take(10).all(|w| w == "master-2"),
        "{kind}: {moved:?}"
    );
    assert!(
        primary.failures().is_empty(),
        "{kind}: failed requests on active/passive: {:?}",
        primary.failures()
    );
    let (who, _) = send(&h, get, &site.http_url(0, "c/tools/+/1"), vec![]).await;
    assert_eq!(who, "master-2", "{kind}: active/passive failed over");
    assert_eq!(
        lb::tcp_greeting(site.front[2]).await.as_deref(),
        Ok("master-2"),
        "{kind}: SSH failed over"
    );
    let (who, _) = send(
        &h,
        post,
        &site.http_url(1, "a/changes/1/revisions/1/review"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(who, "master-2", "{kind}: writes move with the primary");
}

/// The four front ports and every master's and sidecar's address, for either recipe.
fn addresses(site: &Site, listen: &str) -> Vec<(&'static str, String)> {
    let [f1, f2, s1, s2] = site.front;
    let (m, s) = (&site.masters, &site.ssh);
    let side = |i: usize| site.specs[i].listen_port;
    let mut pairs = vec![
        (["bind :8080", "listen 8080;"], f1),
        (["bind :8081", "listen 8081;"], f2),
        (["bind :29418", "listen 29418;"], s1),
        (["bind :29419", "listen 29419;"], s2),
    ]
    .into_iter()
    .map(|(from, port)| {
        let haproxy = listen == "bind";
        let from = if haproxy { from[0] } else { from[1] };
        let to = if haproxy {
            format!("bind 127.0.0.1:{port}")
        } else {
            format!("listen 127.0.0.1:{port};")
        };
        (from, to)
    })
    .collect::<Vec<_>>();
    if listen == "bind" {
        // HAProxy: each server's health check goes to its own sidecar.
        pairs.extend([
            (
                "192.0.2.11:8080 check port 7710",
                format!("127.0.0.1:{} check port {}", m[0].port, side(0)),
            ),
            (
                "192.0.2.12:8080 check port 7710",
                format!("127.0.0.1:{} check port {}", m[1].port, side(1)),
            ),
            (
                "192.0.2.11:29418 check port 7710",
                format!("127.0.0.1:{} check port {}", s[0].port, side(0)),
            ),
            (
                "192.0.2.12:29418 check port 7710",
                format!("127.0.0.1:{} check port {}", s[1].port, side(1)),
            ),
        ]);
    } else {
        pairs.extend([
            ("192.0.2.11:8080", format!("127.0.0.1:{}", m[0].port)),
            ("192.0.2.12:8080", format!("127.0.0.1:{}", m[1].port)),
            ("192.0.2.11:29418", format!("127.0.0.1:{}", s[0].port)),
            ("192.0.2.12:29418", format!("127.0.0.1:{}", s[1].port)),
        ]);
    }
    pairs.extend([
        ("192.0.2.11:7710", format!("127.0.0.1:{}", side(0))),
        ("192.0.2.12:7710", format!("127.0.0.1:{}", side(1))),
    ]);
    pairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_recipe_for_gerrit() {
    let dir = tempfile::tempdir().unwrap();
    let mut site = site(dir.path()).await;
    let (_hp, socket) = lb::start_haproxy(dir.path(), &addresses(&site, "bind"));
    let up = |backend: &'static str, server: &'static str, want: &'static str| {
        let socket = socket.clone();
        async move {
            eventually(
                &format!("{backend}/{server} {want}"),
                Duration::from_secs(10),
                || async {
                    lb::haproxy_status(&socket, backend, server)
                        .await
                        .is_some_and(|s| s.starts_with(want))
                },
            )
            .await
        }
    };
    for backend in [
        "masters",
        "masters-active-active",
        "masters-writes",
        "masters-git",
        "masters-ssh",
    ] {
        up(backend, "master-1", "UP").await;
        up(backend, "master-2", "UP").await;
    }
    up("sidecars", "sidecar-1", "UP").await;
    up("sidecars", "sidecar-2", "UP").await;
    let sidecar_1 = site.specs[0].peer_url();
    gerrit_story("haproxy", &mut site, async || {
        // The sidecar says why: its master is down.
        let h = http();
        eventually(
            "sidecar-1 reports its master down",
            Duration::from_secs(10),
            || async {
                let r = h.get(format!("{sidecar_1}health")).send().await.unwrap();
                r.status() == 503 && r.text().await.unwrap_or_default().contains("master")
            },
        )
        .await;
        up("masters", "master-1", "DOWN").await;
        up("masters-ssh", "master-1", "DOWN").await;
        up("masters-writes", "master-1", "DOWN").await;
    })
    .await;
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_recipe_for_gerrit() {
    let dir = tempfile::tempdir().unwrap();
    let mut site = site(dir.path()).await;
    let _ng = lb::start_nginx(dir.path(), &addresses(&site, "listen"));
    let h = http();
    let front = site.http_url(0, "c/tools/+/1");
    eventually("nginx listens", Duration::from_secs(5), || async {
        h.get(&front).send().await.is_ok()
    })
    .await;
    // nginx fails over passively: the next request to the dead master is retried elsewhere.
    gerrit_story("nginx", &mut site, async || {}).await;
    site.shutdown().await;
}
