//! What every consent test starts from: a consent service of its own, and the callers the
//! tests speak as.

#![allow(dead_code, reason = "each test binary uses its own part of this setup")]

use chrono::Utc;
use portal_platform::auth::Kind as TokenKind;
use portal_platform::time::to_timestamp;
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::policy_document::Kind;
use portal_proto::consent::v1::{PolicyDocument, PublishDocumentVersionRequest};
use portal_testkit::keys::{self, authorized};
use portal_testkit::{TestDb, TestService};
use tonic::Request;
use tonic::transport::Channel;

pub const TENANT: &str = "tenants/0190f7a0-0000-7000-8000-00000000000a";

/// User `n` of [`TENANT`].
pub fn user(n: u32) -> String {
    format!("{TENANT}/users/0190f7a0-0000-7000-8000-{n:012}")
}

pub struct Consent {
    pub db: TestDb,
    /// Kept so the service runs as long as the test.
    pub service: TestService,
    pub client: ConsentServiceClient<Channel>,
}

/// A consent service on its own database.
pub async fn consent() -> Consent {
    let db = TestDb::new(&[consent_service::SERVICE.schema])
        .await
        .unwrap();
    let service = TestService::start(&consent_service::SERVICE, db.url())
        .await
        .unwrap();
    let client = ConsentServiceClient::new(service.channel().await.unwrap());
    Consent {
        db,
        service,
        client,
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

/// The identity service, which records Art. 5.1 consent and full withdrawals.
pub fn as_identity<T>(message: T) -> Request<T> {
    authorized(
        message,
        &keys::token(TokenKind::Service, "services/identity", None, &[]),
    )
}

/// The affiliate-transfer service, which checks consent before every transfer.
pub fn as_transfer<T>(message: T) -> Request<T> {
    authorized(
        message,
        &keys::token(TokenKind::Service, "services/transfer", None, &[]),
    )
}

/// A Portal User of `tenant` with `role`.
pub fn as_user<T>(message: T, subject: &str, tenant: &str, role: &str) -> Request<T> {
    authorized(
        message,
        &keys::token(TokenKind::User, subject, Some(tenant), &[role]),
    )
}

/// Publishes terms `version`, in force from now.
pub async fn publish_terms(
    client: &mut ConsentServiceClient<Channel>,
    version: i64,
    material: bool,
) {
    let document = PolicyDocument {
        kind: Kind::Terms.into(),
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
        material_change: material,
        ..PolicyDocument::default()
    };
    let request = PublishDocumentVersionRequest {
        request_id: String::new(),
        document: Some(document),
    };
    client
        .publish_document_version(as_operator(request))
        .await
        .unwrap();
}
