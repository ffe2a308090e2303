//! Damaged segments: only the damaged records are lost, the rest is read; segments of the
//! previous framing are upgraded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{self, Decoded};
use super::tests::{ev, read_all};
use super::*;
use crate::durable::{frame, DiskWatch};

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn options(disk: Arc<DiskWatch>) -> EventLogOptions {
    EventLogOptions {
        segment_bytes: 4 << 10,
        disk,
        ..EventLogOptions::new("node-a")
    }
}

/// 8 flipped or 16 zeroed bytes at 20 offsets of a sealed and of the active segment, each on a
/// fresh copy of the log: after a reopen every event but the damaged ones is read, the damage
/// is counted, and new events follow.
#[tokio::test]
async fn damage_at_20_offsets_loses_only_the_damaged_records() {
    let src = tempfile::tempdir().unwrap();
    {
        let log = EventLog::open(src.path(), options(Arc::default())).unwrap();
        for i in 1..=100 {
            log.append_local(&ev("ref-updated", 100, i)).await.unwrap();
        }
        log.shutdown().await.unwrap();
    }
    let files = segments(src.path());
    assert!(files.len() >= 3, "several segments: {}", files.len());
    // Every record: its file, byte range and seq.
    let mut records = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let start = record::header_len(&bytes).unwrap();
        for (at, n) in frame::scan(&bytes, start, 1 << 20, |_| true).frames {
            let Decoded::Record(r, _) = record::decode(&bytes[at..]) else {
                panic!("intact")
            };
            records.push((i, at, at + n, r.seq));
        }
    }
    assert_eq!(records.len(), 100);
    let mut seed = 0x1234_5678_9abc_def1u64;
    for round in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let (file, width) = if round % 2 == 0 {
            (0, 8)
        } else {
            (files.len() - 1, 16)
        };
        let mine: Vec<_> = records.iter().filter(|r| r.0 == file).collect();
        // In the records (the header is the segment's identity), not in the active segment's
        // last record (damage there is a torn tail).
        let (lo, hi) = if file == 0 {
            (mine[0].1, mine.last().unwrap().2)
        } else {
            (mine[0].1, mine[mine.len() - 2].2)
        };
        let offset = lo + (seed as usize) % (hi - lo - width);
        let dir = tempfile::tempdir().unwrap();
        for f in &files {
            std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
        let path = dir.path().join(files[file].file_name().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        for b in &mut bytes[offset..offset + width] {
            *b = if width == 8 { !*b } else { 0 };
        }
        std::fs::write(&path, &bytes).unwrap();
        let lost: Vec<u64> = records
            .iter()
            .filter(|r| r.0 == file && r.1 < offset + width && offset < r.2)
            .map(|r| r.3)
            .collect();
        let disk = Arc::new(DiskWatch::default());
        let log = EventLog::open(dir.path(), options(disk.clone())).unwrap();
        let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 33);
        let got: Vec<u64> = events.iter().map(|(id, _)| id.seq).collect();
        let want: Vec<u64> = (1..=100).filter(|s| !lost.contains(s)).collect();
        assert_eq!(
            got, want,
            "round {round}: damage at {offset} of segment {file}"
        );
        let counted = disk.corrupt_records()[2];
        assert_eq!(counted.0, "events");
        assert!(
            (1..=lost.len() as u64).contains(&counted.1),
            "round {round}: {counted:?}"
        );
        // The hole is known, and refilling it (as the history restore does from a peer)
        // puts every lost event back in order.
        let holes = log.holes();
        let hole = holes::Hole {
            origin: "node-a".into(),
            after: lost[0] - 1,
            before: lost[lost.len() - 1] + 1,
        };
        assert_eq!(
            holes,
            std::slice::from_ref(&hole),
            "round {round}: lost {lost:?}"
        );
        let bodies: Vec<Vec<u8>> = lost.iter().map(|&s| ev("ref-updated", 100, s)).collect();
        let refill = lost.iter().zip(&bodies).map(|(s, b)| (*s, &b[..]));
        assert_eq!(
            log.refill(&hole, refill.collect()).await.unwrap(),
            lost.len()
        );
        assert!(log.holes().is_empty());
        let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 33);
        let got: Vec<u64> = events.iter().map(|(id, _)| id.seq).collect();
        assert_eq!(
            got,
            (1..=100).collect::<Vec<_>>(),
            "round {round}: refilled"
        );
        let next = log
            .append_local(&ev("ref-updated", 100, 101))
            .await
            .unwrap();
        assert_eq!(next.seq, 101);
        log.shutdown().await.unwrap();
        drop(log);
        let log = EventLog::open(dir.path(), options(Arc::default())).unwrap();
        assert!(
            log.holes().is_empty(),
            "round {round}: holes after reopening"
        );
        let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 33);
        let got: Vec<u64> = events.iter().map(|(id, _)| id.seq).collect();
        assert_eq!(
            got,
            (1..=101).collect::<Vec<_>>(),
            "round {round}: reopened"
        );
        log.shutdown().await.unwrap();
    }
}

