//! Stream-event helpers for tests and the benchmark: Gerrit-like events, publishing, and an SSE
//! reader over `GET /v1/events/stream`.

use std::time::{Duration, Instant};

use ha_sidecar::stream_client::{SseMessage, SseParser};

/// A Gerrit-like `patchset-created` event numbered `n`, padded to roughly `size` bytes.
pub fn gerrit_event(event_type: &str, n: u64, size: usize) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!(
        r#"{{"uploader":{{"name":"Alice Doe","email":"alice@example.com","username":"alice"}},"patchSet":{{"number":1,"revision":"b9f6a527e3d1c2a4f0b8e6d5c4b3a29180716253","ref":"refs/changes/01/{n}/1"}},"change":{{"project":"repo1","branch":"master","number":{n},"subject":"change {n}","status":"NEW"}},"project":"repo1","n":{n},"type":"{event_type}","eventCreatedOn":{now}"#
    );
    let pad = size.saturating_sub(base.len() + 12);
    let mut s = base;
    if pad > 0 {
        s.push_str(&format!(r#","pad":"{}""#, "x".repeat(pad)));
    }
    s.push('}');
    s.into_bytes()
}

/// `POST /v1/events` on a local API; returns the status and the JSON reply.
pub async fn publish(
    http: &reqwest::Client,
    local: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let r = http
        .post(format!("{local}v1/events"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("publish request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// A client for streams: no overall timeout (streams are long), no pooling.
pub fn stream_http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// An open event stream.
pub struct SseReader {
    resp: reqwest::Response,
    parser: SseParser,
    /// The `id:` of the last message read (event or cursor-only block).
    pub last_id: Option<String>,
}

impl SseReader {
    /// Opens `<peer>v1/events/stream?<query>`; panics unless 200.
    pub async fn open(
        http: &reqwest::Client,
        peer: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> SseReader {
        let mut req = http.get(format!("{peer}v1/events/stream?{query}"));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("stream request");
        let status = resp.status().as_u16();
        if status != 200 {
            panic!(
                "stream answered {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        SseReader {
            resp,
            parser: SseParser::default(),
            last_id: None,
        }
    }

    /// The next chunk's messages that carry data (events), `None` when the stream ended.
    pub async fn next_events(&mut self) -> Option<Vec<SseMessage>> {
        let chunk = self.resp.chunk().await.ok()??;
        let mut msgs = self.parser.push(&chunk);
        if let Some(id) = msgs.iter().rev().find_map(|m| m.id.as_ref()) {
            self.last_id = Some(id.clone());
        }
        msgs.retain(|m| !m.data.is_empty());
        Some(msgs)
    }

    /// Reads until `n` events arrived (panics after `timeout`, or if the stream ends).
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<SseMessage> {
        let deadline = Instant::now() + crate::patience(timeout);
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.next_events()).await {
                Ok(Some(ev)) => got.extend(ev),
                Ok(None) => panic!("stream ended after {} of {n} events", got.len()),
                Err(_) => panic!("timed out with {} of {n} events", got.len()),
            }
        }
        got
    }
}

/// `n` of an event made by [`gerrit_event`], without parsing the JSON: `"n":` comes before
/// any padding and occurs nowhere else in such an event. For many tailers in one process
/// (a full parse of every event by each of them costs more than serving it).
pub fn n_of(data: &str) -> Option<u64> {
    let i = memchr::memmem::find(data.as_bytes(), b"\"n\":")? + 4;
    let end = data[i..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(data.len(), |e| e + i);
    data[i..end].parse().ok()
}

/// `(instanceId, n)` of an event made by [`gerrit_event`].
pub fn origin_and_n(data: &str) -> (String, u64) {
    let v: serde_json::Value = serde_json::from_str(data).expect("event is JSON");
    (
        v["instanceId"].as_str().unwrap_or_default().to_owned(),
        v["n"].as_u64().expect("event has n"),
    )
}
