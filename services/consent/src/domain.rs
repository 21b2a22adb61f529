//! The consent service's rules, free of I/O: what a publishable document version is (Art. 6,
//! 7) and what a consent request must hold (Art. 4, 5).

use chrono::{DateTime, Duration, Utc};
use portal_platform::ApiError;
use portal_platform::time::from_timestamp;
use portal_proto::consent::v1::policy_document::Kind;
use portal_proto::consent::v1::{
    Attestation, Basis, CheckConsentRequest, PolicyDocument, RecordConsentRequest, Scope,
    WithdrawConsentRequest,
};

/// How far in the past a new version may take effect: clock skew between operator and server.
const BACKDATING_TOLERANCE: Duration = Duration::minutes(5);

/// Which document: its name segment in resource names and in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    Terms,
    PrivacyPolicy,
}

impl DocumentKind {
    pub fn from_proto(kind: i32) -> Option<Self> {
        match Kind::try_from(kind) {
            Ok(Kind::Terms) => Some(Self::Terms),
            Ok(Kind::PrivacyPolicy) => Some(Self::PrivacyPolicy),
            _ => None,
        }
    }

    pub fn to_proto(self) -> Kind {
        match self {
            Self::Terms => Kind::Terms,
            Self::PrivacyPolicy => Kind::PrivacyPolicy,
        }
    }

    pub fn segment(self) -> &'static str {
        match self {
            Self::Terms => "terms",
            Self::PrivacyPolicy => "privacy-policy",
        }
    }

    pub fn from_segment(segment: &str) -> Option<Self> {
        match segment {
            "terms" => Some(Self::Terms),
            "privacy-policy" => Some(Self::PrivacyPolicy),
            _ => None,
        }
    }
}

/// A document version that passed every check that needs no other version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDocument {
    pub kind: DocumentKind,
    pub version: i64,
    pub label: String,
    pub uri: String,
    pub content_sha256: String,
    pub announce_time: DateTime<Utc>,
    pub effective_time: DateTime<Utc>,
    pub change_summary: String,
    pub material_change: bool,
}

/// The latest published version of a kind, which a new one must follow.
#[derive(Debug, Clone, Copy)]
pub struct Latest {
    pub version: i64,
    pub effective_time: DateTime<Utc>,
}

/// Checks a requested version on its own; every problem is a field violation.
pub fn new_document(
    document: &PolicyDocument,
    now: DateTime<Utc>,
) -> Result<NewDocument, ApiError> {
    let mut problems: Vec<(&str, String)> = Vec::new();
    let kind = DocumentKind::from_proto(document.kind);
    if kind.is_none() {
        problems.push((
            "document.kind",
            "must be KIND_TERMS or KIND_PRIVACY_POLICY".into(),
        ));
    }
    if document.version <= 0 {
        problems.push(("document.version", "must be a positive integer".into()));
    }
    let label_len = document.label.trim().chars().count();
    if label_len == 0 || document.label.chars().count() > 64 {
        problems.push(("document.label", "must be 1-64 characters".into()));
    }
    let uri_ok = document.uri.len() <= 2048
        && url::Url::parse(&document.uri).is_ok_and(|u| u.scheme() == "https" && u.has_host());
    if !uri_ok {
        problems.push((
            "document.uri",
            "must be an absolute https URI of at most 2048 characters".into(),
        ));
    }
    let hash_ok = document.content_sha256.len() == 64
        && document
            .content_sha256
            .chars()
            .all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    if !hash_ok {
        problems.push((
            "document.content_sha256",
            "must be 64 lowercase hexadecimal characters".into(),
        ));
    }
    if document.change_summary.chars().count() > 4000 {
        problems.push((
            "document.change_summary",
            "must be at most 4000 characters".into(),
        ));
    }
    let time = |field: &'static str, value: &Option<prost_types::Timestamp>| match value {
        Some(t) => from_timestamp(t, field),
        None => Ok(now),
    };
    let effective_time = time("document.effective_time", &document.effective_time)?;
    // Unannounced, a version counts as announced when published, or when it takes effect if
    // that is (within the clock-skew tolerance) a moment earlier.
    let announce_time = match &document.announce_time {
        Some(t) => from_timestamp(t, "document.announce_time")?,
        None => now.min(effective_time),
    };
    if announce_time > effective_time {
        problems.push((
            "document.effective_time",
            "must not be before announce_time".into(),
        ));
    }
    if effective_time < now - BACKDATING_TOLERANCE {
        problems.push((
            "document.effective_time",
            "must not be in the past: a version cannot be back-dated under recorded consents"
                .into(),
        ));
    }
    match (kind, problems.is_empty()) {
        (Some(kind), true) => Ok(NewDocument {
            kind,
            version: document.version,
            label: document.label.clone(),
            uri: document.uri.clone(),
            content_sha256: document.content_sha256.clone(),
            announce_time,
            effective_time,
            change_summary: document.change_summary.clone(),
            material_change: document.material_change,
        }),
        _ => Err(invalid(problems)),
    }
}

