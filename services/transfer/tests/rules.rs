//! The decision table of the issue (Art. 3, 4, 5.3), every row allowed and denied, over real
//! gRPC with the real consent and identity services: what each record says (decision, legal
//! basis or denial reason, cross-border flag, both countries and regions, terms version, the
//! consent entry relied on, the caller), failing closed when consent cannot answer, and no
//! window after a deletion.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use portal_platform::auth::Kind as TokenKind;
use portal_platform::time::{from_timestamp, to_timestamp};
use portal_proto::consent::v1::policy_document::Kind as DocumentKind;
use portal_proto::consent::v1::{
    Basis, PolicyDocument, PublishDocumentVersionRequest, RecordConsentRequest, Scope,
    WithdrawConsentRequest,
};
use portal_proto::identity::v1::user::Role;
use portal_proto::identity::v1::{
    ActivateUserRequest, Attestation, CreateTenantRequest, DeleteUserRequest, RegisterUserRequest,
    Tenant, User,
};
use portal_proto::transfer::v1::group_entity::Kind;
use portal_proto::transfer::v1::{
    AuthorizeTransferRequest, DataCategory, Decision, DenialReason, GetTransferRecordRequest,
    GroupEntity, LegalBasis, ListTransferRecordsRequest, Purpose, TransferRecord,
    UpdateEntityRequest,
};
use portal_testkit::eventually;
use portal_testkit::keys::{self, authorized};
use prost_types::FieldMask;
use tonic::Code;

/// The caller `as_mover` speaks as.
const MOVER: &str = "services/portal-backend";

/// The user's deemed consent (Art. 5.1), as identity records it: the ledger entry's name.
async fn deemed(suite: &mut Suite, subject: &str) -> String {
    let request = RecordConsentRequest {
        subject: subject.to_owned(),
        tenant: TENANT.to_owned(),
        basis: Basis::DeemedByUse.into(),
        ..RecordConsentRequest::default()
    };
    suite
        .consent
        .record_consent(as_identity(request))
        .await
        .unwrap()
        .into_inner()
        .name
}

/// The subject's own USER token (they alone give and withdraw explicit consent).
fn as_subject<T>(message: T, subject: &str) -> tonic::Request<T> {
    let token = keys::token(TokenKind::User, subject, Some(TENANT), &["MEMBER"]);
    authorized(message, &token)
}

/// The subject's explicit consent to disclosure to `recipient` (Art. 4): the entry's name.
async fn explicit(suite: &mut Suite, subject: &str, recipient: &GroupEntity) -> String {
    let request = RecordConsentRequest {
        subject: subject.to_owned(),
        tenant: TENANT.to_owned(),
        basis: Basis::Explicit.into(),
        scopes: vec![Scope::ThirdPartyDisclosure.into()],
        recipient_entity: recipient.name.clone(),
        ..RecordConsentRequest::default()
    };
    suite
        .consent
        .record_consent(as_subject(request, subject))
        .await
        .unwrap()
        .into_inner()
        .name
}

/// The subject withdraws their explicit consent for `recipient`: the withdrawal entry's name.
async fn withdraw(suite: &mut Suite, subject: &str, recipient: &GroupEntity) -> String {
    let request = WithdrawConsentRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        subject: subject.to_owned(),
        scopes: vec![Scope::ThirdPartyDisclosure.into()],
        recipient_entity: recipient.name.clone(),
        reason: "no longer wanted".to_owned(),
    };
    suite
        .consent
        .withdraw_consent(as_subject(request, subject))
        .await
        .unwrap()
        .into_inner()
        .name
}

/// `request` citing a legal requirement (Art. 4).
fn citing(request: AuthorizeTransferRequest, citation: &str) -> AuthorizeTransferRequest {
    AuthorizeTransferRequest {
        legal_reference: citation.to_owned(),
        ..request
    }
}

fn days_ago(days: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::days(days)
}

fn subcontractor(legal_name: &str, security_level: i32, reviewed: DateTime<Utc>) -> GroupEntity {
    GroupEntity {
        security_level,
        last_review_time: Some(to_timestamp(reviewed)),
        ..entity(Kind::Subcontractor, legal_name, "JP", "jp")
    }
}

