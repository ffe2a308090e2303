//! Query tests: the 300 fixture changes, each query checked against a reference filter
//! computed in Rust over the same documents; bad queries and their messages.

use serde_json::{json, Value};

use super::dates;
use super::tests_fixtures::{changes, fast_opts, open};
use super::{ExportedDoc, IndexError, IndexStore, Kind};

/// What the reference filter needs of a fixture change.
struct Change {
    id: String,
    number: u64,
    project: String,
    branch: String,
    status: String,
    owner: String,
    email: String,
    topic: Option<String>,
    subject: String,
    message: String,
    hashtags: Vec<String>,
    updated: i64,
}

fn model(d: &Value) -> Change {
    let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
    Change {
        id: s("id"),
        number: d["_number"].as_u64().expect("number"),
        project: s("project"),
        branch: s("branch"),
        status: s("status"),
        owner: d["owner"]["username"].as_str().expect("owner").into(),
        email: d["owner"]["email"].as_str().expect("email").into(),
        topic: d["topic"].as_str().map(str::to_string),
        subject: s("subject"),
        message: s("message"),
        hashtags: d["hashtags"]
            .as_array()
            .expect("hashtags")
            .iter()
            .map(|h| h.as_str().expect("tag").into())
            .collect(),
        updated: dates::doc_time(&d["updated"]).expect("updated"),
    }
}

