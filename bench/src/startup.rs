//! Start-up time of a real `ha-sidecar` process: spawn → `/health` 204 (listening, every
//! catch-up done), for an empty node. (With a backlog on disk: `startup_ms_with_backlog`, measured
//! by the eviction part after its outage; with an index to catch up: `index_catchup_s_100k`.)

use std::time::{Duration, Instant};

use integration::{mesh_specs, Proc};

use crate::report::Report;

/// Polls `p`'s `/health` every 2 ms until 204; returns the milliseconds since `start`.
pub async fn until_healthy(p: &Proc, start: Instant, limit: Duration) -> anyhow::Result<f64> {
    let h = integration::http();
    let url = format!("{}health", p.spec.peer_url());
    let deadline = start + limit;
    loop {
        if let Ok(r) = h.get(&url).send().await {
            if r.status() == 204 {
                return Ok(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} not healthy after {limit:?}",
            p.spec.id
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn run(report: &mut Report) -> anyhow::Result<()> {
    eprintln!("startup: empty node, spawn → /health 204 (median of 5)");
    let mut ms = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir()?;
        let specs = mesh_specs(dir.path(), 1, "");
        let start = Instant::now();
        let p = Proc::spawn(&specs[0], dir.path(), &[]);
        ms.push(until_healthy(&p, start, Duration::from_secs(30)).await?);
        drop(p);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    report.set("startup_ms", ms[ms.len() / 2]);
    report.row(
        "startup_ms",
        None,
        "empty node: spawn → /health 204, median of 5",
    );
    Ok(())
}
