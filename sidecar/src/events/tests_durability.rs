//! Event log durability tests: torn tails, seq recovery across reopen, retention and expired cursors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::tests::{ev, ids, manual_clock, open, read_all};
use super::*;

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn torn_tail_is_truncated_at_open_and_nothing_committed_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), "node-a");
    for i in 1..=10 {
        log.append_local(&ev("ref-updated", 100, i)).await.unwrap();
    }
    log.shutdown().await.unwrap();
    drop(log);
    let last = segment_files(dir.path()).pop().unwrap();
    let good_len = std::fs::metadata(&last).unwrap().len();
    // A crash mid-write: a plausible length, then garbage.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'g', b'a', b'r', b'b'])
        .unwrap();
    drop(f);

    let log = open(dir.path(), "node-a");
    assert_eq!(
        std::fs::metadata(&last).unwrap().len(),
        good_len,
        "the torn tail is cut off"
    );
    assert_eq!(log.stats().events, 10);
    assert_eq!(
        log.append_local(&ev("ref-updated", 100, 11))
            .await
            .unwrap()
            .seq,
        11
    );
    let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 4);
    assert_eq!(events.len(), 11);
    for (i, (id, body)) in events.iter().enumerate() {
        assert_eq!(id.seq, i as u64 + 1);
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["n"], i as u64 + 1);
    }
    log.shutdown().await.unwrap();

    // A record cut in half (the write never completed): it is dropped, the rest survives.
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let log = open(dir.path(), "node-a");
    assert_eq!(log.stats().events, 10);
    let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 100);
    assert_eq!(events.last().unwrap().0.seq, 10);
}

#[tokio::test]
async fn local_seq_never_repeats_across_reopens_and_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = 0;
    for round in 0..4 {
        let mut opts = EventLogOptions::new("node-a");
        opts.segment_bytes = 1024;
        let log = EventLog::open(dir.path(), opts).unwrap();
        for _ in 0..25 {
            expected += 1;
            let id = log
                .append_local(&ev("ref-updated", 100, expected))
                .await
                .unwrap();
            assert_eq!(id.seq, expected, "round {round}");
        }
        if round % 2 == 0 {
            log.shutdown().await.unwrap();
        } // else: dropped without shutdown, like a crash after the last fsync
    }
    assert!(
        segment_files(dir.path()).len() > 4,
        "small segments were rolled"
    );
    let log = open(dir.path(), "node-a");
    let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 7);
    assert_eq!(
        events.iter().map(|(id, _)| id.seq).collect::<Vec<_>>(),
        (1..=expected).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn retention_drops_old_segments_and_old_cursors_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, now) = manual_clock(1_000_000);
    let mk = || {
        let mut o = EventLogOptions::new("node-a");
        o.segment_bytes = 2048;
        o.retention = Duration::from_secs(3600);
        o.clock = clock.clone();
        EventLog::open(dir.path(), o).unwrap()
    };
    let log = mk();
    for i in 1..=60 {
        log.append_local(&ev("ref-updated", 1000, i)).await.unwrap();
        log.append_remote("node-b", i, &ev("comment-added", 1000, i))
            .await
            .unwrap();
    }
    let old = log
        .read(&StartPoint::Beginning, &TypeFilter::all(), 10)
        .unwrap()
        .next;
    let before = log.stats();
    assert!(before.segments > 5, "{before:?}");

    // Two hours later, new events arrive; retention drops every segment of the old ones.
    now.store(1_000_000 + 7_200_000, Ordering::SeqCst);
    for i in 61..=70 {
        log.append_local(&ev("ref-updated", 8200, i)).await.unwrap();
    }
    log.enforce_retention().await.unwrap();
    let after = log.stats();
    assert!(
        after.segments < before.segments && after.events < 140,
        "{after:?}"
    );
    assert_eq!(
        segment_files(dir.path()).len(),
        after.segments,
        "files are deleted"
    );

    let expired = |log: &EventLog, from: &StartPoint| match log.read(from, &TypeFilter::all(), 10) {
        Err(EventError::CursorExpired(m)) => m,
        other => panic!("expected CursorExpired, got {other:?}"),
    };
    let msg = expired(&log, &StartPoint::Cursor(old.clone()));
    assert!(msg.contains("since=beginning"), "{msg}");
    assert!(msg.contains("node-a") || msg.contains("node-b"), "{msg}");
    // Asking for a time whose events were dropped is refused too; `beginning` always works.
    expired(&log, &StartPoint::SinceEpochSeconds(900));
    let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 50);
    assert_eq!(events.len() as u64, after.events);
    assert_eq!(events.last().unwrap().0.to_string(), "node-a/70");
    let first_a = events
        .iter()
        .find(|(id, _)| &*id.origin == "node-a")
        .unwrap()
        .0
        .seq;
    assert!(first_a > 10);

    // The floors survive a reopen, and so does the local seq.
    log.shutdown().await.unwrap();
    drop(log);
    let log = mk();
    expired(&log, &StartPoint::Cursor(old));
    assert_eq!(log.append_local(&ev("x", 8200, 71)).await.unwrap().seq, 71);

    // Idle for longer than the retention: even the active segment goes, the marks stay.
    now.store(1_000_000 + 20_000_000, Ordering::SeqCst);
    log.enforce_retention().await.unwrap();
    assert_eq!(log.stats().events, 0);
    assert_eq!(log.last_seq_by_origin().get("node-b"), Some(&60));
    log.shutdown().await.unwrap();
    drop(log);
    let log = mk();
    assert_eq!(log.append_local(&ev("x", 9000, 72)).await.unwrap().seq, 72);
    assert_eq!(
        log.append_remote("node-b", 60, &ev("x", 1, 60))
            .await
            .unwrap(),
        AppendOutcome::Duplicate,
        "dedup marks survive retention and reopen"
    );
}

