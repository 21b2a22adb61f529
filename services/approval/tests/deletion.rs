//! Art. 5.3 through identity's events: a user who deletes their registration in identity has
//! their PENDING requests withdrawn by the suite, their tokens refused here and their open watch
//! streams ended, even when identity was unreachable for a while, and exactly once across
//! restarts.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use portal_platform::time::to_timestamp;
use portal_proto::approval::v1::approval_request::State;
use portal_proto::approval::v1::approval_request_event::Type as EventType;
use portal_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use portal_proto::approval::v1::{
    AcceptApprovalRequestRequest, ApprovalRequest, ApprovalRequestEvent, ApprovalRequestTransition,
    GetApprovalRequestRequest, ListApprovalRequestHistoryRequest, ListSentApprovalRequestsRequest,
    WatchApprovalRequestsRequest,
};
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::policy_document::Kind as DocumentKind;
use portal_proto::consent::v1::{PolicyDocument, PublishDocumentVersionRequest};
use portal_proto::identity::v1::user::Role;
use portal_proto::identity::v1::{
    ActivateUserRequest, Attestation, DeleteUserRequest, RegisterUserRequest, SignInRequest,
    Tenant, User,
};
use portal_testkit::keys::{self, authorized};
use portal_testkit::{TestService, eventually};
use tonic::{Code, Request};

/// How long the consumer may take to apply a deletion; generous, as it backs off after losing
/// identity.
const APPLIED: Duration = Duration::from_secs(20);

const REASON: &str = "requester deleted (Art. 5.3)";
const SUITE_ACTOR: &str = "services/approval";

/// A Portal User as identity holds them, with the access token identity issued at sign-in.
struct RealUser {
    user: User,
    token: String,
}

impl RealUser {
    fn request<T>(&self, message: T) -> Request<T> {
        authorized(message, &self.token)
    }
}

/// Terms version 1 in force, so identity registers users and signs them in.
async fn publish_terms(suite: &Suite) {
    let mut consent = ConsentServiceClient::new(suite.consent_service.channel().await.unwrap());
    let document = PolicyDocument {
        kind: DocumentKind::Terms.into(),
        version: 1,
        label: "v1".into(),
        uri: "https://portal.example.com/terms/1".into(),
        content_sha256: format!("{:064x}", 1),
        effective_time: Some(to_timestamp(Utc::now())),
        ..PolicyDocument::default()
    };
    consent
        .publish_document_version(as_operator(PublishDocumentVersionRequest {
            request_id: String::new(),
            document: Some(document),
        }))
        .await
        .unwrap();
}

/// The portal's sign-up and sign-in back end.
fn as_portal<T>(message: T) -> Request<T> {
    authorized(
        message,
        &keys::token(
            portal_platform::auth::Kind::Service,
            "services/portal-web",
            None,
            &[],
        ),
    )
}

