//! Reads one REST call of the high-availability plugin (reference §1.2–1.4) into a
//! [`PluginCall`], refusing only what is truly malformed (the plugin retries every non-204 for
//! an hour, so a refusal must name what is wrong). Both wire generations (§1.9) are accepted:
//! stable-3.13 and older (seconds, `~<n>` deletes with an empty project, no header) and
//! 3.14/master (ms, `Event-Created-On`, `<project>~<n>`, `~0` = every change of a project).

use super::{Family, PluginCall};

/// Why a plugin call is refused; each maps to the status the plugin's own servlet would give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
}

/// The parts of an HTTP request that make a plugin call.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path under `/plugins/<pluginName>/`, percent-encoded as received.
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub created_on: Option<&'a str>,
    pub body: &'a [u8],
}

fn bad(msg: impl Into<String>) -> IngressError {
    IngressError::BadRequest(msg.into())
}

/// Checks a call and returns its family and the message to forward.
pub fn parse(req: &Request<'_>) -> Result<(Family, PluginCall), IngressError> {
    let path = req.path;
    let method = req.method;
    if !matches!(method, "POST" | "DELETE") {
        return Err(IngressError::MethodNotAllowed(format!(
            "{method} is not allowed on {path}"
        )));
    }
    if matches!(path, "event" | "event/" | "cache" | "cache/") {
        return Err(IngressError::MethodNotAllowed(format!(
            "{path} needs a name after it"
        )));
    }
    let family = Family::of(path)
        .ok_or_else(|| IngressError::NotFound(format!("no plugin endpoint {path}")))?;
    let rest = match family {
        Family::ProjectList => &path["cache/project_list/".len()..],
        Family::Cache => &path["cache/".len()..],
        Family::Index => &path["index/".len()..],
        Family::Event => &path["event/".len()..],
    };
    check_encoding(rest)?;
    let created_on = match req.created_on.map(str::trim) {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            bad(format!(
                "Event-Created-On `{v}` is not a number of milliseconds"
            ))
        })?),
    };
    let json = req
        .content_type
        .is_some_and(|c| media_type(c) == "application/json");
    let body = if req.body.is_empty() {
        None
    } else {
        Some(
            std::str::from_utf8(req.body)
                .map_err(|_| bad("the body is not UTF-8"))?
                .to_owned(),
        )
    };
    match family {
        Family::Index => check_index(method, rest, json, body.as_deref())?,
        Family::Event => check_event(method, rest, req.content_type, body.as_deref())?,
        Family::Cache => check_cache(method, rest, body.as_deref())?,
        Family::ProjectList => {
            if rest.is_empty() || rest.contains('/') {
                return Err(bad(format!("`{rest}` is not an encoded project name")));
            }
        }
    }
    Ok((
        family,
        PluginCall {
            method: method.to_owned(),
            path: path.to_owned(),
            content_type: body.as_ref().and(req.content_type.map(str::to_owned)),
            created_on,
            body,
        },
    ))
}

/// The sidecar's own cache entry a plugin eviction names: `(cache, key)` by the one key rule
/// ([`crate::cache::key_of_json`]); `None` for other calls.
pub fn cache_eviction(call: &PluginCall) -> Option<(&str, String)> {
    let cache = call.path.strip_prefix("cache/")?;
    if cache.starts_with("project_list/") {
        return None;
    }
    let first = call.body.as_deref()?.lines().next()?;
    let key: serde_json::Value = serde_json::from_str(first).ok()?;
    Some((cache, crate::cache::key_of_json(&key)))
}

