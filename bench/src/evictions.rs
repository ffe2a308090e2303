//! Eviction forwarding A → B through real processes with the fsync'd outbox: evictions/s
//! accepted and delivered (100 keys per request, and one), the plugin-like baseline (one peer
//! request per message), latency from the local 202 to applied on B at 1,000/s, and RSS.

use std::time::{Duration, Instant};

use integration::{api, mesh_specs, Proc};

use crate::report::Report;
use crate::Budget;

struct Pair {
    a: Proc,
    b: Proc,
    /// A client of the peer listeners (trusting the test CA over TLS).
    peer_http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn pair(extra_a: &str, b_env: &[(&str, &str)]) -> anyhow::Result<Pair> {
    let dir = tempfile::tempdir()?;
    let mut specs = mesh_specs(dir.path(), 2, "");
    specs[0].extra = extra_a.to_owned();
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let b = Proc::spawn(&specs[1], dir.path(), b_env);
    let h = integration::http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    Ok(Pair {
        a,
        b,
        peer_http: h,
        _dir: dir,
    })
}

/// Two nodes over https with mutual TLS between them (a CA and node certificates generated
/// here, by the integration tests' `TestCa::https_mesh`); the local APIs stay plain.
async fn pair_tls() -> anyhow::Result<Pair> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ca = integration::tls::TestCa::new(d, "ca");
    let (specs, _) = ca.https_mesh(d, 2);
    let a = Proc::spawn(&specs[0], d, &[]);
    let b = Proc::spawn(&specs[1], d, &[]);
    let h = integration::tls::client(&ca.pem, None);
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    Ok(Pair {
        a,
        b,
        peer_http: h,
        _dir: dir,
    })
}

pub fn rss_mib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Samples the RSS of `pids` every 50 ms until the returned sender is dropped or fired; the
/// task's result is the highest RSS seen of each.
fn rss_sampler(
    pids: Vec<i32>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Vec<f64>>,
) {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut max = vec![0f64; pids.len()];
        // Bounded by the caller's phases, and by one hour at most.
        for _ in 0..72_000 {
            for (m, pid) in max.iter_mut().zip(&pids) {
                *m = m.max(rss_mib(*pid));
            }
            tokio::select! {
                _ = &mut rx => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        max
    });
    (tx, task)
}

/// Sustained load of `keys_per_request` keys per evict request from `concurrency` clients, for
/// `dur` and at most `max_requests` requests.
/// Returns (accepted keys/s, delivered keys/s): delivery is complete when B has applied every
/// message A accepted.
async fn sustained(
    p: &Pair,
    keys_per_request: usize,
    concurrency: usize,
    dur: Duration,
    max_requests: u64,
) -> anyhow::Result<(f64, f64)> {
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let url = format!("{}v1/cache/projects/evict", p.a.spec.local_url());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (client, url, issued) = (client.clone(), url.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            let mut i = 0u64;
            while start.elapsed() < dur
                && issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < max_requests
            {
                let keys: Vec<String> = (0..keys_per_request)
                    .map(|k| format!("t{t}-r{i}-k{k}"))
                    .collect();
                i += 1;
                let r = client
                    .post(&url)
                    .json(&serde_json::json!({ "keys": keys }))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status().as_u16() == 202 {
                        accepted += 1;
                    }
                }
            }
            accepted
        }));
    }
    let mut requests = 0u64;
    for t in tasks {
        requests += t.await?;
    }
    let accept_secs = start.elapsed().as_secs_f64();
    let h = &p.peer_http;
    let b_peer = p.b.spec.peer_url();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let applied = api::metric(h, &b_peer, "ha_messages_applied_total", &["eviction"]).await;
        if applied as u64 >= requests {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "B applied {applied} of {requests} after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deliver_secs = start.elapsed().as_secs_f64();
    let keys = (requests * keys_per_request as u64) as f64;
    Ok((keys / accept_secs, keys / deliver_secs))
}

/// B is SIGSTOPped while A takes single-key evictions at about 2,000/s for `dur`: A's memory
/// must not grow with the backlog, which lives on disk. Returns (RSS before, RSS at a tenth of
/// the outage, RSS after, backlog); B is left frozen.
async fn outage(p: &Pair, dur: Duration) -> anyhow::Result<(f64, f64, f64, f64)> {
    let h = integration::http();
    let url = format!("{}v1/cache/projects/evict", p.a.spec.local_url());
    // Warm up so the baseline includes connection pools and caches, not a cold process.
    for i in 0..2_000 {
        h.post(&url)
            .json(&serde_json::json!({ "keys": [format!("warm-{i}")] }))
            .send()
            .await?;
    }
    let before = rss_mib(p.a.pid());
    p.b.freeze();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(500));
    let mut i = 0u64;
    let mut inflight = Vec::new();
    let mut early = None;
    while start.elapsed() < dur {
        if early.is_none() && start.elapsed() >= dur / 10 {
            early = Some(rss_mib(p.a.pid()));
        }
        tick.tick().await;
        let (h, url) = (h.clone(), url.clone());
        i += 1;
        inflight.push(tokio::spawn(async move {
            let _ = h
                .post(&url)
                .json(&serde_json::json!({ "keys": [format!("out-{i}")] }))
                .send()
                .await;
        }));
        if inflight.len() >= 256 {
            for t in inflight.drain(..) {
                let _ = t.await;
            }
        }
    }
    for t in inflight {
        let _ = t.await;
    }
    let after = rss_mib(p.a.pid());
    let st = api::status(&h, &p.a.spec.peer_url()).await;
    let backlog = st["peers"][0]["outbox_depth"].as_f64().unwrap_or(f64::NAN);
    Ok((before, early.unwrap_or(f64::NAN), after, backlog))
}

