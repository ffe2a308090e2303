//! Tests of the `watch` module: polling alone, the native fast path, stopping on drop.

use super::*;
use crate::test_util::eventually;
use std::sync::atomic::AtomicUsize;

const PATIENCE: Duration = Duration::from_secs(10);

type Seen = Arc<Mutex<Vec<Change>>>;

fn recorder() -> (Seen, impl Fn(Change) + Send + 'static) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    (seen, move |c| sink.lock().unwrap().push(c))
}

fn saw(seen: &Seen, path: &str, kind: ChangeKind) -> bool {
    let want = Change {
        path: PathBuf::from(path),
        kind,
    };
    seen.lock().unwrap().contains(&want)
}

/// Writes the way another NFS client would be seen: no inotify event reaches this watcher
/// because native is off, so only the polling scan can report these.
#[test]
fn polling_alone_sees_create_modify_remove() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ab/cd")).unwrap();
    std::fs::write(dir.path().join("ab/cd/old.json"), b"1").unwrap();
    let (seen, cb) = recorder();
    let opts = WatchOptions {
        poll_interval: Duration::from_millis(50),
        native: false,
    };
    let w = Watcher::with_options(dir.path(), opts, cb).unwrap();
    assert!(!w.native_active());

    std::fs::create_dir_all(dir.path().join("ef/01")).unwrap();
    crate::atomic::write_atomic(&dir.path().join("ef/01/new.json"), b"x").unwrap();
    assert!(eventually(PATIENCE, || saw(
        &seen,
        "ef/01/new.json",
        ChangeKind::Created
    )));
    // An atomic rewrite of the same length is still seen (new inode).
    crate::atomic::write_atomic(&dir.path().join("ab/cd/old.json"), b"2").unwrap();
    assert!(eventually(PATIENCE, || saw(
        &seen,
        "ab/cd/old.json",
        ChangeKind::Modified
    )));
    std::fs::remove_file(dir.path().join("ab/cd/old.json")).unwrap();
    assert!(eventually(PATIENCE, || saw(
        &seen,
        "ab/cd/old.json",
        ChangeKind::Removed
    )));
    std::fs::remove_dir_all(dir.path().join("ef")).unwrap();
    assert!(eventually(PATIENCE, || saw(
        &seen,
        "ef/01/new.json",
        ChangeKind::Removed
    )));
    assert!(w.stats().polls >= 1);
    // The baseline file was not reported as created; temp files were never reported.
    let all = seen.lock().unwrap().clone();
    assert!(!all
        .iter()
        .any(|c| c.path == Path::new("ab/cd/old.json") && c.kind == ChangeKind::Created));
    assert!(
        !all.iter()
            .any(|c| c.path.to_string_lossy().contains(".tmp.")),
        "{all:?}"
    );
}

/// With a poll interval of an hour, only the native backend can report these in time.
#[test]
fn native_backend_reports_local_changes_fast() {
    let dir = tempfile::tempdir().unwrap();
    let (seen, cb) = recorder();
    let w = Watcher::new(dir.path(), Duration::from_secs(3600), cb).unwrap();
    assert!(
        w.native_active(),
        "inotify is expected to work on a local temp dir"
    );
    let started = Instant::now();
    std::fs::write(dir.path().join("top.json"), b"1").unwrap();
    assert!(eventually(PATIENCE, || saw(
        &seen,
        "top.json",
        ChangeKind::Created
    )));
    // A fan-out directory created on the fly, with a file renamed into it at once.
    std::fs::create_dir_all(dir.path().join("12/34")).unwrap();
    crate::atomic::write_atomic(&dir.path().join("12/34/h.json"), b"1").unwrap();
    assert!(eventually(PATIENCE, || saw(
        &seen,
        "12/34/h.json",
        ChangeKind::Created
    )));
    crate::atomic::write_atomic(&dir.path().join("12/34/h.json"), b"2").unwrap();
    assert!(eventually(PATIENCE, || saw(
        &seen,
        "12/34/h.json",
        ChangeKind::Modified
    )));
    std::fs::remove_file(dir.path().join("12/34/h.json")).unwrap();
    assert!(eventually(PATIENCE, || saw(
        &seen,
        "12/34/h.json",
        ChangeKind::Removed
    )));
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        w.stats().polls,
        0,
        "no poll ran: the native path did it all"
    );
    let all = seen.lock().unwrap().clone();
    assert!(
        !all.iter()
            .any(|c| c.path.to_string_lossy().contains(".tmp.")),
        "{all:?}"
    );
    let creates = all
        .iter()
        .filter(|c| c.path == Path::new("12/34/h.json") && c.kind == ChangeKind::Created);
    assert_eq!(creates.count(), 1, "reported once: {all:?}");
}

#[test]
fn drop_stops_and_joins_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let opts = WatchOptions {
        poll_interval: Duration::from_millis(10),
        native: true,
    };
    let w = Watcher::with_options(dir.path(), opts, move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    std::fs::write(dir.path().join("a"), b"1").unwrap();
    assert!(eventually(PATIENCE, || calls.load(Ordering::SeqCst) >= 1));
    let started = Instant::now();
    drop(w);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        started.elapsed()
    );
    // The worker and the callback it owned are gone: only our clone of the counter is left.
    assert_eq!(Arc::strong_count(&calls), 1);
    let before = calls.load(Ordering::SeqCst);
    std::fs::write(dir.path().join("b"), b"1").unwrap();
    std::fs::remove_file(dir.path().join("a")).unwrap();
    assert!(!eventually(Duration::from_millis(200), || calls
        .load(Ordering::SeqCst)
        != before));
}

#[test]
fn change_maps_to_a_file_stem() {
    let c = Change {
        path: PathBuf::from("ab/cd/abcd01.json"),
        kind: ChangeKind::Removed,
    };
    assert_eq!(c.file_stem(), Some("abcd01"));
}

#[test]
fn missing_root_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Watcher::new(&dir.path().join("nope"), Duration::from_secs(1), |_| {}).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

/// A new file written unnamed and linked in (`atomic::create_new_atomic`) is reported once, as
/// created, with nothing for the unnamed file before it.
#[test]
fn a_file_linked_in_from_an_unnamed_one_is_one_creation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ab/c")).unwrap();
    let (seen, cb) = recorder();
    let opts = WatchOptions {
        poll_interval: Duration::from_secs(3600),
        native: true,
    };
    let w = Watcher::with_options(dir.path(), opts, cb).unwrap();
    if !w.native_active() {
        eprintln!("no inotify here: skipped");
        return;
    }
    let p = dir.path().join("ab/c/new.json");
    assert!(crate::atomic::create_new_atomic(&p, b"x", &Default::default()).unwrap());
    assert!(eventually(PATIENCE, || saw(
        &seen,
        "ab/c/new.json",
        ChangeKind::Created
    )));
    std::thread::sleep(Duration::from_millis(200));
    let all = seen.lock().unwrap().clone();
    assert_eq!(
        all,
        vec![Change {
            path: PathBuf::from("ab/c/new.json"),
            kind: ChangeKind::Created
        }]
    );
    assert!(unnamed(Path::new("ab/c/#123")));
    assert!(!unnamed(Path::new("ab/c/#")) && !unnamed(Path::new("ab/c/#1a")));
}
