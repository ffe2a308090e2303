//! Stream events through real processes: ~1 KB Gerrit events published on A and delivered to
//! a tailer on B (sustained), latency publish → tailer on B at 1,000/s, fan-out to 100
//! tailers, replay from `since=beginning`, and the plugin-like baseline (one event per batch).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration::events::{gerrit_event, n_of, stream_http, SseReader};
use integration::{mesh_specs, Proc};

use crate::report::Report;
use crate::Budget;

const EVENT_BYTES: usize = 1024;

struct Pair {
    a: Proc,
    b: Proc,
    _dir: tempfile::TempDir,
}

async fn pair(extra_a: &str) -> anyhow::Result<Pair> {
    let dir = tempfile::tempdir()?;
    let mut specs = mesh_specs(dir.path(), 2, "");
    specs[0].extra = extra_a.to_owned();
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let b = Proc::spawn(&specs[1], dir.path(), &[]);
    let h = integration::http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    Ok(Pair { a, b, _dir: dir })
}

/// A tailer task counting events (and noting when each `n` arrived) until told to stop.
fn tailer(
    mut r: SseReader,
    count: Arc<AtomicU64>,
    arrivals: Option<Arc<Mutex<HashMap<u64, Instant>>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(events) = r.next_events().await {
            if let Some(a) = &arrivals {
                let now = Instant::now();
                let mut a = a.lock().unwrap();
                for m in &events {
                    if let Some(n) = n_of(&m.data) {
                        a.insert(n, now);
                    }
                }
            }
            count.fetch_add(events.len() as u64, Ordering::Relaxed);
        }
    })
}

/// Publishes on `local` from `concurrency` clients for `dur`; returns how many were accepted.
async fn publish_for(local: &str, concurrency: usize, dur: Duration) -> anyhow::Result<u64> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let url = format!("{local}v1/events");
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            while start.elapsed() < dur {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(gerrit_event("patchset-created", n, EVENT_BYTES))
                    .send()
                    .await;
                if r.map(|r| r.status().as_u16() == 202).unwrap_or(false) {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    Ok(total)
}

async fn wait_count(count: &AtomicU64, want: u64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while count.load(Ordering::Relaxed) < want {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {want} events arrived",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Events/s published on A and delivered to one tailer on B.
async fn end_to_end(p: &Pair, dur: Duration) -> anyhow::Result<f64> {
    let sh = stream_http();
    let count = Arc::new(AtomicU64::new(0));
    let r = SseReader::open(&sh, &p.b.spec.peer_url(), "", None).await;
    let t = tailer(r, count.clone(), None);
    let start = Instant::now();
    let accepted = publish_for(&p.a.spec.local_url(), 32, dur).await?;
    wait_count(&count, accepted, Duration::from_secs(300)).await?;
    let secs = start.elapsed().as_secs_f64();
    t.abort();
    Ok(accepted as f64 / secs)
}

async fn latency(p: &Pair, rate: u64, samples: usize) -> anyhow::Result<(f64, f64)> {
    let sh = stream_http();
    let count = Arc::new(AtomicU64::new(0));
    let arrivals = Arc::new(Mutex::new(HashMap::new()));
    let r = SseReader::open(&sh, &p.b.spec.peer_url(), "", None).await;
    let t = tailer(r, count.clone(), Some(arrivals.clone()));
    let client = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("{}v1/events", p.a.spec.local_url());
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut tasks = Vec::new();
    for n in 0..samples as u64 {
        tick.tick().await;
        let (client, url, sent) = (client.clone(), url.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            sent.lock().unwrap().insert(n, Instant::now());
            let _ = client
                .post(&url)
                .header("content-type", "application/json")
                .body(gerrit_event("patchset-created", n, EVENT_BYTES))
                .send()
                .await;
        }));
    }
    for t in tasks {
        t.await?;
    }
    wait_count(&count, samples as u64, Duration::from_secs(60)).await?;
    t.abort();
    let (sent, arrivals) = (sent.lock().unwrap(), arrivals.lock().unwrap());
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(n, s)| arrivals.get(n).map(|a| (*a - *s).as_secs_f64() * 1000.0))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    Ok((pct(0.5), pct(0.99)))
}

