//! `ha-bench`: the measurements of `make bench`, each against real `ha-sidecar` processes on
//! loopback, next to the limits of the same machine measured in the same run. Writes
//! `bench/results/latest.json` (figure name → number) and `latest.md` (figure, ours, limit, ratio).
//! Not a test: nothing here asserts.

mod events;
mod evictions;
mod index;
mod limits;
mod report;
mod sessions;

use std::time::Duration;

/// Bounded durations: `--quick` shortens every phase.
#[derive(Clone, Copy)]
pub struct Budget {
    pub sustain: Duration,
    pub latency_samples: usize,
    /// How long a peer stays down under load for the RSS-after-outage figure.
    pub outage: Duration,
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
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    let budget = if quick {
        Budget {
            sustain: Duration::from_secs(3),
            latency_samples: 1_000,
            outage: Duration::from_secs(15),
        }
    } else {
        Budget {
            sustain: Duration::from_secs(10),
            latency_samples: 5_000,
            outage: Duration::from_secs(600),
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = report::Report::default();
    rt.block_on(async {
        if wanted("limits") {
            limits::run(&mut report, budget).await?;
        }
        if wanted("evictions") {
            evictions::run(&mut report, budget).await?;
        }
        if wanted("sessions") {
            sessions::run(&mut report, budget).await?;
        }
        if wanted("events") {
            events::run(&mut report, budget).await?;
        }
        if wanted("index") {
            index::run(&mut report, budget, quick).await?;
        }
        anyhow::Ok(())
    })?;
    report.write(std::path::Path::new(&out_dir), quick)?;
    Ok(())
}