/// Checks a new version against the latest one of its kind (Art. 7: revisions follow in order).
pub fn follows(new: &NewDocument, latest: Option<Latest>) -> Result<(), ApiError> {
    let Some(latest) = latest else {
        return Ok(());
    };
    if new.version <= latest.version {
        return Err(ApiError::invalid_argument(
            "VERSION_NOT_INCREASING",
            format!(
                "version must be greater than {}, the latest of its kind",
                latest.version
            ),
        )
        .violation(
            "document.version",
            format!("must be greater than {}", latest.version),
        ));
    }
    if new.effective_time <= latest.effective_time {
        return Err(ApiError::invalid_argument(
            "EFFECTIVE_TIME_NOT_INCREASING",
            "effective_time must be later than that of the latest version of its kind",
        )
        .violation(
            "document.effective_time",
            "must be later than the latest version's",
        ));
    }
    if new.change_summary.trim().is_empty() {
        return Err(invalid(vec![(
            "document.change_summary",
            "is required for every version after the first".into(),
        )]));
    }
    Ok(())
}

fn invalid<F: Into<String>>(problems: Vec<(F, String)>) -> ApiError {
    let mut error = ApiError::invalid_argument("INVALID_REQUEST", "the document is not valid");
    for (field, description) in problems {
        error = error.violation(field, description);
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> PolicyDocument {
        PolicyDocument {
            kind: Kind::Terms.into(),
            version: 1,
            label: "2026-11".into(),
            uri: "https://portal.example.com/terms/1".into(),
            content_sha256: "a".repeat(64),
            ..PolicyDocument::default()
        }
    }

    #[test]
    fn a_complete_version_passes_and_defaults_its_times_to_now() {
        let now = Utc::now();
        let document = new_document(&valid(), now).unwrap();
        assert_eq!(document.effective_time, now);
        assert_eq!(document.announce_time, now);
    }

    #[test]
    fn a_later_version_must_have_a_higher_number_a_later_effect_and_a_summary() {
        let now = Utc::now();
        let mut next = new_document(&valid(), now).unwrap();
        next.version = 2;
        let latest = Latest {
            version: 2,
            effective_time: now - Duration::days(1),
        };
        assert_eq!(
            follows(&next, Some(latest)).unwrap_err().reason(),
            "VERSION_NOT_INCREASING"
        );
        next.version = 3;
        let later = Latest {
            effective_time: now,
            ..latest
        };
        assert_eq!(
            follows(&next, Some(later)).unwrap_err().reason(),
            "EFFECTIVE_TIME_NOT_INCREASING"
        );
        assert_eq!(
            follows(&next, Some(latest)).unwrap_err().reason(),
            "INVALID_REQUEST"
        );
        next.change_summary = "Clarifies Article 3.3".into();
        assert!(follows(&next, Some(latest)).is_ok());
    }
}

/// A Portal User named by their identity resource name, and their tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub name: String,
    pub tenant: String,
}

/// Parses `tenants/{tenant}/users/{user}` (ids are UUIDs); `field` names it in the violation.
pub fn subject(name: &str, field: &str) -> Result<Subject, ApiError> {
    let parts: Vec<&str> = name.split('/').collect();
    let valid = matches!(
        parts.as_slice(),
        ["tenants", tenant, "users", user]
            if uuid::Uuid::parse_str(tenant).is_ok() && uuid::Uuid::parse_str(user).is_ok()
    );
    if !valid {
        return Err(invalid(vec![(
            field,
            "must be a user name, tenants/{tenant}/users/{user}".into(),
        )]));
    }
    Ok(Subject {
        name: name.to_owned(),
        tenant: format!("tenants/{}", parts[1]),
    })
}

