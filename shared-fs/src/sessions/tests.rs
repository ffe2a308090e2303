//! Tests of the `sessions` module: tokens, records, expiry, privacy of names, cleanup.

use super::*;
use crate::test_util::walk;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

const HOUR: u64 = 3600 * 1000;
/// A fixed "now" (2030-01-01) so that tests do not depend on the wall clock.
const NOW: u64 = 1_893_456_000_000;

fn files(dir: &Path) -> SessionFiles {
    let opts = SessionOptions {
        fsync: false,
        ..SessionOptions::default()
    };
    SessionFiles::open(dir, opts).unwrap()
}

fn record(account_id: u64, expires_at: u64) -> SessionRecord {
    let mut extra = serde_json::Map::new();
    extra.insert("user_agent".into(), serde_json::json!("curl/8"));
    SessionRecord {
        account_id,
        created_at: NOW - HOUR,
        expires_at,
        refresh_at: expires_at.saturating_sub(HOUR),
        xsrf_token: format!("xsrf-{account_id}"),
        extra,
    }
}

#[test]
fn create_get_refresh_delete() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let rec = record(7, NOW + HOUR);
    let token = f.create(&rec).unwrap();
    assert!(token_is_well_formed(token.as_str()));
    assert_eq!(format!("{token:?}"), "SessionToken(<redacted>)");
    assert_eq!(f.get(token.as_str(), NOW).unwrap(), Some(rec.clone()));
    // Unknown extra fields survive the round trip.
    let raw = serde_json::to_value(f.get(token.as_str(), NOW).unwrap()).unwrap();
    assert_eq!(raw["user_agent"], "curl/8");

    let later = record(7, NOW + 5 * HOUR);
    assert!(f.refresh(token.as_str(), &later).unwrap());
    assert_eq!(
        f.get(token.as_str(), NOW + 2 * HOUR).unwrap(),
        Some(later.clone())
    );
    assert!(f.delete(token.as_str()).unwrap());
    assert_eq!(f.get(token.as_str(), NOW).unwrap(), None);
    // A refresh after a logout does not log the user back in.
    assert!(!f.refresh(token.as_str(), &later).unwrap());
    assert_eq!(f.get(token.as_str(), NOW).unwrap(), None);
    assert!(!f.delete(token.as_str()).unwrap());
}

#[test]
fn expired_reads_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let token = f.create(&record(1, NOW)).unwrap();
    assert!(f.get(token.as_str(), NOW - 1).unwrap().is_some());
    assert_eq!(f.get(token.as_str(), NOW).unwrap(), None);
    assert_eq!(f.get(token.as_str(), NOW + 1).unwrap(), None);
}

#[test]
fn tokens_are_random_and_never_in_a_path_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let tokens: Vec<SessionToken> = (0..200)
        .map(|i| f.create(&record(i, NOW + HOUR)).unwrap())
        .collect();
    let mut distinct: Vec<&str> = tokens.iter().map(|t| t.as_str()).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), tokens.len());
    let paths = walk(dir.path());
    assert!(paths.len() > 200);
    for p in &paths {
        let name = p.to_string_lossy();
        let content = if p.is_file() {
            std::fs::read_to_string(p).unwrap()
        } else {
            String::new()
        };
        for t in &tokens {
            // Any 16-char window of the token is enough to count as leaking it.
            let probe = &t.as_str()[10..26];
            assert!(!name.contains(probe), "token in path {name}");
            assert!(!content.contains(probe), "token in file {name}");
        }
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, if p.is_dir() { 0o700 } else { 0o600 }, "{name}");
    }
}