/// Parses tracing's RFC 3339 UTC timestamp (`2026-11-23T18:59:51.976802Z`) to µs since the epoch.
fn parse_ts_us(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_microsecond())
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Paced single-key evictions at `rate`/s; latency from A's 202 to B's "applied" log line.
async fn latency(p: &Pair, rate: u64, samples: usize) -> anyhow::Result<(f64, f64)> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("{}v1/cache/projects/evict", p.a.spec.local_url());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, i64)>();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for i in 0..samples {
        tick.tick().await;
        let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
        tokio::spawn(async move {
            let r = client
                .post(&url)
                .json(&serde_json::json!({ "keys": [format!("lat-{i}")] }))
                .send()
                .await;
            if let Ok(r) = r {
                let at = now_us();
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if let Some(seq) = v["seq"].as_u64() {
                        let _ = tx.send((seq, at));
                    }
                }
            }
        });
    }
    drop(tx);
    let mut accepted = std::collections::HashMap::new();
    while let Some((seq, at)) = rx.recv().await {
        accepted.insert(seq, at);
    }
    let h = integration::http();
    let b_peer = p.b.spec.peer_url();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (api::metric(&h, &b_peer, "ha_messages_applied_total", &["eviction"]).await as usize)
        < accepted.len()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "latency run not delivered in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat: Vec<f64> =
        p.b.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "applied")
            .filter_map(|v| {
                let seq = v["fields"]["seq"].as_u64()?;
                let applied = parse_ts_us(v["timestamp"].as_str()?)?;
                accepted.get(&seq).map(|at| (applied - at) as f64 / 1000.0)
            })
            .collect();
    anyhow::ensure!(
        lat.len() * 10 >= accepted.len() * 9,
        "only {} of {} latencies matched",
        lat.len(),
        accepted.len()
    );
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

