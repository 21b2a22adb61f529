//! Every call but health and reflection needs a valid token (`API.md`): without one, or with
//! an expired, forged, untrusted or wrong-audience one, the answer is UNAUTHENTICATED with a
//! reason a caller can act on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use portal_platform::auth::Kind;
use portal_proto::identity::v1::GetTenantRequest;
use portal_proto::identity::v1::identity_service_client::IdentityServiceClient;
use portal_testkit::keys::{self, operator_token, signer};
use portal_testkit::{TestDb, TestService};
use portal_tests::all_schemas;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

async fn get_tenant(service: &TestService, token: Option<&str>) -> tonic::Status {
    let mut client = IdentityServiceClient::new(service.channel().await.unwrap());
    let mut request = tonic::Request::new(GetTenantRequest {
        name: "tenants/0190f7a0-0000-7000-8000-000000000000".to_owned(),
    });
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    client.get_tenant(request).await.unwrap_err()
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
async fn bad_credentials_are_unauthenticated_and_a_valid_token_reaches_the_handler() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let service = TestService::start(&identity_service::SERVICE, db.url())
        .await
        .unwrap();

    let missing = get_tenant(&service, None).await;
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(reason(&missing), "TOKEN_MISSING");

    let (expired, _) = signer().mint(Kind::Operator, "operators/test", None, &[], -1);
    let status = get_tenant(&service, Some(&expired)).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_EXPIRED");

    let (forged, _) = keys::stranger().mint(Kind::Operator, "operators/test", None, &[], 300);
    let status = get_tenant(&service, Some(&forged)).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_INVALID");

    let elsewhere = portal_testkit::keys::token_for_audience("portal/us");
    let status = get_tenant(&service, Some(&elsewhere)).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_WRONG_AUDIENCE");

    // A valid token gets past authentication: the handler answers (not yet implemented).
    let reached = get_tenant(&service, Some(&operator_token())).await;
    assert_ne!(reached.code(), Code::Unauthenticated, "{reached:?}");
}

#[tokio::test]
async fn health_needs_no_token() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let service = TestService::start(&consent_service::SERVICE, db.url())
        .await
        .unwrap();
    let mut health = HealthClient::new(service.channel().await.unwrap());
    let answer = health.check(HealthCheckRequest::default()).await;
    assert!(answer.is_ok(), "{answer:?}");
}
