//! The token format: a compact JWS, `base64url(header).base64url(claims).base64url(signature)`,
//! with `alg` EdDSA (Ed25519) and a `kid` naming the key. A standard shape, so any JWT tool can
//! read one while debugging.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use serde::{Deserialize, Serialize};

use super::{Caller, Kind};

/// Claims a portal token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// The deployment the token is for (`portal/<region>`).
    pub aud: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    kid: String,
    typ: String,
}

/// Why a token was refused. Each becomes `UNAUTHENTICATED` with its own `ErrorInfo` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token is signed by a key this service does not trust")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's key may not sign tokens of this kind or subject")]
    KindNotAllowed,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token lives longer than this service accepts")]
    TooLongLived,
    #[error("the token is for another audience")]
    WrongAudience,
}

impl TokenError {
    /// The stable `ErrorInfo` reason callers can match on.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "TOKEN_MISSING",
            Self::Expired => "TOKEN_EXPIRED",
            Self::WrongAudience => "TOKEN_WRONG_AUDIENCE",
            _ => "TOKEN_INVALID",
        }
    }
}

/// Signs `claims` with `key`, naming `key_id` in the header.
pub fn sign(key_id: &str, key: &SigningKey, claims: &Claims) -> String {
    let header = Header {
        alg: "EdDSA".to_owned(),
        kid: key_id.to_owned(),
        typ: "JWT".to_owned(),
    };
    // Serialising these plain structs to JSON cannot fail.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let claims = serde_json::to_vec(claims).unwrap_or_default();
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = key.sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// What a trusted key may sign.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key: ed25519_dalek::VerifyingKey,
    pub kinds: Vec<Kind>,
    /// Empty: any subject.
    pub subjects: Vec<String>,
}

/// What verification needs to know about the key a token names.
pub trait KeyLookup {
    fn key(&self, key_id: &str) -> Option<&TrustedKey>;
}

/// The rules a token must meet besides its signature.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub audience: String,
    /// Longest `exp - iat` accepted.
    pub max_lifetime_secs: i64,
    /// Tolerated clock difference for `iat`.
    pub clock_skew_secs: i64,
}

/// Verifies `token` completely and returns who it speaks for.
pub fn verify(
    token: &str,
    keys: &impl KeyLookup,
    expect: &Expectations,
    now: i64,
) -> Result<Caller, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Header = decode_json(header)?;
    if header.alg != "EdDSA" {
        return Err(TokenError::Malformed);
    }
    let trusted = keys.key(&header.kid).ok_or(TokenError::UnknownKey)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or(TokenError::Malformed)?;
    let signing_input = &token[..token.rfind('.').ok_or(TokenError::Malformed)?];
    trusted
        .key
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| TokenError::BadSignature)?;

    let claims: Claims = decode_json(claims)?;
    if !trusted.kinds.contains(&claims.kind) {
        return Err(TokenError::KindNotAllowed);
    }
    if !trusted.subjects.is_empty() && !trusted.subjects.contains(&claims.sub) {
        return Err(TokenError::KindNotAllowed);
    }
    // Users always belong to a tenant; services are always `services/<name>`.
    let well_formed = match claims.kind {
        Kind::User => claims.tenant.as_deref().is_some_and(|t| !t.is_empty()),
        Kind::Service => claims
            .sub
            .strip_prefix("services/")
            .is_some_and(|n| !n.is_empty()),
        Kind::Operator | Kind::Auditor => !claims.sub.is_empty(),
    };
    if !well_formed {
        return Err(TokenError::Malformed);
    }
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    if claims.iat > now.saturating_add(expect.clock_skew_secs) {
        return Err(TokenError::NotYetValid);
    }
    match claims.exp.checked_sub(claims.iat) {
        Some(lifetime) if lifetime <= expect.max_lifetime_secs => {}
        _ => return Err(TokenError::TooLongLived),
    }
    if claims.aud != expect.audience {
        return Err(TokenError::WrongAudience);
    }
    Ok(Caller {
        kind: claims.kind,
        subject: claims.sub,
        tenant: claims.tenant,
        roles: claims.roles,
        expires_at: claims.exp,
        token: Arc::from(token),
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}
