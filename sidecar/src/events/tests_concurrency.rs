//! Event log concurrency tests: tailer wake-ups, many readers against one appender, and the
//! (printed, not asserted) figures for group-commit appends and replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tests::{ev, open};
use super::*;

const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailer_is_woken_by_local_and_remote_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), "node-a"));
    let mut wake = log.subscribe();
    wake.borrow_and_update();
    let page = log.read(&StartPoint::Now, &TypeFilter::all(), 10).unwrap();
    assert!(page.events.is_empty() && page.caught_up);

    let tailer = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut cursor = page.next;
            let mut seen = Vec::new();
            while seen.len() < 2 {
                wake.changed().await.expect("log alive");
                wake.borrow_and_update();
                let from = StartPoint::Cursor(cursor.clone());
                let p = log.read(&from, &TypeFilter::all(), 10).unwrap();
                seen.extend(p.events.into_iter().map(|(id, _)| id.to_string()));
                cursor = p.next;
            }
            seen
        })
    };
    let now_s = Clock::system().now_ms() / 1000;
    // Local events go by seq: this one counts although its clock says 1970.
    log.append_local(&ev("ref-updated", 1, 1)).await.unwrap();
    // An origin unknown when the tail started counts from its first event created since then.
    log.append_remote("node-b", 7, &ev("ref-updated", now_s - 60, 7))
        .await
        .unwrap();
    log.append_remote("node-b", 8, &ev("ref-updated", now_s, 8))
        .await
        .unwrap();
    let seen = tokio::time::timeout(PATIENCE, tailer)
        .await
        .expect("tailer woken")
        .unwrap();
    assert_eq!(seen, ["node-a/1", "node-b/8"]);
}

/// Reads everything from the beginning as an SSE handler would: page, then wait for a wake-up.
async fn tail(log: Arc<EventLog>, total: u64, page: usize) -> Vec<u64> {
    let mut wake = log.subscribe();
    let mut from = StartPoint::Beginning;
    let mut seqs = Vec::with_capacity(total as usize);
    while (seqs.len() as u64) < total {
        wake.borrow_and_update();
        let (l, f) = (log.clone(), from.clone());
        let p = tokio::task::spawn_blocking(move || l.read(&f, &TypeFilter::all(), page))
            .await
            .unwrap()
            .unwrap();
        seqs.extend(p.events.iter().map(|(id, _)| id.seq));
        from = StartPoint::Cursor(p.next);
        if p.caught_up && (seqs.len() as u64) < total {
            wake.changed().await.expect("log alive");
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_readers_each_see_all_events_of_one_appender_in_order() {
    const TOTAL: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = EventLogOptions::new("node-a");
    opts.segment_bytes = 256 << 10; // several rolls while readers read
    let log = Arc::new(EventLog::open(dir.path(), opts).unwrap());
    let readers: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(tail(
                log.clone(),
                TOTAL,
                if i == 0 { 3 } else { 100 + i * 37 },
            ))
        })
        .collect();
    let appender = {
        let log = log.clone();
        tokio::spawn(async move {
            for chunk in 0..TOTAL / 100 {
                let bodies: Vec<Vec<u8>> = (0..100)
                    .map(|i| ev("patchset-created", 1, chunk * 100 + i))
                    .collect();
                let results =
                    futures_util::future::join_all(bodies.iter().map(|b| log.append_local(b)))
                        .await;
                assert!(results.iter().all(|r| r.is_ok()));
            }
        })
    };
    tokio::time::timeout(PATIENCE, appender)
        .await
        .expect("appends finish")
        .unwrap();
    for (i, r) in readers.into_iter().enumerate() {
        let seqs = tokio::time::timeout(PATIENCE, r)
            .await
            .expect("reader finishes")
            .unwrap();
        assert_eq!(seqs.len() as u64, TOTAL, "reader {i}");
        assert!(
            seqs.iter().copied().eq(1..=TOTAL),
            "reader {i} saw events out of order or twice"
        );
    }
    assert!(log.stats().segments > 3);
}

/// Figures for the report: 100k ~1 KB appends from 256 concurrent callers, then full replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_100k_appends_and_replay() {
    const TOTAL: usize = 100_000;
    const CALLERS: usize = 256;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), "node-a"));
    let pad = "x".repeat(900);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (log, pad) = (log.clone(), pad.clone());
            tokio::spawn(async move {
                for i in (c..TOTAL).step_by(CALLERS) {
                    let body = format!(r#"{{"type":"patchset-created","eventCreatedOn":1686214672,"n":{i},"pad":"{pad}"}}"#);
                    log.append_local(body.as_bytes()).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let append_s = started.elapsed().as_secs_f64();

    let sequential = Instant::now();
    for i in 0..200 {
        log.append_local(&ev("ref-updated", 1, i)).await.unwrap();
    }
    let per_fsync = sequential.elapsed().as_secs_f64() / 200.0;

    let started = Instant::now();
    let mut from = StartPoint::Beginning;
    let mut replayed = 0;
    loop {
        let p = log.read(&from, &TypeFilter::all(), 1000).unwrap();
        replayed += p.events.len();
        from = StartPoint::Cursor(p.next);
        if p.caught_up {
            break;
        }
    }
    let replay_s = started.elapsed().as_secs_f64();
    assert_eq!(replayed, TOTAL + 200);
    let stats = log.stats();
    log.shutdown().await.unwrap();
    drop(log);
    let started = Instant::now();
    let reopened = open(dir.path(), "node-a");
    let open_s = started.elapsed().as_secs_f64();
    assert_eq!(reopened.stats().events, stats.events);
    println!(
        "event log timing: {TOTAL} appends x ~1 KB from {CALLERS} callers in {append_s:.2}s = {:.0}/s; \
         sequential append (one fsync each) {:.2} ms; replay {replayed} in {replay_s:.2}s = {:.0}/s; \
         reopen {:.0} ms over {} MB; index {} bytes = {:.3} B/event",
        TOTAL as f64 / append_s,
        per_fsync * 1e3,
        replayed as f64 / replay_s,
        open_s * 1e3,
        stats.bytes >> 20,
        stats.index_bytes,
        stats.index_bytes as f64 / stats.events as f64,
    );
}