/// Tokens as tantivy's default analyzer makes them: split on non-alphanumerics, lowercase.
fn tokens(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn has_phrase(text: &str, phrase: &str) -> bool {
    let (t, p) = (tokens(text), tokens(phrase));
    t.windows(p.len()).any(|w| w == p.as_slice())
}

fn bare(c: &Change, phrase: &str) -> bool {
    has_phrase(&c.subject, phrase) || has_phrase(&c.message, phrase)
}

fn open_(c: &Change) -> bool {
    c.status == "NEW"
}

async fn loaded_store(dir: &std::path::Path) -> (IndexStore, Vec<Change>) {
    let store = open(dir, fast_opts());
    let docs = changes();
    let batch: Vec<ExportedDoc> = docs
        .iter()
        .map(|d| ExportedDoc {
            id: d["id"].as_str().expect("id").into(),
            version: 1,
            deleted: false,
            doc: Some(d.clone()),
            deleted_at: None,
        })
        .collect();
    store
        .apply(Kind::Changes, batch)
        .await
        .expect("load fixtures");
    store.commit().await.expect("commit");
    (store, docs.iter().map(model).collect())
}

#[tokio::test]
async fn queries_match_a_reference_filter_over_the_fixtures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, model) = loaded_store(dir.path()).await;
    let t0 = dates::parse_timestamp("2024-03-01").expect("date");
    type Pred = Box<dyn Fn(&Change) -> bool>;
    let cases: Vec<(&str, Pred)> = vec![
        (
            "status:open project:tools/gerrit",
            Box::new(|c| open_(c) && c.project == "tools/gerrit"),
        ),
        ("status:merged", Box::new(|c| c.status == "MERGED")),
        ("status:closed", Box::new(|c| c.status != "NEW")),
        ("is:open", Box::new(open_)),
        ("owner:alice", Box::new(|c| c.owner == "alice")),
        (
            "owner:bob@example.com status:open",
            Box::new(|c| c.email == "bob@example.com" && open_(c)),
        ),
        ("\"fix crash\"", Box::new(|c| bare(c, "fix crash"))),
        (
            "subject:\"review screen\"",
            Box::new(|c| has_phrase(&c.subject, "review screen")),
        ),
        (
            "message:\"is busy\" leak",
            Box::new(|c| has_phrase(&c.message, "is busy") && bare(c, "leak")),
        ),
        ("crash", Box::new(|c| bare(c, "crash"))),
        (
            "CRASH Button",
            Box::new(|c| bare(c, "crash") && bare(c, "button")),
        ),
        (
            "status:open (owner:alice OR owner:bob) -project:apps/review",
            Box::new(|c| {
                open_(c) && (c.owner == "alice" || c.owner == "bob") && c.project != "apps/review"
            }),
        ),
        (
            "project:tools/gerrit OR project:platform/build NOT status:abandoned",
            Box::new(|c| {
                c.project == "tools/gerrit"
                    || (c.project == "platform/build" && c.status != "ABANDONED")
            }),
        ),
        (
            "(project:tools/gerrit OR project:platform/build) AND NOT status:abandoned",
            Box::new(|c| {
                (c.project == "tools/gerrit" || c.project == "platform/build")
                    && c.status != "ABANDONED"
            }),
        ),
        ("NOT status:open", Box::new(|c| !open_(c))),
        (
            "-status:open -owner:carol",
            Box::new(|c| !open_(c) && c.owner != "carol"),
        ),
        (
            "owner:dave OR -crash",
            Box::new(|c| c.owner == "dave" || !bare(c, "crash")),
        ),
        (
            "hashtag:security branch:master",
            Box::new(|c| c.hashtags.iter().any(|h| h == "security") && c.branch == "master"),
        ),
        (
            "topic:crash-fixes AND (status:merged OR status:abandoned)",
            Box::new(|c| c.topic.as_deref() == Some("crash-fixes") && c.status != "NEW"),
        ),
        (
            "-topic:ui -topic:perf -topic:crash-fixes",
            Box::new(|c| c.topic.is_none()),
        ),
        ("number:42", Box::new(|c| c.number == 42)),
        ("before:2024-03-01", Box::new(move |c| c.updated <= t0)),
        (
            "after:\"2024-03-01 00:00:00\" status:open",
            Box::new(move |c| c.updated >= t0 && open_(c)),
        ),
        ("age:1d", Box::new(|_| true)),
        ("((owner:erin))", Box::new(|c| c.owner == "erin")),
        ("owner:nobody", Box::new(|_| false)),
        ("", Box::new(|_| true)),
    ];
    for (q, pred) in &cases {
        let mut expected: Vec<&Change> = model.iter().filter(|c| pred(c)).collect();
        expected.sort_by(|a, b| {
            b.updated
                .cmp(&a.updated)
                .then_with(|| b.number.cmp(&a.number))
        });
        let got = store
            .search(Kind::Changes, q, 1000)
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        let got_ids: Vec<&str> = got.results.iter().map(|d| d.id.as_str()).collect();
        let want_ids: Vec<&str> = expected.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(got.total, want_ids.len(), "total of {q}");
        assert_eq!(got_ids, want_ids, "results of {q}, in order");
    }
    // The reference filters are not vacuous: the main ones select some but not all.
    for q in [
        "status:open project:tools/gerrit",
        "\"fix crash\"",
        "owner:alice",
        "before:2024-03-01",
    ] {
        let n = store.search(Kind::Changes, q, 0).expect("count").total;
        assert!(n > 0 && n < 300, "{q} selects {n}");
    }
    // `limit` cuts the results, not the total; documents come back whole.
    let page = store.search(Kind::Changes, "status:open", 5).expect("page");
    assert_eq!(page.results.len(), 5);
    assert!(page.total > 5);
    let first = &page.results[0];
    let original = changes()
        .into_iter()
        .find(|d| d["id"] == first.id.as_str())
        .expect("fixture");
    assert_eq!(
        first.doc, original,
        "stored document returned as given, unknown fields included"
    );
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn other_kinds_have_their_own_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), fast_opts());
    let w = |k, id: &str, d: Value| {
        let s = &store;
        let id = id.to_string();
        async move { s.upsert(k, &id, 1, d).await.expect("upsert") }
    };
    w(Kind::Accounts, "1000", json!({"username": "alice", "name": "Alice Liddell", "emails": ["Alice@Example.com", "al@x.org"]})).await;
    w(
        Kind::Accounts,
        "1001",
        json!({"username": "bob", "name": "Bob Marley", "email": "bob@x.org"}),
    )
    .await;
    w(
        Kind::Groups,
        "g1",
        json!({"id": "abc123", "name": "Administrators", "owner": "abc123"}),
    )
    .await;
    w(Kind::Projects, "tools/gerrit", json!({"name": "tools/gerrit", "parent": "All-Projects", "state": "ACTIVE", "description": "The Gerrit code review tool"})).await;
    w(Kind::Projects, "old", json!({"name": "old", "parent": "All-Projects", "state": "READ_ONLY", "description": "Archived"})).await;
    store.commit().await.expect("commit");
    let ids = |k, q: &str| -> Vec<String> {
        store
            .search(k, q, 10)
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .results
            .into_iter()
            .map(|d| d.id)
            .collect()
    };
    assert_eq!(ids(Kind::Accounts, "email:alice@example.com"), ["1000"]);
    assert_eq!(ids(Kind::Accounts, "liddell"), ["1000"]);
    assert_eq!(
        ids(Kind::Accounts, "name:marley OR username:alice"),
        ["1000", "1001"]
    );
    assert_eq!(ids(Kind::Groups, "uuid:abc123 name:Administrators"), ["g1"]);
    assert_eq!(ids(Kind::Projects, "state:read_only"), ["old"]);
    assert_eq!(
        ids(Kind::Projects, "parent:All-Projects \"code review\""),
        ["tools/gerrit"]
    );
    assert_eq!(
        ids(Kind::Projects, ""),
        ["old", "tools/gerrit"],
        "sorted by id"
    );
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn bad_queries_name_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), fast_opts());
    let cases = [
        (
            Kind::Changes,
            "status:open colour:red",
            "unknown field 'colour' for changes",
            12,
        ),
        (
            Kind::Changes,
            "(status:open OR owner:bob",
            "unbalanced '('",
            0,
        ),
        (Kind::Changes, "status:open)", "unbalanced ')'", 11),
        (
            Kind::Changes,
            "owner:bob OR",
            "expected a term after 'OR'",
            12,
        ),
        (Kind::Changes, "age:3fortnights", "bad age '3fortnights'", 0),
        (Kind::Changes, "before:yesterday", "bad date 'yesterday'", 0),
        (
            Kind::Changes,
            "after:2024-02-31",
            "bad date '2024-02-31'",
            0,
        ),
        (Kind::Changes, "number:abc", "needs a whole number", 0),
        (
            Kind::Changes,
            "updated:2024",
            "with age:, before: or after:",
            0,
        ),
        (
            Kind::Accounts,
            "age:2d",
            "'age:' is not available for accounts",
            0,
        ),
        (
            Kind::Groups,
            "subject:x",
            "unknown field 'subject' for groups",
            0,
        ),
        // Values the index cannot answer: refused, never an empty result.
        (
            Kind::Changes,
            "is:open is:wip",
            "'is:wip' cannot be answered",
            8,
        ),
        (
            Kind::Changes,
            "status:draft",
            "records only status open, new",
            0,
        ),
        (Kind::Changes, "owner:self", "needs the caller's account", 0),
        (Kind::Changes, "-owner:ME", "'owner:ME' needs the caller", 1),
        (
            Kind::Changes,
            "project:^tools/.*",
            "is a regular expression",
            0,
        ),
        (
            Kind::Changes,
            "branch:^stable-.*",
            "'branch:^stable-.*' is a regular",
            0,
        ),
        (
            Kind::Changes,
            "subject:!!!",
            "'subject:!!!' has no searchable word",
            0,
        ),
        (Kind::Changes, "a OR ???", "'???' has no searchable word", 5),
        (Kind::Projects, "state:gone", "records only state active", 0),
        (Kind::Groups, "owner:self", "needs the caller's account", 0),
    ];
    for (kind, q, msg, pos) in cases {
        match store.search(kind, q, 10) {
            Err(IndexError::BadQuery(e)) => {
                assert!(e.message.contains(msg), "{q}: {e}");
                assert_eq!(e.position, pos, "{q}: {e}");
            }
            other => panic!("{q}: expected a bad query, got {other:?}"),
        }
    }
    let e = store
        .search(Kind::Changes, "foo:bar", 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("bad query: unknown field 'foo'") && e.contains("known: id, project"),
        "{e}"
    );
    store.shutdown().await.expect("shutdown");
}

