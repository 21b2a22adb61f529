//! Article 5 over real gRPC and PostgreSQL: the append-only consent ledger, each subject's
//! current consent, and receipts anyone can verify offline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use chrono::{Duration, Utc};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use portal_platform::auth::Kind as TokenKind;
use portal_platform::time::to_timestamp;
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::{
    Attestation, Basis, ConsentRecord, GetConsentStateRequest, ListConsentRecordsRequest,
    ListSigningKeysRequest, RecordConsentRequest, Scope,
};
use portal_testkit::keys::{self, authorized};
use portal_testkit::{TestDb, TestService};

mod common;
use common::*;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const OTHER_TENANT: &str = "tenants/0190f7a0-0000-7000-8000-00000000000f";
const RECIPIENT: &str = "entities/0190f7a0-0000-7000-8000-0000000000e1";

fn deemed(subject: &str, request_id: &str) -> RecordConsentRequest {
    RecordConsentRequest {
        request_id: request_id.to_owned(),
        subject: subject.to_owned(),
        tenant: TENANT.to_owned(),
        basis: Basis::DeemedByUse.into(),
        ..RecordConsentRequest::default()
    }
}

fn explicit(subject: &str, recipient: &str) -> RecordConsentRequest {
    RecordConsentRequest {
        subject: subject.to_owned(),
        basis: Basis::Explicit.into(),
        scopes: vec![Scope::ThirdPartyDisclosure.into()],
        recipient_entity: recipient.to_owned(),
        ..RecordConsentRequest::default()
    }
}

async fn ledger_of(
    client: &mut ConsentServiceClient<Channel>,
    subject: &str,
) -> Vec<ConsentRecord> {
    let request = ListConsentRecordsRequest {
        subject: subject.to_owned(),
        ..ListConsentRecordsRequest::default()
    };
    client
        .list_consent_records(as_auditor(request))
        .await
        .unwrap()
        .into_inner()
        .consent_records
}

fn fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .unwrap()
        .reason
        .clone()
}

