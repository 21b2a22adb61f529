//! Registration (Art. 2, 5.1, 5.2): two channels, attestation, activation, and fail-closed
//! consent.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::*;
use portal_proto::identity::v1::user::{AcquisitionChannel, Role, State};
use tonic::Code;

#[tokio::test]
async fn a_contract_party_registers_a_colleague_who_activates_and_signs_in() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000001").await;
    let admin = first_admin(&mut suite, &tenant, 1).await;
    assert_eq!(admin.state(), State::Active);
    let colleague = colleague(&mut suite, &tenant, &admin, 2).await;
    assert_eq!(colleague.state(), State::Active);
    assert_eq!(
        colleague.acquisition_channel(),
        AcquisitionChannel::ContractParty
    );
    assert_eq!(colleague.email, "person2@example.com");
    let token = suite
        .identity
        .sign_in(as_portal(sign_in_request("PERSON2@example.com", PASSWORD)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(token.user, colleague.name);
    assert_eq!(token.token_type, "Bearer");
}

#[tokio::test]
async fn self_registration_is_active_at_once_and_only_as_member() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000002").await;
    let user = self_registered(&mut suite, &tenant, 3).await;
    assert_eq!(user.state(), State::Active);
    assert_eq!(user.acquisition_channel(), AcquisitionChannel::Self_);
    assert_eq!(user.roles, [Role::Member as i32]);
}

#[tokio::test]
async fn a_contract_party_registration_without_attestation_is_refused_under_article_5_2() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000003").await;
    let mut request = registration(&tenant, person(4, &[Role::TenantAdmin]), "x");
    request.attestation = None;
    let status = assert_error(
        suite.identity.register_user(as_operator(request)).await,
        Code::FailedPrecondition,
        "ATTESTATION_REQUIRED",
    );
    assert!(status.message().contains("5.2"));
}
