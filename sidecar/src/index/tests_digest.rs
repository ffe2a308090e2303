//! Anti-entropy tests: digests and bucket entries converge whatever the order of writes;
//! tombstones take part and are compacted after their TTL.

use std::time::Duration;

use super::tests_fixtures::{eventually, fast_opts, open, Rng};
use super::tests_store::doc;
use super::{IndexOptions, Kind, WriteOutcome};

const C: Kind = Kind::Changes;

#[tokio::test]
async fn digests_agree_after_the_same_writes_in_any_order_and_find_a_difference() {
    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (a, b) = (open(da.path(), fast_opts()), open(db.path(), fast_opts()));
    let mut writes: Vec<(String, u64, bool)> = Vec::new();
    for i in 0..300u64 {
        writes.push((format!("c{}", i % 120), i, i % 11 == 0));
    }
    let mut shuffled = writes.clone();
    let mut r = Rng::new(99);
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, r.below(i as u64 + 1) as usize);
    }
    for (store, ws) in [(&a, &writes), (&b, &shuffled)] {
        for (id, v, del) in ws {
            if *del {
                store.delete(C, id, *v).await.expect("delete");
            } else {
                store.upsert(C, id, *v, doc(*v)).await.expect("upsert");
            }
        }
    }
    assert_eq!(a.digest(C, 0..=255), b.digest(C, 0..=255));
    assert_eq!(a.digest(C, 0..=255).count, 120);
    assert!(a.stats().kinds[0].1.tombstones > 0);
    for bucket in 0..=255u8 {
        assert_eq!(a.entries(C, bucket), b.entries(C, bucket));
    }
    // One more write on B: exactly one bucket differs, and its entries show the id.
    b.upsert(C, "c7", 1000, doc(1000)).await.expect("upsert");
    let (ga, gb) = (a.digest(C, 0..=255), b.digest(C, 0..=255));
    assert_ne!(ga.hash, gb.hash);
    let differing: Vec<u8> = ga
        .buckets
        .iter()
        .zip(&gb.buckets)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.bucket)
        .collect();
    assert_eq!(differing.len(), 1);
    assert!(b
        .entries(C, differing[0])
        .contains(&("c7".to_string(), 1000, false)));
    // Pulling what differs makes them equal again; an export carries tombstones too.
    let deleted_id = writes
        .iter()
        .rev()
        .find(|w| w.2)
        .map(|w| w.0.clone())
        .expect("a delete");
    assert!(
        writes
            .iter()
            .rev()
            .find(|w| w.0 == deleted_id)
            .is_some_and(|w| w.2),
        "its last write is the delete"
    );
    let exported = b
        .export(C, &["c7".into(), deleted_id.clone(), "unknown".into()])
        .expect("export");
    assert_eq!(exported.len(), 2);
    assert!(exported
        .iter()
        .any(|e| e.id == deleted_id && e.deleted && e.doc.is_none()));
    a.apply(C, exported).await.expect("apply");
    assert_eq!(a.digest(C, 0..=255), b.digest(C, 0..=255));
    // Digests are rebuilt from the index at open.
    let before = b.digest(C, 0..=255);
    b.shutdown().await.expect("shutdown");
    let b = open(db.path(), fast_opts());
    assert_eq!(b.digest(C, 0..=255), before);
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn tombstones_are_compacted_after_their_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = IndexOptions {
        tombstone_ttl: Duration::from_millis(100),
        ..fast_opts()
    };
    let store = open(dir.path(), opts);
    store.upsert(C, "t", 5, doc(5)).await.expect("upsert");
    store.delete(C, "t", 6).await.expect("delete");
    assert_eq!(store.stats().kinds[0].1.tombstones, 1);
    eventually(Duration::from_secs(5), "tombstone compacted", || {
        store.stats().kinds[0].1.tombstones == 0
    })
    .await;
    assert_eq!(store.digest(C, 0..=255).count, 0);
    // Past the TTL the id is forgotten: a late write is accepted again (documented).
    assert_eq!(
        store.upsert(C, "t", 1, doc(1)).await.ok(),
        Some(WriteOutcome::Applied)
    );
    store.shutdown().await.expect("shutdown");
}