/// The Tokyo operator every transfer below starts from.
async fn operator(suite: &mut Suite) -> GroupEntity {
    register(
        suite,
        entity(Kind::Operator, "Example Operator K.K.", "JP", "jp"),
    )
    .await
}

async fn log_size(suite: &mut Suite) -> usize {
    let request = ListTransferRecordsRequest {
        page_size: 1000,
        ..ListTransferRecordsRequest::default()
    };
    suite
        .transfer
        .list_transfer_records(as_auditor(request))
        .await
        .unwrap()
        .into_inner()
        .transfer_records
        .len()
}

/// What every record of a transfer between two registered entities says about them, the
/// request and the caller.
fn assert_recorded(record: &TransferRecord, subject: &str, from: &GroupEntity, to: &GroupEntity) {
    assert!(record.name.starts_with("transferRecords/"), "{record:?}");
    assert_eq!(record.subject, subject);
    assert_eq!(record.source_entity, from.name);
    assert_eq!(record.destination_entity, to.name);
    assert_eq!(record.source_country, from.country_code);
    assert_eq!(record.destination_country, to.country_code);
    assert_eq!(record.source_region, from.region);
    assert_eq!(record.destination_region, to.region);
    assert_eq!(record.cross_border, from.country_code != to.country_code);
    assert_eq!(record.requested_by, MOVER);
    assert!(!record.request_id.is_empty());
    assert!(record.record_time.is_some());
    assert_eq!(record.leaf_hash.len(), 32);
    // The request sent EMAIL, NAME: recorded ascending.
    assert_eq!(
        record.data_categories,
        [
            i32::from(DataCategory::Name),
            i32::from(DataCategory::Email)
        ]
    );
    assert_eq!(record.purpose(), Purpose::PortalService);
}

fn assert_allowed(record: &TransferRecord, basis: LegalBasis) {
    assert_eq!(record.decision(), Decision::Allowed, "{record:?}");
    assert_eq!(record.legal_basis(), basis, "{record:?}");
    assert_eq!(
        record.denial_reason(),
        DenialReason::Unspecified,
        "{record:?}"
    );
}

fn assert_denied(record: &TransferRecord, reason: DenialReason) {
    assert_eq!(record.decision(), Decision::Denied, "{record:?}");
    assert_eq!(record.denial_reason(), reason, "{record:?}");
    assert_eq!(record.legal_basis(), LegalBasis::Unspecified, "{record:?}");
}

/// A denial that did not rest on consent: no terms version, no ledger entry.
fn assert_no_consent_relied_on(record: &TransferRecord) {
    assert_eq!(record.terms_version, 0, "{record:?}");
    assert!(record.consent_record.is_empty(), "{record:?}");
}

#[tokio::test]
async fn joint_use_consent_covers_the_operator_and_its_branches_in_the_same_country() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let osaka = register(
        &mut suite,
        entity(
            Kind::Branch,
            "Example Operator K.K. Osaka Branch",
            "JP",
            "jp",
        ),
    )
    .await;
    let subject = user(1);

    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &osaka)).await;
    assert_denied(&denied, DenialReason::NoConsent);
    assert_recorded(&denied, &subject, &tokyo, &osaka);
    assert!(!denied.cross_border);
    assert!(denied.consent_record.is_empty());

    let consent = deemed(&mut suite, &subject).await;
    for (from, to) in [(&tokyo, &osaka), (&osaka, &tokyo)] {
        let allowed = authorize(&mut suite, transfer_request(&subject, from, to)).await;
        assert_allowed(&allowed, LegalBasis::JointUse);
        assert_recorded(&allowed, &subject, from, to);
        assert!(!allowed.cross_border);
        assert_eq!(allowed.terms_version, 1);
        assert_eq!(allowed.consent_record, consent);
    }
}

