//! Services can require mutual TLS: a peer with a certificate from the deployment's CA calls
//! through; a client without one, or with one from another CA, does not get in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use portal_platform::client::{OnBehalfOf, Outgoing, ServiceToken};
use portal_proto::identity::v1::GetTenantRequest;
use portal_proto::identity::v1::identity_service_client::IdentityServiceClient;
use portal_testkit::pki::TestPki;
use portal_testkit::{TestDb, TestService, keys};
use portal_tests::all_schemas;
use tonic::Code;

async fn start_over_mtls(db: &TestDb, pki: &TestPki) -> TestService {
    let tls = pki.service();
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().unwrap().to_string_lossy().into_owned();
    let settings = [
        ("PORTAL_TLS__CERT_FILE", path(&tls.cert_file)),
        ("PORTAL_TLS__KEY_FILE", path(&tls.key_file)),
        ("PORTAL_TLS__CLIENT_CA_FILE", path(&tls.client_ca_file)),
        ("PORTAL_TLS__CA_FILE", path(&tls.ca_file)),
    ];
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestService::start_with(&identity_service::SERVICE, db.url(), &settings)
        .await
        .unwrap()
}

async fn get_tenant(outgoing: &Outgoing, service: &TestService) -> tonic::Status {
    let uri = format!("https://localhost:{}", service.addr().port());
    let channel = outgoing.channel(&uri, OnBehalfOf::Service).unwrap();
    let request = GetTenantRequest {
        name: "tenants/0190f7a0-0000-7000-8000-000000000000".to_owned(),
    };
    IdentityServiceClient::new(channel)
        .get_tenant(request)
        .await
        .unwrap_err()
}

/// Whether the call got through TLS and authentication to the handler (whatever it answered).
fn handler_answered(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        Code::Unknown | Code::Unavailable | Code::Unauthenticated | Code::Internal
    )
}

#[tokio::test]
async fn a_peer_service_calls_over_mutual_tls_and_strangers_are_refused() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let pki = TestPki::new().unwrap();
    let service = start_over_mtls(&db, &pki).await;
    let token = std::sync::Arc::new(ServiceToken::new(keys::signer(), "approval", 300));
    let timeout = Duration::from_secs(5);

    // A peer with the deployment's certificate, calling as itself: reaches the handler.
    let peer = Outgoing::new(Some(token.clone()), timeout, pki.service());
    let reached = get_tenant(&peer, &service).await;
    assert!(handler_answered(&reached), "{reached:?}");

    // A client whose certificate another CA signed: refused at the handshake, even with a
    // valid token.
    let stranger = Outgoing::new(Some(token.clone()), timeout, pki.stranger());
    let refused = get_tenant(&stranger, &service).await;
    assert!(!handler_answered(&refused), "{refused:?}");

    // A client with no certificate at all: refused too.
    let mut anonymous_tls = pki.service();
    anonymous_tls.cert_file = None;
    anonymous_tls.key_file = None;
    anonymous_tls.client_ca_file = None;
    let anonymous = Outgoing::new(Some(token), timeout, anonymous_tls);
    let refused = get_tenant(&anonymous, &service).await;
    assert!(!handler_answered(&refused), "{refused:?}");
}
