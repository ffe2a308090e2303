//! The one reload mechanism of TLS material: a value loaded from files, rebuilt when any of them
//! changes (mtime, size or inode, looked at at most once per [`RECHECK`], during a handshake).
//! A version that does not load (half-written, mismatched) is logged and the previous value
//! kept. Used for the node's certificate and key ([`super::ReloadingKey`]), the CAs that client
//! certificates are verified against (`sidecar.clientCaFile`: [`ReloadingClientVerifier`]) and
//! the CAs peers are verified against (`http.caFile`: [`ReloadingServerVerifier`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::{file_err, load_roots, provider, TlsError, RECHECK};

/// What identifies a version of a file: a rotation changes at least one of these.
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

pub(super) struct State<T> {
    value: T,
    stamps: Vec<Option<(SystemTime, u64, u64)>>,
    pub(super) checked: Instant,
}

/// A value loaded from `paths`, reloaded when they change (see the module docs).
pub struct Reloading<T: Clone> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: fn(&[PathBuf]) -> Result<T, TlsError>,
    pub(super) state: Mutex<State<T>>,
}

impl<T: Clone> Reloading<T> {
    /// Loads the value now (an error names the file).
    pub fn load(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: fn(&[PathBuf]) -> Result<T, TlsError>,
    ) -> Result<Reloading<T>, TlsError> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let value = load(&paths)?;
        Ok(Reloading {
            what,
            paths,
            load,
            state: Mutex::new(State {
                value,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The current value, reloaded first if the files changed.
    pub fn current(&self) -> T {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.checked.elapsed() >= RECHECK {
            s.checked = Instant::now();
            let stamps: Vec<_> = self.paths.iter().map(|p| stamp(p)).collect();
            if stamps != s.stamps {
                match (self.load)(&self.paths) {
                    Ok(v) => {
                        s.value = v;
                        s.stamps = stamps;
                        tracing::info!(file = %self.paths[0].display(), "{} reloaded", self.what);
                    }
                    // A rotation caught half-way: keep the old value, retry next time.
                    Err(e) => tracing::warn!(error = %e, "{} not reloaded", self.what),
                }
            }
        }
        s.value.clone()
    }
}

/// Client certificates verified against `sidecar.clientCaFile` as it is now. Optional at the
/// handshake (the peer API requires one); no CA names are hinted to clients (the node's own
/// client presents its certificate regardless).
pub struct ReloadingClientVerifier(Reloading<Arc<dyn ClientCertVerifier>>);

impl std::fmt::Debug for ReloadingClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReloadingClientVerifier({})", self.0.paths[0].display())
    }
}

fn client_verifier(paths: &[PathBuf]) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let path = &paths[0];
    WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(path)?), provider())
        // Health, metrics, status and the stream are for clients without one.
        .allow_unauthenticated()
        .build()
        .map_err(|e| file_err(path, e))
}

impl ReloadingClientVerifier {
    pub fn load(client_ca: &Path) -> Result<ReloadingClientVerifier, TlsError> {
        Reloading::load(
            "client CA file",
            vec![client_ca.to_path_buf()],
            client_verifier,
        )
        .map(ReloadingClientVerifier)
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().supported_verify_schemes()
    }
}

/// Peers' (and the master's) certificates verified against `http.caFile` as it is now (WebPKI,
/// names checked: never trust-all).
pub struct ReloadingServerVerifier(Reloading<Arc<rustls::client::WebPkiServerVerifier>>);

impl std::fmt::Debug for ReloadingServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReloadingServerVerifier({})", self.0.paths[0].display())
    }
}

fn server_verifier(
    paths: &[PathBuf],
) -> Result<Arc<rustls::client::WebPkiServerVerifier>, TlsError> {
    let path = &paths[0];
    rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(load_roots(path)?),
        provider(),
    )
    .build()
    .map_err(|e| file_err(path, e))
}

impl ReloadingServerVerifier {
    pub fn load(ca: &Path) -> Result<ReloadingServerVerifier, TlsError> {
        Reloading::load("CA file", vec![ca.to_path_buf()], server_verifier)
            .map(ReloadingServerVerifier)
    }
}

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(ca: &CertifiedIssuer<'static, KeyPair>) -> CertificateDer<'static> {
        let params = CertificateParams::new(vec!["node-a".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, ca).unwrap().der().clone()
    }

    #[test]
    fn a_rotated_ca_file_is_used_after_the_recheck_for_peers_and_clients() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let (one, two) = (ca(), ca());
        let (leaf_one, leaf_two) = (leaf(&one), leaf(&two));
        std::fs::write(&path, one.pem()).unwrap();
        let servers = ReloadingServerVerifier::load(&path).unwrap();
        let clients = ReloadingClientVerifier::load(&path).unwrap();
        let name = ServerName::try_from("node-a").unwrap();
        let now = UnixTime::now();
        let peer_ok =
            |c: &CertificateDer<'_>| servers.verify_server_cert(c, &[], &name, &[], now).is_ok();
        let client_ok = |c: &CertificateDer<'_>| clients.verify_client_cert(c, &[], now).is_ok();
        assert!(peer_ok(&leaf_one) && client_ok(&leaf_one));
        assert!(!peer_ok(&leaf_two) && !client_ok(&leaf_two));

        // A half-written file keeps the old CAs.
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nAAAA").unwrap();
        servers.0.state.lock().unwrap().checked -= RECHECK;
        clients.0.state.lock().unwrap().checked -= RECHECK;
        assert!(peer_ok(&leaf_one) && client_ok(&leaf_one));

        // The new CA replaces the old one.
        std::fs::write(&path, two.pem()).unwrap();
        servers.0.state.lock().unwrap().checked -= RECHECK;
        clients.0.state.lock().unwrap().checked -= RECHECK;
        assert!(peer_ok(&leaf_two) && client_ok(&leaf_two));
        assert!(!peer_ok(&leaf_one) && !client_ok(&leaf_one));
    }
}
