//! TLS and mutual TLS for servers and clients (issue 3), from the `[tls]` section of the
//! settings. With no key set, servers and clients speak plaintext: the development default.
//!
//! One [`TlsSettings`] configures both sides of a process: the certificate and key it serves
//! are also the ones it presents when it calls another service, so a service certificate
//! needs both the `serverAuth` and `clientAuth` extended key usages (`docs/tls.md`).
//!
//! rustls needs a crypto provider. tonic's `tls-ring` feature gives rustls only its `ring`
//! feature, so rustls installs ring as the process default on first use (server side) and
//! tonic falls back to ring explicitly (client side). Should another crate ever enable
//! rustls's `aws_lc_rs` feature as well, the server side would panic with "Could not
//! automatically determine the process-level CryptoProvider": the fix is then to install one
//! provider at start-up (`rustls::crypto::ring::default_provider().install_default()`), which
//! needs `rustls` as a direct dependency.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::ConfigError;

/// A peer that opens a connection and never finishes the handshake would otherwise hold a
/// task forever (tonic sets no handshake timeout of its own).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[tls]`: PEM files. Every key is optional and the section may be absent (plaintext).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// This process's certificate (chain, leaf first): served by servers, presented by
    /// clients for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Servers: when set, every client must present a certificate signed by this CA.
    pub client_ca_file: Option<PathBuf>,
    /// Clients: the CA that signs the servers' certificates; when set, calls use TLS.
    pub ca_file: Option<PathBuf>,
}

/// What a PEM file must hold, so that a wrong file stops start-up instead of failing every
/// handshake later (tonic skips what it cannot parse in a CA file).
#[derive(Clone, Copy)]
enum Pem {
    Certificate,
    PrivateKey,
}

impl TlsSettings {
    /// Checks that the keys make sense together and that every file named is readable and
    /// holds PEM of the right kind. Errors name the key (and path), never file contents.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "tls.key_file",
                    "must be set when tls.cert_file is set",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls.cert_file",
                    "must be set when tls.key_file is set",
                ));
            }
            _ => {}
        }
        if self.client_ca_file.is_some() && self.cert_file.is_none() {
            return Err(invalid(
                "tls.client_ca_file",
                "requires tls.cert_file and tls.key_file (the server must serve TLS to ask \
                 clients for certificates)",
            ));
        }
        for (key, path, kind) in [
            ("tls.cert_file", &self.cert_file, Pem::Certificate),
            ("tls.key_file", &self.key_file, Pem::PrivateKey),
            ("tls.client_ca_file", &self.client_ca_file, Pem::Certificate),
            ("tls.ca_file", &self.ca_file, Pem::Certificate),
        ] {
            if let Some(path) = path {
                read_pem(key, path, kind)?;
            }
        }
        Ok(())
    }
}

/// The server's TLS: `None` (plaintext) when no certificate is configured. With
/// `client_ca_file`, clients without a certificate signed by that CA are refused at the
/// handshake (mutual TLS).
pub fn server_config(settings: &TlsSettings) -> anyhow::Result<Option<ServerTlsConfig>> {
    // Validating here means a half-configured certificate is an error, never plaintext.
    settings.validate()?;
    let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) else {
        return Ok(None);
    };
    let mut config = ServerTlsConfig::new()
        .identity(identity(cert_file, key_file)?)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca_file) = &settings.client_ca_file {
        let ca = read_pem("tls.client_ca_file", ca_file, Pem::Certificate)?;
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(Some(config))
}