#[tokio::test]
async fn with_no_terms_in_force_nothing_can_be_consented_to() {
    let mut consent = consent().await;
    let refused = consent
        .client
        .record_consent(as_identity(deemed(&user(1), "")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "NO_TERMS_IN_FORCE");
}

#[tokio::test]
async fn deemed_consent_is_recorded_once_per_terms_version_and_again_after_a_revision() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    let subject = user(1);
    let first = consent
        .client
        .record_consent(as_identity(deemed(
            &subject,
            "0190f7a0-3333-7000-8000-000000000001",
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.terms_version, 1);
    // A second sign-in under the same version, with another request id, adds nothing.
    let again = consent
        .client
        .record_consent(as_identity(deemed(
            &subject,
            "0190f7a0-3333-7000-8000-000000000002",
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(ledger_of(&mut consent.client, &subject).await.len(), 1);

    // A material revision: the next use records consent to version 2; until then it is pending.
    publish_terms(&mut consent.client, 2, true).await;
    let state = consent
        .client
        .get_consent_state(as_auditor(GetConsentStateRequest {
            subject: subject.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(state.active && state.reconsent_pending && state.material_change_pending);
    assert_eq!(
        (state.consented_terms_version, state.current_terms_version),
        (1, 2)
    );

    let revised = consent
        .client
        .record_consent(as_identity(deemed(&subject, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revised.terms_version, 2);
    assert!(revised.sequence > first.sequence);
    let state = consent
        .client
        .get_consent_state(as_auditor(GetConsentStateRequest {
            subject: subject.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!state.reconsent_pending);
    assert_eq!(state.consented_terms_version, 2);
    assert_eq!(state.last_record, Some(revised));
}

#[tokio::test]
async fn a_contract_party_registration_needs_the_attestation() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    let mut request = deemed(&user(2), "");
    request.basis = Basis::ContractPartyAttestation.into();
    let refused = consent
        .client
        .record_consent(as_identity(request.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(fields(&refused), ["evidence"]);

    let evidence = Attestation {
        attested_by: user(9),
        attest_time: Some(to_timestamp(Utc::now() - Duration::hours(1))),
        evidence_uri: "https://contracts.example.com/evidence/42".into(),
    };
    request.evidence = Some(evidence.clone());
    let recorded = consent
        .client
        .record_consent(as_identity(request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recorded.basis(), Basis::ContractPartyAttestation);
    assert_eq!(recorded.evidence, Some(evidence));
    assert_eq!(recorded.recorded_by, "services/identity");

    // The user's own first use (activation) is deemed consent in its own right (Art. 5.1),
    // recorded beside the attestation, and then once per terms version.
    let used = consent
        .client
        .record_consent(as_identity(deemed(&user(2), "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(used.basis(), Basis::DeemedByUse);
    assert_ne!(used.name, recorded.name);
    let again = consent
        .client
        .record_consent(as_identity(deemed(&user(2), "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.name, used.name);
    assert_eq!(ledger_of(&mut consent.client, &user(2)).await.len(), 2);
}

#[tokio::test]
async fn only_identity_records_deemed_consent_and_only_the_subject_gives_explicit_consent() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    let subject = user(3);

    let by_user = consent
        .client
        .record_consent(as_user(deemed(&subject, ""), &subject, TENANT, "MEMBER"))
        .await
        .unwrap_err();
    assert_eq!(by_user.code(), Code::PermissionDenied);
    let approval = keys::token(TokenKind::Service, "services/approval", None, &[]);
    let by_other_service = consent
        .client
        .record_consent(authorized(deemed(&subject, ""), &approval))
        .await
        .unwrap_err();
    assert_eq!(by_other_service.code(), Code::PermissionDenied);

    let colleague = consent
        .client
        .record_consent(as_user(
            explicit(&subject, RECIPIENT),
            &user(4),
            TENANT,
            "TENANT_ADMIN",
        ))
        .await
        .unwrap_err();
    assert_eq!(colleague.code(), Code::PermissionDenied);
    let stranger = format!("{OTHER_TENANT}/users/0190f7a0-0000-7000-8000-000000000001");
    let other_tenant = consent
        .client
        .record_consent(as_user(
            explicit(&subject, RECIPIENT),
            &stranger,
            OTHER_TENANT,
            "TENANT_ADMIN",
        ))
        .await
        .unwrap_err();
    assert_eq!(other_tenant.code(), Code::NotFound);

    let given = consent
        .client
        .record_consent(as_user(
            explicit(&subject, RECIPIENT),
            &subject,
            TENANT,
            "MEMBER",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(given.recipient_entity, RECIPIENT);
    let state = consent
        .client
        .get_consent_state(as_user(
            GetConsentStateRequest {
                subject: subject.clone(),
            },
            &subject,
            TENANT,
            "MEMBER",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !state.active,
        "an explicit consent is not the Art. 5.1 consent"
    );
    assert_eq!(state.explicit_recipients.len(), 1);
    assert_eq!(state.explicit_recipients[0].consent_record, given.name);
    assert_eq!(state.active_scopes, [Scope::ThirdPartyDisclosure as i32]);
}

#[tokio::test]
async fn each_malformed_consent_is_invalid_argument_naming_its_field() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    let subject = user(5);
    let cases = [
        (
            "subject",
            RecordConsentRequest {
                subject: "users/5".into(),
                ..deemed(&subject, "")
            },
        ),
        (
            "tenant",
            RecordConsentRequest {
                tenant: OTHER_TENANT.into(),
                ..deemed(&subject, "")
            },
        ),
        (
            "basis",
            RecordConsentRequest {
                basis: 0,
                ..deemed(&subject, "")
            },
        ),
        (
            "scopes",
            RecordConsentRequest {
                scopes: vec![Scope::ThirdPartyDisclosure.into()],
                ..deemed(&subject, "")
            },
        ),
        (
            "recipient_entity",
            RecordConsentRequest {
                recipient_entity: RECIPIENT.into(),
                ..deemed(&subject, "")
            },
        ),
        ("recipient_entity", explicit(&subject, "")),
        (
            "scopes",
            RecordConsentRequest {
                scopes: vec![Scope::JointUse.into()],
                ..explicit(&subject, RECIPIENT)
            },
        ),
        ("request_id", deemed(&subject, "not-a-uuid")),
    ];
    for (field, request) in cases {
        let refused = consent
            .client
            .record_consent(as_identity(request))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{field}: {refused:?}"
        );
        assert!(
            fields(&refused).contains(&field.to_owned()),
            "{field}: {refused:?}"
        );
    }
    let unknown = consent
        .client
        .get_consent_state(as_auditor(GetConsentStateRequest { subject: user(77) }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "a subject with no entries");
}

#[tokio::test]
async fn a_receipt_verifies_offline_with_the_published_key_and_a_changed_byte_does_not() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    let record = consent
        .client
        .record_consent(as_identity(deemed(&user(6), "")))
        .await
        .unwrap()
        .into_inner();
    let receipt = record.receipt.clone().unwrap();
    let keys = consent
        .client
        .list_signing_keys(as_auditor(ListSigningKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .signing_keys;
    let key = keys.iter().find(|k| k.key_id == receipt.key_id).unwrap();
    let key = VerifyingKey::from_bytes(&key.public_key.clone().try_into().unwrap()).unwrap();
    let signature = Signature::from_slice(&receipt.signature).unwrap();
    assert!(key.verify(&receipt.payload, &signature).is_ok());
    // The signed bytes are the record itself.
    let signed = ConsentRecord::decode(receipt.payload.as_slice()).unwrap();
    assert_eq!(
        ConsentRecord {
            receipt: None,
            ..record
        },
        signed
    );
    let mut altered = receipt.payload.clone();
    altered[10] ^= 0x01;
    assert!(key.verify(&altered, &signature).is_err());

    // The ISO/IEC TS 27560 view is signed by the same key, and names what the standard asks.
    let iso_signature = Signature::from_slice(&receipt.iso27560_signature).unwrap();
    assert!(key.verify(&receipt.iso27560, &iso_signature).is_ok());
    let iso: serde_json::Value = serde_json::from_slice(&receipt.iso27560).unwrap();
    assert_eq!(iso["record_id"], signed.name.as_str());
    assert_eq!(iso["pii_principal_id"], signed.subject.as_str());
    assert_eq!(iso["event_type"], "consent_given");
    assert_eq!(iso["pii_controllers"][0]["country"], "JP");
    assert_eq!(iso["privacy_notices"]["terms_version"], 1);
    let purposes: Vec<&str> = iso["purposes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["purpose"].as_str().unwrap())
        .collect();
    assert_eq!(purposes, ["JOINT_USE", "CROSS_BORDER_TRANSFER"]);
    for purpose in iso["purposes"].as_array().unwrap() {
        for field in [
            "legal_basis",
            "pii_categories",
            "storage_locations",
            "jurisdiction",
            "recipients",
            "withdrawal_method",
        ] {
            assert!(!purpose[field].is_null(), "{field}");
        }
    }
    let mut altered = receipt.iso27560.clone();
    altered[5] ^= 0x01;
    assert!(key.verify(&altered, &iso_signature).is_err());
}

#[tokio::test]
async fn the_services_own_role_cannot_change_or_delete_ledger_entries() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    consent
        .client
        .record_consent(as_identity(deemed(&user(7), "")))
        .await
        .unwrap();
    let app = consent
        .db
        .app_pool(consent_service::SERVICE.schema)
        .unwrap();
    for statement in [
        "UPDATE consent.ledger SET terms_version = 99",
        "DELETE FROM consent.ledger",
        "TRUNCATE consent.ledger",
    ] {
        let refused = sqlx::query(statement).execute(&app).await.unwrap_err();
        let code = refused.as_database_error().and_then(|e| e.code()).unwrap();
        assert_eq!(code, "42501", "{statement}");
    }
}

#[tokio::test]
async fn the_ledger_is_listed_oldest_first_in_pages_for_whoever_may_read_it() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    let subject = user(8);
    consent
        .client
        .record_consent(as_identity(deemed(&subject, "")))
        .await
        .unwrap();
    for n in 1..=3 {
        let recipient = format!("entities/0190f7a0-0000-7000-8000-0000000000f{n}");
        consent
            .client
            .record_consent(as_user(
                explicit(&subject, &recipient),
                &subject,
                TENANT,
                "MEMBER",
            ))
            .await
            .unwrap();
    }
    let mut sequences = Vec::new();
    let mut token = String::new();
    loop {
        let request = ListConsentRecordsRequest {
            subject: subject.clone(),
            page_size: 3,
            page_token: token.clone(),
        };
        let page = consent
            .client
            .list_consent_records(as_user(request, &user(99), TENANT, "TENANT_ADMIN"))
            .await
            .unwrap()
            .into_inner();
        sequences.extend(page.consent_records.iter().map(|r| r.sequence));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(sequences.len(), 4);
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");

    let tampered = ListConsentRecordsRequest {
        subject: subject.clone(),
        page_size: 3,
        page_token: "AAAAAAAAAAAAAAAAAAAAAA".into(),
    };
    let refused = consent
        .client
        .list_consent_records(as_auditor(tampered))
        .await
        .unwrap_err();
    assert_eq!(fields(&refused), ["page_token"]);
    let whole_ledger_by_user = consent
        .client
        .list_consent_records(as_user(
            ListConsentRecordsRequest::default(),
            &subject,
            TENANT,
            "MEMBER",
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(&whole_ledger_by_user), ["subject"]);
    let colleague = consent
        .client
        .list_consent_records(as_user(
            ListConsentRecordsRequest {
                subject: subject.clone(),
                ..ListConsentRecordsRequest::default()
            },
            &user(98),
            TENANT,
            "MEMBER",
        ))
        .await
        .unwrap_err();
    assert_eq!(colleague.code(), Code::PermissionDenied);

    // Another tenant's admin: the subject does not exist for them.
    let outsider = format!("{OTHER_TENANT}/users/0190f7a0-0000-7000-8000-000000000001");
    for status in [
        consent
            .client
            .list_consent_records(as_user(
                ListConsentRecordsRequest {
                    subject: subject.clone(),
                    ..ListConsentRecordsRequest::default()
                },
                &outsider,
                OTHER_TENANT,
                "TENANT_ADMIN",
            ))
            .await
            .unwrap_err(),
        consent
            .client
            .get_consent_state(as_user(
                GetConsentStateRequest {
                    subject: subject.clone(),
                },
                &outsider,
                OTHER_TENANT,
                "TENANT_ADMIN",
            ))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
}

#[tokio::test]
async fn receipts_signed_before_a_key_rotation_stay_verifiable() {
    let db = TestDb::new(&[consent_service::SERVICE.schema])
        .await
        .unwrap();
    let retired = portal_platform::config::RetiredKeySettings {
        key_id: "consent-2025".to_owned(),
        public_key: portal_platform::auth::keys::generate_key().1,
    };
    let service = TestService::start_configured(&consent_service::SERVICE, db.url(), &[], |s| {
        s.auth.retired_signing_keys.push(retired);
    })
    .await
    .unwrap();
    let mut client = ConsentServiceClient::new(service.channel().await.unwrap());
    let keys = client
        .list_signing_keys(as_auditor(ListSigningKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .signing_keys;
    let ids: Vec<&str> = keys.iter().map(|k| k.key_id.as_str()).collect();
    assert_eq!(
        ids,
        [keys::TEST_KEY_ID, "consent-2025"],
        "current first, then retired"
    );
    assert!(
        keys.iter()
            .all(|k| k.algorithm == "Ed25519" && k.public_key.len() == 32)
    );
}
