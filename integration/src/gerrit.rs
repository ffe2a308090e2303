//! A fake Gerrit master modelled on the high-availability plugin's servlets (reference §1.5),
//! and a plugin sender that replays the exact request shapes of `fixtures/gerrit/`.
//!
//! The master answers `204`; `415` to an event whose media type is not JSON; `405` to a
//! DELETE of an account, group or project; `400 cache not found` for a cache it does not
//! know; `500` naming the type of an event whose `type` is not registered (the servlet's
//! uncaught `JsonParseException`, for the types a test unregisters); `text/plain` bodies. A
//! script can put it in a storm (`409`/`503` for the next n calls)
//! or stop and restart it on the same port (down = connection refused).
//!
//! Every other path stands in for Gerrit's web UI, REST API and git over HTTP (for the
//! load-balancer recipes): `200` with `X-HA-Instance: <name>` and `<METHOD> <path> <bytes of
//! the body>`, the body read whole however big (a git push).

use std::collections::VecDeque;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// The caches the fake master knows (a core Gerrit's forwarded ones and a few more).
pub const KNOWN_CACHES: &[&str] = &[
    "projects",
    "project_list",
    "groups",
    "groups_byinclude",
    "groups_bymember",
    "groups_members",
    "groups_byname",
    "groups_byuuid",
    "sshkeys",
    "ldap_usernames",
    "tokens",
    "web_sessions",
    "accounts",
];

/// One request the master received, with the status it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    /// The path under `/plugins/<name>/`, as received (percent-encoded).
    pub path: String,
    pub content_type: Option<String>,
    pub created_on: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
    pub status: u16,
    /// When the master received it.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct Script {
    received: Vec<Received>,
    accepted: usize,
    /// Statuses for the next calls (a storm), before the servlets' own answer.
    next: VecDeque<u16>,
    unhealthy: bool,
    /// False: the plugin has no health servlet (404), only core's `/config/server/version`.
    no_health_servlet: bool,
    changes: Vec<String>,
    /// Event types this master does not know (a plugin's, not installed here).
    unregistered: Vec<String>,
}

pub struct FakeMaster {
    pub port: u16,
    pub plugin: String,
    /// Named in the stand-in web answers (`X-HA-Instance`).
    pub name: String,
    script: Arc<Mutex<Script>>,
    server: Option<actix_web::dev::ServerHandle>,
}

impl FakeMaster {
    /// Starts on a free loopback port.
    pub fn start(plugin: &str) -> FakeMaster {
        FakeMaster::start_named(plugin, "master")
    }

    /// Starts on a free loopback port; its web answers name it `name`.
    pub fn start_named(plugin: &str, name: &str) -> FakeMaster {
        let mut m = FakeMaster {
            port: 0,
            plugin: plugin.to_owned(),
            name: name.to_owned(),
            script: Arc::default(),
            server: None,
        };
        m.listen(TcpListener::bind("127.0.0.1:0").unwrap());
        m
    }

    fn listen(&mut self, listener: TcpListener) {
        self.port = listener.local_addr().unwrap().port();
        let (script, plugin, name) = (self.script.clone(), self.plugin.clone(), self.name.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new((script.clone(), plugin.clone())))
                .app_data(web::Data::new(WebName(name.clone())))
                .route("/plugins/{rest:.*}", web::to(handle))
                .route("/config/server/version", web::to(handle))
                .default_service(web::to(web_answer))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .unwrap()
        .run();
        self.server = Some(server.handle());
        tokio::spawn(server);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Stops listening: calls get connection refused.
    pub async fn stop(&mut self) {
        if let Some(h) = self.server.take() {
            h.stop(false).await;
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "still running");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::yield_now();
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.port),
            }
        };
        self.listen(listener);
    }

    /// The next `n` calls are answered `status` (a 409 or 503 storm).
    pub fn storm(&self, status: u16, n: usize) {
        let mut s = self.script.lock().unwrap();
        s.next.extend(std::iter::repeat_n(status, n));
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.script.lock().unwrap().unhealthy = !healthy;
    }

    /// Without the plugin's health servlet, health is core's `GET /config/server/version`.
    pub fn set_health_servlet(&self, present: bool) {
        self.script.lock().unwrap().no_health_servlet = !present;
    }

    /// Events of these types get `500` (`EventTypes.getClass` does not know them).
    pub fn unregister_event_types(&self, types: &[&str]) {
        self.script.lock().unwrap().unregistered = types.iter().map(|t| t.to_string()).collect();
    }

    /// What `query/changes.updated.since/<age>` answers.
    pub fn set_changes(&self, changes: &[&str]) {
        self.script.lock().unwrap().changes = changes.iter().map(|c| c.to_string()).collect();
    }

    /// Every call received, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    /// How many calls were answered 204 (cheap: no copy).
    pub fn accepted_count(&self) -> usize {
        self.script.lock().unwrap().accepted
    }

    /// When the newest call with this body arrived (searched in place: no copy).
    pub fn arrival_of(&self, body: &str) -> Option<std::time::Instant> {
        let s = self.script.lock().unwrap();
        s.received
            .iter()
            .rev()
            .find(|r| r.body == body)
            .map(|r| r.at)
    }

    /// The calls answered 204, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.status == 204)
            .collect()
    }
}

