//! Every rule of the approval contract, one test per rule: bad input names its field, tenants
//! outside a request cannot see it, only the right people decide or withdraw, final states stay
//! final, etags and request ids hold, expiry holds at its instant, lists page without gaps or
//! repeats, connections end, and a request cannot pass itself off as another company's.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use common::*;
use portal_platform::auth::Kind as TokenKind;
use portal_proto::approval::v1::approval_request::State;
use portal_proto::approval::v1::tenant_connection::State as ConnectionState;
use portal_proto::approval::v1::{
    AcceptApprovalRequestRequest, ApprovalRequest, CreateApprovalRequestRequest,
    DeleteTenantConnectionRequest, GetApprovalRequestRequest, ListApprovalRequestHistoryRequest,
    ListReceivedApprovalRequestsRequest, ListSentApprovalRequestsRequest,
    ListTenantConnectionsRequest, RejectApprovalRequestRequest, TenantConnection, TenantProfile,
    WithdrawApprovalRequestRequest,
};
use portal_proto::identity::v1::Tenant;
use portal_testkit::keys::{self, authorized};
use tonic::{Code, Request, Status};
use uuid::Uuid;

const SEVEN_DAYS: i64 = 7 * 24 * 3600;

fn new_id() -> String {
    Uuid::now_v7().to_string()
}

fn getting(name: &str) -> GetApprovalRequestRequest {
    GetApprovalRequestRequest { name: name.into() }
}

fn accepting(name: &str) -> AcceptApprovalRequestRequest {
    AcceptApprovalRequestRequest {
        name: name.into(),
        etag: String::new(),
        request_id: new_id(),
    }
}

fn rejecting(name: &str, reason: &str) -> RejectApprovalRequestRequest {
    RejectApprovalRequestRequest {
        name: name.into(),
        etag: String::new(),
        request_id: new_id(),
        reason: reason.into(),
    }
}

fn withdrawing(name: &str, reason: &str) -> WithdrawApprovalRequestRequest {
    WithdrawApprovalRequestRequest {
        name: name.into(),
        etag: String::new(),
        request_id: new_id(),
        reason: reason.into(),
    }
}

fn history_of(name: &str) -> ListApprovalRequestHistoryRequest {
    ListApprovalRequestHistoryRequest {
        name: name.into(),
        ..Default::default()
    }
}

fn ending(connection: &str) -> DeleteTenantConnectionRequest {
    DeleteTenantConnectionRequest {
        name: connection.into(),
        etag: String::new(),
    }
}

fn sent_with(filter: &str) -> ListSentApprovalRequestsRequest {
    ListSentApprovalRequestsRequest {
        filter: filter.into(),
        ..Default::default()
    }
}

fn received_with(filter: &str) -> ListReceivedApprovalRequestsRequest {
    ListReceivedApprovalRequestsRequest {
        filter: filter.into(),
        ..Default::default()
    }
}

/// An OPERATOR's or an AUDITOR's request.
fn staff<T>(operator: bool, message: T) -> Request<T> {
    if operator {
        as_operator(message)
    } else {
        as_auditor(message)
    }
}

fn as_service<T>(message: T) -> Request<T> {
    authorized(
        message,
        &keys::token(TokenKind::Service, "services/transfer", None, &[]),
    )
}

/// Asserts INVALID_ARGUMENT, INVALID_REQUEST, naming exactly `field`.
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = assert_error(result, Code::InvalidArgument, "INVALID_REQUEST");
    assert_eq!(violations(&status), [field], "{status:?}");
}

/// The ErrorInfo metadata `key` of a failed call.
fn metadata(status: &Status, key: &str) -> Option<String> {
    tonic_types::StatusExt::get_error_details(status)
        .error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}

/// The (type, name) of the ResourceInfo of a failed call.
fn resource(status: &Status) -> Option<(String, String)> {
    tonic_types::StatusExt::get_error_details(status)
        .resource_info()
        .map(|info| (info.resource_type.clone(), info.resource_name.clone()))
}

/// Asserts FAILED_PRECONDITION `reason` with metadata `state`.
fn assert_final<T: std::fmt::Debug>(result: Result<T, Status>, expected: &str, state: &str) {
    let status = assert_error(result, Code::FailedPrecondition, expected);
    assert_eq!(
        metadata(&status, "state").as_deref(),
        Some(state),
        "{status:?}"
    );
}

async fn get(suite: &mut Suite, who: &Person, name: &str) -> ApprovalRequest {
    suite
        .approval
        .get_approval_request(who.request(getting(name)))
        .await
        .unwrap()
        .into_inner()
}

async fn accept(suite: &mut Suite, who: &Person, name: &str) -> ApprovalRequest {
    suite
        .approval
        .accept_approval_request(who.request(accepting(name)))
        .await
        .unwrap()
        .into_inner()
}

async fn sent_by(suite: &mut Suite, who: &Person, filter: &str) -> Vec<ApprovalRequest> {
    suite
        .approval
        .list_sent_approval_requests(who.request(sent_with(filter)))
        .await
        .unwrap()
        .into_inner()
        .approval_requests
}

async fn received_by(suite: &mut Suite, who: &Person, filter: &str) -> Vec<ApprovalRequest> {
    suite
        .approval
        .list_received_approval_requests(who.request(received_with(filter)))
        .await
        .unwrap()
        .into_inner()
        .approval_requests
}

