//! What every identity test starts from: identity and consent on one database, identity
//! reaching consent through a proxy the test can cut, terms in force, and the callers the
//! tests speak as.

#![allow(dead_code, reason = "each test binary uses its own part of this setup")]

use chrono::Utc;
use portal_platform::auth::Kind as TokenKind;
use portal_platform::time::to_timestamp;
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::policy_document::Kind as DocumentKind;
use portal_proto::consent::v1::{PolicyDocument, PublishDocumentVersionRequest};
use portal_proto::identity::v1::identity_service_client::IdentityServiceClient;
use portal_proto::identity::v1::user::Role;
use portal_proto::identity::v1::{
    ActivateUserRequest, Attestation, CreateTenantRequest, RegisterUserRequest,
    RegisterUserResponse, SignInRequest, Tenant, User,
};
use portal_testkit::keys::{self, authorized};
use portal_testkit::{TcpProxy, TestDb, TestService};
use tonic::Request;
use tonic::transport::Channel;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Suite {
    pub db: TestDb,
    pub consent_service: TestService,
    /// Between identity and consent: `cut()` makes consent unreachable for identity only.
    pub consent_link: TcpProxy,
    /// The transfer service, which identity reads for data exports.
    pub transfer_service: TestService,
    /// Between identity and transfer.
    pub transfer_link: TcpProxy,
    pub identity_service: TestService,
    pub identity: IdentityServiceClient<Channel>,
    pub consent: ConsentServiceClient<Channel>,
}

/// Identity and consent on one database, terms version 1 in force.
pub async fn suite() -> Suite {
    let mut suite = suite_with(&[]).await;
    publish_terms(&mut suite.consent, 1).await;
    suite
}

/// Identity and consent on one database, no terms published yet; identity gets extra
/// `PORTAL_...` settings.
pub async fn suite_with(identity_env: &[(&str, &str)]) -> Suite {
    let db = TestDb::new(&[
        identity_service::SERVICE.schema,
        consent_service::SERVICE.schema,
        transfer_service::SERVICE.schema,
    ])
    .await
    .unwrap();
    let consent_service = TestService::start(&consent_service::SERVICE, db.url())
        .await
        .unwrap();
    let consent_link = TcpProxy::start(consent_service.addr()).await.unwrap();
    let endpoint = format!("http://{}", consent_link.addr());
    let consent_uri = consent_service.uri();
    let transfer_service =
        TestService::start_configured(&transfer_service::SERVICE, db.url(), &[], |settings| {
            settings.consent.endpoint = Some(consent_uri)
        })
        .await
        .unwrap();
    let transfer_link = TcpProxy::start(transfer_service.addr()).await.unwrap();
    let transfer_endpoint = format!("http://{}", transfer_link.addr());
    let identity_service = TestService::start_configured(
        &identity_service::SERVICE,
        db.url(),
        identity_env,
        |settings| {
            settings.consent.endpoint = Some(endpoint);
            settings.transfer.endpoint = Some(transfer_endpoint);
        },
    )
    .await
    .unwrap();
    let identity = IdentityServiceClient::new(identity_service.channel().await.unwrap());
    let consent = ConsentServiceClient::new(consent_service.channel().await.unwrap());
    Suite {
        db,
        consent_service,
        consent_link,
        transfer_service,
        transfer_link,
        identity_service,
        identity,
        consent,
    }
}

/// Publishes terms `version`, in force from now, as a material change after the first.
pub async fn publish_terms(consent: &mut ConsentServiceClient<Channel>, version: i64) {
    let document = PolicyDocument {
        kind: DocumentKind::Terms.into(),
        version,
        label: format!("v{version}"),
        uri: format!("https://portal.example.com/terms/{version}"),
        content_sha256: format!("{version:064x}"),
        effective_time: Some(to_timestamp(Utc::now())),
        change_summary: if version > 1 {
            "Revised".into()
        } else {
            String::new()
        },
        material_change: version > 1,
        ..PolicyDocument::default()
    };
    let request = PublishDocumentVersionRequest {
        request_id: String::new(),
        document: Some(document),
    };
    consent
        .publish_document_version(as_operator(request))
        .await
        .unwrap();
}

pub fn as_operator<T>(message: T) -> Request<T> {
    authorized(message, &keys::operator_token())
}

