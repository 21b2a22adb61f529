//! Who is calling. Tokens are compact JWS (`header.claims.signature`, base64url, EdDSA over
//! Ed25519) naming their key id; every service verifies them locally against the public keys
//! its configuration trusts, so no service needs another to be up to check a token.
//!
//! - [`token`]: the token format, signing and verification.
//! - [`keys`]: the trusted key set and this process's signing key, from configuration.
//! - [`layer`]: the server layer that authenticates every call but health and reflection and
//!   hands the handler a typed [`Caller`].

pub mod keys;
pub mod layer;
pub mod token;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// What kind of principal a token speaks for (`API.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Kind {
    /// A Portal User, signed by identity at sign-in.
    User,
    /// A service acting as itself; subject `services/<name>`.
    Service,
    /// Staff who run a deployment.
    Operator,
    /// Staff who read records for compliance; change nothing.
    Auditor,
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_uppercase().as_str() {
            "USER" => Ok(Self::User),
            "SERVICE" => Ok(Self::Service),
            "OPERATOR" => Ok(Self::Operator),
            "AUDITOR" => Ok(Self::Auditor),
            other => Err(format!("unknown token kind `{other}`")),
        }
    }
}

/// The authenticated caller of one request, as the handler sees it.
#[derive(Clone)]
pub struct Caller {
    pub kind: Kind,
    /// `tenants/{t}/users/{u}` for users, `services/<name>` for services, a staff id otherwise.
    pub subject: String,
    /// The caller's tenant (`tenants/{t}`); users always have one.
    pub tenant: Option<String>,
    pub roles: Vec<String>,
    /// Seconds since the epoch after which the token is no longer accepted.
    pub expires_at: i64,
    /// The bearer token itself, for calls made on the caller's behalf.
    token: Arc<str>,
}

impl Caller {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// `PERMISSION_DENIED` (`CALLER_NOT_ALLOWED`) unless the caller is of one of `kinds`.
    pub fn require_kind(&self, kinds: &[Kind]) -> Result<(), ApiError> {
        if kinds.contains(&self.kind) {
            Ok(())
        } else {
            Err(ApiError::permission_denied(
                "CALLER_NOT_ALLOWED",
                "this caller may not call this method",
            ))
        }
    }

    /// The token, to forward on calls made on this caller's behalf.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// The token is a credential: it is never printed.
impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("kind", &self.kind)
            .field("subject", &self.subject)
            .field("tenant", &self.tenant)
            .field("roles", &self.roles)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The caller the server layer authenticated for this request.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, ApiError> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| ApiError::internal("a handler ran without an authenticated caller"))
}
