//! Sign-in (Art. 5.1, 7): one answer for every bad credential, lockout, deemed consent to the
//! terms in force before any token, and tokens other services can verify.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::*;
use portal_proto::consent::v1::GetConsentStateRequest;
use portal_proto::identity::v1::{GetUserRequest, ListSigningKeysRequest};
use tonic::Code;

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000100").await;
    let user = self_registered(&mut suite, &tenant, 100).await;
    let wrong = assert_error(
        suite
            .identity
            .sign_in(as_portal(sign_in_request(
                &user.email,
                "not the password at all",
            )))
            .await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let unknown = assert_error(
        suite
            .identity
            .sign_in(as_portal(sign_in_request("nobody@example.com", PASSWORD)))
            .await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_eq!(wrong.message(), unknown.message());
    assert!(!wrong.message().contains(&user.email));
}

#[tokio::test]
async fn only_the_portal_back_end_signs_users_in() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000101").await;
    let user = self_registered(&mut suite, &tenant, 101).await;
    assert_error(
        suite
            .identity
            .sign_in(as_user(sign_in_request(&user.email, PASSWORD), &user))
            .await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );
    let status = assert_error(
        suite
            .identity
            .sign_in(as_portal(sign_in_request("", "")))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["email", "password"]);
}

#[tokio::test]
async fn repeated_failures_lock_the_account_even_against_the_right_password() {
    let mut suite = suite_with(&[("PORTAL_IDENTITY__SIGN_IN_MAX_FAILURES", "3")]).await;
    publish_terms(&mut suite.consent, 1).await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000102").await;
    let user = self_registered(&mut suite, &tenant, 102).await;
    for _ in 0..3 {
        assert_error(
            suite
                .identity
                .sign_in(as_portal(sign_in_request(
                    &user.email,
                    "wrong password here",
                )))
                .await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    assert_error(
        suite
            .identity
            .sign_in(as_portal(sign_in_request(&user.email, PASSWORD)))
            .await,
        Code::ResourceExhausted,
        "TOO_MANY_ATTEMPTS",
    );
    // Unknown emails lock the same way, so a lock does not reveal an account.
    for _ in 0..3 {
        assert_error(
            suite
                .identity
                .sign_in(as_portal(sign_in_request("ghost@example.com", PASSWORD)))
                .await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    assert_error(
        suite
            .identity
            .sign_in(as_portal(sign_in_request("ghost@example.com", PASSWORD)))
            .await,
        Code::ResourceExhausted,
        "TOO_MANY_ATTEMPTS",
    );
    // Once the lock has passed, the right password works again.
    let pool = suite.db.admin_pool().await.unwrap();
    sqlx::query("UPDATE identity.sign_in_failures SET locked_until = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    suite
        .identity
        .sign_in(as_portal(sign_in_request(&user.email, PASSWORD)))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_token_is_short_lived_verifiable_and_works_at_identity() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000103").await;
    let user = self_registered(&mut suite, &tenant, 103).await;
    let token = suite
        .identity
        .sign_in(as_portal(sign_in_request(&user.email, PASSWORD)))
        .await
        .unwrap()
        .into_inner();
    let lifetime = token.expire_time.unwrap().seconds - chrono::Utc::now().timestamp();
    assert!(lifetime > 0 && lifetime <= 15 * 60, "lifetime {lifetime}s");
    // Its header names a key that ListSigningKeys publishes.
    let header = token.access_token.split('.').next().unwrap();
    let header =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    let keys = suite
        .identity
        .list_signing_keys(as_portal(ListSigningKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .signing_keys;
    assert!(
        keys.iter()
            .any(|k| k.key_id == header["kid"] && k.public_key.len() == 32)
    );
    let me = suite
        .identity
        .get_user(portal_testkit::keys::authorized(
            GetUserRequest {
                name: user.name.clone(),
            },
            &token.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.email, user.email);
}

#[tokio::test]
async fn the_first_sign_in_under_revised_terms_records_consent_to_them() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000104").await;
    let user = self_registered(&mut suite, &tenant, 104).await;
    let state = |suite: &mut Suite| {
        let mut consent = suite.consent.clone();
        let subject = user.name.clone();
        async move {
            consent
                .get_consent_state(as_operator(GetConsentStateRequest { subject }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert_eq!(state(&mut suite).await.consented_terms_version, 1);
    publish_terms(&mut suite.consent, 2).await;
    assert!(state(&mut suite).await.reconsent_pending);
    suite
        .identity
        .sign_in(as_portal(sign_in_request(&user.email, PASSWORD)))
        .await
        .unwrap();
    let after = state(&mut suite).await;
    assert_eq!(after.consented_terms_version, 2);
    assert!(!after.reconsent_pending);
}

#[tokio::test]
async fn no_token_is_issued_while_consent_cannot_be_recorded() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000105").await;
    let user = self_registered(&mut suite, &tenant, 105).await;
    suite.consent_link.cut();
    assert_error(
        suite
            .identity
            .sign_in(as_portal(sign_in_request(&user.email, PASSWORD)))
            .await,
        Code::Unavailable,
        "DEPENDENCY_UNAVAILABLE",
    );
    suite.consent_link.restore();
    suite
        .identity
        .sign_in(as_portal(sign_in_request(&user.email, PASSWORD)))
        .await
        .unwrap();
}
