//! CheckConsent and WithdrawConsent over real gRPC and PostgreSQL: every row of the rule table
//! in `docs/consent.md`, and the two forms of withdrawal (Art. 4, 5.3).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use portal_proto::consent::v1::consent_decision::Reason;
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::{
    Basis, CheckConsentRequest, ConsentDecision, ConsentRecord, RecordConsentRequest, Scope,
    WithdrawConsentRequest,
};

mod common;
use common::*;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

const RECIPIENT: &str = "entities/0190f7a0-0000-7000-8000-0000000000e1";
const OTHER_RECIPIENT: &str = "entities/0190f7a0-0000-7000-8000-0000000000e2";

fn as_subject<T>(message: T, subject: &str) -> Request<T> {
    as_user(message, subject, TENANT, "MEMBER")
}

async fn deemed(client: &mut ConsentServiceClient<Channel>, subject: &str) -> ConsentRecord {
    let request = RecordConsentRequest {
        subject: subject.to_owned(),
        basis: Basis::DeemedByUse.into(),
        ..RecordConsentRequest::default()
    };
    client
        .record_consent(as_identity(request))
        .await
        .unwrap()
        .into_inner()
}

async fn explicit(client: &mut ConsentServiceClient<Channel>, subject: &str) -> ConsentRecord {
    let request = RecordConsentRequest {
        subject: subject.to_owned(),
        basis: Basis::Explicit.into(),
        scopes: vec![Scope::ThirdPartyDisclosure.into()],
        recipient_entity: RECIPIENT.to_owned(),
        ..RecordConsentRequest::default()
    };
    client
        .record_consent(as_subject(request, subject))
        .await
        .unwrap()
        .into_inner()
}

fn withdraw_explicit(subject: &str, recipient: &str) -> WithdrawConsentRequest {
    WithdrawConsentRequest {
        subject: subject.to_owned(),
        scopes: vec![Scope::ThirdPartyDisclosure.into()],
        recipient_entity: recipient.to_owned(),
        reason: "no longer wanted".into(),
        ..WithdrawConsentRequest::default()
    }
}

fn withdraw_everything(subject: &str) -> WithdrawConsentRequest {
    WithdrawConsentRequest {
        subject: subject.to_owned(),
        scopes: vec![
            Scope::JointUse.into(),
            Scope::CrossBorderTransfer.into(),
            Scope::ThirdPartyDisclosure.into(),
        ],
        reason: "user registration deleted (Art. 5.3)".into(),
        ..WithdrawConsentRequest::default()
    }
}

async fn check(
    client: &mut ConsentServiceClient<Channel>,
    subject: &str,
    scope: Scope,
    recipient: &str,
) -> ConsentDecision {
    let request = CheckConsentRequest {
        subject: subject.to_owned(),
        scope: scope.into(),
        recipient_entity: recipient.to_owned(),
        destination_country: if scope == Scope::CrossBorderTransfer {
            "SG".into()
        } else {
            String::new()
        },
    };
    client
        .check_consent(as_transfer(request))
        .await
        .unwrap()
        .into_inner()
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
async fn without_terms_in_force_every_use_is_denied() {
    let mut consent = consent().await;
    let decision = check(&mut consent.client, &user(1), Scope::JointUse, "").await;
    assert!(!decision.allowed);
    assert_eq!(decision.reason(), Reason::NoTermsInForce);
}

#[tokio::test]
async fn joint_use_and_cross_border_transfer_need_the_article_5_1_consent() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    let subject = user(2);
    let before = check(&mut consent.client, &subject, Scope::JointUse, "").await;
    assert_eq!(
        (before.allowed, before.reason()),
        (false, Reason::NoConsent)
    );

    let given = deemed(&mut consent.client, &subject).await;
    for scope in [Scope::JointUse, Scope::CrossBorderTransfer] {
        let decision = check(&mut consent.client, &subject, scope, "").await;
        assert_eq!(
            (decision.allowed, decision.reason()),
            (true, Reason::ConsentActive)
        );
        assert_eq!(decision.consent_record, given.name, "the entry relied on");
        assert_eq!(decision.terms_version, 1);
    }
    // Art. 5.1 consent does not cover disclosure outside the group (Art. 4).
    let third = check(
        &mut consent.client,
        &subject,
        Scope::ThirdPartyDisclosure,
        RECIPIENT,
    )
    .await;
    assert_eq!(
        (third.allowed, third.reason()),
        (false, Reason::NoExplicitConsentForRecipient)
    );
}

