//! Keys from configuration: the public keys this process trusts (each limited to the kinds of
//! token it may sign), and this process's own signing key. Rotation is by key id: trust the new
//! key, sign with it, and drop the old one once its tokens have expired.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use secrecy::ExposeSecret;

use super::token::{self, Claims, Expectations, KeyLookup, TokenError, TrustedKey};
use super::{Caller, Kind};
use crate::config::{ConfigError, Settings, SigningKeySettings, TrustedKeySettings};

/// Longest lifetime this process gives a token it mints (a week).
const MAX_MINT_TTL_SECS: i64 = 7 * 24 * 3600;

/// Most tokens kept verified in memory; beyond it expired entries are dropped first.
const CACHE_LIMIT: usize = 10_000;

/// The audience of every token for this deployment: tokens of one region's deployment are not
/// accepted by another's.
pub fn audience(settings: &Settings) -> String {
    format!("portal/{}", settings.deployment.region)
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The public keys this process trusts.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, TrustedKey>,
}

impl KeySet {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let mut keys = HashMap::new();
        for (i, trusted) in settings.auth.trusted_keys.iter().enumerate() {
            let key =
                parse_public_key(&trusted.public_key).ok_or_else(|| ConfigError::Invalid {
                    key: format!("auth.trusted_keys[{i}].public_key"),
                    problem: "must be a base64 Ed25519 public key (32 bytes)".to_owned(),
                })?;
            keys.insert(
                trusted.key_id.clone(),
                TrustedKey {
                    key,
                    kinds: trusted.kinds.clone(),
                    subjects: trusted.subjects.clone(),
                },
            );
        }
        Ok(Self { keys })
    }

    pub fn insert(&mut self, key_id: &str, key: VerifyingKey, kinds: &[Kind]) {
        let trusted = TrustedKey {
            key,
            kinds: kinds.to_vec(),
            subjects: Vec::new(),
        };
        self.keys.insert(key_id.to_owned(), trusted);
    }
}

impl KeyLookup for KeySet {
    fn key(&self, key_id: &str) -> Option<&TrustedKey> {
        self.keys.get(key_id)
    }
}

/// Verifies bearer tokens, each once: a verified token is remembered until it expires.
#[derive(Debug)]
pub struct Authenticator {
    keys: KeySet,
    expect: Expectations,
    cache: Mutex<HashMap<String, Caller>>,
    verifications: AtomicU64,
}

impl Authenticator {
    pub fn new(keys: KeySet, expect: Expectations) -> Self {
        Self {
            keys,
            expect,
            cache: Mutex::new(HashMap::new()),
            verifications: AtomicU64::new(0),
        }
    }

    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let expect = Expectations {
            audience: audience(settings),
            max_lifetime_secs: i64::try_from(settings.auth.max_token_lifetime_secs)
                .unwrap_or(i64::MAX),
            clock_skew_secs: 60,
        };
        Ok(Self::new(KeySet::from_settings(settings)?, expect))
    }

    /// Authenticates an `authorization` header value (`Bearer <token>`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, TokenError> {
        // The scheme is case-insensitive (RFC 7235).
        let token = authorization
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or(TokenError::Missing)?;
        let now = now();
        if let Some(caller) = self.cached(token, now) {
            return Ok(caller);
        }
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let caller = token::verify(token, &self.keys, &self.expect, now)?;
        self.remember(token, &caller, now);
        Ok(caller)
    }

    /// How many tokens were verified cryptographically (cache misses).
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    fn cached(&self, token: &str, now: i64) -> Option<Caller> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(token)
            .filter(|caller| caller.expires_at > now)
            .cloned()
    }

    fn remember(&self, token: &str, caller: &Caller, now: i64) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, c| c.expires_at > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), caller.clone());
    }
}

/// This process's signing key: it mints the service's own SERVICE tokens (and, in identity,
/// users' tokens).
pub struct TokenSigner {
    key_id: String,
    key: SigningKey,
    audience: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    pub fn new(key_id: &str, key: SigningKey, audience: String) -> Self {
        Self {
            key_id: key_id.to_owned(),
            key,
            audience,
        }
    }