/// `application/json; charset=utf-8` → `application/json`.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Percent escapes must be complete (`%2F`), as Gerrit's `Url.encode` writes them.
fn check_encoding(s: &str) -> Result<(), IngressError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(bad(format!("`{s}` has a broken percent escape")));
            }
            i += 3;
        } else if b[i] < 0x21 || b[i] == 0x7f {
            return Err(bad(format!("`{s}` holds a control character or space")));
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn check_index(
    method: &str,
    rest: &str,
    json: bool,
    body: Option<&str>,
) -> Result<(), IngressError> {
    let (what, id) = rest
        .split_once('/')
        .ok_or_else(|| IngressError::NotFound(format!("no plugin endpoint index/{rest}")))?;
    match what {
        "change" => {
            let id = id.strip_prefix("batch/").unwrap_or(id);
            check_change_id(method, id)?;
        }
        "account" | "group" | "project" => {
            if method == "DELETE" {
                return Err(IngressError::MethodNotAllowed(format!(
                    "cannot delete {what} from index"
                )));
            }
            let ok = match what {
                "account" => !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
                "group" => {
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                }
                _ => !id.is_empty() && !id.contains('/'),
            };
            if !ok {
                return Err(bad(format!("`{id}` is not a valid {what} id")));
            }
        }
        _ => {
            return Err(IngressError::NotFound(format!(
                "no plugin endpoint index/{rest}"
            )))
        }
    }
    if method == "POST" && json {
        if let Some(b) = body {
            let v: serde_json::Value = serde_json::from_str(b)
                .map_err(|e| bad(format!("the IndexEvent body is not JSON: {e}")))?;
            if !v.is_object() {
                return Err(bad("the IndexEvent body must be a JSON object"));
            }
        }
    }
    Ok(())
}

/// `<project>~<number>`: the project (percent-encoded) may be empty only in a stable-3.13 or
/// older delete; `~0` (every change of the project) needs a project.
fn check_change_id(method: &str, id: &str) -> Result<(), IngressError> {
    let (project, num) = id
        .rsplit_once('~')
        .ok_or_else(|| bad(format!("`{id}` is not a change id <project>~<number>")))?;
    let n: u64 = num
        .parse()
        .map_err(|_| bad(format!("`{num}` in `{id}` is not a change number")))?;
    if project.is_empty() && method == "POST" {
        return Err(bad(format!("`{id}` names no project")));
    }
    if n == 0 && (method != "DELETE" || project.is_empty()) {
        return Err(bad(format!(
            "`{id}`: change 0 means every change of a project, for a DELETE with a project only"
        )));
    }
    Ok(())
}

fn check_event(
    method: &str,
    rest: &str,
    content_type: Option<&str>,
    body: Option<&str>,
) -> Result<(), IngressError> {
    if method != "POST" {
        return Err(IngressError::MethodNotAllowed(format!(
            "{method} is not allowed on event/{rest}"
        )));
    }
    if rest.is_empty() || rest.contains('/') {
        return Err(bad(format!("`{rest}` is not an event type")));
    }
    let ct = content_type.unwrap_or("");
    let media = media_type(ct);
    let charset_ok = ct
        .split(';')
        .skip(1)
        .all(|p| matches!(p.trim().to_ascii_lowercase().as_str(), "charset=utf-8" | ""));
    if media != "application/json" || !charset_ok {
        return Err(IngressError::UnsupportedMediaType(format!(
            "an event needs Content-Type application/json; charset=utf-8, not `{ct}`"
        )));
    }
    let body = body.ok_or_else(|| bad("an event needs a body"))?;
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| bad(format!("the event is not JSON: {e}")))?;
    match v.get("type") {
        Some(serde_json::Value::String(t)) if !t.is_empty() => {}
        _ => return Err(bad("the event has no `type`")),
    }
    match v.get("eventCreatedOn") {
        Some(n) if n.is_u64() => Ok(()),
        _ => Err(bad("the event has no numeric `eventCreatedOn`")),
    }
}

fn check_cache(method: &str, name: &str, body: Option<&str>) -> Result<(), IngressError> {
    if method != "POST" {
        return Err(IngressError::MethodNotAllowed(format!(
            "{method} is not allowed on cache/{name}"
        )));
    }
    if !crate::wire::valid_cache_name(name) {
        return Err(bad(format!("`{name}` is not a cache name")));
    }
    // The plugin's receiver reads the first line of the body as the key's JSON.
    let body = body.ok_or_else(|| bad("a cache eviction needs the key's JSON as its body"))?;
    let first = body.lines().next().unwrap_or("");
    serde_json::from_str::<serde::de::IgnoredAny>(first)
        .map_err(|e| bad(format!("the cache key is not JSON: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests;
