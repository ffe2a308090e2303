//! Event log tests: fixture round-trips, validation, remote dedup, cursor portability, filters.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::*;

pub(crate) const FIXTURES: [(&str, &[u8]); 4] = [
    (
        "patchset-created",
        include_bytes!("../../../fixtures/events/patchset-created.json"),
    ),
    (
        "comment-added",
        include_bytes!("../../../fixtures/events/comment-added.json"),
    ),
    (
        "ref-updated",
        include_bytes!("../../../fixtures/events/ref-updated.json"),
    ),
    (
        "change-merged",
        include_bytes!("../../../fixtures/events/change-merged.json"),
    ),
];

/// A clock tests move by hand (milliseconds).
pub(crate) fn manual_clock(start_ms: u64) -> (Clock, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(start_ms));
    let c = now.clone();
    (Clock::from_fn(move || c.load(Ordering::SeqCst)), now)
}

pub(crate) fn open(dir: &Path, id: &str) -> EventLog {
    EventLog::open(dir, EventLogOptions::new(id)).expect("open event log")
}

pub(crate) fn ev(ty: &str, created: u64, n: u64) -> Vec<u8> {
    format!(r#"{{"type":"{ty}","eventCreatedOn":{created},"n":{n}}}"#).into_bytes()
}

/// Reads pages of `page` until caught up; returns the events and the final cursor.
pub(crate) fn read_all(
    log: &EventLog,
    from: StartPoint,
    filter: &TypeFilter,
    page: usize,
) -> (Vec<(EventId, Bytes)>, Cursor) {
    let mut from = from;
    let mut out = Vec::new();
    loop {
        let p = log.read(&from, filter, page).expect("read");
        out.extend(p.events);
        from = StartPoint::Cursor(p.next.clone());
        if p.caught_up {
            return (out, p.next);
        }
    }
}

pub(crate) fn ids(events: &[(EventId, Bytes)]) -> Vec<String> {
    events.iter().map(|(id, _)| id.to_string()).collect()
}

#[tokio::test]
async fn fixtures_round_trip_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), "node-a");
    let mut expected = Vec::new();
    for (name, bytes) in FIXTURES {
        let stored = log.append_local_event(bytes).await.unwrap();
        let had_id = serde_json::from_slice::<Value>(bytes)
            .unwrap()
            .get("instanceId")
            .is_some();
        if had_id {
            assert_eq!(
                &stored.bytes[..],
                bytes,
                "{name}: an event with an instanceId is kept as is"
            );
        } else {
            let text = std::str::from_utf8(bytes).unwrap();
            let at = text[..text.rfind('}').unwrap()].trim_end().len();
            let want = format!("{},\"instanceId\":\"node-a\"{}", &text[..at], &text[at..]);
            assert_eq!(
                std::str::from_utf8(&stored.bytes).unwrap(),
                want,
                "{name}: only instanceId is added"
            );
            let mut orig: Value = serde_json::from_slice(bytes).unwrap();
            orig["instanceId"] = "node-a".into();
            assert_eq!(
                serde_json::from_slice::<Value>(&stored.bytes).unwrap(),
                orig
            );
        }
        expected.push(stored.bytes.clone());
    }
    // A remote event is stored exactly as received, instanceId or not.
    let (_, ref_updated) = FIXTURES[2];
    assert_eq!(
        log.append_remote("node-b", 1, ref_updated).await.unwrap(),
        AppendOutcome::Appended
    );
    expected.push(Bytes::from_static(ref_updated));
    let check = |log: &EventLog| {
        let (events, _) = read_all(log, StartPoint::Beginning, &TypeFilter::all(), 2);
        let got: Vec<Bytes> = events.into_iter().map(|(_, b)| b).collect();
        assert_eq!(got, expected);
    };
    check(&log);
    log.shutdown().await.unwrap();
    check(&open(dir.path(), "node-a"));
}

