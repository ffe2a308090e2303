//! What the CLI verbs (`status`, `stream-events`, `reindex`) share as HTTP clients of a node:
//! reading a base URL the way an operator types it, and explaining a failed request by its root
//! cause with a hint (refused, DNS, TLS, timeout; the wrong port; not an ha-sidecar at all).

use std::error::Error as _;

/// The port a node's `listenUrl` has by default, for hints.
const LISTEN_PORT: u16 = 7710;
/// The port a node's `localListenUrl` has by default, for hints.
const LOCAL_PORT: u16 = 7711;

/// Parses a base URL as typed on a command line: it needs a scheme (`127.0.0.1:7710` is refused
/// with the URL it probably meant), http or https, and gets a trailing `/`.
pub fn parse_base_url(text: &str) -> Result<url::Url, String> {
    let text = text.trim();
    if !text.contains("://") {
        return Err(format!(
            "`{text}` has no scheme: did you mean http://{}/ ?",
            text.trim_end_matches('/')
        ));
    }
    let mut u = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!(
            "`{text}` must be an http:// or https:// URL with a host"
        ));
    }
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    Ok(u)
}

/// The root cause of a failed request with a hint, e.g. "connection refused: nothing listens
/// on 127.0.0.1:1 (is ha-sidecar running, and is this its listenUrl?)".
pub fn explain(e: &reqwest::Error, url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    let addr = format!("{host}:{}", url.port_or_known_default().unwrap_or(0));
    let mut chain = String::new();
    let mut io_kind = None;
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(&s.to_string().to_ascii_lowercase());
        chain.push(' ');
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return format!("no answer from {addr} in time (timed out): is the host up, or a firewall dropping packets?");
    }
    if io_kind == Some(std::io::ErrorKind::ConnectionRefused)
        || chain.contains("connection refused")
    {
        return format!(
            "connection refused: nothing listens on {addr} (is ha-sidecar running there, and is this its listenUrl port, {LISTEN_PORT} by default?)"
        );
    }
    if chain.contains("dns error")
        || chain.contains("failed to lookup")
        || chain.contains("name or service not known")
    {
        return format!("cannot resolve `{host}` (DNS): check the host name");
    }
    if [
        "certificate",
        "tls",
        "handshake",
        "corrupt message",
        "invalidcontenttype",
    ]
    .iter()
    .any(|w| chain.contains(w))
    {
        let hint = if url.scheme() == "https" {
            "the node serves plain http:// unless TLS is terminated in front of it; otherwise check the certificate and its CA"
        } else {
            "an http:// URL reached a TLS server: use https://"
        };
        return format!("TLS failed with {addr}: {} ({hint})", chain.trim());
    }
    if io_kind == Some(std::io::ErrorKind::ConnectionReset) || chain.contains("connection closed") {
        return format!(
            "{addr} closed the connection: is it an HTTP server (an ha-sidecar listenUrl)?"
        );
    }
    match chain.trim() {
        "" => e.to_string(),
        c => format!("{e}: {c}"),
    }
}

/// Explains an unexpected HTTP status from a node: the wrong listener, or not an ha-sidecar.
/// `wanted` is the listener the command needs: `"listen"` or `"local"`; `"listen, not local"`
/// when the caller found the node's local API there.
pub fn explain_status(
    url: &url::Url,
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    wanted: &str,
) -> String {
    let instance = headers.get("x-ha-instance").and_then(|v| v.to_str().ok());
    match instance {
        None => format!(
            "{url} answered {status} and is not an ha-sidecar (no X-HA-Instance header): check the host and port"
        ),
        Some(id) if status == reqwest::StatusCode::NOT_FOUND => {
            let port = url.port_or_known_default().unwrap_or(0);
            let hint = if wanted == "local" {
                format!("this looks like ha-sidecar {id}'s listenUrl; this command needs its local API (localListenUrl, {LOCAL_PORT} by default)")
            } else if port == LOCAL_PORT || wanted == "listen, not local" {
                format!("this port is ha-sidecar {id}'s local API (localListenUrl); use its listenUrl ({LISTEN_PORT} by default)")
            } else {
                format!("ha-sidecar {id} does not serve this here: is it its listenUrl ({LISTEN_PORT} by default), not the local API?")
            };
            format!("{url} answered 404: {hint}")
        }
        Some(id) => format!("{url} (ha-sidecar {id}) answered {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_scheme_says_what_was_meant() {
        let e = parse_base_url("127.0.0.1:7710").unwrap_err();
        assert!(e.contains("did you mean http://127.0.0.1:7710/"), "{e}");
        assert_eq!(
            parse_base_url("http://a:1").unwrap().as_str(),
            "http://a:1/"
        );
        assert!(parse_base_url("ftp://a/").is_err());
    }
}
