//! `ha-sidecar status --url URL`: fetches a node's `/v1/status` and prints the cluster as that
//! node sees it, as a table an operator reads at a glance (each node's role included); and
//! `ha-sidecar promote --url URL`, the operator's promotion of a node (manual election). Exit codes follow the monitoring
//! plugin convention: 0 ok, 1 warning, 2 error, 3 unknown (no answer). This module is a client
//! of the ops API, like an operator's curl: it is the one place besides `peers/client` and the
//! demo that uses reqwest.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Status {
    pub instance_id: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub now_ms: u64,
    pub health: String,
    #[serde(default)]
    pub strategy: String,
    #[serde(default)]
    pub level: String,
    /// This node's role (`active`, `standby`); absent from nodes older than roles.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    pub peers: Vec<PeerRow>,
    /// The reply as received (for `--json`).
    #[serde(skip)]
    pub raw: serde_json::Value,
}

#[derive(Debug, Deserialize)]
pub struct PeerRow {
    #[serde(default)]
    pub key: String,
    pub url: String,
    pub instance_id: Option<String>,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub present: bool,
    pub retained_until_ms: Option<u64>,
    pub reachable: Option<bool>,
    pub outbox_depth: u64,
    pub oldest_undelivered_age_ms: Option<u64>,
    pub last_success_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    pub level: String,
    #[serde(default)]
    pub role: Option<String>,
}

/// Fetches `<base>v1/status`; an error says why with a hint (see `cli_http`).
pub async fn fetch(base: &url::Url, timeout: Duration) -> Result<Status, String> {
    let url = base.join("v1/status").map_err(|e| format!("{base}: {e}"))?;
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let r = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::cli_http::explain(&e, &url)))?;
    if !r.status().is_success() || r.headers().get("x-ha-instance").is_none() {
        // `/readyz` is served on listenUrl only: a 404 there too means the local API.
        let local = r.status() == reqwest::StatusCode::NOT_FOUND
            && match base.join("readyz") {
                Ok(u) => http.get(u).send().await.is_ok_and(|r| r.status() == 404),
                Err(_) => false,
            };
        let wanted = if local { "listen, not local" } else { "listen" };
        return Err(crate::cli_http::explain_status(
            &url,
            r.status(),
            r.headers(),
            wanted,
        ));
    }
    let raw: serde_json::Value = r
        .json()
        .await
        .map_err(|e| format!("{url}: unreadable status: {e}"))?;
    let mut s: Status = serde_json::from_value(raw.clone())
        .map_err(|e| format!("{url}: unexpected status: {e}"))?;
    s.raw = raw;
    Ok(s)
}

/// `POST <base>v1/election/promote` with the admin token; the node's answer, or why not.
pub async fn promote(base: &url::Url, token: &str, timeout: Duration) -> Result<String, String> {
    let url = base
        .join("v1/election/promote")
        .map_err(|e| format!("{base}: {e}"))?;
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let r = http
        .post(url.clone())
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::cli_http::explain(&e, &url)))?;
    let status = r.status();
    let headers = r.headers().clone();
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    if status.is_success() {
        let id = body["instance_id"].as_str().unwrap_or("?");
        let epoch = body["epoch"].as_u64().unwrap_or(0);
        let unreachable = body["unreachable"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut out = format!("{id} is active (epoch {epoch})");
        if !unreachable.is_empty() {
            out.push_str(&format!(
                "; not told yet (they learn it at their next exchange): {}",
                unreachable.join(", ")
            ));
        }
        return Ok(out);
    }
    match (status.as_u16(), body["error"].as_str()) {
        (401 | 409 | 503, Some(e)) => Err(format!("{url} refused: {e}")),
        _ => Err(crate::cli_http::explain_status(
            &url,
            status,
            &headers,
            "listen, not local",
        )),
    }
}