#[tokio::test]
async fn invalid_events_are_refused_and_use_no_seq() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = EventLogOptions::new("node-a");
    opts.max_event_bytes = 200;
    let log = EventLog::open(dir.path(), opts).unwrap();
    let cases: [(&[u8], &str); 5] = [
        (br#"{"eventCreatedOn":1}"#, "`type`"),
        (br#"{"type":"ref-updated"}"#, "`eventCreatedOn`"),
        (b"not json at all", "not valid JSON"),
        (b"[1,2,3]", "JSON object"),
        (br#""a string""#, "JSON object"),
    ];
    for (body, want) in cases {
        match log.append_local(body).await {
            Err(EventError::BadEvent(m)) => {
                assert!(m.contains(want), "{m:?} should mention {want}")
            }
            other => panic!(
                "{:?}: expected BadEvent, got {other:?}",
                String::from_utf8_lossy(body)
            ),
        }
    }
    let big = ev("x", 1, 0)
        .into_iter()
        .chain(std::iter::repeat_n(b' ', 300))
        .collect::<Vec<u8>>();
    assert!(matches!(
        log.append_local(&big).await,
        Err(EventError::TooLarge { limit: 200, .. })
    ));
    assert!(matches!(
        log.append_remote("node-b", 1, b"{}").await,
        Err(EventError::BadEvent(_))
    ));
    assert!(matches!(
        log.append_remote("bad id", 1, &ev("x", 1, 0)).await,
        Err(EventError::BadOrigin(_))
    ));
    assert!(matches!(
        log.append_remote("node-b", 0, &ev("x", 1, 0)).await,
        Err(EventError::BadOrigin(_))
    ));
    assert_eq!(log.stats().events, 0);
    assert_eq!(log.append_local(&ev("x", 1, 0)).await.unwrap().seq, 1);
}

#[tokio::test]
async fn remote_appends_are_idempotent_and_ordered_per_origin() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), "node-a");
    let r = |seq| ev("ref-updated", 100, seq);
    use AppendOutcome::*;
    assert_eq!(
        log.append_remote("node-b", 1, &r(1)).await.unwrap(),
        Appended
    );
    assert_eq!(
        log.append_remote("node-b", 2, &r(2)).await.unwrap(),
        Appended
    );
    assert_eq!(
        log.append_remote("node-b", 2, &r(2)).await.unwrap(),
        Duplicate
    );
    assert_eq!(
        log.append_remote("node-b", 1, &r(1)).await.unwrap(),
        Duplicate
    );
    assert_eq!(
        log.append_remote("node-b", 5, &r(5)).await.unwrap(),
        Appended,
        "a gap is accepted"
    );
    assert_eq!(
        log.append_remote("node-b", 4, &r(4)).await.unwrap(),
        Duplicate,
        "behind the last seq"
    );
    assert_eq!(
        log.append_remote("node-c", 1, &r(1)).await.unwrap(),
        Appended
    );
    // Concurrent deliveries of the same message: exactly one is appended.
    let body = r(2);
    let outcomes =
        futures_util::future::join_all((0..8).map(|_| log.append_remote("node-c", 2, &body))).await;
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Ok(Appended)))
            .count(),
        1
    );
    let (events, _) = read_all(&log, StartPoint::Beginning, &TypeFilter::all(), 100);
    assert_eq!(
        ids(&events),
        ["node-b/1", "node-b/2", "node-b/5", "node-c/1", "node-c/2"]
    );
    assert_eq!(
        log.last_seq_by_origin(),
        [("node-b".to_string(), 5), ("node-c".to_string(), 2)].into()
    );
    let tail = log.read_origin("node-b", 1, 10).unwrap();
    assert_eq!(ids(&tail), ["node-b/2", "node-b/5"]);
    assert_eq!(&tail[0].1[..], &r(2)[..]);
    // This node's own local seq is unaffected by other origins.
    assert_eq!(log.append_local(&r(9)).await.unwrap().seq, 1);
    // This node's own history restored from a peer: the local seq continues above it.
    assert_eq!(
        log.append_remote("node-a", 5, &r(5)).await.unwrap(),
        Appended
    );
    assert_eq!(
        log.append_remote("node-a", 1, &r(1)).await.unwrap(),
        Duplicate
    );
    assert_eq!(log.append_local(&r(6)).await.unwrap().seq, 6);
}

