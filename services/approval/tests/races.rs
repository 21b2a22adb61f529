//! Racing callers: many decisions on one request, many sends between one pair of tenants, many
//! accepts with one etag. Each race has exactly one winner and leaves one consistent history.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::*;
use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use portal_proto::approval::v1::approval_request::State;
use portal_proto::approval::v1::tenant_connection::State as ConnectionState;
use portal_proto::approval::v1::{
    AcceptApprovalRequestRequest, ApprovalRequest, GetApprovalRequestRequest,
    ListApprovalRequestHistoryRequest, ListSentApprovalRequestsRequest,
    ListTenantConnectionsRequest, RejectApprovalRequestRequest, WithdrawApprovalRequestRequest,
};
use tonic::{Code, Status};
use uuid::Uuid;

type Attempt = BoxFuture<'static, (State, Result<ApprovalRequest, Status>)>;

fn new_id() -> String {
    Uuid::now_v7().to_string()
}

/// Asserts a race's loser lost the way the contract says: the request is no longer PENDING,
/// or the version the loser saw is gone.
fn assert_lost(status: &Status) {
    match status.code() {
        Code::FailedPrecondition => assert_eq!(reason(status), "REQUEST_NOT_PENDING", "{status:?}"),
        Code::Aborted => assert_eq!(reason(status), "ETAG_MISMATCH", "{status:?}"),
        _ => panic!("a loser should fail FAILED_PRECONDITION or ABORTED: {status:?}"),
    }
}

