//! Settings: compiled-in defaults, then an optional file, then `PORTAL_`-prefixed environment
//! variables (`__` between levels), then `DATABASE_URL`. Validated once at start-up; every error
//! names the key it is about and never the value, so a secret cannot leak through an error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("defaults.toml");

/// The top-level sections, as they appear in environment variable names.
const SECTIONS: [&str; 10] = [
    "DEPLOYMENT",
    "TELEMETRY",
    "DATABASE",
    "SERVER",
    "AUTH",
    "TLS",
    "IDENTITY",
    "CONSENT",
    "APPROVAL",
    "TRANSFER",
];

/// Everything a portal process is configured with. Each service reads the shared sections and
/// its own `[<service>]` section, so one file can configure the whole suite.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub deployment: Deployment,
    pub telemetry: TelemetrySettings,
    pub database: DatabaseSettings,
    pub server: ServerSettings,
    pub auth: AuthSettings,
    /// TLS and mutual TLS (`docs/tls.md`); absent: plaintext.
    #[serde(default)]
    pub tls: crate::tls::TlsSettings,
    pub events: EventSettings,
    pub identity: IdentitySettings,
    pub consent: ServiceSettings,
    pub approval: ApprovalSettings,
    pub transfer: TransferSettings,
}

/// The event feeds every service keeps (`docs/events.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// Events older than this are forgotten; a cursor before them is `CURSOR_EXPIRED`. The
    /// contracts promise at least 30 days.
    pub retention_days: u32,
}

/// Article 1: the group entity that operates this deployment and the region it serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub region: String,
    /// ISO 3166-1 alpha-2 country of the operating entity.
    pub country: String,
    pub operating_entity: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_filter: String,
    pub service_namespace: String,
    /// OTLP/gRPC collector; traces and metrics are exported only when this is set.
    pub otlp_endpoint: Option<String>,
    /// Where Prometheus scrapes `GET /metrics` (plain HTTP, its own port); absent: no scrape.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How often metrics are pushed to `otlp_endpoint`.
    pub metrics_export_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The running service's connection: its app role in production, a superuser in
    /// development (with `assume_roles`).
    pub url: Option<SecretString>,
    /// The owner role's connection, used only to run migrations. Without it (and without
    /// `assume_roles`) the service waits for a migration job to bring its schema up to date.
    pub migration_url: Option<SecretString>,
    /// Development: `url` is a superuser; create each service's roles and schema, and run as
    /// the owner role for migrations and the app role otherwise (`SET ROLE`).
    pub assume_roles: bool,
    pub max_connections: u32,
    /// How long a call waits for a connection (including connecting) before `UNAVAILABLE`.
    pub acquire_timeout_ms: u64,
    /// How often the database is probed for the health status.
    pub health_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub request_timeout_ms: u64,
    pub max_message_bytes: usize,
    pub max_concurrent_requests_per_connection: usize,
    pub shutdown_grace_ms: u64,
}

/// Tokens: the keys this process trusts and the one it signs with (`docs/auth.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Lifetime of the SERVICE tokens this process mints for its own calls.
    pub service_token_ttl_secs: u64,
    /// Longest token lifetime (`exp - iat`) accepted from anyone.
    pub max_token_lifetime_secs: u64,
    /// This process's signing key (secret).
    pub signing_key: Option<SigningKeySettings>,
    /// Public keys whose tokens are accepted, each for the kinds of token it may sign (and, for
    /// a service's key, the subjects it may sign for).
    #[serde(default)]
    pub trusted_keys: Vec<TrustedKeySettings>,
    /// Public keys this process signed with before its current key: still published (receipts
    /// and checkpoints they signed must keep verifying), never used to sign.
    #[serde(default)]
    pub retired_signing_keys: Vec<RetiredKeySettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiredKeySettings {
    pub key_id: String,
    /// Base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeySettings {
    pub key_id: String,
    /// Base64 of the 32-byte Ed25519 private key.
    pub private_key: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeySettings {
    pub key_id: String,
    /// Base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// Kinds of token this key may sign: USER, SERVICE, OPERATOR, AUDITOR.
    pub kinds: Vec<crate::auth::Kind>,
    /// If not empty, the only subjects this key may sign for, e.g. `["services/approval"]`, so
    /// one service's key cannot speak for another service.
    #[serde(default)]
    pub subjects: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    pub listen: SocketAddr,
    /// How the other services reach this one, e.g. `https://consent.portal.svc:50052`;
    /// absent: this machine, at the port of `listen` (development).
    pub endpoint: Option<String>,
}

/// `[approval]`: where it listens, and how long requests wait for a decision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSettings {
    pub listen: SocketAddr,
    pub endpoint: Option<String>,
    /// How long a PENDING request waits for a decision before it is EXPIRED.
    pub request_expiry_secs: u64,
    /// How often the expiry sweeper records requests whose time has passed (they count as
    /// EXPIRED from that instant whether or not it has run).
    pub sweep_interval_ms: u64,
}

