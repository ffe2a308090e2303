//! Tests of the `store` module: layout, modes, envelope, quarantine, reaping, scanning.

use super::*;
use crate::test_util::walk;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn store(dir: &Path) -> Store {
    Store::open(
        dir.join("s"),
        StoreOptions {
            fsync: false,
            max_payload: 256 * 1024,
        },
    )
    .unwrap()
}

#[test]
fn layout_is_fanned_out_by_hash_and_modes_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let h = KeyHash::of(b"secret-key");
    s.put(&h, br#"{"a":1}"#, None).unwrap();
    let p = s.path_for(&h);
    let rel = p.strip_prefix(s.root()).unwrap();
    let hex = h.as_str();
    assert_eq!(
        rel,
        Path::new(&hex[0..2])
            .join(&hex[2..3])
            .join(format!("{hex}.json"))
    );
    assert_eq!(KeyHash::from_relative_path(rel), Some(h.clone()));
    for p in walk(s.root()) {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{}", p.display());
        assert!(!p.to_string_lossy().contains("secret-key"));
    }
    // Human-readable envelope around the payload.
    let raw = std::fs::read_to_string(&p).unwrap();
    assert!(
        raw.starts_with(r#"{"v":1,"sha256":""#) && raw.contains(r#""data":{"a":1}"#),
        "{raw}"
    );
}

#[test]
fn round_trip_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let h = KeyHash::of(b"k");
    assert_eq!(s.get(&h).unwrap(), None);
    let when = UNIX_EPOCH + Duration::from_secs(4_000_000_000);
    s.put(&h, b" {\"x\": [1, 2]}\n", Some(when)).unwrap();
    let e = s.get(&h).unwrap().unwrap();
    assert_eq!(e.bytes, b"{\"x\": [1, 2]}");
    assert_eq!(e.meta.modified, when);
    assert_eq!(e.meta.len, std::fs::metadata(s.path_for(&h)).unwrap().len());
    assert!(!s.create_new(&h, b"1", None).unwrap());
    assert!(s.replace_existing(&h, b"2", None).unwrap());
    assert_eq!(s.get(&h).unwrap().unwrap().bytes, b"2");
    assert!(s.remove(&h).unwrap());
    assert!(!s.remove(&h).unwrap());
    assert!(!s.replace_existing(&h, b"3", None).unwrap());
    assert_eq!(s.get(&h).unwrap(), None);
}

#[test]
fn rejects_oversized_and_non_json_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path(),
        StoreOptions {
            fsync: false,
            max_payload: 10,
        },
    )
    .unwrap();
    let h = KeyHash::of(b"k");
    assert!(matches!(
        s.put(&h, b"[1,2,3,4,5,6]", None),
        Err(StoreError::TooLarge { len: 13, max: 10 })
    ));
    assert!(matches!(
        s.put(&h, b"{nope", None),
        Err(StoreError::NotJson { .. })
    ));
    assert!(!s.path_for(&h).exists());
}

#[test]
fn corrupt_files_are_quarantined_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let good = br#"{"account":42,"name":"alice"}"#;
    type Damage = Box<dyn Fn(&[u8]) -> Vec<u8>>;
    let cases: Vec<(&str, Damage)> = vec![
        ("truncated", Box::new(|b: &[u8]| b[..b.len() / 2].to_vec())),
        ("empty", Box::new(|_: &[u8]| Vec::new())),
        (
            "bit flip in payload",
            Box::new(|b: &[u8]| {
                let s = String::from_utf8(b.to_vec()).unwrap();
                s.replace("alice", "alicf").into_bytes()
            }),
        ),
        ("garbage", Box::new(|_: &[u8]| b"\x00\xffnot json".to_vec())),
        (
            "bare payload",
            Box::new(|_: &[u8]| br#"{"account":42}"#.to_vec()),
        ),
    ];
    for (i, (what, damage)) in cases.iter().enumerate() {
        let h = KeyHash::of(format!("key{i}").as_bytes());
        s.put(&h, good, None).unwrap();
        let p = s.path_for(&h);
        std::fs::write(&p, damage(&std::fs::read(&p).unwrap())).unwrap();
        match s.get(&h) {
            Err(StoreError::Corrupt {
                quarantined: Some(q),
                ..
            }) => {
                assert!(q.starts_with(s.quarantine_dir()), "{what}");
                assert!(
                    q.file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .starts_with(h.as_str()),
                    "{what}"
                );
            }
            other => panic!("{what}: expected a quarantined corrupt file, got {other:?}"),
        }
        assert!(!p.exists(), "{what}: still in place");
        assert_eq!(s.get(&h).unwrap(), None, "{what}: served after quarantine");
    }
    assert_eq!(
        std::fs::read_dir(s.quarantine_dir()).unwrap().count(),
        cases.len()
    );
}

#[test]
fn caller_validation_failure_quarantines_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let h = KeyHash::of(b"k");
    s.put(&h, b"[1]", None).unwrap();
    let r = s.get_with(&h, |_| Err::<(), _>("not a session".to_owned()));
    assert!(r.as_ref().is_err_and(|e| e.is_corrupt()), "{r:?}");
    assert_eq!(s.get(&h).unwrap(), None);
}

