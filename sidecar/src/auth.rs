//! Peer request authentication: HMAC-SHA256 over method, path, timestamp, nonce and the body's
//! SHA-256, with the cluster secret. The first configured secret signs; every secret verifies,
//! so a secret is rotated without downtime (add new everywhere → sign with new → drop old).

use std::time::Duration;

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::config::Secret;

type HmacSha256 = hmac::Hmac<Sha256>;

pub const HEADER_TIMESTAMP: &str = "x-ha-timestamp";
pub const HEADER_NONCE: &str = "x-ha-nonce";
pub const HEADER_SIGNATURE: &str = "x-ha-signature";
/// The body's SHA-256 (hex), declared by the sender. The signed string already covers the
/// body's hash, so with this header the signature is checked before one body byte is read;
/// the body is then hashed as it arrives and must match. Senders without it (before this
/// header existed) are still verified over the body they send, after reading it.
pub const HEADER_CONTENT_SHA256: &str = "x-ha-content-sha256";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing {0} header: peer requests must be signed")]
    Missing(&'static str),
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error(
        "timestamp is {skew_ms} ms away from this node's clock (limit {limit_ms} ms): check NTP"
    )]
    Stale { skew_ms: i64, limit_ms: u128 },
    #[error("bad signature: the peer does not hold any of this node's secrets")]
    BadSignature,
    #[error("nonce already used: replayed request")]
    Replayed,
    #[error("no secret configured: this node cannot authenticate peers")]
    NoSecret,
}

/// The three signature headers of one request.
#[derive(Debug, Clone)]
pub struct SignatureHeaders {
    pub timestamp_ms: String,
    pub nonce: String,
    pub signature: String,
}

fn canonical(method: &str, path: &str, ts: &str, nonce: &str, body_hash: &str) -> Vec<u8> {
    format!("ha-sidecar-v1\n{method}\n{path}\n{ts}\n{nonce}\n{body_hash}").into_bytes()
}

/// The body hash as signed and as sent in [`HEADER_CONTENT_SHA256`].
pub fn content_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Whether a declared hash has the form of one (64 lowercase hex digits).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn mac(secret: &Secret, msg: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(&secret.0).expect("HMAC accepts keys of any length");
    m.update(msg);
    m
}

/// Signs a request with the first secret.
pub fn sign(
    secret: &Secret,
    method: &str,
    path: &str,
    body: &[u8],
    now_ms: u64,
) -> SignatureHeaders {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let ts = now_ms.to_string();
    let hash = content_sha256(body);
    let sig = mac(secret, &canonical(method, path, &ts, &nonce, &hash)).finalize();
    SignatureHeaders {
        timestamp_ms: ts,
        nonce,
        signature: hex::encode(sig.into_bytes()),
    }
}

/// Checks signatures, the clock-skew window and nonce reuse.
pub struct Verifier {
    secrets: Vec<Secret>,
    max_skew: Duration,
    /// Nonces seen within the window; an entry outlives the window, so a replay is either
    /// stale or found here. Bounded: past the bound the oldest go first (documented limit).
    nonces: moka::sync::Cache<String, ()>,
}

impl Verifier {
    pub fn new(secrets: Vec<Secret>, max_skew: Duration) -> Self {
        Verifier {
            secrets,
            max_skew,
            nonces: moka::sync::Cache::builder()
                .max_capacity(2_000_000)
                .time_to_live(max_skew * 2 + Duration::from_secs(1))
                .build(),
        }
    }

