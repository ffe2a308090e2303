//! Index sync across nodes: queries on a peer against a reference filter, the version rule on
//! every path (direct, forwarded, replayed, reordered, anti-entropy), convergence after a
//! freeze, a wipe and a join (real processes), catch-up before ready, reindex, and the errors
//! of the local API.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ha_sidecar::config::Secret;
use integration::{
    api, eventually, http, mesh_specs, post_signed, start_in_process, NodeSpec, Proc,
};
use serde_json::{json, Value};

/// Fast anti-entropy and refresh for tests.
const INDEX_CONFIG: &str =
    "[index]\n  antiEntropyInterval = 500ms\n  refreshInterval = 100ms\n  maxDocumentSize = 4k\n";
const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

/// A document id in a URL path: `/` and the other reserved characters percent-encoded.
fn enc(id: &str) -> String {
    let mut out = String::new();
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn put_doc(h: &reqwest::Client, base: &str, id: &str, version: u64, doc: &Value) -> u16 {
    h.put(format!("{base}v1/index/changes/{}", enc(id)))
        .json(&json!({"version": version, "doc": doc}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn delete_doc(h: &reqwest::Client, base: &str, id: &str, version: u64) -> u16 {
    h.delete(format!(
        "{base}v1/index/changes/{}?version={version}",
        enc(id)
    ))
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

/// `(status, body)` of `GET /v1/index/changes/{id}`.
async fn get_doc(h: &reqwest::Client, base: &str, id: &str) -> (u16, Value) {
    let r = h
        .get(format!("{base}v1/index/changes/{}", enc(id)))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn search(h: &reqwest::Client, base: &str, kind: &str, q: &str) -> (u16, Value) {
    let r = h
        .get(
            reqwest::Url::parse_with_params(
                &format!("{base}v1/index/{kind}"),
                &[("q", q), ("limit", "10000")],
            )
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Every live change on a node as `id → version` (through a query: what a master sees).
async fn id_versions(h: &reqwest::Client, base: &str) -> BTreeMap<String, u64> {
    let (status, body) = search(h, base, "changes", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["total"].as_u64().unwrap() <= 10_000);
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn fixture_changes() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/index/changes.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A small generated change document of about 1 KB.
fn change(i: usize, version: u64) -> Value {
    json!({
        "id": format!("c{i}"), "_number": i, "project": format!("p{}", i % 7),
        "status": "NEW", "owner": {"username": format!("u{}", i % 5)},
        "subject": format!("change {i} version {version}"),
        "message": "x ".repeat(400), "updated": 1_704_067_200 + i as i64,
    })
}

// ---- reference filter over the fixtures ----

fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn has_phrase(doc: &Value, phrase: &str) -> bool {
    let want = tokens(phrase);
    ["subject", "message"].iter().any(|f| {
        let have = tokens(doc[f].as_str().unwrap_or(""));
        have.windows(want.len()).any(|w| w == want.as_slice())
    })
}

fn status_is(doc: &Value, s: &str) -> bool {
    let st = doc["status"].as_str().unwrap().to_lowercase();
    match s {
        "open" => st == "new",
        "closed" => st != "new",
        other => st == other,
    }
}

fn owner_is(doc: &Value, who: &str) -> bool {
    doc["owner"]["username"] == who || doc["owner"]["email"] == who
}

/// Acceptance 1: 300 changes written on A are answered on B exactly as the reference filter
/// over the same fixtures says; 4: queries keep answering while the writes stream in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_on_a_peer_match_a_reference_filter() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, INDEX_CONFIG);
    let a = start_in_process(&specs[0], dir.path()).await;
    let b = start_in_process(&specs[1], dir.path()).await;
    let (al, bl) = (a.local_url(), b.local_url());
    let h = http();
    let docs = fixture_changes();
    assert_eq!(docs.len(), 300);

    let writes = futures_util::stream::iter(docs.iter()).for_each_concurrent(16, |d| {
        let (h, al) = (h.clone(), al.clone());
        async move {
            assert_eq!(put_doc(&h, &al, d["id"].as_str().unwrap(), 1, d).await, 202);
        }
    });
    let reads = async {
        // Queries on B answer all along.
        for _ in 0..20 {
            let (status, body) = search(&h, &bl, "changes", "status:open").await;
            assert_eq!(status, 200, "{body}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::join!(writes, reads);

    type Filter = Box<dyn Fn(&Value) -> bool>;
    let cases: Vec<(&str, Filter)> = vec![
        (
            "status:open project:tools/gerrit",
            Box::new(|d| status_is(d, "open") && d["project"] == "tools/gerrit"),
        ),
        ("\"login page\"", Box::new(|d| has_phrase(d, "login page"))),
        ("owner:alice", Box::new(|d| owner_is(d, "alice"))),
        (
            "(project:tools/gerrit OR project:apps/review) NOT status:merged -owner:bob",
            Box::new(|d| {
                (d["project"] == "tools/gerrit" || d["project"] == "apps/review")
                    && !status_is(d, "merged")
                    && !owner_is(d, "bob")
            }),
        ),
        (
            "\"fix crash\" OR (owner:carol status:closed)",
            Box::new(|d| {
                has_phrase(d, "fix crash") || (owner_is(d, "carol") && status_is(d, "closed"))
            }),
        ),
    ];
    eventually(
        "B holds the 300 changes",
        Duration::from_secs(10),
        || async { search(&h, &bl, "changes", "").await.1["total"] == 300 },
    )
    .await;
    for (q, filter) in &cases {
        let mut want: Vec<String> = docs
            .iter()
            .filter(|d| filter(d))
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect();
        want.sort();
        assert!(
            !want.is_empty(),
            "the reference filter for `{q}` selects something"
        );
        let (status, body) = search(&h, &bl, "changes", q).await;
        assert_eq!(status, 200, "{q}: {body}");
        let mut got: Vec<String> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect();
        got.sort();
        assert_eq!(got, want, "query `{q}` on B");
        assert_eq!(body["total"], want.len(), "total of `{q}`");
    }
    // The document comes back as given, with its id and version.
    let d = &docs[7];
    let (status, got) = get_doc(&h, &bl, d["id"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(got, json!({"id": d["id"], "version": 1, "doc": d}));
    a.shutdown().await;
    b.shutdown().await;
}

async fn batch(
    h: &reqwest::Client,
    peer: &str,
    secret: &Secret,
    origin: &str,
    messages: Value,
) -> Value {
    let body = serde_json::to_vec(&json!({"origin": origin, "messages": messages})).unwrap();
    let (status, text, _) = post_signed(h, peer, body, Some(secret), 0, None).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn index_msg(seq: u64, id: &str, version: u64, deleted: bool) -> Value {
    if deleted {
        json!({"seq": seq, "kind": "index", "index": "changes", "id": id, "version": version, "deleted": true})
    } else {
        json!({"seq": seq, "kind": "index", "index": "changes", "id": id, "version": version, "doc": change(0, version)})
    }
}

/// Acceptance 2: an older version never rolls back, whether sent directly, through a peer,
/// replayed or reordered; a newer delete wins; a write older than a tombstone stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_rule_holds_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, INDEX_CONFIG);
    let a = start_in_process(&specs[0], dir.path()).await;
    let b = start_in_process(&specs[1], dir.path()).await;
    let (al, bl, bp) = (a.local_url(), b.local_url(), b.peer_url());
    let h = http();
    let version_on = |base: String, id: &'static str| {
        let h = h.clone();
        async move {
            let (s, d) = get_doc(&h, &base, id).await;
            (s == 200).then(|| d["version"].as_u64().unwrap())
        }
    };

    // Directly: an older write after a newer one is ignored (and not forwarded).
    assert_eq!(put_doc(&h, &al, "d", 5, &change(1, 5)).await, 202);
    assert_eq!(put_doc(&h, &al, "d", 3, &change(1, 3)).await, 202);
    assert_eq!(version_on(al.clone(), "d").await, Some(5));
    // Through the peer: B ends at 5, never 3.
    eventually("d@5 on B", Duration::from_secs(10), || async {
        version_on(bl.clone(), "d").await == Some(5)
    })
    .await;
    // A newer delete wins; an older write after it stays deleted, on both nodes.
    assert_eq!(delete_doc(&h, &al, "d", 6).await, 202);
    assert_eq!(put_doc(&h, &al, "d", 4, &change(1, 4)).await, 202);
    assert_eq!(version_on(al.clone(), "d").await, None);
    eventually("d deleted on B", Duration::from_secs(10), || async {
        version_on(bl.clone(), "d").await.is_none()
    })
    .await;
    // B itself refuses the older write too (and does not forward it).
    assert_eq!(put_doc(&h, &bl, "d", 5, &change(1, 5)).await, 202);
    assert_eq!(version_on(bl.clone(), "d").await, None);
    // A newer write revives it everywhere.
    assert_eq!(put_doc(&h, &bl, "d", 7, &change(1, 7)).await, 202);
    eventually("d@7 on A", Duration::from_secs(10), || async {
        version_on(al.clone(), "d").await == Some(7)
    })
    .await;

    // Reordered and replayed peer deliveries (another origin, signed like a peer).
    let secret = Secret(SECRET.as_bytes().to_vec());
    let r = batch(
        &h,
        &bp,
        &secret,
        "node-x",
        json!([
            index_msg(1, "r", 10, false),
            index_msg(2, "r", 8, false),
            index_msg(3, "r", 9, true)
        ]),
    )
    .await;
    assert_eq!(r["applied"], 3, "{r}");
    assert_eq!(version_on(bl.clone(), "r").await, Some(10));
    // The same batch again: duplicates for the transport.
    let r = batch(
        &h,
        &bp,
        &secret,
        "node-x",
        json!([index_msg(1, "r", 10, false)]),
    )
    .await;
    assert_eq!(r["duplicates"], 1, "{r}");
    // Old contents under new seqs (a replay from another path): still no roll-back.
    batch(
        &h,
        &bp,
        &secret,
        "node-x",
        json!([index_msg(4, "r", 2, false)]),
    )
    .await;
    assert_eq!(version_on(bl.clone(), "r").await, Some(10));
    batch(
        &h,
        &bp,
        &secret,
        "node-x",
        json!([index_msg(5, "r", 11, true), index_msg(6, "r", 10, false)]),
    )
    .await;
    assert_eq!(
        version_on(bl.clone(), "r").await,
        None,
        "older than the tombstone"
    );
    // Applied on B, never forwarded by B: A learns r only from anti-entropy, deleted at 11.
    eventually("A holds r's tombstone", Duration::from_secs(10), || async {
        a.state()
            .index
            .entries(ha_sidecar::index::Kind::Changes, bucket_of(&a, "r"))
            .iter()
            .any(|e| e.0 == "r" && e.1 == 11 && e.2)
    })
    .await;
    assert_eq!(version_on(al.clone(), "r").await, None);
    a.shutdown().await;
    b.shutdown().await;
}

fn bucket_of(node: &ha_sidecar::app::Node, id: &str) -> u8 {
    let store = &node.state().index;
    (0..=255u8)
        .find(|b| {
            store
                .entries(ha_sidecar::index::Kind::Changes, *b)
                .iter()
                .any(|e| e.0 == id)
        })
        .unwrap_or(0)
}

/// Anti-entropy repairs what the transport never carried: documents written straight into
/// each node's store (as after a crash between a write and its outbox append) are pulled and
/// pushed until both hold the same (id, version) set, tombstones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_what_the_transport_missed() {
    use ha_sidecar::index::{ExportedDoc, Kind};
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, INDEX_CONFIG);
    let a = start_in_process(&specs[0], dir.path()).await;
    let b = start_in_process(&specs[1], dir.path()).await;
    let (sa, sb) = (a.state().index.clone(), b.state().index.clone());
    let docs = |ids: std::ops::Range<usize>, v: u64| -> Vec<ExportedDoc> {
        ids.map(|i| ExportedDoc {
            id: format!("c{i}"),
            version: v,
            deleted: false,
            doc: Some(change(i, v)),
            deleted_at: None,
        })
        .collect()
    };
    // Straight into each store, in one batch each (one fsync), bypassing the outbox.
    sa.apply(Kind::Changes, docs(0..300, 1)).await.unwrap();
    sb.apply(Kind::Changes, docs(200..400, 2)).await.unwrap();
    sb.delete(Kind::Changes, "c0", 5).await.unwrap();
    sa.upsert(Kind::Groups, "g1", 1, json!({"name": "admins"}))
        .await
        .unwrap();
    let digest = |s: &ha_sidecar::index::IndexStore, k| s.digest(k, 0..=255);
    eventually("equal digests", Duration::from_secs(20), || async {
        Kind::ALL.iter().all(|k| digest(&sa, *k) == digest(&sb, *k))
    })
    .await;
    let h = http();
    let (al, bl) = (a.local_url(), b.local_url());
    eventually(
        "same documents searchable",
        Duration::from_secs(5),
        || async {
            let (x, y) = (id_versions(&h, &al).await, id_versions(&h, &bl).await);
            x == y && x.len() == 399
        },
    )
    .await;
    let set = id_versions(&h, &al).await;
    assert_eq!(set["c250"], 2, "the newer version of the overlap wins");
    assert_eq!(set["c100"], 1);
    assert!(!set.contains_key("c0"), "the delete reached A");
    // Whichever node's round came first did the moving.
    let mut pulled = 0.0;
    let mut pushed = 0.0;
    for n in [&a, &b] {
        pulled += api::metric(&h, &n.peer_url(), "ha_index_docs_pulled_total", &[]).await;
        pushed += api::metric(&h, &n.peer_url(), "ha_index_docs_pushed_total", &[]).await;
    }
    // c200..c400 and c0 moved to A, c0..c200 to B (by a pull or a push, whichever came first).
    assert!(pulled + pushed >= 400.0, "pulled {pulled}, pushed {pushed}");
    a.shutdown().await;
    b.shutdown().await;
}

/// Acceptance 4: a bad query is 400 naming the problem, an unknown kind 404, an oversized
/// document 413; other caller mistakes are 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_api_names_caller_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 1, INDEX_CONFIG);
    let a = start_in_process(&specs[0], dir.path()).await;
    let al = a.local_url();
    let h = http();
    let (status, body) = search(&h, &al, "changes", "status:open AND (owner:alice").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("query"), "{body}");
    let (status, body) = search(&h, &al, "changes", "colour:red").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("colour"), "{body}");
    // Issue 15 item 8: what the index cannot answer is 400 naming the operator or value, never
    // `total: 0`. A document that every refused query would "match" if it were answered.
    let doc = json!({"subject": "wip", "status": "NEW", "owner": {"username": "self"},
        "project": "^tools", "updated": "2024-02-29 10:00:00.000000000"});
    assert_eq!(put_doc(&h, &al, "refusals", 1, &doc).await, 202);
    for (q, names) in [
        ("after:2024-02-31", "bad date '2024-02-31'"),
        ("before:2023-02-29 status:open", "bad date '2023-02-29'"),
        ("is:wip", "'is:wip' cannot be answered"),
        ("is:open OR is:private", "'is:private'"),
        ("owner:self", "'owner:self' needs the caller's account"),
        (
            "project:^tools/.*",
            "'project:^tools/.*' is a regular expression",
        ),
        ("subject:!!!", "'subject:!!!' has no searchable word"),
        ("age:2fortnights", "bad age '2fortnights'"),
    ] {
        let (status, body) = search(&h, &al, "changes", q).await;
        assert_eq!(status, 400, "{q}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(names), "{q}: {error}");
        assert!(
            body.get("total").is_none(),
            "{q}: no result beside the error: {body}"
        );
    }
    // The same fields with values the index holds answer normally.
    eventually(
        "the answerable twin queries find the document",
        integration::patience(Duration::from_secs(5)),
        || async {
            let mut found = true;
            for q in [
                "after:2024-02-28",
                "is:open",
                "subject:wip",
                "owner:alice OR subject:wip",
            ] {
                let (status, body) = search(&h, &al, "changes", q).await;
                found &= status == 200 && body["total"] == 1;
            }
            found
        },
    )
    .await;
    let (status, body) = search(&h, &al, "widgets", "x").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("widgets"));
    let big = json!({"subject": "y".repeat(5000)});
    assert_eq!(put_doc(&h, &al, "big", 1, &big).await, 413);
    assert_eq!(get_doc(&h, &al, "big").await.0, 404);
    let r = h
        .put(format!("{al}v1/index/changes/x"))
        .json(&json!({"doc": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a version is required");
    let r = h
        .delete(format!("{al}v1/index/changes/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a delete needs ?version=");
    let r = h
        .put(format!("{al}v1/index/changes/x"))
        .json(&json!({"version": 1, "doc": [1, 2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a document is an object");
    assert_eq!(get_doc(&h, &al, "nothing").await.0, 404);
    a.shutdown().await;
}

// ---- real processes ----

async fn health(h: &reqwest::Client, spec: &NodeSpec) -> u16 {
    match h.get(format!("{}health", spec.peer_url())).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Writes `n` operations on `base`: mostly upserts of `c{i}` at `version`, every fifth a delete.
async fn churn(h: &reqwest::Client, base: &str, ids: std::ops::Range<usize>, version: u64) {
    futures_util::stream::iter(ids)
        .for_each_concurrent(32, |i| {
            let (h, base) = (h.clone(), base.to_owned());
            async move {
                let id = format!("c{i}");
                let s = if i % 5 == 0 {
                    delete_doc(&h, &base, &id, version).await
                } else {
                    put_doc(&h, &base, &id, version, &change(i, version)).await
                };
                assert_eq!(s, 202);
            }
        })
        .await;
}

/// Acceptance 3 and 4: B frozen (SIGSTOP) while A takes 5,000 updates and deletes, B having
/// written 1,000 of its own (half just before the freeze, half after the thaw, some on ids A
/// also writes): after the thaw both hold the same (id, version) set, the one the test expects;
/// queries on A answer all through the heavy writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_converges_after_thaw() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, INDEX_CONFIG);
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let b = Proc::spawn(&specs[1], dir.path(), &[]);
    let h = http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let (al, bl) = (specs[0].local_url(), specs[1].local_url());

    // B writes 500 (ids 4500..5000 at version 2), then is frozen with some still in its outbox.
    churn(&h, &bl, 4_500..5_000, 2).await;
    b.freeze();
    // A: 5,000 updates and deletes (ids 0..5000 at version 3: A wins the overlap), with
    // queries answering meanwhile.
    let writes = churn(&h, &al, 0..5_000, 3);
    let reads = async {
        let mut n = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            let (status, body) = search(&h, &al, "changes", "status:open project:p3").await;
            assert_eq!(status, 200, "{body}");
            n += 1;
        }
        n
    };
    let ((), queries) = tokio::join!(writes, reads);
    assert!(
        queries > 10,
        "only {queries} queries answered during the writes"
    );
    b.thaw();
    // B, thawed: 500 more of its own (ids 5000..5500, version 4).
    churn(&h, &bl, 5_000..5_500, 4).await;

    let mut expected = BTreeMap::new();
    for i in (0..5_000).filter(|i| i % 5 != 0) {
        expected.insert(format!("c{i}"), 3u64);
    }
    for i in (5_000..5_500).filter(|i| i % 5 != 0) {
        expected.insert(format!("c{i}"), 4u64);
    }
    eventually(
        "A and B hold the expected set",
        Duration::from_secs(30),
        || async {
            id_versions(&h, &al).await == expected && id_versions(&h, &bl).await == expected
        },
    )
    .await;
}

/// Acceptance 3: B's data directory wiped, B restarted empty: `/health` is 503 ("catching up")
/// while queries answer, and at its first 204 B already holds A's set. A third node that joins
/// empty does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_and_joining_nodes_catch_up_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut specs = mesh_specs(dir.path(), 3, INDEX_CONFIG);
    // C joins later: A and B do not forward to it, so all it has comes from anti-entropy.
    let c_url = specs[2].peer_url();
    for s in &mut specs[..2] {
        s.peers.retain(|p| *p != c_url);
    }
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let mut b = Proc::spawn(&specs[1], dir.path(), &[]);
    let h = http();
    a.wait_ready(&h).await;
    b.wait_ready(&h).await;
    let (al, bl) = (specs[0].local_url(), specs[1].local_url());
    churn(&h, &al, 0..3_000, 1).await;
    churn(&h, &bl, 2_000..4_000, 2).await;
    eventually("A and B agree", Duration::from_secs(20), || async {
        let x = id_versions(&h, &al).await;
        x.len() == 3_200 && x == id_versions(&h, &bl).await
    })
    .await;
    let want = id_versions(&h, &al).await;

    b.kill9();
    std::fs::remove_dir_all(&specs[1].data_dir).unwrap();
    b.start();
    for (node, base) in [(&specs[1], &bl), (&specs[2], &specs[2].local_url())] {
        let proc_c = (node.id == specs[2].id).then(|| Proc::spawn(node, dir.path(), &[]));
        // Ready to answer (readyz), then 503 until caught up; queries answer meanwhile.
        let deadline = Instant::now() + integration::patience(Duration::from_secs(30));
        let mut answered = 0;
        loop {
            match health(&h, node).await {
                204 => break,
                0 | 503 => {}
                other => panic!("{} /health answered {other}", node.id),
            }
            if let Ok(r) = h
                .get(format!("{base}v1/index/changes?q=status%3Aopen"))
                .send()
                .await
            {
                assert_eq!(r.status(), 200);
                answered += 1;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became healthy",
                node.id
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // At its first 204, the node already holds everything: no waiting here.
        let got = id_versions(&h, base).await;
        assert_eq!(got.len(), want.len(), "{}: caught up before ready", node.id);
        assert_eq!(got, want, "{}", node.id);
        // Moved by anti-entropy: pulled by the node, or pushed to it by A's own rounds.
        let pulled = api::metric(&h, &node.peer_url(), "ha_index_docs_pulled_total", &[]).await;
        let peer_label = format!("peer=\"{}\"", node.peer_url());
        let pushed = api::metric(
            &h,
            &specs[0].peer_url(),
            "ha_index_docs_pushed_total",
            &[&peer_label],
        )
        .await;
        assert!(
            pulled + pushed >= want.len() as f64,
            "{}: pulled {pulled}, pushed to it {pushed}",
            node.id
        );
        assert!(
            answered > 0,
            "{}: queries answered while catching up",
            node.id
        );
        drop(proc_c);
    }
    drop(a);
}

/// Runs `ha-sidecar reindex --kind changes --from FILE --url URL`; returns its stdout.
async fn reindex(file: &Path, url: &str) -> String {
    let (file, url) = (file.to_owned(), url.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(integration::bin())
            .args(["reindex", "--kind", "changes", "--from"])
            .arg(&file)
            .args(["--url", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `ha-sidecar reindex` bulk-loads a JSON-lines file through A's local API; B receives it.
/// First the sample shipped in `examples/reindex/` (the format the README documents), then
/// every fixture document at a newer version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_loads_a_file_and_peers_receive_it() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 2, INDEX_CONFIG);
    let a = start_in_process(&specs[0], dir.path()).await;
    let b = start_in_process(&specs[1], dir.path()).await;
    let (h, al, bl) = (http(), a.local_url(), b.local_url());
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/reindex/changes.jsonl");
    let shipped: Vec<Value> = std::fs::read_to_string(&sample)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The sample is the fixture's first documents, so it cannot drift from the fixture.
    let fixture = fixture_changes();
    assert_eq!(shipped.len(), 50);
    for (line, doc) in shipped.iter().zip(&fixture) {
        assert_eq!(line["doc"], *doc);
        assert_eq!(line["id"], doc["id"]);
    }
    let stdout = reindex(&sample, &al).await;
    assert!(stdout.contains("50 applied"), "{stdout}");
    eventually(
        "B holds the sample's changes",
        Duration::from_secs(10),
        || async { id_versions(&h, &bl).await.len() == 50 },
    )
    .await;

    let file = dir.path().join("changes.jsonl");
    let lines: Vec<String> = fixture
        .iter()
        .map(|d| json!({"id": d["id"], "version": 2, "doc": d}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let stdout = reindex(&file, &al).await;
    assert!(stdout.contains("300 applied"), "{stdout}");
    eventually(
        "B holds the reindexed changes",
        Duration::from_secs(10),
        || async {
            let s = id_versions(&h, &bl).await;
            s.len() == 300 && s.values().all(|v| *v == 2)
        },
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Issue 14: a no-break space in a query (`a%C2%A0b`) once made the lexer loop until the
/// process ran out of memory. On a real process: the query answers at once as a space would,
/// and the node stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_break_space_in_a_query_separates_words() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(dir.path(), 1, INDEX_CONFIG);
    let a = Proc::spawn(&specs[0], dir.path(), &[]);
    let h = http();
    a.wait_ready(&h).await;
    let al = specs[0].local_url();
    let doc = json!({"subject": "alpha beta", "status": "NEW"});
    assert_eq!(put_doc(&h, &al, "nbsp", 1, &doc).await, 202);
    let deadline = integration::patience(Duration::from_secs(5));
    for q in [
        "alpha\u{a0}beta",
        "\u{a0}alpha\u{2003}\u{a0}",
        "-\u{a0}x",
        "a\u{3000}(b",
    ] {
        let answered = tokio::time::timeout(deadline, search(&h, &al, "changes", q)).await;
        let (status, body) = answered.unwrap_or_else(|_| panic!("{q:?} did not answer"));
        assert!(status == 200 || status == 400, "{q:?}: {status} {body}");
    }
    eventually(
        "the no-break-space query finds the document",
        deadline,
        || async {
            let (status, body) = search(&h, &al, "changes", "alpha\u{a0}beta").await;
            status == 200 && body["total"] == 1
        },
    )
    .await;
    assert_eq!(health(&h, &specs[0]).await, 204);
    assert!(a.log().find("panicked").is_none(), "{}", a.log());
}