impl Drop for FakeMaster {
    fn drop(&mut self) {
        if let Some(h) = self.server.take() {
            drop(h.stop(false));
        }
    }
}

struct WebName(String);

/// Gerrit's web, REST and git over HTTP, standing in: who answered and how many body bytes
/// arrived (read as they stream, no size limit).
async fn web_answer(
    name: web::Data<WebName>,
    req: HttpRequest,
    mut body: web::Payload,
) -> HttpResponse {
    use futures_util::StreamExt;
    let mut bytes = 0usize;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => bytes += c.len(),
            Err(e) => return HttpResponse::BadRequest().body(e.to_string()),
        }
    }
    HttpResponse::Ok()
        .insert_header(("X-HA-Instance", name.0.clone()))
        .content_type("text/plain; charset=UTF-8")
        .body(format!("{} {} {bytes}", req.method(), req.uri()))
}

async fn handle(
    state: web::Data<(Arc<Mutex<Script>>, String)>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let (script, plugin) = state.get_ref();
    let text = |status: u16, msg: &str| {
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .content_type("text/plain; charset=UTF-8")
            .body(msg.to_owned())
    };
    if req.uri().path() == "/config/server/version" {
        return match script.lock().unwrap().unhealthy {
            true => text(503, "Service Unavailable"),
            false => HttpResponse::Ok()
                .content_type("application/json; charset=UTF-8")
                .body(")]}'\n\"3.13.1\""),
        };
    }
    let prefix = format!("/plugins/{plugin}/");
    let Some(path) = req.uri().path().strip_prefix(&prefix).map(str::to_owned) else {
        return text(404, "Not Found");
    };
    let method = req.method().as_str().to_owned();
    let mut s = script.lock().unwrap();
    if method == "GET" {
        return match path.as_str() {
            "health" if s.no_health_servlet => text(404, "Not Found"),
            "health" if s.unhealthy => text(503, "unhealthy"),
            "health" => HttpResponse::NoContent().finish(),
            p if p.starts_with("query/changes.updated.since/") => HttpResponse::Ok()
                .content_type("application/json; charset=UTF-8")
                .json(&s.changes),
            _ => text(405, "Method Not Allowed"),
        };
    }
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type");
    let unknown_type = path
        .starts_with("event/")
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten()
        .and_then(|v| v.get("type")?.as_str().map(str::to_owned))
        .filter(|t| s.unregistered.contains(t));
    let status = match (s.next.pop_front(), &unknown_type) {
        (Some(st), _) => st,
        (None, Some(_)) => 500,
        (None, None) => servlet_status(&method, &path, content_type.as_deref()),
    };
    s.accepted += usize::from(status == 204);
    s.received.push(Received {
        method,
        path,
        content_type,
        created_on: header("event-created-on"),
        authorization: header("authorization"),
        body: String::from_utf8_lossy(&body).into_owned(),
        status,
        at: std::time::Instant::now(),
    });
    match status {
        204 => HttpResponse::NoContent().finish(),
        400 => text(400, "cache not found"),
        409 => text(409, "in flight"),
        405 => text(405, "cannot delete from index"),
        415 => text(415, "Unsupported Media Type"),
        500 if unknown_type.is_some() => text(
            500,
            &format!(
                "com.google.gson.JsonParseException: Unknown event type: {}",
                unknown_type.unwrap_or_default()
            ),
        ),
        st => text(st, "Service Unavailable"),
    }
}

