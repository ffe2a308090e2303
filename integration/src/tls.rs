//! Test certificates (rcgen): a CA per test and node certificates it issues, written as PEM
//! files, so TLS tests run real processes on real certificates.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate authority whose certificate is written to `<dir>/<name>.pem`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, issuer.pem()).unwrap();
        TestCa { issuer, pem }
    }

    /// Issues a certificate for `names` (DNS names or IP addresses, as SANs; the first is also
    /// the CN) and writes `<dir>/<stem>.crt` and `<dir>/<stem>.key`; returns both paths.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        // Written beside and renamed, as cert-manager and certbot do: never half a file.
        for (path, text) in [(&k, key.serialize_pem()), (&c, cert.pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (c, k)
    }

    /// The `[sidecar]`/`[http]` config of a node serving `cert`/`key`, trusting this CA for
    /// peers, and (with `mutual`) requiring client certificates from it on `/v1/peer/*`.
    pub fn node_config(&self, cert: &Path, key: &Path, mutual: bool) -> String {
        let mut t = format!(
            "[sidecar]\n  certificateFile = {}\n  privateKeyFile = {}\n",
            cert.display(),
            key.display()
        );
        if mutual {
            t.push_str(&format!("  clientCaFile = {}\n", self.pem.display()));
        }
        t.push_str(&format!("[http]\n  caFile = {}\n", self.pem.display()));
        t
    }

    /// Specs of an `n`-node mesh whose peers talk https with mutual TLS, each node with a
    /// certificate from this CA for its id and 127.0.0.1 (the local APIs stay plain, as a
    /// master's are); also each node's (certificate, key).
    pub fn https_mesh(
        &self,
        dir: &Path,
        n: usize,
    ) -> (Vec<crate::NodeSpec>, Vec<(PathBuf, PathBuf)>) {
        let mut specs = crate::mesh_specs(dir, n, "");
        let mut keys = Vec::new();
        for s in specs.iter_mut() {
            let (cert, key) = self.issue(dir, &s.id, &[&s.id, "127.0.0.1"]);
            s.scheme = "https";
            s.peers = s
                .peers
                .iter()
                .map(|p| p.replace("http://", "https://"))
                .collect();
            s.extra = self.node_config(&cert, &key, true);
            keys.push((cert, key));
        }
        (specs, keys)
    }
}

/// A reqwest client trusting `ca`, presenting `identity` (cert, key) when given.
pub fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .tls_info(true)
        .timeout(std::time::Duration::from_secs(20))
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap()]);
    if let Some((c, k)) = identity {
        let mut pem = std::fs::read(c).unwrap();
        pem.extend(std::fs::read(k).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}
