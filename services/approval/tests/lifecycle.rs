//! The two screens' lifecycle: send, see it sent and received, accept (a connection is made),
//! reject, withdraw.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::*;
use portal_proto::approval::v1::approval_request::State;
use portal_proto::approval::v1::{
    AcceptApprovalRequestRequest, ListReceivedApprovalRequestsRequest,
    ListSentApprovalRequestsRequest,
};

#[tokio::test]
async fn a_request_is_sent_received_and_accepted_into_a_connection() {
    let mut suite = suite().await;
    let a = tenant(&mut suite, "Alpha Corporation", "PSC-A-1").await;
    let b = tenant(&mut suite, "Beta Corporation", "PSC-B-1").await;
    let alice = Person::member(&a, 1);
    let bob = Person::admin(&b, 2);
    let sent = send(&mut suite, &alice, &b).await;
    assert_eq!(sent.state(), State::Pending);
    assert_eq!(sent.requester_user, alice.name);
    let profile = sent.requester_tenant_profile.clone().unwrap();
    assert_eq!(profile.display_name, "Alpha Corporation");
    assert_eq!(profile.contract_reference, "PSC-A-1");

    let listed = suite
        .approval
        .list_sent_approval_requests(alice.request(ListSentApprovalRequestsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.approval_requests, std::slice::from_ref(&sent));
    let received = suite
        .approval
        .list_received_approval_requests(bob.request(ListReceivedApprovalRequestsRequest {
            filter: "state = PENDING".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(received.approval_requests, std::slice::from_ref(&sent));

    let accepted = suite
        .approval
        .accept_approval_request(bob.request(AcceptApprovalRequestRequest {
            name: sent.name.clone(),
            etag: sent.etag.clone(),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state(), State::Accepted);
    assert_eq!(accepted.decided_by, bob.name);
    assert!(accepted.tenant_connection.starts_with("tenantConnections/"));
}
