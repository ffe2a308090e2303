//! Outbox behaviour: durability across reopen, torn tails, ordering, reclamation.

use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn drain(q: &Queue, per_batch: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let p = q.peek(per_batch, 1 << 20).unwrap();
        if p.records.is_empty() {
            return seqs;
        }
        seqs.extend(p.records.iter().map(|r| r.seq));
        q.ack(
            p.end,
            p.records.len() as u64,
            p.records.last().map(|r| r.seq),
        )
        .unwrap();
    }
}

#[test]
fn appends_reach_every_queue_in_order_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let seqs: Vec<u64> = {
        let ob = Outbox::open(
            dir.path(),
            OutboxOptions {
                segment_bytes: 4096,
                max_group: 64,
                ..OutboxOptions::default()
            },
        )
        .unwrap();
        ob.add_peer("http://a/").unwrap();
        ob.add_peer("http://b/").unwrap();
        rt.block_on(async {
            let mut v = Vec::new();
            for i in 0..500 {
                v.push(
                    ob.append(format!("{{\"n\":{i}}}").into_bytes())
                        .await
                        .unwrap()
                        .unwrap(),
                );
            }
            v
        })
    };
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs increase");
    let ob = Outbox::open(
        dir.path(),
        OutboxOptions {
            segment_bytes: 4096,
            max_group: 64,
            ..OutboxOptions::default()
        },
    )
    .unwrap();
    let a = ob.add_peer("http://a/").unwrap();
    assert_eq!(a.stats().pending, 500);
    assert!(a.segment_files() > 3, "small segments rolled");
    // Deliver half to a, then reopen: only the rest is pending.
    let mut delivered = 0;
    while delivered < 250 {
        let p = a.peek(250 - delivered, 1 << 20).unwrap();
        let n = p.records.len();
        a.ack(p.end, n as u64, p.records.last().map(|r| r.seq))
            .unwrap();
        delivered += n;
    }
    drop(a);
    drop(ob);
    let ob = Outbox::open(
        dir.path(),
        OutboxOptions {
            segment_bytes: 4096,
            max_group: 64,
            ..OutboxOptions::default()
        },
    )
    .unwrap();
    let a = ob.add_peer("http://a/").unwrap();
    let b = ob.add_peer("http://b/").unwrap();
    assert_eq!(a.stats().pending, 250);
    assert_eq!(drain(&a, 37), seqs[250..].to_vec());
    assert_eq!(drain(&b, 1000), seqs);
    assert_eq!(a.stats().pending, 0);
    assert!(
        a.segment_files() <= 1,
        "delivered segments are reclaimed: {}",
        a.segment_files()
    );
    // New appends after a restart never reuse a seq.
    let next = rt.block_on(ob.append(b"{}".to_vec())).unwrap().unwrap();
    assert!(next > *seqs.last().unwrap());
}

#[test]
fn torn_tail_is_cut_and_appending_continues() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
        ob.add_peer("p").unwrap();
        rt.block_on(async {
            for _ in 0..3 {
                ob.append(b"{\"x\":1}".to_vec()).await.unwrap();
            }
        });
    }
    let qdir = dir.path().join("outbox").join(Outbox::queue_dir_name("p"));
    let (_, seg) = segment::list_segments(&qdir).unwrap().pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&seg, &bytes).unwrap();
    let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
    let q = ob.add_peer("p").unwrap();
    rt.block_on(ob.append(b"{\"x\":2}".to_vec())).unwrap();
    let got = q.peek(10, 1 << 20).unwrap();
    assert_eq!(got.records.len(), 4);
    assert_eq!(got.records[3].payload, b"{\"x\":2}");
    assert!(got.corrupt.is_none());
}

#[test]
fn no_peers_means_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
    assert_eq!(rt().block_on(ob.append(b"{}".to_vec())).unwrap(), None);
}

