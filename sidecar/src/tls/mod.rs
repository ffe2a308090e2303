//! TLS (rustls) for the listeners and the peer client: the node's certificate and key, reloaded
//! when their files change; the roots peers are verified against; mutual TLS between peers.
//!
//! * **One key, two roles.** The node's certificate is served on https listeners and presented
//!   as client certificate to peers ([`ReloadingKey`] resolves both), so with
//!   `sidecar.clientCaFile` a peer proves which node it is.
//! * **Rotation.** The certificate and key, `sidecar.clientCaFile` and `http.caFile` are
//!   reloaded through one mechanism ([`reload`]): their files' mtime, size and inode are looked
//!   at at most once per [`RECHECK`] (during a handshake) and reloaded when they changed; a
//!   version that does not load (a half-written file, a key that does not match) is logged and
//!   the previous one kept. New connections get the new certificate and CAs; open ones keep
//!   theirs.
//! * **Mutual TLS on `/v1/peer/*` only.** The server asks every client for a certificate and
//!   verifies one if given, but lets a client without one in (health, metrics, status and the
//!   event stream serve load balancers and Prometheus). The names of a verified certificate
//!   (DNS SANs and the subject's CN) are attached to the connection ([`PeerNames`]); the peer
//!   API refuses a request without them and a batch whose `origin` is not among them.
//! * **Never trust-all.** Peers are verified against `http.caFile`, else the system's roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

mod reload;
pub use reload::{Reloading, ReloadingClientVerifier, ReloadingServerVerifier};

/// How often the certificate files are looked at for a change.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What failed while loading TLS material, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| file_err(path, e))?;
    }
    Ok(roots)
}

fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert)?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let ck = CertifiedKey::from_der(chain, der, &provider()).map_err(|e| file_err(key, e))?;
    Ok(Arc::new(ck))
}

/// The node's certificate and key, reloaded when the files change (see the module docs).
pub struct ReloadingKey {
    cert: PathBuf,
    pair: Reloading<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for ReloadingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReloadingKey({})", self.cert.display())
    }
}

impl ReloadingKey {
    /// Loads the pair now (an error names the file).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingKey>, TlsError> {
        let pair = Reloading::load(
            "TLS certificate",
            vec![cert.to_path_buf(), key.to_path_buf()],
            |p| load_pair(&p[0], &p[1]),
        )?;
        Ok(Arc::new(ReloadingKey {
            cert: cert.to_path_buf(),
            pair,
        }))
    }

    /// The current pair, reloaded first if the files changed (looked at once per [`RECHECK`]).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.pair.current()
    }
}

impl ResolvesServerCert for ReloadingKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The node's TLS: the key (if configured), the server config for https listeners, the client
/// config for the peer client.
pub struct NodeTls {
    pub key: Option<Arc<ReloadingKey>>,
    /// `Some` when `sidecar.clientCaFile` is set: `/v1/peer/*` requires a client certificate.
    pub mutual: bool,
    server: Option<Arc<ServerConfig>>,
    client: Option<ClientConfig>,
}

impl NodeTls {
    /// Loads everything the config names (nothing when it names nothing).
    pub fn load(cfg: &TlsConfig) -> Result<NodeTls, TlsError> {
        let key = match (&cfg.certificate, &cfg.private_key) {
            (Some(c), Some(k)) => Some(ReloadingKey::load(c, k)?),
            _ => None,
        };
        let server = match &key {
            Some(k) => Some(Arc::new(server_config(
                k.clone(),
                cfg.client_ca.as_deref(),
            )?)),
            None => None,
        };
        let client = if key.is_some() || cfg.ca.is_some() {
            Some(client_config(key.clone(), cfg.ca.as_deref())?)
        } else {
            None
        };
        Ok(NodeTls {
            key,
            mutual: cfg.client_ca.is_some(),
            server,
            client,
        })
    }

    /// The config of https listeners (`None` without a certificate).
    pub fn server(&self) -> Option<Arc<ServerConfig>> {
        self.server.clone()
    }

    /// The peer client's TLS config; `None` leaves reqwest's default (the system's roots).
    pub fn client(&self) -> Option<ClientConfig> {
        self.client.clone()
    }
}