pub async fn run(report: &mut Report, budget: Budget) -> anyhow::Result<()> {
    eprintln!("evictions: A → B, 100 keys per request");
    let p = pair("", &[]).await?;
    report.set("rss_idle_mib", rss_mib(p.a.pid()));
    report.set("rss_idle_mib_receiver", rss_mib(p.b.pid()));
    let (stop_sampling, sampler) = rss_sampler(vec![p.a.pid(), p.b.pid()]);
    let (acc, del) = sustained(&p, 100, 8, budget.sustain, u64::MAX).await?;
    report.set("evictions_accepted_per_s_batched", acc);
    report.set("evictions_per_s_batched", del);
    eprintln!("evictions: A → B, one key per request");
    let (acc, del) = sustained(&p, 1, 32, budget.sustain, u64::MAX).await?;
    report.set("evictions_accepted_per_s_single", acc);
    report.set("evictions_per_s_single", del);
    let _ = stop_sampling.send(());
    let peak = sampler.await?;
    report.set("rss_under_load_mib", peak[0]);
    report.set("rss_under_load_mib_receiver", peak[1]);
    report.set("rss_after_load_mib", rss_mib(p.a.pid()));
    drop(p);

    // The same two runs over https with mutual TLS, right after the plain ones (same machine
    // load): the ratio is the cost of TLS.
    eprintln!("evictions: A → B over mutual TLS, 100 keys per request, then one");
    let p = pair_tls().await?;
    let (_, del) = sustained(&p, 100, 8, budget.sustain, u64::MAX).await?;
    report.set("evictions_per_s_batched_tls", del);
    let (_, del) = sustained(&p, 1, 32, budget.sustain, u64::MAX).await?;
    report.set("evictions_per_s_single_tls", del);
    drop(p);

    eprintln!("evictions: plugin-like baseline (one peer request per message)");
    let p = pair("[http]\n  maxBatchMessages = 1\n", &[]).await?;
    // Fewer clients and a bounded count: one peer request per message drains a backlog slowly,
    // and the delivered rate (over the time until all of it arrived) is what is measured.
    let (_, del) = sustained(
        &p,
        1,
        8,
        budget.sustain.min(Duration::from_secs(3)),
        budget.baseline_requests,
    )
    .await?;
    report.set("plugin_baseline_evictions_per_s", del);
    drop(p);

    eprintln!(
        "evictions: RSS while the peer is down for {:?} under load",
        budget.outage
    );
    let mut p = pair("", &[]).await?;
    let (rss_start, rss_early, rss_end, backlog) = outage(&p, budget.outage).await?;
    report.set("rss_before_outage_mib", rss_start);
    report.set("rss_early_outage_mib", rss_early);
    report.set("rss_after_outage_mib", rss_end);
    report.set("outage_backlog_messages", backlog);
    eprintln!("evictions: restart of A with that backlog on disk (SIGKILL, start → /health 204)");
    p.a.kill9();
    p.b.thaw();
    let start = Instant::now();
    p.a.start();
    let ms = crate::startup::until_healthy(&p.a, start, Duration::from_secs(120)).await?;
    report.set("startup_ms_with_backlog", ms);
    drop(p);

    eprintln!("evictions: latency at 1,000/s");
    let p = pair(
        "",
        &[
            ("HA_LOG", "warn,ha_sidecar::receiver=debug"),
            ("HA_LOG_FORMAT", "json"),
        ],
    )
    .await?;
    let (p50, p99) = latency(&p, 1_000, budget.latency_samples).await?;
    report.set("eviction_p50_ms_at_1k", p50);
    report.set("eviction_p99_ms_at_1k", p99);
    drop(p);

    report.row(
        "evictions_per_s_batched",
        Some("raw_http_msgs_per_s_batched"),
        "keys delivered/s, master posts 100 keys per request (target ≥ 100,000)",
    );
    report.row(
        "evictions_accepted_per_s_batched",
        Some("raw_fsync_records_per_s_group100"),
        "keys accepted (202)/s, 100 per request",
    );
    report.row(
        "evictions_per_s_single",
        Some("raw_http_msgs_per_s_single_32conn"),
        "keys delivered/s, one key per request (target ≥ 10,000)",
    );
    report.row(
        "evictions_per_s_batched_tls",
        Some("evictions_per_s_batched"),
        "as batched, peers over https with mutual TLS; ratio = TLS / plain (target ≥ 0.8)",
    );
    report.row(
        "evictions_per_s_single_tls",
        Some("evictions_per_s_single"),
        "as single, peers over https with mutual TLS; ratio = TLS / plain",
    );
    report.row(
        "plugin_baseline_evictions_per_s",
        Some("evictions_per_s_single"),
        "plugin-like mode: one peer request per message; ratio = baseline / ours",
    );
    report.row(
        "eviction_p50_ms_at_1k",
        None,
        "202 on A → applied on B, p50, paced 1,000/s",
    );
    report.row("eviction_p99_ms_at_1k", None, "same, p99 (target < 10 ms)");
    report.row(
        "raw_http_msgs_per_s_batched",
        None,
        "limit: loopback HTTP, batches of 100, one connection",
    );
    report.row(
        "raw_http_msgs_per_s_single",
        None,
        "limit: loopback HTTP, one message per request, one connection",
    );
    report.row(
        "raw_fsync_records_per_s_single",
        None,
        "limit: fdatasync per 80-byte record",
    );
    report.row(
        "raw_fsync_records_per_s_group100",
        None,
        "limit: fdatasync per 100 records",
    );
    report.row(
        "moka_invalidations_per_s",
        None,
        "limit: moka invalidations in one thread",
    );
    report.row(
        "rss_idle_mib",
        None,
        "RSS of node A after start (target < 50)",
    );
    report.row(
        "rss_after_load_mib",
        None,
        "RSS of node A after the eviction runs",
    );
    report.row(
        "rss_after_outage_mib",
        Some("rss_before_outage_mib"),
        "RSS of A after its peer was down under load (the backlog is on disk: must stay flat)",
    );
    report.row(
        "startup_ms_with_backlog",
        Some("startup_ms"),
        "A restarted (after SIGKILL) with the outage's backlog on disk: spawn → /health 204",
    );
    report.row(
        "rss_under_load_mib",
        Some("rss_idle_mib"),
        "peak RSS of node A (sender) during the eviction runs",
    );
    report.row(
        "rss_under_load_mib_receiver",
        Some("rss_idle_mib_receiver"),
        "peak RSS of node B (receiver) during the eviction runs",
    );
    report.row(
        "rss_early_outage_mib",
        None,
        "RSS of A a tenth of the way into the outage (after vs this: growth with the backlog)",
    );
    report.row(
        "outage_backlog_messages",
        None,
        "messages queued on disk for the down peer at the end of the outage",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_parse() {
        assert_eq!(
            super::parse_ts_us("1970-01-01T00:00:01.5Z"),
            Some(1_500_000)
        );
        assert_eq!(
            super::parse_ts_us("2026-11-23T18:59:51.976802Z"),
            Some(1_795_460_391_976_802)
        );
    }
}
