//! The operator's path: `/metrics` against promtool and the README's table, `/readyz` while
//! drained, and the CLI verbs' errors, help and exit codes (the real binary).

use std::process::{Command, Stdio};
use std::time::Duration;

use integration::{bin, eventually, free_port, http, mesh_specs, start_in_process};

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap()
}

/// `(series, labels)` rows of the README's metrics table.
fn readme_metrics() -> Vec<(String, Vec<String>)> {
    let text = readme();
    let at = text
        .find("<!-- metrics-table -->")
        .expect("README has the metrics table");
    text[at..]
        .lines()
        .skip(3)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let labels = cells[2]
                .split(',')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .filter(|c| !c.is_empty())
                .collect();
            (name, labels)
        })
        .collect()
}

fn promtool_check(text: &str) -> std::process::Output {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is needed ({e}): install Debian's `prometheus` package \
             (`sudo apt-get install prometheus`; `make deps` does it)"
        ),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_every_readme_series_exists_from_start() {
    let dir = tempfile::tempdir().unwrap();
    // Node a has one peer (b, never started): its per-peer series must be there too.
    let specs = mesh_specs(dir.path(), 2, "");
    let a = start_in_process(&specs[0], dir.path()).await;
    let h = http();
    let base = a.peer_url();
    h.get(format!("{base}livez")).send().await.unwrap();
    let classic = h
        .get(format!("{base}metrics"))
        .header("accept", "text/plain;version=0.0.4")
        .send()
        .await
        .unwrap();
    assert!(classic.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let classic = classic.text().await.unwrap();
    let out = promtool_check(&classic);
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{classic}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let om = h.get(format!("{base}metrics")).send().await.unwrap();
    assert!(om.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let om = om.text().await.unwrap();
    let rows = readme_metrics();
    assert!(rows.len() >= 30, "{rows:?}");
    for (name, labels) in &rows {
        let sample = om.lines().find(|l| {
            [name.clone(), format!("{name}_count")]
                .iter()
                .any(|n| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} ")))
        });
        let sample = sample.unwrap_or_else(|| panic!("README's {name} has no sample:\n{om}"));
        for label in labels {
            assert!(
                sample.contains(&format!("{label}=\"")),
                "{name}: no label {label} in {sample}"
            );
        }
    }
    // And the other way round: every family served is documented.
    for line in om.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (family, kind) = line.split_once(' ').unwrap();
        let documented = if kind == "counter" {
            format!("{family}_total")
        } else {
            family.to_owned()
        };
        assert!(
            rows.iter().any(|(n, _)| *n == documented),
            "{documented} is served but not in the README's metrics table"
        );
    }
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_drained() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 1, "");
    let a = start_in_process(&specs[0], dir.path()).await;
    let h = http();
    let ready = |h: reqwest::Client, url: String| async move {
        h.get(url).send().await.unwrap().status().as_u16()
    };
    let readyz = format!("{}readyz", a.peer_url());
    assert_eq!(ready(h.clone(), readyz.clone()).await, 200);
    let r = h
        .delete(format!("{}health", a.local_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = h.get(&readyz).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("drained"));
    h.post(format!("{}health", a.local_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready(h.clone(), readyz).await, 200);
    a.shutdown().await;
}

fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A TCP server that answers every request with a bare 404 (not an ha-sidecar).
fn foreign_http_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in l.incoming().flatten().take(8) {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_name_the_cause_and_a_hint() {
    let closed = free_port();
    let (code, _, err) = run_cli(
        &["status", "--url", &format!("http://127.0.0.1:{closed}/")],
        &[],
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("connection refused") && err.contains("listenUrl"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["status", "--url", "127.0.0.1:7710"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("did you mean http://127.0.0.1:7710/"), "{err}");
    let foreign = foreign_http_server();
    let (code, _, err) = run_cli(
        &["status", "--url", &format!("http://127.0.0.1:{foreign}/")],
        &[],
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("not an ha-sidecar (no X-HA-Instance"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 1, "");
    let a = start_in_process(&specs[0], dir.path()).await;
    let (code, _, err) = run_cli(&["status", "--url", &a.local_url()], &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("local API") && err.contains("listenUrl"),
        "{err}"
    );
    let (code, _, err) = run_cli(
        &[
            "stream-events",
            "--url",
            &a.peer_url(),
            "--since",
            "yesterday",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a date (2026-12-04"), "{err}");
    // The server's message for a bad since is said once, not prefixed twice.
    let body = http()
        .get(format!("{}v1/events/stream?since=2026-13-45", a.peer_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.matches("since").count(), 1, "{body}");
    assert!(!body.contains("bad cursor"), "{body}");
    // Every flag has help text.
    for verb in ["run", "check-config", "status", "stream-events", "reindex"] {
        let (_, out, _) = run_cli(&[verb, "--help"], &[]);
        for line in out.lines().filter(|l| l.trim_start().starts_with('-')) {
            let flag = line.trim_start();
            let has_text = flag.split("  ").filter(|p| !p.trim().is_empty()).count() > 1;
            let next_line_text = out
                .lines()
                .skip_while(|l| *l != line)
                .nth(1)
                .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
            assert!(
                has_text || next_line_text,
                "`{verb} --help`: `{flag}` has no help"
            );
        }
    }
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_exits_quietly_when_its_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 1, "");
    let a = start_in_process(&specs[0], dir.path()).await;
    let h = http();
    let publish = |h: reqwest::Client, url: String| async move {
        let r = h
            .post(format!("{url}v1/events"))
            .body(r#"{"type":"ref-updated","eventCreatedOn":1900000000}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    };
    publish(h.clone(), a.local_url()).await;
    let mut child = Command::new(bin())
        .args([
            "stream-events",
            "--since",
            "2026-12-04",
            "--url",
            &a.peer_url(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    use std::io::Read;
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(
        &first, b"{",
        "a date as --since starts at that day's events"
    );
    drop(stdout);
    // Events keep coming: the next write finds the pipe closed.
    let deadline = std::time::Instant::now() + integration::patience(Duration::from_secs(10));
    let status = loop {
        publish(h.clone(), a.local_url()).await;
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("stream-events did not stop after its reader went away");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_warns_about_a_peer_that_left_longer_than_ttl_ago() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[peerInfo \"shared-fs\"]\n  heartbeat = 100ms\n  ttl = 1s\n";
    let specs = mesh_specs(dir.path(), 2, extra);
    let a = start_in_process(&specs[0], dir.path()).await;
    let b = start_in_process(&specs[1], dir.path()).await;
    let h = http();
    let level = |h: reqwest::Client, base: String| async move {
        let s = integration::api::status(&h, &base).await;
        let p = &s["peers"][0];
        (
            p["state"].as_str().unwrap_or("").to_owned(),
            p["level"].as_str().unwrap_or("").to_owned(),
        )
    };
    eventually("b is up on a", Duration::from_secs(10), || {
        let (h, base) = (h.clone(), a.peer_url());
        async move { level(h, base).await.0 == "up" }
    })
    .await;
    b.shutdown().await;
    eventually("b is left on a", Duration::from_secs(10), || {
        let (h, base) = (h.clone(), a.peer_url());
        async move { level(h, base).await == ("left".into(), "ok".into()) }
    })
    .await;
    eventually(
        "a left b is a warning after ttl",
        Duration::from_secs(10),
        || {
            let (h, base) = (h.clone(), a.peer_url());
            async move { level(h, base).await == ("left".into(), "warning".into()) }
        },
    )
    .await;
    let (code, out, err) = run_cli(&["status", "--url", &a.peer_url()], &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("left") && out.contains("WARNING"), "{out}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_takes_the_local_token_and_check_config_prints_sources() {
    let dir = tempfile::tempdir().unwrap();
    let token = "reindex-token-0123456789";
    let extra = format!("[sidecar]\n  localToken = {token}\n");
    let specs = mesh_specs(dir.path(), 1, &extra);
    let a = start_in_process(&specs[0], dir.path()).await;
    let file = dir.path().join("docs.jsonl");
    std::fs::write(
        &file,
        "{\"id\": \"p1\", \"version\": 1, \"doc\": {\"name\": \"p1\"}}\n",
    )
    .unwrap();
    let from = file.to_str().unwrap();
    let url = a.local_url();
    let args = [
        "reindex", "--kind", "projects", "--from", from, "--url", &url,
    ];
    let (code, _, err) = run_cli(&args, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--token"), "{err}");
    let mut with_token = args.to_vec();
    with_token.extend(["--token", token]);
    let (code, out, err) = run_cli(&with_token, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1 applied"), "{out}");
    a.shutdown().await;

    let cfg = dir.path().join("node.config");
    std::fs::write(&cfg, specs[0].text()).unwrap();
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = run_cli(
        &["check-config", "--print", "-c", cfg],
        &[
            ("HA_HTTP_SOCKETTIMEOUT", "3s"),
            ("HA_PEERINFO_STATIC_URL", "x"),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let line = |needle: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in\n{out}"))
            .to_owned()
    };
    assert!(line("socketTimeout = 3s").ends_with("# env HA_HTTP_SOCKETTIMEOUT"));
    assert!(line("instanceId = node-a").ends_with("# file"));
    assert!(line("maxClockSkew = 2 min").ends_with("# default"));
    assert!(line("localToken = <redacted>").ends_with("# file"));
    assert!(!out.contains(token), "{out}");
    assert!(
        out.contains("warning: HA_PEERINFO_STATIC_URL: unknown variable; ignored (did you mean HA_PEERINFO_URL?)"),
        "{out}"
    );
}