    /// The configured signing key, if any.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, ConfigError> {
        let Some(configured) = &settings.auth.signing_key else {
            return Ok(None);
        };
        let key = parse_private_key(configured.private_key.expose_secret()).ok_or_else(|| {
            ConfigError::Invalid {
                key: "auth.signing_key.private_key".to_owned(),
                problem: "must be a base64 Ed25519 private key (32 bytes; value not shown)"
                    .to_owned(),
            }
        })?;
        Ok(Some(Self::new(&configured.key_id, key, audience(settings))))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// An Ed25519 signature over `message` (receipts, checkpoints), by this key.
    pub fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.key.sign(message).to_bytes()
    }

    /// A token for `subject` valid for `ttl_secs` from now (at most a week).
    pub fn mint(
        &self,
        kind: Kind,
        subject: &str,
        tenant: Option<&str>,
        roles: &[String],
        ttl_secs: i64,
    ) -> (String, i64) {
        let iat = now();
        let ttl_secs = ttl_secs.min(MAX_MINT_TTL_SECS);
        let claims = Claims {
            sub: subject.to_owned(),
            aud: self.audience.clone(),
            kind,
            tenant: tenant.map(str::to_owned),
            roles: roles.to_vec(),
            iat,
            exp: iat + ttl_secs,
        };
        (token::sign(&self.key_id, &self.key, &claims), claims.exp)
    }
}

/// Makes `settings` sign with `private_key` and trust it for every kind of token: development
/// and tests only, where one key stands in for identity's, each service's and the operators'.
pub fn trust_one_key_for_everything(
    settings: &mut Settings,
    key_id: &str,
    private_key: &str,
) -> Result<(), ConfigError> {
    let key = parse_private_key(private_key).ok_or_else(|| ConfigError::Invalid {
        key: "auth.signing_key.private_key".to_owned(),
        problem: "must be a base64 Ed25519 private key (32 bytes; value not shown)".to_owned(),
    })?;
    settings.auth.signing_key = Some(SigningKeySettings {
        key_id: key_id.to_owned(),
        private_key: secrecy::SecretString::from(private_key.to_owned()),
    });
    settings.auth.trusted_keys = vec![TrustedKeySettings {
        key_id: key_id.to_owned(),
        public_key: STANDARD.encode(key.verifying_key().to_bytes()),
        kinds: vec![Kind::User, Kind::Service, Kind::Operator, Kind::Auditor],
        subjects: Vec::new(),
    }];
    Ok(())
}

/// The keys that verify what this process signs (receipts, checkpoints): its signing key
/// first, then the retired ones, as (key id, public key).
pub fn published_keys(settings: &Settings) -> Result<Vec<(String, VerifyingKey)>, ConfigError> {
    let mut keys = Vec::new();
    if let Some(signer) = TokenSigner::from_settings(settings)? {
        keys.push((signer.key_id.clone(), signer.verifying_key()));
    }
    for (i, retired) in settings.auth.retired_signing_keys.iter().enumerate() {
        let key = parse_public_key(&retired.public_key).ok_or_else(|| ConfigError::Invalid {
            key: format!("auth.retired_signing_keys[{i}].public_key"),
            problem: "must be a base64 Ed25519 public key (32 bytes)".to_owned(),
        })?;
        keys.push((retired.key_id.clone(), key));
    }
    Ok(keys)
}

/// What a service's ListSigningKeys serves: [`published_keys`] as raw 32-byte keys.
#[derive(Debug, Clone, Default)]
pub struct PublishedKeys(Vec<(String, Vec<u8>)>);

impl PublishedKeys {
    /// Read at start-up; `Settings::validate` has already checked the keys.
    pub fn from_settings(settings: &Settings) -> Self {
        Self(
            published_keys(settings)
                .unwrap_or_default()
                .into_iter()
                .map(|(key_id, key)| (key_id, key.to_bytes().to_vec()))
                .collect(),
        )
    }

    /// The page a ListSigningKeys request asks for, as the service's own `SigningKey` message
    /// `K`: every package declares it with the same fields and numbers (`docs/contracts.md`),
    /// so it is built here once and decoded as `K`. Every key fits one page, so no token is
    /// ever issued and any token given is not ours.
    pub fn page<K: prost::Message + Default>(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<Vec<K>, crate::ApiError> {
        crate::paging::page_size(page_size)?;
        crate::paging::decode_token::<i64>(page_token, "signing-keys")?;
        self.0
            .iter()
            .map(|(key_id, public_key)| {
                let shared = SigningKeyShape {
                    key_id: key_id.clone(),
                    algorithm: "Ed25519".to_owned(),
                    public_key: public_key.clone(),
                };
                K::decode(prost::Message::encode_to_vec(&shared).as_slice()).map_err(|_| {
                    crate::ApiError::internal("a SigningKey does not have the shared shape")
                })
            })
            .collect()
    }
}

/// The fields every package's `SigningKey` shares (key id, algorithm, raw public key).
#[derive(Clone, PartialEq, prost::Message)]
struct SigningKeyShape {
    #[prost(string, tag = "1")]
    key_id: String,
    #[prost(string, tag = "2")]
    algorithm: String,
    #[prost(bytes = "vec", tag = "3")]
    public_key: Vec<u8>,
}

/// A new random Ed25519 key: (private key, public key), both base64.
pub fn generate_key() -> (String, String) {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    (
        STANDARD.encode(key.to_bytes()),
        STANDARD.encode(key.verifying_key().to_bytes()),
    )
}

pub fn parse_private_key(base64: &str) -> Option<SigningKey> {
    let bytes: [u8; 32] = STANDARD.decode(base64.trim()).ok()?.try_into().ok()?;
    Some(SigningKey::from_bytes(&bytes))
}

pub fn parse_public_key(base64: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = STANDARD.decode(base64.trim()).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kinds: &[Kind]) -> (TokenSigner, KeySet, String) {
        let (private, public) = generate_key();
        let key_id = format!("k-{}", &public[..8]);
        let signer = TokenSigner::new(
            &key_id,
            parse_private_key(&private).unwrap(),
            "portal/jp".to_owned(),
        );
        let mut keys = KeySet::default();
        keys.insert(&key_id, parse_public_key(&public).unwrap(), kinds);
        (signer, keys, key_id)
    }