/// Deliveries/s to 100 tailers on B of events published on A.
async fn fanout(p: &Pair, dur: Duration) -> anyhow::Result<f64> {
    let sh = stream_http();
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let r = SseReader::open(&sh, &p.b.spec.peer_url(), "", None).await;
        tasks.push(tailer(r, count.clone(), None));
    }
    let start = Instant::now();
    let accepted = publish_for(&p.a.spec.local_url(), 16, dur).await?;
    wait_count(&count, accepted * 100, Duration::from_secs(300)).await?;
    let secs = start.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    Ok((accepted * 100) as f64 / secs)
}

/// Fills a node's log directly (library, before the process starts), then times a client
/// reading it all from `since=beginning`.
async fn replay(events: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let specs = mesh_specs(dir.path(), 1, "");
    {
        let log = Arc::new(ha_sidecar::events::EventLog::open(
            specs[0].data_dir.join("events"),
            ha_sidecar::events::EventLogOptions::new(specs[0].id.clone()),
        )?);
        let mut n = 0;
        while n < events {
            let batch: Vec<_> = (n..(n + 512).min(events))
                .map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        log.append_local(&gerrit_event("patchset-created", i, EVENT_BYTES))
                            .await
                    })
                })
                .collect();
            for t in batch {
                t.await??;
            }
            n = (n + 512).min(events);
        }
        log.shutdown().await?;
    }
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    a.wait_ready(&integration::http()).await;
    let sh = stream_http();
    let start = Instant::now();
    let mut r = SseReader::open(&sh, &a.spec.peer_url(), "since=beginning", None).await;
    let mut got = 0u64;
    while got < events {
        match r.next_events().await {
            Some(ev) => got += ev.len() as u64,
            None => anyhow::bail!("replay stream ended after {got} events"),
        }
    }
    Ok(events as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(report: &mut Report, budget: Budget) -> anyhow::Result<()> {
    eprintln!("events: published on A, delivered to a tailer on B (~1 KB events)");
    let p = pair("").await?;
    report.set("events_per_s", end_to_end(&p, budget.sustain).await?);
    eprintln!("events: latency at 1,000/s");
    let (p50, p99) = latency(&p, 1_000, budget.latency_samples).await?;
    report.set("event_p50_ms_at_1k", p50);
    report.set("event_p99_ms_at_1k", p99);
    drop(p);

    eprintln!("events: fan-out to 100 tailers");
    let p = pair("").await?;
    report.set(
        "event_fanout_100_tailers_per_s",
        fanout(&p, budget.sustain / 2).await?,
    );
    drop(p);

    eprintln!("events: plugin-like baseline (one event per peer request)");
    let p = pair("[http]\n  maxBatchMessages = 1\n").await?;
    report.set(
        "plugin_baseline_events_per_s",
        end_to_end(&p, budget.baseline).await?,
    );
    drop(p);

    let n = if budget.sustain >= Duration::from_secs(10) {
        1_000_000
    } else {
        100_000
    };
    eprintln!("events: replay of {n} events from since=beginning");
    report.set("event_replay_per_s", replay(n).await?);
    report.set("event_replay_events", n as f64);

    report.row(
        "events_per_s",
        None,
        "~1 KB events published on A (32 clients) and delivered to a tailer on B (target ≥ 20,000)",
    );
    report.row(
        "plugin_baseline_events_per_s",
        Some("events_per_s"),
        "plugin-like mode: one peer request per event; ratio = baseline / ours",
    );
    report.row(
        "event_p50_ms_at_1k",
        None,
        "POST on A → delivered to a tailer on B, p50, paced 1,000/s",
    );
    report.row("event_p99_ms_at_1k", None, "same, p99 (target < 50 ms)");
    report.row(
        "event_fanout_100_tailers_per_s",
        None,
        "events delivered per second summed over 100 tailers on B",
    );
    report.row(
        "event_replay_per_s",
        None,
        "one client reading the log from since=beginning (target ≥ 200,000)",
    );
    Ok(())
}