#[tokio::test]
async fn disclosure_needs_explicit_consent_for_that_recipient_until_it_is_withdrawn() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    let subject = user(3);
    deemed(&mut consent.client, &subject).await;
    let given = explicit(&mut consent.client, &subject).await;

    let allowed = check(
        &mut consent.client,
        &subject,
        Scope::ThirdPartyDisclosure,
        RECIPIENT,
    )
    .await;
    assert_eq!(
        (allowed.allowed, allowed.reason()),
        (true, Reason::ExplicitConsent)
    );
    assert_eq!(allowed.consent_record, given.name);
    let other = check(
        &mut consent.client,
        &subject,
        Scope::ThirdPartyDisclosure,
        OTHER_RECIPIENT,
    )
    .await;
    assert_eq!(
        (other.allowed, other.reason()),
        (false, Reason::NoExplicitConsentForRecipient)
    );

    let withdrawal = consent
        .client
        .withdraw_consent(as_subject(withdraw_explicit(&subject, RECIPIENT), &subject))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(withdrawal.recipient_entity, RECIPIENT);
    assert!(!withdrawal.full_withdrawal);
    let denied = check(
        &mut consent.client,
        &subject,
        Scope::ThirdPartyDisclosure,
        RECIPIENT,
    )
    .await;
    assert_eq!(
        (denied.allowed, denied.reason()),
        (false, Reason::ExplicitConsentWithdrawn)
    );
    assert_eq!(
        denied.consent_record, withdrawal.name,
        "the withdrawal relied on"
    );
    // Withdrawing one explicit consent leaves the Art. 5.1 consent in force.
    let joint = check(&mut consent.client, &subject, Scope::JointUse, "").await;
    assert!(joint.allowed);

    let again = consent
        .client
        .withdraw_consent(as_subject(withdraw_explicit(&subject, RECIPIENT), &subject))
        .await
        .unwrap_err();
    assert_eq!(
        (again.code(), reason(&again).as_str()),
        (Code::FailedPrecondition, "NOT_CONSENTED")
    );
}

#[tokio::test]
async fn after_a_full_withdrawal_everything_is_denied_for_good() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    let subject = user(4);
    deemed(&mut consent.client, &subject).await;
    explicit(&mut consent.client, &subject).await;

    let by_user = consent
        .client
        .withdraw_consent(as_subject(withdraw_everything(&subject), &subject))
        .await
        .unwrap_err();
    assert_eq!(
        by_user.code(),
        Code::PermissionDenied,
        "only identity, at deletion"
    );

    let full = consent
        .client
        .withdraw_consent(as_identity(withdraw_everything(&subject)))
        .await
        .unwrap()
        .into_inner();
    assert!(full.full_withdrawal);
    let repeat = consent
        .client
        .withdraw_consent(as_identity(withdraw_everything(&subject)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(repeat, full, "a repeat returns the first");

    for (scope, recipient) in [
        (Scope::JointUse, ""),
        (Scope::CrossBorderTransfer, ""),
        (Scope::ThirdPartyDisclosure, RECIPIENT),
    ] {
        let decision = check(&mut consent.client, &subject, scope, recipient).await;
        assert_eq!(
            (decision.allowed, decision.reason()),
            (false, Reason::ConsentWithdrawn)
        );
        assert_eq!(decision.consent_record, full.name);
    }
    let request = RecordConsentRequest {
        subject: subject.clone(),
        basis: Basis::DeemedByUse.into(),
        ..RecordConsentRequest::default()
    };
    let refused = consent
        .client
        .record_consent(as_identity(request))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "SUBJECT_WITHDRAWN");
}

#[tokio::test]
async fn a_user_withdraws_the_article_5_1_consent_only_by_deleting_the_registration() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    let subject = user(5);
    deemed(&mut consent.client, &subject).await;
    let request = WithdrawConsentRequest {
        subject: subject.clone(),
        scopes: vec![Scope::JointUse.into()],
        ..WithdrawConsentRequest::default()
    };
    let refused = consent
        .client
        .withdraw_consent(as_subject(request, &subject))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "WITHDRAWAL_REQUIRES_DELETION");
}

#[tokio::test]
async fn malformed_checks_are_invalid_argument_and_users_may_not_check() {
    let mut consent = consent().await;
    publish_terms(&mut consent.client, 1, false).await;
    let subject = user(6);
    let cases = [
        (
            "scope",
            CheckConsentRequest {
                subject: subject.clone(),
                ..CheckConsentRequest::default()
            },
        ),
        (
            "subject",
            CheckConsentRequest {
                subject: "nobody".into(),
                scope: Scope::JointUse.into(),
                ..CheckConsentRequest::default()
            },
        ),
        (
            "recipient_entity",
            CheckConsentRequest {
                subject: subject.clone(),
                scope: Scope::ThirdPartyDisclosure.into(),
                ..CheckConsentRequest::default()
            },
        ),
        (
            "destination_country",
            CheckConsentRequest {
                subject: subject.clone(),
                scope: Scope::CrossBorderTransfer.into(),
                ..CheckConsentRequest::default()
            },
        ),
        (
            "destination_country",
            CheckConsentRequest {
                subject: subject.clone(),
                scope: Scope::CrossBorderTransfer.into(),
                destination_country: "Singapore".into(),
                ..CheckConsentRequest::default()
            },
        ),
    ];
    for (field, request) in cases {
        let refused = consent
            .client
            .check_consent(as_transfer(request))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        let violations = refused.get_error_details().bad_request().cloned().unwrap();
        assert!(
            violations.field_violations.iter().any(|v| v.field == field),
            "{field}"
        );
    }
    let request = CheckConsentRequest {
        subject: subject.clone(),
        scope: Scope::JointUse.into(),
        ..CheckConsentRequest::default()
    };
    let by_user = consent
        .client
        .check_consent(as_subject(request, &subject))
        .await
        .unwrap_err();
    assert_eq!(by_user.code(), Code::PermissionDenied);
}
