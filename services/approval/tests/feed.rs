//! The live feed and the history: who sees which events, in which order, resuming without
//! gaps or repeats, what an event carries, and the transitions a request went through
//! (including the expiries the sweeper records).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use portal_platform::time::to_timestamp;
use portal_proto::approval::v1::approval_request::State;
use portal_proto::approval::v1::approval_request_event::Type as EventType;
use portal_proto::approval::v1::{
    AcceptApprovalRequestRequest, ApprovalRequest, ApprovalRequestEvent, ApprovalRequestTransition,
    DeleteTenantConnectionRequest, GetApprovalRequestRequest, ListApprovalRequestHistoryRequest,
    ListApprovalRequestHistoryResponse, RejectApprovalRequestRequest, WatchApprovalRequestsRequest,
    WithdrawApprovalRequestRequest,
};
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::policy_document::Kind as DocumentKind;
use portal_proto::consent::v1::{PolicyDocument, PublishDocumentVersionRequest};
use portal_proto::identity::v1::user::Role;
use portal_proto::identity::v1::{
    ActivateUserRequest, Attestation, RegisterUserRequest, SignInRequest, Tenant, User,
};
use portal_testkit::eventually;
use portal_testkit::keys::{self, authorized};
use prost::Message;
use tonic::{Code, Request, Streaming};

/// How long a test waits for one event or one state.
const WAIT: Duration = Duration::from_secs(15);

/// A well-formed cursor of another feed (base64url of `v1:identity:1:1`).
const IDENTITY_CURSOR: &str = "djE6aWRlbnRpdHk6MTox";

type Events = Streaming<ApprovalRequestEvent>;

fn after(cursor: &str) -> WatchApprovalRequestsRequest {
    WatchApprovalRequestsRequest {
        after: cursor.into(),
        tenant: String::new(),
    }
}

fn of_tenant(tenant: &str) -> WatchApprovalRequestsRequest {
    WatchApprovalRequestsRequest {
        after: String::new(),
        tenant: tenant.into(),
    }
}

async fn watch(suite: &Suite, request: Request<WatchApprovalRequestsRequest>) -> Events {
    suite
        .approval
        .clone()
        .watch_approval_requests(request)
        .await
        .unwrap()
        .into_inner()
}

/// The next `n` events of the stream, each within `WAIT`.
async fn take(events: &mut Events, n: usize) -> Vec<ApprovalRequestEvent> {
    let mut taken = Vec::with_capacity(n);
    while taken.len() < n {
        let next = tokio::time::timeout(WAIT, events.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "event {} of {n} did not arrive; so far {:?}",
                    taken.len() + 1,
                    kinds(&taken)
                )
            })
            .unwrap()
            .expect("the stream does not end by itself");
        taken.push(next);
    }
    taken
}

/// What happened to which request, event by event.
fn kinds(events: &[ApprovalRequestEvent]) -> Vec<(EventType, String)> {
    events
        .iter()
        .map(|e| {
            let request = e.approval_request.as_ref();
            (
                e.r#type(),
                request.map(|r| r.name.clone()).unwrap_or_default(),
            )
        })
        .collect()
}

fn sequences(events: &[ApprovalRequestEvent]) -> Vec<i64> {
    events.iter().map(|e| e.sequence).collect()
}