#[tokio::test]
async fn joint_use_consent_covers_an_affiliate_in_the_same_country() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let affiliate = register(
        &mut suite,
        entity(Kind::Affiliate, "Example Systems K.K.", "JP", "jp"),
    )
    .await;
    let subject = user(2);

    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &affiliate)).await;
    assert_denied(&denied, DenialReason::NoConsent);
    assert_recorded(&denied, &subject, &tokyo, &affiliate);

    let consent = deemed(&mut suite, &subject).await;
    let allowed = authorize(&mut suite, transfer_request(&subject, &tokyo, &affiliate)).await;
    assert_allowed(&allowed, LegalBasis::JointUse);
    assert_recorded(&allowed, &subject, &tokyo, &affiliate);
    assert!(!allowed.cross_border);
    assert_eq!(allowed.terms_version, 1);
    assert_eq!(allowed.consent_record, consent);
}

#[tokio::test]
async fn the_group_abroad_is_an_intra_group_transfer_only_with_cross_border_consent() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let singapore = register(
        &mut suite,
        entity(Kind::Affiliate, "Example Affiliate Pte. Ltd.", "SG", "sg"),
    )
    .await;
    let london = register(
        &mut suite,
        entity(
            Kind::Branch,
            "Example Operator K.K. London Branch",
            "GB",
            "uk",
        ),
    )
    .await;
    let new_york = register(
        &mut suite,
        entity(Kind::Operator, "Example Operator Inc.", "US", "us"),
    )
    .await;
    let subject = user(3);

    for to in [&singapore, &london, &new_york] {
        let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, to)).await;
        assert_denied(&denied, DenialReason::NoConsent);
        assert_recorded(&denied, &subject, &tokyo, to);
        assert!(denied.cross_border);
        assert!(denied.consent_record.is_empty());
    }

    // Deemed consent covers joint use and transfer abroad (Art. 5.1).
    let consent = deemed(&mut suite, &subject).await;
    for to in [&singapore, &london, &new_york] {
        let allowed = authorize(&mut suite, transfer_request(&subject, &tokyo, to)).await;
        assert_allowed(&allowed, LegalBasis::IntraGroupTransfer);
        assert_recorded(&allowed, &subject, &tokyo, to);
        assert!(allowed.cross_border);
        assert_eq!(allowed.source_country, "JP");
        assert_eq!(allowed.terms_version, 1);
        assert_eq!(allowed.consent_record, consent);
    }
    // And back from abroad.
    let home = authorize(&mut suite, transfer_request(&subject, &singapore, &tokyo)).await;
    assert_allowed(&home, LegalBasis::IntraGroupTransfer);
    assert_recorded(&home, &subject, &singapore, &tokyo);
}

#[tokio::test]
async fn a_subcontractor_at_the_baseline_with_a_current_review_is_subcontracting() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    // 60 is the default baseline: at it is enough.
    let processor = register(
        &mut suite,
        subcontractor("Example Processing K.K.", 60, days_ago(30)),
    )
    .await;
    let abroad = register(
        &mut suite,
        GroupEntity {
            country_code: "US".into(),
            region: "us".into(),
            ..subcontractor("Example Processing Inc.", 95, days_ago(1))
        },
    )
    .await;
    let subject = user(4);

    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &processor)).await;
    assert_denied(&denied, DenialReason::NoConsent);
    assert_recorded(&denied, &subject, &tokyo, &processor);

    let consent = deemed(&mut suite, &subject).await;
    for to in [&processor, &abroad] {
        let allowed = authorize(&mut suite, transfer_request(&subject, &tokyo, to)).await;
        assert_allowed(&allowed, LegalBasis::Subcontracting);
        assert_recorded(&allowed, &subject, &tokyo, to);
        assert_eq!(allowed.terms_version, 1);
        assert_eq!(allowed.consent_record, consent);
    }
}

#[tokio::test]
async fn a_subcontractor_below_the_baseline_is_below_standard_even_with_consent() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let weak = register(
        &mut suite,
        subcontractor("Example Cheap Storage K.K.", 59, days_ago(1)),
    )
    .await;
    let subject = user(5);
    deemed(&mut suite, &subject).await;

    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &weak)).await;
    assert_denied(&denied, DenialReason::SubcontractorBelowStandard);
    assert_recorded(&denied, &subject, &tokyo, &weak);
    assert_no_consent_relied_on(&denied);
}

