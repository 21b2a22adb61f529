//! The entity registry: who may register, read and change entities, every bad field named,
//! review due dates, AIP-134 updates with etags, listing oldest first in pages, and
//! idempotent creation.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use common::*;
use portal_platform::auth::Kind as TokenKind;
use portal_platform::time::{from_timestamp, to_timestamp};
use portal_proto::transfer::v1::group_entity::Kind;
use portal_proto::transfer::v1::{
    CreateEntityRequest, GetEntityRequest, GroupEntity, ListEntitiesRequest, ListEntitiesResponse,
    UpdateEntityRequest,
};
use portal_testkit::keys::{self, authorized};
use prost_types::FieldMask;
use tonic::{Code, Request, Status};

const UNREGISTERED: &str = "entities/0190f7a0-0000-7000-8000-0000000000ee";

fn as_service<T>(message: T) -> Request<T> {
    as_mover(message)
}

/// A Portal User's token: users have no access to this service.
fn as_user<T>(message: T) -> Request<T> {
    let token = keys::token(TokenKind::User, &user(1), Some(TENANT), &["TENANT_ADMIN"]);
    authorized(message, &token)
}

fn days_ago(days: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::days(days)
}

fn subcontractor(legal_name: &str) -> GroupEntity {
    GroupEntity {
        security_level: 75,
        last_review_time: Some(to_timestamp(days_ago(10))),
        ..entity(Kind::Subcontractor, legal_name, "JP", "jp")
    }
}

fn create(entity: GroupEntity) -> CreateEntityRequest {
    CreateEntityRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        entity: Some(entity),
    }
}

fn get(name: &str) -> GetEntityRequest {
    GetEntityRequest { name: name.into() }
}

fn list(kind: Kind, page_size: i32, page_token: &str) -> ListEntitiesRequest {
    ListEntitiesRequest {
        page_size,
        page_token: page_token.into(),
        kind: kind.into(),
    }
}

fn update(entity: GroupEntity, paths: &[&str]) -> UpdateEntityRequest {
    UpdateEntityRequest {
        entity: Some(entity),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    }
}

fn time(t: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    from_timestamp(t.expect("a time"), "time").unwrap()
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = assert_error(result, Code::InvalidArgument, "INVALID_REQUEST");
    assert_eq!(violations(&status), [field], "{status:?}");
}