/// What the plugin's servlets answer (reference §1.5).
fn servlet_status(method: &str, path: &str, content_type: Option<&str>) -> u16 {
    if method == "DELETE"
        && ["index/account/", "index/group/", "index/project/"]
            .iter()
            .any(|p| path.starts_with(p))
    {
        return 405;
    }
    if path.starts_with("event/") && content_type != Some("application/json; charset=utf-8") {
        return 415;
    }
    if let Some(cache) = path.strip_prefix("cache/") {
        if !cache.starts_with("project_list/") && !KNOWN_CACHES.contains(&cache) {
            return 400;
        }
    }
    204
}

/// One call of a fixture file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Call {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub created_on: Option<serde_json::Value>,
    #[serde(default)]
    pub body: Option<String>,
}

impl Call {
    /// The `Event-Created-On` header as sent.
    pub fn created_on_header(&self) -> Option<String> {
        self.created_on.as_ref().map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// True when `r` is this call exactly as the master must receive it.
    pub fn matches(&self, r: &Received) -> bool {
        r.method == self.method
            && r.path == self.path
            && r.content_type == self.content_type
            && r.created_on == self.created_on_header()
            && r.body == self.body.clone().unwrap_or_default()
    }
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gerrit")
}

/// The calls of `fixtures/gerrit/<name>`.
pub fn fixture(name: &str) -> Vec<Call> {
    std::fs::read_to_string(fixtures_dir().join(name))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sends plugin calls as the plugin's HTTP client does: the exact method, path, headers and
/// body; credentials only after a `401` challenge (Apache HttpClient's non-preemptive Basic).
pub struct PluginSender {
    pub http: reqwest::Client,
    /// `http://sidecar-local/plugins/<name>/`.
    pub base: String,
    pub credentials: Option<(String, String)>,
}

impl PluginSender {
    pub fn new(sidecar_local_url: &str, plugin: &str) -> PluginSender {
        // Pooled, as the plugin's HTTP client is (only the sidecar's local listener is called).
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .unwrap();
        PluginSender {
            http,
            base: format!("{sidecar_local_url}plugins/{plugin}/"),
            credentials: None,
        }
    }

    fn request(&self, call: &Call, auth: bool) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(call.method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, call.path));
        if let Some(ct) = &call.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(v) = call.created_on_header() {
            req = req.header("event-created-on", v);
        }
        if let Some(b) = &call.body {
            req = req.body(b.clone());
        }
        if let (true, Some((u, p))) = (auth, &self.credentials) {
            req = req.basic_auth(u, Some(p));
        }
        req
    }

    /// Sends one call; returns the final status.
    pub async fn send(&self, call: &Call) -> u16 {
        let r = self.request(call, false).send().await.unwrap();
        let challenged = r.status() == 401
            && r.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("Basic"));
        if challenged && self.credentials.is_some() {
            return self
                .request(call, true)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
        }
        r.status().as_u16()
    }

    /// Sends calls one after the other (as one plugin thread would), asserting 204 each.
    pub async fn send_all(&self, calls: &[Call]) {
        for c in calls {
            let st = self.send(c).await;
            assert_eq!(st, 204, "{} {} answered {st}", c.method, c.path);
        }
    }
}

/// `n` index, cache, event and project-list calls, numbered so their order can be checked: the
/// i-th call's path or body carries i.
pub fn numbered_calls(n: usize) -> Vec<Call> {
    (0..n)
        .map(|i| {
            let json = Some("application/json; charset=utf-8".to_owned());
            match i % 4 {
                0 => Call {
                    method: "POST".into(),
                    path: format!("index/change/load%2Fproject~{}", i + 1),
                    content_type: json,
                    created_on: Some(serde_json::json!(1_700_000_000_000u64 + i as u64)),
                    body: Some(format!("{{\"eventCreatedOn\":{}}}", 1_700_000_000_000u64 + i as u64)),
                },
                1 => Call {
                    method: "POST".into(),
                    path: "cache/projects".into(),
                    content_type: json,
                    created_on: None,
                    body: Some(format!("\"load/p{i}\"")),
                },
                2 => Call {
                    method: "POST".into(),
                    path: "event/ref-updated".into(),
                    content_type: json,
                    created_on: None,
                    body: Some(format!(
                        "{{\"type\":\"ref-updated\",\"eventCreatedOn\":1700000000,\"instanceId\":\"g\",\"refUpdate\":{{\"refName\":\"refs/heads/b{i}\",\"project\":\"load\"}}}}"
                    )),
                },
                _ => Call {
                    method: "POST".into(),
                    path: format!("cache/project_list/load%2Fp{i}"),
                    content_type: None,
                    created_on: None,
                    body: None,
                },
            }
        })
        .collect()
}