#[tokio::test]
async fn a_subcontractor_whose_review_lapsed_is_refused_until_a_fresh_review_is_recorded() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let lapsed = register(
        &mut suite,
        subcontractor("Example Processing K.K.", 90, days_ago(400)),
    )
    .await;
    let subject = user(6);
    deemed(&mut suite, &subject).await;

    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &lapsed)).await;
    assert_denied(&denied, DenialReason::SupervisionLapsed);
    assert_recorded(&denied, &subject, &tokyo, &lapsed);
    assert_no_consent_relied_on(&denied);

    let review = UpdateEntityRequest {
        entity: Some(GroupEntity {
            name: lapsed.name.clone(),
            last_review_time: Some(to_timestamp(Utc::now())),
            ..GroupEntity::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["last_review_time".into()],
        }),
    };
    let reviewed = suite
        .transfer
        .update_entity(as_operator(review))
        .await
        .unwrap()
        .into_inner();
    assert!(
        from_timestamp(reviewed.review_due_time.as_ref().unwrap(), "due").unwrap() > Utc::now()
    );

    let allowed = authorize(&mut suite, transfer_request(&subject, &tokyo, &lapsed)).await;
    assert_allowed(&allowed, LegalBasis::Subcontracting);
    assert_eq!(allowed.terms_version, 1);
    assert!(!allowed.consent_record.is_empty());

    // The record already logged keeps what it was decided with.
    let earlier = suite
        .transfer
        .get_transfer_record(as_auditor(GetTransferRecordRequest {
            name: denied.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(earlier, denied);
}

#[tokio::test]
async fn the_baseline_and_the_review_validity_are_deployment_settings() {
    let mut suite = suite_with(&[
        ("PORTAL_TRANSFER__BASELINE_SECURITY_LEVEL", "80"),
        ("PORTAL_TRANSFER__REVIEW_VALIDITY_DAYS", "30"),
    ])
    .await;
    let tokyo = operator(&mut suite).await;
    let below = register(&mut suite, subcontractor("Below K.K.", 79, days_ago(1))).await;
    let stale = register(&mut suite, subcontractor("Stale K.K.", 90, days_ago(31))).await;
    let current = register(&mut suite, subcontractor("Current K.K.", 80, days_ago(29))).await;
    let last_review = from_timestamp(stale.last_review_time.as_ref().unwrap(), "last").unwrap();
    assert_eq!(
        stale.review_due_time,
        Some(to_timestamp(last_review + chrono::Duration::days(30)))
    );
    let subject = user(7);
    deemed(&mut suite, &subject).await;

    let record = authorize(&mut suite, transfer_request(&subject, &tokyo, &below)).await;
    assert_denied(&record, DenialReason::SubcontractorBelowStandard);
    let record = authorize(&mut suite, transfer_request(&subject, &tokyo, &stale)).await;
    assert_denied(&record, DenialReason::SupervisionLapsed);
    let record = authorize(&mut suite, transfer_request(&subject, &tokyo, &current)).await;
    assert_allowed(&record, LegalBasis::Subcontracting);
}

#[tokio::test]
async fn a_third_party_without_explicit_consent_for_it_is_refused() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let partner = register(
        &mut suite,
        entity(Kind::ThirdParty, "Example Partner Co., Ltd.", "JP", "jp"),
    )
    .await;
    let other = register(
        &mut suite,
        entity(Kind::ThirdParty, "Example Other Co., Ltd.", "JP", "jp"),
    )
    .await;
    let subject = user(8);

    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &partner)).await;
    assert_denied(&denied, DenialReason::ThirdPartyWithoutConsent);
    assert_recorded(&denied, &subject, &tokyo, &partner);
    assert!(denied.consent_record.is_empty());

    // Neither the Art. 5.1 consent nor explicit consent for another recipient covers it.
    deemed(&mut suite, &subject).await;
    explicit(&mut suite, &subject, &other).await;
    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &partner)).await;
    assert_denied(&denied, DenialReason::ThirdPartyWithoutConsent);
    assert!(denied.consent_record.is_empty());
}

