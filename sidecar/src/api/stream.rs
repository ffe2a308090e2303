//! `GET /v1/events/stream` (SPEC §4.3): the event log as Server-Sent Events. Each event is
//! `id: <cursor>` plus `data:` lines of Gerrit's JSON; the stream opens with an `id:`-only
//! block carrying the start cursor, and idle streams get a `: heartbeat` comment. Every tailer
//! reads the log at its own pace, a page at a time, only when its socket takes more: a slow
//! client is never dropped and never holds anyone back. An error met mid-stream (retention
//! removed what a very slow client still had to read) ends the stream with `event: error`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{bearer, ApiError, AppState};
use crate::events::{Cursor, EventError, EventLog, Page, StartPoint, TypeFilter};
use crate::metrics::Metrics;

/// Events per read: bounds a tailer's memory to one page.
const PAGE: usize = 256;

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
            Some(s) => StartPoint::parse_since(&s).map_err(|e| {
                ApiError::BadRequest(format!(
                    "bad since: {e} (use since=beginning, since=<epoch seconds> or a cursor)"
                ))
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

async fn stream(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(token) = &state.config.event.stream_token {
        if !bearer(&req).is_some_and(|p| token.matches(p)) {
            return Err(ApiError::Unauthorized(
                "missing or wrong bearer token (event.streamToken)".into(),
            ));
        }
    }
    let (cursor, filter) = parse_request(&req, &state.events)?;
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
    opened: bool,
    done: bool,
    heartbeat: Duration,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    _guard: TailerGuard,
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

    fn fail(&mut self, e: EventError) -> Bytes {
        self.done = true;
        tracing::warn!(error = %e, "event stream ended by an error");
        let status = match &e {
            EventError::CursorExpired(_) => 410,
            EventError::BadCursor(_) => 400,
            _ => 500,
        };
        let body = serde_json::json!({ "error": e.to_string(), "status": status });
        Bytes::from(format!("event: error\ndata: {body}\n\n"))
    }

    fn format(&mut self, page: Page) -> Bytes {
        let n = page.events.len();
        let size: usize = page.events.iter().map(|(_, b)| b.len() + 96).sum();
        let mut out = Vec::with_capacity(size);
        let mut cursor = std::mem::take(&mut self.cursor);
        for (i, (id, bytes)) in page.events.iter().enumerate() {
            let id_text = if i + 1 == n {
                page.next.encode()
            } else {
                cursor.advance(id);
                cursor.encode()
            };
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(id_text.as_bytes());
            out.push(b'\n');
            for line in bytes.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            out.push(b'\n');
        }
        self.cursor = page.next;
        self.metrics.events_streamed.inc_by(n as u64);
        Bytes::from(out)
    }
}