fn server_config(
    key: Arc<ReloadingKey>,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match client_ca {
        Some(path) => {
            builder.with_client_cert_verifier(Arc::new(ReloadingClientVerifier::load(path)?))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(key);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn client_config(
    key: Option<Arc<ReloadingKey>>,
    ca: Option<&Path>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match ca {
        // WebPKI verification against the file's CAs as they are now (reloaded on change).
        Some(path) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ReloadingServerVerifier::load(path)?)),
        None => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            builder.with_root_certificates(roots)
        }
    };
    let mut config = match key {
        Some(k) => builder.with_client_cert_resolver(k),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The names a verified peer certificate gives its holder: DNS SANs and the subject's CN.
/// Attached to each TLS connection that presented one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNames(pub Vec<String>);

impl PeerNames {
    /// The names of a leaf certificate (already verified by the handshake).
    pub fn of(cert: &CertificateDer<'_>) -> PeerNames {
        let mut names = Vec::new();
        if let Ok(ee) = webpki::EndEntityCert::try_from(cert) {
            names.extend(ee.valid_dns_names().map(str::to_owned));
            if let Some(cn) = common_name(ee.subject()) {
                names.push(cn);
            }
        }
        PeerNames(names)
    }

    /// Whether the certificate names this instance.
    pub fn names(&self, instance_id: &str) -> bool {
        self.0.iter().any(|n| n == instance_id)
    }
}

/// The CN of a DER `Name` (the subject's contents, without its outer SEQUENCE header, as
/// webpki gives it): `SET { SEQUENCE { OID 2.5.4.3, string } }`. Bounded walk over the
/// attributes; anything unexpected yields `None`.
fn common_name(subject: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut rest = subject;
    while !rest.is_empty() {
        let (tag, set, after) = tlv(rest)?;
        rest = after;
        if tag != 0x31 {
            return None;
        }
        let mut attrs = set;
        while !attrs.is_empty() {
            let (tag, attr, after) = tlv(attrs)?;
            attrs = after;
            if tag != 0x30 {
                return None;
            }
            let (otag, oid, value) = tlv(attr)?;
            if otag == 0x06 && oid == CN {
                let (vtag, v, _) = tlv(value)?;
                // UTF8String, PrintableString, IA5String.
                if matches!(vtag, 0x0c | 0x13 | 0x16) {
                    return std::str::from_utf8(v).ok().map(str::to_owned);
                }
            }
        }
    }
    None
}

/// One DER tag-length-value: (tag, value, the bytes after it). Definite lengths up to 4 bytes.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(sans: Vec<String>, cn: &str) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "ha");
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn names_are_the_dns_sans_and_the_cn() {
        let c = cert_for(vec!["node-a".into(), "a.example".into()], "node-cn");
        let names = PeerNames::of(&c);
        assert!(names.names("node-a") && names.names("a.example") && names.names("node-cn"));
        assert!(!names.names("node-b"));
        let only_cn = PeerNames::of(&cert_for(vec![], "node-b"));
        assert_eq!(only_cn.0, ["node-b"]);
    }

    #[test]
    fn the_der_walk_is_bounded_on_garbage() {
        for bad in [
            &[][..],
            &[0x31],
            &[0x31, 0x85, 1, 2, 3, 4, 5],
            &[0x31, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x31, 0x03, 0x30, 0x01, 0x06],
            &[0x30, 0x00],
        ] {
            assert_eq!(common_name(bad), None);
        }
        let mut state = 1u32;
        for _ in 0..10_000 {
            let bytes: Vec<u8> = (0..(state % 64))
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (state >> 16) as u8
                })
                .collect();
            let _ = common_name(&bytes);
        }
    }

    #[test]
    fn a_rotated_pair_is_served_after_the_recheck() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let write = |name: &str| {
            let k = rcgen::KeyPair::generate().unwrap();
            let c = rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .self_signed(&k)
                .unwrap();
            std::fs::write(&cert, c.pem()).unwrap();
            std::fs::write(&key, k.serialize_pem()).unwrap();
            c.der().clone()
        };
        let first = write("one");
        let r = ReloadingKey::load(&cert, &key).unwrap();
        assert_eq!(r.current().cert[0], first);
        // A half-written rotation keeps the old pair.
        std::fs::write(&key, "not a key").unwrap();
        r.pair.state.lock().unwrap().checked -= RECHECK;
        assert_eq!(r.current().cert[0], first);
        let second = write("two");
        r.pair.state.lock().unwrap().checked -= RECHECK;
        assert_eq!(r.current().cert[0], second);
    }
}