#[tokio::test]
async fn a_third_party_with_explicit_consent_is_user_consent_until_it_is_withdrawn() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let partner = register(
        &mut suite,
        entity(Kind::ThirdParty, "Example Partner Inc.", "US", "us"),
    )
    .await;
    let subject = user(9);
    deemed(&mut suite, &subject).await;

    let consent = explicit(&mut suite, &subject, &partner).await;
    let allowed = authorize(&mut suite, transfer_request(&subject, &tokyo, &partner)).await;
    assert_allowed(&allowed, LegalBasis::UserConsent);
    assert_recorded(&allowed, &subject, &tokyo, &partner);
    assert!(allowed.cross_border);
    assert_eq!(allowed.terms_version, 1);
    assert_eq!(allowed.consent_record, consent);

    let withdrawal = withdraw(&mut suite, &subject, &partner).await;
    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &partner)).await;
    assert_denied(&denied, DenialReason::ConsentWithdrawn);
    assert_recorded(&denied, &subject, &tokyo, &partner);
    assert_eq!(denied.terms_version, 1);
    assert_eq!(denied.consent_record, withdrawal);
}

#[tokio::test]
async fn a_cited_legal_requirement_allows_a_third_party_even_after_withdrawal() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let authority = register(
        &mut suite,
        entity(Kind::ThirdParty, "Example Regulator", "JP", "jp"),
    )
    .await;
    let citation =
        "Act on the Protection of Personal Information, Art. 27(1)(i); order ref 2026-0001";

    // Without any consent on record.
    let never = user(10);
    let request = citing(transfer_request(&never, &tokyo, &authority), citation);
    let allowed = authorize(&mut suite, request).await;
    assert_allowed(&allowed, LegalBasis::LegalRequirement);
    assert_eq!(allowed.legal_reference, citation);
    assert_no_consent_relied_on(&allowed);

    // After the subject withdrew their explicit consent for it.
    let subject = user(11);
    explicit(&mut suite, &subject, &authority).await;
    withdraw(&mut suite, &subject, &authority).await;
    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &authority)).await;
    assert_denied(&denied, DenialReason::ConsentWithdrawn);
    let request = citing(transfer_request(&subject, &tokyo, &authority), citation);
    let allowed = authorize(&mut suite, request).await;
    assert_allowed(&allowed, LegalBasis::LegalRequirement);
    assert_recorded(&allowed, &subject, &tokyo, &authority);
    assert_eq!(allowed.legal_reference, citation);
    assert_no_consent_relied_on(&allowed);
}

#[tokio::test]
async fn a_cited_legal_requirement_has_no_effect_inside_the_group_but_is_recorded() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let singapore = register(
        &mut suite,
        entity(Kind::Affiliate, "Example Affiliate Pte. Ltd.", "SG", "sg"),
    )
    .await;
    let processor = register(
        &mut suite,
        subcontractor("Example Processing K.K.", 90, days_ago(1)),
    )
    .await;
    let subject = user(15);
    for to in [&singapore, &processor] {
        let record = authorize(
            &mut suite,
            citing(
                transfer_request(&subject, &tokyo, to),
                "order ref 2026-0004",
            ),
        )
        .await;
        assert_denied(&record, DenialReason::NoConsent);
        assert_eq!(record.legal_reference, "order ref 2026-0004");
    }
    deemed(&mut suite, &subject).await;
    let record = authorize(
        &mut suite,
        citing(
            transfer_request(&subject, &tokyo, &singapore),
            "order ref 2026-0004",
        ),
    )
    .await;
    assert_allowed(&record, LegalBasis::IntraGroupTransfer);
    assert_eq!(record.legal_reference, "order ref 2026-0004");
    assert_eq!(record.terms_version, 1);
}

