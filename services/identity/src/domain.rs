//! Identity's rules without I/O: what a valid tenant, user, password and attestation are, and
//! how an update mask applies. Every problem is reported at once, each naming its field; no
//! message quotes a value, because the values are PI.

use chrono::{DateTime, Utc};
use portal_platform::ApiError;
use portal_platform::names::attestation_problems;
use portal_proto::identity::v1::user::Role;
use portal_proto::identity::v1::{Attestation, Tenant, User};
use unicode_normalization::UnicodeNormalization;

use crate::crypto::Pi;

/// Problems collected while checking one request: (field, what is wrong).
#[derive(Debug, Default)]
pub struct Problems(Vec<(String, String)>);

impl Problems {
    pub fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push((field.into(), problem.into()));
    }

    pub fn extend(&mut self, problems: Vec<(String, String)>) {
        self.0.extend(problems);
    }

    /// `Ok(value)` if nothing was found, else `INVALID_ARGUMENT` naming every field.
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

/// One INVALID_REQUEST violation.
pub fn invalid(field: &str, problem: &str) -> ApiError {
    ApiError::invalid_argument("INVALID_REQUEST", "the request is not valid")
        .violation(field, problem)
}

/// A checked CreateTenant request.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub display_name: String,
    pub contract_reference: String,
    pub home_region: String,
}

pub fn new_tenant(tenant: Option<&Tenant>, region: &str) -> Result<NewTenant, ApiError> {
    let mut problems = Problems::default();
    let Some(tenant) = tenant else {
        problems.add("tenant", "required");
        return problems.into_result(NewTenant {
            display_name: String::new(),
            contract_reference: String::new(),
            home_region: String::new(),
        });
    };
    let display_name = text_1_200(&tenant.display_name, "tenant.display_name", &mut problems);
    let reference = &tenant.contract_reference;
    let reference_ok = (1..=128).contains(&reference.len())
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
    if !reference_ok {
        problems.add(
            "tenant.contract_reference",
            "required, 1-128 characters of [A-Za-z0-9._/-]",
        );
    }
    if !tenant.home_region.is_empty() && tenant.home_region != region {
        problems.add(
            "tenant.home_region",
            "must be empty or this deployment's region (cross-region tenants are not supported)",
        );
    }
    problems.into_result(NewTenant {
        display_name,
        contract_reference: reference.clone(),
        home_region: region.to_owned(),
    })
}

/// The stored spelling of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::TenantAdmin => "TENANT_ADMIN",
        Role::Member => "MEMBER",
        Role::Unspecified => "UNSPECIFIED",
    }
}

pub fn role_from_name(name: &str) -> Option<Role> {
    match name {
        "TENANT_ADMIN" => Some(Role::TenantAdmin),
        "MEMBER" => Some(Role::Member),
        _ => None,
    }
}

/// Roles as given: at least one, each valid, duplicates removed, in a stable order.
pub fn roles(given: &[i32], field: &str, problems: &mut Problems) -> Vec<String> {
    let mut roles = Vec::new();
    for value in given {
        match Role::try_from(*value) {
            Ok(role @ (Role::TenantAdmin | Role::Member)) => roles.push(role_name(role).to_owned()),
            _ => problems.add(field, "each role must be ROLE_TENANT_ADMIN or ROLE_MEMBER"),
        }
    }
    if given.is_empty() {
        problems.add(field, "at least one role is required");
    }
    roles.sort();
    roles.dedup();
    roles
}

/// A checked display name: NFC, 1-200 characters, no control characters.
fn text_1_200(text: &str, field: &str, problems: &mut Problems) -> String {
    let normalised: String = text.nfc().collect();
    let count = normalised.chars().count();
    if count == 0 || count > 200 || normalised.chars().any(char::is_control) {
        problems.add(
            field,
            "required, 1-200 characters without control characters",
        );
    }
    normalised
}

/// An email's lookup form: compared case-insensitively, so hashed lowercased.
pub fn email_key(email: &str) -> String {
    email.to_lowercase()
}