pub fn as_auditor<T>(message: T) -> Request<T> {
    authorized(
        message,
        &keys::token(TokenKind::Auditor, "auditors/a", None, &[]),
    )
}

/// The portal's sign-up and sign-in back end.
pub fn as_portal<T>(message: T) -> Request<T> {
    authorized(
        message,
        &keys::token(TokenKind::Service, "services/portal-web", None, &[]),
    )
}

/// A USER token for `user` (a `User` as identity returned it), with its roles.
pub fn as_user<T>(message: T, user: &User) -> Request<T> {
    let roles: Vec<&str> = user
        .roles
        .iter()
        .map(|r| match Role::try_from(*r) {
            Ok(Role::TenantAdmin) => "TENANT_ADMIN",
            _ => "MEMBER",
        })
        .collect();
    authorized(
        message,
        &keys::token(TokenKind::User, &user.name, Some(&user.tenant), &roles),
    )
}

pub async fn create_tenant(
    identity: &mut IdentityServiceClient<Channel>,
    reference: &str,
) -> Tenant {
    let request = CreateTenantRequest {
        request_id: String::new(),
        tenant: Some(Tenant {
            display_name: "Example Corporation".into(),
            contract_reference: reference.into(),
            ..Tenant::default()
        }),
    };
    identity
        .create_tenant(as_operator(request))
        .await
        .unwrap()
        .into_inner()
}

pub fn person(n: u32, roles: &[Role]) -> User {
    User {
        display_name: format!("Example Person {n}"),
        email: format!("person{n}@example.com"),
        phone_number: format!("+8131234{n:04}"),
        roles: roles.iter().map(|r| i32::from(*r)).collect(),
        ..User::default()
    }
}

pub fn attestation(by: &str) -> Attestation {
    Attestation {
        attested_by: by.into(),
        attest_time: Some(to_timestamp(Utc::now())),
        evidence_uri: "https://contracts.example.com/evidence/8c1f".into(),
    }
}

pub fn registration(tenant: &Tenant, user: User, attested_by: &str) -> RegisterUserRequest {
    RegisterUserRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        parent: tenant.name.clone(),
        user: Some(user),
        password: String::new(),
        attestation: Some(attestation(attested_by)),
    }
}

/// The tenant's first administrator, registered by the operator and activated: (user, its
/// access token).
pub async fn first_admin(suite: &mut Suite, tenant: &Tenant, n: u32) -> User {
    let request = registration(
        tenant,
        person(n, &[Role::TenantAdmin]),
        "contracts/PSC-1/signatories/1",
    );
    let registered = suite
        .identity
        .register_user(as_operator(request))
        .await
        .unwrap()
        .into_inner();
    activate(suite, &registered).await
}

/// A colleague registered by `admin` with attestation, then activated.
pub async fn colleague(suite: &mut Suite, tenant: &Tenant, admin: &User, n: u32) -> User {
    let request = registration(tenant, person(n, &[Role::Member]), &admin.name);
    let registered = suite
        .identity
        .register_user(as_user(request, admin))
        .await
        .unwrap()
        .into_inner();
    activate(suite, &registered).await
}

pub async fn activate(suite: &mut Suite, registered: &RegisterUserResponse) -> User {
    let request = ActivateUserRequest {
        activation_secret: registered.activation_secret.clone(),
        password: PASSWORD.into(),
    };
    suite
        .identity
        .activate_user(as_portal(request))
        .await
        .unwrap()
        .into_inner()
}

/// A self-registered member (SELF channel), ACTIVE at once.
pub async fn self_registered(suite: &mut Suite, tenant: &Tenant, n: u32) -> User {
    let request = RegisterUserRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        parent: tenant.name.clone(),
        user: Some(person(n, &[Role::Member])),
        password: PASSWORD.into(),
        attestation: None,
    };
    suite
        .identity
        .register_user(as_portal(request))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
}

pub fn sign_in_request(email: &str, password: &str) -> SignInRequest {
    SignInRequest {
        email: email.into(),
        password: password.into(),
    }
}

#[allow(
    unused_imports,
    reason = "each test binary uses its own part of this setup"
)]
pub use portal_testkit::status::{assert_error, reason, violations};