/// The ground of a given consent, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentBasis {
    DeemedByUse,
    ContractPartyAttestation,
    Explicit,
}

impl ConsentBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeemedByUse => "deemed_by_use",
            Self::ContractPartyAttestation => "contract_party_attestation",
            Self::Explicit => "explicit",
        }
    }

    pub fn to_proto(self) -> Basis {
        match self {
            Self::DeemedByUse => Basis::DeemedByUse,
            Self::ContractPartyAttestation => Basis::ContractPartyAttestation,
            Self::Explicit => Basis::Explicit,
        }
    }

    /// Art. 5.1 consent (deemed or attested), as opposed to Art. 4 explicit consent.
    pub fn is_article_5_1(self) -> bool {
        !matches!(self, Self::Explicit)
    }
}

/// A consent request that passed every check needing no stored state.
#[derive(Debug, Clone)]
pub struct NewConsent {
    pub subject: Subject,
    pub basis: ConsentBasis,
    pub scopes: Vec<Scope>,
    pub recipient_entity: String,
    pub evidence: Option<Attestation>,
    pub expected_terms_version: i64,
}

/// Checks a RecordConsent request: the scopes, recipient and evidence must fit the basis.
pub fn new_consent(
    request: &RecordConsentRequest,
    now: DateTime<Utc>,
) -> Result<NewConsent, ApiError> {
    let subject = subject(&request.subject, "subject")?;
    let mut problems: Vec<(&str, String)> = Vec::new();
    if !request.tenant.is_empty() && request.tenant != subject.tenant {
        problems.push(("tenant", "must be the tenant of subject".into()));
    }
    let basis = match Basis::try_from(request.basis) {
        Ok(Basis::DeemedByUse) => Some(ConsentBasis::DeemedByUse),
        Ok(Basis::ContractPartyAttestation) => Some(ConsentBasis::ContractPartyAttestation),
        Ok(Basis::Explicit) => Some(ConsentBasis::Explicit),
        _ => {
            problems.push((
                "basis",
                "must be DEEMED_BY_USE, CONTRACT_PARTY_ATTESTATION or EXPLICIT".into(),
            ));
            None
        }
    };
    let mut scopes: Vec<Scope> = request
        .scopes
        .iter()
        .map(|s| Scope::try_from(*s).unwrap_or(Scope::Unspecified))
        .collect();
    scopes.sort_by_key(|s| *s as i32);
    scopes.dedup();
    let article_5_1 = vec![Scope::JointUse, Scope::CrossBorderTransfer];
    match basis {
        Some(ConsentBasis::DeemedByUse | ConsentBasis::ContractPartyAttestation) => {
            if scopes.is_empty() {
                scopes = article_5_1.clone();
            }
            if scopes != article_5_1 {
                problems.push((
                    "scopes",
                    "must be JOINT_USE and CROSS_BORDER_TRANSFER (or empty)".into(),
                ));
            }
            if !request.recipient_entity.is_empty() {
                problems.push((
                    "recipient_entity",
                    "only with THIRD_PARTY_DISCLOSURE".into(),
                ));
            }
        }
        Some(ConsentBasis::Explicit) => {
            if scopes != [Scope::ThirdPartyDisclosure] {
                problems.push(("scopes", "must be exactly THIRD_PARTY_DISCLOSURE".into()));
            }
            if !is_entity_name(&request.recipient_entity) {
                problems.push(("recipient_entity", "required: entities/{entity}".into()));
            }
        }
        None => {}
    }
    let attested = basis == Some(ConsentBasis::ContractPartyAttestation);
    let mut problems: Vec<(String, String)> = problems
        .into_iter()
        .map(|(f, d)| (f.to_owned(), d))
        .collect();
    match (&request.evidence, attested) {
        (Some(evidence), true) => problems.extend(attestation_problems(evidence, now)),
        (None, true) => problems.push((
            "evidence".into(),
            "required for CONTRACT_PARTY_ATTESTATION".into(),
        )),
        (Some(_), false) => problems.push((
            "evidence".into(),
            "only for CONTRACT_PARTY_ATTESTATION".into(),
        )),
        (None, false) => {}
    }
    if request.expected_terms_version < 0 {
        problems.push((
            "expected_terms_version".into(),
            "must not be negative".into(),
        ));
    }
    match (basis, problems.is_empty()) {
        (Some(basis), true) => Ok(NewConsent {
            subject,
            basis,
            scopes,
            recipient_entity: request.recipient_entity.clone(),
            evidence: request.evidence.clone(),
            expected_terms_version: request.expected_terms_version,
        }),
        _ => Err(invalid(problems)),
    }
}

