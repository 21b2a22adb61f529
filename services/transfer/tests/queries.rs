//! The log and what reads it: AuthorizeTransfer's bad input and callers, idempotency, dense
//! sequences, leaf hashes, an append-only store, ListTransferRecords' filters and pages,
//! GetTransferRecord, ListSubjectRecipients, ExportTransferRecords, and no PI anywhere.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::collections::HashSet;

use chrono::Utc;
use common::*;
use portal_platform::auth::Kind as TokenKind;
use portal_platform::time::to_timestamp;
use portal_proto::identity::v1::user::Role;
use portal_proto::identity::v1::{
    ActivateUserRequest, Attestation, CreateTenantRequest, RegisterUserRequest, Tenant, User,
};
use portal_proto::transfer::v1::group_entity::Kind;
use portal_proto::transfer::v1::{
    AuthorizeTransferRequest, DataCategory, Decision, ExportTransferRecordsRequest,
    GetTransferRecordRequest, GroupEntity, ListSubjectRecipientsRequest,
    ListTransferRecordsRequest, Purpose, Recipient, TransferRecord, UpdateEntityRequest,
};
use portal_testkit::keys::{self, authorized};
use prost::Message;
use prost_types::{FieldMask, Timestamp};
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status};

/// A Portal User's token: users have no access to this service.
fn as_user<T>(message: T) -> Request<T> {
    let token = keys::token(TokenKind::User, &user(1), Some(TENANT), &["TENANT_ADMIN"]);
    authorized(message, &token)
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = assert_error(result, Code::InvalidArgument, "INVALID_REQUEST");
    assert!(
        violations(&status).iter().any(|f| f == field),
        "{field}: {status:?}"
    );
}

fn assert_not_allowed<T: std::fmt::Debug>(result: Result<T, Status>) {
    assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
}

/// The entities most tests move data between.
struct Group {
    tokyo: GroupEntity,
    singapore: GroupEntity,
    new_york: GroupEntity,
    partner: GroupEntity,
}

async fn group(suite: &mut Suite) -> Group {
    Group {
        tokyo: register(
            suite,
            entity(Kind::Operator, "Example Operator K.K.", "JP", "jp"),
        )
        .await,
        singapore: register(
            suite,
            entity(Kind::Affiliate, "Example Affiliate Pte. Ltd.", "SG", "sg"),
        )
        .await,
        new_york: register(
            suite,
            entity(
                Kind::Branch,
                "Example Operator K.K. New York Branch",
                "US",
                "us",
            ),
        )
        .await,
        partner: register(
            suite,
            entity(Kind::ThirdParty, "Example Partner Co., Ltd.", "JP", "jp"),
        )
        .await,
    }
}

fn categories(
    request: AuthorizeTransferRequest,
    given: &[DataCategory],
) -> AuthorizeTransferRequest {
    AuthorizeTransferRequest {
        data_categories: given.iter().map(|c| i32::from(*c)).collect(),
        ..request
    }
}

fn filter() -> ListTransferRecordsRequest {
    ListTransferRecordsRequest {
        page_size: 1000,
        ..ListTransferRecordsRequest::default()
    }
}

async fn listed(suite: &mut Suite, request: ListTransferRecordsRequest) -> Vec<TransferRecord> {
    let response = suite
        .transfer
        .list_transfer_records(as_auditor(request))
        .await
        .unwrap()
        .into_inner();
    assert!(response.next_page_token.is_empty());
    response.transfer_records
}

fn sequences(records: &[TransferRecord]) -> Vec<i64> {
    records.iter().map(|r| r.sequence).collect()
}

async fn exported(
    suite: &mut Suite,
    request: Request<ExportTransferRecordsRequest>,
) -> Vec<TransferRecord> {
    let mut stream = suite
        .transfer
        .export_transfer_records(request)
        .await
        .unwrap()
        .into_inner();
    let mut records = Vec::new();
    // `message` returns None only when the stream ended with OK.
    while let Some(record) = stream.message().await.unwrap() {
        records.push(record);
    }
    records
}

/// SHA-256(0x00 || the record's encoding without its leaf hash).
fn expected_leaf_hash(record: &TransferRecord) -> Vec<u8> {
    let mut unhashed = record.clone();
    unhashed.leaf_hash.clear();
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(unhashed.encode_to_vec());
    hasher.finalize().to_vec()
}