    /// Verifies a request over its body. Order matters: the signature is checked before the
    /// nonce is recorded, so unsigned traffic cannot fill the nonce cache.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        headers: Option<&SignatureHeaders>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), AuthError> {
        self.verify_hash(method, path, headers, &content_sha256(body), now_ms)
    }

    /// What can be checked before the body: a secret is configured, the headers are there
    /// and well-formed, the timestamp is within the window. Records nothing.
    pub fn precheck(
        &self,
        headers: Option<&SignatureHeaders>,
        now_ms: u64,
    ) -> Result<(), AuthError> {
        let (h, ts) = self.timestamped(headers)?;
        if hex::decode(&h.signature).is_err() {
            return Err(AuthError::Malformed(HEADER_SIGNATURE));
        }
        self.in_window(ts, now_ms)
    }

    /// A secret is configured and the headers are there with a well-formed timestamp.
    fn timestamped<'h>(
        &self,
        headers: Option<&'h SignatureHeaders>,
    ) -> Result<(&'h SignatureHeaders, u64), AuthError> {
        if self.secrets.is_empty() {
            return Err(AuthError::NoSecret);
        }
        let h = headers.ok_or(AuthError::Missing(HEADER_SIGNATURE))?;
        let ts: u64 = h
            .timestamp_ms
            .parse()
            .map_err(|_| AuthError::Malformed(HEADER_TIMESTAMP))?;
        Ok((h, ts))
    }

    fn in_window(&self, ts: u64, now_ms: u64) -> Result<(), AuthError> {
        let skew = now_ms as i128 - ts as i128;
        if skew.unsigned_abs() > self.max_skew.as_millis() {
            return Err(AuthError::Stale {
                skew_ms: skew as i64,
                limit_ms: self.max_skew.as_millis(),
            });
        }
        Ok(())
    }

    /// Verifies a request over the hash of its body (declared by the sender, or computed).
    pub fn verify_hash(
        &self,
        method: &str,
        path: &str,
        headers: Option<&SignatureHeaders>,
        body_sha256: &str,
        now_ms: u64,
    ) -> Result<(), AuthError> {
        let (h, ts) = self.timestamped(headers)?;
        if h.nonce.len() < 16
            || h.nonce.len() > 64
            || !h.nonce.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(AuthError::Malformed(HEADER_NONCE));
        }
        let sig = hex::decode(&h.signature).map_err(|_| AuthError::Malformed(HEADER_SIGNATURE))?;
        let msg = canonical(method, path, &h.timestamp_ms, &h.nonce, body_sha256);
        let good = self
            .secrets
            .iter()
            .any(|s| mac(s, &msg).verify_slice(&sig).is_ok());
        if !good {
            return Err(AuthError::BadSignature);
        }
        self.in_window(ts, now_ms)?;
        let entry = self.nonces.entry(h.nonce.clone()).or_insert(());
        if !entry.is_fresh() {
            return Err(AuthError::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Secret {
        Secret(x.as_bytes().to_vec())
    }

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn signed_request_verifies_once() {
        let v = Verifier::new(vec![s("k1-0123456789abcdef")], Duration::from_secs(60));
        let h = sign(
            &s("k1-0123456789abcdef"),
            "POST",
            "/v1/peer/batch",
            b"{}",
            NOW,
        );
        assert_eq!(
            v.verify("POST", "/v1/peer/batch", Some(&h), b"{}", NOW + 10),
            Ok(())
        );
        assert_eq!(
            v.verify("POST", "/v1/peer/batch", Some(&h), b"{}", NOW + 10),
            Err(AuthError::Replayed)
        );
    }

    #[test]
    fn every_part_is_covered() {
        let v = Verifier::new(vec![s("k1-0123456789abcdef")], Duration::from_secs(60));
        let h = sign(
            &s("k1-0123456789abcdef"),
            "POST",
            "/v1/peer/batch",
            b"{}",
            NOW,
        );
        let bad = [
            v.verify("PUT", "/v1/peer/batch", Some(&h), b"{}", NOW),
            v.verify("POST", "/v1/peer/other", Some(&h), b"{}", NOW),
            v.verify("POST", "/v1/peer/batch", Some(&h), b"{ }", NOW),
        ];
        for r in bad {
            assert_eq!(r, Err(AuthError::BadSignature));
        }
        let mut other_ts = h.clone();
        other_ts.timestamp_ms = (NOW + 1).to_string();
        assert_eq!(
            v.verify("POST", "/v1/peer/batch", Some(&other_ts), b"{}", NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify("POST", "/v1/peer/batch", None, b"{}", NOW),
            Err(AuthError::Missing(HEADER_SIGNATURE))
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let v = Verifier::new(vec![s("k1-0123456789abcdef")], Duration::from_secs(60));
        let h = sign(&s("k1-0123456789abcdef"), "POST", "/p", b"", NOW);
        assert!(matches!(
            v.verify("POST", "/p", Some(&h), b"", NOW + 61_000),
            Err(AuthError::Stale { .. })
        ));
        let h = sign(&s("k1-0123456789abcdef"), "POST", "/p", b"", NOW + 61_000);
        assert!(matches!(
            v.verify("POST", "/p", Some(&h), b"", NOW),
            Err(AuthError::Stale { .. })
        ));
    }

    #[test]
    fn rotation_old_and_new_both_verify() {
        let both = Verifier::new(
            vec![s("new-0123456789abcdef"), s("old-0123456789abcdef")],
            Duration::from_secs(60),
        );
        let only_new = Verifier::new(vec![s("new-0123456789abcdef")], Duration::from_secs(60));
        let by_old = sign(&s("old-0123456789abcdef"), "POST", "/p", b"x", NOW);
        let by_new = sign(&s("new-0123456789abcdef"), "POST", "/p", b"x", NOW);
        assert_eq!(both.verify("POST", "/p", Some(&by_old), b"x", NOW), Ok(()));
        assert_eq!(both.verify("POST", "/p", Some(&by_new), b"x", NOW), Ok(()));
        assert_eq!(
            only_new.verify("POST", "/p", Some(&by_old), b"x", NOW),
            Err(AuthError::BadSignature)
        );
    }
}
