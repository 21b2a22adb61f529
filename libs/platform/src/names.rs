//! Resource names and shapes that every service reads the same way (`docs/contracts.md`):
//! `tenants/{tenant}`, `tenants/{tenant}/users/{user}`, and the Art. 5.2 attestation that
//! identity takes from a contract party and consent records as evidence.

use chrono::{DateTime, Duration, Utc};
use prost_types::Timestamp;
use uuid::Uuid;

use crate::time::from_timestamp;

/// How far ahead of our clock an attested time may be (clock skew).
pub const CLOCK_SKEW: Duration = Duration::minutes(5);

/// `tenants/{tenant}` → the tenant id.
pub fn tenant_id(name: &str) -> Option<Uuid> {
    let id = name.strip_prefix("tenants/")?;
    canonical_uuid(id)
}

/// `tenants/{tenant}/users/{user}` → (tenant id, user id).
pub fn user_ids(name: &str) -> Option<(Uuid, Uuid)> {
    match name.split('/').collect::<Vec<_>>().as_slice() {
        ["tenants", tenant, "users", user] => {
            Some((canonical_uuid(tenant)?, canonical_uuid(user)?))
        }
        _ => None,
    }
}

pub fn tenant_name(tenant: Uuid) -> String {
    format!("tenants/{tenant}")
}

pub fn user_name(tenant: Uuid, user: Uuid) -> String {
    format!("tenants/{tenant}/users/{user}")
}

/// Ids in names are lowercase canonical UUIDs: one spelling per resource.
fn canonical_uuid(text: &str) -> Option<Uuid> {
    Uuid::parse_str(text)
        .ok()
        .filter(|id| id.hyphenated().to_string() == text)
}

/// Whether `code` is an assigned ISO 3166-1 alpha-2 country code, upper case (`GB`, not
/// `UK`).
pub fn is_country(code: &str) -> bool {
    code.len() == 2
        && code.chars().all(|c| c.is_ascii_uppercase())
        && isocountry::CountryCode::for_alpha2(code).is_ok()
}

/// A deployment region: 2-16 characters of [a-z0-9-].
pub fn is_region(region: &str) -> bool {
    (2..=16).contains(&region.len())
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// What is wrong with an attestation (Art. 5.2), as (field, problem) pairs under `prefix`
/// (`attestation` or `evidence`): attested_by 1-256 characters, attest_time present and not
/// in the future, evidence_uri an absolute https or urn URI of at most 2048 characters.
pub fn attestation_problems(
    prefix: &str,
    attested_by: &str,
    attest_time: Option<&Timestamp>,
    evidence_uri: &str,
    now: DateTime<Utc>,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let by = attested_by.chars().count();
    if by == 0 || by > 256 {
        problems.push((
            format!("{prefix}.attested_by"),
            "must be 1-256 characters".into(),
        ));
    }
    let field = format!("{prefix}.attest_time");
    match attest_time.map(|t| from_timestamp(t, &field)) {
        Some(Ok(time)) if time <= now + CLOCK_SKEW => {}
        Some(Ok(_)) => problems.push((field, "must not be in the future".into())),
        _ => problems.push((field, "required, a valid time".into())),
    }
    let uri_ok = evidence_uri.len() <= 2048
        && url::Url::parse(evidence_uri)
            .is_ok_and(|u| u.scheme() == "urn" || (u.scheme() == "https" && u.has_host()));
    if !uri_ok {
        problems.push((
            format!("{prefix}.evidence_uri"),
            "must be an absolute https or urn URI".into(),
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_one_spelling() {
        let tenant = "tenants/0190f7a0-0000-7000-8000-00000000000a";
        assert!(tenant_id(tenant).is_some());
        assert!(tenant_id(&tenant.to_uppercase().replace("TENANTS", "tenants")).is_none());
        let user = format!("{tenant}/users/0190f7a0-0000-7000-8000-000000000001");
        assert!(user_ids(&user).is_some());
        assert!(user_ids(&format!("{user}/x")).is_none());
        assert!(user_ids(tenant).is_none());
    }

    #[test]
    fn countries_are_assigned_iso_codes() {
        for code in ["JP", "US", "GB", "SG"] {
            assert!(is_country(code), "{code}");
        }
        for code in ["UK", "XX", "jp", "JPN", ""] {
            assert!(!is_country(code), "{code}");
        }
    }

    #[test]
    fn an_attestation_needs_who_when_and_where() {
        let now = Utc::now();
        let problems = attestation_problems("attestation", "", None, "http://x", now);
        let fields: Vec<_> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "attestation.attested_by",
                "attestation.attest_time",
                "attestation.evidence_uri"
            ]
        );
        let at = crate::time::to_timestamp(now);
        assert!(
            attestation_problems("a", "contracts/x/signatories/1", Some(&at), "urn:x:1", now)
                .is_empty()
        );
    }
}