#[tokio::test]
async fn authorize_transfer_names_each_bad_field_and_records_nothing() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let good = || transfer_request(&user(1), &g.tokyo, &g.singapore);
    let cases: Vec<(AuthorizeTransferRequest, &str)> = vec![
        (
            AuthorizeTransferRequest {
                subject: String::new(),
                ..good()
            },
            "subject",
        ),
        (
            AuthorizeTransferRequest {
                subject: "users/0190f7a0-0000-7000-8000-000000000001".into(),
                ..good()
            },
            "subject",
        ),
        (
            AuthorizeTransferRequest {
                subject: format!("{TENANT}/users/someone"),
                ..good()
            },
            "subject",
        ),
        (
            AuthorizeTransferRequest {
                subject: user(1).to_uppercase(),
                ..good()
            },
            "subject",
        ),
        (categories(good(), &[]), "data_categories"),
        (
            AuthorizeTransferRequest {
                data_categories: vec![9],
                ..good()
            },
            "data_categories",
        ),
        (
            AuthorizeTransferRequest {
                data_categories: vec![DataCategory::Email.into(), 0],
                ..good()
            },
            "data_categories",
        ),
        (
            AuthorizeTransferRequest {
                source_entity: String::new(),
                ..good()
            },
            "source_entity",
        ),
        (
            AuthorizeTransferRequest {
                source_entity: "entities/tokyo".into(),
                ..good()
            },
            "source_entity",
        ),
        (
            AuthorizeTransferRequest {
                destination_entity: String::new(),
                ..good()
            },
            "destination_entity",
        ),
        (
            AuthorizeTransferRequest {
                destination_entity: g.tokyo.name.clone(),
                ..good()
            },
            "destination_entity",
        ),
        (
            AuthorizeTransferRequest {
                purpose: Purpose::Unspecified.into(),
                ..good()
            },
            "purpose",
        ),
        (
            AuthorizeTransferRequest {
                purpose: 99,
                ..good()
            },
            "purpose",
        ),
        (
            AuthorizeTransferRequest {
                legal_reference: "x".repeat(501),
                ..good()
            },
            "legal_reference",
        ),
        (
            AuthorizeTransferRequest {
                request_id: "not-a-uuid".into(),
                ..good()
            },
            "request_id",
        ),
    ];
    for (request, field) in cases {
        let result = suite.transfer.authorize_transfer(as_mover(request)).await;
        assert_invalid(result, field);
    }
    assert!(listed(&mut suite, filter()).await.is_empty());

    // 500 characters is the limit, not over it.
    let cited = AuthorizeTransferRequest {
        legal_reference: "x".repeat(500),
        ..transfer_request(&user(1), &g.tokyo, &g.partner)
    };
    let record = authorize(&mut suite, cited).await;
    assert_eq!(record.legal_reference.chars().count(), 500);
}

