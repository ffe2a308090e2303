//! `GET /v1/events/stream` (SPEC §4.3): the event log as Server-Sent Events. Each event is
//! `id: <cursor>` plus `data:` lines of Gerrit's JSON; the stream opens with an `id:`-only
//! block carrying the start cursor, and idle streams get a `: heartbeat` comment. Every tailer
//! reads the log at its own pace, a page at a time, only when its socket takes more: a slow
//! client is never dropped and never holds anyone back. An error met mid-stream (retention
//! removed what a very slow client still had to read) ends the stream with `event: error`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::caller::StreamCaller;
use super::ApiError;
use crate::events::{
    sse_data_lines, Cursor, EventError, EventLog, Page, Recent, StartPoint, TypeFilter,
};
use crate::metrics::Metrics;

/// Events per read: bounds a tailer's memory to one page.
const PAGE: usize = 256;
/// A turn served from memory stops after about this many bytes.
const CHUNK_BYTES: usize = 256 << 10;
/// A live tailer sends at most one chunk per this interval: under a stream of small commits
/// every tailer would otherwise wake, format and write once per commit. Bounds the added
/// latency too.
const COALESCE: Duration = Duration::from_millis(5);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/events/stream", web::get().to(stream));
}

/// Where a request asks to start: `Last-Event-ID` or `?cursor=` (resume), else `?since=`,
/// else new events only; plus the `?type=` filter.
fn parse_request(req: &HttpRequest, log: &EventLog) -> Result<(Cursor, TypeFilter), ApiError> {
    let mut types = Vec::new();
    let (mut cursor, mut since) = (None, None);
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match &*k {
            "type" => types.push(v.into_owned()),
            "cursor" => cursor = Some(v.into_owned()),
            "since" => since = Some(v.into_owned()),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter `{other}`: use cursor, since or type"
                )))
            }
        }
    }
    let header = req
        .headers()
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::BadRequest("Last-Event-ID is not text".into()))
        })
        .transpose()?;
    let start = match header.filter(|h| !h.trim().is_empty()).or(cursor) {
        Some(c) => StartPoint::Cursor(Cursor::parse(c.trim())?),
        None => match since {
            // The parser's message already says what is accepted: no second prefix.
            Some(s) => StartPoint::parse_since(&s).map_err(|e| {
                ApiError::BadRequest(match e {
                    crate::events::EventError::BadCursor(m) => m,
                    other => other.to_string(),
                })
            })?,
            None => StartPoint::Now,
        },
    };
    let cursor = match start {
        StartPoint::Beginning => Cursor::beginning(),
        StartPoint::SinceEpochSeconds(s) => Cursor::since(s),
        StartPoint::Cursor(c) => c,
        StartPoint::Now => log.cursor_now(),
    };
    let filter = if types.is_empty() {
        TypeFilter::all()
    } else {
        TypeFilter::only(types)
    };
    Ok((cursor, filter))
}

