//! What every transfer test starts from: consent, identity and transfer on one database,
//! transfer reaching consent through a proxy the test can cut, terms in force, and helpers to
//! register entities and record consent.

#![allow(dead_code, reason = "each test binary uses its own part of this setup")]

use chrono::Utc;
use portal_platform::auth::Kind as TokenKind;
use portal_platform::time::to_timestamp;
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::policy_document::Kind as DocumentKind;
use portal_proto::consent::v1::{
    Basis, PolicyDocument, PublishDocumentVersionRequest, RecordConsentRequest, Scope,
};
use portal_proto::identity::v1::identity_service_client::IdentityServiceClient;
use portal_proto::transfer::v1::affiliate_transfer_service_client::AffiliateTransferServiceClient;
use portal_proto::transfer::v1::group_entity::Kind;
use portal_proto::transfer::v1::{
    AuthorizeTransferRequest, CreateEntityRequest, DataCategory, GroupEntity, Purpose,
    TransferRecord,
};
use portal_testkit::keys::{self, authorized};
use portal_testkit::{TcpProxy, TestDb, TestService};
use tonic::Request;
use tonic::transport::Channel;

pub const TENANT: &str = "tenants/0190f7a0-0000-7000-8000-00000000000a";

/// User `n` of [`TENANT`] (consent and transfer know users by name only).
pub fn user(n: u32) -> String {
    format!("{TENANT}/users/0190f7a0-0000-7000-8000-{n:012}")
}

pub struct Suite {
    pub db: TestDb,
    pub consent_service: TestService,
    pub identity_service: TestService,
    /// Between transfer and consent: `cut()` makes consent unreachable for transfer only.
    pub consent_link: TcpProxy,
    pub transfer_service: TestService,
    pub consent: ConsentServiceClient<Channel>,
    pub identity: IdentityServiceClient<Channel>,
    pub transfer: AffiliateTransferServiceClient<Channel>,
}

/// The three services on one database, terms version 1 in force; transfer gets extra
/// `PORTAL_...` settings.
pub async fn suite_with(transfer_env: &[(&str, &str)]) -> Suite {
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
    let consent_uri = consent_service.uri();
    let identity_service =
        TestService::start_configured(&identity_service::SERVICE, db.url(), &[], |settings| {
            settings.consent.endpoint = Some(consent_uri)
        })
        .await
        .unwrap();
    let consent_link = TcpProxy::start(consent_service.addr()).await.unwrap();
    let consent_endpoint = format!("http://{}", consent_link.addr());
    let identity_endpoint = identity_service.uri();
    let transfer_service = TestService::start_configured(
        &transfer_service::SERVICE,
        db.url(),
        transfer_env,
        |settings| {
            settings.consent.endpoint = Some(consent_endpoint);
            settings.identity.endpoint = Some(identity_endpoint);
        },
    )
    .await
    .unwrap();
    let mut consent = ConsentServiceClient::new(consent_service.channel().await.unwrap());
    publish_terms(&mut consent, 1).await;
    Suite {
        identity: IdentityServiceClient::new(identity_service.channel().await.unwrap()),
        transfer: AffiliateTransferServiceClient::new(transfer_service.channel().await.unwrap()),
        consent,
        db,
        consent_service,
        identity_service,
        consent_link,
        transfer_service,
    }
}

pub async fn suite() -> Suite {
    suite_with(&[]).await
}

pub async fn publish_terms(consent: &mut ConsentServiceClient<Channel>, version: i64) {
    let document = PolicyDocument {
        kind: DocumentKind::Terms.into(),
        version,
        label: format!("v{version}"),
        uri: format!("https://portal.example.com/terms/{version}"),
        content_sha256: format!("{version:064x}"),
        effective_time: Some(to_timestamp(Utc::now())),
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

/// A group service that moves PI and asks first.
pub fn as_mover<T>(message: T) -> Request<T> {
    authorized(
        message,
        &keys::token(TokenKind::Service, "services/portal-backend", None, &[]),
    )
}

pub fn as_identity<T>(message: T) -> Request<T> {
    authorized(
        message,
        &keys::token(TokenKind::Service, "services/identity", None, &[]),
    )
}

/// Records the user's deemed consent (Art. 5.1), as identity does at sign-in.
pub async fn deemed_consent(suite: &mut Suite, subject: &str) {
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
        .unwrap();
}

/// The subject's explicit consent to disclosure to `recipient` (Art. 4).
pub async fn explicit_consent(suite: &mut Suite, subject: &str, recipient: &str) {
    let request = RecordConsentRequest {
        subject: subject.to_owned(),
        tenant: TENANT.to_owned(),
        basis: Basis::Explicit.into(),
        scopes: vec![Scope::ThirdPartyDisclosure.into()],
        recipient_entity: recipient.to_owned(),
        ..RecordConsentRequest::default()
    };
    let token = keys::token(TokenKind::User, subject, Some(TENANT), &["MEMBER"]);
    suite
        .consent
        .record_consent(authorized(request, &token))
        .await
        .unwrap();
}

pub fn entity(kind: Kind, legal_name: &str, country: &str, region: &str) -> GroupEntity {
    GroupEntity {
        kind: kind.into(),
        legal_name: legal_name.into(),
        country_code: country.into(),
        region: region.into(),
        ..GroupEntity::default()
    }
}

pub async fn register(suite: &mut Suite, entity: GroupEntity) -> GroupEntity {
    let request = CreateEntityRequest {
        request_id: String::new(),
        entity: Some(entity),
    };
    suite
        .transfer
        .create_entity(as_operator(request))
        .await
        .unwrap()
        .into_inner()
}

pub fn transfer_request(
    subject: &str,
    from: &GroupEntity,
    to: &GroupEntity,
) -> AuthorizeTransferRequest {
    AuthorizeTransferRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        subject: subject.to_owned(),
        data_categories: vec![DataCategory::Email.into(), DataCategory::Name.into()],
        source_entity: from.name.clone(),
        destination_entity: to.name.clone(),
        purpose: Purpose::PortalService.into(),
        legal_reference: String::new(),
    }
}

pub async fn authorize(suite: &mut Suite, request: AuthorizeTransferRequest) -> TransferRecord {
    suite
        .transfer
        .authorize_transfer(as_mover(request))
        .await
        .unwrap()
        .into_inner()
}

#[allow(
    unused_imports,
    reason = "each test binary uses its own part of this setup"
)]
pub use portal_testkit::status::{assert_error, reason, violations};
