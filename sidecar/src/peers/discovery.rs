//! Where peers come from: the static list, fresh heartbeats in `<sharedDirectory>/members/`
//! (read through the skew-safe `MembersView`), or every A/AAAA record of a DNS name. A source
//! answers one question — who is there now — and `membership` decides what it means. Also
//! writes this node's own heartbeat, which every node does whatever its strategy.
//!
//! Everything here blocks (shared directory, getaddrinfo): call it on a blocking thread.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::locks::LockExt;
use shared_fs::members::{Heartbeat, MemberState as HbState, Members, MembersError, MembersView};

/// What a source says about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Queue key: the instanceId when the source knows it, else the URL.
    pub key: String,
    pub url: url::Url,
    pub instance_id: Option<String>,
    pub presence: Presence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Listed and alive: forward to it.
    Fresh,
    /// Its heartbeat says it is leaving gracefully.
    Leaving,
    /// Its heartbeat stopped changing for longer than `ttl` without a word.
    Stale,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("reading heartbeats: {0}")]
    Members(#[from] MembersError),
    #[error("resolving {name}: {source}")]
    Resolve {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Name → addresses. The system resolver in production; a hosts-format file when
/// `peerInfo.dns.hostsFile` is set (tests, fixed lists), so tests never query real DNS.
pub trait Resolve: Send + Sync {
    fn lookup(&self, name: &str) -> io::Result<Vec<IpAddr>>;
}

/// getaddrinfo (honours `/etc/hosts` and `resolv.conf`; returns every A and AAAA record).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        Ok((name, 0)
            .to_socket_addrs()?
            .map(|a: SocketAddr| a.ip())
            .collect())
    }
}

/// Reads `IP name [alias…]` lines (the `/etc/hosts` format) afresh on every lookup.
pub struct HostsFile(pub PathBuf);

impl Resolve for HostsFile {
    fn lookup(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        let text = std::fs::read_to_string(&self.0)?;
        Ok(parse_hosts(&text, name))
    }
}

fn parse_hosts(text: &str, name: &str) -> Vec<IpAddr> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words
                .any(|w| w.eq_ignore_ascii_case(name.trim_end_matches('.')))
                .then_some(ip)
        })
        .collect()
}

/// A discovery strategy with what it needs.
pub enum Source {
    Static(Vec<url::Url>),
    SharedFs {
        view: Mutex<MembersView>,
        ttl: Duration,
        own_id: String,
        /// This node is reached on a routable address: a member advertising loopback would be
        /// reached on this host, not on its own, so it is skipped.
        own_routable: bool,
    },
    Dns {
        name: String,
        port: u16,
        resolver: Arc<dyn Resolve>,
        /// This node's advertised URL: its own record is not a peer.
        own: url::Url,
    },
}

impl Source {
    /// Who is there now. An error means "could not tell" (shared directory or resolver down):
    /// the caller keeps its current view rather than declaring everyone gone.
    pub fn discover(&self) -> Result<Vec<Found>, DiscoveryError> {
        match self {
            Source::Static(urls) => Ok(urls
                .iter()
                .map(|u| Found {
                    key: u.to_string(),
                    url: u.clone(),
                    instance_id: None,
                    presence: Presence::Fresh,
                })
                .collect()),
            Source::SharedFs {
                view,
                ttl,
                own_id,
                own_routable,
            } => {
                let members = view.locked().refresh(*ttl)?;
                Ok(members
                    .into_iter()
                    .filter(|m| &m.heartbeat.instance_id != own_id)
                    .filter_map(|m| {
                        let url = peer_url(&m.heartbeat.listen_url)?;
                        if *own_routable && is_loopback(&url) {
                            tracing::warn!(peer = %m.heartbeat.instance_id, url = %url, "a member advertises a loopback address while this node does not: set its sidecar.advertiseUrl; ignored");
                            return None;
                        }
                        let presence = match (m.heartbeat.state, m.fresh) {
                            (HbState::Leaving, _) => Presence::Leaving,
                            (HbState::Up, true) => Presence::Fresh,
                            (HbState::Up, false) => Presence::Stale,
                        };
                        Some(Found {
                            key: m.heartbeat.instance_id.clone(),
                            url,
                            instance_id: Some(m.heartbeat.instance_id),
                            presence,
                        })
                    })
                    .collect())
            }
            Source::Dns {
                name,
                port,
                resolver,
                own,
            } => {
                let mut ips = resolver
                    .lookup(name)
                    .map_err(|source| DiscoveryError::Resolve {
                        name: name.clone(),
                        source,
                    })?;
                ips.sort();
                ips.dedup();
                let own_addr = own_addr(own);
                Ok(ips
                    .into_iter()
                    .filter(|ip| own_addr != Some(SocketAddr::new(*ip, *port)))
                    .map(|ip| {
                        let url =
                            url::Url::parse(&format!("http://{}/", SocketAddr::new(ip, *port)))
                                .expect("an IP and a port make a URL");
                        Found {
                            key: url.to_string(),
                            url,
                            instance_id: None,
                            presence: Presence::Fresh,
                        }
                    })
                    .collect())
            }
        }
    }
}

