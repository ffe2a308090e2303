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
        let next = log
            .append_local(&ev("ref-updated", 100, 101))
            .await
            .unwrap();
        assert_eq!(next.seq, 101);
        log.shutdown().await.unwrap();
    }
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