/// A client's TLS for calls to `server_name` (the DNS name in the server's certificate, which
/// may differ from the URI's host): `None` (plaintext) when no `ca_file` is set. Presents
/// this process's certificate when one is configured, for mutual TLS. The URI must use
/// [`scheme`]: tonic ignores a TLS config on an `http://` URI and connects in plaintext.
pub fn client_config(
    settings: &TlsSettings,
    server_name: &str,
) -> anyhow::Result<Option<ClientTlsConfig>> {
    settings.validate()?;
    let Some(ca_file) = &settings.ca_file else {
        return Ok(None);
    };
    let ca = read_pem("tls.ca_file", ca_file, Pem::Certificate)?;
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(server_name)
        .timeout(HANDSHAKE_TIMEOUT);
    if let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) {
        config = config.identity(identity(cert_file, key_file)?);
    }
    Ok(Some(config))
}

/// The URI scheme of outgoing calls: `https` when calls use TLS, else `http`.
pub fn scheme(settings: &TlsSettings) -> &'static str {
    if settings.ca_file.is_some() {
        "https"
    } else {
        "http"
    }
}

fn identity(cert_file: &Path, key_file: &Path) -> anyhow::Result<Identity> {
    let cert = read_pem("tls.cert_file", cert_file, Pem::Certificate)?;
    let key = read_pem("tls.key_file", key_file, Pem::PrivateKey)?;
    Ok(Identity::from_pem(cert, key))
}

