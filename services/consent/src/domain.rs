//! The consent service's rules, free of I/O: what a publishable document version is (Art. 6, 7).

use chrono::{DateTime, Duration, Utc};
use portal_platform::ApiError;
use portal_platform::time::from_timestamp;
use portal_proto::consent::v1::PolicyDocument;
use portal_proto::consent::v1::policy_document::Kind;

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
    let announce_time = time("document.announce_time", &document.announce_time)?;
    let effective_time = time("document.effective_time", &document.effective_time)?;
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

fn invalid(problems: Vec<(&str, String)>) -> ApiError {
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
