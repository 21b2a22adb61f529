//! One journey through all four services in which each service in turn dies (SIGKILL: no
//! drain, no flush) right after acknowledging writes, and is started again on its port: what
//! it acknowledged is all there (same names, same sequences, the same answers to retried
//! requests), the transfer log still verifies, and the journey completes. Real processes, mutual
//! TLS, real PostgreSQL, gRPC only (`portal_tests::suite`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use portal_proto::approval::v1::approval_request::State as RequestState;
use portal_proto::approval::v1::approval_request_event::Type as EventType;
use portal_proto::approval::v1::{
    AcceptApprovalRequestRequest, ApprovalRequestEvent, GetApprovalRequestRequest,
    WatchApprovalRequestsRequest,
};
use portal_proto::consent::v1::{Basis, RecordConsentRequest, Scope};
use portal_proto::identity::v1::GetUserRequest;
use portal_proto::identity::v1::user::{Role, State as UserState};
use portal_proto::transfer::v1::{
    Decision, DenialReason, GetTransferRecordRequest, LegalBasis, Purpose,
};
use portal_testkit::eventually;
use portal_tests::suite::{
    Group, Service, SignedIn, Suite, callers, connection_request, new_request_id, person,
    registration, transfer_request,
};
use tonic::Streaming;

/// How long the test waits for what the suite does asynchronously (a feed, a consumer that
/// backs off while identity is down).
const WAIT: Duration = Duration::from_secs(30);

async fn watch(suite: &Suite, user: &SignedIn, after: &str) -> Streaming<ApprovalRequestEvent> {
    suite
        .approval()
        .watch_approval_requests(user.request(WatchApprovalRequestsRequest {
            after: after.to_owned(),
            tenant: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
}

/// The next `n` events of a live feed, each within `WAIT`.
async fn next_events(
    stream: &mut Streaming<ApprovalRequestEvent>,
    n: usize,
) -> Vec<ApprovalRequestEvent> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("event {} of {n} did not arrive", events.len() + 1))
            .unwrap()
            .expect("the feed does not end by itself");
        events.push(event);
    }
    events
}

