//! Consent receipts in the vocabulary of ISO/IEC TS 27560: what a regulator or the user can
//! read and verify without knowing this system's record format. Built from the ledger entry
//! alone (and the deployment's operating entity), serialised with a fixed field order so the
//! signed bytes are reproducible.

use portal_platform::config::Deployment;
use portal_proto::consent::v1::{Action, Basis, ConsentRecord, Scope};
use serde::Serialize;

const SCHEMA: &str = "ISO/IEC TS 27560:2023 consent record information structure";

/// The personal information of Article 2, as categories (never values).
const PI_CATEGORIES: [&str; 3] = ["email address", "telephone number", "name"];

#[derive(Debug, Serialize)]
struct Receipt<'a> {
    schema: &'static str,
    record_id: &'a str,
    pii_principal_id: &'a str,
    pii_controllers: [Controller<'a>; 1],
    event_type: &'static str,
    event_time: String,
    purposes: Vec<Purpose<'a>>,
    privacy_notices: Notices,
}

#[derive(Debug, Serialize)]
struct Controller<'a> {
    name: &'a str,
    country: &'a str,
}

#[derive(Debug, Serialize)]
struct Purpose<'a> {
    purpose: &'static str,
    description: &'static str,
    legal_basis: &'static str,
    pii_categories: [&'static str; 3],
    storage_locations: [&'a str; 1],
    jurisdiction: &'a str,
    recipients: Vec<String>,
    withdrawal_method: &'static str,
}

#[derive(Debug, Serialize)]
struct Notices {
    terms_version: i64,
    privacy_policy_version: i64,
    precedence: &'static str,
}

/// The ISO/IEC TS 27560 receipt of `record`, as the bytes to sign.
pub fn iso27560(record: &ConsentRecord, deployment: &Deployment) -> Vec<u8> {
    let event_time = record
        .record_time
        .as_ref()
        .and_then(|t| {
            u32::try_from(t.nanos)
                .ok()
                .and_then(|n| chrono::DateTime::from_timestamp(t.seconds, n))
        })
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    let purposes = record
        .scopes
        .iter()
        .filter_map(|s| Scope::try_from(*s).ok())
        .map(|scope| purpose(scope, record, deployment))
        .collect();
    let receipt = Receipt {
        schema: SCHEMA,
        record_id: &record.name,
        pii_principal_id: &record.subject,
        pii_controllers: [Controller {
            name: &deployment.operating_entity,
            country: &deployment.country,
        }],
        event_type: if record.action() == Action::Withdrawn {
            "consent_withdrawn"
        } else {
            "consent_given"
        },
        event_time,
        purposes,
        privacy_notices: Notices {
            terms_version: record.terms_version,
            privacy_policy_version: record.privacy_policy_version,
            precedence: "Article 6: the Terms take precedence over the Privacy Policy",
        },
    };
    // Serialising this plain structure cannot fail.
    serde_json::to_vec(&receipt).unwrap_or_default()
}

fn purpose<'a>(scope: Scope, record: &ConsentRecord, deployment: &'a Deployment) -> Purpose<'a> {
    let (purpose, description, recipients, withdrawal_method) = match scope {
        Scope::CrossBorderTransfer => (
            "CROSS_BORDER_TRANSFER",
            "Transfer to affiliates in other countries where Our Group provides the portal (Art. 3.2)",
            vec!["Our Group affiliates abroad".to_owned()],
            "delete the portal registration (Art. 5.3)",
        ),
        Scope::ThirdPartyDisclosure => (
            "THIRD_PARTY_DISCLOSURE",
            "Disclosure to one named third party outside Our Group (Art. 4)",
            vec![record.recipient_entity.clone()],
            "withdraw this consent (WithdrawConsent), or delete the portal registration",
        ),
        _ => (
            "JOINT_USE",
            "Shared and joint use within Our Group so the user can use the portal (Art. 3.1)",
            vec!["Our Group (company, branches and affiliates)".to_owned()],
            "delete the portal registration (Art. 5.3)",
        ),
    };
    let legal_basis = match Basis::try_from(record.basis) {
        Ok(Basis::DeemedByUse) => "consent deemed by use of the portal (Art. 5.1)",
        Ok(Basis::ContractPartyAttestation) => {
            "consent attested by the Party to Portal Contract (Art. 5.2)"
        }
        Ok(Basis::Explicit) => "explicit consent (Art. 4)",
        _ => "consent withdrawn (Art. 5.3)",
    };
    Purpose {
        purpose,
        description,
        legal_basis,
        pii_categories: PI_CATEGORIES,
        storage_locations: [&deployment.region],
        jurisdiction: &deployment.country,
        recipients,
        withdrawal_method,
    }
}