async fn connections_of(
    suite: &mut Suite,
    who: &Person,
    show_deleted: bool,
) -> Vec<TenantConnection> {
    suite
        .approval
        .list_tenant_connections(who.request(ListTenantConnectionsRequest {
            show_deleted,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .tenant_connections
}

fn names<'a>(requests: impl IntoIterator<Item = &'a ApprovalRequest>) -> Vec<String> {
    requests.into_iter().map(|r| r.name.clone()).collect()
}

fn seconds(request: &ApprovalRequest) -> (i64, i64) {
    let create = request.create_time.unwrap();
    let expire = request.expire_time.unwrap();
    (
        expire.seconds - create.seconds,
        i64::from(expire.nanos - create.nanos),
    )
}

async fn two_tenants(suite: &mut Suite, prefix: &str) -> (Tenant, Tenant) {
    let a = tenant(suite, "Alpha Corporation", &format!("PSC-{prefix}-A")).await;
    let b = tenant(suite, "Beta Corporation", &format!("PSC-{prefix}-B")).await;
    (a, b)
}

// ----- bad input -----

#[tokio::test]
async fn a_malformed_request_to_send_names_the_field_it_got_wrong() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "SEND-BAD").await;
    let alice = Person::member(&a, 1);
    let base = connection_request(&b, "Shall we connect?");
    let with = |change: &dyn Fn(&mut ApprovalRequest)| {
        let mut request = base.clone();
        request.request_id = new_id();
        change(request.approval_request.as_mut().unwrap());
        request
    };
    let b_id = b.name.strip_prefix("tenants/").unwrap().to_owned();
    let cases: Vec<(CreateApprovalRequestRequest, &str)> = vec![
        (with(&|r| r.kind = 0), "approval_request.kind"),
        (with(&|r| r.kind = 9), "approval_request.kind"),
        (
            CreateApprovalRequestRequest {
                request_id: new_id(),
                approval_request: None,
            },
            "approval_request.kind",
        ),
        (
            with(&|r| r.target_tenant = String::new()),
            "approval_request.target_tenant",
        ),
        (
            with(&|r| r.target_tenant = "tenants/beta".into()),
            "approval_request.target_tenant",
        ),
        (
            with(&|r| r.target_tenant = b_id.clone()),
            "approval_request.target_tenant",
        ),
        (
            with(&|r| r.target_tenant = format!("tenants/{}", b_id.to_uppercase())),
            "approval_request.target_tenant",
        ),
        (
            with(&|r| r.target_tenant = format!("{}/users/{}", b.name, Uuid::now_v7())),
            "approval_request.target_tenant",
        ),
        (
            with(&|r| r.target_tenant = a.name.clone()),
            "approval_request.target_tenant",
        ),
        (
            with(&|r| r.message = "x".repeat(1001)),
            "approval_request.message",
        ),
        (
            with(&|r| r.message = "é".repeat(1001)),
            "approval_request.message",
        ),
        (
            with(&|r| r.message = "ring\u{7}the bell".into()),
            "approval_request.message",
        ),
        (
            with(&|r| r.message = "a\ttab".into()),
            "approval_request.message",
        ),
        (
            with(&|r| r.message = "line\r\nbreak".into()),
            "approval_request.message",
        ),
        (
            CreateApprovalRequestRequest {
                request_id: "not-a-uuid".into(),
                ..base.clone()
            },
            "request_id",
        ),
    ];
    for (request, field) in cases {
        let result = suite
            .approval
            .create_approval_request(alice.request(request.clone()))
            .await;
        assert_invalid(result, field);
    }
    assert!(sent_by(&mut suite, &alice, "").await.is_empty());

    // The limits themselves are fine: 1000 Unicode characters, newlines allowed.
    let longest = format!("{}\n{}", "é".repeat(500), "ü".repeat(499));
    let sent = suite
        .approval
        .create_approval_request(alice.request(connection_request(&b, &longest)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.message, longest);
}

#[tokio::test]
async fn a_malformed_name_or_reason_names_the_field_it_got_wrong() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "NAME-BAD").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let sent = send(&mut suite, &alice, &b).await;
    let id = sent
        .name
        .strip_prefix("approvalRequests/")
        .unwrap()
        .to_owned();
    let bad_names = [
        String::new(),
        "approvalRequests/".into(),
        "approvalRequests/nope".into(),
        id.clone(),
        format!("approvalRequests/{}", id.to_uppercase()),
        format!("tenantConnections/{id}"),
        format!("{}/history", sent.name),
        format!("approvalrequests/{id}"),
    ];
    for name in &bad_names {
        let result = suite
            .approval
            .get_approval_request(alice.request(getting(name)))
            .await;
        assert_invalid(result, "name");
        let result = suite
            .approval
            .accept_approval_request(bob.request(accepting(name)))
            .await;
        assert_invalid(result, "name");
        let result = suite
            .approval
            .reject_approval_request(bob.request(rejecting(name, "")))
            .await;
        assert_invalid(result, "name");
        let result = suite
            .approval
            .withdraw_approval_request(alice.request(withdrawing(name, "")))
            .await;
        assert_invalid(result, "name");
        let result = suite
            .approval
            .list_approval_request_history(alice.request(history_of(name)))
            .await;
        assert_invalid(result, "name");
    }
    for name in [
        String::new(),
        "tenantConnections/nope".into(),
        sent.name.clone(),
        format!("tenantConnections/{}", id.to_uppercase()),
    ] {
        let result = suite
            .approval
            .delete_tenant_connection(bob.request(ending(&name)))
            .await;
        assert_invalid(result, "name");
    }

    // The contract bounds reasons by length only (control characters are not mentioned).
    for reason in ["x".repeat(1001), "é".repeat(1001)] {
        let result = suite
            .approval
            .reject_approval_request(bob.request(rejecting(&sent.name, &reason)))
            .await;
        assert_invalid(result, "reason");
        let result = suite
            .approval
            .withdraw_approval_request(alice.request(withdrawing(&sent.name, &reason)))
            .await;
        assert_invalid(result, "reason");
    }
    let mut decision = accepting(&sent.name);
    decision.request_id = "12345".into();
    let result = suite
        .approval
        .accept_approval_request(bob.request(decision))
        .await;
    assert_invalid(result, "request_id");

    assert_eq!(get(&mut suite, &alice, &sent.name).await, sent);
}

