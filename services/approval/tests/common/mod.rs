//! What every approval test starts from: identity, consent and approval on one database,
//! approval reaching identity through a proxy the test can cut, tenants made in identity, and
//! the users the tests speak as.

#![allow(dead_code, reason = "each test binary uses its own part of this setup")]

use portal_platform::auth::Kind as TokenKind;
use portal_proto::approval::v1::approval_request::Kind;
use portal_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use portal_proto::approval::v1::{ApprovalRequest, CreateApprovalRequestRequest};
use portal_proto::identity::v1::identity_service_client::IdentityServiceClient;
use portal_proto::identity::v1::{CreateTenantRequest, Tenant};
use portal_testkit::keys::{self, authorized};
use portal_testkit::{TcpProxy, TestDb, TestService};
use tonic::Request;
use tonic::transport::Channel;

pub struct Suite {
    pub db: TestDb,
    pub consent_service: TestService,
    pub identity_service: TestService,
    /// Between approval and identity: `cut()` makes identity unreachable for approval only.
    pub identity_link: TcpProxy,
    pub approval_service: TestService,
    pub identity: IdentityServiceClient<Channel>,
    pub approval: ApprovalServiceClient<Channel>,
}

/// The three services on one database; approval gets extra `PORTAL_...` settings.
pub async fn suite_with(approval_env: &[(&str, &str)]) -> Suite {
    let db = TestDb::new(&[
        identity_service::SERVICE.schema,
        consent_service::SERVICE.schema,
        approval_service::SERVICE.schema,
    ])
    .await
    .unwrap();
    let consent_service = TestService::start(&consent_service::SERVICE, db.url())
        .await
        .unwrap();
    let consent_endpoint = consent_service.uri();
    let identity_service =
        TestService::start_configured(&identity_service::SERVICE, db.url(), &[], |settings| {
            settings.consent.endpoint = Some(consent_endpoint)
        })
        .await
        .unwrap();
    let identity_link = TcpProxy::start(identity_service.addr()).await.unwrap();
    let identity_endpoint = format!("http://{}", identity_link.addr());
    let approval_service = TestService::start_configured(
        &approval_service::SERVICE,
        db.url(),
        approval_env,
        |settings| settings.identity.endpoint = Some(identity_endpoint),
    )
    .await
    .unwrap();
    let identity = IdentityServiceClient::new(identity_service.channel().await.unwrap());
    let approval = ApprovalServiceClient::new(approval_service.channel().await.unwrap());
    Suite {
        db,
        consent_service,
        identity_service,
        identity_link,
        approval_service,
        identity,
        approval,
    }
}

pub async fn suite() -> Suite {
    suite_with(&[]).await
}

/// A tenant made in identity by the operator.
pub async fn tenant(suite: &mut Suite, display_name: &str, reference: &str) -> Tenant {
    let request = CreateTenantRequest {
        request_id: String::new(),
        tenant: Some(Tenant {
            display_name: display_name.into(),
            contract_reference: reference.into(),
            ..Tenant::default()
        }),
    };
    suite
        .identity
        .create_tenant(as_operator(request))
        .await
        .unwrap()
        .into_inner()
}

/// A user of `tenant` as approval sees them: a name and a token with `role`. Approval verifies
/// tokens itself and never asks identity about users, so these users need not exist there.
#[derive(Debug, Clone)]
pub struct Person {
    pub name: String,
    pub tenant: String,
    role: &'static str,
}

impl Person {
    pub fn admin(tenant: &Tenant, n: u32) -> Self {
        Self::new(tenant, n, "TENANT_ADMIN")
    }

    pub fn member(tenant: &Tenant, n: u32) -> Self {
        Self::new(tenant, n, "MEMBER")
    }

    fn new(tenant: &Tenant, n: u32, role: &'static str) -> Self {
        Self {
            name: format!("{}/users/0190f7a0-0000-7000-8000-{n:012}", tenant.name),
            tenant: tenant.name.clone(),
            role,
        }
    }

    pub fn request<T>(&self, message: T) -> Request<T> {
        authorized(
            message,
            &keys::token(
                TokenKind::User,
                &self.name,
                Some(&self.tenant),
                &[self.role],
            ),
        )
    }
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

pub fn connection_request(target: &Tenant, message: &str) -> CreateApprovalRequestRequest {
    CreateApprovalRequestRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        approval_request: Some(ApprovalRequest {
            kind: Kind::TenantConnection.into(),
            target_tenant: target.name.clone(),
            message: message.into(),
            ..ApprovalRequest::default()
        }),
    }
}

/// `from` sends a connection request to `target`.
pub async fn send(suite: &mut Suite, from: &Person, target: &Tenant) -> ApprovalRequest {
    suite
        .approval
        .create_approval_request(from.request(connection_request(target, "Shall we connect?")))
        .await
        .unwrap()
        .into_inner()
}

#[allow(
    unused_imports,
    reason = "each test binary uses its own part of this setup"
)]
pub use portal_testkit::status::{assert_error, reason, violations};
