//! Store tests: the version rule, visibility, crash durability, limits, timing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::tests_fixtures::{changes, eventually, fast_opts, open, Rng};
use super::{ExportedDoc, IndexError, IndexOptions, Kind, WriteOutcome};

const C: Kind = Kind::Changes;

pub(super) fn doc(v: u64) -> serde_json::Value {
    json!({"subject": format!("version {v}"), "status": "NEW", "project": "p", "updated": 1_700_000_000 + v})
}

#[tokio::test]
async fn version_rule_on_every_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), fast_opts());
    let stale = |v| Ok(WriteOutcome::Stale { stored_version: v });
    assert_eq!(
        store.upsert(C, "a", 2, doc(2)).await.ok(),
        Some(WriteOutcome::Applied)
    );
    // Older after newer, and equal, are ignored, at once (no commit in between).
    assert_eq!(
        store
            .upsert(C, "a", 1, doc(1))
            .await
            .map_err(|e| e.to_string()),
        stale(2)
    );
    assert_eq!(
        store
            .upsert(C, "a", 2, doc(99))
            .await
            .map_err(|e| e.to_string()),
        stale(2)
    );
    assert_eq!(store.get(C, "a").expect("get").expect("live").doc, doc(2));
    // An older delete is ignored; a newer one wins and leaves a tombstone.
    assert_eq!(
        store.delete(C, "a", 1).await.map_err(|e| e.to_string()),
        stale(2)
    );
    assert_eq!(
        store.delete(C, "a", 3).await.ok(),
        Some(WriteOutcome::Applied)
    );
    assert_eq!(store.get(C, "a").expect("get"), None);
    // A write older than (or equal to) the tombstone stays deleted.
    assert_eq!(
        store
            .upsert(C, "a", 2, doc(2))
            .await
            .map_err(|e| e.to_string()),
        stale(3)
    );
    assert_eq!(
        store
            .upsert(C, "a", 3, doc(3))
            .await
            .map_err(|e| e.to_string()),
        stale(3)
    );
    assert_eq!(store.get(C, "a").expect("get"), None);
    // A delete of an unknown id still leaves a tombstone against late older writes.
    assert_eq!(
        store.delete(C, "b", 5).await.ok(),
        Some(WriteOutcome::Applied)
    );
    assert_eq!(
        store
            .upsert(C, "b", 4, doc(4))
            .await
            .map_err(|e| e.to_string()),
        stale(5)
    );
    // The same through a batch, reordered and repeated as a peer might deliver it.
    let ex = |v, deleted| ExportedDoc {
        id: "c".into(),
        version: v,
        deleted,
        doc: (!deleted).then(|| doc(v)),
        deleted_at: None,
    };
    let outcomes = store
        .apply(
            C,
            vec![
                ex(4, false),
                ex(2, false),
                ex(3, true),
                ex(4, false),
                ex(5, false),
            ],
        )
        .await
        .expect("apply");
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Applied,
            WriteOutcome::Stale { stored_version: 4 },
            WriteOutcome::Stale { stored_version: 4 },
            WriteOutcome::Stale { stored_version: 4 },
            WriteOutcome::Applied
        ]
    );
    // The rule survives a restart: versions and tombstones come back from the index.
    store.shutdown().await.expect("shutdown");
    let store = open(dir.path(), fast_opts());
    assert_eq!(
        store
            .upsert(C, "a", 3, doc(3))
            .await
            .map_err(|e| e.to_string()),
        stale(3)
    );
    assert_eq!(
        store
            .upsert(C, "c", 5, doc(5))
            .await
            .map_err(|e| e.to_string()),
        stale(5)
    );
    assert_eq!(
        store.upsert(C, "a", 4, doc(4)).await.ok(),
        Some(WriteOutcome::Applied)
    );
    assert_eq!(store.get(C, "a").expect("get").expect("live").version, 4);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_roll_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path(), fast_opts()));
    let mut versions: Vec<u64> = (1..=400).collect();
    let mut r = Rng::new(7);
    for i in (1..versions.len()).rev() {
        versions.swap(i, r.below(i as u64 + 1) as usize);
    }
    let mut tasks = Vec::new();
    for chunk in versions.chunks(50) {
        let (store, chunk) = (store.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut applied = 0;
            for v in chunk {
                let w = if v % 7 == 0 {
                    store.delete(C, "x", v).await
                } else {
                    store.upsert(C, "x", v, doc(v)).await
                };
                applied += u32::from(w.expect("write") == WriteOutcome::Applied);
            }
            applied
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.expect("task");
    }
    assert!(applied >= 1);
    assert_eq!(store.get(C, "x").expect("get").expect("live").version, 400);
    store.commit().await.expect("commit");
    let hits = store.search(C, "id:x", 10).expect("search");
    assert_eq!((hits.total, hits.results[0].version), (1, 400));
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_write_is_visible_to_get_at_once_and_to_search_within_the_refresh_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refresh = Duration::from_millis(200);
    let store = open(
        dir.path(),
        IndexOptions {
            refresh_interval: refresh,
            ..IndexOptions::default()
        },
    );
    // Warm up so the writer knows its commit cost.
    store.upsert(C, "warm", 1, doc(1)).await.expect("upsert");
    eventually(Duration::from_secs(5), "warm-up visible", || {
        store.search(C, "id:warm", 1).is_ok_and(|r| r.total == 1)
    })
    .await;
    for round in 0..3u64 {
        let id = format!("v{round}");
        let started = Instant::now();
        store.upsert(C, &id, 1, doc(round)).await.expect("upsert");
        assert_eq!(
            store
                .get(C, &id)
                .expect("get")
                .expect("get sees it at once")
                .doc,
            doc(round)
        );
        let q = format!("id:{id} status:open");
        eventually(Duration::from_secs(5), "visible to search", || {
            store.search(C, &q, 1).is_ok_and(|r| r.total == 1)
        })
        .await;
        let took = started.elapsed();
        println!("round {round}: visible to search after {took:?}");
        // The interval plus scheduling slack of a loaded test machine.
        assert!(
            took < refresh + Duration::from_millis(300),
            "visible after {took:?}"
        );
    }
    assert!(store.stats().commits >= 1);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn accepted_writes_survive_a_crash_before_the_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = IndexOptions {
        refresh_interval: Duration::from_millis(500),
        ..IndexOptions::default()
    };
    let store = open(dir.path(), slow.clone());
    store.upsert(C, "kept", 1, doc(1)).await.expect("upsert");
    store.commit().await.expect("commit");
    for i in 0..20u64 {
        store
            .upsert(C, &format!("d{i}"), 1, doc(i))
            .await
            .expect("upsert");
    }
    store.upsert(C, "kept", 2, doc(2)).await.expect("upsert");
    store.delete(C, "d3", 2).await.expect("delete");
    assert!(
        store.stats().journal_bytes > 0,
        "acknowledged writes are in the journal"
    );
    store.abort();
    let store = open(dir.path(), slow);
    for i in (0..20u64).filter(|i| *i != 3) {
        assert_eq!(
            store
                .get(C, &format!("d{i}"))
                .expect("get")
                .expect("back after a crash")
                .doc,
            doc(i)
        );
    }
    assert_eq!(store.get(C, "d3").expect("get"), None);
    assert_eq!(store.get(C, "kept").expect("get").expect("kept").version, 2);
    assert_eq!(
        store.search(C, "status:open", 100).expect("search").total,
        20,
        "replayed and committed at open"
    );
    assert_eq!(
        store.upsert(C, "d3", 1, doc(1)).await.ok(),
        Some(WriteOutcome::Stale { stored_version: 2 })
    );
    assert_eq!(
        store.stats().journal_bytes,
        0,
        "journal emptied by the commit at open"
    );
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn limits_and_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = IndexOptions {
        max_doc_bytes: 1000,
        ..fast_opts()
    };
    let store = open(dir.path(), opts);
    let big = json!({"subject": "x".repeat(2000)});
    match store.upsert(C, "big", 1, big).await {
        Err(IndexError::DocumentTooLarge {
            size, max: 1000, ..
        }) => assert!(size > 2000),
        other => panic!("expected too large, got {other:?}"),
    }
    assert_eq!(store.get(C, "big").expect("get"), None);
    assert!(matches!(
        store.upsert(C, "arr", 1, json!([1])).await,
        Err(IndexError::BadDocument { .. })
    ));
    assert!(matches!(
        store.upsert(C, "", 1, doc(1)).await,
        Err(IndexError::BadDocument { .. })
    ));
    assert!(matches!("widgets".parse::<Kind>(), Err(IndexError::UnknownKind(k)) if k == "widgets"));
    assert_eq!("groups".parse::<Kind>().ok(), Some(Kind::Groups));
    let too_slow = IndexOptions {
        refresh_interval: Duration::from_secs(1),
        ..IndexOptions::default()
    };
    let other = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        super::IndexStore::open(other.path(), too_slow),
        Err(IndexError::BadOptions(_))
    ));
    store.shutdown().await.expect("shutdown");
    assert!(matches!(
        store.upsert(C, "late", 1, doc(1)).await,
        Err(IndexError::WriterStopped)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_of_10k_upserts_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path(), IndexOptions::default()));
    let docs = changes();
    let n = 10_000usize;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64usize {
        let (store, docs) = (store.clone(), docs.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(64) {
                let d = docs[i % docs.len()].clone();
                store
                    .upsert(C, &format!("t{i}"), 1, d)
                    .await
                    .expect("upsert");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let upsert_time = started.elapsed();
    store.commit().await.expect("commit");
    let bulk_started = Instant::now();
    let bulk = (0..n).map(|i| (format!("b{i}"), 1u64, docs[i % docs.len()].clone()));
    let out = store.bulk_upsert(C, bulk).await.expect("bulk");
    let bulk_time = bulk_started.elapsed();
    assert_eq!(out.applied, n as u64);
    let mut lat = Vec::new();
    for i in 0..200 {
        let q = if i % 2 == 0 {
            "status:open project:tools/gerrit"
        } else {
            "owner:alice \"fix crash\""
        };
        let t = Instant::now();
        let r = store.search(C, q, 10).expect("search");
        lat.push(t.elapsed());
        assert!(r.total > 0);
    }
    lat.sort();
    let stats = store.stats();
    println!(
        "10k concurrent upserts (64 writers): {:.0}/s; bulk_upsert 10k: {:.0}/s; last commit {} µs; \
         query on {} docs p50 {:?} p99 {:?}; build profile {}",
        n as f64 / upsert_time.as_secs_f64(),
        n as f64 / bulk_time.as_secs_f64(),
        stats.last_commit_micros,
        stats.kinds[0].1.docs,
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        if cfg!(debug_assertions) { "debug" } else { "release" },
    );
    assert_eq!(stats.kinds[0].1.docs, 2 * n as u64);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn apply_each_raw_stores_the_text_given_and_refuses_bad_documents_alone() {
    use super::RawDoc;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(
        dir.path(),
        IndexOptions {
            max_doc_bytes: 200,
            ..fast_opts()
        },
    );
    let raw = |id: &str, version, source: Option<&str>| RawDoc {
        id: id.into(),
        version,
        deleted: false,
        source: source.map(str::to_owned),
    };
    let big = format!(r#"{{"subject": "{}"}}"#, "x".repeat(300));
    let results = store
        .apply_each_raw(
            C,
            vec![
                raw(
                    "a",
                    1,
                    Some(r#"{"subject": "hello world", "status": "NEW"}"#),
                ),
                raw("b", 1, Some("[1, 2]")),
                raw("c", 1, Some(&big)),
                raw("d", 1, None),
                raw("a", 1, Some(r#"{"subject": "older"}"#)),
                RawDoc {
                    deleted: true,
                    ..raw("e", 4, None)
                },
            ],
        )
        .await
        .expect("apply");
    let shown: Vec<String> = results
        .iter()
        .map(|r| match r {
            Ok(o) => format!("{o:?}"),
            Err(e) => e.to_string(),
        })
        .collect();
    assert_eq!(shown[0], "Applied");
    assert!(shown[1].contains("must be a JSON object"), "{}", shown[1]);
    assert!(shown[2].contains("over the limit"), "{}", shown[2]);
    assert!(shown[3].contains("needs a document"), "{}", shown[3]);
    assert_eq!(shown[4], "Stale { stored_version: 1 }");
    assert_eq!(shown[5], "Applied");
    assert_eq!(
        store.get(C, "a").expect("get").expect("live").doc,
        json!({"subject": "hello world", "status": "NEW"})
    );
    store.commit().await.expect("commit");
    assert_eq!(store.search(C, "hello", 10).expect("search").total, 1);
    assert_eq!(store.get(C, "e").expect("get"), None);
}

/// Issue 13: a version above 2^53 − 1 is refused on every write path (it could never be
/// superseded by a master using JSON numbers); 2^53 − 1 itself is fine.
#[tokio::test]
async fn versions_above_the_json_safe_range_are_refused_on_every_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), fast_opts());
    let max = super::store::MAX_VERSION;
    assert_eq!(max, (1 << 53) - 1);
    assert_eq!(
        store.upsert(C, "a", max, doc(1)).await.ok(),
        Some(WriteOutcome::Applied)
    );
    let too_big = |r: super::Result<WriteOutcome>| matches!(r, Err(IndexError::BadDocument { ref reason, .. }) if reason.contains("2^53"));
    assert!(too_big(store.upsert(C, "b", max + 1, doc(1)).await));
    assert!(too_big(store.delete(C, "a", u64::MAX).await));
    let exported = |deleted| ExportedDoc {
        id: "c".into(),
        version: u64::MAX,
        deleted,
        doc: (!deleted).then(|| doc(1)),
        deleted_at: None,
    };
    assert!(store.apply(C, vec![exported(false)]).await.is_err());
    assert!(store.apply(C, vec![exported(true)]).await.is_err());
    assert!(store.get(C, "b").expect("get").is_none());
    assert_eq!(store.get(C, "a").expect("get").expect("live").version, max);
}