async fn stream(state: StreamCaller, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let (cursor, filter) = parse_request(&req, &state.events)?;
    let filter = filter.within(state.projects.clone());
    let mut wake = state.events.subscribe();
    wake.borrow_and_update();
    // The first page is read before answering, so an expired cursor gets a plain 410.
    let first = read(&state.events, &cursor, &filter).await?;
    let tail = Tail {
        log: state.events.clone(),
        cursor,
        filter,
        wake,
        pending: Some(first),
        live: None,
        last_sent: Instant::now(),
        backlog: false,
        opened: false,
        done: false,
        heartbeat: state.config.event.heartbeat,
        stop: state.stop.clone(),
        metrics: state.metrics.clone(),
        _guard: TailerGuard::new(state.metrics.clone()),
    };
    let body = futures_util::stream::unfold(tail, |mut t| async move {
        t.next_chunk()
            .await
            .map(|b| (Ok::<_, actix_web::Error>(b), t))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

async fn read(
    log: &Arc<EventLog>,
    cursor: &Cursor,
    filter: &TypeFilter,
) -> Result<Page, EventError> {
    let (log, from, filter) = (
        log.clone(),
        StartPoint::Cursor(cursor.clone()),
        filter.clone(),
    );
    tokio::task::spawn_blocking(move || log.read(&from, &filter, PAGE))
        .await
        .map_err(|e| EventError::Internal(format!("read task failed: {e}")))?
}

struct TailerGuard(Arc<Metrics>);

impl TailerGuard {
    fn new(m: Arc<Metrics>) -> Self {
        m.event_tailers.inc();
        TailerGuard(m)
    }
}

impl Drop for TailerGuard {
    fn drop(&mut self) {
        self.0.event_tailers.dec();
    }
}

/// One client's position and what it waits on.
struct Tail {
    log: Arc<EventLog>,
    cursor: Cursor,
    filter: TypeFilter,
    wake: watch::Receiver<u64>,
    pending: Option<Page>,
    /// `Some(p)` when the cursor has read every record up to log position `p`: the next
    /// records come from the log's memory ([`EventLog::read_recent`]) while it holds them.
    live: Option<u64>,
    /// When the last chunk of events went out.
    last_sent: Instant,
    /// Memory holds more than the last chunk took: go on without waiting.
    backlog: bool,
    opened: bool,
    done: bool,
    heartbeat: Duration,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    _guard: TailerGuard,
}

/// What a turn served from memory gave.
enum Live {
    Chunk(Bytes),
    Nothing,
    /// The records after our position left memory: read the log.
    Behind,
}

impl Tail {
    /// The next bytes to send, `None` to end the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if !self.opened {
            self.opened = true;
            return Some(Bytes::from(format!(
                ": ha-sidecar event stream\nretry: 1000\nid: {}\n\n",
                self.cursor
            )));
        }
        loop {
            if let Some(page) = self.pending.take() {
                let caught_up = page.caught_up;
                self.live = caught_up.then_some(page.position);
                if !page.events.is_empty() {
                    if !caught_up {
                        self.prefetch_later();
                    }
                    return Some(self.format(page));
                }
                self.cursor = page.next;
                if !caught_up {
                    self.prefetch_later();
                    continue;
                }
            }
            // Caught up: wait for a commit, a heartbeat or the shutdown.
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = tokio::time::sleep(self.heartbeat) => {
                    return Some(Bytes::from_static(b": heartbeat\n\n"));
                }
                _ = self.stop.cancelled() => return None,
            }
            if let Some(position) = self.live {
                let since = self.last_sent.elapsed();
                if since < COALESCE && !std::mem::take(&mut self.backlog) {
                    // Let more commits gather; what they add is read below.
                    tokio::select! {
                        _ = tokio::time::sleep(COALESCE - since) => {}
                        _ = self.stop.cancelled() => return None,
                    }
                }
                self.wake.borrow_and_update();
                match self.serve_live(position) {
                    Live::Chunk(b) => {
                        self.last_sent = Instant::now();
                        return Some(b);
                    }
                    Live::Nothing => continue,
                    Live::Behind => self.live = None,
                }
            }
            self.wake.borrow_and_update();
            match read(&self.log, &self.cursor, &self.filter).await {
                Ok(p) => self.pending = Some(p),
                Err(e) => return Some(self.fail(e)),
            }
        }
    }

    /// Marks that the next read must happen at once (the log holds more than one page).
    fn prefetch_later(&mut self) {
        // Nothing is read ahead: the next call reads when the client has taken this page.
        self.wake.mark_changed();
    }

    /// Formats what was committed after `position` from the log's memory: no blocking read,
    /// and each event's `data:` lines were formatted once for every tailer. Each event's `id:`
    /// is the cursor right after it; when the type filter skipped records after the last event
    /// sent, an `id:`-only block carries the cursor past them.
    fn serve_live(&mut self, position: u64) -> Live {
        let mut out = Vec::new();
        let (cursor, filter) = (&mut self.cursor, &self.filter);
        let mut sent = 0u64;
        let mut skipped_after = false;
        let got = self.log.read_recent(position, PAGE, |e| {
            if !cursor.visit(e.origin(), e.seq(), e.created_on()) {
                return true;
            }
            if !filter.admits(e.event_type(), || e.body()) {
                skipped_after = true;
                return true;
            }
            skipped_after = false;
            if out.is_empty() {
                out.reserve(PAGE.min(64) * (e.sse_data().len() + 64));
            }
            out.extend_from_slice(b"id: ");
            cursor.write_to(&mut out);
            out.push(b'\n');
            out.extend_from_slice(e.sse_data());
            out.push(b'\n');
            sent += 1;
            out.len() < CHUNK_BYTES
        });
        let Recent::Read { position, more } = got else {
            return Live::Behind;
        };
        self.live = Some(position);
        self.backlog = more;
        if more {
            self.prefetch_later();
        }
        if sent == 0 {
            return Live::Nothing;
        }
        if skipped_after {
            out.extend_from_slice(b"id: ");
            self.cursor.write_to(&mut out);
            out.extend_from_slice(b"\n\n");
        }
        self.metrics.events_streamed.inc_by(sent);
        Live::Chunk(Bytes::from(out))
    }

    fn fail(&mut self, e: EventError) -> Bytes {
        self.done = true;
        tracing::warn!(error = %e, "event stream ended by an error");
        // The status the same error gets before the stream opens (`api::error`).
        let e = ApiError::from(e);
        let status = actix_web::ResponseError::status_code(&e).as_u16();
        let body = serde_json::json!({ "error": e.to_string(), "status": status });
        Bytes::from(format!("event: error\ndata: {body}\n\n"))
    }

    fn format(&mut self, page: Page) -> Bytes {
        let n = page.events.len();
        let size: usize = page.events.iter().map(|(_, b)| b.len() + 96).sum();
        let mut out = Vec::with_capacity(size);
        let mut cursor = std::mem::take(&mut self.cursor);
        for (i, (id, bytes)) in page.events.iter().enumerate() {
            out.extend_from_slice(b"id: ");
            if i + 1 == n {
                page.next.write_to(&mut out);
            } else {
                cursor.advance(id);
                cursor.write_to(&mut out);
            }
            out.push(b'\n');
            sse_data_lines(bytes, &mut out);
            out.push(b'\n');
        }
        self.cursor = page.next;
        self.metrics.events_streamed.inc_by(n as u64);
        Bytes::from(out)
    }
}