/// Reads a PEM file. The error names the key and the path; contents are never quoted (a key
/// file is a secret, and a wrong file may be one).
fn read_pem(key: &str, path: &Path, kind: Pem) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        invalid(
            key,
            format!("cannot read `{}`: {}", path.display(), e.kind()),
        )
    })?;
    let text = String::from_utf8_lossy(&bytes);
    // rustls reads only unencrypted keys; say so rather than "no key found" at start-up.
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(invalid(
            key,
            format!(
                "`{}` holds an encrypted private key; it must be unencrypted",
                path.display()
            ),
        ));
    }
    let (holds_it, expected) = match kind {
        Pem::Certificate => (
            text.contains("-----BEGIN CERTIFICATE-----"),
            "a PEM certificate (-----BEGIN CERTIFICATE-----)",
        ),
        // PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) and SEC1 (`EC PRIVATE KEY`).
        Pem::PrivateKey => (
            text.lines()
                .any(|l| l.starts_with("-----BEGIN ") && l.ends_with("PRIVATE KEY-----")),
            "a PEM private key (-----BEGIN PRIVATE KEY-----)",
        ),
    };
    if holds_it {
        Ok(bytes)
    } else {
        Err(invalid(
            key,
            format!(
                "`{}` does not hold {expected} (contents not shown)",
                path.display()
            ),
        ))
    }
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use tokio::net::TcpListener;
    use tonic::transport::server::TcpIncoming;
    use tonic::transport::{Endpoint, Server};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    /// Certificates written to a temporary folder: two unrelated CAs and leaves signed by them.
    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// A service's own settings: one certificate to serve and to call, trusting `ca`
        /// both ways.
        fn service(&self) -> TlsSettings {
            TlsSettings {
                cert_file: Some(self.path("service.crt")),
                key_file: Some(self.path("service.key")),
                client_ca_file: Some(self.path("ca.crt")),
                ca_file: Some(self.path("ca.crt")),
            }
        }

        /// A client trusting `ca`, presenting the leaf `name` (or no certificate).
        fn client(&self, name: Option<&str>) -> TlsSettings {
            TlsSettings {
                cert_file: name.map(|n| self.path(&format!("{n}.crt"))),
                key_file: name.map(|n| self.path(&format!("{n}.key"))),
                client_ca_file: None,
                ca_file: Some(self.path("ca.crt")),
            }
        }
    }

    fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(params, key))
    }

    fn new_leaf(
        issuer: &Issuer<'static, KeyPair>,
        name: &str,
        usages: &[ExtendedKeyUsagePurpose],
    ) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pki() -> Pki {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        let write = |name: &str, pem: &str| std::fs::write(pki.path(name), pem).unwrap();
        let (ca, issuer) = new_ca("portal test CA");
        let (other_ca, other_issuer) = new_ca("some other CA");
        write("ca.crt", &ca);
        write("other-ca.crt", &other_ca);
        for (file, issuer, name, usages) in [
            (
                "service",
                &issuer,
                "localhost",
                &[ServerAuth, ClientAuth][..],
            ),
            ("client", &issuer, "approval", &[ClientAuth][..]),
            ("server-only", &issuer, "consent", &[ServerAuth][..]),
            ("stranger", &other_issuer, "approval", &[ClientAuth][..]),
        ] {
            let (cert, key) = new_leaf(issuer, name, usages);
            write(&format!("{file}.crt"), &cert);
            write(&format!("{file}.key"), &key);
        }
        pki
    }

    /// Serves `grpc.health.v1.Health` on 127.0.0.1 with the TLS `settings` give; returns the
    /// port. The server task ends with the test's runtime.
    async fn serve(settings: &TlsSettings) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let mut builder = Server::builder();
        if let Some(tls) = server_config(settings).unwrap() {
            builder = builder.tls_config(tls).unwrap();
        }
        let server = builder
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener));
        tokio::spawn(server);
        port
    }

    /// One `Health/Check` call to `uri`; the error is the whole chain, for failure messages.
    async fn check(uri: String, tls: Option<ClientTlsConfig>) -> Result<ServingStatus, String> {
        let mut endpoint = Endpoint::from_shared(uri)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("{e:?}"))?;
        }
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(response.into_inner().status())
    }

    async fn check_as(port: u16, client: &TlsSettings) -> Result<ServingStatus, String> {
        let uri = format!("{}://localhost:{port}", scheme(client));
        check(uri, client_config(client, "localhost").unwrap()).await
    }

    /// A call that failed, and failed for `reason` (a rustls error or TLS alert), not by chance.
    fn assert_refused(result: Result<ServingStatus, String>, reason: &str) {
        let err = result.unwrap_err();
        assert!(err.contains(reason), "expected {reason}: {err}");
    }

    #[tokio::test]
    async fn a_client_with_a_certificate_from_the_trusted_ca_completes_a_call_over_mutual_tls() {
        let pki = pki();
        let port = serve(&pki.service()).await;
        let client = pki.client(Some("client"));
        assert_eq!(scheme(&client), "https");
        assert_eq!(
            check_as(port, &client).await.unwrap(),
            ServingStatus::Serving
        );
    }

    #[tokio::test]
    async fn one_service_certificate_both_serves_and_calls_over_mutual_tls() {
        let pki = pki();
        let settings = pki.service();
        let port = serve(&settings).await;
        assert_eq!(
            check_as(port, &settings).await.unwrap(),
            ServingStatus::Serving
        );
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused_by_a_mutual_tls_server() {
        let pki = pki();
        let port = serve(&pki.service()).await;
        let refused = check_as(port, &pki.client(None)).await;
        assert_refused(refused, "CertificateRequired");
        // The same server still serves a client that does present one.
        assert!(check_as(port, &pki.client(Some("client"))).await.is_ok());
    }

    #[tokio::test]
    async fn a_client_certificate_from_another_ca_is_refused_by_a_mutual_tls_server() {
        let pki = pki();
        let port = serve(&pki.service()).await;
        let refused = check_as(port, &pki.client(Some("stranger"))).await;
        assert_refused(refused, "UnknownCA");
        assert!(check_as(port, &pki.client(Some("client"))).await.is_ok());
    }

    #[tokio::test]
    async fn a_certificate_without_client_auth_usage_is_refused_as_a_client_certificate() {
        let pki = pki();
        let port = serve(&pki.service()).await;
        let refused = check_as(port, &pki.client(Some("server-only"))).await;
        assert_refused(refused, "UnsupportedCertificate");
    }

    #[tokio::test]
    async fn a_client_trusting_a_different_ca_refuses_the_server() {
        let pki = pki();
        let port = serve(&pki.service()).await;
        let mut client = pki.client(Some("client"));
        client.ca_file = Some(pki.path("other-ca.crt"));
        let refused = check_as(port, &client).await;
        assert_refused(refused, "UnknownIssuer");
    }

    #[tokio::test]
    async fn a_tls_server_without_a_client_ca_serves_clients_without_certificates() {
        let pki = pki();
        let mut server = pki.service();
        server.client_ca_file = None;
        let port = serve(&server).await;
        assert_eq!(
            check_as(port, &pki.client(None)).await.unwrap(),
            ServingStatus::Serving
        );
    }

    #[tokio::test]
    async fn the_server_name_not_the_uri_host_must_match_the_servers_certificate() {
        let pki = pki();
        let port = serve(&pki.service()).await;
        let client = pki.client(Some("client"));
        let uri = format!("https://127.0.0.1:{port}");
        let by_name = client_config(&client, "localhost").unwrap();
        assert!(check(uri.clone(), by_name).await.is_ok());
        let wrong_name = client_config(&client, "identity.portal.internal").unwrap();
        let refused = check(uri, wrong_name).await;
        assert_refused(refused, "NotValidForName");
    }

    /// Why [`scheme`] exists: tonic applies a TLS config only to `https://` URIs.
    #[tokio::test]
    async fn a_tls_config_on_an_http_uri_is_silently_plaintext() {
        let pki = pki();
        let plaintext = serve(&TlsSettings::default()).await;
        let tls = client_config(&pki.client(Some("client")), "localhost").unwrap();
        let status = check(format!("http://localhost:{plaintext}"), tls)
            .await
            .unwrap();
        assert_eq!(status, ServingStatus::Serving);
    }

    #[tokio::test]
    async fn plaintext_settings_give_no_tls_config_and_the_http_scheme() {
        let settings = TlsSettings::default();
        settings.validate().unwrap();
        assert!(server_config(&settings).unwrap().is_none());
        assert!(client_config(&settings, "localhost").unwrap().is_none());
        assert_eq!(scheme(&settings), "http");
        let port = serve(&settings).await;
        let status = check(format!("http://localhost:{port}"), None).await;
        assert_eq!(status.unwrap(), ServingStatus::Serving);
    }

    fn rejected_key(settings: &TlsSettings) -> String {
        match settings.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn a_half_configured_certificate_is_rejected_naming_the_key() {
        let pki = pki();
        let mut settings = pki.service();
        settings.key_file = None;
        assert_eq!(rejected_key(&settings), "tls.key_file");
        // Never a silent fall-back to plaintext.
        assert!(server_config(&settings).is_err());
        assert!(client_config(&settings, "localhost").is_err());

        let mut settings = pki.service();
        settings.cert_file = None;
        assert_eq!(rejected_key(&settings), "tls.cert_file");
    }

    /// The PEM files are well formed, so only rustls can tell; it does so when the server is
    /// built, before it listens.
    #[test]
    fn a_certificate_that_does_not_match_its_key_stops_the_server_from_starting() {
        let pki = pki();
        let settings = TlsSettings {
            key_file: Some(pki.path("client.key")),
            ..pki.service()
        };
        let config = server_config(&settings).unwrap().unwrap();
        let err = Server::builder().tls_config(config).unwrap_err();
        assert!(format!("{err:?}").contains("InconsistentKeys"), "{err:?}");
    }

    #[test]
    fn a_client_ca_without_a_server_certificate_is_rejected_naming_the_key() {
        let pki = pki();
        let settings = TlsSettings {
            client_ca_file: Some(pki.path("ca.crt")),
            ..TlsSettings::default()
        };
        assert_eq!(rejected_key(&settings), "tls.client_ca_file");
    }

    #[test]
    fn a_missing_or_unreadable_file_is_rejected_naming_its_key() {
        let pki = pki();
        for (settings, key) in [
            (
                TlsSettings {
                    ca_file: Some(pki.path("missing.crt")),
                    ..TlsSettings::default()
                },
                "tls.ca_file",
            ),
            (
                TlsSettings {
                    key_file: Some(pki.dir.path().to_owned()),
                    ..pki.service()
                },
                "tls.key_file",
            ),
        ] {
            assert_eq!(rejected_key(&settings), key);
        }
        let err = TlsSettings {
            ca_file: Some(pki.path("missing.crt")),
            ..TlsSettings::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("missing.crt") && err.contains("not found"),
            "{err}"
        );
    }

    #[test]
    fn a_file_of_the_wrong_kind_is_rejected_without_showing_its_contents() {
        let pki = pki();
        let secret = pki.path("secret.txt");
        std::fs::write(&secret, "hunter2-secret\n").unwrap();
        let encrypted = pki.path("encrypted.key");
        std::fs::write(
            &encrypted,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n\
             -----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        for (key, file, settings) in [
            ("tls.cert_file", secret.clone(), pki.service()),
            ("tls.key_file", pki.path("service.crt"), pki.service()),
            ("tls.key_file", encrypted, pki.service()),
            (
                "tls.ca_file",
                pki.path("service.key"),
                TlsSettings::default(),
            ),
        ] {
            let mut settings = settings;
            let slot = match key {
                "tls.cert_file" => &mut settings.cert_file,
                "tls.key_file" => &mut settings.key_file,
                _ => &mut settings.ca_file,
            };
            *slot = Some(file.clone());
            let text = settings.validate().unwrap_err().to_string();
            assert!(text.contains(key), "{text}");
            let contents = std::fs::read_to_string(&file).unwrap();
            for line in contents.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!text.contains(line), "{text} quotes {line}");
            }
        }
    }

    /// The keys as the lead wires them: `[tls]` of a file (absent: plaintext) and
    /// `PORTAL_TLS__*` variables, loaded the way `config.rs` loads every other section.
    #[test]
    fn tls_settings_load_from_the_tls_section_and_the_environment() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Root {
            #[serde(default)]
            tls: TlsSettings,
        }
        fn load(toml: &str, env: &[(&str, &str)]) -> Result<Root, config::ConfigError> {
            let env: HashMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            config::Config::builder()
                .add_source(config::File::from_str(toml, config::FileFormat::Toml))
                .add_source(
                    config::Environment::with_prefix("PORTAL")
                        .prefix_separator("_")
                        .separator("__")
                        .try_parsing(true)
                        .source(Some(env.into_iter().collect())),
                )
                .build()
                .and_then(config::Config::try_deserialize)
        }

        let absent = load("", &[]).unwrap().tls;
        assert!(absent.cert_file.is_none() && absent.ca_file.is_none());

        let root = load(
            "[tls]\ncert_file = \"/etc/portal/tls/tls.crt\"\nkey_file = \"/etc/portal/tls/tls.key\"\n",
            &[
                ("PORTAL_TLS__CA_FILE", "/etc/portal/tls/ca.crt"),
                ("PORTAL_TLS__CLIENT_CA_FILE", "/etc/portal/tls/ca.crt"),
            ],
        )
        .unwrap();
        assert_eq!(
            root.tls.cert_file.as_deref(),
            Some(Path::new("/etc/portal/tls/tls.crt"))
        );
        assert_eq!(
            root.tls.key_file.as_deref(),
            Some(Path::new("/etc/portal/tls/tls.key"))
        );
        assert_eq!(
            root.tls.ca_file.as_deref(),
            Some(Path::new("/etc/portal/tls/ca.crt"))
        );
        assert_eq!(
            root.tls.client_ca_file.as_deref(),
            Some(Path::new("/etc/portal/tls/ca.crt"))
        );

        let typo = load("[tls]\ncert = \"x\"\n", &[]).unwrap_err();
        assert!(typo.to_string().contains("cert"), "{typo}");
    }
}
