//! The Gerrit relay (SPEC §8) through real processes: plugin calls accepted by sidecar A (one
//! call per request, as the plugin sends them, from 32 concurrent senders) and delivered to a
//! fake master B that answers 204 at once; the latency from A's 204 to master B's receipt at
//! 100 calls/s; and, beside them, the plugin's own design (one direct request per message per
//! peer) against the same fake master.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::gerrit::{Call, FakeMaster, PluginSender};
use integration::{mesh_specs, Proc};

use crate::report::Report;
use crate::Budget;

const PLUGIN: &str = "high-availability";
const SENDERS: usize = 32;

pub async fn run(report: &mut Report, budget: Budget) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ma, mb) = (FakeMaster::start(PLUGIN), FakeMaster::start(PLUGIN));
    let mut specs = mesh_specs(dir.path(), 2, "");
    for (spec, m) in specs.iter_mut().zip([&ma, &mb]) {
        spec.extra = format!("[gerrit]\n  url = {}\n", m.url());
    }
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let b = Proc::spawn(&specs[1], dir.path(), &[]);
    let h = integration::http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let local = specs[0].local_url();

    let (accepted, secs) = relay(&local, &mb, budget.sustain).await?;
    report.set("gerrit_relay_msgs_per_s", accepted as f64 / secs);
    report.row(
        "gerrit_relay_msgs_per_s",
        None,
        "plugin calls accepted on A (32 senders, one call per request) and delivered to master B; target >= 5,000/s",
    );

    let (p50, p99) = latency(&local, &mb, budget.latency_samples.min(1_000)).await?;
    report.set("gerrit_relay_p50_ms_at_100", p50);
    report.set("gerrit_relay_p99_ms_at_100", p99);
    report.row(
        "gerrit_relay_p99_ms_at_100",
        None,
        "204 on A to received by master B, at 100 calls/s; target <= 20 ms",
    );
    report.row("gerrit_relay_p50_ms_at_100", None, "the same calls' median");

    let direct = direct(&mb.url(), budget.sustain).await?;
    report.set("gerrit_plugin_direct_msgs_per_s", direct);
    report.row(
        "gerrit_plugin_direct_msgs_per_s",
        None,
        "the plugin's own design: one direct request per message to the peer master (no durability, no order)",
    );
    report.peer("gerrit_relay_msgs_per_s", "gerrit_plugin_direct_msgs_per_s");
    drop((a, b));
    Ok(())
}

/// 32 senders post calls to A for `dur`; returns (calls accepted, seconds until master B had
/// them all).
async fn relay(local: &str, mb: &FakeMaster, dur: Duration) -> anyhow::Result<(u64, f64)> {
    let already = mb.accepted_count() as u64;
    let start = Instant::now();
    let accepted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..SENDERS {
        let sender = PluginSender::new(local, PLUGIN);
        let accepted = accepted.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while start.elapsed() < dur {
                let call = cache_call(&format!("s{t}-{i}"));
                i += 1;
                if sender.send(&call).await == 204 {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let n = accepted.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(300);
    while (mb.accepted_count() as u64) < already + n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "master B did not get every call in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

fn cache_call(key: &str) -> Call {
    Call {
        method: "POST".into(),
        path: "cache/projects".into(),
        content_type: Some("application/json; charset=utf-8".into()),
        created_on: None,
        body: Some(format!("\"{key}\"")),
    }
}

/// `n` calls at 100/s; the p50 and p99 of (master B received) − (A answered 204), in ms.
async fn latency(local: &str, mb: &FakeMaster, n: usize) -> anyhow::Result<(f64, f64)> {
    let sender = PluginSender::new(local, PLUGIN);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut answered = Vec::with_capacity(n);
    for i in 0..n {
        tick.tick().await;
        let call = cache_call(&format!("lat-{i}"));
        anyhow::ensure!(sender.send(&call).await == 204, "A refused a call");
        answered.push((call.body.unwrap_or_default(), Instant::now()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lat = Vec::with_capacity(n);
    for (body, at) in answered {
        let got = loop {
            if let Some(at) = mb.arrival_of(&body) {
                break at;
            }
            anyhow::ensure!(Instant::now() < deadline, "master B never got {body}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        lat.push(got.saturating_duration_since(at).as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let at = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
    Ok((at(50), at(99)))
}

/// The plugin's design: 32 senders post each call straight to the peer master.
async fn direct(master_url: &str, dur: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..SENDERS {
        let sender = PluginSender::new(master_url, PLUGIN);
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while start.elapsed() < dur {
                if sender.send(&cache_call(&format!("d{t}-{i}"))).await == 204 {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
