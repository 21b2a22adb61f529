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

#[tokio::test]
async fn a_retried_registration_returns_the_first_answer_and_a_changed_one_is_refused() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000010").await;
    let request = registration(&tenant, person(10, &[Role::TenantAdmin]), "contracts/x/s/1");
    let first = suite
        .identity
        .register_user(as_operator(request.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = suite
        .identity
        .register_user(as_operator(request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.user.as_ref().unwrap().name,
        first.user.as_ref().unwrap().name
    );
    assert_eq!(again.activation_secret, first.activation_secret);
    assert_eq!(first.activation_secret.len(), 43);
    let mut changed = request;
    changed.user.as_mut().unwrap().display_name = "Someone Else".into();
    assert_error(
        suite.identity.register_user(as_operator(changed)).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
}

#[tokio::test]
async fn one_account_per_email_compared_case_insensitively() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000011").await;
    self_registered(&mut suite, &tenant, 11).await;
    let mut twin = person(12, &[Role::Member]);
    twin.email = "Person11@Example.com".into();
    let request = portal_proto::identity::v1::RegisterUserRequest {
        request_id: String::new(),
        parent: tenant.name.clone(),
        user: Some(twin),
        password: PASSWORD.into(),
        attestation: None,
    };
    assert_error(
        suite.identity.register_user(as_portal(request)).await,
        Code::AlreadyExists,
        "EMAIL_ALREADY_REGISTERED",
    );
}

#[tokio::test]
async fn every_malformed_field_is_named_and_nothing_is_registered() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000012").await;
    let bad = portal_proto::identity::v1::User {
        display_name: String::new(),
        email: "not an email".into(),
        phone_number: "03-1234-5678".into(),
        roles: vec![],
        ..Default::default()
    };
    let request = portal_proto::identity::v1::RegisterUserRequest {
        request_id: "not-a-uuid".into(),
        parent: tenant.name.clone(),
        user: Some(bad.clone()),
        password: "short".into(),
        attestation: None,
    };
    let status = assert_error(
        suite
            .identity
            .register_user(as_portal(request.clone()))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["request_id"]);
    let request = portal_proto::identity::v1::RegisterUserRequest {
        request_id: String::new(),
        ..request
    };
    let status = assert_error(
        suite.identity.register_user(as_portal(request)).await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(
        violations(&status),
        [
            "user.display_name",
            "user.email",
            "user.phone_number",
            "user.roles",
            "password"
        ]
    );
    // No PI value is quoted back.
    assert!(!status.message().contains("not an email"));
    let listed = suite
        .identity
        .list_users(as_operator(portal_proto::identity::v1::ListUsersRequest {
            parent: tenant.name.clone(),
            show_deleted: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.users.is_empty());
}

#[tokio::test]
async fn each_channel_refuses_the_other_channels_fields() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000013").await;
    let admin = first_admin(&mut suite, &tenant, 13).await;
    // SELF: no attestation, MEMBER only.
    let request = portal_proto::identity::v1::RegisterUserRequest {
        request_id: String::new(),
        parent: tenant.name.clone(),
        user: Some(person(14, &[Role::TenantAdmin])),
        password: PASSWORD.into(),
        attestation: Some(attestation("contracts/x/s/1")),
    };
    let status = assert_error(
        suite.identity.register_user(as_portal(request)).await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["user.roles", "attestation"]);
    // CONTRACT_PARTY: no password; the admin attests in their own name.
    let mut request = registration(
        &tenant,
        person(15, &[Role::Member]),
        "tenants/other/users/x",
    );
    request.password = PASSWORD.into();
    let status = assert_error(
        suite.identity.register_user(as_user(request, &admin)).await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["password", "attestation.attested_by"]);
    // The attestation itself: when and where.
    let mut request = registration(&tenant, person(16, &[Role::Member]), &admin.name);
    let attestation = request.attestation.as_mut().unwrap();
    attestation.attest_time = Some(portal_platform::time::to_timestamp(
        chrono::Utc::now() + chrono::Duration::hours(1),
    ));
    attestation.evidence_uri = "http://insecure.example.com/e".into();
    let status = assert_error(
        suite.identity.register_user(as_user(request, &admin)).await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(
        violations(&status),
        ["attestation.attest_time", "attestation.evidence_uri"]
    );
}

#[tokio::test]
async fn who_may_register_whom() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000014").await;
    let other = create_tenant(&mut suite.identity, "PSC-2026-000015").await;
    let admin = first_admin(&mut suite, &tenant, 17).await;
    let member = colleague(&mut suite, &tenant, &admin, 18).await;
    // A member cannot register anyone.
    let request = registration(&tenant, person(19, &[Role::Member]), &member.name);
    assert_error(
        suite
            .identity
            .register_user(as_user(request, &member))
            .await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );
    // An auditor changes nothing.
    let request = registration(&tenant, person(19, &[Role::Member]), "contracts/x/s/1");
    assert_error(
        suite.identity.register_user(as_auditor(request)).await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );
    // An admin cannot see another tenant, let alone register into it.
    let request = registration(&other, person(19, &[Role::Member]), &admin.name);
    assert_error(
        suite.identity.register_user(as_user(request, &admin)).await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );
    // The operator only bootstraps the first admin.
    let request = registration(&tenant, person(20, &[Role::TenantAdmin]), "contracts/x/s/1");
    assert_error(
        suite.identity.register_user(as_operator(request)).await,
        Code::FailedPrecondition,
        "TENANT_HAS_ADMIN",
    );
    // No such tenant.
    let mut request = registration(&tenant, person(21, &[Role::Member]), "contracts/x/s/1");
    request.parent = "tenants/0190f7a0-0000-7000-8000-0000000000ff".into();
    assert_error(
        suite.identity.register_user(as_operator(request)).await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );
}

#[tokio::test]
async fn registration_fails_closed_while_consent_is_unreachable_and_a_retry_completes_it() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000016").await;
    let request = registration(&tenant, person(22, &[Role::TenantAdmin]), "contracts/x/s/1");
    suite.consent_link.cut();
    let status = assert_error(
        suite
            .identity
            .register_user(as_operator(request.clone()))
            .await,
        Code::Unavailable,
        "DEPENDENCY_UNAVAILABLE",
    );
    assert_eq!(
        tonic_types::StatusExt::get_error_details(&status)
            .error_info()
            .unwrap()
            .metadata
            .get("service")
            .map(String::as_str),
        Some("consent")
    );
    // Nothing usable was left behind: no user listed, and the email is not taken for good.
    let listed = suite
        .identity
        .list_users(as_operator(portal_proto::identity::v1::ListUsersRequest {
            parent: tenant.name.clone(),
            show_deleted: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.users.is_empty());
    suite.consent_link.restore();
    let registered = suite
        .identity
        .register_user(as_operator(request.clone()))
        .await
        .unwrap()
        .into_inner();
    let user = registered.user.clone().unwrap();
    assert_eq!(user.state(), State::PendingActivation);
    // The consent record names the same user, once.
    let records = suite
        .consent
        .list_consent_records(as_operator(
            portal_proto::consent::v1::ListConsentRecordsRequest {
                subject: user.name.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .consent_records;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].basis(),
        portal_proto::consent::v1::Basis::ContractPartyAttestation
    );
    assert_eq!(
        records[0].evidence.as_ref().unwrap().attested_by,
        "contracts/x/s/1"
    );
    // A registration that failed without a request_id does not block the email either.
    let mut fresh = registration(&tenant, person(23, &[Role::Member]), "contracts/x/s/1");
    fresh.request_id = String::new();
    let admin = activate(&mut suite, &registered).await;
    fresh.attestation.as_mut().unwrap().attested_by = admin.name.clone();
    suite.consent_link.cut();
    assert_error(
        suite
            .identity
            .register_user(as_user(fresh.clone(), &admin))
            .await,
        Code::Unavailable,
        "DEPENDENCY_UNAVAILABLE",
    );
    suite.consent_link.restore();
    suite
        .identity
        .register_user(as_user(fresh, &admin))
        .await
        .unwrap();
}

#[tokio::test]
async fn nothing_can_be_registered_before_terms_are_in_force() {
    let mut suite = suite_with(&[]).await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000017").await;
    let request = registration(&tenant, person(24, &[Role::TenantAdmin]), "contracts/x/s/1");
    assert_error(
        suite
            .identity
            .register_user(as_operator(request.clone()))
            .await,
        Code::FailedPrecondition,
        "NO_TERMS_IN_FORCE",
    );
    // The refused registration left nothing: once terms exist, the same email registers.
    publish_terms(&mut suite.consent, 1).await;
    let mut again = request;
    again.request_id = uuid::Uuid::now_v7().to_string();
    suite
        .identity
        .register_user(as_operator(again))
        .await
        .unwrap();
}

#[tokio::test]
async fn activation_needs_the_live_secret_and_a_strong_password() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000018").await;
    let request = registration(&tenant, person(25, &[Role::TenantAdmin]), "contracts/x/s/1");
    let registered = suite
        .identity
        .register_user(as_operator(request))
        .await
        .unwrap()
        .into_inner();
    let activation =
        |secret: &str, password: &str| portal_proto::identity::v1::ActivateUserRequest {
            activation_secret: secret.into(),
            password: password.into(),
        };
    let status = assert_error(
        suite
            .identity
            .activate_user(as_portal(activation(
                &registered.activation_secret,
                "short",
            )))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["password"]);
    assert_error(
        suite
            .identity
            .activate_user(as_portal(activation(
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                PASSWORD,
            )))
            .await,
        Code::NotFound,
        "ACTIVATION_SECRET_NOT_FOUND",
    );
    // Only the portal back end relays activations.
    let user = registered.user.clone().unwrap();
    assert_error(
        suite
            .identity
            .activate_user(as_user(
                activation(&registered.activation_secret, PASSWORD),
                &user,
            ))
            .await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );
    // Pending users cannot sign in.
    assert_error(
        suite
            .identity
            .sign_in(as_portal(sign_in_request("person25@example.com", PASSWORD)))
            .await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    // Consent unreachable: nothing changes.
    suite.consent_link.cut();
    assert_error(
        suite
            .identity
            .activate_user(as_portal(activation(
                &registered.activation_secret,
                PASSWORD,
            )))
            .await,
        Code::Unavailable,
        "DEPENDENCY_UNAVAILABLE",
    );
    suite.consent_link.restore();
    let active = activate(&mut suite, &registered).await;
    assert_eq!(active.state(), State::Active);
    // The first use of the portal recorded deemed consent (Art. 5.1) beside the attestation.
    let records = suite
        .consent
        .list_consent_records(as_operator(
            portal_proto::consent::v1::ListConsentRecordsRequest {
                subject: active.name.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .consent_records;
    let bases: Vec<_> = records.iter().map(|r| r.basis()).collect();
    assert_eq!(
        bases,
        [
            portal_proto::consent::v1::Basis::ContractPartyAttestation,
            portal_proto::consent::v1::Basis::DeemedByUse
        ]
    );
    assert_error(
        suite
            .identity
            .activate_user(as_portal(activation(
                &registered.activation_secret,
                PASSWORD,
            )))
            .await,
        Code::FailedPrecondition,
        "ALREADY_ACTIVATED",
    );
}

#[tokio::test]
async fn an_expired_activation_secret_no_longer_works() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000019").await;
    let request = registration(&tenant, person(26, &[Role::TenantAdmin]), "contracts/x/s/1");
    let registered = suite
        .identity
        .register_user(as_operator(request))
        .await
        .unwrap()
        .into_inner();
    let expire = registered.activation_expire_time.unwrap();
    let seven_days = 7 * 24 * 3600;
    let now = chrono::Utc::now().timestamp();
    assert!((expire.seconds - now - seven_days).abs() < 60);
    // Let the week pass.
    let admin = suite.db.admin_pool().await.unwrap();
    sqlx::query("UPDATE identity.users SET activation_expire_time = now() - interval '1 second'")
        .execute(&admin)
        .await
        .unwrap();
    assert_error(
        suite
            .identity
            .activate_user(as_portal(portal_proto::identity::v1::ActivateUserRequest {
                activation_secret: registered.activation_secret.clone(),
                password: PASSWORD.into(),
            }))
            .await,
        Code::FailedPrecondition,
        "ACTIVATION_SECRET_EXPIRED",
    );
}

#[tokio::test]
async fn the_database_holds_no_plaintext_personal_information() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000020").await;
    let admin = first_admin(&mut suite, &tenant, 27).await;
    let member = colleague(&mut suite, &tenant, &admin, 28).await;
    suite
        .identity
        .sign_in(as_portal(sign_in_request(&member.email, PASSWORD)))
        .await
        .unwrap();
    let pool = suite.db.admin_pool().await.unwrap();
    // Every row of every table of the identity schema, as text.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'identity'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.contains(&"users".to_owned()));
    let mut dump = String::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM identity.{table} t"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        dump.push_str(&rows.join("\n"));
    }
    assert!(dump.contains(&member.name.rsplit('/').next().unwrap().to_owned()));
    for user in [&admin, &member] {
        for pi in [&user.display_name, &user.email, &user.phone_number] {
            assert!(!pi.is_empty());
            assert!(
                !dump.contains(pi.as_str()),
                "plaintext PI in the identity schema"
            );
            assert!(!dump.to_lowercase().contains(&pi.to_lowercase()));
        }
    }
    // The raw bytes too (bytea renders as hex).
    for user in [&admin, &member] {
        let hex: String = user.email.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(
            !dump.contains(&hex),
            "plaintext email bytes in the identity schema"
        );
    }
}

#[tokio::test]
async fn concurrent_bootstraps_register_one_first_admin() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000021").await;
    let attempts = (0..4).map(|n| {
        let mut identity = suite.identity.clone();
        let request = registration(
            &tenant,
            person(30 + n, &[Role::TenantAdmin]),
            "contracts/x/s/1",
        );
        async move { identity.register_user(as_operator(request)).await }
    });
    let results = futures::future::join_all(attempts).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for refused in results.into_iter().filter_map(Result::err) {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_eq!(reason(&refused), "TENANT_HAS_ADMIN");
    }
}
