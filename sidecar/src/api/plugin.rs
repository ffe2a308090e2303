//! The high-availability plugin's REST endpoints on the local listener (SPEC §8, reference
//! §1.2): each master's plugin points `peerInfo.static.url` at its own sidecar. A call is read
//! by `gerrit::ingress`, made durable in every peer's queue (the outbox), and answered `204`;
//! a stream event also goes to this node's own event log through the one local publish path.
//! `GET query/changes.updated.since/<age>` (indexSync) answers the union of what the peers'
//! masters answer, asked through the peer sidecars (`POST /v1/peer/gerrit/changes-updated-since`).

use std::collections::BTreeSet;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};

use super::caller::{PluginCaller, Signed};
use super::{read_body, ApiError, AppState};
use crate::gerrit::ingress;

const QUERY: &str = "query/changes.updated.since/";
const PEER_QUERY: &str = "v1/peer/gerrit/changes-updated-since";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/plugins/{plugin}/{rest:.*}", web::route().to(call));
}

pub fn configure_peer(cfg: &mut web::ServiceConfig) {
    cfg.route(&format!("/{PEER_QUERY}"), web::post().to(peer_query));
}

/// The path under `/plugins/<plugin>/`, still percent-encoded.
fn relative_path<'a>(req: &'a HttpRequest, plugin: &str) -> &'a str {
    let path = req.uri().path();
    let prefix_len = "/plugins/".len() + plugin.len() + 1;
    path.get(prefix_len..).unwrap_or("")
}

async fn call(
    state: PluginCaller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (plugin, _) = path.into_inner();
    if plugin != state.config.gerrit.plugin_name {
        return Err(ApiError::NotFound(format!(
            "no plugin `{plugin}` here (gerrit.pluginName is `{}`)",
            state.config.gerrit.plugin_name
        )));
    }
    let rel = relative_path(&req, &plugin).to_owned();
    if req.method() == actix_web::http::Method::GET {
        return match rel.strip_prefix(QUERY) {
            Some(age) => changes_updated_since(&state, age).await,
            None => Err(ApiError::MethodNotAllowed(format!(
                "GET is not allowed on {rel}"
            ))),
        };
    }
    let body = read_body(payload, state.config.limits.max_local_body).await?;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let (_, call) = ingress::parse(&ingress::Request {
        method: req.method().as_str(),
        path: &rel,
        content_type: header("content-type"),
        created_on: header("event-created-on"),
        body: &body,
    })?;
    state.local.plugin_call(call).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Gerrit's `age:` operand: digits and a unit (`1hour`, `90s`, `5minutes`).
fn valid_age(age: &str) -> bool {
    let digits = age.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && age.len() <= 32 && age[digits..].bytes().all(|b| b.is_ascii_alphabetic())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PeerQuery {
    age: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PeerQueryReply {
    changes: Vec<String>,
}

/// The union of the changes the peers' masters updated within `age`, sorted; `503` naming the
/// peers that did not answer (the plugin's indexSync retries until every peer answers).
async fn changes_updated_since(state: &AppState, age: &str) -> Result<HttpResponse, ApiError> {
    if !valid_age(age) {
        return Err(ApiError::BadRequest(format!(
            "`{age}` is not an age (e.g. 1hour)"
        )));
    }
    let req = PeerQuery {
        age: age.to_owned(),
    };
    let client = state.peers.client();
    let asks = state.peers.list().into_iter().map(|p| {
        let (client, req) = (client.clone(), &req);
        async move {
            let r: Result<PeerQueryReply, _> = client.call(&p.url(), PEER_QUERY, req).await;
            (p.key.clone(), r)
        }
    });
    let mut union = BTreeSet::new();
    let mut failed = Vec::new();
    for (peer, r) in futures_util::future::join_all(asks).await {
        match r {
            Ok(reply) => union.extend(reply.changes),
            Err(e) => failed.push(format!("{peer}: {e}")),
        }
    }
    if !failed.is_empty() {
        return Err(ApiError::Unavailable(format!(
            "not every peer answered: {}",
            failed.join("; ")
        )));
    }
    Ok(HttpResponse::Ok()
        .content_type("application/json; charset=UTF-8")
        .json(union))
}

/// A peer asks what this node's master updated within `age`.
async fn peer_query(state: Signed) -> Result<HttpResponse, ApiError> {
    let q: PeerQuery = state.json()?;
    if !valid_age(&q.age) {
        return Err(ApiError::BadRequest(format!("`{}` is not an age", q.age)));
    }
    let Some(master) = &state.master else {
        return Err(ApiError::NotFound(
            "this node has no master to ask (gerrit.url is not set)".into(),
        ));
    };
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        master.client.changes_updated_since(&q.age),
    )
    .await
    .map_err(|_| ApiError::Unavailable("the master did not answer within 30s".into()))?;
    let changes = r?;
    Ok(HttpResponse::Ok().json(PeerQueryReply { changes }))
}
