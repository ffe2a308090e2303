use super::*;
use crate::durable::DiskWatch;

fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("record-{i:04}-").into_bytes();
    p.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 20 + i % 37));
    p
}

fn file_of(n: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut out = Vec::new();
    let mut at = Vec::new();
    for i in 0..n {
        let s = out.len();
        encode(&payload(i), &mut out);
        at.push((s, out.len()));
    }
    (out, at)
}

fn any(_: &[u8]) -> bool {
    true
}

fn layout() -> Layout<'static> {
    Layout {
        store: "outbox",
        max: 1 << 20,
        legacy_extra: 0,
        accept: &any,
    }
}

/// Payloads of a recovered file.
fn payloads(r: &Recovered) -> Vec<Vec<u8>> {
    r.frames
        .iter()
        .map(|&(at, n)| match decode(&r.bytes[at..at + n], 1 << 20) {
            Frame::Intact(p, _) => p.to_vec(),
            other => panic!("not intact after recovery: {other:?}"),
        })
        .collect()
}

#[test]
fn round_trip_and_every_kind_of_bad_frame() {
    let mut buf = Vec::new();
    encode(b"hello", &mut buf);
    assert_eq!(decode(&buf, 100), Frame::Intact(b"hello", FRAME + 5));
    assert_eq!(decode(&buf[..7], 100), Frame::Incomplete(FRAME));
    assert_eq!(decode(&buf[..FRAME + 1], 100), Frame::Incomplete(FRAME + 5));
    assert_eq!(
        decode(&buf, 4),
        Frame::Corrupt("record length out of range")
    );
    let mut bad = buf.clone();
    bad[FRAME + 1] ^= 1;
    assert_eq!(
        decode(&bad, 100),
        Frame::Corrupt("record checksum mismatch")
    );
    let mut bad = buf.clone();
    bad[5] ^= 1; // the length is covered by the checksum too
    assert!(matches!(
        decode(&bad, 1 << 20),
        Frame::Corrupt(_) | Frame::Incomplete(_)
    ));
    bad = buf.clone();
    bad[0] = 0;
    assert_eq!(decode(&bad, 100), Frame::Corrupt("no record marker"));
    assert_eq!(u32::from_le_bytes(MARK), 0xE7A5_5AC3);
}

/// Damage (8 flipped bytes, or 16 zero bytes) at 20 offsets spread over a file of 60 records:
/// each time exactly the records the damage touched are lost, every other one is read, and
/// the damage is counted.
#[test]
fn damage_at_20_offsets_loses_only_the_damaged_records() {
    let (clean, at) = file_of(60);
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Not in the last record: damage there is a torn tail (tested below).
        let limit = at[58].1 - 16;
        let offset = (seed as usize) % limit;
        let width = if round % 2 == 0 { 8 } else { 16 };
        let mut bytes = clean.clone();
        for b in &mut bytes[offset..offset + width] {
            *b = if round % 2 == 0 { !*b } else { 0 };
        }
        let hit: Vec<usize> = (0..60)
            .filter(|&i| at[i].0 < offset + width && offset < at[i].1)
            .collect();
        let path = dir.path().join(format!("f{round}"));
        std::fs::write(&path, &bytes).unwrap();
        let watch = DiskWatch::default();
        let r = recover(&path, bytes, 0, &[], &layout(), false, &watch).unwrap();
        let want: Vec<Vec<u8>> = (0..60).filter(|i| !hit.contains(i)).map(payload).collect();
        assert_eq!(
            payloads(&r),
            want,
            "round {round}: damage at {offset}..+{width} hit {hit:?}"
        );
        // A record whose marker went with its predecessor's end is lost in the same span: the
        // count is per marker found, so it may be below the records lost, never above.
        assert!(
            (1..=hit.len() as u64).contains(&r.corrupt),
            "round {round}: {}",
            r.corrupt
        );
        assert_eq!(watch.corrupt_records()[0], ("outbox", r.corrupt));
        assert_eq!(r.torn, 0);
        // The damage is gone from the file: a second open finds nothing wrong.
        assert_eq!(std::fs::read(&path).unwrap(), r.bytes);
        let again = recover(&path, r.bytes.clone(), 0, &[], &layout(), false, &watch).unwrap();
        assert_eq!((again.corrupt, again.torn), (0, 0));
    }
}

#[test]
fn a_torn_tail_is_cut_and_not_counted_unless_the_file_was_sealed() {
    let (clean, at) = file_of(5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg");
    for cut in [at[4].0 + 1, at[4].0 + FRAME + 2, at[4].1 - 1] {
        let bytes = clean[..cut].to_vec();
        std::fs::write(&path, &bytes).unwrap();
        let watch = DiskWatch::default();
        let r = recover(&path, bytes, 0, &[], &layout(), false, &watch).unwrap();
        assert_eq!(
            (r.frames.len(), r.corrupt, r.torn),
            (4, 0, (cut - at[4].0) as u64)
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), at[4].0 as u64);
        assert_eq!(watch.corrupt_records()[0].1, 0);
    }
    let mut bytes = clean.clone();
    bytes[at[4].0 + FRAME] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let watch = DiskWatch::default();
    let r = recover(&path, bytes, 0, &[], &layout(), true, &watch).unwrap();
    assert_eq!((r.frames.len(), r.corrupt), (4, 1));
}

#[test]
fn files_of_the_previous_framing_are_rewritten_once() {
    // The outbox's old layout: len (of the payload after seq and timestamp) | crc | 16 + len.
    let mut old = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..3u64 {
        let mut body = Vec::new();
        body.extend_from_slice(&i.to_le_bytes());
        body.extend_from_slice(&(100 + i).to_le_bytes());
        body.extend_from_slice(&payload(i as usize));
        old.extend_from_slice(&(payload(i as usize).len() as u32).to_le_bytes());
        old.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        old.extend_from_slice(&body);
        bodies.push(body);
    }
    old.extend_from_slice(&[7, 0]); // a torn tail
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg");
    std::fs::write(&path, &old).unwrap();
    let l = Layout {
        legacy_extra: 16,
        ..layout()
    };
    let watch = DiskWatch::default();
    let r = recover(&path, old, 0, &[], &l, false, &watch).unwrap();
    assert_eq!(payloads(&r), bodies);
    assert_eq!((r.corrupt, r.torn), (0, 2));
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk, r.bytes);
    assert!(on_disk.starts_with(&MARK));
    let again = recover(&path, on_disk, 0, &[], &l, false, &watch).unwrap();
    assert_eq!(payloads(&again), bodies);
    assert!(!dir.path().join("seg.tmp").exists());
}
