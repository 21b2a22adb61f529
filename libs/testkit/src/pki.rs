//! A throwaway certificate authority for TLS tests: a CA, a service certificate (for
//! `localhost` and 127.0.0.1, usable to serve and to call, as in production), and a client
//! certificate from an unrelated CA.

use std::path::PathBuf;

use portal_platform::tls::TlsSettings;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> anyhow::Result<Self> {
        let pki = Self {
            dir: tempfile::tempdir()?,
        };
        let (ca, issuer) = authority("portal test CA")?;
        let (_, stranger) = authority("an unrelated CA")?;
        pki.write("ca.crt", &ca)?;
        let (cert, key) = leaf(&issuer, "service")?;
        pki.write("service.crt", &cert)?;
        pki.write("service.key", &key)?;
        let (cert, key) = leaf(&stranger, "stranger")?;
        pki.write("stranger.crt", &cert)?;
        pki.write("stranger.key", &key)?;
        Ok(pki)
    }

    /// A service of the suite: serves with its certificate, requires client certificates from
    /// the CA, and presents its certificate when it calls.
    pub fn service(&self) -> TlsSettings {
        TlsSettings {
            cert_file: Some(self.path("service.crt")),
            key_file: Some(self.path("service.key")),
            client_ca_file: Some(self.path("ca.crt")),
            ca_file: Some(self.path("ca.crt")),
        }
    }

    /// A client that trusts the CA but whose own certificate comes from another.
    pub fn stranger(&self) -> TlsSettings {
        TlsSettings {
            cert_file: Some(self.path("stranger.crt")),
            key_file: Some(self.path("stranger.key")),
            client_ca_file: None,
            ca_file: Some(self.path("ca.crt")),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, pem: &str) -> std::io::Result<()> {
        std::fs::write(self.path(name), pem)
    }
}

fn authority(name: &str) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn leaf(issuer: &Issuer<'static, KeyPair>, name: &str) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}