fn assert_not_allowed<T: std::fmt::Debug>(result: Result<T, Status>) {
    assert_error(result, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
}

async fn list_all(suite: &mut Suite, kind: Kind) -> ListEntitiesResponse {
    suite
        .transfer
        .list_entities(as_auditor(list(kind, 0, "")))
        .await
        .unwrap()
        .into_inner()
}

fn names(entities: &[GroupEntity]) -> Vec<String> {
    entities.iter().map(|e| e.name.clone()).collect()
}

#[tokio::test]
async fn only_the_operator_registers_and_updates_entities_while_staff_and_services_read_them() {
    let mut suite = suite().await;
    let branch = entity(
        Kind::Branch,
        "Example Operator K.K. Osaka Branch",
        "JP",
        "jp",
    );
    let transfer = &mut suite.transfer;
    assert_not_allowed(
        transfer
            .create_entity(as_auditor(create(branch.clone())))
            .await,
    );
    assert_not_allowed(
        transfer
            .create_entity(as_service(create(branch.clone())))
            .await,
    );
    assert_not_allowed(
        transfer
            .create_entity(as_user(create(branch.clone())))
            .await,
    );
    assert_error(
        transfer
            .create_entity(tonic::Request::new(create(branch.clone())))
            .await,
        Code::Unauthenticated,
        "TOKEN_MISSING",
    );
    assert!(
        list_all(&mut suite, Kind::Unspecified)
            .await
            .entities
            .is_empty()
    );

    let created = register(&mut suite, branch).await;
    let transfer = &mut suite.transfer;
    let by_auditor = transfer
        .get_entity(as_auditor(get(&created.name)))
        .await
        .unwrap()
        .into_inner();
    let by_service = transfer
        .get_entity(as_service(get(&created.name)))
        .await
        .unwrap()
        .into_inner();
    let by_operator = transfer
        .get_entity(as_operator(get(&created.name)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_auditor, created);
    assert_eq!(by_service, created);
    assert_eq!(by_operator, created);
    for listed in [
        transfer
            .list_entities(as_auditor(list(Kind::Unspecified, 0, "")))
            .await,
        transfer
            .list_entities(as_service(list(Kind::Unspecified, 0, "")))
            .await,
        transfer
            .list_entities(as_operator(list(Kind::Unspecified, 0, "")))
            .await,
    ] {
        assert_eq!(
            listed.unwrap().into_inner().entities,
            std::slice::from_ref(&created)
        );
    }
    assert_not_allowed(transfer.get_entity(as_user(get(&created.name))).await);
    assert_not_allowed(
        transfer
            .list_entities(as_user(list(Kind::Unspecified, 0, "")))
            .await,
    );

    let renamed = GroupEntity {
        name: created.name.clone(),
        legal_name: "Example Operator K.K. Kansai Branch".into(),
        ..GroupEntity::default()
    };
    for refused in [
        transfer
            .update_entity(as_auditor(update(renamed.clone(), &["legal_name"])))
            .await,
        transfer
            .update_entity(as_service(update(renamed.clone(), &["legal_name"])))
            .await,
        transfer
            .update_entity(as_user(update(renamed.clone(), &["legal_name"])))
            .await,
    ] {
        assert_not_allowed(refused);
    }
    let updated = transfer
        .update_entity(as_operator(update(renamed, &["legal_name"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.legal_name, "Example Operator K.K. Kansai Branch");
}

#[tokio::test]
async fn each_bad_field_of_a_new_entity_is_named() {
    let mut suite = suite().await;
    let good = || entity(Kind::Affiliate, "Example Affiliate Pte. Ltd.", "SG", "sg");
    let future = Some(to_timestamp(Utc::now() + chrono::Duration::days(1)));
    let cases: Vec<(GroupEntity, &str)> = vec![
        (
            GroupEntity {
                kind: Kind::Unspecified.into(),
                ..good()
            },
            "entity.kind",
        ),
        (GroupEntity { kind: 42, ..good() }, "entity.kind"),
        (
            GroupEntity {
                legal_name: String::new(),
                ..good()
            },
            "entity.legal_name",
        ),
        (
            GroupEntity {
                legal_name: "x".repeat(201),
                ..good()
            },
            "entity.legal_name",
        ),
        (
            GroupEntity {
                country_code: "UK".into(),
                ..good()
            },
            "entity.country_code",
        ),
        (
            GroupEntity {
                country_code: "XX".into(),
                ..good()
            },
            "entity.country_code",
        ),
        (
            GroupEntity {
                country_code: "jp".into(),
                ..good()
            },
            "entity.country_code",
        ),
        (
            GroupEntity {
                country_code: String::new(),
                ..good()
            },
            "entity.country_code",
        ),
        (
            GroupEntity {
                region: String::new(),
                ..good()
            },
            "entity.region",
        ),
        (
            GroupEntity {
                region: "SG".into(),
                ..good()
            },
            "entity.region",
        ),
        (
            GroupEntity {
                security_level: 101,
                ..good()
            },
            "entity.security_level",
        ),
        (
            GroupEntity {
                security_level: -1,
                ..good()
            },
            "entity.security_level",
        ),
        (
            GroupEntity {
                security_level: 0,
                ..subcontractor("Example Processing K.K.")
            },
            "entity.security_level",
        ),
        (
            GroupEntity {
                last_review_time: None,
                ..subcontractor("Example Processing K.K.")
            },
            "entity.last_review_time",
        ),
        (
            GroupEntity {
                last_review_time: future,
                ..subcontractor("Example Processing K.K.")
            },
            "entity.last_review_time",
        ),
        (
            GroupEntity {
                last_review_time: future,
                ..good()
            },
            "entity.last_review_time",
        ),
    ];
    for (entity, field) in cases {
        let result = suite
            .transfer
            .create_entity(as_operator(create(entity)))
            .await;
        assert_invalid(result, field);
    }
    // No entity at all: every required field is named.
    let status = assert_error(
        suite
            .transfer
            .create_entity(as_operator(CreateEntityRequest {
                request_id: String::new(),
                entity: None,
            }))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    let named: HashSet<String> = violations(&status).into_iter().collect();
    for field in [
        "entity.kind",
        "entity.legal_name",
        "entity.country_code",
        "entity.region",
    ] {
        assert!(named.contains(field), "{field}: {status:?}");
    }
    // Nothing was registered.
    assert!(
        list_all(&mut suite, Kind::Unspecified)
            .await
            .entities
            .is_empty()
    );
}

#[tokio::test]
async fn a_subcontractor_is_due_for_review_365_days_after_its_last_review_and_others_never() {
    let mut suite = suite().await;
    let processor = register(&mut suite, subcontractor("Example Processing K.K.")).await;
    assert!(processor.name.starts_with("entities/"));
    let id = uuid::Uuid::parse_str(processor.name.trim_start_matches("entities/")).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(processor.kind(), Kind::Subcontractor);
    assert_eq!(processor.security_level, 75);
    assert!(!processor.etag.is_empty());
    assert!(processor.create_time.is_some());
    assert_eq!(processor.update_time, processor.create_time);
    let reviewed = time(processor.last_review_time.as_ref());
    assert!((reviewed - days_ago(10)).num_seconds().abs() < 60);
    assert_eq!(
        time(processor.review_due_time.as_ref()),
        reviewed + chrono::Duration::days(365)
    );

    // Not a subcontractor: no review is due, even with a review time on record.
    let affiliate = register(
        &mut suite,
        GroupEntity {
            security_level: 80,
            last_review_time: Some(to_timestamp(days_ago(500))),
            ..entity(Kind::Affiliate, "Example Affiliate Pte. Ltd.", "SG", "sg")
        },
    )
    .await;
    assert!(affiliate.review_due_time.is_none(), "{affiliate:?}");
    for kind in [Kind::Operator, Kind::Branch, Kind::ThirdParty] {
        let other = register(&mut suite, entity(kind, "Example Co., Ltd.", "JP", "jp")).await;
        assert!(other.review_due_time.is_none(), "{other:?}");
        assert!(other.last_review_time.is_none(), "{other:?}");
        assert_eq!(other.security_level, 0);
    }
}

#[tokio::test]
async fn update_entity_changes_the_named_fields_with_a_new_etag() {
    let mut suite = suite().await;
    let processor = register(&mut suite, subcontractor("Example Processing K.K.")).await;

    let change = GroupEntity {
        name: processor.name.clone(),
        etag: processor.etag.clone(),
        security_level: 90,
        legal_name: "ignored: not in the mask".into(),
        ..GroupEntity::default()
    };
    let updated = suite
        .transfer
        .update_entity(as_operator(update(change, &["security_level"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.security_level, 90);
    assert_eq!(updated.legal_name, processor.legal_name);
    assert_eq!(updated.kind(), Kind::Subcontractor);
    assert_eq!(updated.create_time, processor.create_time);
    assert!(time(updated.update_time.as_ref()) > time(processor.update_time.as_ref()));
    assert_ne!(updated.etag, processor.etag);

    // A fresh review moves the due date.
    let now = Utc::now();
    let review = GroupEntity {
        name: processor.name.clone(),
        last_review_time: Some(to_timestamp(now)),
        ..GroupEntity::default()
    };
    let reviewed = suite
        .transfer
        .update_entity(as_operator(update(review, &["last_review_time"])))
        .await
        .unwrap()
        .into_inner();
    let last = time(reviewed.last_review_time.as_ref());
    assert!((last - now).num_milliseconds().abs() < 1);
    assert_eq!(
        time(reviewed.review_due_time.as_ref()),
        last + chrono::Duration::days(365)
    );

    // No mask: every one of the five that is set (AIP-134).
    let moved = GroupEntity {
        name: processor.name.clone(),
        country_code: "SG".into(),
        region: "sg".into(),
        ..GroupEntity::default()
    };
    let moved = suite
        .transfer
        .update_entity(as_operator(UpdateEntityRequest {
            entity: Some(moved),
            update_mask: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.country_code, "SG");
    assert_eq!(moved.region, "sg");
    assert_eq!(moved.security_level, 90);
    assert_eq!(moved.last_review_time, reviewed.last_review_time);

    let read = suite
        .transfer
        .get_entity(as_auditor(get(&processor.name)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, moved);
}

#[tokio::test]
async fn update_entity_refuses_the_kind_unknown_paths_bad_values_stale_etags_and_unknown_entities()
{
    let mut suite = suite().await;
    let branch = register(
        &mut suite,
        entity(
            Kind::Branch,
            "Example Operator K.K. Osaka Branch",
            "JP",
            "jp",
        ),
    )
    .await;
    let to_affiliate = GroupEntity {
        name: branch.name.clone(),
        kind: Kind::Affiliate.into(),
        ..GroupEntity::default()
    };
    let transfer = &mut suite.transfer;
    assert_invalid(
        transfer
            .update_entity(as_operator(update(to_affiliate, &["kind"])))
            .await,
        "update_mask",
    );
    let named = GroupEntity {
        name: branch.name.clone(),
        legal_name: "Example".into(),
        ..GroupEntity::default()
    };
    for path in ["name", "create_time", "etag", "review_due_time", "nonsense"] {
        assert_invalid(
            transfer
                .update_entity(as_operator(update(named.clone(), &[path])))
                .await,
            "update_mask",
        );
    }
    // An invalid value is named like on creation.
    for (value, paths, field) in [
        (
            GroupEntity {
                country_code: "UK".into(),
                ..named.clone()
            },
            &["country_code"][..],
            "entity.country_code",
        ),
        (
            GroupEntity {
                security_level: 101,
                ..named.clone()
            },
            &["security_level"][..],
            "entity.security_level",
        ),
        (
            GroupEntity {
                legal_name: String::new(),
                ..named.clone()
            },
            &["legal_name"][..],
            "entity.legal_name",
        ),
    ] {
        assert_invalid(
            transfer
                .update_entity(as_operator(update(value, paths)))
                .await,
            field,
        );
    }
    let stale = GroupEntity {
        etag: "\"0\"".into(),
        ..named.clone()
    };
    assert_error(
        transfer
            .update_entity(as_operator(update(stale, &["legal_name"])))
            .await,
        Code::Aborted,
        "ETAG_MISMATCH",
    );
    let unknown = GroupEntity {
        name: UNREGISTERED.into(),
        ..named.clone()
    };
    assert_error(
        transfer
            .update_entity(as_operator(update(unknown, &["legal_name"])))
            .await,
        Code::NotFound,
        "ENTITY_NOT_FOUND",
    );
    let malformed = GroupEntity {
        name: "entities/branch".into(),
        ..named
    };
    assert_invalid(
        transfer
            .update_entity(as_operator(update(malformed, &["legal_name"])))
            .await,
        "entity.name",
    );

    // Nothing changed.
    let read = transfer
        .get_entity(as_auditor(get(&branch.name)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, branch);
}

#[tokio::test]
async fn an_unknown_entity_is_not_found_and_a_malformed_name_is_invalid() {
    let mut suite = suite().await;
    let status = assert_error(
        suite
            .transfer
            .get_entity(as_auditor(get(UNREGISTERED)))
            .await,
        Code::NotFound,
        "ENTITY_NOT_FOUND",
    );
    let resource = tonic_types::StatusExt::get_error_details(&status)
        .resource_info()
        .cloned()
        .unwrap();
    assert_eq!(resource.resource_name, UNREGISTERED);
    for name in [
        "",
        "entities/x",
        "groups/0190f7a0-0000-7000-8000-0000000000ee",
        "entities/0190F7A0-0000-7000-8000-0000000000EE",
    ] {
        assert_invalid(
            suite.transfer.get_entity(as_auditor(get(name))).await,
            "name",
        );
    }
}

#[tokio::test]
async fn entities_are_listed_oldest_first_by_kind_and_in_pages() {
    let mut suite = suite().await;
    let mut created = Vec::new();
    for (kind, legal_name) in [
        (Kind::Operator, "Example Operator K.K."),
        (Kind::Affiliate, "Example Affiliate Pte. Ltd."),
        (Kind::ThirdParty, "Example Partner Co., Ltd."),
        (Kind::Affiliate, "Example Affiliate Inc."),
    ] {
        created.push(register(&mut suite, entity(kind, legal_name, "JP", "jp")).await);
    }
    created.push(register(&mut suite, subcontractor("Example Processing K.K.")).await);

    let all = list_all(&mut suite, Kind::Unspecified).await;
    assert_eq!(all.entities, created);
    assert!(all.next_page_token.is_empty());

    let affiliates = list_all(&mut suite, Kind::Affiliate).await;
    assert_eq!(
        names(&affiliates.entities),
        [created[1].name.clone(), created[3].name.clone()]
    );
    let subcontractors = list_all(&mut suite, Kind::Subcontractor).await;
    assert_eq!(subcontractors.entities, [created[4].clone()]);
    assert!(list_all(&mut suite, Kind::Branch).await.entities.is_empty());

    // One at a time: every entity once, in order.
    let mut walked = Vec::new();
    let mut token = String::new();
    let mut all_token = String::new();
    loop {
        let page = suite
            .transfer
            .list_entities(as_operator(list(Kind::Unspecified, 1, &token)))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entities.len() <= 1);
        walked.extend(names(&page.entities));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        if all_token.is_empty() {
            all_token = token.clone();
        }
    }
    assert_eq!(walked, names(&created));

    let first = suite
        .transfer
        .list_entities(as_operator(list(Kind::Unspecified, 1, "")))
        .await
        .unwrap()
        .into_inner();
    let mut tampered = first.next_page_token.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [tampered.as_str(), "not-a-token"] {
        assert_error(
            suite
                .transfer
                .list_entities(as_operator(list(Kind::Unspecified, 1, bad)))
                .await,
            Code::InvalidArgument,
            "INVALID_PAGE_TOKEN",
        );
    }
    // A token is valid only with the request that returned it.
    assert_error(
        suite
            .transfer
            .list_entities(as_operator(list(Kind::Affiliate, 1, &all_token)))
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
    assert_invalid(
        suite
            .transfer
            .list_entities(as_operator(list(Kind::Unspecified, -1, "")))
            .await,
        "page_size",
    );
    let unknown_kind = ListEntitiesRequest {
        kind: 42,
        ..list(Kind::Unspecified, 0, "")
    };
    assert_invalid(
        suite
            .transfer
            .list_entities(as_operator(unknown_kind))
            .await,
        "kind",
    );
}

#[tokio::test]
async fn create_entity_is_idempotent_by_request_id() {
    let mut suite = suite().await;
    let request = create(entity(
        Kind::Affiliate,
        "Example Affiliate Pte. Ltd.",
        "SG",
        "sg",
    ));
    // Output-only fields are ignored on input.
    let mut request = request;
    if let Some(entity) = request.entity.as_mut() {
        entity.name = UNREGISTERED.into();
        entity.etag = "\"7\"".into();
        entity.create_time = Some(to_timestamp(days_ago(3)));
    }
    let first = suite
        .transfer
        .create_entity(as_operator(request.clone()))
        .await
        .unwrap()
        .into_inner();
    let retry = suite
        .transfer
        .create_entity(as_operator(request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry, first);
    assert_ne!(first.name, UNREGISTERED);
    assert_ne!(first.etag, "\"7\"");
    assert!(time(first.create_time.as_ref()) > days_ago(1));
    assert_eq!(
        list_all(&mut suite, Kind::Unspecified).await.entities,
        std::slice::from_ref(&first)
    );

    let mut different = request.clone();
    different.entity.as_mut().unwrap().legal_name = "Example Affiliate Sdn. Bhd.".into();
    assert_error(
        suite.transfer.create_entity(as_operator(different)).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
    let malformed = CreateEntityRequest {
        request_id: "not-a-uuid".into(),
        ..request
    };
    assert_invalid(
        suite.transfer.create_entity(as_operator(malformed)).await,
        "request_id",
    );
    assert_eq!(
        list_all(&mut suite, Kind::Unspecified).await.entities,
        [first]
    );
}

#[tokio::test]
async fn a_time_outside_the_timestamp_range_is_invalid_not_internal() {
    let mut suite = suite().await;
    let mut ancient = entity(
        portal_proto::transfer::v1::group_entity::Kind::Subcontractor,
        "Example Processing Ltd.",
        "JP",
        "jp",
    );
    ancient.security_level = 80;
    ancient.last_review_time = Some(prost_types::Timestamp {
        seconds: -220_000_000_000,
        nanos: 0,
    });
    let request = portal_proto::transfer::v1::CreateEntityRequest {
        request_id: String::new(),
        entity: Some(ancient),
    };
    let status = assert_error(
        suite.transfer.create_entity(as_operator(request)).await,
        tonic::Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["entity.last_review_time"]);
}