/// What an event says happened to which request.
fn what(event: &ApprovalRequestEvent) -> (EventType, String) {
    let request = event.approval_request.as_ref().unwrap();
    (event.r#type(), request.name.clone())
}

#[tokio::test]
async fn each_service_killed_mid_journey_keeps_what_it_acknowledged_and_the_journey_completes() {
    let mut suite = Suite::start().await.unwrap();
    suite.publish_terms(1).await.unwrap();
    let Group {
        operator,
        affiliate,
        third_party,
    } = suite.register_group().await.unwrap();
    let a = suite
        .create_tenant("Alpha Logistics", "PSC-2026-000501")
        .await
        .unwrap();
    let b = suite
        .create_tenant("Beta Networks", "PSC-2026-000502")
        .await
        .unwrap();
    let c = suite
        .create_tenant("Gamma Retail", "PSC-2026-000503")
        .await
        .unwrap();
    let alice = suite.first_admin(&a, 1).await.unwrap();

    // 1. Identity dies right after acknowledging a registration.
    let request = registration(&a, person(2, &[Role::Member]), &alice.user.name);
    let registered = suite
        .identity()
        .register_user(alice.request(request.clone()))
        .await
        .unwrap()
        .into_inner();
    suite.kill(Service::Identity).unwrap();
    assert!(
        suite.health(Service::Identity).await.is_err(),
        "nothing answers on identity's port"
    );
    suite.restart(Service::Identity).await.unwrap();
    // The user is there with their PI, sealed before the crash and opened after it, and the
    // admin's retry (same request_id) gets the same answer: the same user and secret.
    let pending = registered.user.clone().unwrap();
    let seen = suite
        .identity()
        .get_user(alice.request(GetUserRequest {
            name: pending.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.state(), UserState::PendingActivation);
    assert_eq!(
        (seen.display_name.as_str(), seen.email.as_str()),
        (pending.display_name.as_str(), pending.email.as_str())
    );
    let retried = suite
        .identity()
        .register_user(alice.request(request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.user.unwrap().name, pending.name);
    assert_eq!(retried.activation_secret, registered.activation_secret);
    let colleague = suite.activate_and_sign_in(&registered).await.unwrap();
    let subject = colleague.user.name.clone();

    // 2. Transfer dies right after acknowledging two decisions (one after the last checkpoint).
    let to_affiliate = transfer_request(&subject, &operator, &affiliate, Purpose::PortalSignIn);
    let allowed = suite.authorize(to_affiliate.clone()).await.unwrap();
    assert_eq!(allowed.legal_basis(), LegalBasis::IntraGroupTransfer);
    let (before, _) = suite
        .verify_transfer_log(allowed.sequence + 1)
        .await
        .unwrap();
    let denied = suite
        .authorize(transfer_request(
            &subject,
            &operator,
            &third_party,
            Purpose::Disclosure,
        ))
        .await
        .unwrap();
    assert_eq!(
        denied.denial_reason(),
        DenialReason::ThirdPartyWithoutConsent
    );
    suite.kill(Service::Transfer).unwrap();
    suite.restart(Service::Transfer).await.unwrap();
    for record in [&allowed, &denied] {
        let stored = suite
            .transfer()
            .get_transfer_record(callers::auditor(GetTransferRecordRequest {
                name: record.name.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&stored, record);
    }
    let retried = suite.authorize(to_affiliate).await.unwrap();
    assert_eq!(retried, allowed, "the retry replays the stored decision");
    let next = suite
        .authorize(transfer_request(
            &subject,
            &operator,
            &affiliate,
            Purpose::PortalService,
        ))
        .await
        .unwrap();
    assert_eq!(
        next.sequence,
        denied.sequence + 1,
        "no sequence lost or reused"
    );
    let (after_transfer, records) = suite.verify_transfer_log(next.sequence + 1).await.unwrap();
    let sequences: Vec<i64> = records.iter().map(|r| r.sequence).collect();
    assert_eq!(sequences, (0..=next.sequence).collect::<Vec<_>>());
    suite
        .verify_consistency(&before, &after_transfer)
        .await
        .unwrap();

    // 3. Approval dies right after acknowledging two sent requests, with a feed open.
    let mut feed = watch(&suite, &colleague, "").await;
    let to_b = connection_request(&b.name, "Alpha Logistics here: shall we connect?");
    let sent_to_b = suite
        .approval()
        .create_approval_request(colleague.request(to_b.clone()))
        .await
        .unwrap()
        .into_inner();
    let sent_to_c = suite
        .approval()
        .create_approval_request(colleague.request(connection_request(&c.name, "")))
        .await
        .unwrap()
        .into_inner();
    let created = next_events(&mut feed, 2).await;
    assert_eq!(
        created.iter().map(what).collect::<Vec<_>>(),
        [
            (EventType::Created, sent_to_b.name.clone()),
            (EventType::Created, sent_to_c.name.clone())
        ]
    );
    suite.kill(Service::Approval).unwrap();
    let cut = tokio::time::timeout(WAIT, feed.message()).await.unwrap();
    assert!(!matches!(cut, Ok(Some(_))), "a dead server sends nothing");
    suite.restart(Service::Approval).await.unwrap();
    let retried = suite
        .approval()
        .create_approval_request(colleague.request(to_b))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, sent_to_b, "the retry replays the stored answer");
    for sent in [&sent_to_b, &sent_to_c] {
        let stored = suite
            .approval()
            .get_approval_request(colleague.request(GetApprovalRequestRequest {
                name: sent.name.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&stored, sent);
    }
    // The feed resumes after the first event as if nothing had happened: the same second
    // event (cursor and sequence), then what happens next.
    let mut feed = watch(&suite, &colleague, &created[0].cursor).await;
    let bob = suite.first_admin(&b, 3).await.unwrap();
    let accepted = suite
        .approval()
        .accept_approval_request(bob.request(AcceptApprovalRequestRequest {
            name: sent_to_b.name.clone(),
            etag: sent_to_b.etag.clone(),
            request_id: new_request_id(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state(), RequestState::Accepted);
    let resumed = next_events(&mut feed, 2).await;
    assert_eq!(
        (resumed[0].cursor.as_str(), resumed[0].sequence),
        (created[1].cursor.as_str(), created[1].sequence)
    );
    assert_eq!(
        what(&resumed[1]),
        (EventType::Accepted, sent_to_b.name.clone())
    );

    // 4. Consent dies right after acknowledging the colleague's explicit consent to a third
    // party (Art. 4).
    let consent_to_disclose = RecordConsentRequest {
        request_id: new_request_id(),
        subject: subject.clone(),
        tenant: a.name.clone(),
        basis: Basis::Explicit.into(),
        scopes: vec![Scope::ThirdPartyDisclosure.into()],
        recipient_entity: third_party.name.clone(),
        ..RecordConsentRequest::default()
    };
    let explicit = suite
        .consent()
        .record_consent(colleague.request(consent_to_disclose.clone()))
        .await
        .unwrap()
        .into_inner();
    suite.kill(Service::Consent).unwrap();
    suite.restart(Service::Consent).await.unwrap();
    let retried = suite
        .consent()
        .record_consent(colleague.request(consent_to_disclose))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, explicit, "the retry replays the stored record");
    let state = suite.consent_state(&subject).await.unwrap();
    let recipients: Vec<(&str, &str)> = state
        .explicit_recipients
        .iter()
        .map(|r| (r.recipient_entity.as_str(), r.consent_record.as_str()))
        .collect();
    assert_eq!(
        recipients,
        [(third_party.name.as_str(), explicit.name.as_str())]
    );
    // Transfer asks the restarted consent, which now allows the disclosure.
    let disclosed = suite
        .authorize(transfer_request(
            &subject,
            &operator,
            &third_party,
            Purpose::Disclosure,
        ))
        .await
        .unwrap();
    assert_eq!(
        (disclosed.legal_basis(), disclosed.consent_record.as_str()),
        (LegalBasis::UserConsent, explicit.name.as_str())
    );

    // 5. The journey completes: the colleague deletes their registration (identity records
    // the withdrawal in the restarted consent), the next transfer is refused, the request still
    // waiting is withdrawn (approval, restarted, following the restarted identity's feed), the
    // accepted one stays accepted, and the whole log verifies.
    assert_eq!(colleague.user.name, subject);
    let receipt = suite.delete_own_registration(&colleague).await.unwrap();
    assert!(receipt.data_key_destroyed);
    let refused = suite
        .authorize(transfer_request(
            &subject,
            &operator,
            &affiliate,
            Purpose::PortalService,
        ))
        .await
        .unwrap();
    assert_eq!(
        (refused.decision(), refused.denial_reason()),
        (Decision::Denied, DenialReason::SubjectDeleted)
    );
    let withdrawn = eventually(WAIT, "the deleted user's request to be withdrawn", || {
        let mut approval = suite.approval();
        let name = sent_to_c.name.clone();
        async move {
            let request = approval
                .get_approval_request(callers::operator(GetApprovalRequestRequest { name }))
                .await
                .ok()?
                .into_inner();
            (request.state() == RequestState::Withdrawn).then_some(request)
        }
    })
    .await
    .unwrap();
    assert_eq!(withdrawn.decided_by, "services/approval");
    let still = suite
        .approval()
        .get_approval_request(callers::operator(GetApprovalRequestRequest {
            name: sent_to_b.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still, accepted);
    let (last, records) = suite
        .verify_transfer_log(refused.sequence + 1)
        .await
        .unwrap();
    let subjects_log: Vec<i64> = records
        .iter()
        .filter(|r| r.subject == subject)
        .map(|r| r.sequence)
        .collect();
    assert_eq!(
        subjects_log,
        [
            allowed.sequence,
            denied.sequence,
            next.sequence,
            disclosed.sequence,
            refused.sequence
        ]
    );
    suite.verify_consistency(&before, &last).await.unwrap();
}
