//! The terms' journeys end to end (issue 9): the four real service binaries as separate
//! processes, mutual TLS between them, a real PostgreSQL, and nothing but gRPC from the test,
//! each journey as the portal's back end, the users, operators and auditors would take it.
//! Each test has a suite of its own. The binaries must be built (`cargo test --workspace`
//! does; see `portal_tests::suite`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use portal_platform::auth::Kind;
use portal_proto::approval::v1::approval_request::State as RequestState;
use portal_proto::approval::v1::approval_request_event::Type as EventType;
use portal_proto::approval::v1::tenant_connection::State as ConnectionState;
use portal_proto::approval::v1::{
    AcceptApprovalRequestRequest, ApprovalRequest, ApprovalRequestEvent, GetApprovalRequestRequest,
    ListApprovalRequestHistoryRequest, ListReceivedApprovalRequestsRequest,
    ListSentApprovalRequestsRequest, ListTenantConnectionsRequest, WatchApprovalRequestsRequest,
    WithdrawApprovalRequestRequest,
};
use portal_proto::consent::v1::{Basis, GetEffectiveDocumentsRequest, ListConsentRecordsRequest};
use portal_proto::identity::v1::user::{AcquisitionChannel, Role, State as UserState};
use portal_proto::identity::v1::{
    ExportUserDataRequest, GetUserRequest, RegisterUserResponse, Tenant,
};
use portal_proto::transfer::v1::group_entity::Kind as EntityKind;
use portal_proto::transfer::v1::{Decision, DenialReason, LegalBasis, Purpose};
use portal_testkit::status::assert_error;
use portal_testkit::{eventually, keys};
use portal_tests::suite::{
    Group, Service, SignedIn, Suite, callers, connection_request, new_request_id, person,
    registration, transfer_request, workspace_binary,
};
use tonic::{Code, Streaming};

/// How long a test waits for what the suite does asynchronously (a feed, a consumer).
const WAIT: Duration = Duration::from_secs(30);

/// The admin of `tenant` registers colleague `n`, attesting their consent (Art. 5.2).
async fn register_colleague(
    suite: &Suite,
    admin: &SignedIn,
    tenant: &Tenant,
    n: u32,
) -> RegisterUserResponse {
    let request = registration(tenant, person(n, &[Role::Member]), &admin.user.name);
    suite
        .identity()
        .register_user(admin.request(request))
        .await
        .unwrap()
        .into_inner()
}

/// The next `n` events of a live feed, each within `WAIT`.
async fn next_events(
    stream: &mut Streaming<ApprovalRequestEvent>,
    n: usize,
) -> Vec<(EventType, ApprovalRequest)> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("event {} of {n} did not arrive", events.len() + 1))
            .unwrap()
            .expect("the feed does not end by itself");
        events.push((event.r#type(), event.approval_request.unwrap()));
    }
    events
}

