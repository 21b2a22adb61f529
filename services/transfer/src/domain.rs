//! Transfer's rules without I/O: what a valid entity and transfer request are, and the
//! decision table of Articles 3 and 4 once the facts (entities, deletion, consent) are known.

use chrono::{DateTime, Duration, Utc};
use portal_platform::ApiError;
use portal_platform::names::{self, CLOCK_SKEW};
use portal_platform::time::from_timestamp;
use portal_proto::consent::v1::ConsentDecision;
use portal_proto::consent::v1::consent_decision::Reason as ConsentReason;
use portal_proto::transfer::v1::group_entity::Kind;
use portal_proto::transfer::v1::{
    AuthorizeTransferRequest, DataCategory, DenialReason, GroupEntity, LegalBasis, Purpose,
};
use uuid::Uuid;

/// Problems collected while checking one request: (field, what is wrong).
#[derive(Debug, Default)]
pub struct Problems(Vec<(String, String)>);

impl Problems {
    pub fn add(&mut self, field: &str, problem: &str) {
        self.0.push((field.to_owned(), problem.to_owned()));
    }

    pub fn into_result<T>(self, value: T) -> Result<T, ApiError> {
        if self.0.is_empty() {
            return Ok(value);
        }
        let mut error = ApiError::invalid_argument("INVALID_REQUEST", "the request is not valid");
        for (field, problem) in self.0 {
            error = error.violation(field, problem);
        }
        Err(error)
    }
}

pub fn invalid(field: &str, problem: &str) -> ApiError {
    ApiError::invalid_argument("INVALID_REQUEST", "the request is not valid")
        .violation(field, problem)
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Operator => "OPERATOR",
        Kind::Branch => "BRANCH",
        Kind::Affiliate => "AFFILIATE",
        Kind::Subcontractor => "SUBCONTRACTOR",
        Kind::ThirdParty => "THIRD_PARTY",
        Kind::Unspecified => "UNSPECIFIED",
    }
}

pub fn kind_from_name(name: &str) -> Kind {
    match name {
        "OPERATOR" => Kind::Operator,
        "BRANCH" => Kind::Branch,
        "AFFILIATE" => Kind::Affiliate,
        "SUBCONTRACTOR" => Kind::Subcontractor,
        "THIRD_PARTY" => Kind::ThirdParty,
        _ => Kind::Unspecified,
    }
}

/// An entity's registered facts, as checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityFacts {
    pub kind: Kind,
    pub legal_name: String,
    pub country_code: String,
    pub region: String,
    pub security_level: i32,
    pub last_review_time: Option<DateTime<Utc>>,
}

/// Checks an entity as it would be stored; `prefix` names the request field (`entity`).
pub fn entity(given: &GroupEntity, now: DateTime<Utc>) -> Result<EntityFacts, ApiError> {
    let mut problems = Problems::default();
    let kind = Kind::try_from(given.kind).unwrap_or(Kind::Unspecified);
    if kind == Kind::Unspecified {
        problems.add(
            "entity.kind",
            "required: a kind other than KIND_UNSPECIFIED",
        );
    }
    let name_length = given.legal_name.chars().count();
    if name_length == 0 || name_length > 200 || given.legal_name.chars().any(char::is_control) {
        problems.add("entity.legal_name", "required, 1-200 characters");
    }
    if !names::is_country(&given.country_code) {
        problems.add(
            "entity.country_code",
            "required: an ISO 3166-1 alpha-2 code, upper case (e.g. JP, GB)",
        );
    }
    if !names::is_region(&given.region) {
        problems.add("entity.region", "required: 2-16 characters of [a-z0-9-]");
    }
    if !(0..=100).contains(&given.security_level) {
        problems.add("entity.security_level", "must be 0-100");
    }
    let last_review_time = match &given.last_review_time {
        None => None,
        Some(time) => match from_timestamp(time, "entity.last_review_time") {
            Ok(time) if time <= now + CLOCK_SKEW => Some(time),
            Ok(_) => {
                problems.add("entity.last_review_time", "must not be in the future");
                None
            }
            Err(_) => {
                problems.add("entity.last_review_time", "must be a valid time");
                None
            }
        },
    };
    if kind == Kind::Subcontractor {
        if given.security_level < 1 {
            problems.add(
                "entity.security_level",
                "required for a subcontractor: its assessed standard, 1-100",
            );
        }
        if given.last_review_time.is_none() {
            problems.add(
                "entity.last_review_time",
                "required for a subcontractor: its last supervision review",
            );
        }
    }
    problems.into_result(EntityFacts {
        kind,
        legal_name: given.legal_name.clone(),
        country_code: given.country_code.clone(),
        region: given.region.clone(),
        security_level: given.security_level,
        last_review_time,
    })
}