/// Feeds `log` the events of `order` (origin, seq, created_on).
async fn feed(log: &EventLog, order: &[(&str, u64, u64)]) {
    for &(origin, seq, created) in order {
        let out = log
            .append_remote(origin, seq, &ev("patchset-created", created, seq))
            .await
            .unwrap();
        assert_eq!(out, AppendOutcome::Appended);
    }
}

#[tokio::test]
async fn a_cursor_from_one_log_resumes_on_another_with_each_event_once() {
    let all: Vec<(&str, u64, u64)> = (1..=40)
        .flat_map(|i| [("node-a", i, 1000 + i), ("node-b", i, 1000 + i)])
        .collect();
    // Log Y gets the same events in another interleaving: b runs ten events ahead of a.
    let mut other: Vec<(&str, u64, u64)> = (1..=10).map(|i| ("node-b", i, 1000 + i)).collect();
    for i in 1..=30 {
        other.extend([("node-a", i, 1000 + i), ("node-b", i + 10, 1010 + i)]);
    }
    other.extend((31..=40).map(|i| ("node-a", i, 1000 + i)));
    let (dx, dy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (x, y) = (open(dx.path(), "node-x"), open(dy.path(), "node-y"));
    feed(&x, &all).await;
    feed(&y, &other).await;
    let want: std::collections::BTreeSet<String> =
        all.iter().map(|(o, s, _)| format!("{o}/{s}")).collect();
    for cut in [0, 1, 7, 33, 79, 80] {
        let page = x
            .read(&StartPoint::Beginning, &TypeFilter::all(), cut.max(1))
            .unwrap();
        let first: Vec<_> = if cut == 0 {
            Vec::new()
        } else {
            page.events.clone()
        };
        let cursor = if cut == 0 {
            Cursor::beginning()
        } else {
            page.next.clone()
        };
        // The cursor travels as text, like an SSE id.
        let cursor = Cursor::parse(&cursor.encode()).unwrap();
        let (rest, _) = read_all(&y, StartPoint::Cursor(cursor), &TypeFilter::all(), 9);
        let mut seen = ids(&first);
        seen.extend(ids(&rest));
        let unique: std::collections::BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), unique.len(), "cut {cut}: an event was repeated");
        assert_eq!(unique, want, "cut {cut}: an event was lost");
    }
}

