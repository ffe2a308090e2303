//! `ha-sidecar reindex`: bulk-loads a JSON-lines file of documents into a running node through
//! its local API (`POST /v1/index/{kind}`, large batches, two in flight), so the node's peers
//! receive the documents through the transport as for any write. Re-running it is harmless:
//! the version rule ignores what is already there. Like `demo`, it plays a master's part and
//! talks HTTP with reqwest.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::index::Kind;

/// Where and how to load.
pub struct ReindexArgs<'a> {
    pub kind: Kind,
    pub from: &'a Path,
    /// `http://host:port/` of the node's local API.
    pub url: url::Url,
    pub token: Option<Vec<u8>>,
    /// Largest request body (stays under the node's `sidecar.maxLocalBody`).
    pub batch_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReindexSummary {
    pub docs: u64,
    pub applied: u64,
    pub stale: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a JSON object: {reason}")]
    BadLine {
        path: String,
        line: u64,
        reason: String,
    },
    #[error("the node refused a batch ending at line {line}: {status} {message}")]
    Refused {
        line: u64,
        status: u16,
        message: String,
    },
    #[error("cannot reach the node at {url}: {reason}")]
    Http { url: String, reason: String },
}

/// Most documents per request (the node's own limit is 10,000).
const MAX_DOCS_PER_BATCH: usize = 5_000;

struct Progress {
    total_bytes: u64,
    started: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    fn show(&mut self, bytes: u64, docs: u64, done: bool) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if !done && self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let pct = if self.total_bytes == 0 {
            100.0
        } else {
            bytes as f64 * 100.0 / self.total_bytes as f64
        };
        let width = 30;
        let filled = ((pct / 100.0) * width as f64) as usize;
        let bar: String = "#".repeat(filled.min(width)) + &"-".repeat(width - filled.min(width));
        let line = format!(
            "[{bar}] {pct:5.1}%  {docs} docs  {:.0} docs/s  {:.1}s",
            docs as f64 / secs,
            secs
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}");
            if done {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}

/// Reads batches of lines; sends them with one request in flight while the next is read.
pub async fn run(args: ReindexArgs<'_>) -> Result<ReindexSummary, ReindexError> {
    let path = args.from.display().to_string();
    let read_err = |source| ReindexError::Read {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(args.from).map_err(read_err)?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let lines = BufReader::with_capacity(1 << 20, file);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| ReindexError::Http {
            url: args.url.to_string(),
            reason: e.to_string(),
        })?;
    let endpoint = args
        .url
        .join(&format!("v1/index/{}", args.kind))
        .map_err(|e| ReindexError::Http {
            url: args.url.to_string(),
            reason: e.to_string(),
        })?;
    let mut progress = Progress {
        total_bytes,
        started: Instant::now(),
        last: Instant::now(),
        tty: std::io::stderr().is_terminal(),
    };
    let mut summary = ReindexSummary::default();
    let mut batches = Batches {
        lines,
        path,
        buf: String::new(),
        line_no: 0,
        bytes_read: 0,
        max_bytes: args.batch_bytes,
    };
    let mut in_flight: Option<tokio::task::JoinHandle<Result<(u64, u64), ReindexError>>> = None;
    loop {
        let (body, n) = batches.next()?;
        let (line_no, bytes_read) = (batches.line_no, batches.bytes_read);
        if let Some(prev) = in_flight.take() {
            let (applied, stale) = prev.await.map_err(|e| ReindexError::Http {
                url: endpoint.to_string(),
                reason: e.to_string(),
            })??;
            summary.applied += applied;
            summary.stale += stale;
        }
        progress.show(bytes_read, summary.docs, false);
        if n == 0 {
            break;
        }
        summary.docs += n as u64;
        let (http, endpoint, token) = (http.clone(), endpoint.clone(), args.token.clone());
        in_flight = Some(tokio::spawn(send(http, endpoint, token, body, line_no)));
    }
    progress.show(batches.bytes_read, summary.docs, true);
    Ok(summary)
}

/// The file's lines, read into request bodies of at most `max_bytes` (or
/// [`MAX_DOCS_PER_BATCH`] documents), each line checked to be one JSON object.
struct Batches {
    lines: BufReader<std::fs::File>,
    path: String,
    buf: String,
    line_no: u64,
    bytes_read: u64,
    max_bytes: usize,
}

impl Batches {
    /// The next body and its number of documents (0 at the end of the file).
    fn next(&mut self) -> Result<(Vec<u8>, usize), ReindexError> {
        let mut body = Vec::with_capacity(self.max_bytes + 4096);
        body.extend_from_slice(b"{\"docs\":[");
        let mut n = 0;
        while n < MAX_DOCS_PER_BATCH && body.len() < self.max_bytes {
            self.buf.clear();
            let read =
                self.lines
                    .read_line(&mut self.buf)
                    .map_err(|source| ReindexError::Read {
                        path: self.path.clone(),
                        source,
                    })?;
            if read == 0 {
                break;
            }
            self.line_no += 1;
            self.bytes_read += read as u64;
            let line = self.buf.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| ReindexError::BadLine {
                path: self.path.clone(),
                line: self.line_no,
                reason,
            };
            if !line.starts_with('{') {
                return Err(bad("expected {\"id\", \"version\", \"doc\"}".into()));
            }
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(line) {
                return Err(bad(e.to_string()));
            }
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(line.as_bytes());
            n += 1;
        }
        body.extend_from_slice(b"]}");
        Ok((body, n))
    }
}

async fn send(
    http: reqwest::Client,
    endpoint: url::Url,
    token: Option<Vec<u8>>,
    body: Vec<u8>,
    line: u64,
) -> Result<(u64, u64), ReindexError> {
    let mut req = http
        .post(endpoint.clone())
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.header(
            "authorization",
            format!("Bearer {}", String::from_utf8_lossy(&t)),
        );
    }
    let http_err = |e: reqwest::Error| ReindexError::Http {
        url: endpoint.to_string(),
        reason: crate::cli_http::explain(&e, &endpoint),
    };
    let resp = req.send().await.map_err(http_err)?;
    let status = resp.status().as_u16();
    if status == 404 || resp.headers().get("x-ha-instance").is_none() {
        return Err(ReindexError::Http {
            url: endpoint.to_string(),
            reason: crate::cli_http::explain_status(
                &endpoint,
                resp.status(),
                resp.headers(),
                "local",
            ),
        });
    }
    let reply: serde_json::Value = resp.json().await.map_err(http_err)?;
    if status == 401 {
        return Err(ReindexError::Refused {
            line,
            status,
            message: format!(
                "{} (give the local API's token with --token, HA_SIDECAR_LOCALTOKEN or -c CONFIG)",
                reply["error"].as_str().unwrap_or_default()
            ),
        });
    }
    if status != 202 {
        return Err(ReindexError::Refused {
            line,
            status,
            message: reply["error"].as_str().unwrap_or_default().to_owned(),
        });
    }
    Ok((
        reply["applied"].as_u64().unwrap_or(0),
        reply["stale"].as_u64().unwrap_or(0),
    ))
}