/// The exit code for a status: 0 ok, 1 warning, 2 error.
pub fn exit_code(s: &Status) -> u8 {
    let worst = s
        .peers
        .iter()
        .map(|p| p.level.as_str())
        .chain([s.level.as_str()])
        .map(|l| match l {
            "error" => 2,
            "warning" => 1,
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    if s.health == "healthy" || s.health == "drained" || s.health == "standby" {
        worst
    } else {
        worst.max(1)
    }
}

/// "850ms", "12s", "4m05s", "3h12m", "2d04h".
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn ago(now: u64, t: Option<u64>) -> String {
    match t {
        Some(t) => format!("{} ago", human_duration(now.saturating_sub(t))),
        None => "never".into(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Renders the table.
pub fn render(s: &Status) -> String {
    let now = s.now_ms;
    let mut out = String::new();
    let role = match (&s.role, s.mode.as_deref()) {
        (Some(r), Some("hot-standby")) => format!("  role: {r} (hot-standby)"),
        (Some(r), _) => format!("  role: {r}"),
        (None, _) => String::new(),
    };
    let _ = writeln!(
        out,
        "node {}  {}{role}  health: {}  discovery: {}  level: {}",
        s.instance_id,
        s.url,
        s.health,
        s.strategy,
        s.level.to_uppercase()
    );
    if s.peers.is_empty() {
        let _ = writeln!(out, "no peers");
        return out;
    }
    let header = [
        "PEER",
        "URL",
        "ROLE",
        "STATE",
        "REACHABLE",
        "BACKLOG",
        "OLDEST",
        "LAST SUCCESS",
        "LAST ERROR",
        "LEVEL",
    ];
    let rows: Vec<[String; 10]> = s
        .peers
        .iter()
        .map(|p| {
            let mut state = p.state.clone();
            if let (false, Some(until)) = (p.present, p.retained_until_ms) {
                state.push_str(&format!(
                    " (kept {})",
                    human_duration(until.saturating_sub(now))
                ));
            }
            let error = match (&p.last_error, p.last_error_ms) {
                (Some(e), t) if p.reachable == Some(false) => {
                    format!("{} ({})", truncate(e, 60), ago(now, t))
                }
                _ => "-".into(),
            };
            [
                p.instance_id.clone().unwrap_or_else(|| p.key.clone()),
                p.url.clone(),
                p.role.clone().unwrap_or_else(|| "?".into()),
                state,
                match p.reachable {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "?".into(),
                },
                p.outbox_depth.to_string(),
                p.oldest_undelivered_age_ms
                    .map(human_duration)
                    .unwrap_or_else(|| "-".into()),
                ago(now, p.last_success_ms),
                error,
                p.level.to_uppercase(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let pad = w - c.chars().count();
                l.push_str(c);
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        l.trim_end().to_owned()
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(out, "{}", line(&header));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_an_outage_at_a_glance() {
        let s: Status = serde_json::from_value(serde_json::json!({
            "instance_id": "master-1", "url": "http://10.0.0.1:7710/", "now_ms": 100_000,
            "health": "healthy", "strategy": "static", "level": "warning",
            "role": "active", "mode": "hot-standby",
            "peers": [
                {"key": "http://10.0.0.2:7710/", "url": "http://10.0.0.2:7710/", "instance_id": "master-2",
                 "state": "failed", "present": true, "retained_until_ms": null, "reachable": false,
                 "outbox_depth": 1234, "oldest_undelivered_age_ms": 65_000, "last_success_ms": 30_000,
                 "last_error": "connection failed: refused", "last_error_ms": 99_000, "level": "warning",
                 "role": null},
                {"key": "master-3", "url": "http://10.0.0.3:7710/", "instance_id": "master-3",
                 "state": "left", "present": false, "retained_until_ms": 3_700_000, "reachable": true,
                 "outbox_depth": 0, "oldest_undelivered_age_ms": null, "last_success_ms": 99_500,
                 "last_error": null, "last_error_ms": null, "level": "ok", "role": "standby"}
            ]
        }))
        .unwrap();
        let t = render(&s);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].contains("master-1")
                && lines[0].contains("role: active (hot-standby)")
                && lines[0].contains("WARNING"),
            "{t}"
        );
        assert!(lines[1].starts_with("PEER"), "{t}");
        assert!(
            lines[2].contains("master-2")
                && lines[2].contains("failed")
                && lines[2].contains("NO")
                && lines[2].contains("1234")
                && lines[2].contains("1m05s")
                && lines[2].contains("1m10s ago")
                && lines[2].contains("connection failed"),
            "{t}"
        );
        assert!(lines[3].contains("left (kept 1h00m)"), "{t}");
        let role_col = lines[1].find("ROLE").unwrap();
        assert_eq!(&lines[2][role_col..role_col + 2], "? ", "{t}");
        assert_eq!(&lines[3][role_col..role_col + 7], "standby", "{t}");
        // Columns line up: every row's URL starts where the header's does.
        let col = lines[1].find("URL").unwrap();
        assert_eq!(&lines[2][col..col + 4], "http");
        assert_eq!(exit_code(&s), 1);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(12_300), "12.3s");
        assert_eq!(human_duration(245_000), "4m05s");
        assert_eq!(human_duration(3 * 3_600_000 + 12 * 60_000), "3h12m");
        assert_eq!(human_duration(2 * 86_400_000 + 4 * 3_600_000), "2d04h");
    }
}
