//! The status page (`GET /`) of a hot-standby cluster rendered by headless Chromium (Debian's
//! `chromium`): the DOM names every node with its role; a screenshot is kept in
//! `target/test-artifacts/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::{eventually, http, mesh_specs, NodeSpec};

use super::{hot, one_active, spawn_all, status, TTL_MS};

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
