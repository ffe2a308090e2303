//! The machine's limits, measured in the same run: loopback HTTP between two processes with the
//! crates ha-sidecar uses (actix-web server, reqwest client), fsync rates of the data directory,
//! and moka's invalidation rate.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::Report;
use crate::Budget;

/// `ha-bench raw-server ADDR`: an actix-web server that accepts a JSON body and answers `{}`;
/// prints its port on stdout.
pub fn raw_server(addr: &str) -> anyhow::Result<()> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let listener = std::net::TcpListener::bind(addr)?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| {
            App::new()
                .app_data(web::PayloadConfig::new(64 << 20))
                .route(
                    "/batch",
                    web::post().to(|body: web::Bytes| async move {
                        // Parse like a receiver would, so the limit includes JSON decoding.
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let n = v["messages"].as_array().map(|a| a.len()).unwrap_or(0);
                        HttpResponse::Ok().json(serde_json::json!({ "applied": n }))
                    }),
                )
        })
        .workers(2)
        .listen(listener)?
        .run()
        .await
    })?;
    Ok(())
}

fn batch(n: usize) -> Vec<u8> {
    let msgs: Vec<_> = (0..n)
        .map(|i| serde_json::json!({"seq": i, "kind": "eviction", "cache": "projects", "keys": [format!("key-{i:06}")]}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"origin": "bench", "messages": msgs})).expect("json")
}

async fn http_rate(url: &str, per_request: usize, concurrency: usize, dur: Duration) -> f64 {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let body = batch(per_request);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, body, url) = (client.clone(), body.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < dur {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status().is_success() && r.bytes().await.is_ok() {
                        n += 1;
                    }
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    (total * per_request as u64) as f64 / start.elapsed().as_secs_f64()
}

fn fsync_rate(dir: &std::path::Path, group: usize, dur: Duration) -> anyhow::Result<f64> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync.bench"))?;
    let record = [7u8; 80];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for _ in 0..group {
            f.write_all(&record)?;
        }
        f.sync_data()?;
        n += group as u64;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(report: &mut Report, budget: Budget) -> anyhow::Result<()> {
    eprintln!("limits: loopback HTTP (actix-web ⇄ reqwest, two processes)");
    let mut child = Command::new(std::env::current_exe()?)
        .args(["raw-server", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let port: u16 = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
        line.trim().parse()?
    };
    let url = format!("http://127.0.0.1:{port}/batch");
    let d = budget.limit_phase;
    report.set(
        "raw_http_msgs_per_s_batched",
        http_rate(&url, 100, 1, d).await,
    );
    report.set(
        "raw_http_msgs_per_s_batched_4conn",
        http_rate(&url, 100, 4, d).await,
    );
    report.set("raw_http_msgs_per_s_single", http_rate(&url, 1, 1, d).await);
    report.set(
        "raw_http_msgs_per_s_single_32conn",
        http_rate(&url, 1, 32, d).await,
    );
    let _ = child.kill();
    let _ = child.wait();

    eprintln!("limits: fsync of the data directory's file system");
    let dir = tempfile::tempdir()?;
    let d = budget.limit_phase.min(Duration::from_secs(3));
    report.set(
        "raw_fsync_records_per_s_single",
        fsync_rate(dir.path(), 1, d)?,
    );
    report.set(
        "raw_fsync_records_per_s_group100",
        fsync_rate(dir.path(), 100, d)?,
    );

    eprintln!("limits: moka invalidation");
    let cache: moka::sync::Cache<String, u64> =
        moka::sync::Cache::builder().max_capacity(2_000_000).build();
    let n = if budget.limit_phase >= Duration::from_secs(3) {
        500_000
    } else {
        200_000
    };
    let keys: Vec<String> = (0..n).map(|i| format!("key-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        cache.insert(k.clone(), i as u64);
    }
    let start = Instant::now();
    for k in &keys {
        cache.invalidate(k);
    }
    report.set(
        "moka_invalidations_per_s",
        keys.len() as f64 / start.elapsed().as_secs_f64(),
    );
    Ok(())
}