#[tokio::test]
async fn the_record_names_the_terms_version_of_the_consent_relied_on() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let osaka = register(
        &mut suite,
        entity(
            Kind::Branch,
            "Example Operator K.K. Osaka Branch",
            "JP",
            "jp",
        ),
    )
    .await;
    let subject = user(16);
    let under_v1 = deemed(&mut suite, &subject).await;

    // Terms v2 comes into force: the consent to v1 stays the basis until the next use.
    let revision = PolicyDocument {
        kind: DocumentKind::Terms.into(),
        version: 2,
        label: "v2".into(),
        uri: "https://portal.example.com/terms/2".into(),
        content_sha256: format!("{:064x}", 2),
        effective_time: Some(to_timestamp(Utc::now())),
        change_summary: "Revised".into(),
        material_change: true,
        ..PolicyDocument::default()
    };
    suite
        .consent
        .publish_document_version(as_operator(PublishDocumentVersionRequest {
            request_id: String::new(),
            document: Some(revision),
        }))
        .await
        .unwrap();
    let record = authorize(&mut suite, transfer_request(&subject, &tokyo, &osaka)).await;
    assert_allowed(&record, LegalBasis::JointUse);
    assert_eq!(record.terms_version, 1);
    assert_eq!(record.consent_record, under_v1);

    let under_v2 = deemed(&mut suite, &subject).await;
    assert_ne!(under_v2, under_v1);
    let record = authorize(&mut suite, transfer_request(&subject, &tokyo, &osaka)).await;
    assert_allowed(&record, LegalBasis::JointUse);
    assert_eq!(record.terms_version, 2);
    assert_eq!(record.consent_record, under_v2);
}

#[tokio::test]
async fn an_unregistered_entity_is_recorded_as_denied_unknown_entity() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let subject = user(12);
    deemed(&mut suite, &subject).await;
    let unregistered = GroupEntity {
        name: "entities/0190f7a0-0000-7000-8000-0000000000ee".into(),
        ..GroupEntity::default()
    };

    let also_unregistered = GroupEntity {
        name: "entities/0190f7a0-0000-7000-8000-0000000000ef".into(),
        ..GroupEntity::default()
    };
    for (from, to) in [
        (&tokyo, &unregistered),
        (&unregistered, &tokyo),
        (&unregistered, &also_unregistered),
    ] {
        let denied = authorize(&mut suite, transfer_request(&subject, from, to)).await;
        assert_denied(&denied, DenialReason::UnknownEntity);
        assert_eq!(denied.subject, subject);
        assert_eq!(denied.source_entity, from.name);
        assert_eq!(denied.destination_entity, to.name);
        assert_eq!(denied.requested_by, MOVER);
        assert!(!denied.cross_border);
        assert_no_consent_relied_on(&denied);
        // The unregistered side has no region nor country; the registered side's are recorded.
        assert_eq!(denied.source_region, from.region, "{denied:?}");
        assert_eq!(denied.source_country, from.country_code, "{denied:?}");
        assert_eq!(denied.destination_region, to.region, "{denied:?}");
        assert_eq!(denied.destination_country, to.country_code, "{denied:?}");
    }
    assert_eq!(log_size(&mut suite).await, 3);
}

#[tokio::test]
async fn consent_unreachable_fails_closed_records_nothing_and_a_retry_decides_once() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let singapore = register(
        &mut suite,
        entity(Kind::Affiliate, "Example Affiliate Pte. Ltd.", "SG", "sg"),
    )
    .await;
    let subject = user(13);
    deemed(&mut suite, &subject).await;
    let before = log_size(&mut suite).await;
    let request = transfer_request(&subject, &tokyo, &singapore);

    suite.consent_link.cut();
    let status = assert_error(
        suite
            .transfer
            .authorize_transfer(as_mover(request.clone()))
            .await,
        Code::Unavailable,
        "DEPENDENCY_UNAVAILABLE",
    );
    let info = tonic_types::StatusExt::get_error_details(&status)
        .error_info()
        .cloned()
        .unwrap();
    assert_eq!(info.domain, "portal.transfer");
    assert_eq!(
        info.metadata.get("service").map(String::as_str),
        Some("consent")
    );
    assert_eq!(log_size(&mut suite).await, before);

    suite.consent_link.restore();
    let decided = authorize(&mut suite, request.clone()).await;
    assert_allowed(&decided, LegalBasis::IntraGroupTransfer);
    assert_eq!(decided.request_id, request.request_id);
    assert_eq!(log_size(&mut suite).await, before + 1);
    let again = authorize(&mut suite, request).await;
    assert_eq!(again, decided);
    assert_eq!(log_size(&mut suite).await, before + 1);
}

/// A Portal User as identity holds them, and a USER token of theirs.
struct RealUser {
    user: User,
    token: String,
}

