//! Scale test: cleanup and a watcher poll over many sessions on a local disk.
//!
//! Runs at `DEFAULT_SESSIONS` sessions (see there for why that number) with fsync off for
//! the setup only; figures are printed (`cargo test -p shared-fs --test scale -- --nocapture`).

use std::time::{Duration, Instant};

use shared_fs::sessions::{SessionFiles, SessionOptions, SessionRecord};
use shared_fs::watch::{WatchOptions, Watcher};

/// Default size. 100,000 sessions take too long for the everyday suite in a debug build on the
/// project's 2-core machines, whose shared disk makes every create, rename and unlink cost about
/// a millisecond (setup alone: 15 to 60 s, removing the temp dir another ~25 s); 20,000 keeps the
/// test well under a minute and the cost is linear (one `readdir` per leaf directory, one `stat`
/// per file, a read, a rename and an unlink per expired session).
/// `SHARED_FS_SCALE_SESSIONS=100000` runs the full size.
const DEFAULT_SESSIONS: u64 = 20_000;

const NOW: u64 = 1_893_456_000_000;
const HOUR: u64 = 3_600_000;

fn record(i: u64, expires_at: u64) -> SessionRecord {
    SessionRecord {
        account_id: i,
        created_at: NOW - HOUR,
        expires_at,
        refresh_at: expires_at - HOUR / 2,
        xsrf_token: format!("xsrf-{i}"),
        extra: serde_json::Map::new(),
    }
}

#[test]
fn cleanup_and_poll_scale() {
    let sessions: u64 = std::env::var("SHARED_FS_SCALE_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SESSIONS);
    let dir = tempfile::tempdir().unwrap();
    let opts = SessionOptions {
        fsync: false,
        ..SessionOptions::default()
    };
    let files = SessionFiles::open(dir.path(), opts).unwrap();
    let started = Instant::now();
    let mut live = Vec::new();
    for i in 0..sessions {
        let expired = i % 2 == 0;
        let t = files
            .create(&record(i, if expired { NOW - 1 } else { NOW + HOUR }))
            .unwrap();
        if i % 1000 == 1 {
            live.push(t);
        }
    }
    let create = started.elapsed();

    let w_started = Instant::now();
    let watcher = Watcher::with_options(
        files.root(),
        WatchOptions {
            poll_interval: Duration::from_secs(3600),
            native: false,
        },
        |_| {},
    )
    .unwrap();
    let baseline = w_started.elapsed();
    let first = watcher.stats();
    assert_eq!(first.files, sessions);

    let started = Instant::now();
    let report = files.cleanup(NOW);
    let cleanup = started.elapsed();
    assert_eq!(report.scanned, sessions);
    assert_eq!(report.expired_removed, sessions / 2);
    assert_eq!(report.errors, 0);

    let started = Instant::now();
    let report = files.cleanup(NOW);
    let stat_only = started.elapsed();
    assert_eq!(report.expired_removed, 0);
    for t in &live {
        assert!(files.get(t.as_str(), NOW).unwrap().is_some());
    }

    watcher.poll_now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while watcher.stats().polls == 0 {
        assert!(Instant::now() < deadline, "no poll within 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let poll = watcher.stats();
    eprintln!(
        "scale {sessions} sessions: create {create:?}; cleanup (half expired) {cleanup:?}; \
         cleanup (none expired, stat only) {stat_only:?}; watcher baseline {baseline:?}; \
         poll {:?} over {} files in {} dirs",
        poll.last_poll, poll.files, poll.dirs
    );
    assert!(
        cleanup < Duration::from_secs(60),
        "cleanup took {cleanup:?}"
    );
    let started = Instant::now();
    drop(watcher);
    let stop = started.elapsed();
    let started = Instant::now();
    drop(dir);
    eprintln!(
        "watcher drop {stop:?}; temp dir removal {:?}",
        started.elapsed()
    );
}
