//! The key hierarchy that protects PI and credentials (`docs/identity.md`):
//!
//! - each user's PI is sealed with AES-256-GCM under the user's own random data key, with the
//!   user's id as associated data (a ciphertext moved to another row does not open);
//! - the data key is stored wrapped (AES-256-GCM) by a key-encryption key (KEK) from
//!   configuration, whose id is stored with it so KEKs can be rotated;
//! - emails are found by an HMAC-SHA256 of the normalised address under the lookup key, and
//!   activation secrets are derived from the lookup key, so the database holds neither;
//! - passwords are Argon2id hashes; an unknown email costs the same verification as a known one.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use portal_platform::ApiError;
use portal_platform::config::{Argon2Settings, IdentitySettings, secret_key_bytes};
use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

/// The three PI fields of Art. 2, as sealed together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pi {
    pub display_name: String,
    pub email: String,
    pub phone_number: String,
}

/// A user's PI sealed under a fresh data key, and that key wrapped by the current KEK.
pub struct Sealed {
    pub pi: Vec<u8>,
    pub data_key: Vec<u8>,
    pub kek_id: String,
}

/// The configured keys and password cost.
pub struct Keys {
    keks: HashMap<String, Zeroizing<[u8; 32]>>,
    current_kek: String,
    lookup_key: Zeroizing<[u8; 32]>,
    argon2: Argon2<'static>,
    /// Verified against when the email is unknown, so that case does the same work.
    dummy_hash: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("current_kek", &self.current_kek)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// The keys of `[identity]`; an error names the missing or malformed key.
    pub fn from_settings(settings: &IdentitySettings) -> anyhow::Result<Self> {
        let current_kek = settings.current_key_encryption_key.clone().context(
            "configuration key `identity.current_key_encryption_key`: is required to serve identity",
        )?;
        let mut keks = HashMap::new();
        for kek in &settings.key_encryption_keys {
            let bytes = secret_key_bytes("identity.key_encryption_keys.key", &kek.key)?;
            keks.insert(kek.key_id.clone(), Zeroizing::new(bytes));
        }
        anyhow::ensure!(
            keks.contains_key(&current_kek),
            "configuration key `identity.current_key_encryption_key`: must name one of identity.key_encryption_keys"
        );
        let lookup = settings
            .lookup_key
            .as_ref()
            .context("configuration key `identity.lookup_key`: is required to serve identity")?;
        let lookup_key = Zeroizing::new(secret_key_bytes("identity.lookup_key", lookup)?);
        let argon2 = argon2(&settings.argon2)?;
        let dummy_hash = hash_with(&argon2, "a password that no account has")?;
        Ok(Self {
            keks,
            current_kek,
            lookup_key,
            argon2,
            dummy_hash,
        })
    }

    /// Seals `pi` for user `id` under a new data key.
    pub fn seal_new(&self, id: Uuid, pi: &Pi) -> Result<Sealed, ApiError> {
        let mut data_key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(data_key.as_mut());
        let sealed = self.seal_with(&data_key, id, pi)?;
        let kek = self.kek(&self.current_kek)?;
        Ok(Sealed {
            pi: sealed,
            data_key: encrypt(kek, data_key.as_ref(), id.as_bytes())?,
            kek_id: self.current_kek.clone(),
        })
    }

    /// Seals new `pi` under the user's existing data key (an update).
    pub fn reseal(
        &self,
        id: Uuid,
        data_key: &[u8],
        kek_id: &str,
        pi: &Pi,
    ) -> Result<Vec<u8>, ApiError> {
        let key = self.unwrap_key(id, data_key, kek_id)?;
        self.seal_with(&key, id, pi)
    }

    /// Opens the PI of user `id`.
    pub fn open(&self, id: Uuid, pi: &[u8], data_key: &[u8], kek_id: &str) -> Result<Pi, ApiError> {
        let key = self.unwrap_key(id, data_key, kek_id)?;
        let plain = Zeroizing::new(decrypt(&key, pi, id.as_bytes())?);
        serde_json::from_slice(&plain)
            .map_err(|_| ApiError::internal("a user's PI does not decode"))
    }