/// `[transfer]`: where it listens, and the group's standards for subcontractors (Art. 3.3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSettings {
    pub listen: SocketAddr,
    pub endpoint: Option<String>,
    /// The group's security control standard, 0-100: a subcontractor below it is refused.
    pub baseline_security_level: i32,
    /// How long a subcontractor's supervision review stays valid.
    pub review_validity_days: u32,
    /// Deadline of each CheckConsent call; past it the transfer fails closed (UNAVAILABLE).
    pub consent_deadline_ms: u64,
}

/// `[identity]`: where it listens, and how it keeps PI and credentials (`docs/identity.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySettings {
    pub listen: SocketAddr,
    pub endpoint: Option<String>,
    /// Lifetime of the USER access tokens SignIn issues; at most 15 minutes.
    pub access_token_ttl_secs: u64,
    /// How long an activation secret works after registration.
    pub activation_ttl_secs: u64,
    /// Consecutive failed sign-ins after which an account is locked.
    pub sign_in_max_failures: u32,
    /// How long such a lock lasts.
    pub sign_in_lockout_secs: u64,
    /// How long database backups are kept: the latest a deleted user's wrapped data key can
    /// survive in a backup (stated on every deletion receipt).
    pub backup_retention_days: u32,
    pub argon2: Argon2Settings,
    /// The key-encryption keys that wrap users' data keys, by key id; the current one wraps new
    /// data keys, the others still unwrap the keys they wrapped (rotation). Secrets.
    #[serde(default)]
    pub key_encryption_keys: Vec<SecretKeySettings>,
    /// Key id, among `key_encryption_keys`, that wraps new data keys.
    pub current_key_encryption_key: Option<String>,
    /// Base64 of 32 random bytes: keys the email lookup hash and derives activation secrets.
    /// Changing it makes every stored email unfindable: it is not rotated like the KEKs.
    pub lookup_key: Option<SecretString>,
}

/// Argon2id cost of password hashes (RFC 9106; defaults are OWASP's 19 MiB, 2 passes, 1 lane).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

/// A named symmetric key: base64 of 32 random bytes.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeySettings {
    pub key_id: String,
    pub key: SecretString,
}

impl std::fmt::Debug for SecretKeySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeySettings")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl IdentitySettings {
    /// Whether no PI keys are configured (development then generates its own).
    pub fn lacks_keys(&self) -> bool {
        self.key_encryption_keys.is_empty() && self.lookup_key.is_none()
    }

    /// Protects PI with one KEK `kek_id` and `lookup_key` (both base64 of 32 bytes):
    /// development and tests, where the keys are generated rather than managed.
    pub fn use_keys(&mut self, kek_id: &str, kek: &str, lookup_key: &str) {
        self.key_encryption_keys = vec![SecretKeySettings {
            key_id: kek_id.to_owned(),
            key: kek.into(),
        }];
        self.current_key_encryption_key = Some(kek_id.to_owned());
        self.lookup_key = Some(lookup_key.into());
    }

    fn validate(&self) -> Result<(), ConfigError> {
        in_range(
            "identity.access_token_ttl_secs",
            self.access_token_ttl_secs,
            30,
            900,
        )?;
        in_range(
            "identity.activation_ttl_secs",
            self.activation_ttl_secs,
            60,
            30 * 24 * 3600,
        )?;
        in_range(
            "identity.sign_in_max_failures",
            self.sign_in_max_failures.into(),
            1,
            100,
        )?;
        in_range(
            "identity.sign_in_lockout_secs",
            self.sign_in_lockout_secs,
            1,
            24 * 3600,
        )?;
        in_range(
            "identity.backup_retention_days",
            self.backup_retention_days.into(),
            0,
            3650,
        )?;
        let a = &self.argon2;
        in_range(
            "identity.argon2.memory_kib",
            a.memory_kib.into(),
            8,
            4 * 1024 * 1024,
        )?;
        in_range("identity.argon2.iterations", a.iterations.into(), 1, 100)?;
        in_range("identity.argon2.parallelism", a.parallelism.into(), 1, 64)?;
        for key in &self.key_encryption_keys {
            check_key_id("identity.key_encryption_keys.key_id", &key.key_id)?;
            secret_key_bytes("identity.key_encryption_keys.key", &key.key)?;
        }
        if let Some(current) = &self.current_key_encryption_key
            && !self
                .key_encryption_keys
                .iter()
                .any(|k| &k.key_id == current)
        {
            return Err(ConfigError::invalid(
                "identity.current_key_encryption_key",
                "must name one of identity.key_encryption_keys",
            ));
        }
        if let Some(key) = &self.lookup_key {
            secret_key_bytes("identity.lookup_key", key)?;
        }
        Ok(())
    }
}