pub(crate) fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn own_addr(u: &url::Url) -> Option<SocketAddr> {
    let ip = match u.host()? {
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
        url::Host::Domain(_) => return None,
    };
    Some(SocketAddr::new(ip, u.port_or_known_default()?))
}

/// A heartbeat's URL, if it is a usable http(s) base URL.
fn peer_url(text: &str) -> Option<url::Url> {
    let mut u = url::Url::parse(text).ok()?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        tracing::warn!(url = text, "a heartbeat names an unusable URL; ignored");
        return None;
    }
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    Some(u)
}

/// This node's heartbeat file.
pub struct Heartbeats {
    members: Members,
    instance_id: String,
    listen_url: String,
    started_at: u64,
}

impl Heartbeats {
    pub fn new(members: Members, instance_id: &str, listen_url: &url::Url) -> Heartbeats {
        Heartbeats {
            members,
            instance_id: instance_id.to_owned(),
            listen_url: listen_url.to_string(),
            started_at: super::outbox::now_ms(),
        }
    }

    /// Writes the heartbeat (`leaving = true` first thing at a graceful stop).
    pub fn write(&self, leaving: bool) -> Result<(), MembersError> {
        self.members.write_heartbeat(&Heartbeat {
            instance_id: self.instance_id.clone(),
            listen_url: self.listen_url.clone(),
            started_at: self.started_at,
            heartbeat_at: super::outbox::now_ms(),
            state: if leaving {
                HbState::Leaving
            } else {
                HbState::Up
            },
        })
    }

    /// Removes the heartbeat file (last thing at a graceful stop).
    pub fn remove(&self) -> Result<bool, MembersError> {
        self.members.remove(&self.instance_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<IpAddr>);
    impl Resolve for Fixed {
        fn lookup(&self, _: &str) -> io::Result<Vec<IpAddr>> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn hosts_file_lists_every_record_of_a_name() {
        let text = "# comment\n10.0.0.1 ha.svc other\n10.0.0.2\tHA.svc # two\n::1 ha.svc\n10.0.0.9 else\nbad ha.svc\n";
        let ips = parse_hosts(text, "ha.svc.");
        let want: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2", "::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ips, want);
    }

    #[test]
    fn dns_makes_one_peer_per_record_except_itself() {
        let src = Source::Dns {
            name: "ha.svc".into(),
            port: 7710,
            resolver: Arc::new(Fixed(vec![
                "10.0.0.2".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
                "fd00::3".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
            ])),
            own: url::Url::parse("http://10.0.0.1:7710/").unwrap(),
        };
        let keys: Vec<String> = src.discover().unwrap().into_iter().map(|f| f.key).collect();
        assert_eq!(keys, ["http://10.0.0.2:7710/", "http://[fd00::3]:7710/"]);
    }

    #[test]
    fn shared_fs_reports_fresh_leaving_and_skips_itself() {
        let dir = tempfile::tempdir().unwrap();
        let members = Members::open(dir.path(), false).unwrap();
        let me = url::Url::parse("http://10.0.0.1:7710/").unwrap();
        Heartbeats::new(members.clone(), "a", &me)
            .write(false)
            .unwrap();
        let b = Heartbeats::new(
            members.clone(),
            "b",
            &url::Url::parse("http://10.0.0.2:7710").unwrap(),
        );
        b.write(false).unwrap();
        let src = Source::SharedFs {
            view: Mutex::new(MembersView::new(members.clone())),
            ttl: Duration::from_secs(30),
            own_id: "a".into(),
            own_routable: true,
        };
        let found = src.discover().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, "b");
        assert_eq!(found[0].url.as_str(), "http://10.0.0.2:7710/");
        assert_eq!(found[0].presence, Presence::Fresh);
        b.write(true).unwrap();
        assert_eq!(src.discover().unwrap()[0].presence, Presence::Leaving);
        // A member advertising loopback while this node is routable is not a peer.
        Heartbeats::new(
            members.clone(),
            "local",
            &url::Url::parse("http://127.0.0.1:7710/").unwrap(),
        )
        .write(false)
        .unwrap();
        assert_eq!(src.discover().unwrap().len(), 1);
        b.remove().unwrap();
        assert!(src.discover().unwrap().is_empty());
    }
}
