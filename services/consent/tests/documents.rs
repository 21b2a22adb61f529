//! Articles 6 and 7 over real gRPC and PostgreSQL: operators publish versions of the terms and
//! the privacy policy, strictly in order and immutably; anyone signed in can see which versions
//! are in force at any instant, and that the terms prevail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use chrono::{Duration, Utc};
use portal_platform::auth::Kind as TokenKind;
use portal_platform::time::to_timestamp;
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::policy_document::Kind;
use portal_proto::consent::v1::{
    GetEffectiveDocumentsRequest, ListDocumentVersionsRequest, PolicyDocument, Precedence,
    PublishDocumentVersionRequest,
};
use portal_testkit::keys::{self, authorized};

mod common;
use common::{as_operator, consent};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

fn as_member<T>(message: T) -> Request<T> {
    let tenant = "tenants/0190f7a0-0000-7000-8000-00000000000a";
    let user = format!("{tenant}/users/0190f7a0-0000-7000-8000-00000000000b");
    authorized(
        message,
        &keys::token(TokenKind::User, &user, Some(tenant), &["MEMBER"]),
    )
}

/// Version `version` of `kind`, in force `days` from now.
fn document(kind: Kind, version: i64, days: i64) -> PolicyDocument {
    let effective = Utc::now() + Duration::days(days) + Duration::minutes(1);
    PolicyDocument {
        kind: kind.into(),
        version,
        label: format!("v{version}"),
        uri: format!(
            "https://portal.example.com/{}/{version}",
            kind.as_str_name()
        ),
        content_sha256: format!("{version:064x}"),
        announce_time: Some(to_timestamp(Utc::now())),
        effective_time: Some(to_timestamp(effective)),
        change_summary: if version > 1 {
            "Revised".into()
        } else {
            String::new()
        },
        material_change: version % 2 == 0,
        ..PolicyDocument::default()
    }
}

async fn publish(
    client: &mut ConsentServiceClient<Channel>,
    document: PolicyDocument,
    request_id: &str,
) -> Result<PolicyDocument, tonic::Status> {
    let request = PublishDocumentVersionRequest {
        request_id: request_id.to_owned(),
        document: Some(document),
    };
    client
        .publish_document_version(as_operator(request))
        .await
        .map(tonic::Response::into_inner)
}

/// The field a refusal names in its `BadRequest`.
fn violated_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_operator_publishes_a_terms_version_that_is_then_listed_as_published() {
    let mut consent = consent().await;
    let published = publish(&mut consent.client, document(Kind::Terms, 1, 0), "")
        .await
        .unwrap();
    assert_eq!(published.name, "documents/terms/versions/1");
    assert_eq!(published.published_by, "operators/test");
    assert!(published.publish_time.is_some());

    let listed = consent
        .client
        .list_document_versions(as_member(ListDocumentVersionsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.documents, vec![published]);
    assert!(listed.next_page_token.is_empty());
}

#[tokio::test]
async fn only_operators_publish() {
    let mut consent = consent().await;
    let request = PublishDocumentVersionRequest {
        request_id: String::new(),
        document: Some(document(Kind::Terms, 1, 0)),
    };
    let refused = consent
        .client
        .publish_document_version(as_member(request))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let info = refused.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "CALLER_NOT_ALLOWED");
    assert_eq!(info.domain, "portal.consent");
}

/// Makes a valid document invalid in one way.
type Spoil = Box<dyn Fn(&mut PolicyDocument)>;

#[tokio::test]
async fn each_malformed_version_is_invalid_argument_naming_its_field() {
    let mut consent = consent().await;
    let cases: Vec<(&str, Spoil)> = vec![
        ("document.kind", Box::new(|d| d.kind = 0)),
        ("document.kind", Box::new(|d| d.kind = 42)),
        ("document.version", Box::new(|d| d.version = 0)),
        ("document.label", Box::new(|d| d.label = String::new())),
        (
            "document.uri",
            Box::new(|d| d.uri = "http://portal.example.com/t".into()),
        ),
        (
            "document.content_sha256",
            Box::new(|d| d.content_sha256 = "ABC".into()),
        ),
        (
            "document.content_sha256",
            Box::new(|d| d.content_sha256 = "G".repeat(64)),
        ),
        (
            "document.effective_time",
            Box::new(|d| {
                d.announce_time = Some(to_timestamp(Utc::now() + Duration::days(3)));
                d.effective_time = Some(to_timestamp(Utc::now() + Duration::days(2)));
            }),
        ),
        (
            "document.effective_time",
            Box::new(|d| d.effective_time = Some(to_timestamp(Utc::now() - Duration::days(1)))),
        ),
    ];
    for (field, spoil) in cases {
        let mut bad = document(Kind::Terms, 1, 0);
        spoil(&mut bad);
        let refused = publish(&mut consent.client, bad, "").await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{field}: {refused:?}"
        );
        assert!(
            violated_fields(&refused).contains(&field.to_owned()),
            "{field}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn versions_must_increase_in_number_and_effective_time() {
    let mut consent = consent().await;
    publish(&mut consent.client, document(Kind::Terms, 3, 0), "")
        .await
        .unwrap();

    let lower = publish(&mut consent.client, document(Kind::Terms, 2, 5), "")
        .await
        .unwrap_err();
    assert_eq!(lower.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&lower), ["document.version"]);

    let same = publish(&mut consent.client, document(Kind::Terms, 3, 5), "")
        .await
        .unwrap_err();
    assert_eq!(same.code(), Code::AlreadyExists);

    let mut earlier = document(Kind::Terms, 4, 0);
    earlier.effective_time = Some(to_timestamp(Utc::now()));
    let earlier = publish(&mut consent.client, earlier, "").await.unwrap_err();
    assert_eq!(earlier.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&earlier), ["document.effective_time"]);

    let mut unexplained = document(Kind::Terms, 4, 5);
    unexplained.change_summary = String::new();
    let unexplained = publish(&mut consent.client, unexplained, "")
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&unexplained), ["document.change_summary"]);

    // The privacy policy is numbered on its own.
    publish(&mut consent.client, document(Kind::PrivacyPolicy, 1, 0), "")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_retried_publication_returns_the_first_answer_and_a_reused_id_is_refused() {
    let mut consent = consent().await;
    let id = "0190f7a0-2222-7000-8000-000000000001";
    let version = document(Kind::Terms, 1, 0);
    let first = publish(&mut consent.client, version.clone(), id)
        .await
        .unwrap();
    let retry = publish(&mut consent.client, version, id).await.unwrap();
    assert_eq!(first, retry);

    let reused = publish(&mut consent.client, document(Kind::Terms, 2, 1), id)
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument);
    let reason = reused
        .get_error_details()
        .error_info()
        .unwrap()
        .reason
        .clone();
    assert_eq!(reason, "REQUEST_ID_REUSED");

    let listed = consent
        .client
        .list_document_versions(as_member(ListDocumentVersionsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.documents, vec![first], "published once");
}