/// An origin whose last events were lost to damage in a sealed segment (nothing of it follows;
/// later checkpoints still count them): the hole reaches up to the checkpoints' last seq, is
/// kept across a restart until refilled, and the refill goes back into the damaged segment, so
/// the origin's last seq never goes down and its later events follow in order.
#[tokio::test]
async fn the_lost_last_events_of_an_origin_are_refilled_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EventLog::open(dir.path(), options(Arc::default())).unwrap();
        for seq in 1..=10 {
            log.append_remote("node-b", seq, &ev("ref-updated", 100, seq))
                .await
                .unwrap();
        }
        for i in 1..=60 {
            log.append_local(&ev("ref-updated", 100, i)).await.unwrap();
        }
        log.shutdown().await.unwrap();
    }
    let files = segments(dir.path());
    assert!(files.len() >= 3, "several segments: {}", files.len());
    // Zero the middle of node-b's records 9 and 10 (both in the first segment).
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let start = record::header_len(&bytes).unwrap();
    let frames = frame::scan(&bytes, start, 1 << 20, |_| true).frames;
    for &(at, n) in &frames {
        let Decoded::Record(r, _) = record::decode(&bytes[at..]) else {
            panic!("intact")
        };
        if r.origin == "node-b" && r.seq >= 9 {
            bytes[at + n / 2..at + n / 2 + 8].fill(0);
        }
    }
    std::fs::write(&files[0], &bytes).unwrap();
    let hole = holes::Hole {
        origin: "node-b".into(),
        after: 8,
        before: 11,
    };
    let log = EventLog::open(dir.path(), options(Arc::default())).unwrap();
    assert_eq!(log.holes(), std::slice::from_ref(&hole));
    assert_eq!(log.last_seq_by_origin()["node-b"], 10);
    // While the history restore runs, stream reads wait for the refill.
    log.set_restoring(true);
    let refused = log.read(&StartPoint::Beginning, &TypeFilter::all(), 10);
    assert!(matches!(refused, Err(EventError::Refilling)), "{refused:?}");
    log.set_restoring(false);
    log.shutdown().await.unwrap();
    drop(log);
    // Not refilled: still known after a restart (the damage itself was cut out at the first).
    let log = EventLog::open(dir.path(), options(Arc::default())).unwrap();
    assert_eq!(log.holes(), std::slice::from_ref(&hole));
    // A refill outside the hole is refused.
    let outside = log
        .refill(&hole, vec![(11, &ev("ref-updated", 100, 11)[..])])
        .await;
    assert!(outside.is_err(), "{outside:?}");
    let (nine, ten) = (ev("ref-updated", 100, 9), ev("ref-updated", 100, 10));
    assert_eq!(
        log.refill(&hole, vec![(9, &nine[..]), (10, &ten[..])])
            .await
            .unwrap(),
        2
    );
    let b_seqs = |log: &EventLog| -> Vec<u64> {
        let (events, _) = read_all(log, StartPoint::Beginning, &TypeFilter::all(), 7);
        assert_eq!(events.len(), 70);
        events
            .iter()
            .filter(|(id, _)| &*id.origin == "node-b")
            .map(|(id, _)| id.seq)
            .collect()
    };
    assert_eq!(b_seqs(&log), (1..=10).collect::<Vec<_>>());
    assert_eq!(
        log.append_remote("node-b", 10, &ten).await.unwrap(),
        AppendOutcome::Duplicate
    );
    log.shutdown().await.unwrap();
    drop(log);
    let log = EventLog::open(dir.path(), options(Arc::default())).unwrap();
    assert!(log.holes().is_empty());
    assert_eq!(b_seqs(&log), (1..=10).collect::<Vec<_>>());
    assert_eq!(
        log.append_remote("node-b", 11, &ev("ref-updated", 100, 11))
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    log.shutdown().await.unwrap();
}