/// `entities/{entity}` with a UUID id.
pub fn is_entity_name(name: &str) -> bool {
    name.strip_prefix("entities/")
        .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())
}

fn attestation_problems(evidence: &Attestation, now: DateTime<Utc>) -> Vec<(String, String)> {
    portal_platform::names::attestation_problems(
        "evidence",
        &evidence.attested_by,
        evidence.attest_time.as_ref(),
        &evidence.evidence_uri,
        now,
    )
}

/// The two forms of withdrawal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawal {
    /// One explicit third-party consent (Art. 4), by the subject.
    Explicit { recipient_entity: String },
    /// Everything, when the user deletes their registration (Art. 5.3), by identity.
    Full,
    /// The Art. 5.1 consent alone: only possible by deleting the registration.
    Article51,
}

/// Checks a WithdrawConsent request and tells which form it is.
pub fn withdrawal(request: &WithdrawConsentRequest) -> Result<(Subject, Withdrawal), ApiError> {
    let subject = subject(&request.subject, "subject")?;
    if request.reason.chars().count() > 500 {
        return Err(invalid(vec![(
            "reason",
            "must be at most 500 characters".into(),
        )]));
    }
    let mut scopes: Vec<Scope> = request
        .scopes
        .iter()
        .map(|s| Scope::try_from(*s).unwrap_or(Scope::Unspecified))
        .collect();
    scopes.sort_by_key(|s| *s as i32);
    scopes.dedup();
    let all = [
        Scope::JointUse,
        Scope::CrossBorderTransfer,
        Scope::ThirdPartyDisclosure,
    ];
    let form = if scopes == [Scope::ThirdPartyDisclosure] {
        if !is_entity_name(&request.recipient_entity) {
            return Err(invalid(vec![(
                "recipient_entity",
                "required: entities/{entity}".into(),
            )]));
        }
        Withdrawal::Explicit {
            recipient_entity: request.recipient_entity.clone(),
        }
    } else if scopes == all && request.recipient_entity.is_empty() {
        Withdrawal::Full
    } else if !scopes.is_empty()
        && scopes
            .iter()
            .all(|s| matches!(s, Scope::JointUse | Scope::CrossBorderTransfer))
        && request.recipient_entity.is_empty()
    {
        Withdrawal::Article51
    } else {
        return Err(invalid(vec![(
            "scopes",
            "must be THIRD_PARTY_DISCLOSURE with a recipient, or all three scopes".into(),
        )]));
    };
    Ok((subject, form))
}

/// A checked CheckConsent request.
#[derive(Debug, Clone)]
pub struct Check {
    pub subject: Subject,
    pub scope: Scope,
    pub recipient_entity: String,
}

pub fn check(request: &CheckConsentRequest) -> Result<Check, ApiError> {
    let subject = subject(&request.subject, "subject")?;
    let mut problems: Vec<(&str, String)> = Vec::new();
    let scope = Scope::try_from(request.scope).unwrap_or(Scope::Unspecified);
    if scope == Scope::Unspecified {
        problems.push(("scope", "required".into()));
    }
    if scope == Scope::ThirdPartyDisclosure && !is_entity_name(&request.recipient_entity) {
        problems.push((
            "recipient_entity",
            "required for THIRD_PARTY_DISCLOSURE: entities/{entity}".into(),
        ));
    }
    let country = &request.destination_country;
    let country_ok = portal_platform::names::is_country(country);
    if (scope == Scope::CrossBorderTransfer || !country.is_empty()) && !country_ok {
        problems.push((
            "destination_country",
            "an ISO 3166-1 alpha-2 code such as SG".into(),
        ));
    }
    if problems.is_empty() {
        Ok(Check {
            subject,
            scope,
            recipient_entity: request.recipient_entity.clone(),
        })
    } else {
        Err(invalid(problems))
    }
}