#[test]
fn malformed_tokens_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let good = f.create(&record(1, NOW + HOUR)).unwrap();
    std::fs::write(dir.path().join("victim"), b"keep").unwrap();
    let before: Vec<_> = walk(dir.path())
        .into_iter()
        .map(|p| {
            (
                p.clone(),
                std::fs::symlink_metadata(&p).unwrap().modified().unwrap(),
            )
        })
        .collect();
    let long = "a".repeat(65);
    let upper = good.as_str().to_uppercase();
    let bad: Vec<&str> = vec![
        "",
        "../x",
        "../../victim",
        "/etc/passwd",
        "..",
        "./",
        &long,
        &good.as_str()[..63],
        &upper,
        "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        "../../../../../../../../../../../../../../../../../../../../../..",
        "0000000000000000000000000000000000000000000000000000000000000/..",
        "ääääääääääääääääääääääääääääääää",
    ];
    for t in &bad {
        assert!(!token_is_well_formed(t), "{t:?}");
        assert_eq!(f.get(t, NOW).unwrap(), None, "{t:?}");
        assert!(!f.delete(t).unwrap(), "{t:?}");
        assert!(matches!(
            f.put(t, &record(2, NOW + HOUR)),
            Err(SessionError::MalformedToken)
        ));
        assert!(matches!(
            f.refresh(t, &record(2, NOW + HOUR)),
            Err(SessionError::MalformedToken)
        ));
        assert_eq!(f.path_for(t), None);
    }
    let after: Vec<_> = walk(dir.path())
        .into_iter()
        .map(|p| {
            (
                p.clone(),
                std::fs::symlink_metadata(&p).unwrap().modified().unwrap(),
            )
        })
        .collect();
    assert_eq!(before, after);
    assert!(f.get(good.as_str(), NOW).unwrap().is_some());
}

#[test]
fn oversized_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SessionOptions {
        fsync: false,
        max_record_bytes: 1024,
        ..SessionOptions::default()
    };
    let f = SessionFiles::open(dir.path(), opts).unwrap();
    let mut rec = record(1, NOW + HOUR);
    rec.extra
        .insert("blob".into(), serde_json::json!("x".repeat(2000)));
    assert!(f.create(&rec).unwrap_err().is_too_large());
}

#[test]
fn corrupt_session_is_quarantined_not_served_and_later_removed() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let token = f.create(&record(1, NOW + HOUR)).unwrap();
    let path = f.path_for(token.as_str()).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 7); // a torn write
    std::fs::write(&path, bytes).unwrap();
    let err = f.get(token.as_str(), NOW).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(!err.to_string().contains(token.as_str()));
    assert_eq!(f.get(token.as_str(), NOW).unwrap(), None);

    // A valid envelope around something that is not a session is quarantined as well.
    let other = f.create(&record(2, NOW + HOUR)).unwrap();
    f.store
        .put(&other.hash(), br#"{"account_id":"nope"}"#, None)
        .unwrap();
    assert!(f.get(other.as_str(), NOW).unwrap_err().is_corrupt());

    let quarantine = f.store.quarantine_dir();
    assert_eq!(std::fs::read_dir(&quarantine).unwrap().count(), 2);
    let kept = f.cleanup(crate::store::unix_ms(SystemTime::now()));
    assert_eq!(
        kept.quarantined_removed, 0,
        "kept for inspection within retention"
    );
    let later = crate::store::unix_ms(SystemTime::now())
        + f.opts.quarantine_retention.as_millis() as u64
        + 1;
    let report = f.cleanup(later);
    assert_eq!(report.quarantined_removed, 2);
    assert_eq!(std::fs::read_dir(&quarantine).unwrap().count(), 0);
}

#[test]
fn leftover_temp_file_is_never_read_and_is_removed_by_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    // A crash after the temp file was written but before the rename: the session never existed.
    let token = new_token().unwrap();
    let path = f.path_for(token.as_str()).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let temp = crate::atomic::temp_path_for(&path).unwrap();
    std::fs::write(
        &temp,
        br#"{"v":1,"sha256":"00","data":{"account_id":1,"crea"#,
    )
    .unwrap();
    assert_eq!(f.get(token.as_str(), NOW).unwrap(), None);
    let wall = crate::store::unix_ms(SystemTime::now());
    assert_eq!(
        f.cleanup(wall).temp_removed,
        0,
        "young temp files may be writes in flight"
    );
    assert!(temp.exists());
    let report = f.cleanup(wall + f.opts.temp_grace.as_millis() as u64 + 1000);
    assert_eq!(report.temp_removed, 1);
    assert_eq!(report.errors, 0);
    assert!(!temp.exists());
    assert_eq!(f.get(token.as_str(), NOW).unwrap(), None);
}

