//! Receiver safety: duplicates have no effect; unsigned, badly signed, stale and replayed
//! requests get 401 and change nothing; oversized bodies 413; malformed JSON 400 with a message;
//! random bytes never crash the node.

use ha_sidecar::config::Secret;
use integration::{api, http, mesh_specs, post_signed, start_in_process};
use rand::{Rng, SeedableRng};
use serde_json::json;

fn batch(origin: &str, seq: u64, key: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "origin": origin,
        "messages": [{"seq": seq, "kind": "eviction", "cache": "projects", "keys": [key]}]
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_repeated_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let specs = mesh_specs(
        dir.path(),
        1,
        "[sidecar]\n  maxPeerBody = 64k\n[http]\n  maxBatchBytes = 64k\n",
    );
    let b = start_in_process(&specs[0], dir.path()).await;
    let secret = Secret(
        std::fs::read(&specs[0].secrets[0])
            .unwrap()
            .trim_ascii()
            .to_vec(),
    );
    let wrong = Secret(b"another-secret-0123456789abcdef".to_vec());
    let h = http();
    let (bl, bp) = (b.local_url(), b.peer_url());
    let present = |k: &'static str| {
        let h = h.clone();
        let bl = bl.clone();
        async move { api::get(&h, &bl, "projects", k).await == 200 }
    };
    for k in ["a", "b", "c", "d", "e", "f"] {
        assert_eq!(api::put(&h, &bl, "projects", k, json!(k)).await, 204);
    }

    // Unsigned, wrongly signed, stale and future timestamps: 401, nothing evicted.
    let (s, body, _) = post_signed(&h, &bp, batch("node-x", 1, "a"), None, 0, None).await;
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("\"error\""));
    assert_eq!(
        post_signed(&h, &bp, batch("node-x", 1, "a"), Some(&wrong), 0, None)
            .await
            .0,
        401
    );
    assert_eq!(
        post_signed(
            &h,
            &bp,
            batch("node-x", 1, "a"),
            Some(&secret),
            -600_000,
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(
        post_signed(
            &h,
            &bp,
            batch("node-x", 1, "a"),
            Some(&secret),
            600_000,
            None
        )
        .await
        .0,
        401
    );
    assert!(present("a").await, "refused requests changed nothing");

    // A good batch applies; the same request replayed (same nonce) is refused.
    let (s, body, used) =
        post_signed(&h, &bp, batch("node-x", 5, "a"), Some(&secret), 0, None).await;
    assert_eq!(s, 200, "{body}");
    assert!(!present("a").await);
    let (s, body, _) = post_signed(&h, &bp, batch("node-x", 5, "a"), None, 0, used.as_ref()).await;
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("nonce"), "{body}");
    // A body swapped under a valid signature is refused.
    let (s, _, _) = post_signed(&h, &bp, batch("node-x", 6, "b"), None, 0, used.as_ref()).await;
    assert_eq!(s, 401);
    assert!(present("b").await);

    // A re-sent batch (fresh signature, same seq) is a duplicate: no effect.
    assert_eq!(
        api::put(&h, &bl, "projects", "a", json!("again")).await,
        204
    );
    let (s, body, _) = post_signed(&h, &bp, batch("node-x", 5, "a"), Some(&secret), 0, None).await;
    assert_eq!(s, 200);
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (reply["applied"].as_u64(), reply["duplicates"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(present("a").await, "duplicate had no effect");
    // Older seqs are duplicates too; a newer one applies.
    let (_, body, _) = post_signed(&h, &bp, batch("node-x", 3, "c"), Some(&secret), 0, None).await;
    assert!(body.contains("\"duplicates\":1"), "{body}");
    assert!(present("c").await);
    let (_, body, _) = post_signed(&h, &bp, batch("node-x", 7, "c"), Some(&secret), 0, None).await;
    assert!(body.contains("\"applied\":1"), "{body}");
    assert!(!present("c").await);

    // Oversized body: 413 (checked before anything is parsed or applied).
    let big = vec![b' '; 70 * 1024];
    let (s, body, _) = post_signed(&h, &bp, big, Some(&secret), 0, None).await;
    assert_eq!(s, 413, "{body}");
    assert!(body.contains("limit"), "{body}");

    // Malformed JSON: 400 naming the problem.
    let (s, body, _) = post_signed(
        &h,
        &bp,
        b"{\"origin\": \"x\", \"messages\": [".to_vec(),
        Some(&secret),
        0,
        None,
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        body.contains("malformed JSON") && body.contains("line 1"),
        "{body}"
    );
    let (s, body, _) = post_signed(
        &h,
        &bp,
        br#"{"origin": "../etc", "messages": []}"#.to_vec(),
        Some(&secret),
        0,
        None,
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("origin"), "{body}");

    // Random bytes, signed and unsigned, never produce a 5xx or take the node down.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..600 {
        let len = rng.random_range(0..2048);
        let mut body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if i % 3 == 0 {
            // Mostly-JSON shapes reach deeper into the parser.
            let shapes: [&[u8]; 5] = [
                br#"{"origin":"n","messages":[{"seq":"#,
                br#"{"origin":"n","messages":[{"seq":1,"kind":"eviction","cache":"#,
                br#"{"origin":"n","messages":[{"seq":18446744073709551615,"kind":"index","#,
                br#"{"origin":"n","messages":[{"kind":"flush","cache":"\u0000"}]}"#,
                br#"{"origin":"n","messages":[{"seq":2,"kind":"flush","cache":"../../x"}]}"#,
            ];
            let shape = shapes[rng.random_range(0..shapes.len())];
            body.splice(0..0, shape.iter().copied());
        }
        let signer = if i % 2 == 0 { Some(&secret) } else { None };
        let (s, text, _) = post_signed(&h, &bp, body, signer, 0, None).await;
        assert!(s < 500, "random body {i} gave {s}: {text}");
    }
    assert_eq!(
        h.get(format!("{bp}livez")).send().await.unwrap().status(),
        200
    );
    assert!(present("d").await && present("e").await && present("f").await);
    b.shutdown().await;
}
