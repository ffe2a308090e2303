//! Index sync through real processes: forwarded updates applied on the peer per second
//! (sustained, 1–2 KB change documents), latency from A's 202 to visible in a query on B at
//! 1,000/s, two-term query latency through the HTTP API on the loaded corpus, and catch-up of an
//! empty node. The limit: the store's tantivy bulk indexing of the same documents, one commit
//! at the end (`IndexStore::bulk_upsert`, the same schema).

use std::time::{Duration, Instant};

use ha_sidecar::index::{IndexOptions, IndexStore, Kind};
use integration::{api, mesh_specs, Proc};
use serde_json::{json, Value};

use crate::report::Report;
use crate::Budget;

const WORDS: &[&str] = &[
    "fix", "crash", "cache", "index", "writer", "login", "page", "button", "query", "review",
    "screen", "event", "stream", "build", "leak", "test", "refactor", "document", "remove", "add",
];
const PROJECTS: &[&str] = &[
    "tools/gerrit",
    "plugins/replication",
    "platform/build",
    "apps/review",
];
const STATUSES: &[&str] = &["NEW", "MERGED", "ABANDONED"];
const OWNERS: &[&str] = &["alice", "bob", "carol", "dave", "erin"];
/// Documents per bulk request while loading.
const BULK: usize = 500;
/// Fewest documents the query latency is measured on (quick and full runs alike).
const QUERY_CORPUS: usize = 100_000;