#[tokio::test]
async fn only_services_may_authorize_transfers() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let request = transfer_request(&user(1), &g.tokyo, &g.singapore);
    let transfer = &mut suite.transfer;
    assert_not_allowed(
        transfer
            .authorize_transfer(as_operator(request.clone()))
            .await,
    );
    assert_not_allowed(
        transfer
            .authorize_transfer(as_auditor(request.clone()))
            .await,
    );
    assert_not_allowed(transfer.authorize_transfer(as_user(request.clone())).await);
    assert_error(
        transfer
            .authorize_transfer(Request::new(request.clone()))
            .await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    assert!(listed(&mut suite, filter()).await.is_empty());
    let record = authorize(&mut suite, request).await;
    assert_eq!(record.requested_by, "services/portal-backend");
    let by_identity = suite
        .transfer
        .authorize_transfer(as_identity(transfer_request(
            &user(1),
            &g.tokyo,
            &g.singapore,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_identity.requested_by, "services/identity");
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_returns_the_same_record_and_appends_nothing() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let subject = user(2);
    deemed_consent(&mut suite, &subject).await;
    let request = transfer_request(&subject, &g.tokyo, &g.singapore);

    let first = authorize(&mut suite, request.clone()).await;
    assert_eq!(first.request_id, request.request_id);
    let retry = authorize(&mut suite, request.clone()).await;
    assert_eq!(retry, first);
    // Even while consent is unreachable: the retry needs no new decision.
    suite.consent_link.cut();
    let retry = authorize(&mut suite, request.clone()).await;
    assert_eq!(retry, first);
    suite.consent_link.restore();
    assert_eq!(sequences(&listed(&mut suite, filter()).await), [0]);

    // The same id for another request is refused, and records nothing.
    let different = AuthorizeTransferRequest {
        purpose: Purpose::Support.into(),
        ..request.clone()
    };
    assert_error(
        suite.transfer.authorize_transfer(as_mover(different)).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
    assert_eq!(sequences(&listed(&mut suite, filter()).await), [0]);

    // Without a request_id every call is a new decision.
    let anonymous = AuthorizeTransferRequest {
        request_id: String::new(),
        ..request
    };
    let one = authorize(&mut suite, anonymous.clone()).await;
    let two = authorize(&mut suite, anonymous).await;
    assert_ne!(one.name, two.name);
    assert!(one.request_id.is_empty());
    assert_eq!(sequences(&listed(&mut suite, filter()).await), [0, 1, 2]);
}

#[tokio::test]
async fn sequences_are_dense_from_zero_in_append_order() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let subject = user(3);
    deemed_consent(&mut suite, &subject).await;
    let mut appended = Vec::new();
    for (n, to) in [
        &g.singapore,
        &g.new_york,
        &g.partner,
        &g.singapore,
        &g.partner,
    ]
    .into_iter()
    .enumerate()
    {
        let record = authorize(&mut suite, transfer_request(&subject, &g.tokyo, to)).await;
        assert_eq!(record.sequence, i64::try_from(n).unwrap());
        appended.push(record);
    }
    let all = listed(&mut suite, filter()).await;
    assert_eq!(all, appended);
    // Decisions of both kinds share the one sequence.
    let decisions: HashSet<Decision> = all.iter().map(TransferRecord::decision).collect();
    assert_eq!(decisions.len(), 2);

    // Duplicate categories are recorded once, ascending.
    let request = categories(
        transfer_request(&subject, &g.tokyo, &g.singapore),
        &[
            DataCategory::PhoneNumber,
            DataCategory::Email,
            DataCategory::PhoneNumber,
        ],
    );
    let record = authorize(&mut suite, request).await;
    assert_eq!(record.sequence, 5);
    assert_eq!(
        record.data_categories,
        [
            i32::from(DataCategory::Email),
            i32::from(DataCategory::PhoneNumber)
        ]
    );
}

#[tokio::test]
async fn concurrent_appends_take_dense_sequences_without_gaps_or_repeats() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let subject = user(8);
    deemed_consent(&mut suite, &subject).await;
    let mut calls = Vec::new();
    for n in 0..24 {
        let mut client = suite.transfer.clone();
        let to = if n % 2 == 0 { &g.singapore } else { &g.partner };
        let request = transfer_request(&subject, &g.tokyo, to);
        calls.push(tokio::spawn(async move {
            client
                .authorize_transfer(as_mover(request))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut appended = Vec::new();
    for call in calls {
        appended.push(call.await.unwrap());
    }
    appended.sort_by_key(|r| r.sequence);
    assert_eq!(sequences(&appended), (0..24).collect::<Vec<i64>>());
    assert_eq!(listed(&mut suite, filter()).await, appended);
    // Times are stamped once the sequence is taken, so they follow it.
    let times: Vec<_> = appended
        .iter()
        .map(|r| {
            let t = r.record_time.unwrap();
            (t.seconds, t.nanos)
        })
        .collect();
    let mut sorted = times.clone();
    sorted.sort_unstable();
    assert_eq!(times, sorted);
}

#[tokio::test]
async fn the_leaf_hash_is_sha256_of_0x00_and_the_record_without_its_hash() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let subject = user(4);
    deemed_consent(&mut suite, &subject).await;
    let allowed = authorize(
        &mut suite,
        transfer_request(&subject, &g.tokyo, &g.singapore),
    )
    .await;
    let cited = AuthorizeTransferRequest {
        legal_reference: "order ref 2026-0001".into(),
        ..transfer_request(&subject, &g.tokyo, &g.partner)
    };
    let legal = authorize(&mut suite, cited).await;
    let denied = authorize(
        &mut suite,
        transfer_request(&user(5), &g.tokyo, &g.new_york),
    )
    .await;
    for record in [&allowed, &legal, &denied] {
        assert_eq!(record.leaf_hash.len(), 32);
        assert_eq!(record.leaf_hash, expected_leaf_hash(record), "{record:?}");
        let read = suite
            .transfer
            .get_transfer_record(as_auditor(GetTransferRecordRequest {
                name: record.name.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&read, record);
        assert_eq!(read.leaf_hash, expected_leaf_hash(&read));
    }
    let hashes: HashSet<Vec<u8>> = [&allowed, &legal, &denied]
        .iter()
        .map(|r| r.leaf_hash.clone())
        .collect();
    assert_eq!(hashes.len(), 3);
    for record in listed(&mut suite, filter()).await {
        assert_eq!(record.leaf_hash, expected_leaf_hash(&record));
    }
}

#[tokio::test]
async fn the_services_own_role_cannot_change_or_delete_records_nor_revive_deleted_subjects() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let record = authorize(
        &mut suite,
        transfer_request(&user(6), &g.tokyo, &g.singapore),
    )
    .await;
    let app = suite.db.app_pool(transfer_service::SERVICE.schema).unwrap();
    for statement in [
        "UPDATE transfer.records SET decision = 'ALLOWED'",
        "UPDATE transfer.records SET leaf_hash = sha256(leaf_data)",
        "DELETE FROM transfer.records",
        "TRUNCATE transfer.records",
        "UPDATE transfer.deleted_subjects SET subject = 'x'",
        "DELETE FROM transfer.deleted_subjects",
        "TRUNCATE transfer.deleted_subjects",
    ] {
        let refused = sqlx::query(statement).execute(&app).await.unwrap_err();
        let code = refused.as_database_error().and_then(|e| e.code()).unwrap();
        assert_eq!(code, "42501", "{statement}");
    }
    assert_eq!(listed(&mut suite, filter()).await, [record]);
}

/// Six records between the group's entities, of two subjects, both decisions.
async fn six_records(suite: &mut Suite, g: &Group) -> Vec<TransferRecord> {
    let (a, b) = (user(21), user(22));
    deemed_consent(suite, &a).await;
    let mut records = Vec::new();
    for (subject, from, to) in [
        (&a, &g.tokyo, &g.singapore),    // 0 allowed
        (&b, &g.tokyo, &g.singapore),    // 1 denied (no consent)
        (&a, &g.tokyo, &g.new_york),     // 2 allowed
        (&a, &g.singapore, &g.new_york), // 3 allowed
        (&a, &g.tokyo, &g.partner),      // 4 denied (no explicit consent)
        (&b, &g.new_york, &g.singapore), // 5 denied (no consent)
    ] {
        records.push(authorize(suite, transfer_request(subject, from, to)).await);
    }
    records
}

#[tokio::test]
async fn transfer_records_are_filtered_by_subject_region_country_entity_decision_and_time() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let records = six_records(&mut suite, &g).await;
    assert_eq!(sequences(&records), [0, 1, 2, 3, 4, 5]);
    let time = |n: usize| records[n].record_time;
    let cases: Vec<(ListTransferRecordsRequest, Vec<i64>)> = vec![
        (filter(), vec![0, 1, 2, 3, 4, 5]),
        (
            ListTransferRecordsRequest {
                subject: user(21),
                ..filter()
            },
            vec![0, 2, 3, 4],
        ),
        (
            ListTransferRecordsRequest {
                subject: user(22),
                ..filter()
            },
            vec![1, 5],
        ),
        (
            ListTransferRecordsRequest {
                subject: user(23),
                ..filter()
            },
            vec![],
        ),
        (
            ListTransferRecordsRequest {
                region: "sg".into(),
                ..filter()
            },
            vec![0, 1, 3, 5],
        ),
        (
            ListTransferRecordsRequest {
                region: "us".into(),
                ..filter()
            },
            vec![2, 3, 5],
        ),
        (
            ListTransferRecordsRequest {
                region: "jp".into(),
                ..filter()
            },
            vec![0, 1, 2, 4],
        ),
        (
            ListTransferRecordsRequest {
                region: "uk".into(),
                ..filter()
            },
            vec![],
        ),
        (
            ListTransferRecordsRequest {
                country: "SG".into(),
                ..filter()
            },
            vec![0, 1, 3, 5],
        ),
        (
            ListTransferRecordsRequest {
                country: "US".into(),
                ..filter()
            },
            vec![2, 3, 5],
        ),
        (
            ListTransferRecordsRequest {
                country: "JP".into(),
                ..filter()
            },
            vec![0, 1, 2, 4],
        ),
        (
            ListTransferRecordsRequest {
                country: "GB".into(),
                ..filter()
            },
            vec![],
        ),
        (
            ListTransferRecordsRequest {
                entity: g.singapore.name.clone(),
                ..filter()
            },
            vec![0, 1, 3, 5],
        ),
        (
            ListTransferRecordsRequest {
                entity: g.partner.name.clone(),
                ..filter()
            },
            vec![4],
        ),
        (
            ListTransferRecordsRequest {
                decision: Decision::Allowed.into(),
                ..filter()
            },
            vec![0, 2, 3],
        ),
        (
            ListTransferRecordsRequest {
                decision: Decision::Denied.into(),
                ..filter()
            },
            vec![1, 4, 5],
        ),
        (
            ListTransferRecordsRequest {
                subject: user(21),
                region: "us".into(),
                decision: Decision::Allowed.into(),
                ..filter()
            },
            vec![2, 3],
        ),
        // start_time inclusive, end_time exclusive.
        (
            ListTransferRecordsRequest {
                start_time: time(1),
                end_time: time(4),
                ..filter()
            },
            vec![1, 2, 3],
        ),
        (
            ListTransferRecordsRequest {
                start_time: time(4),
                ..filter()
            },
            vec![4, 5],
        ),
        (
            ListTransferRecordsRequest {
                end_time: time(1),
                ..filter()
            },
            vec![0],
        ),
        (
            ListTransferRecordsRequest {
                subject: user(22),
                start_time: time(2),
                ..filter()
            },
            vec![5],
        ),
    ];
    for (request, expected) in cases {
        let what = format!("{request:?}");
        assert_eq!(
            sequences(&listed(&mut suite, request).await),
            expected,
            "{what}"
        );
    }

    // Bad filters are named.
    let bad: Vec<(ListTransferRecordsRequest, &str)> = vec![
        (
            ListTransferRecordsRequest {
                start_time: time(2),
                end_time: time(2),
                ..filter()
            },
            "end_time",
        ),
        (
            ListTransferRecordsRequest {
                start_time: time(3),
                end_time: time(1),
                ..filter()
            },
            "end_time",
        ),
        (
            ListTransferRecordsRequest {
                subject: "tenants/x/users/y".into(),
                ..filter()
            },
            "subject",
        ),
        (
            ListTransferRecordsRequest {
                region: "SG".into(),
                ..filter()
            },
            "region",
        ),
        (
            ListTransferRecordsRequest {
                country: "UK".into(),
                ..filter()
            },
            "country",
        ),
        (
            ListTransferRecordsRequest {
                entity: "singapore".into(),
                ..filter()
            },
            "entity",
        ),
        (
            ListTransferRecordsRequest {
                decision: 9,
                ..filter()
            },
            "decision",
        ),
        (
            ListTransferRecordsRequest {
                start_time: Some(Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..filter()
            },
            "start_time",
        ),
        (
            ListTransferRecordsRequest {
                page_size: -1,
                ..filter()
            },
            "page_size",
        ),
    ];
    for (request, field) in bad {
        assert_invalid(
            suite
                .transfer
                .list_transfer_records(as_auditor(request))
                .await,
            field,
        );
    }
}

#[tokio::test]
async fn transfer_records_come_in_pages_without_duplicates_for_whoever_may_read_them() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let records = six_records(&mut suite, &g).await;

    for (page_size, request) in [
        (1, ListTransferRecordsRequest::default()),
        (
            2,
            ListTransferRecordsRequest {
                subject: user(21),
                ..ListTransferRecordsRequest::default()
            },
        ),
    ] {
        let mut walked = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = suite
                .transfer
                .list_transfer_records(as_operator(ListTransferRecordsRequest {
                    page_size,
                    page_token: token.clone(),
                    ..request.clone()
                }))
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            assert!(page.transfer_records.len() <= usize::try_from(page_size).unwrap());
            walked.extend(page.transfer_records);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let expected: Vec<TransferRecord> = records
            .iter()
            .filter(|r| request.subject.is_empty() || r.subject == request.subject)
            .cloned()
            .collect();
        assert_eq!(walked, expected);
        assert!(pages >= expected.len() / usize::try_from(page_size).unwrap());
    }

    // A token belongs to the request that returned it; an altered one is refused.
    let first = suite
        .transfer
        .list_transfer_records(as_auditor(ListTransferRecordsRequest {
            page_size: 1,
            ..ListTransferRecordsRequest::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.transfer_records, records[..1]);
    let other_filter = ListTransferRecordsRequest {
        page_size: 1,
        page_token: first.next_page_token.clone(),
        decision: Decision::Denied.into(),
        ..ListTransferRecordsRequest::default()
    };
    let mut tampered = first.next_page_token.clone().into_bytes();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    let tampered = ListTransferRecordsRequest {
        page_size: 1,
        page_token: String::from_utf8(tampered).unwrap(),
        ..ListTransferRecordsRequest::default()
    };
    for request in [other_filter, tampered] {
        assert_error(
            suite
                .transfer
                .list_transfer_records(as_auditor(request))
                .await,
            Code::InvalidArgument,
            "INVALID_PAGE_TOKEN",
        );
    }

    // Staff and services read; users do not.
    let all = ListTransferRecordsRequest::default();
    for request in [as_mover(all.clone()), as_operator(all.clone())] {
        let page = suite
            .transfer
            .list_transfer_records(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.transfer_records, records);
    }
    assert_not_allowed(suite.transfer.list_transfer_records(as_user(all)).await);
}

#[tokio::test]
async fn get_transfer_record_returns_the_record_and_an_unknown_one_is_not_found() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let record = authorize(
        &mut suite,
        transfer_request(&user(7), &g.tokyo, &g.singapore),
    )
    .await;
    let get = |name: &str| GetTransferRecordRequest { name: name.into() };
    for request in [
        as_auditor(get(&record.name)),
        as_operator(get(&record.name)),
        as_mover(get(&record.name)),
    ] {
        let read = suite
            .transfer
            .get_transfer_record(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read, record);
    }
    assert_not_allowed(
        suite
            .transfer
            .get_transfer_record(as_user(get(&record.name)))
            .await,
    );
    let unknown = "transferRecords/0190f7a0-0000-7000-8000-0000000000ee";
    let status = assert_error(
        suite
            .transfer
            .get_transfer_record(as_auditor(get(unknown)))
            .await,
        Code::NotFound,
        "TRANSFER_RECORD_NOT_FOUND",
    );
    let resource = tonic_types::StatusExt::get_error_details(&status)
        .resource_info()
        .cloned()
        .unwrap();
    assert_eq!(resource.resource_name, unknown);
    for malformed in ["", "transferRecords/1", g.tokyo.name.as_str()] {
        assert_invalid(
            suite
                .transfer
                .get_transfer_record(as_auditor(get(malformed)))
                .await,
            "name",
        );
    }
}

fn recipients_of(subject: &str, page_size: i32, page_token: &str) -> ListSubjectRecipientsRequest {
    ListSubjectRecipientsRequest {
        subject: subject.into(),
        page_size,
        page_token: page_token.into(),
    }
}

async fn recipients(suite: &mut Suite, subject: &str) -> Vec<Recipient> {
    let response = suite
        .transfer
        .list_subject_recipients(as_auditor(recipients_of(subject, 0, "")))
        .await
        .unwrap()
        .into_inner();
    assert!(response.next_page_token.is_empty());
    response.recipients
}

#[tokio::test]
async fn subject_recipients_summarise_the_allowed_transfers_per_destination() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let (a, b) = (user(31), user(32));
    deemed_consent(&mut suite, &a).await;
    deemed_consent(&mut suite, &b).await;
    let to_singapore_1 = authorize(
        &mut suite,
        categories(
            transfer_request(&a, &g.tokyo, &g.singapore),
            &[DataCategory::Email],
        ),
    )
    .await;
    let to_new_york = authorize(
        &mut suite,
        categories(
            transfer_request(&a, &g.tokyo, &g.new_york),
            &[DataCategory::Name],
        ),
    )
    .await;
    let to_singapore_2 = authorize(
        &mut suite,
        categories(
            transfer_request(&a, &g.new_york, &g.singapore),
            &[DataCategory::PhoneNumber, DataCategory::Name],
        ),
    )
    .await;
    // Denied transfers and other subjects' transfers are not recipients of a.
    let denied = authorize(&mut suite, transfer_request(&a, &g.tokyo, &g.partner)).await;
    assert_eq!(denied.decision(), Decision::Denied);
    authorize(&mut suite, transfer_request(&b, &g.singapore, &g.tokyo)).await;

    let expected_singapore = Recipient {
        entity: g.singapore.name.clone(),
        first_time: to_singapore_1.record_time,
        last_time: to_singapore_2.record_time,
        data_categories: vec![
            DataCategory::Name.into(),
            DataCategory::Email.into(),
            DataCategory::PhoneNumber.into(),
        ],
        transfer_count: 2,
        entity_kind: Kind::Affiliate.into(),
        legal_name: g.singapore.legal_name.clone(),
        country_code: "SG".into(),
        region: "sg".into(),
    };
    let expected_new_york = Recipient {
        entity: g.new_york.name.clone(),
        first_time: to_new_york.record_time,
        last_time: to_new_york.record_time,
        data_categories: vec![DataCategory::Name.into()],
        transfer_count: 1,
        entity_kind: Kind::Branch.into(),
        legal_name: g.new_york.legal_name.clone(),
        country_code: "US".into(),
        region: "us".into(),
    };
    assert_eq!(
        recipients(&mut suite, &a).await,
        [expected_singapore.clone(), expected_new_york.clone()]
    );
    let of_b = recipients(&mut suite, &b).await;
    assert_eq!(of_b.len(), 1);
    assert_eq!(of_b[0].entity, g.tokyo.name);
    assert_eq!(of_b[0].entity_kind(), Kind::Operator);
    assert!(recipients(&mut suite, &user(33)).await.is_empty());

    // The entity as registered now; the country and region of the last transfer to it.
    let renamed = UpdateEntityRequest {
        entity: Some(GroupEntity {
            name: g.singapore.name.clone(),
            legal_name: "Example Affiliate Sdn. Bhd.".into(),
            country_code: "MY".into(),
            region: "my".into(),
            ..GroupEntity::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["legal_name".into(), "country_code".into(), "region".into()],
        }),
    };
    suite
        .transfer
        .update_entity(as_operator(renamed))
        .await
        .unwrap();
    let now = recipients(&mut suite, &a).await;
    assert_eq!(
        now[0],
        Recipient {
            legal_name: "Example Affiliate Sdn. Bhd.".into(),
            ..expected_singapore.clone()
        }
    );

    // In pages of one, in order of first_time.
    let page = suite
        .transfer
        .list_subject_recipients(as_mover(recipients_of(&a, 1, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.recipients.len(), 1);
    assert_eq!(page.recipients[0].entity, g.singapore.name);
    assert!(!page.next_page_token.is_empty());
    let next = suite
        .transfer
        .list_subject_recipients(as_mover(recipients_of(&a, 1, &page.next_page_token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.recipients, [expected_new_york]);
    assert!(next.next_page_token.is_empty());
    assert_error(
        suite
            .transfer
            .list_subject_recipients(as_mover(recipients_of(&b, 1, &page.next_page_token)))
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );

    // Who may ask, and about whom.
    suite
        .transfer
        .list_subject_recipients(as_operator(recipients_of(&a, 0, "")))
        .await
        .unwrap();
    assert_not_allowed(
        suite
            .transfer
            .list_subject_recipients(as_user(recipients_of(&a, 0, "")))
            .await,
    );
    for malformed in ["", "tenants/x/users/y", TENANT, g.tokyo.name.as_str()] {
        assert_invalid(
            suite
                .transfer
                .list_subject_recipients(as_auditor(recipients_of(malformed, 0, "")))
                .await,
            "subject",
        );
    }
}

fn export() -> ExportTransferRecordsRequest {
    ExportTransferRecordsRequest::default()
}

#[tokio::test]
async fn export_streams_every_matching_record_in_ascending_sequence_and_ends_ok() {
    let mut suite = suite().await;
    // The empty log exports nothing.
    assert!(exported(&mut suite, as_auditor(export())).await.is_empty());
    let g = group(&mut suite).await;
    let records = six_records(&mut suite, &g).await;

    assert_eq!(exported(&mut suite, as_auditor(export())).await, records);
    assert_eq!(exported(&mut suite, as_operator(export())).await, records);
    let of_b = ExportTransferRecordsRequest {
        subject: user(22),
        ..export()
    };
    assert_eq!(
        sequences(&exported(&mut suite, as_auditor(of_b)).await),
        [1, 5]
    );
    let filtered = ExportTransferRecordsRequest {
        region: "us".into(),
        decision: Decision::Allowed.into(),
        start_time: records[3].record_time,
        ..export()
    };
    assert_eq!(
        sequences(&exported(&mut suite, as_auditor(filtered)).await),
        [3]
    );

    // Resuming after sequence 2.
    let resumed = ExportTransferRecordsRequest {
        min_sequence: 3,
        ..export()
    };
    assert_eq!(
        exported(&mut suite, as_auditor(resumed)).await,
        records[3..]
    );
    let resumed = ExportTransferRecordsRequest {
        min_sequence: 2,
        entity: g.singapore.name.clone(),
        ..export()
    };
    assert_eq!(
        sequences(&exported(&mut suite, as_auditor(resumed)).await),
        [3, 5]
    );
    let past_the_end = ExportTransferRecordsRequest {
        min_sequence: 6,
        ..export()
    };
    assert!(
        exported(&mut suite, as_auditor(past_the_end))
            .await
            .is_empty()
    );

    for (request, field) in [
        (
            ExportTransferRecordsRequest {
                min_sequence: -1,
                ..export()
            },
            "min_sequence",
        ),
        (
            ExportTransferRecordsRequest {
                start_time: records[2].record_time,
                end_time: records[1].record_time,
                ..export()
            },
            "end_time",
        ),
        (
            ExportTransferRecordsRequest {
                subject: "someone".into(),
                ..export()
            },
            "subject",
        ),
    ] {
        assert_invalid(
            suite
                .transfer
                .export_transfer_records(as_auditor(request))
                .await,
            field,
        );
    }

    // Auditors and operators only.
    assert_not_allowed(
        suite
            .transfer
            .export_transfer_records(as_mover(export()))
            .await,
    );
    assert_not_allowed(
        suite
            .transfer
            .export_transfer_records(as_identity(export()))
            .await,
    );
    assert_not_allowed(
        suite
            .transfer
            .export_transfer_records(as_user(export()))
            .await,
    );
}

/// A Portal User with PI in identity: bootstrapped by the operator, activated (which records
/// their deemed consent).
async fn real_user(suite: &mut Suite) -> User {
    let tenant = suite
        .identity
        .create_tenant(as_operator(CreateTenantRequest {
            request_id: String::new(),
            tenant: Some(Tenant {
                display_name: "Example Corporation".into(),
                contract_reference: "PSC-2026-000041".into(),
                ..Tenant::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    let registration = RegisterUserRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        parent: tenant.name.clone(),
        user: Some(User {
            display_name: "Hanako Example".into(),
            email: "hanako.example@example.com".into(),
            phone_number: "+81312345678".into(),
            roles: vec![Role::TenantAdmin.into()],
            ..User::default()
        }),
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
    let portal = keys::token(TokenKind::Service, "services/portal-web", None, &[]);
    suite
        .identity
        .activate_user(authorized(
            ActivateUserRequest {
                activation_secret: registered.activation_secret,
                password: "correct horse battery staple".into(),
            },
            &portal,
        ))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn records_name_the_subject_only_and_hold_no_personal_information() {
    let mut suite = suite().await;
    let g = group(&mut suite).await;
    let person = real_user(&mut suite).await;
    let mut records = Vec::new();
    for to in [&g.singapore, &g.new_york, &g.partner] {
        let request = categories(
            transfer_request(&person.name, &g.tokyo, to),
            &[
                DataCategory::Name,
                DataCategory::Email,
                DataCategory::PhoneNumber,
            ],
        );
        records.push(authorize(&mut suite, request).await);
    }
    assert_eq!(records[0].decision(), Decision::Allowed);
    let pi = [
        "Hanako Example",
        "hanako.example@example.com",
        "+81312345678",
    ];
    // Nothing served carries it.
    let served = exported(&mut suite, as_auditor(export())).await;
    assert_eq!(served, records);
    for record in &served {
        assert_eq!(record.subject, person.name);
        let text = format!("{record:?}");
        let bytes = record.encode_to_vec();
        for value in pi {
            assert!(!text.contains(value), "{value} in {text}");
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{value} in the encoding"
            );
        }
    }
    // Nor anything stored in the transfer schema.
    let admin = suite.db.admin_pool().await.unwrap();
    for value in pi {
        for table in [
            "entities",
            "records",
            "log_head",
            "deleted_subjects",
            "idempotency",
        ] {
            let sql =
                format!("SELECT count(*) FROM transfer.{table} t WHERE strpos(t::text, $1) > 0");
            let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(value)
                .fetch_one(&admin)
                .await
                .unwrap();
            assert_eq!(found, 0, "{value} in transfer.{table}");
        }
        for (table, column) in [("records", "leaf_data"), ("idempotency", "response")] {
            let sql = format!(
                "SELECT count(*) FROM transfer.{table} \
                 WHERE position(convert_to($1, 'UTF8') in {column}) > 0"
            );
            let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(value)
                .fetch_one(&admin)
                .await
                .unwrap();
            assert_eq!(found, 0, "{value} in transfer.{table}.{column}");
        }
    }
}

#[tokio::test]
async fn concurrent_decisions_are_committed_in_batches_not_one_commit_each() {
    let suite = suite().await;
    // Unregistered entities: decided without consent, so the calls arrive together.
    let unknown = |n: u32| portal_proto::transfer::v1::GroupEntity {
        name: format!("entities/0190f7a0-0000-7000-8000-{n:012}"),
        ..Default::default()
    };
    let (from, to) = (unknown(1), unknown(2));
    let calls: Vec<_> = (0..100)
        .map(|n| {
            let mut transfer = suite.transfer.clone();
            let request = transfer_request(&user(n), &from, &to);
            tokio::spawn(async move { transfer.authorize_transfer(as_mover(request)).await })
        })
        .collect();
    let mut sequences = Vec::new();
    for call in calls {
        sequences.push(call.await.unwrap().unwrap().into_inner().sequence);
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (0..100).collect::<Vec<i64>>());
    // Every answered record is committed, and they share commits.
    let admin = suite.db.admin_pool().await.unwrap();
    let (records, commits): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM transfer.records")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(records, 100);
    assert!(commits < 100, "{commits} commits for 100 records");
}
