//! Development keys: when no keys are configured, the suite makes one Ed25519 key in its data
//! folder (kept between runs), trusts it for every kind of token and signs with it, and
//! `portal-suite mint-token` mints tokens from the same key for grpcurl debugging. Production
//! configures real keys (`docs/auth.md`), and then none of this applies.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use portal_platform::auth::Kind;
use portal_platform::auth::keys::{
    TokenSigner, audience, generate_key, parse_private_key, trust_one_key_for_everything,
};
use portal_platform::config::{Settings, random_secret_key};

pub const KEY_ID: &str = "portal-suite-dev";
const KEY_FILE: &str = "dev-signing-key";
const OPERATOR_TOKEN_FILE: &str = "operator.token";
const PI_KEK_FILE: &str = "dev-pi-kek";
const PI_LOOKUP_FILE: &str = "dev-pi-lookup-key";
/// The development OPERATOR token lasts a working day.
const OPERATOR_TOKEN_TTL_SECS: i64 = 12 * 3600;

/// Whether the configuration names no keys at all, so development keys are wanted.
pub fn wanted(settings: &Settings) -> bool {
    settings.auth.signing_key.is_none() && settings.auth.trusted_keys.is_empty()
}

/// Loads (or makes) the development key and configures `settings` to trust and sign with it.
pub fn install(settings: &mut Settings, data_dir: &Path) -> anyhow::Result<()> {
    let private_key = load_or_create(data_dir, KEY_FILE, || generate_key().0)?;
    trust_one_key_for_everything(settings, KEY_ID, &private_key)?;
    Ok(())
}

/// Development PI keys for identity (a KEK and the lookup key), kept in the data folder so
/// what identity sealed in earlier runs still opens. Only when none are configured.
pub fn install_pi_keys(settings: &mut Settings, data_dir: &Path) -> anyhow::Result<()> {
    if !settings.identity.lacks_keys() {
        return Ok(());
    }
    let kek = load_or_create(data_dir, PI_KEK_FILE, random_secret_key)?;
    let lookup = load_or_create(data_dir, PI_LOOKUP_FILE, random_secret_key)?;
    settings
        .identity
        .use_keys("portal-suite-dev-kek", &kek, &lookup);
    Ok(())
}

/// Writes a fresh OPERATOR token next to the key and returns the file's path.
pub fn write_operator_token(settings: &Settings, data_dir: &Path) -> anyhow::Result<PathBuf> {
    let private_key = load_or_create(data_dir, KEY_FILE, || generate_key().0)?;
    let (token, _) = signer(settings, KEY_ID, &private_key)?.mint(
        Kind::Operator,
        "operators/portal-suite",
        None,
        &[],
        OPERATOR_TOKEN_TTL_SECS,
    );
    let path = data_dir.join(OPERATOR_TOKEN_FILE);
    write_private(&path, &token)?;
    Ok(path)
}

/// What `portal-suite mint-token` asks for.
#[derive(Debug)]
pub struct Mint<'a> {
    /// The key id the token names.
    pub key_id: &'a str,
    pub kind: Kind,
    pub subject: &'a str,
    pub tenant: Option<&'a str>,
    pub roles: &'a [String],
    pub ttl_secs: i64,
}

/// Mints a token from the key in `data_dir` (for `portal-suite mint-token`).
pub fn mint(settings: &Settings, data_dir: &Path, token: &Mint<'_>) -> anyhow::Result<String> {
    let path = data_dir.join(KEY_FILE);
    let private_key = fs::read_to_string(&path).with_context(|| {
        format!(
            "no development key at {} (start `portal-suite` once first)",
            path.display()
        )
    })?;
    let signer = signer(settings, token.key_id, private_key.trim())?;
    Ok(signer
        .mint(
            token.kind,
            token.subject,
            token.tenant,
            token.roles,
            token.ttl_secs,
        )
        .0)
}

fn signer(settings: &Settings, key_id: &str, private_key: &str) -> anyhow::Result<TokenSigner> {
    let key = parse_private_key(private_key).context("the development key file is damaged")?;
    Ok(TokenSigner::new(key_id, key, audience(settings)))
}

/// The secret in `data_dir/name`, made with `make` (and kept) the first time.
fn load_or_create(
    data_dir: &Path,
    name: &str,
    make: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    let path = data_dir.join(name);
    if let Ok(existing) = fs::read_to_string(&path) {
        return Ok(existing.trim().to_owned());
    }
    fs::create_dir_all(data_dir)?;
    let secret = make();
    write_private(&path, &secret)?;
    Ok(secret)
}

/// Secrets are written readable by their owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{contents}")?;
    Ok(())
}