    fn expectations() -> Expectations {
        Expectations {
            audience: "portal/jp".to_owned(),
            max_lifetime_secs: 3600,
            clock_skew_secs: 60,
        }
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn a_verified_token_names_its_caller() {
        let (signer, keys, _) = key(&[Kind::User]);
        let roles = vec!["MEMBER".to_owned()];
        let (token, exp) = signer.mint(
            Kind::User,
            "tenants/t/users/u",
            Some("tenants/t"),
            &roles,
            300,
        );
        let auth = Authenticator::new(keys, expectations());
        let caller = auth.authenticate(Some(&bearer(&token))).unwrap();
        assert_eq!(caller.kind, Kind::User);
        assert_eq!(caller.subject, "tenants/t/users/u");
        assert_eq!(caller.tenant.as_deref(), Some("tenants/t"));
        assert!(caller.has_role("MEMBER"));
        assert_eq!(caller.expires_at, exp);
        assert!(
            !format!("{caller:?}").contains(&token),
            "the token is never printed"
        );
    }

    #[test]
    fn a_token_is_verified_once_then_remembered() {
        let (signer, keys, _) = key(&[Kind::Service]);
        let (token, _) = signer.mint(Kind::Service, "services/approval", None, &[], 300);
        let auth = Authenticator::new(keys, expectations());
        for _ in 0..5 {
            auth.authenticate(Some(&bearer(&token))).unwrap();
        }
        assert_eq!(auth.verifications(), 1);
    }

    #[test]
    fn each_bad_token_is_refused_with_its_reason() {
        let (signer, keys, _) = key(&[Kind::User, Kind::Operator]);
        let auth = Authenticator::new(keys, expectations());
        let refused = |header: Option<&str>| auth.authenticate(header).unwrap_err();

        assert_eq!(refused(None), TokenError::Missing);
        assert_eq!(refused(Some("Basic abc")), TokenError::Missing);
        assert_eq!(refused(Some("Bearer not.a.token")), TokenError::Malformed);

        let (expired, _) = signer.mint(Kind::User, "tenants/t/users/u", Some("tenants/t"), &[], -5);
        assert_eq!(refused(Some(&bearer(&expired))), TokenError::Expired);
        assert_eq!(TokenError::Expired.reason(), "TOKEN_EXPIRED");

        // Claims changed after signing: the signature of the original no longer matches.
        let (good, _) = signer.mint(Kind::User, "tenants/t/users/u", Some("tenants/t"), &[], 300);
        let (other, _) = signer.mint(
            Kind::User,
            "tenants/t/users/admin",
            Some("tenants/t"),
            &[],
            300,
        );
        let good_signature = &good[good.rfind('.').unwrap()..];
        let forged = format!("{}{good_signature}", &other[..other.rfind('.').unwrap()]);
        assert_eq!(refused(Some(&bearer(&forged))), TokenError::BadSignature);

        let (stranger, _, _) = key(&[Kind::User]);
        let (untrusted, _) =
            stranger.mint(Kind::User, "tenants/t/users/u", Some("tenants/t"), &[], 300);
        assert_eq!(refused(Some(&bearer(&untrusted))), TokenError::UnknownKey);

        let us = TokenSigner::new(
            signer.key_id(),
            SigningKey::from_bytes(&signer.key.to_bytes()),
            "portal/us".to_owned(),
        );
        let (elsewhere, _) = us.mint(Kind::User, "tenants/t/users/u", Some("tenants/t"), &[], 300);
        assert_eq!(
            refused(Some(&bearer(&elsewhere))),
            TokenError::WrongAudience
        );
        assert_eq!(TokenError::WrongAudience.reason(), "TOKEN_WRONG_AUDIENCE");

        let (forever, _) = signer.mint(
            Kind::User,
            "tenants/t/users/u",
            Some("tenants/t"),
            &[],
            7200,
        );
        assert_eq!(refused(Some(&bearer(&forever))), TokenError::TooLongLived);
    }

    #[test]
    fn a_key_signs_only_the_kinds_it_is_trusted_for() {
        let (identity, keys, _) = key(&[Kind::User]);
        let auth = Authenticator::new(keys, expectations());
        let (operator, _) = identity.mint(Kind::Operator, "operators/mallory", None, &[], 300);
        assert_eq!(
            auth.authenticate(Some(&bearer(&operator))).unwrap_err(),
            TokenError::KindNotAllowed
        );
    }

    #[test]
    fn tokens_of_a_rotated_out_key_verify_until_they_expire() {
        let (old, mut keys, _) = key(&[Kind::User]);
        let (new, new_keys, new_id) = key(&[Kind::User]);
        keys.insert(&new_id, new.verifying_key(), &[Kind::User]);
        drop(new_keys);
        let auth = Authenticator::new(keys, expectations());

        let (before_rotation, _) =
            old.mint(Kind::User, "tenants/t/users/u", Some("tenants/t"), &[], 300);
        let (after_rotation, _) =
            new.mint(Kind::User, "tenants/t/users/u", Some("tenants/t"), &[], 300);
        let (expired_old, _) =
            old.mint(Kind::User, "tenants/t/users/u", Some("tenants/t"), &[], -1);
        assert!(auth.authenticate(Some(&bearer(&before_rotation))).is_ok());
        assert!(auth.authenticate(Some(&bearer(&after_rotation))).is_ok());
        assert_eq!(
            auth.authenticate(Some(&bearer(&expired_old))).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn a_remembered_token_is_refused_once_it_expires() {
        let (signer, keys, _) = key(&[Kind::User]);
        let auth = Authenticator::new(keys, expectations());
        let (token, _) = signer.mint(Kind::User, "tenants/t/users/u", Some("tenants/t"), &[], 300);
        let caller = auth.authenticate(Some(&bearer(&token))).unwrap();
        assert!(auth.cached(&token, caller.expires_at - 1).is_some());
        assert!(auth.cached(&token, caller.expires_at).is_none());
    }

    #[test]
    fn a_service_key_speaks_only_for_the_subjects_it_is_bound_to() {
        let (approval, mut keys, key_id) = key(&[Kind::Service]);
        keys.keys.get_mut(&key_id).unwrap().subjects = vec!["services/approval".to_owned()];
        let auth = Authenticator::new(keys, expectations());
        let (own, _) = approval.mint(Kind::Service, "services/approval", None, &[], 300);
        let (impostor, _) = approval.mint(Kind::Service, "services/identity", None, &[], 300);
        assert!(auth.authenticate(Some(&bearer(&own))).is_ok());
        assert_eq!(
            auth.authenticate(Some(&bearer(&impostor))).unwrap_err(),
            TokenError::KindNotAllowed
        );
    }

    #[test]
    fn tokens_whose_claims_do_not_fit_their_kind_are_refused() {
        let (signer, keys, _) = key(&[Kind::User, Kind::Service]);
        let auth = Authenticator::new(keys, expectations());
        let (no_tenant, _) = signer.mint(Kind::User, "tenants/t/users/u", None, &[], 300);
        let (not_a_service, _) = signer.mint(Kind::Service, "approval", None, &[], 300);
        for token in [no_tenant, not_a_service] {
            assert_eq!(
                auth.authenticate(Some(&bearer(&token))).unwrap_err(),
                TokenError::Malformed
            );
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let (signer, keys, _) = key(&[Kind::Operator]);
        let auth = Authenticator::new(keys, expectations());
        let (token, _) = signer.mint(Kind::Operator, "operators/o", None, &[], 300);
        assert!(auth.authenticate(Some(&format!("bearer {token}"))).is_ok());
        assert!(auth.authenticate(Some(&format!("BEARER {token}"))).is_ok());
    }

    #[test]
    fn extreme_times_in_a_signed_token_are_refused_not_overflowed() {
        let (signer, keys, key_id) = key(&[Kind::Operator]);
        let auth = Authenticator::new(keys, expectations());
        let claims = Claims {
            sub: "operators/o".to_owned(),
            aud: "portal/jp".to_owned(),
            kind: Kind::Operator,
            tenant: None,
            roles: Vec::new(),
            iat: i64::MIN,
            exp: i64::MAX,
        };
        let token = token::sign(&key_id, &signer.key, &claims);
        assert_eq!(
            auth.authenticate(Some(&bearer(&token))).unwrap_err(),
            TokenError::TooLongLived
        );
        // Minting clamps an absurd lifetime instead of overflowing.
        let (_, exp) = signer.mint(Kind::Operator, "operators/o", None, &[], i64::MAX);
        assert!(exp - now() <= MAX_MINT_TTL_SECS);
    }
}