async fn watch(suite: &Suite, user: &SignedIn) -> Streaming<ApprovalRequestEvent> {
    suite
        .approval()
        .watch_approval_requests(user.request(WatchApprovalRequestsRequest::default()))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_colleagues_pi_goes_to_an_affiliate_abroad_but_not_to_a_third_party() {
    let suite = Suite::start().await.unwrap();

    // An operator publishes the terms and registers the group's entities (Art. 3, 4).
    suite.publish_terms(1).await.unwrap();
    let Group {
        operator,
        affiliate,
        third_party,
    } = suite.register_group().await.unwrap();

    // A tenant admin registers a colleague, attesting their consent (Art. 5.2); the colleague
    // activates and signs in.
    let tenant = suite
        .create_tenant("Example Corporation", "PSC-2026-000101")
        .await
        .unwrap();
    let admin = suite.first_admin(&tenant, 1).await.unwrap();
    let registered = register_colleague(&suite, &admin, &tenant, 2).await;
    let pending = registered.user.clone().unwrap();
    assert_eq!(pending.state(), UserState::PendingActivation);
    assert_eq!(
        pending.acquisition_channel(),
        AcquisitionChannel::ContractParty
    );
    assert_eq!(
        pending.attestation.as_ref().unwrap().attested_by,
        admin.user.name
    );
    assert!(!registered.activation_secret.is_empty());
    let colleague = suite.activate_and_sign_in(&registered).await.unwrap();
    assert_eq!(colleague.user.state(), UserState::Active);
    assert_eq!(colleague.user.email, person(2, &[]).email);

    // Before each transfer the portal back end asks: the affiliate abroad may have the PI
    // (intra-group, Art. 3.2, on the consent of Art. 5.1), the third party may not (Art. 4).
    let subject = &colleague.user.name;
    let abroad = suite
        .authorize(transfer_request(
            subject,
            &operator,
            &affiliate,
            Purpose::PortalSignIn,
        ))
        .await
        .unwrap();
    assert_eq!(abroad.decision(), Decision::Allowed);
    assert_eq!(abroad.legal_basis(), LegalBasis::IntraGroupTransfer);
    assert!(abroad.cross_border);
    assert_eq!(
        (
            abroad.destination_country.as_str(),
            abroad.destination_region.as_str()
        ),
        ("SG", "sg")
    );
    assert_eq!(abroad.terms_version, 1);
    assert!(abroad.consent_record.starts_with("consentRecords/"));
    let disclosed = suite
        .authorize(transfer_request(
            subject,
            &operator,
            &third_party,
            Purpose::Disclosure,
        ))
        .await
        .unwrap();
    assert_eq!(disclosed.decision(), Decision::Denied);
    assert_eq!(
        disclosed.denial_reason(),
        DenialReason::ThirdPartyWithoutConsent
    );
    assert_eq!(disclosed.sequence, abroad.sequence + 1);

    // The colleague's own export: their PI, the consent they gave, and where it went.
    let exported = suite
        .identity()
        .export_user_data(colleague.request(ExportUserDataRequest {
            name: subject.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let user = exported.user.unwrap();
    assert_eq!(
        (user.display_name, user.email, user.phone_number),
        (
            colleague.user.display_name.clone(),
            colleague.user.email.clone(),
            colleague.user.phone_number.clone()
        )
    );
    let bases: Vec<&str> = exported
        .consent_records
        .iter()
        .map(|r| r.basis.as_str())
        .collect();
    assert!(
        bases.contains(&"BASIS_CONTRACT_PARTY_ATTESTATION"),
        "{bases:?}"
    );
    let recipients: Vec<(&str, &str, &str)> = exported
        .recipients
        .iter()
        .map(|r| {
            (
                r.entity.as_str(),
                r.entity_kind.as_str(),
                r.country_code.as_str(),
            )
        })
        .collect();
    assert_eq!(
        recipients,
        [(affiliate.name.as_str(), "KIND_AFFILIATE", "SG")],
        "the affiliate is the one recipient; the denied third party is not"
    );
    let decisions: Vec<(&str, &str)> = exported
        .transfer_records
        .iter()
        .map(|r| (r.decision.as_str(), r.destination_entity.as_str()))
        .collect();
    assert_eq!(
        decisions,
        [
            ("DECISION_DENIED", third_party.name.as_str()),
            ("DECISION_ALLOWED", affiliate.name.as_str()),
        ]
    );
}

#[tokio::test]
async fn a_request_is_accepted_and_confirmed_another_withdrawn_and_the_feed_shows_each_change() {
    let suite = Suite::start().await.unwrap();
    suite.publish_terms(1).await.unwrap();
    let a = suite
        .create_tenant("Alpha Logistics", "PSC-2026-000201")
        .await
        .unwrap();
    let b = suite
        .create_tenant("Beta Networks", "PSC-2026-000202")
        .await
        .unwrap();
    let c = suite
        .create_tenant("Gamma Retail", "PSC-2026-000203")
        .await
        .unwrap();
    let alice = suite.first_admin(&a, 1).await.unwrap();
    let bob = suite.first_admin(&b, 2).await.unwrap();

    // Both screens follow their tenant's live feed from before anything happens.
    let mut alices_feed = watch(&suite, &alice).await;
    let mut bobs_feed = watch(&suite, &bob).await;

    // A sends B a connection request; it is on A's sent list.
    let sent = suite
        .approval()
        .create_approval_request(alice.request(connection_request(
            &b.name,
            "Alpha Logistics here: connecting for the shared fleet project.",
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.state(), RequestState::Pending);
    assert_eq!(
        (sent.requester_tenant.as_str(), sent.requester_user.as_str()),
        (a.name.as_str(), alice.user.name.as_str())
    );
    let alices_sent = suite
        .approval()
        .list_sent_approval_requests(alice.request(ListSentApprovalRequestsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .approval_requests;
    assert_eq!(alices_sent, std::slice::from_ref(&sent));

    // B lists it among the requests received, judges the sender by the profile identity holds,
    // and accepts the version just read.
    let received = suite
        .approval()
        .list_received_approval_requests(bob.request(ListReceivedApprovalRequestsRequest {
            filter: "state = PENDING".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .approval_requests;
    assert_eq!(received, std::slice::from_ref(&sent));
    let profile = received[0].requester_tenant_profile.clone().unwrap();
    assert_eq!(
        (
            profile.display_name.as_str(),
            profile.contract_reference.as_str()
        ),
        ("Alpha Logistics", "PSC-2026-000201")
    );
    let accepted = suite
        .approval()
        .accept_approval_request(bob.request(AcceptApprovalRequestRequest {
            name: sent.name.clone(),
            etag: received[0].etag.clone(),
            request_id: new_request_id(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state(), RequestState::Accepted);
    assert_eq!(accepted.decided_by, bob.user.name);
    assert!(!accepted.tenant_connection.is_empty());

    // A confirms the outcome on the sent screen: accepted, and the tenants are connected.
    let confirmed = suite
        .approval()
        .get_approval_request(alice.request(GetApprovalRequestRequest {
            name: sent.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed, accepted);
    assert!(confirmed.decide_time.is_some());
    let alices_sent = suite
        .approval()
        .list_sent_approval_requests(alice.request(ListSentApprovalRequestsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .approval_requests;
    assert_eq!(alices_sent, std::slice::from_ref(&accepted));
    let connections = suite
        .approval()
        .list_tenant_connections(alice.request(ListTenantConnectionsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tenant_connections;
    assert_eq!(connections.len(), 1);
    assert_eq!(connections[0].name, accepted.tenant_connection);
    assert_eq!(connections[0].state(), ConnectionState::Active);

    // A sends C a request and withdraws it.
    let other = suite
        .approval()
        .create_approval_request(alice.request(connection_request(&c.name, "")))
        .await
        .unwrap()
        .into_inner();
    let withdrawn = suite
        .approval()
        .withdraw_approval_request(alice.request(WithdrawApprovalRequestRequest {
            name: other.name.clone(),
            etag: other.etag.clone(),
            request_id: new_request_id(),
            reason: "sent to the wrong company".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(withdrawn.state(), RequestState::Withdrawn);
    assert_eq!(withdrawn.decided_by, alice.user.name);
    let history = suite
        .approval()
        .list_approval_request_history(alice.request(ListApprovalRequestHistoryRequest {
            name: other.name.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .transitions;
    let steps: Vec<(RequestState, &str)> = history
        .iter()
        .map(|t| (t.to_state(), t.reason.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            (RequestState::Pending, ""),
            (RequestState::Withdrawn, "sent to the wrong company")
        ]
    );

    // A's feed showed every change, each with the request as the call answered it; B's showed
    // the changes of the request between A and B.
    assert_eq!(
        next_events(&mut alices_feed, 4).await,
        [
            (EventType::Created, sent.clone()),
            (EventType::Accepted, accepted.clone()),
            (EventType::Created, other),
            (EventType::Withdrawn, withdrawn),
        ]
    );
    assert_eq!(
        next_events(&mut bobs_feed, 2).await,
        [(EventType::Created, sent), (EventType::Accepted, accepted)]
    );
}

#[tokio::test]
async fn after_a_revision_of_the_terms_the_next_sign_in_records_consent_to_the_new_version() {
    let suite = Suite::start().await.unwrap();
    suite.publish_terms(1).await.unwrap();
    let operator = suite
        .create_entity(EntityKind::Operator, "Example Operator K.K.", "JP", "jp")
        .await
        .unwrap();
    let branch = suite
        .create_entity(EntityKind::Branch, "Example Osaka Branch", "JP", "jp")
        .await
        .unwrap();
    let tenant = suite
        .create_tenant("Example Corporation", "PSC-2026-000301")
        .await
        .unwrap();
    let admin = suite.first_admin(&tenant, 1).await.unwrap();
    let subject = admin.user.name.clone();
    let before = suite.consent_state(&subject).await.unwrap();
    assert_eq!(
        (before.consented_terms_version, before.reconsent_pending),
        (1, false)
    );

    // The operator revises the terms (Art. 7): in force at once, consent still rests on v1.
    suite.publish_terms(2).await.unwrap();
    let effective = suite
        .consent()
        .get_effective_documents(callers::operator(GetEffectiveDocumentsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(effective.terms.unwrap().version, 2);
    let pending = suite.consent_state(&subject).await.unwrap();
    assert_eq!(
        (
            pending.consented_terms_version,
            pending.current_terms_version,
            pending.reconsent_pending,
            pending.material_change_pending
        ),
        (1, 2, true, true)
    );
    let joint_use = suite
        .authorize(transfer_request(
            &subject,
            &operator,
            &branch,
            Purpose::PortalService,
        ))
        .await
        .unwrap();
    assert_eq!(
        (joint_use.legal_basis(), joint_use.terms_version),
        (LegalBasis::JointUse, 1)
    );

    // The next sign-in is a use of the portal: deemed consent to v2 (Art. 5.1), once.
    suite.sign_in(&admin.user.email).await.unwrap();
    let after = suite.consent_state(&subject).await.unwrap();
    assert_eq!(
        (after.consented_terms_version, after.reconsent_pending),
        (2, false)
    );
    let last = after.last_record.unwrap();
    assert_eq!(
        (last.basis(), last.terms_version, last.recorded_by.as_str()),
        (Basis::DeemedByUse, 2, "services/identity")
    );
    suite.sign_in(&admin.user.email).await.unwrap();
    let ledger = suite
        .consent()
        .list_consent_records(admin.request(ListConsentRecordsRequest {
            subject: subject.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .consent_records;
    let versions: Vec<(Basis, i64)> = ledger
        .iter()
        .map(|r| (r.basis(), r.terms_version))
        .collect();
    assert_eq!(
        versions,
        [
            (Basis::ContractPartyAttestation, 1),
            (Basis::DeemedByUse, 1),
            (Basis::DeemedByUse, 2)
        ],
        "one entry per version consented to, however often the user signs in"
    );

    // Transfers from now on rest on the consent to v2.
    let joint_use = suite
        .authorize(transfer_request(
            &subject,
            &operator,
            &branch,
            Purpose::PortalService,
        ))
        .await
        .unwrap();
    assert_eq!(
        (
            joint_use.legal_basis(),
            joint_use.terms_version,
            joint_use.consent_record.as_str()
        ),
        (LegalBasis::JointUse, 2, last.name.as_str())
    );
}

#[tokio::test]
async fn a_deleted_colleague_is_unreadable_withdrawn_and_refused_and_the_log_still_verifies() {
    let suite = Suite::start().await.unwrap();
    suite.publish_terms(1).await.unwrap();
    let Group {
        operator,
        affiliate,
        ..
    } = suite.register_group().await.unwrap();
    let tenant = suite
        .create_tenant("Example Corporation", "PSC-2026-000401")
        .await
        .unwrap();
    let partner = suite
        .create_tenant("Example Partner", "PSC-2026-000402")
        .await
        .unwrap();
    let admin = suite.first_admin(&tenant, 1).await.unwrap();
    let registered = register_colleague(&suite, &admin, &tenant, 2).await;
    let colleague = suite.activate_and_sign_in(&registered).await.unwrap();
    let subject = colleague.user.name.clone();

    // Before: one transfer, a checkpoint over it, and a request waiting for the partner.
    let allowed = suite
        .authorize(transfer_request(
            &subject,
            &operator,
            &affiliate,
            Purpose::PortalService,
        ))
        .await
        .unwrap();
    assert_eq!(allowed.decision(), Decision::Allowed);
    let (before, _) = suite.verify_transfer_log(1).await.unwrap();
    let pending = suite
        .approval()
        .create_approval_request(colleague.request(connection_request(&partner.name, "")))
        .await
        .unwrap()
        .into_inner();

    // The colleague deletes their registration (Art. 5.3).
    assert_eq!(colleague.user.name, subject);
    let receipt = suite.delete_own_registration(&colleague).await.unwrap();
    assert!(receipt.data_key_destroyed);

    // The PI is gone: a tombstone for the admin, nothing to sign in with, no data key left in
    // the live database to open a copy of the ciphertext.
    let tombstone = suite
        .identity()
        .get_user(admin.request(GetUserRequest {
            name: subject.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tombstone.state(), UserState::Deleted);
    assert_eq!(
        (
            tombstone.display_name.as_str(),
            tombstone.email.as_str(),
            tombstone.phone_number.as_str()
        ),
        ("", "", "")
    );
    assert_error(
        suite.sign_in(&colleague.user.email).await.map_err(|e| {
            e.downcast::<tonic::Status>()
                .expect("identity answered with a status")
        }),
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_error(
        suite
            .identity()
            .export_user_data(colleague.request(ExportUserDataRequest {
                name: subject.clone(),
            }))
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    let db = suite.db().admin_pool().await.unwrap();
    let user_id = subject.rsplit('/').next().unwrap();
    let (pi_kept, key_kept): (bool, bool) = sqlx::query_as(
        "SELECT pi IS NOT NULL, data_key IS NOT NULL FROM identity.users WHERE id = $1::uuid",
    )
    .bind(user_id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(!key_kept, "the data key is destroyed");
    assert!(!pi_kept, "the sealed PI is erased too");

    // Consent is withdrawn in full, in the entry the receipt names.
    let state = suite.consent_state(&subject).await.unwrap();
    assert!(state.withdrawn && !state.active);
    let last = state.last_record.unwrap();
    assert!(last.full_withdrawal);
    assert_eq!(last.name, receipt.consent_withdrawal_record);

    // The waiting request is withdrawn by the suite once approval applies the deletion.
    let withdrawn = eventually(WAIT, "the deleted user's request to be withdrawn", || {
        let mut approval = suite.approval();
        let name = pending.name.clone();
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
    assert_eq!(
        (
            withdrawn.decided_by.as_str(),
            withdrawn.decision_reason.as_str()
        ),
        ("services/approval", "requester deleted (Art. 5.3)")
    );

    // The next transfer is refused, and the refusal is logged.
    let refused = suite
        .authorize(transfer_request(
            &subject,
            &operator,
            &affiliate,
            Purpose::PortalService,
        ))
        .await
        .unwrap();
    assert_eq!(refused.decision(), Decision::Denied);
    assert_eq!(refused.denial_reason(), DenialReason::SubjectDeleted);

    // The exported log verifies offline against the signed checkpoint, and the log before the
    // deletion is a prefix of it.
    let (after, records) = suite
        .verify_transfer_log(refused.sequence + 1)
        .await
        .unwrap();
    let subjects_log: Vec<(Decision, i64)> = records
        .iter()
        .filter(|r| r.subject == subject)
        .map(|r| (r.decision(), r.sequence))
        .collect();
    assert_eq!(
        subjects_log,
        [
            (Decision::Allowed, allowed.sequence),
            (Decision::Denied, refused.sequence)
        ]
    );
    suite.verify_consistency(&before, &after).await.unwrap();

    // The auditor's own tool fetches the log over mutual TLS, as from outside the suite, and
    // verifies it offline.
    let audit_dir = suite.dir().join("audit");
    let token_file = suite.dir().join("auditor.token");
    let token = keys::token(Kind::Auditor, "auditors/compliance", None, &[]);
    std::fs::write(&token_file, token).unwrap();
    let tls = suite.tls();
    let file = |path: &Option<std::path::PathBuf>| path.clone().unwrap().into_os_string();
    let verifier = workspace_binary("transfer-verify").unwrap();
    let fetched = tokio::process::Command::new(&verifier)
        .arg("fetch")
        .args(["--endpoint", &suite.uri(Service::Transfer)])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--out")
        .arg(&audit_dir)
        .arg("--ca-file")
        .arg(file(&tls.ca_file))
        .arg("--cert-file")
        .arg(file(&tls.cert_file))
        .arg("--key-file")
        .arg(file(&tls.key_file))
        .output()
        .await
        .unwrap();
    assert!(fetched.status.success(), "{fetched:?}");
    let checked = tokio::process::Command::new(&verifier)
        .arg("check")
        .arg("--records")
        .arg(audit_dir.join("records.bin"))
        .arg("--checkpoint")
        .arg(audit_dir.join("checkpoint.bin"))
        .arg("--key")
        .arg(audit_dir.join("key.txt"))
        .output()
        .await
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    let said = String::from_utf8(checked.stdout).unwrap();
    assert!(said.starts_with("verified:"), "{said}");

    // An auditor still exports what the suite held about the user, without PI, ending in the
    // withdrawal.
    let audit = suite
        .identity()
        .export_user_data(callers::auditor(ExportUserDataRequest {
            name: subject.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audit.user.unwrap().email, "");
    assert_eq!(
        audit.consent_records.last().unwrap().name,
        receipt.consent_withdrawal_record
    );
    assert_eq!(audit.recipients.len(), 1);
    assert_eq!(audit.recipients[0].entity, affiliate.name);
}