#[tokio::test]
async fn now_means_new_events_only_on_whichever_node_the_client_moves_to() {
    let (clock, now) = manual_clock(2_000_000);
    let (dx, dy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mk = |d: &Path, id: &str| {
        let mut o = EventLogOptions::new(id);
        o.clock = clock.clone();
        EventLog::open(d, o).unwrap()
    };
    let (x, y) = (mk(dx.path(), "node-x"), mk(dy.path(), "node-y"));
    // X is ahead on a, Y is ahead on b.
    let a: Vec<_> = (1..=30).map(|i| ("node-a", i, 1000)).collect();
    let b: Vec<_> = (1..=28).map(|i| ("node-b", i, 1000)).collect();
    feed(&x, &a[..30]).await;
    feed(&x, &b[..20]).await;
    feed(&y, &a[..25]).await;
    feed(&y, &b[..28]).await;
    // The client connects to X with no cursor at t = 2000 s: X knows a up to 30 and b up to 20.
    let page = x.read(&StartPoint::Now, &TypeFilter::all(), 100).unwrap();
    assert!(page.events.is_empty() && page.caught_up);
    let cursor = page.next;
    assert_eq!(cursor.encode(), "v1~2000~node-a~30~node-b~20~node-x~0");
    // A new origin c appears: c/1 was created before the client connected, c/2 after, c/3 with a
    // skewed clock but after c/2; the rule for unseen origins is time, then seq order.
    now.store(2_100_000, Ordering::SeqCst);
    feed(
        &y,
        &[
            ("node-c", 1, 1999),
            ("node-c", 2, 2050),
            ("node-c", 3, 1500),
        ],
    )
    .await;
    let (events, cursor) = read_all(&y, StartPoint::Cursor(cursor), &TypeFilter::all(), 2);
    let b_new: Vec<String> = (21..=28).map(|i| format!("node-b/{i}")).collect();
    let mut want = b_new.clone();
    want.extend(["node-c/2".to_string(), "node-c/3".to_string()]);
    assert_eq!(ids(&events), want);
    feed(&y, &a[25..]).await;
    feed(&y, &[("node-a", 31, 2100)]).await;
    let (events, _) = read_all(&y, StartPoint::Cursor(cursor), &TypeFilter::all(), 100);
    assert_eq!(
        ids(&events),
        ["node-a/31"],
        "a/26..30 were already known on X when the client started"
    );
}

#[tokio::test]
async fn type_filter_skips_other_types_and_the_cursor_moves_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), "node-a");
    for (i, (_, bytes)) in FIXTURES.iter().cycle().take(20).enumerate() {
        let id = log.append_local(bytes).await.unwrap();
        assert_eq!(id.seq, i as u64 + 1);
    }
    let filter = TypeFilter::only(["comment-added", "change-merged"]);
    let page = log.read(&StartPoint::Beginning, &filter, 3).unwrap();
    assert_eq!(ids(&page.events), ["node-a/2", "node-a/4", "node-a/6"]);
    assert_eq!(page.next.seq("node-a"), Some(6));
    let (rest, end) = read_all(&log, StartPoint::Cursor(page.next), &filter, 3);
    assert_eq!(rest.len(), 7);
    assert!(rest.iter().all(|(id, _)| id.seq % 2 == 0));
    assert_eq!(end.seq("node-a"), Some(20), "skipped types count as read");
    let since = log
        .read(
            &StartPoint::SinceEpochSeconds(1686214800),
            &TypeFilter::all(),
            100,
        )
        .unwrap();
    assert_eq!(
        since.events.first().map(|(id, _)| id.seq),
        Some(4),
        "first event created at or after the time"
    );
    assert_eq!(since.events.len(), 17);
}

/// What a caught-up reader takes from memory after its position is what a read of the log
/// from its cursor gives, in the same order; past the ring's reach it is told to read the log.
#[tokio::test]
async fn recent_records_from_memory_match_a_read_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), "node-a");
    log.append_local(&ev("x", 100, 0)).await.unwrap();
    let first = log.read(&StartPoint::Now, &TypeFilter::all(), 10).unwrap();
    assert!(first.caught_up && first.events.is_empty());
    let start = first.next.clone();
    for i in 1..=20u64 {
        if i % 3 == 0 {
            log.append_remote("node-b", i, &ev("y", 100, i))
                .await
                .unwrap();
        } else {
            log.append_local(&ev("x", 100, i)).await.unwrap();
        }
    }
    let (want, want_cursor) = read_all(
        &log,
        StartPoint::Cursor(start.clone()),
        &TypeFilter::all(),
        7,
    );
    let mut cursor = start;
    let mut got = Vec::new();
    let mut position = first.position;
    loop {
        let r = log.read_recent(position, 6, |e| {
            if cursor.visit(e.origin(), e.seq(), e.created_on()) {
                got.push((e.origin().to_owned(), e.seq(), e.sse_data().to_vec()));
            }
            true
        });
        match r {
            Recent::Read { position: p, more } => {
                position = p;
                if !more {
                    break;
                }
            }
            Recent::Behind => panic!("the ring holds 20 records"),
        }
    }
    assert_eq!(cursor, want_cursor);
    assert_eq!(got.len(), want.len());
    for ((o, s, data), (id, body)) in got.iter().zip(&want) {
        assert_eq!((o.as_str(), *s), (&*id.origin, id.seq));
        let mut lines = Vec::new();
        sse_data_lines(body, &mut lines);
        assert_eq!(data, &lines);
    }
    assert_eq!(
        log.read_recent(0, 1, |_| true),
        Recent::Read {
            position: 1,
            more: true
        }
    );
}
