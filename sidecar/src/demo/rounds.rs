//! The demo's rounds, in turn: what the simulated master does on node A (or B) and when it
//! shows on the other node, timed and rounded to a tenth of a millisecond.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::Restart;
use crate::app::Node;

/// How long a round waits for its effect on the other node.
const PATIENCE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(5);

pub(crate) struct Demo {
    http: reqwest::Client,
    a: Node,
    b: Option<Node>,
    restart: Restart,
    /// Events read from B's stream by the tail task.
    tail: mpsc::Receiver<String>,
    tail_task: tokio::task::JoinHandle<()>,
}

fn ms(t: Instant) -> String {
    format!("{:.1} ms", t.elapsed().as_secs_f64() * 1000.0)
}

fn e(e: reqwest::Error) -> String {
    e.to_string()
}

/// Polls `check` every few milliseconds until it holds or [`PATIENCE`] passed.
async fn until<F, Fut>(mut check: F) -> Result<bool, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if check().await? {
            return Ok(true);
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(false)
}

/// Tails B's event stream (`GET /v1/events/stream`), across B's restarts: resumes with the
/// last cursor, so nothing is missed while B is down.
fn tail(
    http: reqwest::Client,
    url: String,
    tx: mpsc::Sender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        loop {
            let mut req = http.get(format!("{url}v1/events/stream"));
            if let Some(id) = &last {
                req = req.header("last-event-id", id.as_str());
            }
            if let Ok(mut resp) = req.send().await {
                let mut parser = crate::stream_client::SseParser::default();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    for m in parser.push(&chunk) {
                        if m.id.is_some() {
                            last = m.id.clone();
                        }
                        if !m.data.is_empty() && tx.send(m.data).await.is_err() {
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

impl Demo {
    pub(crate) fn new(a: Node, b: Node, restart: Restart) -> Demo {
        let http = reqwest::Client::new();
        let (tx, rx) = mpsc::channel(64);
        let tail_task = tail(http.clone(), b.peer_url(), tx);
        Demo {
            http,
            a,
            b: Some(b),
            restart,
            tail: rx,
            tail_task,
        }
    }

    fn b_local(&self) -> String {
        format!("http://{}/", self.restart.local)
    }

    pub(crate) async fn round(&mut self, n: u64) -> Result<String, String> {
        let line = match n % 5 {
            1 => self.eviction(n).await?,
            2 => self.index_write(n).await?,
            3 => self.event(n).await?,
            4 => self.session(n).await?,
            _ => self.outage(n).await?,
        };
        Ok(format!("round {n}: {line}"))
    }

    /// The master caches a project on B, evicts it on A; B drops it.
    async fn eviction(&self, n: u64) -> Result<String, String> {
        let key = format!("tools/project-{}", n % 7);
        let b_url = format!("{}v1/cache/projects/{key}", self.b_local());
        self.http
            .put(&b_url)
            .json(&json!({"name": key, "round": n}))
            .send()
            .await
            .map_err(e)?;
        let t0 = Instant::now();
        let accepted: Value = self
            .http
            .post(format!("{}v1/cache/projects/evict", self.a.local_url()))
            .json(&json!({"keys": [key]}))
            .send()
            .await
            .map_err(e)?
            .json()
            .await
            .map_err(e)?;
        let gone =
            until(|| async { Ok(self.http.get(&b_url).send().await.map_err(e)?.status() == 404) })
                .await?;
        Ok(match gone {
            true => format!(
                "eviction: `projects/{key}` cached on B, evicted on A{}; gone from B after {}",
                if accepted["forwarded"] == true {
                    " (queued for B)"
                } else {
                    ""
                },
                ms(t0)
            ),
            false => format!("eviction of `{key}` not on B after {PATIENCE:?} (is B reachable?)"),
        })
    }

    /// The master indexes a change on A; B finds it by a query.
    async fn index_write(&self, n: u64) -> Result<String, String> {
        let id = format!("tools~{n}");
        let subject = format!("demo change {n}");
        let t0 = Instant::now();
        let status = self
            .http
            .put(format!("{}v1/index/changes/tools~{n}", self.a.local_url()))
            .json(
                &json!({"version": 1, "doc": {"project": "tools", "number": n,
                "subject": subject, "status": "NEW", "updated": crate::clock::now_ms() / 1000}}),
            )
            .send()
            .await
            .map_err(e)?
            .status();
        if !status.is_success() {
            return Err(format!("index write refused: {status}"));
        }
        let query = reqwest::Url::parse_with_params(
            &format!("{}v1/index/changes", self.b_local()),
            &[("q", format!("number:{n}"))],
        )
        .map_err(|e| e.to_string())?;
        let found = until(|| async {
            let r: Value = self
                .http
                .get(query.clone())
                .send()
                .await
                .map_err(e)?
                .json()
                .await
                .map_err(e)?;
            Ok(r["total"] == 1)
        })
        .await?;
        Ok(match found {
            true => format!(
                "index write: change `{id}` indexed on A; `number:{n}` finds it on B after {}",
                ms(t0)
            ),
            false => format!("index write of `{id}` not searchable on B after {PATIENCE:?}"),
        })
    }

    /// The master publishes a stream event on A; a tail of B's stream receives it.
    async fn event(&mut self, n: u64) -> Result<String, String> {
        let event = json!({"type": "patchset-created", "eventCreatedOn": crate::clock::now_ms() / 1000,
            "project": "tools", "change": {"project": "tools", "number": n}, "demoRound": n});
        let t0 = Instant::now();
        let reply: Value = self
            .http
            .post(format!("{}v1/events", self.a.local_url()))
            .json(&event)
            .send()
            .await
            .map_err(e)?
            .json()
            .await
            .map_err(e)?;
        let marker = format!("\"demoRound\":{n}");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.tail.recv()).await {
                Ok(Some(data)) if data.contains(&marker) => {
                    return Ok(format!(
                    "event: `patchset-created` published on A (origin {}); on B's stream after {}",
                    reply["id"]
                        .as_str()
                        .unwrap_or("?")
                        .split('/')
                        .next()
                        .unwrap_or("?"),
                    ms(t0)
                ))
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => {
                    return Ok(format!(
                        "event of round {n} not on B's stream after {PATIENCE:?}"
                    ))
                }
            }
        }
    }

    /// The master logs a user in on A; B reads the session; a logout on B ends it on A too.
    async fn session(&self, n: u64) -> Result<String, String> {
        let account = 1_000_000 + n;
        let created: Value = self
            .http
            .post(format!("{}v1/sessions", self.a.local_url()))
            .json(&json!({"account_id": account}))
            .send()
            .await
            .map_err(e)?
            .json()
            .await
            .map_err(e)?;
        let token = created["id"].as_str().ok_or("no session id")?.to_owned();
        let t0 = Instant::now();
        let on_b = format!("{}v1/sessions/{token}", self.b_local());
        let seen =
            until(|| async { Ok(self.http.get(&on_b).send().await.map_err(e)?.status() == 200) })
                .await?;
        let read = ms(t0);
        let t1 = Instant::now();
        self.http.delete(&on_b).send().await.map_err(e)?;
        let on_a = format!("{}v1/sessions/{token}", self.a.local_url());
        let gone =
            until(|| async { Ok(self.http.get(&on_a).send().await.map_err(e)?.status() == 404) })
                .await?;
        Ok(match (seen, gone) {
            (true, true) => format!(
                "session: account {account} logged in on A, session read on B after {read}; \
                 logged out on B, gone on A after {}",
                ms(t1)
            ),
            _ => format!("session of account {account}: read on B {seen}, gone on A {gone}"),
        })
    }

    /// B stops; the master keeps working on A, whose outbox holds B's share; B starts again
    /// and catches up.
    async fn outage(&mut self, n: u64) -> Result<String, String> {
        if let Some(b) = self.b.take() {
            b.shutdown().await;
        }
        let down = Instant::now();
        const WRITES: u64 = 3;
        for i in 0..WRITES {
            let status = self
                .http
                .put(format!(
                    "{}v1/index/changes/outage~{n}~{i}",
                    self.a.local_url()
                ))
                .json(
                    &json!({"version": 1, "doc": {"project": "outage", "number": n * 10 + i,
                    "subject": format!("written while B was down ({n}.{i})")}}),
                )
                .send()
                .await
                .map_err(e)?
                .status();
            if !status.is_success() {
                return Err(format!("index write refused: {status}"));
            }
        }
        let status: Value = self
            .http
            .get(format!("{}v1/status", self.a.peer_url()))
            .send()
            .await
            .map_err(e)?
            .json()
            .await
            .map_err(e)?;
        let queued: u64 = status["peers"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["outbox_depth"].as_u64()).sum())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let b = self.restart.start().await?;
        let back = Instant::now();
        let offline = down.elapsed();
        self.b = Some(b);
        let last = format!(
            "{}v1/index/changes/outage~{n}~{}",
            self.b_local(),
            WRITES - 1
        );
        let caught_up =
            until(|| async { Ok(self.http.get(&last).send().await.map_err(e)?.status() == 200) })
                .await?;
        Ok(match caught_up {
            true => format!(
                "outage: B stopped; {WRITES} index writes on A meanwhile (A's outbox for B: {queued}); \
                 B restarted after {:.1} s and caught up {} later",
                offline.as_secs_f64(),
                ms(back)
            ),
            false => format!("outage: B restarted but had not caught up after {PATIENCE:?}"),
        })
    }

    pub(crate) async fn shutdown(self) {
        self.tail_task.abort();
        self.a.shutdown().await;
        if let Some(b) = self.b {
            b.shutdown().await;
        }
    }
}