#[test]
fn quarantine_puts_back_a_file_replaced_after_it_was_judged() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let h = KeyHash::of(b"k");
    let p = s.path_for(&h);
    s.put(&h, b"1", None).unwrap();
    std::fs::write(&p, b"corrupt").unwrap();
    let Read::Regular(_, judged) = s.read_file(&p).unwrap() else {
        panic!("not a regular file")
    };
    // Another node renames a valid file over the corrupt one before we quarantine it.
    s.put(&h, br#"{"fresh":true}"#, None).unwrap();
    assert_eq!(s.quarantine(&p, &h, &judged).unwrap(), None);
    assert_eq!(s.get(&h).unwrap().unwrap().bytes, br#"{"fresh":true}"#);
    assert_eq!(std::fs::read_dir(s.quarantine_dir()).unwrap().count(), 0);
}

#[test]
fn reap_removes_only_the_file_it_judged() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let h = KeyHash::of(b"k");
    let p = s.path_for(&h);
    s.put(&h, b"1", None).unwrap();
    let judged = s.get(&h).unwrap().unwrap().meta;
    assert_eq!(s.reap_if_unchanged(&p, &judged).unwrap(), Reap::Removed);
    assert_eq!(s.reap_if_unchanged(&p, &judged).unwrap(), Reap::Gone);

    s.put(&h, b"1", None).unwrap();
    let judged = s.get(&h).unwrap().unwrap().meta;
    s.put(&h, b"2", None).unwrap(); // a refresh lands between the judgement and the reap
    assert_eq!(s.reap_if_unchanged(&p, &judged).unwrap(), Reap::Changed);
    assert_eq!(s.get(&h).unwrap().unwrap().bytes, b"2");
    let leftovers: Vec<_> = s.scan().map(|i| i.unwrap()).collect();
    assert_eq!(leftovers, vec![ScanItem::Entry { hash: h, path: p }]);
}

#[test]
fn scan_streams_entries_and_temps_but_not_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let mut want = Vec::new();
    for i in 0..300 {
        let h = KeyHash::of(format!("k{i}").as_bytes());
        s.put(&h, b"1", None).unwrap();
        want.push(h);
    }
    let p0 = s.path_for(&want[0]);
    let temp = crate::atomic::temp_path_for(&p0).unwrap();
    std::fs::write(&temp, b"partial").unwrap();
    std::fs::write(p0.with_file_name("README"), b"x").unwrap();
    std::fs::write(s.path_for(&want[1]), b"bad").unwrap();
    assert!(s.get(&want[1]).unwrap_err().is_corrupt());
    want.remove(1);
    let (mut hashes, mut temps, mut foreign) = (Vec::new(), Vec::new(), 0);
    for item in s.scan() {
        match item.unwrap() {
            ScanItem::Entry { hash, path } => {
                assert_eq!(path, s.path_for(&hash));
                hashes.push(hash)
            }
            ScanItem::Temp { path } => temps.push(path),
            ScanItem::Foreign { .. } => foreign += 1,
        }
    }
    hashes.sort();
    want.sort();
    assert_eq!(hashes, want);
    assert_eq!(temps, vec![temp]);
    assert_eq!(foreign, 1);
}

/// A reader racing a writer never sees a partial file: each read is complete and checksummed,
/// so a torn read would surface as `Corrupt`. Payloads differ in length to make tears likely.
#[test]
fn reader_racing_writer_never_sees_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let h = KeyHash::of(b"race");
    let small = serde_json::to_vec(&"a".repeat(10)).unwrap();
    let big = serde_json::to_vec(&"b".repeat(30_000)).unwrap();
    s.put(&h, &small, None).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, h, done) = (s.clone(), h.clone(), done.clone());
        let (small, big) = (small.clone(), big.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut writes = 0u32;
            while writes < 3000 && Instant::now() < deadline {
                let body = if writes % 2 == 0 { &big } else { &small };
                s.put(&h, body, None).unwrap();
                writes += 1;
            }
            done.store(true, Ordering::SeqCst);
            writes
        })
    };
    let mut reads = 0u32;
    while !done.load(Ordering::SeqCst) {
        let e = s.get(&h).unwrap().expect("the entry always exists");
        assert!(
            e.bytes == small || e.bytes == big,
            "torn read of {} bytes",
            e.bytes.len()
        );
        reads += 1;
    }
    let writes = writer.join().unwrap();
    eprintln!("atomicity race: {writes} writes, {reads} reads");
    assert!(
        writes >= 100 && reads >= 100,
        "too little overlap: {writes} writes, {reads} reads"
    );
    assert!(!s.quarantine_dir().exists(), "nothing was judged corrupt");
}

/// A FIFO, a symlink (even to a valid entry) or a directory in place of an entry is never
/// read through: the read answers at once and the thing is quarantined like a corrupt file.
#[test]
fn non_regular_files_are_quarantined_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let valid = KeyHash::of(b"valid");
    s.put(&valid, br#"{"ok":true}"#, None).unwrap();
    let make = |kind: &str, p: &Path| match kind {
        "a FIFO" => {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }
        "a symbolic link" => std::os::unix::fs::symlink(s.path_for(&valid), p).unwrap(),
        _ => std::fs::create_dir(p).unwrap(),
    };
    for (i, kind) in ["a FIFO", "a symbolic link", "a directory"]
        .iter()
        .enumerate()
    {
        let h = KeyHash::of(format!("k{i}").as_bytes());
        let p = s.path_for(&h);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        make(kind, &p);
        let started = Instant::now();
        let err = s.get(&h).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{kind}: slow");
        match &err {
            StoreError::Corrupt {
                reason,
                quarantined: Some(q),
                ..
            } => {
                assert!(reason.contains(kind), "{kind}: {reason}");
                assert!(q.symlink_metadata().is_ok(), "{kind}: not in quarantine");
            }
            other => panic!("{kind}: {other:?}"),
        }
        assert!(p.symlink_metadata().is_err(), "{kind}: left in place");
        assert_eq!(s.get(&h).unwrap(), None);
    }
    // The symlink's target was not touched.
    assert_eq!(s.get(&valid).unwrap().unwrap().bytes, br#"{"ok":true}"#);
}

#[test]
fn key_hash_is_lowercase_hex_sha256() {
    assert_eq!(
        KeyHash::of(b"abc").as_str(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