/// A change document of about 1.5 KB (deterministic in `i` and `version`).
fn change(i: usize, version: u64) -> Value {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut words = |n: usize| -> String {
        (0..n)
            .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let subject = words(6);
    let message = words(180);
    json!({
        "id": format!("c{i}"), "_number": i,
        "project": PROJECTS[i % PROJECTS.len()], "branch": "master",
        "status": STATUSES[i % STATUSES.len()],
        "owner": {"_account_id": 1000 + i % 5, "username": OWNERS[i % OWNERS.len()],
                  "email": format!("{}@example.com", OWNERS[i % OWNERS.len()])},
        "topic": format!("t{}", i % 50), "hashtags": ["bench"],
        "subject": subject, "message": message,
        "updated": 1_704_067_200 + i as i64, "version_note": version,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Posts `ids` at `version` to `base` in bulk requests, `concurrency` in flight.
async fn load(
    client: &reqwest::Client,
    base: &str,
    ids: std::ops::Range<usize>,
    version: u64,
    concurrency: usize,
) -> anyhow::Result<u64> {
    use futures_util::StreamExt;
    let url = format!("{base}v1/index/changes");
    let chunks: Vec<std::ops::Range<usize>> = ids
        .clone()
        .step_by(BULK)
        .map(|s| s..(s + BULK).min(ids.end))
        .collect();
    let results: Vec<anyhow::Result<u64>> = futures_util::stream::iter(chunks)
        .map(|r| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let docs: Vec<Value> = r
                    .map(|i| json!({"id": format!("c{i}"), "version": version, "doc": change(i, version)}))
                    .collect();
                let resp = client.post(&url).json(&json!({ "docs": docs })).send().await?;
                anyhow::ensure!(resp.status() == 202, "bulk load: {}", resp.status());
                Ok(docs.len() as u64)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().sum()
}

/// The body of one bulk request: documents `r` at `version`.
fn bulk_body(r: std::ops::Range<usize>, version: u64) -> (u64, Vec<u8>) {
    let docs: Vec<Value> = r
        .map(|i| json!({"id": format!("c{i}"), "version": version, "doc": change(i, version)}))
        .collect();
    let body = serde_json::to_vec(&json!({ "docs": docs })).expect("json");
    (docs.len() as u64, body)
}

/// Posts prepared bulk bodies, `concurrency` in flight; returns the documents accepted.
async fn post_bodies(
    client: &reqwest::Client,
    base: &str,
    bodies: Vec<(u64, Vec<u8>)>,
    concurrency: usize,
) -> anyhow::Result<u64> {
    use futures_util::StreamExt;
    let url = format!("{base}v1/index/changes");
    let results: Vec<anyhow::Result<u64>> = futures_util::stream::iter(bodies)
        .map(|(n, body)| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 202, "bulk load: {}", resp.status());
                Ok(n)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().sum()
}

async fn applied_on(h: &reqwest::Client, peer: &str, source: &str) -> f64 {
    api::metric(
        h,
        peer,
        "ha_index_writes_total",
        &[&format!("source=\"{source}\""), "outcome=\"applied\""],
    )
    .await
}

async fn total(h: &reqwest::Client, base: &str, q: &str) -> anyhow::Result<u64> {
    let url = reqwest::Url::parse_with_params(
        &format!("{base}v1/index/changes"),
        &[("q", q), ("limit", "0")],
    )?;
    let v: Value = h.get(url).send().await?.json().await?;
    v["total"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no total in {v}"))
}

/// The limit: bulk indexing through the store (tantivy, one commit at the end).
async fn tantivy_bulk(n: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = IndexStore::open(dir.path(), IndexOptions::default())?;
    let docs: Vec<(String, u64, Value)> =
        (0..n).map(|i| (format!("c{i}"), 1, change(i, 1))).collect();
    let start = Instant::now();
    let out = store.bulk_upsert(Kind::Changes, docs).await?;
    let rate = out.applied as f64 / start.elapsed().as_secs_f64();
    store.shutdown().await?;
    Ok(rate)
}

/// The receiving peer's apply path without HTTP and without the sender: index messages as a
/// batch carries them (wire JSON, ~600 per 1 MiB batch), decoded as the receiver does and applied
/// with `apply_each_raw` (journal fsync per batch, near-real-time commits every `refresh_interval`),
/// for `dur` or `n` documents. Ends with a commit, so every document counted is searchable.
async fn store_apply(n: usize, dur: Duration) -> anyhow::Result<f64> {
    use ha_sidecar::wire::{decode_message, encode_batch, Batch, Doc, PeerMessage};
    const BATCH: usize = 600;
    let dir = tempfile::tempdir()?;
    let store = IndexStore::open(dir.path(), IndexOptions::default())?;
    // Each message as it arrives in a batch body (with its seq), encoded as the sender does.
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let doc = change(i, 1);
            PeerMessage::Index {
                index: Kind::Changes,
                id: format!("c{i}").into(),
                version: 1,
                deleted: false,
                doc: Some(Doc::Value(&doc)),
            }
            .encode()
        })
        .collect();
    let body = encode_batch(
        "bench",
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, p.as_slice())),
    );
    drop(payloads);
    let batch: Batch = serde_json::from_slice(&body)?;
    let wire: Vec<String> = batch.messages.iter().map(|m| m.get().to_owned()).collect();
    drop(batch);
    drop(body);
    let start = Instant::now();
    let mut applied = 0usize;
    for chunk in wire.chunks(BATCH) {
        if start.elapsed() >= dur {
            break;
        }
        let docs: Vec<_> = chunk
            .iter()
            .filter_map(|raw| decode_message(raw).ok()?.body.ok()?.into_raw_doc())
            .map(|(_, doc)| doc)
            .collect();
        let out = store.apply_each_raw(Kind::Changes, docs).await?;
        applied += out.iter().filter(|r| r.is_ok()).count();
    }
    store.commit().await?;
    let rate = applied as f64 / start.elapsed().as_secs_f64();
    let st = store.stats();
    eprintln!(
        "  store apply: {applied} documents, {} commits, last one {} ms",
        st.commits,
        st.last_commit_micros / 1000
    );
    store.shutdown().await?;
    Ok(rate)
}

pub async fn run(report: &mut Report, budget: Budget, quick: bool) -> anyhow::Result<()> {
    let corpus: usize = if quick { 20_000 } else { 100_000 };
    eprintln!("index: tantivy bulk limit on {corpus} documents");
    report.set("tantivy_bulk_docs_per_s", tantivy_bulk(corpus).await?);
    eprintln!("index: the receiver's apply path alone (decode + apply_each, NRT commits)");
    report.set(
        "index_store_apply_per_s",
        store_apply(if quick { 60_000 } else { 200_000 }, budget.sustain).await?,
    );

    let dir = tempfile::tempdir()?;
    let mut specs = mesh_specs(dir.path(), 3, "[index]\n  antiEntropyInterval = 10 min\n");
    let c_url = specs[2].peer_url();
    for s in &mut specs[..2] {
        s.peers.retain(|p| *p != c_url);
    }
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let b = Proc::spawn(&specs[1], dir.path(), &[]);
    let h = integration::http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let (al, bl, bp) = (
        specs[0].local_url(),
        specs[1].local_url(),
        specs[1].peer_url(),
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(8)
        .build()?;

    eprintln!(
        "index: forwarded updates applied on B, sustained {:?}",
        budget.sustain
    );
    // The master's request bodies for the corpus are made before the clock starts, so that the
    // bench client does not take CPU from the nodes (beyond the corpus, they are made on the fly).
    let mut bodies: std::collections::VecDeque<(u64, Vec<u8>)> =
        tokio::task::spawn_blocking(move || {
            (0..corpus)
                .step_by(BULK)
                .map(|s| bulk_body(s..(s + BULK).min(corpus), 1))
                .collect()
        })
        .await?;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next = 0usize;
    while start.elapsed() < budget.sustain {
        let n = 4 * BULK;
        if bodies.len() >= 4 {
            sent += post_bodies(&client, &al, bodies.drain(..4).collect(), 4).await?;
        } else {
            bodies.clear();
            sent += load(&client, &al, next..next + n, 1, 4).await?;
        }
        next += n;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while (applied_on(&h, &bp, "peer").await as u64) < sent {
        anyhow::ensure!(
            Instant::now() < deadline,
            "B did not apply {sent} updates in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.set(
        "index_updates_per_s",
        sent as f64 / start.elapsed().as_secs_f64(),
    );
    if next < corpus {
        eprintln!("index: loading the rest of the {corpus}-document corpus");
        sent += post_bodies(&client, &al, bodies.drain(..).collect(), 4).await?;
        next = corpus;
    }
    drop(bodies);
    while (applied_on(&h, &bp, "peer").await as u64) < sent {
        anyhow::ensure!(Instant::now() < deadline, "B did not apply the corpus");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Measured before the quick run's extra load (a full run holds ≥ 100k documents here
    // already), so `--quick` stays within its budget.
    let docs = next;
    eprintln!("index: catch-up of an empty node from A ({docs} documents)");
    let start = Instant::now();
    let c = Proc::spawn(&specs[2], dir.path(), &[]);
    let catchup_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = h.get(format!("{}health", specs[2].peer_url())).send().await {
            if r.status() == 204 {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < catchup_deadline,
            "C did not catch up in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report.set("index_catchup_s_100k", start.elapsed().as_secs_f64());
    let c_total = total(&h, &specs[2].local_url(), "").await?;
    anyhow::ensure!(c_total >= docs as u64, "C holds {c_total} of {docs}");
    drop(c);

    if next < QUERY_CORPUS {
        // The query figure is on ≥ 100,000 documents in both modes; the rest of them go the
        // same way (A, forwarded to B), outside any timed phase.
        eprintln!("index: loading the query corpus up to {QUERY_CORPUS} documents");
        sent += load(&client, &al, next..QUERY_CORPUS, 1, 4).await?;
        next = QUERY_CORPUS;
    }
    while (applied_on(&h, &bp, "peer").await as u64) < sent {
        anyhow::ensure!(Instant::now() < deadline, "B did not apply the corpus");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let docs = next;
    while total(&h, &bl, "").await? < docs as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    eprintln!("index: two-term query latency on {docs} documents through HTTP");
    let mut lat = Vec::with_capacity(budget.latency_samples);
    let queries = [
        "status:open project:tools/gerrit",
        "owner:alice crash",
        "topic:t7 status:merged",
    ];
    let mut by_shape: Vec<Vec<f64>> = vec![Vec::new(); queries.len()];
    for i in 0..budget.latency_samples {
        let url = reqwest::Url::parse_with_params(
            &format!("{bl}v1/index/changes"),
            &[("q", queries[i % queries.len()]), ("limit", "10")],
        )?;
        let t = Instant::now();
        let r = client.get(url).send().await?;
        anyhow::ensure!(r.status() == 200, "query: {}", r.status());
        let _ = r.bytes().await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        lat.push(ms);
        by_shape[i % queries.len()].push(ms);
    }
    for (q, l) in queries.iter().zip(&mut by_shape) {
        l.sort_by(|a, b| a.total_cmp(b));
        let matches = total(&h, &bl, q).await?;
        eprintln!(
            "  {q:?}: {matches} matches, p50 {:.2} ms, p99 {:.2} ms",
            percentile(l, 0.5),
            percentile(l, 0.99)
        );
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    report.set("query_p50_ms_100k", percentile(&lat, 0.5));
    report.set("query_p99_ms_100k", percentile(&lat, 0.99));
    report.set("query_corpus_docs", docs as f64);

    eprintln!("index: 202 on A → visible in a query on B, paced 1,000/s");
    let (p50, p99) = visible_latency(&client, &al, &bl, budget.latency_samples).await?;
    report.set("index_visible_p50_ms_at_1k", p50);
    report.set("index_visible_p99_ms_at_1k", p99);

    drop((a, b));

    report.row(
        "index_updates_per_s",
        Some("tantivy_bulk_docs_per_s"),
        "forwarded index updates applied on the peer/s, 1.5 KB changes (target ≥ 50,000)",
    );
    report.row(
        "index_store_apply_per_s",
        Some("tantivy_bulk_docs_per_s"),
        "the receiver's apply path alone: wire decode + apply_each in 600-document batches, NRT commits",
    );
    report.row(
        "index_visible_p50_ms_at_1k",
        None,
        "202 on A → visible in a query on B, p50, paced 1,000/s",
    );
    report.row(
        "index_visible_p99_ms_at_1k",
        None,
        "same, p99 (target < 1,000 ms)",
    );
    report.row(
        "query_p50_ms_100k",
        None,
        "two-term query through HTTP, p50 (corpus: query_corpus_docs, ≥ 100,000 in both modes)",
    );
    report.row("query_p99_ms_100k", None, "same, p99 (target < 2 ms)");
    report.row(
        "index_catchup_s_100k",
        None,
        "empty node: start → /health 204 with every document (target < 10 s; --quick: the documents of its sustained phase)",
    );
    report.row(
        "tantivy_bulk_docs_per_s",
        None,
        "limit: the store's tantivy bulk indexing of the same documents, one commit at the end",
    );
    Ok(())
}

/// Single PUTs on A at 1,000/s, each with a topic only this run uses; B is polled for the
/// number of visible ones. The k-th document to become visible is matched with the k-th 202
/// (an approximation when two complete out of order, at most a few ms apart at this rate).
async fn visible_latency(
    client: &reqwest::Client,
    al: &str,
    bl: &str,
    samples: usize,
) -> anyhow::Result<(f64, f64)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let poll_client = client.clone();
    let bl_owned = bl.to_owned();
    let poller = tokio::spawn(async move {
        let mut seen: Vec<Instant> = Vec::with_capacity(samples);
        let deadline = Instant::now() + Duration::from_secs(120);
        while seen.len() < samples && Instant::now() < deadline {
            if let Ok(n) = total(&poll_client, &bl_owned, "topic:visible").await {
                let now = Instant::now();
                while seen.len() < (n as usize).min(samples) {
                    seen.push(now);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen
    });
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..samples {
        tick.tick().await;
        let (client, tx) = (client.clone(), tx.clone());
        let url = format!("{al}v1/index/changes/v{i}");
        tokio::spawn(async move {
            let mut doc = change(i, 1);
            doc["topic"] = json!("visible");
            if let Ok(r) = client
                .put(&url)
                .json(&json!({"version": 1, "doc": doc}))
                .send()
                .await
            {
                if r.status() == 202 {
                    let _ = tx.send(Instant::now());
                }
            }
        });
    }
    drop(tx);
    let mut accepted = Vec::with_capacity(samples);
    while let Some(t) = rx.recv().await {
        accepted.push(t);
    }
    accepted.sort();
    let seen = poller.await?;
    anyhow::ensure!(
        seen.len() == accepted.len(),
        "{} of {} documents became visible on B",
        seen.len(),
        accepted.len()
    );
    let mut lat: Vec<f64> = seen
        .iter()
        .zip(&accepted)
        .map(|(v, a)| v.saturating_duration_since(*a).as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}