fn email(text: &str, field: &str, problems: &mut Problems) -> String {
    let valid = text.len() <= 254
        && email_address::EmailAddress::parse_with_options(
            text,
            email_address::Options::default().without_display_text(),
        )
        .is_ok_and(|parsed| parsed.domain().contains('.'));
    if !valid {
        problems.add(
            field,
            "required, an email address (RFC 5322 addr-spec, at most 254 characters)",
        );
    }
    text.to_owned()
}

/// E.164 as given, checked against libphonenumber's metadata; empty is allowed (optional).
fn phone(text: &str, field: &str, problems: &mut Problems) -> String {
    if text.is_empty() {
        return String::new();
    }
    let digits = text.strip_prefix('+').unwrap_or_default();
    let shaped = (8..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit());
    let valid = shaped
        && phonenumber::parse(None, text).is_ok_and(|number| {
            phonenumber::is_valid(&number)
                && number.format().mode(phonenumber::Mode::E164).to_string() == text
        });
    if !valid {
        problems.add(
            field,
            "must be a valid telephone number in E.164 form: +, country code, subscriber number",
        );
    }
    text.to_owned()
}

/// A password: 12-128 characters after NFC normalisation, which is what gets hashed.
pub fn password(text: &str, field: &str, problems: &mut Problems) -> String {
    let normalised: String = text.nfc().collect();
    let count = normalised.chars().count();
    if !(12..=128).contains(&count) {
        problems.add(field, "required, 12-128 characters");
    }
    normalised
}

/// How a registration reached us: decided by who calls (Art. 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The portal's sign-up service: deemed consent by use (Art. 5.1).
    SelfService,
    /// A contract party: consent attested (Art. 5.2).
    ContractParty,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SelfService => "SELF",
            Self::ContractParty => "CONTRACT_PARTY",
        }
    }
}

/// A checked RegisterUser request.
#[derive(Debug, Clone)]
pub struct Registration {
    pub pi: Pi,
    pub roles: Vec<String>,
    /// Normalised; SELF only.
    pub password: Option<String>,
    /// CONTRACT_PARTY only.
    pub attestation: Option<Attestation>,
}

/// Checks a registration for `channel`. `attester`, for a TENANT_ADMIN caller, is the name
/// the attestation must carry (their own).
pub fn registration(
    user: Option<&User>,
    password_text: &str,
    attestation: Option<&Attestation>,
    channel: Channel,
    attester: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Registration, ApiError> {
    let mut problems = Problems::default();
    let empty = User::default();
    if user.is_none() {
        problems.add("user", "required");
    }
    let user = user.unwrap_or(&empty);
    let pi = Pi {
        display_name: text_1_200(&user.display_name, "user.display_name", &mut problems),
        email: email(&user.email, "user.email", &mut problems),
        phone_number: phone(&user.phone_number, "user.phone_number", &mut problems),
    };
    let roles = roles(&user.roles, "user.roles", &mut problems);
    let password = match channel {
        Channel::SelfService => {
            if roles.iter().any(|r| r != "MEMBER") {
                problems.add(
                    "user.roles",
                    "a self-registered user may only be ROLE_MEMBER",
                );
            }
            if attestation.is_some() {
                problems.add("attestation", "only for registration by a contract party");
            }
            Some(password(password_text, "password", &mut problems))
        }
        Channel::ContractParty => {
            if !password_text.is_empty() {
                problems.add(
                    "password",
                    "must be empty: the user sets it with ActivateUser",
                );
            }
            if let Some(given) = attestation {
                problems.extend(attestation_problems(
                    "attestation",
                    &given.attested_by,
                    given.attest_time.as_ref(),
                    &given.evidence_uri,
                    now,
                ));
                if let Some(me) = attester
                    && given.attested_by != me
                {
                    problems.add(
                        "attestation.attested_by",
                        "must be the registering admin's own user name",
                    );
                }
            }
            None
        }
    };
    problems.into_result(Registration {
        pi,
        roles,
        password,
        attestation: attestation.cloned(),
    })
}

/// What an UpdateUser changes.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub roles: Option<Vec<String>>,
}