#[test]
fn concurrent_appends_are_group_committed_and_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let ob = std::sync::Arc::new(Outbox::open(dir.path(), OutboxOptions::default()).unwrap());
    let q = ob.add_peer("p").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..8 {
            let ob = ob.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..200 {
                    ob.append(format!("{{\"t\":{t},\"i\":{i}}}").into_bytes())
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(q.stats().pending, 1600);
    let seqs = drain(&q, 500);
    assert_eq!(seqs.len(), 1600);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_wiped_data_directory_never_reuses_seqs() {
    let rt = rt();
    let first = {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
        ob.add_peer("p").unwrap();
        rt.block_on(ob.append(b"{}".to_vec())).unwrap().unwrap()
    };
    // The same node, its data directory gone: a fresh one must start above the old seqs.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
    ob.add_peer("p").unwrap();
    let after_wipe = rt.block_on(ob.append(b"{}".to_vec())).unwrap().unwrap();
    assert!(after_wipe > first, "{after_wipe} <= {first}");
}

/// Damage at 20 offsets of a sealed and of the active segment (8 flipped bytes each time, on a
/// fresh copy): after a reopen the queue delivers every record but the ones the damage touched,
/// counts them under its store, and appends go on.
#[test]
fn damage_at_20_offsets_loses_only_the_damaged_records() {
    let rt = rt();
    let src = tempfile::tempdir().unwrap();
    let opts = || OutboxOptions {
        segment_bytes: 4 << 10,
        ..OutboxOptions::default()
    };
    let seqs: Vec<u64> = {
        let ob = Outbox::open(src.path(), opts()).unwrap();
        ob.add_peer("p").unwrap();
        rt.block_on(async {
            let mut v = Vec::new();
            for i in 0..120 {
                let body = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 50));
                v.push(ob.append(body.into_bytes()).await.unwrap().unwrap());
            }
            v
        })
    };
    let qname = Outbox::queue_dir_name("p");
    let segs = segment::list_segments(&src.path().join("outbox").join(&qname)).unwrap();
    assert!(segs.len() >= 2, "a sealed segment and the active one");
    // Every record: its segment, byte range and seq.
    let mut records = Vec::new();
    for (i, (_, path)) in segs.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let scan = crate::durable::frame::scan(&bytes, 0, 1 << 20, |_| true);
        for (at, n) in scan.frames {
            let segment::Decoded::Record(r, _) = segment::decode(&bytes[at..]) else {
                panic!("intact")
            };
            records.push((i, at, at + n, r.seq));
        }
    }
    assert_eq!(records.len(), 120);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Half the rounds in the sealed segment, half in the active one (not its last record:
        // damage there is a torn tail).
        let seg = round % 2 * (segs.len() - 1);
        let in_seg: Vec<_> = records.iter().filter(|r| r.0 == seg).collect();
        let limit = if seg == 0 {
            in_seg.last().unwrap().2
        } else {
            in_seg[in_seg.len() - 2].2
        };
        let offset = (seed as usize) % (limit - 8);
        let dir = tempfile::tempdir().unwrap();
        let qdir = dir.path().join("outbox").join(&qname);
        std::fs::create_dir_all(&qdir).unwrap();
        for entry in std::fs::read_dir(src.path().join("outbox").join(&qname)).unwrap() {
            let e = entry.unwrap();
            std::fs::copy(e.path(), qdir.join(e.file_name())).unwrap();
        }
        std::fs::copy(
            src.path().join("outbox/seq.next"),
            dir.path().join("outbox/seq.next"),
        )
        .unwrap();
        let path = qdir.join(segs[seg].1.file_name().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        for b in &mut bytes[offset..offset + 8] {
            *b = !*b;
        }
        std::fs::write(&path, &bytes).unwrap();
        let lost: Vec<u64> = records
            .iter()
            .filter(|r| r.0 == seg && r.1 < offset + 8 && offset < r.2)
            .map(|r| r.3)
            .collect();
        let disk = Arc::new(crate::durable::DiskWatch::default());
        let ob = Outbox::open(
            dir.path(),
            OutboxOptions {
                disk: disk.clone(),
                ..opts()
            },
        )
        .unwrap();
        let q = ob.add_peer("p").unwrap();
        let want: Vec<u64> = seqs.iter().copied().filter(|s| !lost.contains(s)).collect();
        assert_eq!(q.stats().pending, want.len() as u64, "round {round}");
        let next = rt.block_on(ob.append(b"{}".to_vec())).unwrap().unwrap();
        let mut want = want;
        want.push(next);
        assert_eq!(
            drain(&q, 17),
            want,
            "round {round}: damage at {offset} in segment {seg}"
        );
        let counted = disk.corrupt_records()[0].1;
        assert!(
            (1..=lost.len() as u64).contains(&counted),
            "round {round}: {counted}"
        );
    }
}