    /// The keyed lookup hash of a normalised email.
    pub fn email_hash(&self, normalised_email: &str) -> Vec<u8> {
        self.mac(b"email\0", normalised_email.as_bytes())
    }

    /// A keyed hash of a registration request, to recognise its retries.
    pub fn request_hash(&self, encoded_request: &[u8]) -> Vec<u8> {
        self.mac(b"registration\0", encoded_request)
    }

    /// The activation secret of user `id` for `nonce`: derived, so a retried registration can
    /// return it again while only its hash is stored.
    pub fn activation_secret(&self, id: Uuid, nonce: &[u8]) -> String {
        let mut input = id.as_bytes().to_vec();
        input.extend_from_slice(nonce);
        URL_SAFE_NO_PAD.encode(self.mac(b"activation\0", &input))
    }

    /// Argon2id hash of a (normalised) password, in PHC string form.
    pub fn hash_password(&self, password: &str) -> Result<String, ApiError> {
        hash_with(&self.argon2, password)
            .map_err(|_| ApiError::internal("a password could not be hashed"))
    }

    /// Whether `password` matches `stored`; with `None` (unknown email) it verifies against a
    /// dummy hash and answers false, taking the same time.
    pub fn verify_password(&self, password: &str, stored: Option<&str>) -> bool {
        let hash = stored.unwrap_or(&self.dummy_hash);
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let matches = self
            .argon2
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        matches && stored.is_some()
    }

    fn seal_with(&self, key: &[u8; 32], id: Uuid, pi: &Pi) -> Result<Vec<u8>, ApiError> {
        let plain = Zeroizing::new(
            serde_json::to_vec(pi).map_err(|_| ApiError::internal("PI does not encode"))?,
        );
        encrypt(key, &plain, id.as_bytes())
    }

    fn unwrap_key(
        &self,
        id: Uuid,
        data_key: &[u8],
        kek_id: &str,
    ) -> Result<Zeroizing<[u8; 32]>, ApiError> {
        let plain = Zeroizing::new(decrypt(self.kek(kek_id)?, data_key, id.as_bytes())?);
        let key = <[u8; 32]>::try_from(plain.as_slice())
            .map_err(|_| ApiError::internal("a wrapped data key has the wrong length"))?;
        Ok(Zeroizing::new(key))
    }

    fn kek(&self, kek_id: &str) -> Result<&[u8; 32], ApiError> {
        self.keks.get(kek_id).map(|k| &**k).ok_or_else(|| {
            tracing::error!(
                kek_id,
                "a data key is wrapped by a KEK that is not configured"
            );
            ApiError::internal("a key-encryption key is not configured")
        })
    }

    fn mac(&self, label: &[u8], message: &[u8]) -> Vec<u8> {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.lookup_key.as_ref()) else {
            // HMAC takes keys of any length; this branch cannot be reached.
            return Sha256::digest(message).to_vec();
        };
        mac.update(label);
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }
}

/// SHA-256 of an activation secret: 256 random bits need no key or slow hash.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A fresh random nonce for deriving an activation secret.
pub fn activation_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; 16];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