/// The changes' top-k skips segments by their `updated` bound and ranks matches newest doc
/// first: across several segments, with updates (deleted copies), tombstones, ties on `updated`
/// and documents without it, the order and total stay those of the reference sort.
#[tokio::test]
async fn top_k_across_segments_matches_the_reference_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), fast_opts());
    let mut docs: Vec<Value> = changes();
    // Ties: every fifth change takes the `updated` of the change before it; a few have none.
    for i in (5..docs.len()).step_by(5) {
        docs[i]["updated"] = docs[i - 1]["updated"].clone();
    }
    for i in [7, 77, 177] {
        docs[i].as_object_mut().expect("object").remove("updated");
    }
    let put = |d: &Value, version: u64| ExportedDoc {
        id: d["id"].as_str().expect("id").into(),
        version,
        deleted: false,
        doc: Some(d.clone()),
        deleted_at: None,
    };
    // Five segments (one commit per chunk), then updates and deletes in a sixth.
    for chunk in docs.chunks(60) {
        let batch = chunk.iter().map(|d| put(d, 1)).collect();
        store.apply(Kind::Changes, batch).await.expect("load");
        store.commit().await.expect("commit");
    }
    let mut later = Vec::new();
    for i in (3..docs.len()).step_by(11) {
        docs[i]["updated"] = docs[(i * 7) % docs.len()]["updated"].clone();
        later.push(put(&docs[i], 2));
    }
    let mut deleted = std::collections::HashSet::new();
    for i in (2..docs.len()).step_by(13) {
        let id = docs[i]["id"].as_str().expect("id").to_string();
        later.push(ExportedDoc {
            id: id.clone(),
            version: 3,
            deleted: true,
            doc: None,
            deleted_at: None,
        });
        deleted.insert(id);
    }
    store.apply(Kind::Changes, later).await.expect("updates");
    store.commit().await.expect("commit");
    let live: Vec<Change> = docs
        .iter()
        .filter(|d| !deleted.contains(d["id"].as_str().expect("id")))
        .map(|d| {
            let mut d = d.clone();
            let missing = d.get("updated").is_none();
            // The model needs a time; a missing one sorts below every real one.
            if missing {
                d["updated"] = json!(0);
            }
            let mut c = model(&d);
            if missing {
                c.updated = i64::MIN;
            }
            c
        })
        .collect();
    for q in ["", "status:open", "crash", "owner:alice", "-owner:bob"] {
        let mut expected: Vec<&Change> = live
            .iter()
            .filter(|c| match q {
                "status:open" => open_(c),
                "crash" => bare(c, "crash"),
                "owner:alice" => c.owner == "alice",
                "-owner:bob" => c.owner != "bob",
                _ => true,
            })
            .collect();
        expected.sort_by(|a, b| {
            b.updated
                .cmp(&a.updated)
                .then_with(|| b.number.cmp(&a.number))
        });
        let want: Vec<&str> = expected.iter().map(|c| c.id.as_str()).collect();
        assert!(want.len() > 10, "{q} selects {}", want.len());
        for limit in [1, 3, 10, 50, 1000] {
            let got = store.search(Kind::Changes, q, limit).expect(q);
            let ids: Vec<&str> = got.results.iter().map(|d| d.id.as_str()).collect();
            assert_eq!(got.total, want.len(), "total of {q}");
            assert_eq!(ids, want[..limit.min(want.len())], "{q}, limit {limit}");
        }
    }
    store.shutdown().await.expect("shutdown");
}
