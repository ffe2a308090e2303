//! The local mutations without HTTP: applied here, queued for the peer, answered.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::lifecycle::Scope;
use bytes::Bytes;

use super::*;
use crate::config::{CacheConfig, CacheLimits, WebSessionConfig};
use crate::index::IndexOptions;
use crate::peers::outbox::{OutboxOptions, Queue};
use crate::wire::{decode_message, encode_batch, Batch};

struct Fixture {
    local: Local,
    queue: Arc<Queue>,
    _dir: tempfile::TempDir,
}

async fn fixture(index_synchronize: bool, relay: bool) -> (Fixture, Scope) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let caches = Arc::new(Caches::new(CacheConfig {
        synchronize: true,
        patterns: Vec::new(),
        defaults: CacheLimits {
            max_entries: 100,
            expire_after_write: None,
        },
        caches: BTreeMap::new(),
    }));
    let index =
        Arc::new(IndexStore::open(&dir.path().join("index"), IndexOptions::default()).unwrap());
    let events = Arc::new(
        EventLog::open(
            dir.path().join("events"),
            crate::events::EventLogOptions::new("node-a"),
        )
        .unwrap(),
    );
    let sessions = Arc::new(
        Sessions::open(
            &dir.path().join("shared"),
            WebSessionConfig {
                synchronize: true,
                cleanup_interval: Duration::from_secs(3600),
                max_age: Duration::from_secs(60),
                batched_sync: None,
            },
            Arc::new(crate::shared_dir::SharedDir::new(
                4,
                Duration::from_secs(5),
                metrics.clone(),
            )),
            metrics.clone(),
        )
        .unwrap(),
    );
    let outbox = Arc::new(Outbox::open(dir.path(), OutboxOptions::default()).unwrap());
    let queue = outbox.add_peer("http://peer/").unwrap();
    let stop = Scope::root();
    let event_relay =
        relay.then(|| EventRelay::start(events.clone(), outbox.clone(), dir.path(), &stop));
    let local = Local {
        caches,
        index,
        index_synchronize,
        events,
        event_relay,
        sessions,
        outbox,
        metrics,
    };
    (
        Fixture {
            local,
            queue,
            _dir: dir,
        },
        stop,
    )
}

/// The messages queued for the peer, as the peer decodes them: (seq, kind, the message's
/// bytes again).
fn queued(q: &Queue) -> Vec<(u64, PeerMessage<'static>)> {
    let peeked = q.peek(1000, 16 << 20).unwrap();
    let body = encode_batch(
        "node-a",
        peeked.records.iter().map(|r| (r.seq, r.payload.as_slice())),
    );
    let body: &'static [u8] = Box::leak(body.into_boxed_slice());
    let batch: Batch<'static> = serde_json::from_slice(body).unwrap();
    batch
        .messages
        .iter()
        .map(|raw| {
            let env = decode_message(raw.get()).unwrap();
            (env.seq, env.body.unwrap())
        })
        .collect()
}

#[tokio::test]
async fn an_eviction_applies_here_then_is_queued_for_every_peer() {
    let (f, _stop) = fixture(true, false).await;
    f.local
        .caches
        .put("projects", "p1", Bytes::from_static(b"1"))
        .unwrap();
    let (evicted, accepted) = f
        .local
        .evict("projects", &["p1".into(), "p2".into()])
        .await
        .unwrap();
    assert_eq!(evicted, 1);
    assert!(f.local.caches.get("projects", "p1").is_none());
    assert!(accepted.forwarded);
    let q = queued(&f.queue);
    assert_eq!(q.len(), 1);
    assert_eq!(Some(q[0].0), accepted.seq);
    match &q[0].1 {
        PeerMessage::Eviction { cache, keys } => {
            assert_eq!(cache, "projects");
            assert_eq!(keys, &["p1", "p2"]);
        }
        other => panic!("not an eviction: {other:?}"),
    }
    // A cache that Gerrit does not forward, and a flush of one that it does.
    let (_, a) = f.local.evict("accounts", &["x".into()]).await.unwrap();
    assert_eq!(a, Accepted::LOCAL_ONLY);
    let a = f.local.flush("groups").await.unwrap();
    assert!(a.forwarded && a.seq > accepted.seq);
    assert!(matches!(queued(&f.queue)[1].1, PeerMessage::Flush { .. }));
    assert!(matches!(
        f.local.flush("../x").await,
        Err(LocalError::Cache(CacheError::BadName(_)))
    ));
    assert_eq!(
        f.queue.stats().pending,
        2,
        "nothing queued for a refused request"
    );
}

fn doc(id: &str, version: u64) -> LocalIndexDoc {
    let text = serde_json::json!({"project": "p", "subject": id}).to_string();
    LocalIndexDoc {
        id: id.into(),
        version,
        deleted: false,
        doc: Some(RawValue::from_string(text).expect("JSON")),
    }
}