/// A queue written by the previous version (records `len | crc | seq | ts | payload`, no
/// marker) is rewritten at open and delivered whole.
#[test]
fn a_segment_of_the_previous_framing_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let qdir = dir.path().join("outbox").join(Outbox::queue_dir_name("p"));
    std::fs::create_dir_all(&qdir).unwrap();
    let mut old = Vec::new();
    for seq in 10..15u64 {
        let payload = format!("{{\"old\":{seq}}}").into_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq.to_le_bytes());
        crc.update(&7u64.to_le_bytes());
        crc.update(&payload);
        old.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        old.extend_from_slice(&crc.finalize().to_le_bytes());
        old.extend_from_slice(&seq.to_le_bytes());
        old.extend_from_slice(&7u64.to_le_bytes());
        old.extend_from_slice(&payload);
    }
    std::fs::write(qdir.join(segment::segment_name(10)), &old).unwrap();
    std::fs::write(qdir.join("acked"), "11\n").unwrap();
    let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
    let q = ob.add_peer("p").unwrap();
    assert_eq!(q.stats().pending, 3);
    let next = rt().block_on(ob.append(b"{}".to_vec())).unwrap().unwrap();
    assert!(next > 14);
    let p = q.peek(10, 1 << 20).unwrap();
    let got: Vec<(u64, Vec<u8>)> = p.records.into_iter().map(|r| (r.seq, r.payload)).collect();
    assert_eq!(
        got,
        vec![
            (12, b"{\"old\":12}".to_vec()),
            (13, b"{\"old\":13}".to_vec()),
            (14, b"{\"old\":14}".to_vec()),
            (next, b"{}".to_vec()),
        ]
    );
}

/// `acked` is rewritten in place at a fixed size; a file of the older `"<seq>\n"` form is
/// read, then replaced once.
#[test]
fn acked_is_rewritten_in_place_and_the_old_form_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let opts = || OutboxOptions {
        segment_bytes: 1 << 20,
        max_group: 64,
        ..OutboxOptions::default()
    };
    let seqs: Vec<u64> = {
        let ob = Outbox::open(dir.path(), opts()).unwrap();
        ob.add_peer("p").unwrap();
        rt.block_on(async {
            let mut v = Vec::new();
            for i in 0..10 {
                v.push(ob.append(vec![b'x'; i + 1]).await.unwrap().unwrap());
            }
            v
        })
    };
    let qdir = dir.path().join("outbox").join(Outbox::queue_dir_name("p"));
    std::fs::write(qdir.join("acked"), format!("{}\n", seqs[3])).unwrap();
    let ob = Outbox::open(dir.path(), opts()).unwrap();
    let q = ob.add_peer("p").unwrap();
    assert_eq!(q.stats().pending, 6, "the old form is read");
    for (i, want) in seqs[4..].iter().enumerate() {
        let p = q.peek(1, 1 << 20).unwrap();
        assert_eq!(p.records[0].seq, *want);
        q.ack(p.end, 1, Some(*want)).unwrap();
        let text = std::fs::read_to_string(qdir.join("acked")).unwrap();
        assert_eq!(text.len(), 21, "fixed size after ack {i}: {text:?}");
        assert_eq!(text.trim().parse::<u64>().unwrap(), *want);
    }
    drop(q);
    drop(ob);
    let ob = Outbox::open(dir.path(), opts()).unwrap();
    assert_eq!(ob.add_peer("p").unwrap().stats().pending, 0);
}