/// The tenant's first admin: bootstrapped by the operator, activated with the secret, signed in.
async fn first_admin(suite: &mut Suite, tenant: &Tenant, n: u32) -> RealUser {
    let user = User {
        display_name: format!("Example Person {n}"),
        email: format!("person{n}@example.com"),
        phone_number: format!("+8131234{n:04}"),
        roles: vec![Role::TenantAdmin.into()],
        ..User::default()
    };
    let registration = RegisterUserRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        parent: tenant.name.clone(),
        user: Some(user),
        password: String::new(),
        attestation: Some(Attestation {
            attested_by: "contracts/PSC-1/signatories/1".into(),
            attest_time: Some(to_timestamp(Utc::now())),
            evidence_uri: "https://contracts.example.com/evidence/8c1f".into(),
        }),
    };
    let registered = suite
        .identity
        .register_user(as_operator(registration))
        .await
        .unwrap()
        .into_inner();
    let password = "correct horse battery staple";
    let user = suite
        .identity
        .activate_user(as_portal(ActivateUserRequest {
            activation_secret: registered.activation_secret,
            password: password.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let token = suite
        .identity
        .sign_in(as_portal(SignInRequest {
            email: user.email.clone(),
            password: password.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(token.user, user.name);
    RealUser {
        user,
        token: token.access_token,
    }
}

/// `from` sends a connection request to `target` with the token identity issued them.
async fn send_as(suite: &mut Suite, from: &RealUser, target: &Tenant) -> ApprovalRequest {
    suite
        .approval
        .create_approval_request(from.request(connection_request(target, "Shall we connect?")))
        .await
        .unwrap()
        .into_inner()
}

/// The user deletes their own registration in identity (Art. 5.3).
async fn delete_in_identity(suite: &mut Suite, user: &RealUser) {
    let receipt = suite
        .identity
        .delete_user(user.request(DeleteUserRequest {
            name: user.user.name.clone(),
            etag: String::new(),
            request_id: uuid::Uuid::now_v7().to_string(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.user, user.user.name);
}

async fn get(suite: &Suite, name: &str) -> ApprovalRequest {
    suite
        .approval
        .clone()
        .get_approval_request(as_operator(GetApprovalRequestRequest { name: name.into() }))
        .await
        .unwrap()
        .into_inner()
}

/// Polls until approval shows `request` WITHDRAWN; returns it as it then stands.
async fn withdrawn(suite: &Suite, request: &ApprovalRequest) -> ApprovalRequest {
    eventually(
        APPLIED,
        "the deleted user's request to be withdrawn",
        || async {
            let now = get(suite, &request.name).await;
            (now.state() == State::Withdrawn).then_some(now)
        },
    )
    .await
    .unwrap()
}

async fn history(suite: &mut Suite, name: &str) -> Vec<ApprovalRequestTransition> {
    let page = suite
        .approval
        .list_approval_request_history(as_operator(ListApprovalRequestHistoryRequest {
            name: name.into(),
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(page.next_page_token.is_empty());
    page.transitions
}

/// Asserts the request was withdrawn by the suite for the requester's deletion, and that its
/// history is exactly its creation by `requester` and that one withdrawal.
async fn assert_withdrawn_for_deletion(
    suite: &mut Suite,
    request: &ApprovalRequest,
    requester: &RealUser,
) {
    let now = get(suite, &request.name).await;
    assert_eq!(now.state(), State::Withdrawn);
    assert_eq!(now.decided_by, SUITE_ACTOR);
    assert_eq!(now.decision_reason, REASON);
    assert!(now.decide_time.is_some());
    assert!(now.tenant_connection.is_empty());
    assert_eq!(
        history(suite, &request.name).await,
        [
            ApprovalRequestTransition {
                from_state: State::Unspecified.into(),
                to_state: State::Pending.into(),
                actor: requester.user.name.clone(),
                time: request.create_time,
                reason: String::new(),
            },
            ApprovalRequestTransition {
                from_state: State::Pending.into(),
                to_state: State::Withdrawn.into(),
                actor: SUITE_ACTOR.into(),
                time: now.decide_time,
                reason: REASON.into(),
            },
        ]
    );
}

/// Every event of the deployment's feed (as the operator sees it) up to and including the
/// first one that `last` matches.
async fn feed_until(
    suite: &Suite,
    last: impl Fn(&ApprovalRequestEvent) -> bool,
) -> Vec<ApprovalRequestEvent> {
    let mut events = suite
        .approval
        .clone()
        .watch_approval_requests(as_operator(WatchApprovalRequestsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(APPLIED, events.message())
            .await
            .expect("the event arrives")
            .unwrap()
            .expect("the stream does not end by itself");
        let done = last(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

fn is(event: &ApprovalRequestEvent, kind: EventType, request: &ApprovalRequest) -> bool {
    event.r#type() == kind
        && event
            .approval_request
            .as_ref()
            .is_some_and(|r| r.name == request.name)
}

#[tokio::test]
async fn a_deleted_users_pending_requests_are_withdrawn_and_their_token_refused() {
    let mut suite = suite().await;
    publish_terms(&suite).await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-A-1").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-B-1").await;
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-C-1").await;
    let d = tenant(&mut suite, "Delta Corporation", "PSC-D-1").await;
    let alice = first_admin(&mut suite, &a, 1).await;
    let colleague = Person::member(&a, 2);
    let carol = Person::admin(&c, 3);

    // Alice's token, issued by identity, works here.
    let pending = send_as(&mut suite, &alice, &b).await;
    assert_eq!(pending.requester_user, alice.user.name);
    let to_accept = send_as(&mut suite, &alice, &c).await;
    let accepted = suite
        .approval
        .accept_approval_request(carol.request(AcceptApprovalRequestRequest {
            name: to_accept.name.clone(),
            etag: String::new(),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state(), State::Accepted);
    // A colleague's request is theirs, not Alice's.
    let colleagues = send(&mut suite, &colleague, &d).await;

    delete_in_identity(&mut suite, &alice).await;
    withdrawn(&suite, &pending).await;
    assert_withdrawn_for_deletion(&mut suite, &pending, &alice).await;

    // Applied with the withdrawal: the deleted user's token is refused from then on.
    let result = suite
        .approval
        .list_sent_approval_requests(alice.request(ListSentApprovalRequestsRequest::default()))
        .await;
    assert_error(result, Code::Unauthenticated, "TOKEN_INVALID");
    let result = suite
        .approval
        .create_approval_request(alice.request(connection_request(&d, "")))
        .await;
    assert_error(result, Code::Unauthenticated, "TOKEN_INVALID");

    // What was decided stays decided; other users' requests stay as they were.
    assert_eq!(get(&suite, &to_accept.name).await, accepted);
    assert_eq!(get(&suite, &colleagues.name).await, colleagues);
    let listed = suite
        .approval
        .list_sent_approval_requests(colleague.request(ListSentApprovalRequestsRequest {
            filter: "state = PENDING".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.approval_requests, std::slice::from_ref(&colleagues));

    // The feed told the target side, with the suite as the actor.
    let events = feed_until(&suite, |e| is(e, EventType::Withdrawn, &pending)).await;
    let withdrawal = events.last().unwrap().approval_request.clone().unwrap();
    assert_eq!(withdrawal, get(&suite, &pending.name).await);
    assert_eq!(withdrawal.decided_by, SUITE_ACTOR);
    let mut bobs_view = suite
        .approval
        .watch_approval_requests(Person::admin(&b, 4).request(WatchApprovalRequestsRequest {
            after: String::new(),
            tenant: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    for expected in [EventType::Created, EventType::Withdrawn] {
        let event = tokio::time::timeout(APPLIED, bobs_view.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(is(&event, expected, &pending), "{event:?}");
    }
}

#[tokio::test]
async fn a_deleted_users_open_watch_stream_ends_right_after_their_withdrawals() {
    let mut suite = suite().await;
    publish_terms(&suite).await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-A-1").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-B-1").await;
    let alice = first_admin(&mut suite, &a, 1).await;
    let pending = send_as(&mut suite, &alice, &b).await;
    let mut alices_view = suite
        .approval
        .watch_approval_requests(alice.request(WatchApprovalRequestsRequest::default()))
        .await
        .unwrap()
        .into_inner();

    delete_in_identity(&mut suite, &alice).await;

    // She sees her request created and withdrawn for her deletion, then the stream ends:
    // her token no longer reads her tenant's feed.
    let mut seen = Vec::new();
    let ended = loop {
        match tokio::time::timeout(APPLIED, alices_view.message()).await {
            Ok(Ok(Some(event))) => seen.push(event),
            Ok(Ok(None)) => panic!("the stream ended without saying why"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the stream stayed open after the deletion: {seen:?}"),
        }
    };
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(is(&seen[0], EventType::Created, &pending));
    assert!(is(&seen[1], EventType::Withdrawn, &pending));
    assert_error::<()>(Err(ended), Code::Unauthenticated, "TOKEN_INVALID");
}

#[tokio::test]
async fn a_deletion_made_while_identity_is_unreachable_is_applied_once_it_is_back() {
    let mut suite = suite().await;
    publish_terms(&suite).await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-A-1").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-B-1").await;
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-C-1").await;
    let alice = first_admin(&mut suite, &a, 1).await;
    let carl = first_admin(&mut suite, &c, 2).await;
    let alices = send_as(&mut suite, &alice, &b).await;
    let carls = send_as(&mut suite, &carl, &b).await;

    // The consumer is following identity's feed.
    delete_in_identity(&mut suite, &alice).await;
    withdrawn(&suite, &alices).await;

    suite.identity_link.cut();
    // Approval cannot reach identity now (it cannot check the target tenant).
    let result = suite
        .approval
        .create_approval_request(carl.request(connection_request(&a, "")))
        .await;
    assert_error(result, Code::Unavailable, "DEPENDENCY_UNAVAILABLE");
    delete_in_identity(&mut suite, &carl).await;
    suite.identity_link.restore();

    withdrawn(&suite, &carls).await;
    assert_withdrawn_for_deletion(&mut suite, &carls, &carl).await;
    assert_withdrawn_for_deletion(&mut suite, &alices, &alice).await;
    let result = suite
        .approval
        .list_sent_approval_requests(carl.request(ListSentApprovalRequestsRequest::default()))
        .await;
    assert_error(result, Code::Unauthenticated, "TOKEN_INVALID");
}

#[tokio::test]
async fn a_restarted_approval_service_does_not_apply_a_deletion_twice() {
    let mut suite = suite().await;
    publish_terms(&suite).await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-A-1").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-B-1").await;
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-C-1").await;
    let alice = first_admin(&mut suite, &a, 1).await;
    let carl = first_admin(&mut suite, &c, 2).await;
    let alices = send_as(&mut suite, &alice, &b).await;
    let carls = send_as(&mut suite, &carl, &b).await;
    delete_in_identity(&mut suite, &alice).await;
    withdrawn(&suite, &alices).await;

    // Restart approval on the same database, reaching identity the same way.
    suite.approval_service.stop().await.unwrap();
    let identity_endpoint = format!("http://{}", suite.identity_link.addr());
    suite.approval_service = TestService::start_configured(
        &approval_service::SERVICE,
        suite.db.url(),
        &[],
        |settings| settings.identity.endpoint = Some(identity_endpoint),
    )
    .await
    .unwrap();
    suite.approval = ApprovalServiceClient::new(suite.approval_service.channel().await.unwrap());

    // A later deletion is applied after the restart, so the restarted consumer has gone past
    // Alice's event by then.
    delete_in_identity(&mut suite, &carl).await;
    withdrawn(&suite, &carls).await;

    assert_withdrawn_for_deletion(&mut suite, &alices, &alice).await;
    assert_withdrawn_for_deletion(&mut suite, &carls, &carl).await;
    let events = feed_until(&suite, |e| is(e, EventType::Withdrawn, &carls)).await;
    let withdrawals: Vec<&ApprovalRequestEvent> = events
        .iter()
        .filter(|e| e.r#type() == EventType::Withdrawn)
        .collect();
    assert_eq!(withdrawals.len(), 2, "{events:?}");
    assert!(is(withdrawals[0], EventType::Withdrawn, &alices));
    assert!(is(withdrawals[1], EventType::Withdrawn, &carls));
    let db = suite.db.admin_pool().await.unwrap();
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM approval.deleted_users WHERE user_name = ANY ($1)",
    )
    .bind(vec![alice.user.name.clone(), carl.user.name.clone()])
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(recorded, 2);
}
