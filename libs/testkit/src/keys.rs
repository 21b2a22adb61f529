//! One signing key per test process, trusted by every service the harness starts, so tests
//! mint whatever token a case needs.

use std::sync::{Arc, OnceLock};

use portal_platform::auth::Kind;
use portal_platform::auth::keys::{TokenSigner, trust_one_key_for_everything};
use portal_platform::config::{Settings, random_secret_key};
use secrecy::ExposeSecret;

/// Key id of the harness's key.
pub const TEST_KEY_ID: &str = "test-key";

/// Region the harness's services run as (tokens are for `portal/<region>`).
pub const TEST_REGION: &str = "jp";

static KEY: OnceLock<(String, ed25519_dalek::SigningKey)> = OnceLock::new();

/// The harness's key: base64 (for configuration) and parsed.
fn key() -> &'static (String, ed25519_dalek::SigningKey) {
    KEY.get_or_init(|| {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let encoded = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(key.to_bytes())
        };
        (encoded, key)
    })
}

/// A signer with the harness's key for `audience`.
fn signer_for(audience: &str) -> TokenSigner {
    TokenSigner::new(TEST_KEY_ID, key().1.clone(), audience.to_owned())
}

/// The harness's signer.
pub fn signer() -> Arc<TokenSigner> {
    Arc::new(signer_for(&format!("portal/{TEST_REGION}")))
}

/// A bearer token of `kind` for `subject`, valid for ten minutes.
pub fn token(kind: Kind, subject: &str, tenant: Option<&str>, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    signer().mint(kind, subject, tenant, &roles, 600).0
}

/// An OPERATOR token signed by the trusted key but for another deployment's audience.
pub fn token_for_audience(audience: &str) -> String {
    signer_for(audience)
        .mint(Kind::Operator, "operators/test", None, &[], 600)
        .0
}

/// An OPERATOR token.
pub fn operator_token() -> String {
    token(Kind::Operator, "operators/test", None, &[])
}

/// A key the services do not trust, under the trusted key's id: a forgery.
pub fn stranger() -> TokenSigner {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    TokenSigner::new(TEST_KEY_ID, key, format!("portal/{TEST_REGION}"))
}

/// Makes `settings` trust the harness's key for every kind and sign with it, gives identity
/// this process's PI keys (the same for every service the test starts, so a restarted
/// identity still opens what it sealed) and a cheap Argon2 cost.
pub fn configure(settings: &mut Settings) -> anyhow::Result<()> {
    static PI_KEYS: OnceLock<(String, String)> = OnceLock::new();
    let (kek, lookup) = PI_KEYS.get_or_init(|| (random_secret_key(), random_secret_key()));
    settings.identity.use_keys("test-kek", kek, lookup);
    settings.identity.argon2.memory_kib = 64;
    settings.identity.argon2.iterations = 1;
    Ok(trust_one_key_for_everything(
        settings,
        TEST_KEY_ID,
        &key().0,
    )?)
}

/// What [`configure`] sets, as a TOML file for a service running as its own process
/// (`<service> --config FILE`): the harness's key trusted for every kind and signed with,
/// identity's PI keys (the same for every process this test binary starts, so a restarted
/// identity opens what an earlier one sealed) and the cheap Argon2 cost. Lists of keys cannot
/// be given as environment variables, hence a file.
pub fn config_toml() -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut settings = Settings::load_from(None, std::collections::HashMap::new())?;
    configure(&mut settings)?;
    let mut toml = String::from("[auth]\n");
    if let Some(signing) = &settings.auth.signing_key {
        writeln!(
            toml,
            "signing_key = {{ key_id = {}, private_key = {} }}",
            toml_string(&signing.key_id),
            toml_string(signing.private_key.expose_secret())
        )?;
    }
    for trusted in &settings.auth.trusted_keys {
        let kinds: Vec<String> = trusted
            .kinds
            .iter()
            .map(|kind| toml_string(&format!("{kind:?}").to_ascii_uppercase()))
            .collect();
        writeln!(toml, "\n[[auth.trusted_keys]]")?;
        writeln!(toml, "key_id = {}", toml_string(&trusted.key_id))?;
        writeln!(toml, "public_key = {}", toml_string(&trusted.public_key))?;
        writeln!(toml, "kinds = [{}]", kinds.join(", "))?;
    }
    let identity = &settings.identity;
    writeln!(toml, "\n[identity]")?;
    if let Some(current) = &identity.current_key_encryption_key {
        writeln!(
            toml,
            "current_key_encryption_key = {}",
            toml_string(current)
        )?;
    }
    let keks: Vec<String> = identity
        .key_encryption_keys
        .iter()
        .map(|kek| {
            format!(
                "{{ key_id = {}, key = {} }}",
                toml_string(&kek.key_id),
                toml_string(kek.key.expose_secret())
            )
        })
        .collect();
    writeln!(toml, "key_encryption_keys = [{}]", keks.join(", "))?;
    if let Some(lookup) = &identity.lookup_key {
        writeln!(toml, "lookup_key = {}", toml_string(lookup.expose_secret()))?;
    }
    let argon2 = &identity.argon2;
    writeln!(toml, "\n[identity.argon2]")?;
    writeln!(toml, "memory_kib = {}", argon2.memory_kib)?;
    writeln!(toml, "iterations = {}", argon2.iterations)?;
    writeln!(toml, "parallelism = {}", argon2.parallelism)?;
    Ok(toml)
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// `message` as a request carrying `token` (`authorization: Bearer ...`).
pub fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}