/// A log written by the previous version (`HAEVSEG1`, records framed `len | crc`) opens: its
/// segments are rewritten in the new framing and every event is read.
#[tokio::test]
async fn a_segment_of_the_previous_framing_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = Vec::new();
    cp.extend_from_slice(&0u32.to_le_bytes());
    let mut old = b"HAEVSEG1".to_vec();
    old.extend_from_slice(&(cp.len() as u32).to_le_bytes());
    old.extend_from_slice(&crc32fast::hash(&cp).to_le_bytes());
    old.extend_from_slice(&cp);
    for seq in 1..=5u64 {
        let body = ev("ref-updated", 100, seq);
        let mut p = vec![6u8];
        p.extend_from_slice(b"node-b");
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&100u64.to_le_bytes());
        p.push(11);
        p.extend_from_slice(b"ref-updated");
        p.extend_from_slice(&body);
        old.extend_from_slice(&(p.len() as u32).to_le_bytes());
        old.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
        old.extend_from_slice(&p);
    }
    let path = dir.path().join(format!("{:020}.seg", 1));
    std::fs::write(&path, &old).unwrap();
    let log = EventLog::open(dir.path(), options(Arc::default())).unwrap();
    let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 2);
    let got: Vec<(String, u64)> = events
        .iter()
        .map(|(id, _)| (id.origin.to_string(), id.seq))
        .collect();
    assert_eq!(
        got,
        (1..=5)
            .map(|s| ("node-b".to_string(), s))
            .collect::<Vec<_>>()
    );
    assert_eq!(&events[4].1[..], &ev("ref-updated", 100, 5)[..]);
    assert!(std::fs::read(&path).unwrap().starts_with(b"HAEVSEG2"));
    log.append_remote("node-b", 6, &ev("ref-updated", 100, 6))
        .await
        .unwrap();
    log.shutdown().await.unwrap();
    drop(log);
    let log = EventLog::open(dir.path(), options(Arc::default())).unwrap();
    let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 100);
    assert_eq!(events.len(), 6);
}

/// While the history is restored, peer batches' events are refused (the sender retries) and
/// only the restore appends, so a newer event cannot overtake older ones still to come.
#[tokio::test]
async fn while_restoring_only_the_restore_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), options(Arc::default())).unwrap();
    log.set_restoring(true);
    let refused = log
        .append_remote("node-b", 10, &ev("ref-updated", 100, 10))
        .await;
    assert!(matches!(refused, Err(EventError::Restoring)), "{refused:?}");
    let many = log
        .append_remote_many("node-b", vec![(11, &ev("ref-updated", 100, 11)[..])])
        .await;
    assert!(matches!(many[..], [Err(EventError::Restoring)]));
    let restored = log
        .restore_many(
            "node-b",
            vec![
                (3, &ev("ref-updated", 100, 3)[..]),
                (4, &ev("ref-updated", 100, 4)[..]),
            ],
        )
        .await;
    assert!(restored
        .iter()
        .all(|r| matches!(r, Ok(AppendOutcome::Appended))));
    log.set_restoring(false);
    log.append_remote("node-b", 10, &ev("ref-updated", 100, 10))
        .await
        .unwrap();
    let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 10);
    let seqs: Vec<u64> = events.iter().map(|(id, _)| id.seq).collect();
    assert_eq!(seqs, [3, 4, 10]);
    log.shutdown().await.unwrap();
}

/// A gap in an origin's run of seqs (events it set aside, or lost in its outbox) is noted as a
/// hole once the event after it is committed, kept across a restart, and refilled in place:
/// readers then get the origin's events in seq order.
#[tokio::test]
async fn a_gap_in_an_origins_seqs_is_noted_and_refilled_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let body = |n| ev("ref-updated", 100, n);
    {
        let log = EventLog::open(dir.path(), options(Arc::default())).unwrap();
        // The first events of an origin never make a hole (this log did not know it before).
        for seq in [5, 6, 9, 10] {
            log.append_remote("node-b", seq, &body(seq)).await.unwrap();
        }
        log.append_local(&body(1)).await.unwrap();
        let hole = holes::Hole {
            origin: "node-b".into(),
            after: 6,
            before: 9,
        };
        assert_eq!(log.holes(), std::slice::from_ref(&hole));
        log.shutdown().await.unwrap();
    }
    let log = EventLog::open(dir.path(), options(Arc::default())).unwrap();
    let hole = log.holes().pop().expect("kept across a restart");
    let (seven, eight) = (body(7), body(8));
    log.refill(&hole, vec![(7, &seven[..]), (8, &eight[..])])
        .await
        .unwrap();
    assert!(log.holes().is_empty());
    let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 2);
    let b: Vec<u64> = events
        .iter()
        .filter(|(id, _)| &*id.origin == "node-b")
        .map(|(id, _)| id.seq)
        .collect();
    assert_eq!(b, [5, 6, 7, 8, 9, 10]);
    // A cursor taken after 6 (before the refill) resumes with 7.
    let mut c = Cursor::beginning();
    c.advance(&EventId {
        origin: "node-b".into(),
        seq: 6,
    });
    let (events, _) = read_all(&log, StartPoint::Cursor(c), &TypeFilter::all(), 10);
    let first_b = events.iter().find(|(id, _)| &*id.origin == "node-b");
    assert_eq!(first_b.map(|(id, _)| id.seq), Some(7));
    log.shutdown().await.unwrap();
}