/// The fields an update mask names (AIP-134): explicit paths, `*` for all four, or, when the
/// mask is empty, every one of the four that is non-empty in `user`.
pub fn changes(user: &User, mask: Option<&prost_types::FieldMask>) -> Result<Changes, ApiError> {
    let mut problems = Problems::default();
    let paths: Vec<String> = match mask.map(|m| m.paths.as_slice()) {
        Some(paths) if !paths.is_empty() => paths.to_vec(),
        _ => {
            let mut implied = Vec::new();
            for (path, present) in [
                ("display_name", !user.display_name.is_empty()),
                ("email", !user.email.is_empty()),
                ("phone_number", !user.phone_number.is_empty()),
                ("roles", !user.roles.is_empty()),
            ] {
                if present {
                    implied.push(path.to_owned());
                }
            }
            implied
        }
    };
    let mut changes = Changes::default();
    for path in &paths {
        match path.as_str() {
            "*" => {
                changes.display_name = Some(String::new());
                changes.email = Some(String::new());
                changes.phone_number = Some(String::new());
                changes.roles = Some(Vec::new());
            }
            "display_name" => changes.display_name = Some(String::new()),
            "email" => changes.email = Some(String::new()),
            "phone_number" => changes.phone_number = Some(String::new()),
            "roles" => changes.roles = Some(Vec::new()),
            _ => problems.add(
                "update_mask",
                "only display_name, email, phone_number, roles or * may be updated",
            ),
        }
    }
    if paths.is_empty() {
        problems.add("update_mask", "names no field to update");
    }
    if changes.display_name.is_some() {
        changes.display_name = Some(text_1_200(
            &user.display_name,
            "user.display_name",
            &mut problems,
        ));
    }
    if changes.email.is_some() {
        changes.email = Some(email(&user.email, "user.email", &mut problems));
    }
    if changes.phone_number.is_some() {
        changes.phone_number = Some(phone(
            &user.phone_number,
            "user.phone_number",
            &mut problems,
        ));
    }
    if changes.roles.is_some() {
        changes.roles = Some(roles(&user.roles, "user.roles", &mut problems));
    }
    problems.into_result(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, email: &str, phone: &str) -> User {
        User {
            display_name: name.into(),
            email: email.into(),
            phone_number: phone.into(),
            roles: vec![Role::Member.into()],
            ..User::default()
        }
    }

    fn fields(error: ApiError) -> Vec<String> {
        let status: tonic::Status = error.into();
        let details = tonic_types::StatusExt::get_details_bad_request(&status).unwrap();
        details
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = user("", "not-an-email", "0300000000");
        let error = registration(
            Some(&bad),
            "short",
            None,
            Channel::SelfService,
            None,
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(
            fields(error),
            [
                "user.display_name",
                "user.email",
                "user.phone_number",
                "password"
            ]
        );
    }

    #[test]
    fn phone_numbers_must_be_valid_e164_as_given() {
        let mut problems = Problems::default();
        assert_eq!(phone("+81312345678", "p", &mut problems), "+81312345678");
        assert_eq!(phone("+442079460000", "p", &mut problems), "+442079460000");
        assert!(problems.0.is_empty());
        for bad in ["+81 3 1234 5678", "81312345678", "+1", "+999999999999"] {
            let mut problems = Problems::default();
            phone(bad, "p", &mut problems);
            assert_eq!(problems.0.len(), 1, "{bad} accepted");
        }
    }

    #[test]
    fn names_are_nfc_normalised_before_counting() {
        let mut problems = Problems::default();
        let decomposed = "Jose\u{301}";
        assert_eq!(text_1_200(decomposed, "n", &mut problems), "José");
        text_1_200(&"a".repeat(201), "n", &mut problems);
        text_1_200("tab\there", "n", &mut problems);
        assert_eq!(problems.0.len(), 2);
    }

    #[test]
    fn an_empty_mask_updates_the_fields_given() {
        let given = User {
            email: "new@example.com".into(),
            ..User::default()
        };
        let changes = changes(&given, None).unwrap();
        assert_eq!(changes.email.as_deref(), Some("new@example.com"));
        assert!(changes.display_name.is_none() && changes.roles.is_none());
        let mask = prost_types::FieldMask {
            paths: vec!["state".into()],
        };
        assert_eq!(
            fields(super::changes(&given, Some(&mask)).unwrap_err()),
            ["update_mask"]
        );
    }
}
