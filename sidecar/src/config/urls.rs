//! The URL-valued keys: listeners (an IP to bind), peers, the advertised URL and the webhook,
//! and the TLS files an `https://` listener needs. Each has its own rules, so they are read here
//! rather than by the generic getters.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::validate::V;
use super::{Discovery, ListenUrl, TlsConfig};

/// `sidecar.<k>`: an `http://` or `https://` URL whose host is an IP address (or localhost) to bind to.
pub(super) fn listen_url(v: &mut V<'_>, k: &str) -> ListenUrl {
    let key = v.path("sidecar", None, k);
    let default = v.spec("sidecar", None, k).default.unwrap_or_default();
    let text = v
        .string("sidecar", None, k)
        .unwrap_or_else(|| default.to_owned());
    let fallback = || ListenUrl {
        url: url::Url::parse(default).expect("default listen url parses"),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
    };
    let url = match url::Url::parse(&text) {
        Ok(u) => u,
        Err(e) => {
            v.err(&key, format!("`{text}` is not a URL: {e}"));
            return fallback();
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        v.err(&key, format!("`{text}`: listeners are http:// or https://"));
        return fallback();
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain("localhost")) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => {
            v.err(
                &key,
                format!("`{text}`: the host must be an IP address (or localhost) to bind to"),
            );
            return fallback();
        }
    };
    let port = url.port_or_known_default().unwrap_or(80);
    ListenUrl {
        url,
        addr: SocketAddr::new(ip, port),
    }
}

pub(super) fn is_loopback_url(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// An `http(s)://` URL with a host, its path ending in `/`.
fn base_url(text: &str) -> Result<url::Url, String> {
    match url::Url::parse(text) {
        Ok(mut u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if !u.path().ends_with('/') {
                let p = format!("{}/", u.path());
                u.set_path(&p);
            }
            Ok(u)
        }
        Ok(_) => Err(format!(
            "`{text}` must be an http:// or https:// URL with a host"
        )),
        Err(e) => Err(format!("`{text}` is not a URL: {e}")),
    }
}

/// `peerInfo.static.url`: every peer once, never this node, no loopback beside a remote peer.
pub(super) fn peer_urls(v: &mut V<'_>, own: &ListenUrl) -> Vec<url::Url> {
    let key = v.path("peerInfo", Some("static"), "url");
    let mut urls: Vec<url::Url> = Vec::new();
    for text in v.list("peerInfo", Some("static"), "url") {
        let text = text.trim();
        let u = match base_url(text) {
            Ok(u) => u,
            Err(e) => {
                v.err(&key, e);
                continue;
            }
        };
        if u.host() == own.url.host()
            && u.port_or_known_default() == own.url.port_or_known_default()
        {
            v.warn(
                &key,
                format!("`{text}` is this node's own listenUrl; ignored"),
            );
            continue;
        }
        if urls.contains(&u) {
            v.warn(&key, format!("`{text}` is listed twice; used once"));
            continue;
        }
        urls.push(u);
    }
    let remote = urls.iter().find(|u| !is_loopback_url(u)).cloned();
    if let Some(remote) = remote {
        for u in urls.iter().filter(|u| is_loopback_url(u)) {
            v.err(
                &key,
                format!(
                    "`{u}` is a loopback address but peer `{remote}` is on another host: \
                     a loopback URL would reach this host, not the peer; use its routable address"
                ),
            );
        }
    }
    urls
}

/// The URL written into this node's heartbeat: `sidecar.advertiseUrl`, else `listenUrl` unless
/// that binds every interface (0.0.0.0 tells a peer nothing).
pub(super) fn advertise_url(v: &mut V<'_>, listen: &ListenUrl, discovery: &Discovery) -> url::Url {
    let key = v.path("sidecar", None, "advertiseUrl");
    if let Some(text) = v.string("sidecar", None, "advertiseUrl") {
        return base_url(&text).unwrap_or_else(|e| {
            v.err(&key, e);
            listen.url.clone()
        });
    }
    if listen.addr.ip().is_unspecified() && matches!(discovery, Discovery::SharedFs { .. }) {
        v.err(
            &key,
            "required with peerInfo.strategy = shared-fs when sidecar.listenUrl binds every \
             interface: peers need an address they can reach this node at",
        );
    }
    listen.url.clone()
}

/// `alert.webhookUrl`: optional, http(s).
pub(super) fn webhook_url(v: &mut V<'_>) -> Option<url::Url> {
    let t = v.string("alert", None, "webhookUrl")?;
    match url::Url::parse(&t) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
        _ => {
            let key = v.path("alert", None, "webhookUrl");
            v.err(&key, format!("`{t}` is not an http(s) URL"));
            None
        }
    }
}

/// `[sidecar] certificateFile, privateKeyFile, clientCaFile` and `[http] caFile`: the files must
/// exist; their contents are parsed when the node starts (`tls`).
pub(super) fn tls_config(v: &mut V<'_>, listen: &ListenUrl, local_listen: &ListenUrl) -> TlsConfig {
    let mut file = |s: &str, k: &str| {
        let p = v.string(s, None, k).map(|p| v.file_path(&p))?;
        if let Err(e) = std::fs::metadata(&p) {
            let key = v.path(s, None, k);
            v.err(&key, format!("{}: {e}", p.display()));
        }
        Some(p)
    };
    let certificate = file("sidecar", "certificateFile");
    let private_key = file("sidecar", "privateKeyFile");
    let client_ca = file("sidecar", "clientCaFile");
    let ca = file("http", "caFile");
    let https = listen.is_https() || local_listen.is_https();
    for (key, given) in [
        ("sidecar.certificateFile", certificate.is_some()),
        ("sidecar.privateKeyFile", private_key.is_some()),
    ] {
        if https && !given {
            v.err(
                key,
                "required when sidecar.listenUrl or sidecar.localListenUrl is https://",
            );
        }
    }
    if certificate.is_some() != private_key.is_some() {
        v.err(
            "sidecar.privateKeyFile",
            "sidecar.certificateFile and sidecar.privateKeyFile go together",
        );
    }
    if client_ca.is_some() && !listen.is_https() {
        v.err(
            "sidecar.clientCaFile",
            "mutual TLS needs sidecar.listenUrl to be https://",
        );
    }
    TlsConfig {
        certificate,
        private_key,
        client_ca,
        ca,
    }
}