#[tokio::test]
async fn bad_paging_filters_and_page_tokens_are_invalid_arguments() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "LIST-BAD").await;
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-LIST-BAD-C").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let first = send(&mut suite, &alice, &b).await;
    send(&mut suite, &alice, &c).await;

    // Negative page sizes, in every list.
    let result = suite
        .approval
        .list_sent_approval_requests(alice.request(ListSentApprovalRequestsRequest {
            page_size: -1,
            ..Default::default()
        }))
        .await;
    assert_invalid(result, "page_size");
    let result = suite
        .approval
        .list_received_approval_requests(bob.request(ListReceivedApprovalRequestsRequest {
            page_size: -5,
            ..Default::default()
        }))
        .await;
    assert_invalid(result, "page_size");
    let result = suite
        .approval
        .list_tenant_connections(bob.request(ListTenantConnectionsRequest {
            page_size: -1,
            ..Default::default()
        }))
        .await;
    assert_invalid(result, "page_size");
    let result = suite
        .approval
        .list_approval_request_history(alice.request(ListApprovalRequestHistoryRequest {
            name: first.name.clone(),
            page_size: -1,
            ..Default::default()
        }))
        .await;
    assert_invalid(result, "page_size");

    // Sizes above the maximum are the maximum, not an error.
    let all = suite
        .approval
        .list_sent_approval_requests(alice.request(ListSentApprovalRequestsRequest {
            page_size: 5000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.approval_requests.len(), 2);
    assert!(all.next_page_token.is_empty());

    // Filters outside the grammar.
    for filter in [
        "state = pending",
        "kind = X",
        "kind = TENANT_CONNECTION",
        "state = PENDING or state = ACCEPTED",
        "state = PENDING OR",
        "state PENDING",
        "state = DELETED",
        "state != PENDING",
    ] {
        let result = suite
            .approval
            .list_sent_approval_requests(alice.request(sent_with(filter)))
            .await;
        assert_error(result, Code::InvalidArgument, "INVALID_FILTER");
        let result = suite
            .approval
            .list_received_approval_requests(bob.request(received_with(filter)))
            .await;
        assert_error(result, Code::InvalidArgument, "INVALID_FILTER");
    }
    // ... and inside it.
    for filter in [
        "state = PENDING",
        "state=STATE_PENDING",
        "state = ACCEPTED OR state = STATE_PENDING",
    ] {
        assert_eq!(
            sent_by(&mut suite, &alice, filter).await.len(),
            2,
            "{filter}"
        );
    }
    assert!(
        sent_by(&mut suite, &alice, "state = REJECTED OR state = EXPIRED")
            .await
            .is_empty()
    );

    // Page tokens: valid only untouched and with the same request.
    let page = suite
        .approval
        .list_sent_approval_requests(alice.request(ListSentApprovalRequestsRequest {
            page_size: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let token = page.next_page_token;
    assert!(!token.is_empty());
    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (bad, filter) in [
        (tampered.as_str(), ""),
        ("not a token", ""),
        (token.as_str(), "state = PENDING"),
    ] {
        let result = suite
            .approval
            .list_sent_approval_requests(alice.request(ListSentApprovalRequestsRequest {
                page_size: 1,
                page_token: bad.into(),
                filter: filter.into(),
                ..Default::default()
            }))
            .await;
        assert_error(result, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    }
    // A sent list's token is no received list's token.
    let result = suite
        .approval
        .list_received_approval_requests(alice.request(ListReceivedApprovalRequestsRequest {
            page_size: 1,
            page_token: token.clone(),
            ..Default::default()
        }))
        .await;
    assert_error(result, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    let result = suite
        .approval
        .list_tenant_connections(alice.request(ListTenantConnectionsRequest {
            page_token: token.clone(),
            ..Default::default()
        }))
        .await;
    assert_error(result, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    let result = suite
        .approval
        .list_approval_request_history(alice.request(ListApprovalRequestHistoryRequest {
            name: first.name.clone(),
            page_token: tampered.clone(),
            ..Default::default()
        }))
        .await;
    assert_error(result, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    // The untouched token works.
    let next = suite
        .approval
        .list_sent_approval_requests(alice.request(ListSentApprovalRequestsRequest {
            page_size: 1,
            page_token: token,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        names(&next.approval_requests),
        std::slice::from_ref(&first.name)
    );

    // Staff must say which tenant they list, as a tenant name.
    for tenant in ["", "beta", "tenants/beta"] {
        let result = suite
            .approval
            .list_sent_approval_requests(as_operator(ListSentApprovalRequestsRequest {
                tenant: tenant.into(),
                ..Default::default()
            }))
            .await;
        assert_invalid(result, "tenant");
        let result = suite
            .approval
            .list_received_approval_requests(as_auditor(ListReceivedApprovalRequestsRequest {
                tenant: tenant.into(),
                ..Default::default()
            }))
            .await;
        assert_invalid(result, "tenant");
        let result = suite
            .approval
            .list_tenant_connections(as_operator(ListTenantConnectionsRequest {
                tenant: tenant.into(),
                ..Default::default()
            }))
            .await;
        assert_invalid(result, "tenant");
    }
}

// ----- identity -----

#[tokio::test]
async fn a_target_tenant_identity_does_not_know_is_not_found() {
    let mut suite = suite().await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-UNKNOWN-A").await;
    let alice = Person::member(&a, 1);
    let nowhere = format!("tenants/{}", Uuid::now_v7());
    let mut request = connection_request(&a, "Anyone there?");
    request.approval_request.as_mut().unwrap().target_tenant = nowhere.clone();
    let result = suite
        .approval
        .create_approval_request(alice.request(request))
        .await;
    let status = assert_error(result, Code::NotFound, "TENANT_NOT_FOUND");
    if let Some((_, name)) = resource(&status) {
        assert_eq!(name, nowhere);
    }
    assert!(sent_by(&mut suite, &alice, "").await.is_empty());
}

#[tokio::test]
async fn identity_unreachable_is_unavailable_and_the_same_call_works_once_it_is_back() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "CUT").await;
    let alice = Person::member(&a, 1);
    let request = connection_request(&b, "Shall we connect?");

    suite.identity_link.cut();
    let result = suite
        .approval
        .create_approval_request(alice.request(request.clone()))
        .await;
    let status = assert_error(result, Code::Unavailable, "DEPENDENCY_UNAVAILABLE");
    assert_eq!(
        metadata(&status, "service").as_deref(),
        Some("identity"),
        "{status:?}"
    );
    assert!(sent_by(&mut suite, &alice, "").await.is_empty());

    suite.identity_link.restore();
    let client = suite.approval.clone();
    let created = portal_testkit::eventually(
        Duration::from_secs(10),
        "the same request to pass once identity is back",
        || {
            let mut client = client.clone();
            let retry = alice.request(request.clone());
            async move { client.create_approval_request(retry).await.ok() }
        },
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(created.state(), State::Pending);
    assert_eq!(
        names(&sent_by(&mut suite, &alice, "").await),
        [created.name]
    );
}

// ----- one pending request, one connection -----

#[tokio::test]
async fn a_second_pending_request_between_two_tenants_already_exists_in_either_direction() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "TWICE").await;
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-TWICE-C").await;
    let alice = Person::member(&a, 1);
    let anna = Person::admin(&a, 2);
    let bob = Person::admin(&b, 3);
    let first = send(&mut suite, &alice, &b).await;

    for (who, target) in [(&alice, &b), (&anna, &b), (&bob, &a)] {
        let result = suite
            .approval
            .create_approval_request(who.request(connection_request(target, "Again?")))
            .await;
        let status = assert_error(result, Code::AlreadyExists, "PENDING_REQUEST_EXISTS");
        assert_eq!(
            resource(&status),
            Some((
                "portal.approval.v1.ApprovalRequest".to_owned(),
                first.name.clone()
            )),
            "{status:?}"
        );
    }
    // Another pair is another matter.
    let other = send(&mut suite, &alice, &c).await;
    assert_eq!(
        names(&sent_by(&mut suite, &alice, "").await),
        [other.name, first.name.clone()]
    );
    assert_eq!(
        names(&received_by(&mut suite, &bob, "").await),
        [first.name]
    );
}

#[tokio::test]
async fn connected_tenants_cannot_request_again_until_either_side_ends_the_connection() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "CONNECTED").await;
    let alice = Person::member(&a, 1);
    let anna = Person::admin(&a, 2);
    let bob = Person::admin(&b, 3);

    // Ended by the requester's side.
    let first = send(&mut suite, &alice, &b).await;
    let accepted = accept(&mut suite, &bob, &first.name).await;
    for (who, target) in [(&alice, &b), (&bob, &a)] {
        let result = suite
            .approval
            .create_approval_request(who.request(connection_request(target, "Again?")))
            .await;
        assert_error(result, Code::FailedPrecondition, "ALREADY_CONNECTED");
    }
    let ended = suite
        .approval
        .delete_tenant_connection(anna.request(ending(&accepted.tenant_connection)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.state(), ConnectionState::Deleted);
    assert_eq!(ended.deleted_by, anna.name);

    // Ended by the target's side.
    let second = send(&mut suite, &alice, &b).await;
    assert_eq!(second.state(), State::Pending);
    let accepted = accept(&mut suite, &bob, &second.name).await;
    let result = suite
        .approval
        .create_approval_request(bob.request(connection_request(&a, "Again?")))
        .await;
    assert_error(result, Code::FailedPrecondition, "ALREADY_CONNECTED");
    let ended = suite
        .approval
        .delete_tenant_connection(bob.request(ending(&accepted.tenant_connection)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.deleted_by, bob.name);

    let third = send(&mut suite, &bob, &a).await;
    assert_eq!(third.state(), State::Pending);
    assert!(connections_of(&mut suite, &alice, false).await.is_empty());
    assert_eq!(connections_of(&mut suite, &alice, true).await.len(), 2);
}

// ----- who decides, who sees -----

#[tokio::test]
async fn only_an_admin_of_the_target_tenant_accepts_or_rejects() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "DECIDER").await;
    let alice = Person::member(&a, 1);
    let anna = Person::admin(&a, 2);
    let bea = Person::member(&b, 3);
    let sent = send(&mut suite, &alice, &b).await;

    for who in [&bea, &anna, &alice] {
        let result = suite
            .approval
            .accept_approval_request(who.request(accepting(&sent.name)))
            .await;
        assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
        let result = suite
            .approval
            .reject_approval_request(who.request(rejecting(&sent.name, "no")))
            .await;
        assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    }
    assert_eq!(get(&mut suite, &alice, &sent.name).await, sent);
    // The member may read what they cannot decide.
    assert_eq!(get(&mut suite, &bea, &sent.name).await, sent);
}

#[tokio::test]
async fn a_request_does_not_exist_for_a_third_tenant() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "THIRD").await;
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-THIRD-C").await;
    let alice = Person::member(&a, 1);
    let carol = Person::admin(&c, 3);
    let sent = send(&mut suite, &alice, &b).await;
    let missing = format!("approvalRequests/{}", Uuid::now_v7());

    for name in [&sent.name, &missing] {
        let result = suite
            .approval
            .get_approval_request(carol.request(getting(name)))
            .await;
        assert_error(result, Code::NotFound, "APPROVAL_REQUEST_NOT_FOUND");
        let result = suite
            .approval
            .accept_approval_request(carol.request(accepting(name)))
            .await;
        assert_error(result, Code::NotFound, "APPROVAL_REQUEST_NOT_FOUND");
        let result = suite
            .approval
            .reject_approval_request(carol.request(rejecting(name, "")))
            .await;
        assert_error(result, Code::NotFound, "APPROVAL_REQUEST_NOT_FOUND");
        let result = suite
            .approval
            .withdraw_approval_request(carol.request(withdrawing(name, "")))
            .await;
        assert_error(result, Code::NotFound, "APPROVAL_REQUEST_NOT_FOUND");
        let result = suite
            .approval
            .list_approval_request_history(carol.request(history_of(name)))
            .await;
        assert_error(result, Code::NotFound, "APPROVAL_REQUEST_NOT_FOUND");
    }
    // Nor through another tenant's lists.
    let result = suite
        .approval
        .list_sent_approval_requests(carol.request(ListSentApprovalRequestsRequest {
            tenant: a.name.clone(),
            ..Default::default()
        }))
        .await;
    assert_error(result, Code::NotFound, "TENANT_NOT_FOUND");
    let result = suite
        .approval
        .list_received_approval_requests(carol.request(ListReceivedApprovalRequestsRequest {
            tenant: b.name.clone(),
            ..Default::default()
        }))
        .await;
    assert_error(result, Code::NotFound, "TENANT_NOT_FOUND");
    let result = suite
        .approval
        .list_tenant_connections(carol.request(ListTenantConnectionsRequest {
            tenant: a.name.clone(),
            ..Default::default()
        }))
        .await;
    assert_error(result, Code::NotFound, "TENANT_NOT_FOUND");
    assert!(sent_by(&mut suite, &carol, "").await.is_empty());
    assert!(received_by(&mut suite, &carol, "").await.is_empty());
    assert_eq!(get(&mut suite, &alice, &sent.name).await, sent);
}

#[tokio::test]
async fn operators_and_auditors_read_everything_and_change_nothing() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "STAFF").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-STAFF-C").await;
    let sent = send(&mut suite, &alice, &b).await;
    let connected = send(&mut suite, &bob, &c).await;
    let connection = accept(&mut suite, &Person::admin(&c, 3), &connected.name)
        .await
        .tenant_connection;

    for operator in [true, false] {
        let who = if operator { "operator" } else { "auditor" };
        let seen = suite
            .approval
            .get_approval_request(staff(operator, getting(&sent.name)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(seen, sent, "{who}");
        let listed = suite
            .approval
            .list_sent_approval_requests(staff(
                operator,
                ListSentApprovalRequestsRequest {
                    tenant: a.name.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            listed.approval_requests,
            std::slice::from_ref(&sent),
            "{who}"
        );
        let listed = suite
            .approval
            .list_received_approval_requests(staff(
                operator,
                ListReceivedApprovalRequestsRequest {
                    tenant: b.name.clone(),
                    filter: "state = PENDING".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            listed.approval_requests,
            std::slice::from_ref(&sent),
            "{who}"
        );
        let history = suite
            .approval
            .list_approval_request_history(staff(operator, history_of(&sent.name)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(history.transitions.len(), 1, "{who}");
        let connections = suite
            .approval
            .list_tenant_connections(staff(
                operator,
                ListTenantConnectionsRequest {
                    tenant: b.name.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(connections.tenant_connections.len(), 1, "{who}");

        let result = suite
            .approval
            .accept_approval_request(staff(operator, accepting(&sent.name)))
            .await;
        assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
        let result = suite
            .approval
            .reject_approval_request(staff(operator, rejecting(&sent.name, "")))
            .await;
        assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
        let result = suite
            .approval
            .withdraw_approval_request(staff(operator, withdrawing(&sent.name, "")))
            .await;
        assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
        let result = suite
            .approval
            .create_approval_request(staff(operator, connection_request(&a, "from staff")))
            .await;
        assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
        let result = suite
            .approval
            .delete_tenant_connection(staff(operator, ending(&connection)))
            .await;
        assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    }
    assert_eq!(get(&mut suite, &alice, &sent.name).await, sent);
    assert_eq!(connections_of(&mut suite, &bob, false).await.len(), 1);
}

#[tokio::test]
async fn a_service_token_is_refused() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "SERVICE").await;
    let alice = Person::member(&a, 1);
    let sent = send(&mut suite, &alice, &b).await;

    let result = suite
        .approval
        .create_approval_request(as_service(connection_request(&a, "from a service")))
        .await;
    assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    let result = suite
        .approval
        .get_approval_request(as_service(getting(&sent.name)))
        .await;
    assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    let result = suite
        .approval
        .list_sent_approval_requests(as_service(ListSentApprovalRequestsRequest {
            tenant: a.name.clone(),
            ..Default::default()
        }))
        .await;
    assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    let result = suite
        .approval
        .list_received_approval_requests(as_service(ListReceivedApprovalRequestsRequest {
            tenant: b.name.clone(),
            ..Default::default()
        }))
        .await;
    assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    let result = suite
        .approval
        .accept_approval_request(as_service(accepting(&sent.name)))
        .await;
    assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    let result = suite
        .approval
        .reject_approval_request(as_service(rejecting(&sent.name, "")))
        .await;
    assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    let result = suite
        .approval
        .withdraw_approval_request(as_service(withdrawing(&sent.name, "")))
        .await;
    assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    let result = suite
        .approval
        .list_approval_request_history(as_service(history_of(&sent.name)))
        .await;
    assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    let result = suite
        .approval
        .list_tenant_connections(as_service(ListTenantConnectionsRequest {
            tenant: a.name.clone(),
            ..Default::default()
        }))
        .await;
    assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    assert_eq!(get(&mut suite, &alice, &sent.name).await, sent);
}

#[tokio::test]
async fn the_requesting_user_or_an_admin_of_the_requester_tenant_withdraws() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "WITHDRAW").await;
    let alice = Person::member(&a, 1);
    let anna = Person::admin(&a, 2);
    let amos = Person::member(&a, 3);
    let bob = Person::admin(&b, 4);

    let first = send(&mut suite, &alice, &b).await;
    for who in [&amos, &bob] {
        let result = suite
            .approval
            .withdraw_approval_request(who.request(withdrawing(&first.name, "")))
            .await;
        assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    }
    assert_eq!(get(&mut suite, &alice, &first.name).await, first);
    let withdrawn = suite
        .approval
        .withdraw_approval_request(alice.request(withdrawing(&first.name, "Changed my mind")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(withdrawn.state(), State::Withdrawn);
    assert_eq!(withdrawn.decided_by, alice.name);
    assert_eq!(withdrawn.decision_reason, "Changed my mind");
    assert!(withdrawn.decide_time.is_some());
    assert!(withdrawn.tenant_connection.is_empty());
    let result = suite
        .approval
        .accept_approval_request(bob.request(accepting(&first.name)))
        .await;
    assert_final(result, "REQUEST_NOT_PENDING", "STATE_WITHDRAWN");
    let result = suite
        .approval
        .withdraw_approval_request(alice.request(withdrawing(&first.name, "")))
        .await;
    assert_final(result, "REQUEST_NOT_PENDING", "STATE_WITHDRAWN");

    let second = send(&mut suite, &alice, &b).await;
    let withdrawn = suite
        .approval
        .withdraw_approval_request(anna.request(withdrawing(&second.name, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(withdrawn.state(), State::Withdrawn);
    assert_eq!(withdrawn.decided_by, anna.name);
    assert_eq!(withdrawn.decision_reason, "");
    assert_eq!(
        received_by(&mut suite, &bob, "state = WITHDRAWN").await,
        [withdrawn, get(&mut suite, &bob, &first.name).await]
    );
}

// ----- final states, etags, request ids -----

#[tokio::test]
async fn a_rejected_request_is_final_and_keeps_its_reason() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "REJECTED").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let sent = send(&mut suite, &alice, &b).await;

    let rejected = suite
        .approval
        .reject_approval_request(bob.request(rejecting(&sent.name, "Not this quarter")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.state(), State::Rejected);
    assert_eq!(rejected.decided_by, bob.name);
    assert_eq!(rejected.decision_reason, "Not this quarter");
    assert!(rejected.decide_time.is_some());
    assert_ne!(rejected.etag, sent.etag);
    assert_eq!(get(&mut suite, &alice, &sent.name).await, rejected);
    let history = suite
        .approval
        .list_approval_request_history(alice.request(history_of(&sent.name)))
        .await
        .unwrap()
        .into_inner()
        .transitions;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].from_state(), State::Pending);
    assert_eq!(history[1].to_state(), State::Rejected);
    assert_eq!(history[1].actor, bob.name);
    assert_eq!(history[1].reason, "Not this quarter");

    let result = suite
        .approval
        .accept_approval_request(bob.request(accepting(&sent.name)))
        .await;
    assert_final(result, "REQUEST_NOT_PENDING", "STATE_REJECTED");
    let result = suite
        .approval
        .reject_approval_request(bob.request(rejecting(&sent.name, "again")))
        .await;
    assert_final(result, "REQUEST_NOT_PENDING", "STATE_REJECTED");
    let result = suite
        .approval
        .withdraw_approval_request(alice.request(withdrawing(&sent.name, "")))
        .await;
    assert_final(result, "REQUEST_NOT_PENDING", "STATE_REJECTED");
    assert_eq!(get(&mut suite, &alice, &sent.name).await, rejected);
    assert!(connections_of(&mut suite, &bob, true).await.is_empty());
}

#[tokio::test]
async fn an_accepted_request_is_final() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "ACCEPTED").await;
    let alice = Person::member(&a, 1);
    let anna = Person::admin(&a, 2);
    let bob = Person::admin(&b, 3);
    let sent = send(&mut suite, &alice, &b).await;
    let accepted = accept(&mut suite, &bob, &sent.name).await;
    assert_eq!(accepted.decision_reason, "");

    for who in [&alice, &anna] {
        let result = suite
            .approval
            .withdraw_approval_request(who.request(withdrawing(&sent.name, "")))
            .await;
        assert_final(result, "REQUEST_NOT_PENDING", "STATE_ACCEPTED");
    }
    let result = suite
        .approval
        .reject_approval_request(bob.request(rejecting(&sent.name, "")))
        .await;
    assert_final(result, "REQUEST_NOT_PENDING", "STATE_ACCEPTED");
    let result = suite
        .approval
        .accept_approval_request(bob.request(accepting(&sent.name)))
        .await;
    assert_final(result, "REQUEST_NOT_PENDING", "STATE_ACCEPTED");
    assert_eq!(get(&mut suite, &alice, &sent.name).await, accepted);
    assert_eq!(connections_of(&mut suite, &alice, true).await.len(), 1);
}

#[tokio::test]
async fn a_stale_etag_is_aborted() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "ETAG").await;
    let alice = Person::member(&a, 1);
    let anna = Person::admin(&a, 2);
    let bob = Person::admin(&b, 3);
    let sent = send(&mut suite, &alice, &b).await;

    let result = suite
        .approval
        .reject_approval_request(bob.request(RejectApprovalRequestRequest {
            etag: "\"41\"".into(),
            ..rejecting(&sent.name, "")
        }))
        .await;
    assert_error(result, Code::Aborted, "ETAG_MISMATCH");
    let result = suite
        .approval
        .withdraw_approval_request(alice.request(WithdrawApprovalRequestRequest {
            etag: "bogus".into(),
            ..withdrawing(&sent.name, "")
        }))
        .await;
    assert_error(result, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(get(&mut suite, &alice, &sent.name).await, sent);

    let accepted = suite
        .approval
        .accept_approval_request(bob.request(AcceptApprovalRequestRequest {
            etag: sent.etag.clone(),
            ..accepting(&sent.name)
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state(), State::Accepted);
    assert_ne!(accepted.etag, sent.etag);
    // The etag the withdrawer saw is stale now.
    let result = suite
        .approval
        .withdraw_approval_request(alice.request(WithdrawApprovalRequestRequest {
            etag: sent.etag.clone(),
            ..withdrawing(&sent.name, "")
        }))
        .await;
    assert_error(result, Code::Aborted, "ETAG_MISMATCH");

    // Connections too.
    let connection = connections_of(&mut suite, &anna, false).await.remove(0);
    let result = suite
        .approval
        .delete_tenant_connection(anna.request(DeleteTenantConnectionRequest {
            name: connection.name.clone(),
            etag: "\"99\"".into(),
        }))
        .await;
    assert_error(result, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(
        connections_of(&mut suite, &anna, false).await,
        std::slice::from_ref(&connection)
    );
    let ended = suite
        .approval
        .delete_tenant_connection(anna.request(DeleteTenantConnectionRequest {
            name: connection.name.clone(),
            etag: connection.etag.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.state(), ConnectionState::Deleted);
    assert_ne!(ended.etag, connection.etag);
}

#[tokio::test]
async fn an_accept_retried_with_its_request_id_returns_the_first_answer() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "ACCEPT-ONCE").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let sent = send(&mut suite, &alice, &b).await;
    let decision = accepting(&sent.name);

    let first = suite
        .approval
        .accept_approval_request(bob.request(decision.clone()))
        .await
        .unwrap()
        .into_inner();
    let retry = suite
        .approval
        .accept_approval_request(bob.request(decision.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry, first);
    assert_eq!(connections_of(&mut suite, &bob, true).await.len(), 1);
    let history = suite
        .approval
        .list_approval_request_history(bob.request(history_of(&sent.name)))
        .await
        .unwrap()
        .into_inner()
        .transitions;
    assert_eq!(history.len(), 2);

    // A new request_id is a new attempt, and the request was decided.
    let result = suite
        .approval
        .accept_approval_request(bob.request(accepting(&sent.name)))
        .await;
    assert_final(result, "REQUEST_NOT_PENDING", "STATE_ACCEPTED");
    // The same request_id with another request is a mistake.
    let result = suite
        .approval
        .accept_approval_request(bob.request(AcceptApprovalRequestRequest {
            etag: sent.etag.clone(),
            ..decision
        }))
        .await;
    assert_error(result, Code::InvalidArgument, "REQUEST_ID_REUSED");
}

#[tokio::test]
async fn a_send_retried_with_its_request_id_returns_the_same_request() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "SEND-ONCE").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let request = connection_request(&b, "Shall we connect?");

    let first = suite
        .approval
        .create_approval_request(alice.request(request.clone()))
        .await
        .unwrap()
        .into_inner();
    let retry = suite
        .approval
        .create_approval_request(alice.request(request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry, first);
    assert_eq!(
        names(&sent_by(&mut suite, &alice, "").await),
        std::slice::from_ref(&first.name)
    );
    // A retry is answered from the stored answer even while identity is unreachable.
    suite.identity_link.cut();
    let while_cut = suite
        .approval
        .create_approval_request(alice.request(request.clone()))
        .await
        .unwrap()
        .into_inner();
    suite.identity_link.restore();
    assert_eq!(while_cut, first);

    let mut changed = request.clone();
    changed.approval_request.as_mut().unwrap().message = "Shall we connect, please?".into();
    let result = suite
        .approval
        .create_approval_request(alice.request(changed))
        .await;
    assert_error(result, Code::InvalidArgument, "REQUEST_ID_REUSED");

    // Even after the request was decided, the retry gets the original answer.
    accept(&mut suite, &bob, &first.name).await;
    let late = suite
        .approval
        .create_approval_request(alice.request(request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late, first);
    assert_eq!(sent_by(&mut suite, &alice, "").await.len(), 1);
}

// ----- expiry -----

#[tokio::test]
async fn a_request_past_its_expire_time_is_expired_from_that_instant() {
    let mut suite = suite_with(&[("PORTAL_APPROVAL__SWEEP_INTERVAL_MS", "3600000")]).await;
    let (a, b) = two_tenants(&mut suite, "EXPIRED").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let sent = send(&mut suite, &alice, &b).await;
    let id = Uuid::parse_str(sent.name.strip_prefix("approvalRequests/").unwrap()).unwrap();
    let admin = suite.db.admin_pool().await.unwrap();
    let updated = sqlx::query(
        "UPDATE approval.requests SET expire_time = now() - interval '1 second' WHERE id = $1",
    )
    .bind(id)
    .execute(&admin)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(updated, 1);

    let expired = get(&mut suite, &alice, &sent.name).await;
    assert_eq!(expired.state(), State::Expired);
    assert_eq!(expired.decided_by, "services/approval");
    assert_eq!(expired.decision_reason, "expired");
    assert_eq!(expired.decide_time, expired.expire_time);
    assert_ne!(expired.etag, sent.etag);
    assert_eq!(get(&mut suite, &bob, &sent.name).await, expired);

    assert!(
        sent_by(&mut suite, &alice, "state = PENDING")
            .await
            .is_empty()
    );
    assert!(
        received_by(&mut suite, &bob, "state = PENDING")
            .await
            .is_empty()
    );
    assert_eq!(
        sent_by(&mut suite, &alice, "state = EXPIRED").await,
        std::slice::from_ref(&expired)
    );
    assert_eq!(
        received_by(&mut suite, &bob, "state = STATE_EXPIRED").await,
        std::slice::from_ref(&expired)
    );
    let history = suite
        .approval
        .list_approval_request_history(bob.request(history_of(&sent.name)))
        .await
        .unwrap()
        .into_inner()
        .transitions;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].to_state(), State::Expired);
    assert_eq!(history[1].actor, "services/approval");
    assert_eq!(history[1].reason, "expired");

    let result = suite
        .approval
        .accept_approval_request(bob.request(accepting(&sent.name)))
        .await;
    assert_error(result, Code::FailedPrecondition, "REQUEST_EXPIRED");
    let result = suite
        .approval
        .reject_approval_request(bob.request(rejecting(&sent.name, "")))
        .await;
    assert_error(result, Code::FailedPrecondition, "REQUEST_EXPIRED");
    let result = suite
        .approval
        .withdraw_approval_request(alice.request(withdrawing(&sent.name, "")))
        .await;
    assert_error(result, Code::FailedPrecondition, "REQUEST_EXPIRED");
    assert!(connections_of(&mut suite, &bob, true).await.is_empty());

    // The expired request no longer blocks the pair, in either direction.
    let again = send(&mut suite, &bob, &a).await;
    assert_eq!(again.state(), State::Pending);
    let after = get(&mut suite, &alice, &sent.name).await;
    assert_eq!(after.state(), State::Expired);
    assert_eq!(after.decided_by, "services/approval");
    assert_eq!(after.decide_time, expired.decide_time);
    // Once the expiry is recorded (here by the new send), deciding it is still REQUEST_EXPIRED.
    let result = suite
        .approval
        .accept_approval_request(bob.request(accepting(&sent.name)))
        .await;
    assert_error(result, Code::FailedPrecondition, "REQUEST_EXPIRED");
    let result = suite
        .approval
        .withdraw_approval_request(alice.request(withdrawing(&sent.name, "")))
        .await;
    assert_error(result, Code::FailedPrecondition, "REQUEST_EXPIRED");
    assert_eq!(
        sent_by(&mut suite, &alice, "state = EXPIRED").await.len(),
        1
    );
    assert_eq!(
        names(&received_by(&mut suite, &alice, "state = PENDING").await),
        [again.name]
    );
}

#[tokio::test]
async fn requests_expire_seven_days_after_they_are_sent_by_default() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "EXPIRY-DEFAULT").await;
    let sent = send(&mut suite, &Person::member(&a, 1), &b).await;
    assert_eq!(seconds(&sent), (SEVEN_DAYS, 0));
}

#[tokio::test]
async fn the_expiry_period_is_configurable() {
    let mut suite = suite_with(&[("PORTAL_APPROVAL__REQUEST_EXPIRY_SECS", "3600")]).await;
    let (a, b) = two_tenants(&mut suite, "EXPIRY-HOUR").await;
    let sent = send(&mut suite, &Person::member(&a, 1), &b).await;
    assert_eq!(seconds(&sent), (3600, 0));
}

// ----- lists and connections -----

#[tokio::test]
async fn lists_are_newest_first_and_pages_neither_skip_nor_repeat_when_requests_arrive() {
    let mut suite = suite().await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-PAGES-A").await;
    let mut targets = Vec::new();
    for (n, name) in ["Beta", "Gamma", "Delta", "Epsilon"]
        .into_iter()
        .enumerate()
    {
        targets.push(tenant(&mut suite, name, &format!("PSC-PAGES-{n}")).await);
    }
    let alice = Person::member(&a, 1);
    let mut older = Vec::new();
    for target in &targets[..3] {
        older.push(send(&mut suite, &alice, target).await);
    }
    let page = |token: String| ListSentApprovalRequestsRequest {
        page_size: 1,
        page_token: token,
        ..Default::default()
    };
    let first = suite
        .approval
        .list_sent_approval_requests(alice.request(page(String::new())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&first.approval_requests), [older[2].name.clone()]);

    let newest = send(&mut suite, &alice, &targets[3]).await;
    let mut walked = names(&first.approval_requests);
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let next = suite
            .approval
            .list_sent_approval_requests(alice.request(page(token)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(next.approval_requests.len(), 1);
        walked.extend(names(&next.approval_requests));
        token = next.next_page_token;
    }
    assert_eq!(walked, names(older.iter().rev()));

    let all = sent_by(&mut suite, &alice, "").await;
    let mut expected = vec![newest.name.clone()];
    expected.extend(names(older.iter().rev()));
    assert_eq!(names(&all), expected);
    let times: Vec<_> = all
        .iter()
        .map(|r| {
            let t = r.create_time.unwrap();
            (t.seconds, t.nanos)
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
}

#[tokio::test]
async fn connections_are_listed_for_both_sides_and_ended_ones_only_with_show_deleted() {
    let mut suite = suite().await;
    let (a, b) = two_tenants(&mut suite, "CONNECTIONS").await;
    let c = tenant(&mut suite, "Gamma Corporation", "PSC-CONNECTIONS-C").await;
    let d = tenant(&mut suite, "Delta Corporation", "PSC-CONNECTIONS-D").await;
    let alice = Person::member(&a, 1);
    let anna = Person::admin(&a, 2);
    let bob = Person::admin(&b, 3);
    let bea = Person::member(&b, 4);
    let carol = Person::member(&c, 5);
    let dan = Person::admin(&d, 6);

    let ab = send(&mut suite, &alice, &b).await;
    let ab = accept(&mut suite, &bob, &ab.name).await;
    let ca = send(&mut suite, &carol, &a).await;
    let ca = accept(&mut suite, &anna, &ca.name).await;

    let of_a = connections_of(&mut suite, &alice, false).await;
    assert_eq!(
        of_a.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        [ca.tenant_connection.clone(), ab.tenant_connection.clone()]
    );
    let ab_connection = of_a[1].clone();
    assert_eq!(ab_connection.state(), ConnectionState::Active);
    assert_eq!(ab_connection.approval_request, ab.name);
    let mut pair = vec![a.name.clone(), b.name.clone()];
    pair.sort();
    assert_eq!(ab_connection.tenants, pair);
    assert!(ab_connection.delete_time.is_none());
    assert_eq!(ab_connection.create_time, ab.decide_time);
    assert_eq!(
        connections_of(&mut suite, &bea, false).await,
        std::slice::from_ref(&ab_connection)
    );
    assert_eq!(
        connections_of(&mut suite, &carol, false).await,
        [of_a[0].clone()]
    );
    assert!(connections_of(&mut suite, &dan, true).await.is_empty());

    // Members cannot end it; other tenants cannot see it.
    for member in [&bea, &alice] {
        let result = suite
            .approval
            .delete_tenant_connection(member.request(ending(&ab_connection.name)))
            .await;
        assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    }
    let missing = format!("tenantConnections/{}", Uuid::now_v7());
    for name in [&ab_connection.name, &missing] {
        let result = suite
            .approval
            .delete_tenant_connection(dan.request(ending(name)))
            .await;
        assert_error(result, Code::NotFound, "TENANT_CONNECTION_NOT_FOUND");
    }

    let ended = suite
        .approval
        .delete_tenant_connection(bob.request(ending(&ab_connection.name)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.state(), ConnectionState::Deleted);
    assert_eq!(ended.deleted_by, bob.name);
    assert!(ended.delete_time.is_some());
    assert_eq!(ended.create_time, ab_connection.create_time);
    // Ending it again, from either side, returns it unchanged.
    for admin in [&anna, &bob] {
        let again = suite
            .approval
            .delete_tenant_connection(admin.request(ending(&ab_connection.name)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, ended);
    }
    let again = suite
        .approval
        .delete_tenant_connection(anna.request(DeleteTenantConnectionRequest {
            name: ab_connection.name.clone(),
            etag: ab_connection.etag.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, ended);

    assert_eq!(
        connections_of(&mut suite, &alice, false).await,
        [of_a[0].clone()]
    );
    assert_eq!(
        connections_of(&mut suite, &alice, true).await,
        [of_a[0].clone(), ended.clone()]
    );
    assert!(connections_of(&mut suite, &bob, false).await.is_empty());
    assert_eq!(
        connections_of(&mut suite, &bob, true).await,
        std::slice::from_ref(&ended)
    );
    let staff = suite
        .approval
        .list_tenant_connections(as_auditor(ListTenantConnectionsRequest {
            tenant: b.name.clone(),
            show_deleted: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(staff.tenant_connections, [ended]);
    // The request that made it stays ACCEPTED.
    assert_eq!(
        get(&mut suite, &alice, &ab.name).await.state(),
        State::Accepted
    );
}

// ----- anti-phishing -----

#[tokio::test]
async fn the_receiver_sees_the_requester_tenant_as_identity_knows_it() {
    let mut suite = suite().await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-PHISH-A").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-PHISH-B").await;
    let c = tenant(&mut suite, "Gamma Bank", "PSC-PHISH-C").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let mut request = connection_request(&b, "We are Gamma Bank, trust us");
    {
        let claimed = request.approval_request.as_mut().unwrap();
        claimed.requester_tenant = c.name.clone();
        claimed.requester_user = format!("{}/users/{}", c.name, Uuid::now_v7());
        claimed.requester_tenant_profile = Some(TenantProfile {
            tenant: c.name.clone(),
            display_name: "Gamma Bank".into(),
            contract_reference: "PSC-PHISH-C".into(),
        });
        claimed.target_tenant_profile = Some(TenantProfile {
            tenant: b.name.clone(),
            display_name: "Someone Else".into(),
            contract_reference: "PSC-FAKE".into(),
        });
        claimed.name = format!("approvalRequests/{}", Uuid::now_v7());
        claimed.state = State::Accepted.into();
        claimed.decided_by = c.name.clone();
        claimed.tenant_connection = format!("tenantConnections/{}", Uuid::now_v7());
    }
    let sent = suite
        .approval
        .create_approval_request(alice.request(request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(sent.name, request.approval_request.unwrap().name);

    let received = received_by(&mut suite, &bob, "").await;
    assert_eq!(received, std::slice::from_ref(&sent));
    let seen = &received[0];
    assert_eq!(seen.state(), State::Pending);
    assert_eq!(seen.requester_tenant, a.name);
    assert_eq!(seen.requester_user, alice.name);
    assert_eq!(seen.decided_by, "");
    assert_eq!(seen.tenant_connection, "");
    assert_eq!(
        seen.requester_tenant_profile,
        Some(TenantProfile {
            tenant: a.name.clone(),
            display_name: "Alpha Corporation".into(),
            contract_reference: "PSC-PHISH-A".into(),
        })
    );
    assert_eq!(
        seen.target_tenant_profile,
        Some(TenantProfile {
            tenant: b.name.clone(),
            display_name: "Beta Corporation".into(),
            contract_reference: "PSC-PHISH-B".into(),
        })
    );
    // Gamma Bank knows nothing of it.
    let carol = Person::admin(&c, 3);
    assert!(sent_by(&mut suite, &carol, "").await.is_empty());
}