#[test]
fn cleanup_removes_expired_and_keeps_live_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let expired: Vec<_> = (0..20)
        .map(|i| f.create(&record(i, NOW - 1)).unwrap())
        .collect();
    let live: Vec<_> = (0..20)
        .map(|i| f.create(&record(i, NOW + HOUR)).unwrap())
        .collect();
    // A live session whose mtime hint is stale (e.g. a file system that ignored it): read, kept.
    let odd = f.create(&record(99, NOW + HOUR)).unwrap();
    let odd_path = f.path_for(odd.as_str()).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&odd_path)
        .unwrap()
        .set_modified(UNIX_EPOCH)
        .unwrap();
    let report = f.cleanup(NOW);
    assert_eq!(report.scanned, 41);
    assert_eq!(report.expired_removed, 20);
    assert_eq!(
        (
            report.errors,
            report.refreshed_kept,
            report.corrupt_quarantined
        ),
        (0, 0, 0)
    );
    for t in &expired {
        assert!(!f.path_for(t.as_str()).unwrap().exists());
    }
    for t in live.iter().chain([&odd]) {
        assert!(f.get(t.as_str(), NOW).unwrap().is_some());
    }
    // No aside or temp file is left behind.
    assert!(walk(f.root()).iter().all(|p| !p
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with('.')));
}

#[test]
fn cleanup_keeps_a_session_refreshed_between_check_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let tokens: HashMap<PathBuf, SessionToken> = (0..5)
        .map(|i| {
            let t = f.create(&record(i, NOW - 1)).unwrap();
            (f.path_for(t.as_str()).unwrap(), t)
        })
        .collect();
    let mut refreshed = None;
    let report = f.cleanup_with_hook(NOW, &mut |path| {
        // Another node refreshes the first candidate right after cleanup judged it expired.
        if refreshed.is_none() {
            let token = &tokens[path];
            assert!(f.refresh(token.as_str(), &record(0, NOW + HOUR)).unwrap());
            refreshed = Some(token.clone());
        }
    });
    let refreshed = refreshed.expect("the hook ran");
    assert_eq!(report.expired_removed, 4);
    assert_eq!(report.refreshed_kept, 1);
    let rec = f
        .get(refreshed.as_str(), NOW)
        .unwrap()
        .expect("the refreshed session survives");
    assert_eq!(rec.expires_at, NOW + HOUR);
}

#[test]
fn concurrent_cleanups_split_the_work_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    // The real clock: temp files (including each pass's rename-aside files) are judged by their
    // ctime against `now`, so a fake future `now` would make in-flight ones look stale.
    let now = crate::store::unix_ms(SystemTime::now());
    for i in 0..800 {
        f.create(&record(i, now - 1)).unwrap();
    }
    let live: Vec<_> = (0..100)
        .map(|i| f.create(&record(i, now + HOUR)).unwrap())
        .collect();
    let reports: Vec<CleanupReport> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2).map(|_| s.spawn(|| f.cleanup(now))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let removed: u64 = reports.iter().map(|r| r.expired_removed).sum();
    assert_eq!(removed, 800, "{reports:?}");
    assert!(
        reports
            .iter()
            .all(|r| r.errors == 0 && r.corrupt_quarantined == 0),
        "{reports:?}"
    );
    assert!(reports.iter().all(|r| r.temp_removed == 0), "{reports:?}");
    for t in &live {
        assert!(f.get(t.as_str(), now).unwrap().is_some());
    }
    let left = f.store.scan().count();
    assert_eq!(left, live.len());
}

#[test]
fn watcher_changes_map_back_to_the_session_hash() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let token = f.create(&record(1, NOW + HOUR)).unwrap();
    let rel = f
        .path_for(token.as_str())
        .unwrap()
        .strip_prefix(f.root())
        .unwrap()
        .to_path_buf();
    let change = Change {
        path: rel,
        kind: crate::watch::ChangeKind::Modified,
    };
    assert_eq!(SessionFiles::hash_of_change(&change), Some(token.hash()));
    assert_eq!(token_hash(token.as_str()), Some(token.hash()));
    let q = Change {
        path: PathBuf::from("quarantine").join(format!("{}.1.json", token.hash().as_str())),
        kind: crate::watch::ChangeKind::Created,
    };
    assert_eq!(SessionFiles::hash_of_change(&q), None);
}