async fn accept(suite: &mut Suite, admin: &Person, request: &ApprovalRequest) -> ApprovalRequest {
    suite
        .approval
        .accept_approval_request(admin.request(AcceptApprovalRequestRequest {
            name: request.name.clone(),
            etag: String::new(),
            request_id: uuid::Uuid::now_v7().to_string(),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn reject(
    suite: &mut Suite,
    admin: &Person,
    request: &ApprovalRequest,
    why: &str,
) -> ApprovalRequest {
    suite
        .approval
        .reject_approval_request(admin.request(RejectApprovalRequestRequest {
            name: request.name.clone(),
            etag: String::new(),
            request_id: uuid::Uuid::now_v7().to_string(),
            reason: why.into(),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn end_connection(suite: &mut Suite, admin: &Person, connection: &str) {
    suite
        .approval
        .delete_tenant_connection(admin.request(DeleteTenantConnectionRequest {
            name: connection.into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
}

async fn get(suite: &mut Suite, name: &str) -> ApprovalRequest {
    suite
        .approval
        .get_approval_request(as_operator(GetApprovalRequestRequest { name: name.into() }))
        .await
        .unwrap()
        .into_inner()
}

fn history_page(name: &str, page_size: i32, page_token: &str) -> ListApprovalRequestHistoryRequest {
    ListApprovalRequestHistoryRequest {
        name: name.into(),
        page_size,
        page_token: page_token.into(),
    }
}

async fn history(suite: &mut Suite, name: &str) -> Vec<ApprovalRequestTransition> {
    let page: ListApprovalRequestHistoryResponse = suite
        .approval
        .list_approval_request_history(as_operator(history_page(name, 0, "")))
        .await
        .unwrap()
        .into_inner();
    assert!(page.next_page_token.is_empty());
    page.transitions
}

fn id_of(name: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(name.strip_prefix("approvalRequests/").unwrap()).unwrap()
}

// Real identity users (with PI), for the test that events carry none of it.

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

/// The tenant's first admin, bootstrapped by the operator, activated and signed in: the user
/// as identity holds them (with PI) and the access token identity issued.
async fn first_admin(suite: &mut Suite, tenant: &Tenant, n: u32) -> (User, String) {
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
    (user, token.access_token)
}

async fn send_with_token(suite: &mut Suite, token: &str, target: &Tenant) -> ApprovalRequest {
    let request = authorized(connection_request(target, "Shall we connect?"), token);
    suite
        .approval
        .create_approval_request(request)
        .await
        .unwrap()
        .into_inner()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test]
async fn users_see_their_own_tenants_events_only_in_the_order_they_happened() {
    let mut suite = suite().await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-A-1").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-B-1").await;
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-C-1").await;
    let d = tenant(&mut suite, "Delta Corporation", "PSC-D-1").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let carol = Person::member(&c, 3);
    let dave = Person::admin(&d, 4);
    // A and C follow live from the start; B replays everything afterwards.
    let mut seen_by_a = watch(&suite, alice.request(after(""))).await;
    let mut seen_by_c = watch(&suite, carol.request(after(""))).await;

    let other = send(&mut suite, &carol, &d).await;
    let sent = send(&mut suite, &alice, &b).await;
    let accepted = accept(&mut suite, &bob, &sent).await;
    let connection = accepted.tenant_connection.clone();
    assert!(connection.starts_with("tenantConnections/"));
    end_connection(&mut suite, &bob, &connection).await;
    let rejected = reject(&mut suite, &dave, &other, "").await;
    let again = send(&mut suite, &alice, &b).await;
    let other_again = send(&mut suite, &carol, &d).await;

    let expected_ab = vec![
        (EventType::Created, sent.name.clone()),
        (EventType::Accepted, sent.name.clone()),
        (EventType::ConnectionDeleted, sent.name.clone()),
        (EventType::Created, again.name.clone()),
    ];
    let a_events = take(&mut seen_by_a, 4).await;
    assert_eq!(kinds(&a_events), expected_ab);
    let mut seen_by_b = watch(&suite, bob.request(after(""))).await;
    let b_events = take(&mut seen_by_b, 4).await;
    assert_eq!(kinds(&b_events), expected_ab);
    // C's events happened before, between and after A's and B's; C's stream holds only its own.
    let c_events = take(&mut seen_by_c, 3).await;
    assert_eq!(
        kinds(&c_events),
        [
            (EventType::Created, other.name.clone()),
            (EventType::Rejected, other.name.clone()),
            (EventType::Created, other_again.name.clone()),
        ]
    );
    assert_eq!(c_events[1].approval_request.as_ref(), Some(&rejected));

    // Both sides receive the same events: the request as it stood after each change.
    assert_eq!(a_events, b_events);
    let [created, accepted_event, deleted, _] = a_events.as_slice() else {
        unreachable!()
    };
    assert_eq!(created.approval_request.as_ref(), Some(&sent));
    assert!(created.tenant_connection.is_empty());
    assert_eq!(accepted_event.approval_request.as_ref(), Some(&accepted));
    assert_eq!(accepted_event.tenant_connection, connection);
    let deleted_request = deleted.approval_request.as_ref().unwrap();
    assert_eq!(deleted.tenant_connection, connection);
    assert_eq!(deleted_request.state(), State::Accepted);
    assert_eq!(deleted_request.tenant_connection, connection);
    for event in a_events.iter().chain(&c_events) {
        assert!(event.sequence > 0);
        assert!(!event.cursor.is_empty() && event.cursor.len() <= 256);
        assert!(event.event_time.is_some());
    }
    let mut unique = sequences(&a_events);
    unique.extend(sequences(&c_events));
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 7, "every event has its own sequence");
}

#[tokio::test]
async fn a_resumed_stream_starts_with_the_event_after_the_cursor_without_gaps_or_repeats() {
    let mut suite = suite().await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-A-1").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-B-1").await;
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-C-1").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);

    let first = send(&mut suite, &alice, &b).await;
    reject(&mut suite, &bob, &first, "").await;
    let second = send(&mut suite, &alice, &b).await;
    let mut events = watch(&suite, alice.request(after(""))).await;
    let applied = take(&mut events, 2).await;
    drop(events);

    // Changes while the client is away.
    let accepted = accept(&mut suite, &bob, &second).await;
    end_connection(&mut suite, &bob, &accepted.tenant_connection).await;
    let third = send(&mut suite, &alice, &c).await;

    let cursor = applied[1].cursor.clone();
    let mut resumed = watch(&suite, alice.request(after(&cursor))).await;
    let rest = take(&mut resumed, 4).await;
    assert_eq!(
        kinds(&rest),
        [
            (EventType::Created, second.name.clone()),
            (EventType::Accepted, second.name.clone()),
            (EventType::ConnectionDeleted, second.name.clone()),
            (EventType::Created, third.name.clone()),
        ]
    );
    // Together exactly the whole feed, as a fresh stream replays it.
    let mut whole = watch(&suite, alice.request(after(""))).await;
    let all = take(&mut whole, 6).await;
    let mut joined = applied.clone();
    joined.extend(rest.iter().cloned());
    assert_eq!(joined, all);
    assert_eq!(
        kinds(&applied),
        [
            (EventType::Created, first.name.clone()),
            (EventType::Rejected, first.name.clone()),
        ]
    );

    // Resuming from the newest event delivers only what happens next.
    let mut caught_up = watch(&suite, alice.request(after(&all[5].cursor))).await;
    let fourth_target = tenant(&mut suite, "Epsilon Corporation", "PSC-E-1").await;
    let fourth = send(&mut suite, &alice, &fourth_target).await;
    let next = take(&mut caught_up, 1).await;
    assert_eq!(kinds(&next), [(EventType::Created, fourth.name.clone())]);

    // Cursors that are not this feed's.
    let garbled = format!("{cursor}!");
    let too_long = "A".repeat(300);
    for bad in [
        "not a cursor",
        "v1:approval:1:1",
        garbled.as_str(),
        too_long.as_str(),
        IDENTITY_CURSOR,
    ] {
        let result = suite
            .approval
            .watch_approval_requests(alice.request(after(bad)))
            .await;
        assert_error(result, Code::InvalidArgument, "INVALID_CURSOR");
    }
}

#[tokio::test]
async fn staff_watch_every_tenant_or_the_one_they_name_and_users_only_their_own() {
    let mut suite = suite().await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-A-1").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-B-1").await;
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-C-1").await;
    let d = tenant(&mut suite, "Delta Corporation", "PSC-D-1").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let carol = Person::member(&c, 3);
    let dave = Person::admin(&d, 4);

    let ab = send(&mut suite, &alice, &b).await;
    let cd = send(&mut suite, &carol, &d).await;
    accept(&mut suite, &bob, &ab).await;
    reject(&mut suite, &dave, &cd, "").await;
    let bd = send(&mut suite, &bob, &d).await;

    let mut everything = watch(&suite, as_operator(after(""))).await;
    assert_eq!(
        kinds(&take(&mut everything, 5).await),
        [
            (EventType::Created, ab.name.clone()),
            (EventType::Created, cd.name.clone()),
            (EventType::Accepted, ab.name.clone()),
            (EventType::Rejected, cd.name.clone()),
            (EventType::Created, bd.name.clone()),
        ]
    );
    let mut only_c = watch(&suite, as_operator(of_tenant(&c.name))).await;
    assert_eq!(
        kinds(&take(&mut only_c, 2).await),
        [
            (EventType::Created, cd.name.clone()),
            (EventType::Rejected, cd.name.clone()),
        ]
    );
    let mut only_b = watch(&suite, as_auditor(of_tenant(&b.name))).await;
    assert_eq!(
        kinds(&take(&mut only_b, 3).await),
        [
            (EventType::Created, ab.name.clone()),
            (EventType::Accepted, ab.name.clone()),
            (EventType::Created, bd.name.clone()),
        ]
    );
    // A user may name their own tenant; another tenant does not exist for them.
    let mut own = watch(&suite, alice.request(of_tenant(&a.name))).await;
    assert_eq!(
        kinds(&take(&mut own, 2).await),
        [
            (EventType::Created, ab.name.clone()),
            (EventType::Accepted, ab.name.clone()),
        ]
    );
    for other in [&b.name, &c.name] {
        let result = suite
            .approval
            .watch_approval_requests(alice.request(of_tenant(other)))
            .await;
        assert_error(result, Code::NotFound, "TENANT_NOT_FOUND");
    }
}

#[tokio::test]
async fn events_carry_no_personal_information_and_the_request_as_it_stands_after_the_change() {
    let mut suite = suite().await;
    publish_terms(&suite).await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-A-1").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-B-1").await;
    let (alice, token) = first_admin(&mut suite, &a, 11).await;
    let bob = Person::admin(&b, 2);
    let mut events = watch(&suite, bob.request(after(""))).await;

    let first = send_with_token(&mut suite, &token, &b).await;
    assert_eq!(first.requester_user, alice.name);
    let rejected = reject(&mut suite, &bob, &first, "not now").await;
    let second = send_with_token(&mut suite, &token, &b).await;
    let withdrawn = suite
        .approval
        .withdraw_approval_request(authorized(
            WithdrawApprovalRequestRequest {
                name: second.name.clone(),
                etag: second.etag.clone(),
                request_id: uuid::Uuid::now_v7().to_string(),
                reason: "changed my mind".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();

    let seen = take(&mut events, 4).await;
    assert_eq!(
        kinds(&seen),
        [
            (EventType::Created, first.name.clone()),
            (EventType::Rejected, first.name.clone()),
            (EventType::Created, second.name.clone()),
            (EventType::Withdrawn, second.name.clone()),
        ]
    );
    let snapshots: Vec<&ApprovalRequest> = seen
        .iter()
        .map(|e| e.approval_request.as_ref().unwrap())
        .collect();
    assert_eq!(snapshots, [&first, &rejected, &second, &withdrawn]);
    let states: Vec<(State, &str, &str)> = snapshots
        .iter()
        .map(|r| (r.state(), r.decided_by.as_str(), r.decision_reason.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            (State::Pending, "", ""),
            (State::Rejected, bob.name.as_str(), "not now"),
            (State::Pending, "", ""),
            (State::Withdrawn, alice.name.as_str(), "changed my mind"),
        ]
    );
    // The requester appears by name only; none of their PI is in any event.
    for event in &seen {
        let encoded = event.encode_to_vec();
        for pi in [&alice.display_name, &alice.email, &alice.phone_number] {
            assert!(!pi.is_empty());
            assert!(!contains(&encoded, pi), "{pi} in {event:?}");
        }
    }
}

#[tokio::test]
async fn history_lists_the_creation_then_the_one_decision_with_its_actor_and_reason() {
    let mut suite = suite().await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-A-1").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-B-1").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let sent = send(&mut suite, &alice, &b).await;
    let pending_history = history(&mut suite, &sent.name).await;
    assert_eq!(pending_history.len(), 1);
    let rejected = reject(&mut suite, &bob, &sent, "not now").await;

    let expected = vec![
        ApprovalRequestTransition {
            from_state: State::Unspecified.into(),
            to_state: State::Pending.into(),
            actor: alice.name.clone(),
            time: sent.create_time,
            reason: String::new(),
        },
        ApprovalRequestTransition {
            from_state: State::Pending.into(),
            to_state: State::Rejected.into(),
            actor: bob.name.clone(),
            time: rejected.decide_time,
            reason: "not now".into(),
        },
    ];
    assert_eq!(pending_history, expected[..1]);
    assert_eq!(history(&mut suite, &sent.name).await, expected);

    // Both sides see it too, a page of one transition at a time.
    for reader in [&alice, &bob] {
        let first_page = suite
            .approval
            .list_approval_request_history(reader.request(history_page(&sent.name, 1, "")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first_page.transitions, expected[..1]);
        assert!(!first_page.next_page_token.is_empty());
        let second_page = suite
            .approval
            .list_approval_request_history(reader.request(history_page(
                &sent.name,
                1,
                &first_page.next_page_token,
            )))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second_page.transitions, expected[1..]);
        assert!(second_page.next_page_token.is_empty());
    }

    // A page token belongs to the history of one request.
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-C-1").await;
    let other = send(&mut suite, &alice, &c).await;
    let first_page = suite
        .approval
        .list_approval_request_history(alice.request(history_page(&sent.name, 1, "")))
        .await
        .unwrap()
        .into_inner();
    let result = suite
        .approval
        .list_approval_request_history(alice.request(history_page(
            &other.name,
            1,
            &first_page.next_page_token,
        )))
        .await;
    assert_error(result, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
}

#[tokio::test]
async fn the_sweeper_records_a_passed_expiry_once_in_history_and_on_the_feed() {
    let mut suite = suite_with(&[("PORTAL_APPROVAL__SWEEP_INTERVAL_MS", "50")]).await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-A-1").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-B-1").await;
    let alice = Person::member(&a, 1);
    let mut events = watch(&suite, alice.request(after(""))).await;
    let sent = send(&mut suite, &alice, &b).await;
    let db = suite.db.admin_pool().await.unwrap();
    let id = id_of(&sent.name);
    sqlx::query(
        "UPDATE approval.requests SET expire_time = now() - interval '1 second' WHERE id = $1",
    )
    .bind(id)
    .execute(&db)
    .await
    .unwrap();

    eventually(WAIT, "the sweeper to record the expiry", || {
        let db = db.clone();
        async move {
            let state: String =
                sqlx::query_scalar("SELECT state FROM approval.requests WHERE id = $1")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .ok()?;
            (state == "EXPIRED").then_some(())
        }
    })
    .await
    .unwrap();

    let expired = get(&mut suite, &sent.name).await;
    assert_eq!(expired.state(), State::Expired);
    assert_eq!(expired.decided_by, "services/approval");
    assert_eq!(expired.decision_reason, "expired");
    assert_eq!(expired.decide_time, expired.expire_time);
    let transitions = history(&mut suite, &sent.name).await;
    assert_eq!(
        transitions,
        [
            ApprovalRequestTransition {
                from_state: State::Unspecified.into(),
                to_state: State::Pending.into(),
                actor: alice.name.clone(),
                time: sent.create_time,
                reason: String::new(),
            },
            ApprovalRequestTransition {
                from_state: State::Pending.into(),
                to_state: State::Expired.into(),
                actor: "services/approval".into(),
                time: expired.expire_time,
                reason: "expired".into(),
            },
        ]
    );
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM approval.transitions WHERE request = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(stored, 2, "one creation and one recorded expiry");

    // The feed carried the expiry once: a later request's creation follows it directly.
    let next = send(&mut suite, &alice, &b).await;
    let seen = take(&mut events, 3).await;
    assert_eq!(
        kinds(&seen),
        [
            (EventType::Created, sent.name.clone()),
            (EventType::Expired, sent.name.clone()),
            (EventType::Created, next.name.clone()),
        ]
    );
    assert_eq!(seen[1].approval_request.as_ref(), Some(&expired));
}
