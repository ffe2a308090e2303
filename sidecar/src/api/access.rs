//! The access log (target `access`) and the client address it names: the TCP peer, or — when
//! that peer is a trusted proxy (`sidecar.trustedProxies`) — the address it forwarded in
//! `X-Forwarded-For`. An untrusted sender's `X-Forwarded-For` is ignored.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};

use actix_web::http::Method;
use prometheus_client::metrics::histogram::Histogram;

use crate::config::Cidr;
use crate::metrics::{HttpLabel, Metrics};

/// The client address as the access log shows it (empty when unknown), formatted straight into
/// the line (no `String` per request).
pub(crate) struct Client(pub(crate) Option<IpAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => Ok(()),
        }
    }
}

/// Distinct (method, status) pairs whose histogram a worker keeps at hand; past that (odd
/// methods), the family is asked each time, as before.
const TIMERS_KEPT: usize = 64;

/// One worker's `ha_http_request_duration_seconds` histograms by (method, status).
#[derive(Default)]
pub(crate) struct Timers(RefCell<Vec<(Method, u16, Histogram)>>);

impl Timers {
    pub(crate) fn get(
        &self,
        metrics: &Metrics,
        listener: &'static str,
        method: &Method,
        status: u16,
    ) -> Histogram {
        let mut kept = self.0.borrow_mut();
        if let Some((_, _, h)) = kept.iter().find(|(m, s, _)| *s == status && m == method) {
            return h.clone();
        }
        let h = metrics
            .http_seconds
            .get_or_create(&HttpLabel {
                listener: listener.to_owned(),
                method: method.as_str().to_owned(),
                status: status.to_string(),
            })
            .clone();
        if kept.len() < TIMERS_KEPT {
            kept.push((method.clone(), status, h.clone()));
        }
        h
    }
}

/// The client of a request. Walks `X-Forwarded-For` from the right (the entry the nearest proxy
/// added) past every trusted proxy; the first untrusted address is the client.
pub(crate) fn client_ip(peer: Option<IpAddr>, xff: &[&str], trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    for part in xff.iter().rev().flat_map(|h| h.rsplit(',')) {
        let Some(ip) = parse_forwarded_ip(part.trim()) else {
            break; // garbage: trust nothing beyond it
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(client)
}

fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The path as the access log shows it: a session token in `/v1/sessions/{token}` is a
/// credential and never reaches a log line, so it is replaced.
pub(crate) fn loggable_path(path: &str) -> Cow<'static, str> {
    match path.strip_prefix("/v1/sessions/") {
        Some(rest) if !rest.is_empty() => Cow::Borrowed("/v1/sessions/<token>"),
        _ => Cow::Owned(path.to_owned()),
    }
}

/// Health checks and scrapes come every few hundred milliseconds from every load balancer:
/// logged at debug so they do not drown the rest.
pub(crate) fn is_noisy(path: &str) -> bool {
    matches!(path, "/health" | "/livez" | "/readyz" | "/metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn session_tokens_are_not_logged() {
        assert_eq!(
            loggable_path("/v1/sessions/abcdef0123"),
            "/v1/sessions/<token>"
        );
        assert_eq!(loggable_path("/v1/sessions"), "/v1/sessions");
        assert_eq!(loggable_path("/v1/cache/x/y"), "/v1/cache/x/y");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        // Untrusted sender: its header is ignored.
        assert_eq!(
            client_ip(Some(ip("192.0.2.7")), &["203.0.113.9"], &trusted),
            Some(ip("192.0.2.7"))
        );
        // Trusted proxy: the address it forwarded.
        assert_eq!(
            client_ip(Some(ip("10.1.1.1")), &["203.0.113.9"], &trusted),
            Some(ip("203.0.113.9"))
        );
        // A chain: spoofed first entry, then the real client, then an inner proxy.
        assert_eq!(
            client_ip(
                Some(ip("10.1.1.1")),
                &["6.6.6.6, 203.0.113.9", "10.2.2.2"],
                &trusted
            ),
            Some(ip("203.0.113.9"))
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(
            client_ip(Some(ip("10.1.1.1")), &[], &trusted),
            Some(ip("10.1.1.1"))
        );
        assert_eq!(
            client_ip(Some(ip("10.1.1.1")), &["nonsense"], &trusted),
            Some(ip("10.1.1.1"))
        );
        assert_eq!(
            client_ip(Some(ip("10.1.1.1")), &["203.0.113.9:4711"], &trusted),
            Some(ip("203.0.113.9"))
        );
    }
}