/// Every state transition of `name`, as its requester sees them.
async fn history(suite: &mut Suite, who: &Person, name: &str) -> Vec<(State, State, String)> {
    suite
        .approval
        .list_approval_request_history(who.request(ListApprovalRequestHistoryRequest {
            name: name.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .transitions
        .into_iter()
        .map(|t| (t.from_state(), t.to_state(), t.actor))
        .collect()
}

async fn active_connections(suite: &mut Suite, who: &Person) -> Vec<String> {
    suite
        .approval
        .list_tenant_connections(who.request(ListTenantConnectionsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tenant_connections
        .into_iter()
        .inspect(|c| assert_eq!(c.state(), ConnectionState::Active))
        .map(|c| c.name)
        .collect()
}

/// Twelve attempts on `sent` at once: accepts and rejects by the two target admins, withdrawals
/// by the requester and an admin of its tenant, starting with kind `first` (0 accept, 1 reject,
/// 2 withdraw).
async fn decide_at_once(
    suite: &Suite,
    sent: &ApprovalRequest,
    requesters: [&Person; 2],
    admins: [&Person; 2],
    first: usize,
) -> Vec<(State, Result<ApprovalRequest, Status>)> {
    let attempts: Vec<Attempt> = (0..12)
        .map(|i| {
            let mut client = suite.approval.clone();
            let name = sent.name.clone();
            match (i + first) % 3 {
                0 => {
                    let request = admins[i % 2].request(AcceptApprovalRequestRequest {
                        name,
                        etag: String::new(),
                        request_id: new_id(),
                    });
                    async move {
                        let result = client.accept_approval_request(request).await;
                        (State::Accepted, result.map(tonic::Response::into_inner))
                    }
                    .boxed()
                }
                1 => {
                    let request = admins[i % 2].request(RejectApprovalRequestRequest {
                        name,
                        etag: String::new(),
                        request_id: new_id(),
                        reason: format!("no ({i})"),
                    });
                    async move {
                        let result = client.reject_approval_request(request).await;
                        (State::Rejected, result.map(tonic::Response::into_inner))
                    }
                    .boxed()
                }
                _ => {
                    let request = requesters[i % 2].request(WithdrawApprovalRequestRequest {
                        name,
                        etag: String::new(),
                        request_id: new_id(),
                        reason: format!("never mind ({i})"),
                    });
                    async move {
                        let result = client.withdraw_approval_request(request).await;
                        (State::Withdrawn, result.map(tonic::Response::into_inner))
                    }
                    .boxed()
                }
            }
        })
        .collect();
    join_all(attempts).await
}

#[tokio::test]
async fn racing_accepts_rejects_and_withdrawals_of_one_request_have_exactly_one_winner() {
    let mut suite = suite().await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-RACE-DECIDE-A").await;
    let alice = Person::member(&a, 1);
    let anna = Person::admin(&a, 2);
    // Three races, each led by another kind of attempt, each on its own pair of tenants.
    for first in 0..3 {
        let target = tenant(
            &mut suite,
            "Beta Corporation",
            &format!("PSC-RACE-DECIDE-B{first}"),
        )
        .await;
        let bob = Person::admin(&target, 3);
        let bert = Person::admin(&target, 4);
        let sent = send(&mut suite, &alice, &target).await;

        let outcomes = decide_at_once(&suite, &sent, [&alice, &anna], [&bob, &bert], first).await;
        let mut winners = Vec::new();
        for (attempted, result) in outcomes {
            match result {
                Ok(decided) => {
                    assert_eq!(decided.state(), attempted);
                    winners.push(decided);
                }
                Err(status) => assert_lost(&status),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:#?}");
        let winner = winners.remove(0);

        let now = suite
            .approval
            .get_approval_request(alice.request(GetApprovalRequestRequest {
                name: sent.name.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(now, winner);
        assert_eq!(
            history(&mut suite, &alice, &sent.name).await,
            [
                (State::Unspecified, State::Pending, alice.name.clone()),
                (State::Pending, winner.state(), winner.decided_by.clone()),
            ]
        );
        let connections = active_connections(&mut suite, &bob).await;
        if winner.state() == State::Accepted {
            assert_eq!(connections, [winner.tenant_connection]);
        } else {
            assert!(connections.is_empty());
            assert!(winner.tenant_connection.is_empty());
        }
    }
}

#[tokio::test]
async fn racing_sends_between_two_tenants_create_exactly_one_request() {
    let mut suite = suite().await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-RACE-SEND-A").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-RACE-SEND-B").await;
    let senders: Vec<(Person, &_)> = (0..8)
        .map(|i| {
            if i % 2 == 0 {
                (Person::member(&a, i), &b)
            } else {
                (Person::admin(&b, i), &a)
            }
        })
        .collect();

    let attempts = senders.iter().map(|(sender, target)| {
        let mut client = suite.approval.clone();
        let request = sender.request(connection_request(target, "Shall we connect?"));
        async move {
            client
                .create_approval_request(request)
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let outcomes = join_all(attempts).await;

    let (created, refused): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(Result::is_ok);
    assert_eq!(created.len(), 1, "{created:#?}");
    let created = created.into_iter().next().unwrap().unwrap();
    assert_eq!(created.state(), State::Pending);
    for status in refused.into_iter().map(Result::unwrap_err) {
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert_eq!(reason(&status), "PENDING_REQUEST_EXISTS", "{status:?}");
        let named = tonic_types::StatusExt::get_error_details(&status)
            .resource_info()
            .map(|info| info.resource_name.clone());
        assert_eq!(named.as_deref(), Some(created.name.as_str()), "{status:?}");
    }

    let mut listed = Vec::new();
    for (who, _) in [&senders[0], &senders[1]] {
        listed.extend(
            suite
                .approval
                .list_sent_approval_requests(
                    who.request(ListSentApprovalRequestsRequest::default()),
                )
                .await
                .unwrap()
                .into_inner()
                .approval_requests,
        );
    }
    assert_eq!(listed, [created]);
}

#[tokio::test]
async fn racing_accepts_with_one_etag_make_exactly_one_connection() {
    let mut suite = suite().await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-RACE-ETAG-A").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-RACE-ETAG-B").await;
    let alice = Person::member(&a, 1);
    let admins = [Person::admin(&b, 2), Person::admin(&b, 3)];
    let sent = send(&mut suite, &alice, &b).await;

    let attempts = (0..10).map(|i| {
        let mut client = suite.approval.clone();
        let request = admins[i % 2].request(AcceptApprovalRequestRequest {
            name: sent.name.clone(),
            etag: sent.etag.clone(),
            request_id: new_id(),
        });
        async move {
            client
                .accept_approval_request(request)
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let outcomes = join_all(attempts).await;

    let (accepted, refused): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(Result::is_ok);
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    let accepted = accepted.into_iter().next().unwrap().unwrap();
    assert_eq!(accepted.state(), State::Accepted);
    for status in refused.into_iter().map(Result::unwrap_err) {
        assert_lost(&status);
    }

    assert_eq!(
        active_connections(&mut suite, &alice).await,
        std::slice::from_ref(&accepted.tenant_connection)
    );
    assert_eq!(
        active_connections(&mut suite, &admins[0]).await,
        std::slice::from_ref(&accepted.tenant_connection)
    );
    let admin = suite.db.admin_pool().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM approval.connections")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    assert_eq!(
        history(&mut suite, &alice, &sent.name).await,
        [
            (State::Unspecified, State::Pending, alice.name.clone()),
            (State::Pending, State::Accepted, accepted.decided_by.clone()),
        ]
    );
}
