//! TLS and mutual TLS between real processes (issue 14, item 3): evictions travel over https
//! between two nodes that require each other's certificates on `/v1/peer/*`; a client without a
//! certificate, with one from another CA, or with one naming another node is refused while
//! health and metrics stay open; a rotated certificate is served without a restart.

use std::path::Path;
use std::time::Duration;

use integration::tls::{client, TestCa};
use integration::{api, eventually, http, Proc};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

fn batch(origin: &str) -> Vec<u8> {
    json!({ "origin": origin, "messages": [] })
        .to_string()
        .into_bytes()
}

async fn signed_batch(
    h: &reqwest::Client,
    base: &str,
    origin: &str,
) -> Result<(u16, String), String> {
    let secret = ha_sidecar::config::Secret(SECRET.as_bytes().to_vec());
    let body = batch(origin);
    let now = ha_sidecar::peers::outbox::now_ms();
    let s = ha_sidecar::auth::sign(&secret, "POST", "/v1/peer/batch", &body, now);
    let r = h
        .post(format!("{base}v1/peer/batch"))
        .header("content-type", "application/json")
        .header("x-ha-timestamp", &s.timestamp_ms)
        .header("x-ha-nonce", &s.nonce)
        .header("x-ha-signature", &s.signature)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.unwrap_or_default()))
}

/// The DER of the certificate a fresh connection to `url` is served.
async fn served_cert(ca: &Path, url: &str) -> Vec<u8> {
    let r = client(ca, None).get(url).send().await.unwrap();
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    info.peer_certificate().unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_between_nodes_with_mutual_tls_refusals_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new(d, "ca");
    let other_ca = TestCa::new(d, "other-ca");
    let (specs, keys) = ca.https_mesh(d, 2);
    let nodes: Vec<Proc> = specs.iter().map(|s| Proc::spawn(s, d, &[])).collect();
    let anon = client(&ca.pem, None);
    for n in &nodes {
        n.wait_ready(&anon).await;
    }
    let (a, b) = (&specs[0], &specs[1]);

    // Happy path: an eviction on A reaches B over mutual TLS.
    let h = http();
    let (al, bl) = (a.local_url(), b.local_url());
    assert_eq!(
        api::put(&h, &bl, "projects", "k1", json!({"v": 1})).await,
        204
    );
    assert_eq!(api::evict(&h, &al, "projects", &["k1"]).await, 202);
    eventually(
        "eviction reaches B over TLS",
        Duration::from_secs(20),
        || async { api::get(&h, &bl, "projects", "k1").await == 404 },
    )
    .await;

    // Health, readiness and metrics need no client certificate. `/health` may still say 503
    // "catching up" (the index catch-up backs off while A starts), so it is waited for.
    for path in ["health", "readyz", "metrics"] {
        let url = format!("{}{path}", b.peer_url());
        let anon = &anon;
        eventually(
            &format!("{path} answers without a client certificate"),
            Duration::from_secs(20),
            || {
                let url = url.clone();
                async move {
                    match anon.get(&url).send().await {
                        Ok(r) => r.status().is_success(),
                        Err(e) => panic!("{url}: {e}"),
                    }
                }
            },
        )
        .await;
    }
    // No client certificate: a correctly signed batch is refused.
    let (status, body) = signed_batch(&anon, &b.peer_url(), &a.id).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("client certificate is required"), "{body}");
    // A certificate from another CA: the handshake itself fails.
    let (oc, ok) = other_ca.issue(d, "other-a", &[&a.id]);
    let stranger = client(&ca.pem, Some((&oc, &ok)));
    assert!(signed_batch(&stranger, &b.peer_url(), &a.id).await.is_err());
    // A valid certificate naming another node cannot speak for A.
    let (xc, xk) = ca.issue(d, "node-x", &["node-x"]);
    let x = client(&ca.pem, Some((&xc, &xk)));
    let (status, body) = signed_batch(&x, &b.peer_url(), &a.id).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("does not name `node-a`"), "{body}");
    // A's own certificate may.
    let own = client(&ca.pem, Some((&keys[0].0, &keys[0].1)));
    let (status, body) = signed_batch(&own, &b.peer_url(), &a.id).await.unwrap();
    assert_eq!(status, 200, "{body}");

    // Rotation: B's certificate is replaced on disk; new connections get it, no restart, and
    // deliveries continue.
    let before = served_cert(&ca.pem, &format!("{}readyz", b.peer_url())).await;
    ca.issue(d, &b.id, &[&b.id, "127.0.0.1"]);
    let rotated = ha_sidecar::tls::load_certs(&keys[1].0).unwrap()[0].to_vec();
    assert_ne!(before, rotated);
    let url = format!("{}readyz", b.peer_url());
    eventually(
        "the rotated certificate is served",
        Duration::from_secs(10),
        || async { served_cert(&ca.pem, &url).await == rotated },
    )
    .await;
    assert_eq!(
        api::put(&h, &bl, "projects", "k2", json!({"v": 2})).await,
        204
    );
    assert_eq!(api::evict(&h, &al, "projects", &["k2"]).await, 202);
    eventually(
        "eviction reaches B after rotation",
        Duration::from_secs(20),
        || async { api::get(&h, &bl, "projects", "k2").await == 404 },
    )
    .await;
    assert!(nodes[1].log().contains("TLS certificate reloaded"));

    // CA rotation: both nodes' CA file (their `http.caFile` and `clientCaFile`) gets a new CA
    // beside the old one, then A's certificate is reissued by the new CA. B accepts A's client
    // certificate only if it reloaded its client CAs; the eviction proves it did.
    let new_ca = TestCa::new(d, "new-ca");
    let both = [
        std::fs::read(&ca.pem).unwrap(),
        std::fs::read(&new_ca.pem).unwrap(),
    ]
    .concat();
    let tmp = ca.pem.with_extension("tmp");
    std::fs::write(&tmp, both).unwrap();
    std::fs::rename(&tmp, &ca.pem).unwrap();
    let url = format!("{}readyz", b.peer_url());
    eventually(
        "B reloads its CA files",
        Duration::from_secs(10),
        || async {
            // A handshake makes B look at its files (at most once a second).
            let _ = served_cert(&ca.pem, &url).await;
            nodes[1].log().contains("client CA file reloaded")
        },
    )
    .await;
    new_ca.issue(d, &a.id, &[&a.id, "127.0.0.1"]);
    let new_a = client(&ca.pem, Some((&keys[0].0, &keys[0].1)));
    let (status, body) = signed_batch(&new_a, &b.peer_url(), &a.id).await.unwrap();
    assert_eq!(status, 200, "A's certificate from the new CA: {body}");
    assert_eq!(
        api::put(&h, &bl, "projects", "k3", json!({"v": 3})).await,
        204
    );
    assert_eq!(api::evict(&h, &al, "projects", &["k3"]).await, 202);
    eventually(
        "eviction reaches B after the CA rotation",
        Duration::from_secs(20),
        || async { api::get(&h, &bl, "projects", "k3").await == 404 },
    )
    .await;
}
