//! `ha-bench`: the measurements of `make bench`, each against real `ha-sidecar` processes on
//! loopback, next to the limits of the same machine measured in the same run. Writes
//! `bench/results/latest.json` (figure name → number) and `latest.md` (figure, ours, limit, ratio).
//! `--only PART --merge` adds one part's figures to the committed ones (a section of its own in
//! `latest.md`). Not a test: nothing here asserts.

mod events;
mod evictions;
mod gerrit;
mod index;
mod limits;
mod redis;
mod report;
mod sessions;
mod startup;

use std::time::Duration;

/// Bounded durations: `--quick` shortens every phase.
#[derive(Clone, Copy)]
pub struct Budget {
    pub sustain: Duration,
    pub latency_samples: usize,
    /// How long a peer stays down under load for the RSS-after-outage figure.
    pub outage: Duration,
    /// Each phase of the machine's limits (loopback HTTP, fsync).
    pub limit_phase: Duration,
    /// How long clients post in the plugin-like event baseline (its backlog then drains one
    /// event per peer request, slowly), and how many requests the eviction baseline posts.
    pub baseline: Duration,
    pub baseline_requests: u64,
    /// Sessions written straight to the shared directory for the uncached-read phase.
    pub uncached_sessions: usize,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("raw-server") {
        return limits::raw_server(args.get(1).map(String::as_str).unwrap_or("127.0.0.1:0"));
    }
    let quick = args.iter().any(|a| a == "--quick");
    let out_dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "bench/results".into());
    // `--only events` (repeatable) runs just those parts.
    let only: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--only")
        .filter_map(|(i, _)| args.get(i + 1).cloned())
        .collect();
    // `--merge` (with `--only`): keep the other parts' figures of the committed run.
    let merge = args.iter().any(|a| a == "--merge") && !only.is_empty();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    let budget = if quick {
        // `make bench-quick`: under 2 minutes in all, every figure still measured.
        Budget {
            sustain: Duration::from_secs(2),
            latency_samples: 1_000,
            outage: Duration::from_secs(5),
            limit_phase: Duration::from_secs(1),
            baseline: Duration::from_millis(250),
            baseline_requests: 1_000,
            uncached_sessions: 10_000,
        }
    } else {
        // The figures: a peer down for 10 minutes under load.
        Budget {
            sustain: Duration::from_secs(10),
            latency_samples: 5_000,
            outage: Duration::from_secs(600),
            limit_phase: Duration::from_secs(5),
            baseline: Duration::from_secs(2),
            baseline_requests: 5_000,
            uncached_sessions: 50_000,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = report::Report {
        load_at_start: report::load_average(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    rt.block_on(async {
        let timed = |part: &str, t: std::time::Instant| {
            eprintln!("[{part}: {:.1} s]", t.elapsed().as_secs_f64());
        };
        if wanted("limits") {
            let t = std::time::Instant::now();
            limits::run(&mut report, budget).await?;
            timed("limits", t);
        }
        if wanted("evictions") {
            let t = std::time::Instant::now();
            evictions::run(&mut report, budget).await?;
            timed("evictions", t);
        }
        if wanted("sessions") {
            let t = std::time::Instant::now();
            sessions::run(&mut report, budget).await?;
            timed("sessions", t);
        }
        if wanted("events") {
            let t = std::time::Instant::now();
            events::run(&mut report, budget).await?;
            timed("events", t);
        }
        if wanted("index") {
            let t = std::time::Instant::now();
            index::run(&mut report, budget, quick).await?;
            timed("index", t);
        }
        if wanted("gerrit") {
            let t = std::time::Instant::now();
            gerrit::run(&mut report, budget).await?;
            timed("gerrit", t);
        }
        if wanted("redis") {
            let t = std::time::Instant::now();
            redis::run(&mut report, budget).await?;
            timed("redis", t);
        }
        if wanted("startup") {
            let t = std::time::Instant::now();
            startup::run(&mut report).await?;
            timed("startup", t);
        }
        anyhow::Ok(())
    })?;
    // Ours beside Redis doing the same job (the sessions rows name Redis as their limit).
    report.peer("evictions_per_s_batched", "redis_pubsub_msgs_per_s");
    report.peer("evictions_per_s_single", "redis_pubsub_msgs_per_s_single");
    report.peer("events_per_s", "redis_xadd_per_s");
    report.peer("event_replay_per_s", "redis_xread_per_s");
    report.set("bench_wall_s", started.elapsed().as_secs_f64());
    report.row(
        "bench_wall_s",
        None,
        "wall time of this run of ha-bench (quick target < 120 s)",
    );
    let missing = report.missing();
    if !missing.is_empty() {
        eprintln!("figures required by the issue that this run did not write: {missing:?}");
    }
    report.write(
        std::path::Path::new(&out_dir),
        quick,
        merge.then_some(only.as_slice()),
    )?;
    Ok(())
}
