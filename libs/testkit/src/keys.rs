//! One signing key per test process, trusted by every service the harness starts, so tests
//! mint whatever token a case needs.

use std::sync::{Arc, OnceLock};

use portal_platform::auth::Kind;
use portal_platform::auth::keys::{TokenSigner, trust_one_key_for_everything};
use portal_platform::config::{Settings, random_secret_key};

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

/// `message` as a request carrying `token` (`authorization: Bearer ...`).
pub fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}