fn check_key_id(key: &str, id: &str) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            "must be 1-64 characters of [A-Za-z0-9._-]",
        ))
    }
}

/// A new random symmetric key: base64 of 32 bytes (development and tests).
pub fn random_secret_key() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The 32 bytes of a base64 symmetric key, or an error naming `key` (never the value).
pub fn secret_key_bytes(key: &str, value: &SecretString) -> Result<[u8; 32], ConfigError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(value.expose_secret().trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| {
            ConfigError::invalid(key, "must be base64 of 32 random bytes (value not shown)")
        })
}

/// A configuration problem, naming the key and never its value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
    #[error("configuration: {0}")]
    Load(String),
}

impl ConfigError {
    fn invalid(key: &str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

impl Settings {
    /// Loads the settings of a running process: defaults, `file`, then its environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars().collect())
    }

    /// Loads the settings with an explicit environment (tests pass their own).
    pub fn load_from(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let database_url = env.get("DATABASE_URL").cloned();
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).required(true));
        }
        if let Some(url) = database_url.filter(|_| !env.contains_key("PORTAL_DATABASE__URL")) {
            builder = builder
                .set_override("database.url", url)
                .map_err(|e| ConfigError::Load(e.to_string()))?;
        }
        // Only variables that name one of our sections: others that happen to start with
        // `PORTAL_` (Kubernetes service links for a Service called `portal`) are not ours.
        let ours = env
            .into_iter()
            .filter(|(key, _)| {
                SECTIONS
                    .iter()
                    .any(|section| key.starts_with(&format!("PORTAL_{section}__")))
            })
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("PORTAL")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(ours)),
        );
        let settings: Settings = builder
            .build()
            .and_then(Config::try_deserialize)
            .map_err(describe_load_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Range and shape checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.deployment;
        if d.region.is_empty() || !d.region.chars().all(|c| c.is_ascii_lowercase()) {
            return Err(ConfigError::invalid(
                "deployment.region",
                "must be a lower-case region code such as `jp`",
            ));
        }
        if d.country.len() != 2 || !d.country.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(ConfigError::invalid(
                "deployment.country",
                "must be an ISO 3166-1 alpha-2 code such as `JP`",
            ));
        }
        if d.operating_entity.trim().is_empty() {
            return Err(ConfigError::invalid(
                "deployment.operating_entity",
                "must not be empty",
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            let parsed = url::Url::parse(endpoint);
            if !matches!(parsed, Ok(ref u) if u.scheme() == "http" || u.scheme() == "https") {
                return Err(ConfigError::invalid(
                    "telemetry.otlp_endpoint",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        in_range(
            "events.retention_days",
            self.events.retention_days.into(),
            30,
            3650,
        )?;
        if tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_filter).is_err() {
            return Err(ConfigError::invalid(
                "telemetry.log_filter",
                "is not a valid tracing filter directive",
            ));
        }
        for (key, url) in [
            ("database.url", &self.database.url),
            ("database.migration_url", &self.database.migration_url),
        ] {
            if let Some(url) = url {
                check_postgres_url(key, url)?;
            }
        }
        let db = &self.database;
        in_range(
            "database.max_connections",
            db.max_connections.into(),
            1,
            1000,
        )?;
        in_range(
            "database.acquire_timeout_ms",
            db.acquire_timeout_ms,
            100,
            60_000,
        )?;
        in_range(
            "database.health_interval_ms",
            db.health_interval_ms,
            100,
            60_000,
        )?;
        let s = &self.server;
        in_range(
            "server.request_timeout_ms",
            s.request_timeout_ms,
            100,
            600_000,
        )?;
        in_range(
            "server.max_message_bytes",
            s.max_message_bytes as u64,
            1024,
            64 * 1024 * 1024,
        )?;
        in_range(
            "server.max_concurrent_requests_per_connection",
            s.max_concurrent_requests_per_connection as u64,
            1,
            100_000,
        )?;
        in_range("server.shutdown_grace_ms", s.shutdown_grace_ms, 0, 600_000)?;
        let a = &self.auth;
        in_range(
            "auth.service_token_ttl_secs",
            a.service_token_ttl_secs,
            30,
            3600,
        )?;
        in_range(
            "auth.max_token_lifetime_secs",
            a.max_token_lifetime_secs,
            60,
            7 * 24 * 3600,
        )?;
        // Parsing the keys is the check: each error names the key that is wrong.
        crate::auth::keys::KeySet::from_settings(self)?;
        crate::auth::keys::TokenSigner::from_settings(self)?;
        crate::auth::keys::published_keys(self)?;
        self.tls.validate()?;
        self.identity.validate()?;
        in_range(
            "transfer.baseline_security_level",
            u64::try_from(self.transfer.baseline_security_level).unwrap_or(u64::MAX),
            0,
            100,
        )?;
        in_range(
            "transfer.review_validity_days",
            self.transfer.review_validity_days.into(),
            1,
            3650,
        )?;
        in_range(
            "transfer.consent_deadline_ms",
            self.transfer.consent_deadline_ms,
            50,
            60_000,
        )?;
        in_range(
            "approval.request_expiry_secs",
            self.approval.request_expiry_secs,
            60,
            90 * 24 * 3600,
        )?;
        in_range(
            "approval.sweep_interval_ms",
            self.approval.sweep_interval_ms,
            10,
            3_600_000,
        )?;
        Ok(())
    }

    /// Where one service, by its short name (`identity`, `consent`, ...), listens and how the
    /// others reach it (its configured `endpoint`, if any).
    pub fn service(&self, name: &str) -> Option<(SocketAddr, Option<&str>)> {
        match name {
            "identity" => Some((self.identity.listen, self.identity.endpoint.as_deref())),
            "consent" => Some((self.consent.listen, self.consent.endpoint.as_deref())),
            "approval" => Some((self.approval.listen, self.approval.endpoint.as_deref())),
            "transfer" => Some((self.transfer.listen, self.transfer.endpoint.as_deref())),
            _ => None,
        }
    }

    /// The configured `endpoint` of one service, to fill in where it was left to default.
    pub fn endpoint_mut(&mut self, name: &str) -> Option<&mut Option<String>> {
        match name {
            "identity" => Some(&mut self.identity.endpoint),
            "consent" => Some(&mut self.consent.endpoint),
            "approval" => Some(&mut self.approval.endpoint),
            "transfer" => Some(&mut self.transfer.endpoint),
            _ => None,
        }
    }

    /// The database URL the running service connects with, or an error naming the key.
    pub fn database_url(&self) -> Result<&SecretString, ConfigError> {
        self.database.url.as_ref().ok_or_else(|| {
            ConfigError::invalid("database.url", "is required (or set DATABASE_URL)")
        })
    }
}

impl ServerSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

fn in_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("must be between {min} and {max}"),
        ))
    }
}