/// A tenant's first admin: bootstrapped by the operator with an attestation, then activated
/// by the portal back end with the secret (activation records their deemed consent).
async fn real_user(suite: &mut Suite, n: u32) -> RealUser {
    let tenant = suite
        .identity
        .create_tenant(as_operator(CreateTenantRequest {
            request_id: String::new(),
            tenant: Some(Tenant {
                display_name: "Example Corporation".into(),
                contract_reference: format!("PSC-2026-{n:06}"),
                ..Tenant::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    let registration = RegisterUserRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        parent: tenant.name.clone(),
        user: Some(User {
            display_name: format!("Example Person {n}"),
            email: format!("person{n}@example.com"),
            phone_number: format!("+8131234{n:04}"),
            roles: vec![Role::TenantAdmin.into()],
            ..User::default()
        }),
        password: String::new(),
        attestation: Some(Attestation {
            attested_by: "contracts/PSC-1/signatories/1".into(),
            attest_time: Some(to_timestamp(Utc::now())),
            evidence_uri: "https://contracts.example.com/evidence/8c1f".into(),
        }),
    };
    let registered = suite
        .identity
        .register_user(as_operator(registration))
        .await
        .unwrap()
        .into_inner();
    let portal = keys::token(TokenKind::Service, "services/portal-web", None, &[]);
    let user = suite
        .identity
        .activate_user(authorized(
            ActivateUserRequest {
                activation_secret: registered.activation_secret,
                password: "correct horse battery staple".into(),
            },
            &portal,
        ))
        .await
        .unwrap()
        .into_inner();
    let token = keys::token(
        TokenKind::User,
        &user.name,
        Some(&user.tenant),
        &["TENANT_ADMIN"],
    );
    RealUser { user, token }
}

#[tokio::test]
async fn a_deleted_subject_is_refused_from_the_moment_delete_user_returns() {
    let mut suite = suite().await;
    let tokyo = operator(&mut suite).await;
    let singapore = register(
        &mut suite,
        entity(Kind::Affiliate, "Example Affiliate Pte. Ltd.", "SG", "sg"),
    )
    .await;
    let authority = register(
        &mut suite,
        entity(Kind::ThirdParty, "Example Regulator", "JP", "jp"),
    )
    .await;
    let weak = register(&mut suite, subcontractor("Weak K.K.", 10, days_ago(1))).await;
    let real = real_user(&mut suite, 14).await;
    let subject = real.user.name.clone();

    let allowed = authorize(&mut suite, transfer_request(&subject, &tokyo, &singapore)).await;
    assert_allowed(&allowed, LegalBasis::IntraGroupTransfer);
    assert!(!allowed.consent_record.is_empty());

    suite
        .identity
        .delete_user(authorized(
            DeleteUserRequest {
                name: subject.clone(),
                etag: String::new(),
                request_id: uuid::Uuid::now_v7().to_string(),
            },
            &real.token,
        ))
        .await
        .unwrap();
    // The very next call, no delay.
    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &singapore)).await;
    assert_denied(&denied, DenialReason::SubjectDeleted);
    assert_recorded(&denied, &subject, &tokyo, &singapore);
    // Always: a cited legal requirement does not revive them, nor does a subcontractor's
    // refusal come first.
    let cited = citing(
        transfer_request(&subject, &tokyo, &authority),
        "order ref 2026-0002",
    );
    let denied = authorize(&mut suite, cited).await;
    assert_denied(&denied, DenialReason::SubjectDeleted);
    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &weak)).await;
    assert_denied(&denied, DenialReason::SubjectDeleted);

    // Once identity's DELETED event is applied here, still refused.
    let admin = suite.db.admin_pool().await.unwrap();
    eventually(
        Duration::from_secs(20),
        "the DELETED event applied",
        || async {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM transfer.deleted_subjects")
                .fetch_one(&admin)
                .await
                .ok()?;
            (count == 1).then_some(())
        },
    )
    .await
    .unwrap();
    let recorded: String = sqlx::query_scalar("SELECT subject FROM transfer.deleted_subjects")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(recorded, subject);
    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &singapore)).await;
    assert_denied(&denied, DenialReason::SubjectDeleted);
    let cited = citing(
        transfer_request(&subject, &tokyo, &authority),
        "order ref 2026-0003",
    );
    let denied = authorize(&mut suite, cited).await;
    assert_denied(&denied, DenialReason::SubjectDeleted);
}