#[tokio::test]
async fn the_documents_in_force_are_answered_for_any_instant_with_the_terms_prevailing() {
    let mut consent = consent().await;
    let v1 = publish(&mut consent.client, document(Kind::Terms, 1, 0), "")
        .await
        .unwrap();
    let v2 = publish(&mut consent.client, document(Kind::Terms, 2, 10), "")
        .await
        .unwrap();
    let pp = publish(&mut consent.client, document(Kind::PrivacyPolicy, 1, 0), "")
        .await
        .unwrap();

    let at = |days: i64| GetEffectiveDocumentsRequest {
        at_time: Some(to_timestamp(
            Utc::now() + Duration::days(days) + Duration::minutes(2),
        )),
    };
    let before = consent
        .client
        .get_effective_documents(as_member(at(-1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.terms, None, "nothing was in force yesterday");
    assert_eq!(before.upcoming_terms.as_ref(), Some(&v1));

    let now = consent
        .client
        .get_effective_documents(as_member(at(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.terms.as_ref(), Some(&v1));
    assert_eq!(now.privacy_policy.as_ref(), Some(&pp));
    assert_eq!(now.upcoming_terms.as_ref(), Some(&v2));
    assert_eq!(now.precedence(), Precedence::TermsOverPrivacyPolicy);
    assert!(now.precedence_explanation.contains("Article 6"));

    let later = consent
        .client
        .get_effective_documents(as_member(at(11)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later.terms.as_ref(), Some(&v2));
    assert_eq!(later.upcoming_terms, None);
}

#[tokio::test]
async fn versions_are_listed_in_pages_whose_tokens_cannot_be_altered() {
    let mut consent = consent().await;
    for version in 1..=5 {
        publish(
            &mut consent.client,
            document(Kind::Terms, version, version),
            "",
        )
        .await
        .unwrap();
    }
    publish(&mut consent.client, document(Kind::PrivacyPolicy, 1, 0), "")
        .await
        .unwrap();

    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = consent
            .client
            .list_document_versions(as_member(ListDocumentVersionsRequest {
                kind: 0,
                page_size: 2,
                page_token: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.documents.len() <= 2);
        names.extend(page.documents.into_iter().map(|d| d.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = (1..=5)
        .rev()
        .map(|v| format!("documents/terms/versions/{v}"))
        .chain(["documents/privacy-policy/versions/1".to_owned()])
        .collect();
    assert_eq!(names, expected);

    let first = consent
        .client
        .list_document_versions(as_member(ListDocumentVersionsRequest {
            kind: 0,
            page_size: 2,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let mut tampered = first.next_page_token.clone();
    tampered.replace_range(0..1, if tampered.starts_with('A') { "B" } else { "A" });
    for (page_size, page_token, field) in [
        (2, tampered, "page_token"),
        (-1, String::new(), "page_size"),
    ] {
        let refused = consent
            .client
            .list_document_versions(as_member(ListDocumentVersionsRequest {
                kind: 0,
                page_size,
                page_token,
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&refused), [field]);
    }

    // A token is valid only for the request it came from.
    let other_kind = consent
        .client
        .list_document_versions(as_member(ListDocumentVersionsRequest {
            kind: Kind::Terms.into(),
            page_size: 2,
            page_token: first.next_page_token,
        }))
        .await
        .unwrap_err();
    assert_eq!(other_kind.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn published_versions_are_immutable_even_to_the_services_own_role() {
    let mut consent = consent().await;
    publish(&mut consent.client, document(Kind::Terms, 1, 0), "")
        .await
        .unwrap();

    let app = consent
        .db
        .app_pool(consent_service::SERVICE.schema)
        .unwrap();
    for statement in [
        "UPDATE consent.documents SET uri = 'https://elsewhere.example.com/'",
        "DELETE FROM consent.documents",
    ] {
        let refused = sqlx::query(statement).execute(&app).await.unwrap_err();
        let code = refused.as_database_error().and_then(|e| e.code()).unwrap();
        assert_eq!(code, "42501", "{statement}");
    }
}