fn check_postgres_url(key: &str, url: &SecretString) -> Result<(), ConfigError> {
    match url::Url::parse(url.expose_secret()) {
        Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => Ok(()),
        // The value may hold a password, so the message describes it without quoting it.
        _ => Err(ConfigError::invalid(
            key,
            "must be a postgres:// URL (value not shown: it may hold a password)",
        )),
    }
}

/// The `config` crate names the key in its messages but may quote the offending value; values
/// of secret keys must not reach the output, so those messages are reduced to the key.
fn describe_load_error(error: config::ConfigError) -> ConfigError {
    let text = error.to_string();
    for secret_key in [
        "database.url",
        "database.migration_url",
        "auth.signing_key.private_key",
        "identity.key_encryption_keys",
        "identity.lookup_key",
    ] {
        if text.contains(secret_key) {
            return ConfigError::invalid(secret_key, "has an invalid value (not shown)");
        }
    }
    ConfigError::Load(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(None, env)
    }

    #[test]
    fn compiled_in_defaults_parse_and_validate() {
        let settings = load(&[]).unwrap();
        assert_eq!(settings.identity.listen.port(), 50051);
        assert_eq!(settings.consent.listen.port(), 50052);
        assert_eq!(settings.approval.listen.port(), 50053);
        assert_eq!(settings.transfer.listen.port(), 50054);
        assert!(settings.database.url.is_none());
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let settings = load(&[
            ("PORTAL_IDENTITY__LISTEN", "127.0.0.1:6001"),
            ("PORTAL_SERVER__REQUEST_TIMEOUT_MS", "5000"),
            ("PORTAL_DEPLOYMENT__REGION", "uk"),
        ])
        .unwrap();
        assert_eq!(settings.identity.listen.port(), 6001);
        assert_eq!(settings.server.request_timeout_ms, 5000);
        assert_eq!(settings.deployment.region, "uk");
    }

    #[test]
    fn database_url_is_honoured_unless_the_portal_key_is_set() {
        let settings = load(&[("DATABASE_URL", "postgres://a@h/one")]).unwrap();
        let url = settings.database_url().unwrap().expose_secret().to_owned();
        assert_eq!(url, "postgres://a@h/one");

        let settings = load(&[
            ("DATABASE_URL", "postgres://a@h/one"),
            ("PORTAL_DATABASE__URL", "postgres://b@h/two"),
        ])
        .unwrap();
        let url = settings.database_url().unwrap().expose_secret().to_owned();
        assert_eq!(url, "postgres://b@h/two");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = load(&[("PORTAL_SERVER__MAX_MESSAGE_BYTES", "12")]).unwrap_err();
        assert!(
            err.to_string().contains("server.max_message_bytes"),
            "{err}"
        );

        let err = load(&[("PORTAL_IDENTITY__LISTEN", "not-an-address")]).unwrap_err();
        assert!(err.to_string().contains("identity.listen"), "{err}");

        let err = load(&[("PORTAL_DEPLOYMENT__COUNTRY", "Japan")]).unwrap_err();
        assert!(err.to_string().contains("deployment.country"), "{err}");
    }

    #[test]
    fn identity_keys_are_checked_and_never_quoted() {
        let err = load(&[("PORTAL_IDENTITY__LOOKUP_KEY", "hunter2-secret")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("identity.lookup_key"), "{text}");
        assert!(!text.contains("hunter2-secret"), "{text}");

        let err = load(&[("PORTAL_IDENTITY__CURRENT_KEY_ENCRYPTION_KEY", "kek-9")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("identity.current_key_encryption_key"),
            "{err}"
        );

        let err = load(&[("PORTAL_IDENTITY__ACCESS_TOKEN_TTL_SECS", "3600")]).unwrap_err();
        assert!(
            err.to_string().contains("identity.access_token_ttl_secs"),
            "{err}"
        );

        let mut settings = load(&[]).unwrap();
        let key = random_secret_key();
        settings
            .identity
            .use_keys("kek-1", &key, &random_secret_key());
        settings.validate().unwrap();
        assert!(!format!("{settings:?}").contains(&key));
    }

    #[test]
    fn a_bad_database_url_is_reported_without_its_value() {
        let err = load(&[("DATABASE_URL", "mysql://root:hunter2-secret@db/x")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("database.url"), "{text}");
        assert!(!text.contains("hunter2-secret"), "{text}");
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let settings = load(&[("DATABASE_URL", "postgres://u:hunter2-secret@h/db")]).unwrap();
        assert!(!format!("{settings:?}").contains("hunter2-secret"));
    }

    #[test]
    fn unrelated_portal_variables_are_not_taken_for_settings() {
        let settings = load(&[
            ("PORTAL_PORT", "tcp://10.0.0.1:80"),
            ("PORTAL_SERVICE_HOST", "10.0.0.1"),
        ]);
        assert!(settings.is_ok(), "{settings:?}");
    }

    #[test]
    fn unknown_keys_in_a_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portal.toml");
        std::fs::write(&path, "[server]\nrequest_timeout_msec = 5\n").unwrap();
        let err = Settings::load_from(Some(&path), HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("request_timeout_msec"), "{err}");
    }
}