fn argon2(settings: &Argon2Settings) -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(
        settings.memory_kib,
        settings.iterations,
        settings.parallelism,
        None,
    )
    .map_err(|e| anyhow::anyhow!("configuration key `identity.argon2`: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_with(argon2: &Argon2<'static>, password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

/// `nonce || ciphertext` of `plain` under `key`, bound to `aad`.
fn encrypt(key: &[u8; 32], plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, ApiError> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: plain, aad })
        .map_err(|_| ApiError::internal("encryption failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn decrypt(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, ApiError> {
    if sealed.len() < NONCE_LEN {
        return Err(ApiError::internal("a ciphertext is truncated"));
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = <[u8; NONCE_LEN]>::try_from(nonce)
        .map_err(|_| ApiError::internal("a ciphertext is truncated"))?;
    Aes256Gcm::new(key.into())
        .decrypt(&Nonce::from(nonce), Payload { msg: body, aad })
        .map_err(|_| ApiError::internal("a ciphertext does not open under its key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portal_platform::config::SecretKeySettings;

    fn keys() -> Keys {
        Keys::from_settings(&settings()).unwrap()
    }

    fn settings() -> IdentitySettings {
        let key = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
        IdentitySettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            endpoint: None,
            access_token_ttl_secs: 900,
            activation_ttl_secs: 3600,
            sign_in_max_failures: 5,
            sign_in_lockout_secs: 60,
            backup_retention_days: 35,
            argon2: Argon2Settings {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            key_encryption_keys: vec![
                SecretKeySettings {
                    key_id: "old".into(),
                    key: key(1).into(),
                },
                SecretKeySettings {
                    key_id: "new".into(),
                    key: key(2).into(),
                },
            ],
            current_key_encryption_key: Some("new".into()),
            lookup_key: Some(key(3).into()),
        }
    }

    fn pi() -> Pi {
        Pi {
            display_name: "Example User".into(),
            email: "user@example.com".into(),
            phone_number: "+81300000000".into(),
        }
    }

    #[test]
    fn identity_does_not_serve_without_its_keys_and_says_which() {
        let mut settings = settings();
        settings.lookup_key = None;
        let err = Keys::from_settings(&settings).unwrap_err().to_string();
        assert!(err.contains("identity.lookup_key"), "{err}");
        let mut settings = self::settings();
        settings.current_key_encryption_key = None;
        let err = Keys::from_settings(&settings).unwrap_err().to_string();
        assert!(err.contains("identity.current_key_encryption_key"), "{err}");
    }

    #[test]
    fn sealed_pi_opens_only_for_its_own_user() {
        let keys = keys();
        let id = Uuid::now_v7();
        let sealed = keys.seal_new(id, &pi()).unwrap();
        assert_eq!(sealed.kek_id, "new");
        assert_eq!(
            keys.open(id, &sealed.pi, &sealed.data_key, "new").unwrap(),
            pi()
        );
        assert!(
            keys.open(Uuid::now_v7(), &sealed.pi, &sealed.data_key, "new")
                .is_err()
        );
        let text = String::from_utf8_lossy(&sealed.pi);
        assert!(!text.contains("user@example.com"));
    }

    #[test]
    fn a_data_key_wrapped_by_an_older_kek_still_opens_after_rotation() {
        let mut before = settings();
        before.current_key_encryption_key = Some("old".into());
        let before = Keys::from_settings(&before).unwrap();
        let id = Uuid::now_v7();
        let sealed = before.seal_new(id, &pi()).unwrap();
        assert_eq!(sealed.kek_id, "old");
        // Rotated: "new" wraps new keys, "old" still unwraps what it wrapped.
        let after = keys();
        assert_eq!(
            after.open(id, &sealed.pi, &sealed.data_key, "old").unwrap(),
            pi()
        );
        assert!(after.open(id, &sealed.pi, &sealed.data_key, "new").is_err());
        let updated = after
            .reseal(id, &sealed.data_key, &sealed.kek_id, &Pi::default())
            .unwrap();
        assert_eq!(
            after.open(id, &updated, &sealed.data_key, "old").unwrap(),
            Pi::default()
        );
    }

    #[test]
    fn passwords_verify_and_unknown_accounts_never_match() {
        let keys = keys();
        let hash = keys.hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(keys.verify_password("correct horse battery", Some(&hash)));
        assert!(!keys.verify_password("wrong horse battery", Some(&hash)));
        assert!(!keys.verify_password("a password that no account has", None));
    }

    #[test]
    fn activation_secrets_are_43_characters_and_reproducible() {
        let keys = keys();
        let id = Uuid::now_v7();
        let nonce = activation_nonce();
        let secret = keys.activation_secret(id, &nonce);
        assert_eq!(secret.len(), 43);
        assert_eq!(secret, keys.activation_secret(id, &nonce));
        assert_ne!(secret, keys.activation_secret(id, &activation_nonce()));
    }
}
