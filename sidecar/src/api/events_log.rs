//! The events-log plugin's REST API on `listenUrl`: `GET /plugins/events-log/events/` (and
//! under `/a/`, as clients call it), for consumers such as Jenkins Gerrit Trigger, which
//! replays the events it missed while disconnected with `?t1=<yyyy-MM-dd HH:mm:ss>`. One event
//! JSON per line, oldest first; the caller's project filter applies (`StreamCaller`); parameters
//! separated by `&` or `;`; a malformed time is `400` naming it. The query is
//! `events::replay`.

use actix_web::{web, HttpRequest, HttpResponse};

use super::caller::{Public, StreamCaller};
use super::ApiError;
use crate::events::replay::{self, Window};
use crate::events::TypeFilter;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Gerrit Trigger checks that the plugin is installed with `GET <frontEndUrl>plugins/events-log/`
    // (200: installed) before it ever asks for events.
    cfg.route("/plugins/events-log/", web::get().to(installed));
    for path in [
        "/plugins/events-log/events/",
        "/plugins/events-log/events",
        "/a/plugins/events-log/events/",
        "/a/plugins/events-log/events",
    ] {
        cfg.route(path, web::get().to(events));
    }
}

async fn installed(_: Public) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("events-log: served by ha-sidecar (GET events/?t1=...)\n")
}

/// `t1` and `t2` of the query string, parsed (400 naming a bad one).
fn bounds(query: &str) -> Result<(Option<u64>, Option<u64>), ApiError> {
    let (mut t1, mut t2) = (None, None);
    for part in query.split(['&', ';']) {
        for (k, v) in url::form_urlencoded::parse(part.as_bytes()) {
            let slot = match &*k {
                "t1" => &mut t1,
                "t2" => &mut t2,
                _ => continue,
            };
            *slot = Some(
                replay::parse_time(&v).map_err(|e| ApiError::BadRequest(format!("{k}: {e}")))?,
            );
        }
    }
    Ok((t1, t2))
}

async fn events(caller: StreamCaller, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let (t1, t2) = bounds(req.query_string())?;
    let window = Window::new(t1, t2, crate::clock::now_ms() / 1000);
    let filter = TypeFilter::all().within(caller.projects.clone());
    let (log, limit) = (caller.events.clone(), caller.config.event.return_limit);
    let found = tokio::task::spawn_blocking(move || replay::replay(&log, window, &filter, limit))
        .await
        .map_err(|e| ApiError::Internal(format!("events-log read failed: {e}")))??;
    tracing::debug!(
        consumer = caller.consumer.as_deref().unwrap_or("-"),
        events = found.len(),
        "events-log replay"
    );
    let mut body = Vec::with_capacity(found.iter().map(|b| b.len() + 1).sum());
    for event in &found {
        replay::one_line(event, &mut body);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(body))
}