#[tokio::test]
async fn size_retention_keeps_the_log_under_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = EventLogOptions::new("node-a");
    o.segment_bytes = 4096;
    o.max_bytes = 16 << 10;
    let log = EventLog::open(dir.path(), o).unwrap();
    for i in 1..=400 {
        log.append_local(&ev("ref-updated", 1000, i)).await.unwrap();
    }
    log.enforce_retention().await.unwrap();
    let s = log.stats();
    assert!(s.bytes <= 16 << 10, "{s:?}");
    assert!(s.events > 50, "{s:?}");
    let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 1000);
    assert_eq!(events.last().unwrap().0.seq, 400);
    let cut = log.read_origin("node-a", 1, 10);
    assert!(matches!(cut, Err(EventError::CursorExpired(_))), "{cut:?}");
    assert_eq!(
        ids(&log.read_origin("node-a", 398, 10).unwrap()),
        ["node-a/399", "node-a/400"]
    );
}

/// A lost data directory: the node's new seqs start from the clock, above everything it
/// issued before, so a peer's log (which remembers the old high-water mark) takes them.
#[tokio::test]
async fn a_wiped_log_seeds_local_seqs_from_the_clock_so_peers_take_them() {
    let (clock, now) = manual_clock(1_700_000_000_000);
    let opts = |clock: &Clock| {
        let mut o = EventLogOptions::new("node-a");
        o.seq_from_clock = true;
        o.clock = clock.clone();
        o
    };
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let b = open(dir_b.path(), "node-b");
    let a = EventLog::open(dir_a.path().join("events"), opts(&clock)).unwrap();
    // Before any local event, a reader starting now holds the floor: no spurious expiry.
    let before = a.cursor_now();
    assert_eq!(before.seq("node-a"), Some(1_700_000_000_000_000));
    let mut first = Vec::new();
    for i in 1..=3 {
        let e = a.append_local_event(&ev("x", 100, i)).await.unwrap();
        assert_eq!(e.id.seq, 1_700_000_000_000_000 + i);
        assert_eq!(
            b.append_remote("node-a", e.id.seq, &e.bytes).await.unwrap(),
            AppendOutcome::Appended
        );
        first.push(e.id.seq);
    }
    let (got, _) = read_all(&a, StartPoint::Cursor(before), &TypeFilter::all(), 2);
    assert_eq!(got.len(), 3, "the pre-event cursor resumes");
    // Reopened with its directory: continues where it was, whatever the clock says.
    a.shutdown().await.unwrap();
    drop(a);
    now.fetch_sub(60_000, Ordering::SeqCst);
    let a = EventLog::open(dir_a.path().join("events"), opts(&clock)).unwrap();
    assert_eq!(
        a.append_local(&ev("x", 100, 4)).await.unwrap().seq,
        first[2] + 1
    );
    a.shutdown().await.unwrap();
    drop(a);
    // Wiped: the next seqs are above the old ones, and B appends them (not duplicates).
    std::fs::remove_dir_all(dir_a.path().join("events")).unwrap();
    now.fetch_add(120_000, Ordering::SeqCst);
    let a = EventLog::open(dir_a.path().join("events"), opts(&clock)).unwrap();
    let e = a.append_local_event(&ev("x", 100, 5)).await.unwrap();
    assert!(e.id.seq > first[2] + 1, "{} after a wipe", e.id.seq);
    assert_eq!(
        b.append_remote("node-a", e.id.seq, &e.bytes).await.unwrap(),
        AppendOutcome::Appended
    );
    let mut c = Cursor::beginning();
    c.set("node-a", first[2]);
    let (got, _) = read_all(&b, StartPoint::Cursor(c), &TypeFilter::all(), 10);
    assert_eq!(ids(&got), vec![format!("node-a/{}", e.id.seq)]);
}
