//! The `ha-sidecar stream-events` client: tails `GET /v1/events/stream` of one of several
//! sidecars and prints one event JSON per line, like `gerrit stream-events`. It reconnects with
//! back-off, fails over to the next URL, and always resumes with the cursor of the last event
//! it printed, so within one run every event is printed exactly once whichever node serves it.
//!
//! `--cursor-file` keeps the cursor across runs: it is written (atomically, fsync'd) after the
//! events of each received chunk are written and flushed to the output. A run killed between
//! the flush and the cursor write prints those events again on the next run: across restarts
//! of the client delivery is at least once, with repeats bounded by one chunk.
//!
//! Like the demo, this is a client of the sidecar, so it uses reqwest (see ARCHITECTURE.md).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Options {
    /// Base URLs of sidecars (`listenUrl`) or of a load balancer in front of them.
    pub urls: Vec<url::Url>,
    pub types: Vec<String>,
    /// Where to start when there is no cursor yet: `beginning`, epoch seconds or a cursor.
    pub since: Option<String>,
    pub cursor_file: Option<PathBuf>,
    pub token: Option<String>,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A connection that sends nothing (not even a heartbeat) for this long is given up.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Options {
    pub fn new(urls: Vec<url::Url>) -> Self {
        Options {
            urls,
            types: Vec::new(),
            since: None,
            cursor_file: None,
            token: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{url} refused the stream with {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("cursor file {path}: {source}")]
    CursorFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// Reads a `--since` argument: what the server takes (`beginning`, `now`, epoch seconds, a
/// cursor) as it is, a date or time (`2026-12-04`, `2026-12-04T10:00:00Z`, UTC unless a zone
/// is given) as epoch seconds.
pub fn since_arg(text: &str) -> Result<String, String> {
    let text = text.trim();
    if crate::events::StartPoint::parse_since(text).is_ok() {
        return Ok(text.to_owned());
    }
    match crate::index::parse_timestamp(text) {
        Some(secs) if secs >= 0 => Ok(secs.to_string()),
        _ => Err(format!(
            "`{text}`: use beginning, now, epoch seconds, a date (2026-12-04, 2026-12-04T10:00:00Z) or a cursor"
        )),
    }
}

/// What ended one connection.
enum Ended {
    /// Worth trying again (here or elsewhere).
    Retry(String),
    /// The server cannot serve this cursor (410): another node might.
    Expired(String),
}

/// Tails until `stop` is cancelled or a permanent error.
pub async fn run<W: Write>(
    opts: &Options,
    out: &mut W,
    stop: CancellationToken,
) -> Result<(), StreamError> {
    if opts.urls.is_empty() {
        return Err(StreamError::Setup("give at least one --url".into()));
    }
    let http = reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.idle_timeout)
        .user_agent(concat!(
            "ha-sidecar-stream-events/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .map_err(|e| StreamError::Setup(format!("cannot build the HTTP client: {e}")))?;
    match follow(opts, &http, out, stop).await {
        // The reader went away (`stream-events | head`): nothing left to do.
        Err(StreamError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// The reconnect loop of [`run`].
async fn follow<W: Write>(
    opts: &Options,
    http: &reqwest::Client,
    out: &mut W,
    stop: CancellationToken,
) -> Result<(), StreamError> {
    let mut cursor = match &opts.cursor_file {
        Some(p) => read_cursor(p)?,
        None => None,
    };
    let mut backoff = crate::backoff::Backoff::new(opts.min_backoff, opts.max_backoff);
    let mut expired_in_a_row = 0usize;
    let mut i = 0usize;
    loop {
        let url = &opts.urls[i % opts.urls.len()];
        let ended = tokio::select! {
            r = tail_once(http, opts, url, &mut cursor, out) => r?,
            _ = stop.cancelled() => return Ok(()),
        };
        match ended {
            (Ended::Retry(why), delivered) => {
                expired_in_a_row = 0;
                if delivered {
                    backoff.reset();
                }
                tracing::warn!(url = %url, error = %why, "stream interrupted; failing over");
            }
            (Ended::Expired(why), _) => {
                expired_in_a_row += 1;
                if expired_in_a_row >= opts.urls.len() {
                    return Err(StreamError::Refused {
                        url: url.to_string(),
                        status: 410,
                        message: why,
                    });
                }
                tracing::warn!(url = %url, error = %why, "cursor expired here; trying the next url");
            }
        }
        i += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

/// One connection: returns why it ended and whether it got through to the stream.
async fn tail_once<W: Write>(
    http: &reqwest::Client,
    opts: &Options,
    base: &url::Url,
    cursor: &mut Option<String>,
    out: &mut W,
) -> Result<(Ended, bool), StreamError> {
    let mut url = base
        .join("v1/events/stream")
        .map_err(|e| StreamError::Setup(format!("bad url {base}: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        for t in &opts.types {
            q.append_pair("type", t);
        }
        match (cursor.as_ref(), opts.since.as_ref()) {
            (Some(c), _) => {
                q.append_pair("cursor", c);
            }
            (None, Some(s)) => {
                q.append_pair("since", s);
            }
            (None, None) => {}
        }
    }
    let mut req = http.get(url).header("accept", "text/event-stream");
    if let Some(t) = &opts.token {
        req = req.bearer_auth(t);
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let why = crate::cli_http::explain(&e, base);
            return Ok((Ended::Retry(format!("connection failed: {why}")), false));
        }
    };
    let status = resp.status().as_u16();
    if status == 404 || resp.headers().get("x-ha-instance").is_none() {
        let why = crate::cli_http::explain_status(base, resp.status(), resp.headers(), "listen");
        return Err(StreamError::Setup(why));
    }
    if status != 200 {
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return match status {
            410 => Ok((Ended::Expired(message), false)),
            400 | 401 | 403 | 404 => Err(StreamError::Refused {
                url: base.to_string(),
                status,
                message,
            }),
            _ => Ok((Ended::Retry(format!("answered {status}: {message}")), false)),
        };
    }
    tracing::info!(url = %base, resumed = cursor.is_some(), "streaming events");
    let mut parser = SseParser::default();
    let mut saved = cursor.clone();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok((Ended::Retry("the server closed the stream".into()), true)),
            Err(e) => return Ok((Ended::Retry(format!("reading failed: {e}")), true)),
        };
        let mut ended = None;
        for msg in parser.push(&chunk) {
            if msg.event.as_deref() == Some("error") {
                let v: serde_json::Value = serde_json::from_str(&msg.data).unwrap_or_default();
                let why = v["error"].as_str().unwrap_or(&msg.data).to_owned();
                ended = Some(if v["status"] == 410 {
                    Ended::Expired(why)
                } else {
                    Ended::Retry(why)
                });
                break;
            }
            if !msg.data.is_empty() {
                // A pretty-printed event arrives as several data lines: keep it on one line.
                out.write_all(msg.data.replace('\n', " ").as_bytes())
                    .and_then(|_| out.write_all(b"\n"))
                    .map_err(StreamError::Output)?;
            }
            if let Some(id) = msg.id {
                *cursor = Some(id);
            }
        }
        out.flush().map_err(StreamError::Output)?;
        if let (Some(path), true) = (&opts.cursor_file, *cursor != saved) {
            write_cursor(path, cursor.as_deref().unwrap_or_default())?;
            saved = cursor.clone();
        }
        if let Some(e) = ended {
            return Ok((e, true));
        }
    }
}

fn read_cursor(path: &Path) -> Result<Option<String>, StreamError> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => Ok(None),
        Ok(t) => Ok(Some(t.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StreamError::CursorFile {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_cursor(path: &Path, cursor: &str) -> Result<(), StreamError> {
    let err = |source| StreamError::CursorFile {
        path: path.to_owned(),
        source,
    };
    // Durable: a cursor that went back after a crash would deliver events twice.
    crate::durable::write_small(
        path,
        format!("{cursor}\n").as_bytes(),
        crate::durable::Fsync::Durable,
    )
    .map_err(err)
}

/// One dispatched SSE message.
#[derive(Debug, Default, PartialEq)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// An incremental Server-Sent Events parser: feed it chunks, get whole messages; a message cut
/// off by a dropped connection is never returned. It works on bytes and allocates only the
/// fields it returns (a tailer of a busy stream parses thousands of events a second).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    current: SseMessage,
    /// The current message's `data:` lines, joined with `\n`, as bytes.
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseMessage> {
        let mut out = Vec::new();
        // Whole lines are parsed straight from the chunk; only a partial line is kept.
        let mut rest = chunk;
        if !self.buf.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                self.buf.extend_from_slice(rest);
                return out;
            };
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(&rest[..nl]);
            self.line(&line, &mut out);
            line.clear();
            self.buf = line;
            rest = &rest[nl + 1..];
        }
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            self.line(&rest[..nl], &mut out);
            rest = &rest[nl + 1..];
        }
        self.buf.extend_from_slice(rest);
        out
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseMessage>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let mut msg = std::mem::take(&mut self.current);
            if self.has_data || msg.id.is_some() {
                msg.data = match String::from_utf8(std::mem::take(&mut self.data)) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                };
                out.push(msg);
            }
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"id" => self.current.id = Some(text(value)),
            b"event" => self.current.event = Some(text(value)),
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

fn text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b": hello\nretry: 1000\nid: v1~0\n\n").len() == 1);
        let text = b"id: v1~0~a~1\ndata: {\"type\":\"x\",\ndata:  \"n\":1}\n\n: heartbeat\n\nid: v1~0~a~2\ndata: {}\n";
        let (a, b) = text.split_at(17);
        let mut got = p.push(a);
        assert!(got.is_empty());
        got.extend(p.push(b));
        assert_eq!(got.len(), 1, "the second message is not complete");
        assert_eq!(got[0].id.as_deref(), Some("v1~0~a~1"));
        assert_eq!(got[0].data, "{\"type\":\"x\",\n \"n\":1}");
        let last = p.push(b"\n");
        assert_eq!(last[0].data, "{}");
        let err = p.push(b"event: error\ndata: {\"error\":\"gone\",\"status\":410}\n\n");
        assert_eq!(err[0].event.as_deref(), Some("error"));
        // Byte by byte, CRLF line ends, a field without a colon, an id-only block.
        let text = b"id: v1~0~a~3\r\ndata:x\r\ndata\r\nretry\r\n\r\nid: v1~0~a~4\n\n";
        let mut got = Vec::new();
        for b in text {
            got.extend(p.push(&[*b]));
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].data, "x\n");
        assert_eq!(got[0].id.as_deref(), Some("v1~0~a~3"));
        assert_eq!(
            (got[1].data.as_str(), got[1].id.as_deref()),
            ("", Some("v1~0~a~4"))
        );
    }

    #[test]
    fn cursor_file_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cursor");
        assert_eq!(read_cursor(&p).unwrap(), None);
        write_cursor(&p, "v1~5~a~3").unwrap();
        assert_eq!(read_cursor(&p).unwrap().as_deref(), Some("v1~5~a~3"));
    }
}