#[tokio::test]
async fn only_index_writes_applied_here_are_queued() {
    let (f, _stop) = fixture(true, false).await;
    let (outcomes, a) = f
        .local
        .index_write(Kind::Changes, vec![doc("p~1", 2), doc("p~2", 1)])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Applied; 2]);
    assert!(a.forwarded && a.seq.is_some());
    // One stale (version 1 < 2), one applied delete.
    let del = LocalIndexDoc {
        deleted: true,
        doc: None,
        ..doc("p~2", 3)
    };
    let (outcomes, a) = f
        .local
        .index_write(Kind::Changes, vec![doc("p~1", 1), del])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Stale { stored_version: 2 },
            WriteOutcome::Applied
        ]
    );
    let q = queued(&f.queue);
    assert_eq!(q.len(), 3);
    assert_eq!(Some(q[2].0), a.seq);
    match &q[2].1 {
        PeerMessage::Index {
            index,
            id,
            version,
            deleted,
            doc,
        } => assert_eq!(
            (*index, id.as_ref(), *version, *deleted, doc.is_none()),
            (Kind::Changes, "p~2", 3, true, true)
        ),
        other => panic!("not an index message: {other:?}"),
    }
    // `[index] synchronize = false`: applied here only.
    let (g, _stop) = fixture(false, false).await;
    let (_, a) = g
        .local
        .index_write(Kind::Changes, vec![doc("p~1", 1)])
        .await
        .unwrap();
    assert_eq!(a, Accepted::LOCAL_ONLY);
    assert_eq!(g.queue.stats().pending, 0);
}

#[tokio::test]
async fn a_published_event_is_answered_once_queued_in_seq_order() {
    let (f, stop) = fixture(true, true).await;
    let (e1, a1) = f
        .local
        .publish_event(br#"{"type":"ref-updated","eventCreatedOn":1}"#)
        .await
        .unwrap();
    let (e2, _) = f
        .local
        .publish_event(br#"{"type":"ref-updated","eventCreatedOn":2}"#)
        .await
        .unwrap();
    assert!(a1.forwarded);
    let seqs: Vec<u64> = queued(&f.queue)
        .into_iter()
        .map(|(_, m)| match m {
            PeerMessage::Event { event_seq, .. } => event_seq,
            other => panic!("not an event: {other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![e1.id.seq, e2.id.seq]);
    assert!(matches!(
        f.local.publish_event(b"not json").await,
        Err(LocalError::Events(EventError::BadEvent(_)))
    ));
    stop.cancel();
    // Without a relay (`[event] synchronize = false`) the event stays here.
    let (g, _stop) = fixture(true, false).await;
    let (_, a) = g
        .local
        .publish_event(br#"{"type":"t","eventCreatedOn":1}"#)
        .await
        .unwrap();
    assert_eq!(a, Accepted::LOCAL_ONLY);
    assert_eq!(g.queue.stats().pending, 0);
}

#[tokio::test]
async fn a_logout_queues_the_token_hash_never_the_token() {
    let (f, _stop) = fixture(true, false).await;
    let created = f
        .local
        .sessions
        .create(7, serde_json::Map::new())
        .await
        .unwrap();
    let token = created.token.as_str().to_owned();
    assert!(f
        .local
        .refresh(&token, serde_json::Map::new())
        .await
        .unwrap()
        .is_some());
    let a = f.local.logout(&token).await.unwrap().expect("a session");
    assert!(a.forwarded);
    assert!(f.local.logout(&token).await.unwrap().is_none(), "gone");
    assert!(f.local.logout("nope").await.unwrap().is_none());
    let hash = shared_fs::sessions::token_hash(&token).unwrap();
    let q = queued(&f.queue);
    assert_eq!(q.len(), 2, "the refresh and the logout");
    for (_, m) in &q {
        match m {
            PeerMessage::Eviction { cache, keys } => {
                assert_eq!(cache, SESSIONS_CACHE);
                assert_eq!(keys, &[hash.as_str()]);
                assert!(!keys[0].contains(&token));
            }
            other => panic!("not an eviction: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_plugin_call_is_queued_as_sent_and_also_applied_here() {
    let (f, _stop) = fixture(true, false).await;
    let json = Some("application/json; charset=utf-8".to_owned());
    f.local
        .caches
        .put("tokens", r#"{"id":1000001}"#, Bytes::from_static(b"1"))
        .unwrap();
    let eviction = PluginCall {
        method: "POST".into(),
        path: "cache/tokens".into(),
        content_type: json.clone(),
        created_on: Some(1_700_000_000_123),
        body: Some(r#"{ "id" : 1000001 }"#.into()),
    };
    let a = f.local.plugin_call(eviction.clone()).await.unwrap();
    assert!(a.forwarded && a.seq.is_some());
    assert!(
        f.local.caches.get("tokens", r#"{"id":1000001}"#).is_none(),
        "Gerrit's JSON key evicts this node's entry too"
    );
    let event = PluginCall {
        method: "POST".into(),
        path: "event/ref-updated".into(),
        content_type: json,
        created_on: None,
        body: Some(r#"{"type":"ref-updated","eventCreatedOn":1700000000}"#.into()),
    };
    f.local.plugin_call(event.clone()).await.unwrap();
    assert_eq!(
        f.local.events.last_seq_by_origin().len(),
        1,
        "in this node's log"
    );
    let q = queued(&f.queue);
    let calls: Vec<PluginCall> = q
        .into_iter()
        .filter_map(|(_, m)| match m {
            PeerMessage::Plugin(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(
        calls,
        vec![eviction, event],
        "queued exactly as sent, in order"
    );
    // An event the log refuses is not queued either.
    let bad = PluginCall {
        method: "POST".into(),
        path: "event/x".into(),
        content_type: None,
        created_on: None,
        body: Some(r#"{"type":"x"}"#.into()),
    };
    assert!(f.local.plugin_call(bad).await.is_err());
    assert_eq!(f.queue.stats().pending, 2);
}