/// `entities/{id}`.
pub fn entity_id(name: &str, field: &str) -> Result<Uuid, ApiError> {
    name.strip_prefix("entities/")
        .and_then(|id| {
            Uuid::parse_str(id)
                .ok()
                .filter(|u| u.hyphenated().to_string() == id)
        })
        .ok_or_else(|| invalid(field, "must be entities/{entity}"))
}

pub fn entity_name(id: Uuid) -> String {
    format!("entities/{id}")
}

/// `transferRecords/{id}`.
pub fn record_id(name: &str, field: &str) -> Result<Uuid, ApiError> {
    name.strip_prefix("transferRecords/")
        .and_then(|id| {
            Uuid::parse_str(id)
                .ok()
                .filter(|u| u.hyphenated().to_string() == id)
        })
        .ok_or_else(|| invalid(field, "must be transferRecords/{transfer_record}"))
}

pub fn record_name(id: Uuid) -> String {
    format!("transferRecords/{id}")
}

/// A checked AuthorizeTransfer request.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub subject: String,
    /// Ascending, no duplicates.
    pub categories: Vec<DataCategory>,
    pub source: Uuid,
    pub destination: Uuid,
    pub purpose: Purpose,
    pub legal_reference: String,
}

pub fn transfer(request: &AuthorizeTransferRequest) -> Result<Transfer, ApiError> {
    let mut problems = Problems::default();
    if names::user_ids(&request.subject).is_none() {
        problems.add("subject", "required: tenants/{tenant}/users/{user}");
    }
    let mut categories = Vec::new();
    for value in &request.data_categories {
        match DataCategory::try_from(*value) {
            Ok(DataCategory::Unspecified) | Err(_) => problems.add(
                "data_categories",
                "each must be DATA_CATEGORY_NAME, DATA_CATEGORY_EMAIL or DATA_CATEGORY_PHONE_NUMBER",
            ),
            Ok(category) => categories.push(category),
        }
    }
    if request.data_categories.is_empty() {
        problems.add("data_categories", "at least one category is required");
    }
    categories.sort_by_key(|c| *c as i32);
    categories.dedup();
    let source = entity_id(&request.source_entity, "source_entity");
    let destination = entity_id(&request.destination_entity, "destination_entity");
    if source.is_err() {
        problems.add("source_entity", "required: entities/{entity}");
    }
    if destination.is_err() {
        problems.add("destination_entity", "required: entities/{entity}");
    }
    if let (Ok(source), Ok(destination)) = (&source, &destination)
        && source == destination
    {
        problems.add("destination_entity", "must differ from source_entity");
    }
    let purpose = Purpose::try_from(request.purpose).unwrap_or(Purpose::Unspecified);
    if purpose == Purpose::Unspecified {
        problems.add(
            "purpose",
            "required: a purpose other than PURPOSE_UNSPECIFIED",
        );
    }
    let reference = &request.legal_reference;
    if reference.chars().count() > 500 || reference.chars().any(char::is_control) {
        problems.add(
            "legal_reference",
            "at most 500 characters, no control characters",
        );
    }
    problems.into_result(())?;
    Ok(Transfer {
        subject: request.subject.clone(),
        categories,
        source: source?,
        destination: destination?,
        purpose,
        legal_reference: reference.clone(),
    })
}

/// A decision and what it rests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: Result<LegalBasis, DenialReason>,
    /// The consent entry relied on (or the withdrawal), `consentRecords/{id}`; empty if none.
    pub consent_record: String,
    pub terms_version: i64,
}

impl Outcome {
    pub fn denied(reason: DenialReason) -> Self {
        Self {
            allowed: Err(reason),
            consent_record: String::new(),
            terms_version: 0,
        }
    }

    fn from_consent(allowed: Result<LegalBasis, DenialReason>, consent: &ConsentDecision) -> Self {
        Self {
            allowed,
            consent_record: consent.consent_record.clone(),
            terms_version: consent.terms_version,
        }
    }
}

/// Whether the user deleted their registration, as consent reports it (Art. 5.3: the full
/// withdrawal only identity records, before DeleteUser returns).
pub fn deleted(joint_use: &ConsentDecision) -> Option<Outcome> {
    (joint_use.reason() == ConsentReason::ConsentWithdrawn)
        .then(|| Outcome::from_consent(Err(DenialReason::SubjectDeleted), joint_use))
}

/// Art. 3.3: a subcontractor below the group's standard, or whose supervision review has
/// lapsed (or never happened), receives nothing.
pub fn subcontractor_refusal(
    security_level: i32,
    review_due: Option<DateTime<Utc>>,
    baseline: i32,
    now: DateTime<Utc>,
) -> Option<DenialReason> {
    if security_level < baseline {
        return Some(DenialReason::SubcontractorBelowStandard);
    }
    if review_due.is_none_or(|due| due <= now) {
        return Some(DenialReason::SupervisionLapsed);
    }
    None
}

/// When a review done at `last_review` stops covering transfers.
pub fn review_due(last_review: Option<DateTime<Utc>>, validity_days: u32) -> Option<DateTime<Utc>> {
    last_review.map(|time| time + Duration::days(validity_days.into()))
}

/// Art. 3.1, 3.2, 3.3: a destination inside the group (or a subcontractor working for it)
/// needs the Art. 5.1 consent to joint use, and to cross-border transfer when it is abroad.
pub fn within_group(
    basis: LegalBasis,
    joint_use: &ConsentDecision,
    cross_border: Option<&ConsentDecision>,
) -> Outcome {
    let refusal = |decision: &ConsentDecision| match decision.reason() {
        ConsentReason::DestinationNotCovered => DenialReason::DestinationNotCovered,
        _ => DenialReason::NoConsent,
    };
    if !joint_use.allowed {
        return Outcome::from_consent(Err(refusal(joint_use)), joint_use);
    }
    match cross_border {
        Some(abroad) if !abroad.allowed => Outcome::from_consent(Err(refusal(abroad)), abroad),
        Some(abroad) => Outcome::from_consent(Ok(basis), abroad),
        None => Outcome::from_consent(Ok(basis), joint_use),
    }
}

/// Art. 4: a third party needs the user's explicit consent for it.
pub fn third_party(explicit: &ConsentDecision) -> Outcome {
    let allowed = match explicit.reason() {
        ConsentReason::ExplicitConsent if explicit.allowed => Ok(LegalBasis::UserConsent),
        ConsentReason::ExplicitConsentWithdrawn => Err(DenialReason::ConsentWithdrawn),
        _ => Err(DenialReason::ThirdPartyWithoutConsent),
    };
    Outcome::from_consent(allowed, explicit)
}

/// The basis of an allowed transfer inside the group (the table): joint use within a
/// country (Art. 3.1), a transfer abroad to the group (Art. 3.2).
pub fn group_basis(cross_border: bool) -> LegalBasis {
    if cross_border {
        LegalBasis::IntraGroupTransfer
    } else {
        LegalBasis::JointUse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(allowed: bool, reason: ConsentReason) -> ConsentDecision {
        ConsentDecision {
            allowed,
            reason: reason.into(),
            consent_record: "consentRecords/x".into(),
            terms_version: 3,
            decide_time: None,
        }
    }

    #[test]
    fn the_group_needs_joint_use_and_abroad_cross_border_consent() {
        let yes = consent(true, ConsentReason::ConsentActive);
        let no = consent(false, ConsentReason::NoConsent);
        let not_covered = consent(false, ConsentReason::DestinationNotCovered);
        let basis = LegalBasis::JointUse;
        assert_eq!(within_group(basis, &yes, None).allowed, Ok(basis));
        assert_eq!(
            within_group(basis, &no, None).allowed,
            Err(DenialReason::NoConsent)
        );
        assert_eq!(
            within_group(basis, &yes, Some(&not_covered)).allowed,
            Err(DenialReason::DestinationNotCovered)
        );
        let outcome = within_group(basis, &yes, Some(&yes));
        assert_eq!(outcome.terms_version, 3);
        assert_eq!(group_basis(true), LegalBasis::IntraGroupTransfer);
    }

    #[test]
    fn subcontractors_need_the_standard_and_a_current_review() {
        let now = Utc::now();
        let due = Some(now + Duration::days(1));
        assert_eq!(subcontractor_refusal(70, due, 60, now), None);
        assert_eq!(
            subcontractor_refusal(50, due, 60, now),
            Some(DenialReason::SubcontractorBelowStandard)
        );
        assert_eq!(
            subcontractor_refusal(70, Some(now), 60, now),
            Some(DenialReason::SupervisionLapsed)
        );
        assert_eq!(
            subcontractor_refusal(70, None, 60, now),
            Some(DenialReason::SupervisionLapsed)
        );
    }

    #[test]
    fn a_withdrawn_explicit_consent_is_named_as_such() {
        let withdrawn = consent(false, ConsentReason::ExplicitConsentWithdrawn);
        assert_eq!(
            third_party(&withdrawn).allowed,
            Err(DenialReason::ConsentWithdrawn)
        );
        let none = consent(false, ConsentReason::NoExplicitConsentForRecipient);
        assert_eq!(
            third_party(&none).allowed,
            Err(DenialReason::ThirdPartyWithoutConsent)
        );
        let given = consent(true, ConsentReason::ExplicitConsent);
        assert_eq!(third_party(&given).allowed, Ok(LegalBasis::UserConsent));
    }
}
