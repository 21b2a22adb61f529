#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

//! A Portal User's life after registration, over real gRPC and PostgreSQL: who sees which user
//! and tenant (and their PI), listing, updates, deletion with a verifiable receipt (Art. 5.3),
//! the data export and the user event feed.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use portal_proto::consent::v1::{
    GetConsentStateRequest, ListSigningKeysRequest as ConsentKeysRequest,
};
use portal_proto::identity::v1::deletion_receipt::ErasedData;
use portal_proto::identity::v1::user::{Role, State};
use portal_proto::identity::v1::user_event::Type as EventType;
use portal_proto::identity::v1::{
    AccessToken, CreateTenantRequest, DeleteUserRequest, DeletionReceipt, ExportUserDataRequest,
    GetTenantRequest, GetUserRequest, ListSigningKeysRequest, ListUsersRequest, Tenant,
    UpdateUserRequest, User, UserEvent, WatchUserEventsRequest,
};
use portal_testkit::keys::authorized;
use prost::Message;
use prost_types::FieldMask;
use tonic::{Code, Status};

fn get(name: &str) -> GetUserRequest {
    GetUserRequest { name: name.into() }
}

fn delete(name: &str) -> DeleteUserRequest {
    DeleteUserRequest {
        name: name.into(),
        etag: String::new(),
        request_id: uuid::Uuid::now_v7().to_string(),
    }
}

fn export(name: &str) -> ExportUserDataRequest {
    ExportUserDataRequest { name: name.into() }
}

fn list(tenant: &Tenant, page_size: i32, page_token: &str, show_deleted: bool) -> ListUsersRequest {
    ListUsersRequest {
        parent: tenant.name.clone(),
        page_size,
        page_token: page_token.into(),
        show_deleted,
    }
}

fn update(user: User, paths: &[&str]) -> UpdateUserRequest {
    UpdateUserRequest {
        user: Some(user),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    }
}

/// Asserts `user` carries exactly the PI of `person(n)`.
fn assert_pi_of(user: &User, n: u32) {
    let expected = person(n, &[]);
    assert_eq!(user.display_name, expected.display_name, "{}", user.name);
    assert_eq!(user.email, expected.email, "{}", user.name);
    assert_eq!(user.phone_number, expected.phone_number, "{}", user.name);
}

fn assert_no_pi(user: &User) {
    assert!(
        user.display_name.is_empty() && user.email.is_empty() && user.phone_number.is_empty(),
        "PI shown for {}",
        user.name
    );
}

/// `request` carrying a USER access token that identity itself issued.
fn with_token<T>(request: T, token: &AccessToken) -> tonic::Request<T> {
    authorized(request, &token.access_token)
}

async fn sign_in(suite: &mut Suite, email: &str) -> Result<AccessToken, Status> {
    suite
        .identity
        .sign_in(as_portal(sign_in_request(email, PASSWORD)))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn only_the_user_themself_and_their_tenant_admins_see_pi_and_other_tenants_see_no_user() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000101").await;
    let other = create_tenant(&mut suite.identity, "PSC-2026-000102").await;
    let admin = first_admin(&mut suite, &tenant, 101).await;
    let member = colleague(&mut suite, &tenant, &admin, 102).await;
    let peer = colleague(&mut suite, &tenant, &admin, 103).await;
    let stranger = first_admin(&mut suite, &other, 104).await;
    let identity = &mut suite.identity;

    // The user themself and an admin of the tenant: with PI.
    let seen = identity
        .get_user(as_user(get(&member.name), &member))
        .await
        .unwrap()
        .into_inner();
    assert_pi_of(&seen, 102);
    assert_eq!(seen.state(), State::Active);
    let seen = identity
        .get_user(as_user(get(&member.name), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_pi_of(&seen, 102);

    // Staff and services: the user, without PI.
    for request in [
        as_operator(get(&member.name)),
        as_auditor(get(&member.name)),
        as_portal(get(&member.name)),
    ] {
        let seen = identity.get_user(request).await.unwrap().into_inner();
        assert_eq!(seen.name, member.name);
        assert_eq!(seen.tenant, tenant.name);
        assert_eq!(seen.roles, [Role::Member as i32]);
        assert_eq!(seen.state(), State::Active);
        assert_no_pi(&seen);
    }

    // A member may not look at a colleague.
    assert_error(
        identity.get_user(as_user(get(&peer.name), &member)).await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );
    // Another tenant's user (even an admin) finds no such user.
    assert_error(
        identity
            .get_user(as_user(get(&member.name), &stranger))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    // A name that is not a user name.
    let status = assert_error(
        identity
            .get_user(as_operator(get("tenants/x/users/y")))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["name"]);
    let status = assert_error(
        identity.get_user(as_operator(get(&tenant.name))).await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["name"]);
}

#[tokio::test]
async fn tenants_are_created_by_operators_once_per_contract_and_read_only_by_their_own_users() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000201").await;
    let other = create_tenant(&mut suite.identity, "PSC-2026-000202").await;
    assert_eq!(tenant.home_region, "jp");
    assert_eq!(tenant.contract_reference, "PSC-2026-000201");
    let admin = first_admin(&mut suite, &tenant, 201).await;
    let member = colleague(&mut suite, &tenant, &admin, 202).await;
    let stranger = first_admin(&mut suite, &other, 203).await;
    let identity = &mut suite.identity;
    let read = |name: &str| GetTenantRequest { name: name.into() };

    // Users of the tenant, any role, and staff and services read it.
    for request in [
        as_user(read(&tenant.name), &admin),
        as_user(read(&tenant.name), &member),
        as_operator(read(&tenant.name)),
        as_auditor(read(&tenant.name)),
        as_portal(read(&tenant.name)),
    ] {
        let seen = identity.get_tenant(request).await.unwrap().into_inner();
        assert_eq!(seen, tenant);
    }
    // A user of another tenant finds no such tenant.
    assert_error(
        identity
            .get_tenant(as_user(read(&tenant.name), &stranger))
            .await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );
    assert_error(
        identity
            .get_tenant(as_operator(read(
                "tenants/0190f7a0-0000-7000-8000-0000000000ff",
            )))
            .await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );

    let creation = |reference: &str, region: &str| CreateTenantRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        tenant: Some(Tenant {
            display_name: "Another Corporation".into(),
            contract_reference: reference.into(),
            home_region: region.into(),
            ..Tenant::default()
        }),
    };
    // Only operators create tenants.
    for request in [
        as_user(creation("PSC-2026-000203", ""), &admin),
        as_auditor(creation("PSC-2026-000203", "")),
        as_portal(creation("PSC-2026-000203", "")),
    ] {
        assert_error(
            identity.create_tenant(request).await,
            Code::PermissionDenied,
            "CALLER_NOT_ALLOWED",
        );
    }
    // One tenant per contract.
    assert_error(
        identity
            .create_tenant(as_operator(creation("PSC-2026-000201", "")))
            .await,
        Code::AlreadyExists,
        "CONTRACT_REFERENCE_EXISTS",
    );
    // A retry with the same request_id returns the same tenant, not a second one nor an error.
    let request = creation("PSC-2026-000204", "jp");
    let created = identity
        .create_tenant(as_operator(request.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = identity
        .create_tenant(as_operator(request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, created);
    assert_eq!(created.home_region, "jp");
    // The same request_id for another request is refused.
    let mut changed = request;
    changed.tenant.as_mut().unwrap().display_name = "Changed Corporation".into();
    assert_error(
        identity.create_tenant(as_operator(changed)).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
    // Only this deployment's region.
    let status = assert_error(
        identity
            .create_tenant(as_operator(creation("PSC-2026-000205", "us")))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["tenant.home_region"]);
}

#[tokio::test]
async fn users_are_listed_oldest_first_in_pages_with_pi_for_admins_and_tombstones_on_request() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000301").await;
    let other = create_tenant(&mut suite.identity, "PSC-2026-000302").await;
    let admin = first_admin(&mut suite, &tenant, 301).await;
    let second = colleague(&mut suite, &tenant, &admin, 302).await;
    let leaver = self_registered(&mut suite, &tenant, 303).await;
    let fourth = colleague(&mut suite, &tenant, &admin, 304).await;
    let stranger = first_admin(&mut suite, &other, 305).await;
    suite
        .identity
        .delete_user(as_user(delete(&leaver.name), &leaver))
        .await
        .unwrap();
    let identity = &mut suite.identity;
    let names = |users: &[User]| users.iter().map(|u| u.name.clone()).collect::<Vec<_>>();
    let live = names(&[admin.clone(), second.clone(), fourth.clone()]);
    let everyone = names(&[
        admin.clone(),
        second.clone(),
        leaver.clone(),
        fourth.clone(),
    ]);

    // Admins see the live users, oldest first, with PI.
    let page = identity
        .list_users(as_user(list(&tenant, 0, "", false), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&page.users), live);
    assert!(page.next_page_token.is_empty());
    for (user, n) in page.users.iter().zip([301, 302, 304]) {
        assert_pi_of(user, n);
        assert_eq!(user.state(), State::Active);
    }
    assert!(
        page.users
            .windows(2)
            .all(|w| w[0].create_time.unwrap().seconds <= w[1].create_time.unwrap().seconds)
    );

    // With show_deleted, the deleted user is there too, as a tombstone.
    let page = identity
        .list_users(as_user(list(&tenant, 0, "", true), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&page.users), everyone);
    let tombstone = &page.users[2];
    assert_eq!(tombstone.state(), State::Deleted);
    assert!(tombstone.delete_time.is_some());
    assert_no_pi(tombstone);

    // Pages of one walk every user exactly once, in the same order.
    let mut walked = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = identity
            .list_users(as_user(list(&tenant, 1, &token, true), &admin))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.users.len(), 1);
        walked.extend(page.users);
        pages += 1;
        assert!(pages <= 4, "more pages than users");
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names(&walked), everyone);
    let unique: HashSet<_> = walked.iter().map(|u| u.name.clone()).collect();
    assert_eq!(unique.len(), walked.len());

    // A page token is only good unaltered, and for the request it came from.
    let first = identity
        .list_users(as_user(list(&tenant, 1, "", true), &admin))
        .await
        .unwrap()
        .into_inner();
    let mut bytes = URL_SAFE_NO_PAD.decode(&first.next_page_token).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let tampered = URL_SAFE_NO_PAD.encode(bytes);
    assert_error(
        identity
            .list_users(as_user(list(&tenant, 1, &tampered, true), &admin))
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
    assert_error(
        identity
            .list_users(as_user(
                list(&tenant, 1, &first.next_page_token, false),
                &admin,
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
    let status = assert_error(
        identity
            .list_users(as_user(list(&tenant, -1, "", false), &admin))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["page_size"]);

    // Staff list without PI.
    for request in [
        as_auditor(list(&tenant, 0, "", true)),
        as_operator(list(&tenant, 0, "", true)),
    ] {
        let page = identity.list_users(request).await.unwrap().into_inner();
        assert_eq!(page.users.len(), 4);
        page.users.iter().for_each(assert_no_pi);
    }
    // Members may not list; another tenant's admin finds no such tenant.
    assert_error(
        identity
            .list_users(as_user(list(&tenant, 0, "", false), &second))
            .await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );
    assert_error(
        identity
            .list_users(as_user(list(&tenant, 0, "", false), &stranger))
            .await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );
}

#[tokio::test]
async fn users_edit_their_own_profile_admins_edit_roles_and_a_tenant_keeps_an_active_admin() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000401").await;
    let admin = first_admin(&mut suite, &tenant, 401).await;
    let member = colleague(&mut suite, &tenant, &admin, 402).await;
    let other = self_registered(&mut suite, &tenant, 403).await;
    let identity = &mut suite.identity;

    // An empty mask updates the fields given: here only the phone number.
    let before = member.etag.clone();
    let change = User {
        name: member.name.clone(),
        phone_number: "+81312349402".into(),
        ..User::default()
    };
    let updated = identity
        .update_user(as_user(
            UpdateUserRequest {
                user: Some(change),
                update_mask: None,
            },
            &member,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.phone_number, "+81312349402");
    assert_eq!(updated.display_name, member.display_name);
    assert_eq!(updated.email, member.email);
    assert_eq!(updated.roles, member.roles);
    assert_ne!(updated.etag, before);
    let seen = identity
        .get_user(as_user(get(&member.name), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.phone_number, "+81312349402");
    assert_eq!(seen.etag, updated.etag);

    // A member may not change roles, not even their own.
    let promote = User {
        name: member.name.clone(),
        roles: vec![Role::TenantAdmin.into()],
        ..User::default()
    };
    assert_error(
        identity
            .update_user(as_user(update(promote.clone(), &[]), &member))
            .await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );
    assert_error(
        identity
            .update_user(as_user(update(promote, &["roles"]), &member))
            .await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );
    // Only the four fields can be named.
    let status = assert_error(
        identity
            .update_user(as_user(
                update(
                    User {
                        name: member.name.clone(),
                        ..User::default()
                    },
                    &["state"],
                ),
                &member,
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert!(violations(&status).contains(&"update_mask".to_owned()));
    // An etag read before the last change is stale.
    let stale = User {
        name: member.name.clone(),
        display_name: "Renamed Person".into(),
        etag: before,
        ..User::default()
    };
    assert_error(
        identity
            .update_user(as_user(update(stale, &["display_name"]), &member))
            .await,
        Code::Aborted,
        "ETAG_MISMATCH",
    );
    // Another user's email, in any case, is taken.
    let taken = User {
        name: member.name.clone(),
        email: "PERSON403@Example.COM".into(),
        ..User::default()
    };
    assert_error(
        identity
            .update_user(as_user(update(taken, &["email"]), &member))
            .await,
        Code::AlreadyExists,
        "EMAIL_ALREADY_REGISTERED",
    );
    // The only active admin cannot give up the role...
    let demote = User {
        name: admin.name.clone(),
        roles: vec![Role::Member.into()],
        ..User::default()
    };
    assert_error(
        identity
            .update_user(as_user(update(demote.clone(), &["roles"]), &admin))
            .await,
        Code::FailedPrecondition,
        "LAST_TENANT_ADMIN",
    );
    let seen = identity
        .get_user(as_operator(get(&admin.name)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.roles, [Role::TenantAdmin as i32]);
    // ...but can once another admin is active.
    let promote = User {
        name: other.name.clone(),
        roles: vec![Role::TenantAdmin.into(), Role::Member.into()],
        ..User::default()
    };
    let promoted = identity
        .update_user(as_user(update(promote, &["roles"]), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(promoted.roles.contains(&(Role::TenantAdmin as i32)));
    assert_pi_of(&promoted, 403);
    let demoted = identity
        .update_user(as_user(update(demote, &["roles"]), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(demoted.roles, [Role::Member as i32]);

    // After an email change the user signs in with the new address only.
    let current = identity
        .get_user(as_user(get(&member.name), &member))
        .await
        .unwrap()
        .into_inner();
    let moved = User {
        name: member.name.clone(),
        email: "moved402@example.com".into(),
        etag: current.etag,
        ..User::default()
    };
    let moved = identity
        .update_user(as_user(update(moved, &["email"]), &member))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.email, "moved402@example.com");
    assert_eq!(moved.phone_number, "+81312349402");
    let token = sign_in(&mut suite, "Moved402@Example.com").await.unwrap();
    assert_eq!(token.user, member.name);
    assert_error(
        sign_in(&mut suite, "person402@example.com").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}

#[tokio::test]
async fn a_user_deletes_themself_under_article_5_3_and_gets_a_verifiable_receipt() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000501").await;
    let other = create_tenant(&mut suite.identity, "PSC-2026-000502").await;
    let admin = first_admin(&mut suite, &tenant, 501).await;
    let user = colleague(&mut suite, &tenant, &admin, 502).await;
    let peer = colleague(&mut suite, &tenant, &admin, 503).await;
    let stranger = first_admin(&mut suite, &other, 504).await;
    let token = sign_in(&mut suite, &user.email).await.unwrap();
    let mut identity = suite.identity.clone();

    // Who may not delete the user; and a stale etag.
    assert_error(
        identity
            .delete_user(as_user(delete(&user.name), &peer))
            .await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );
    assert_error(
        identity.delete_user(as_operator(delete(&user.name))).await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );
    assert_error(
        identity
            .delete_user(as_user(delete(&user.name), &stranger))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let stale = DeleteUserRequest {
        etag: "\"0\"".into(),
        ..delete(&user.name)
    };
    assert_error(
        identity.delete_user(with_token(stale, &token)).await,
        Code::Aborted,
        "ETAG_MISMATCH",
    );

    // The user deletes themself, with the token identity gave them.
    let request = DeleteUserRequest {
        etag: user.etag.clone(),
        ..delete(&user.name)
    };
    let receipt = identity
        .delete_user(with_token(request, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.user, user.name);
    assert_eq!(receipt.tenant, tenant.name);
    assert!(uuid::Uuid::parse_str(&receipt.receipt_id).is_ok());
    let erased: HashSet<i32> = receipt.erased_data.iter().copied().collect();
    let all: HashSet<i32> = [
        ErasedData::DisplayName,
        ErasedData::Email,
        ErasedData::PhoneNumber,
        ErasedData::Credentials,
    ]
    .into_iter()
    .map(i32::from)
    .collect();
    assert_eq!(erased, all);
    assert!(receipt.data_key_destroyed);
    assert!(
        receipt
            .consent_withdrawal_record
            .starts_with("consentRecords/")
    );
    assert!(receipt.deletion_event_sequence > 0);
    let delete_time = receipt.delete_time.unwrap();
    assert!(receipt.backup_expire_time.unwrap().seconds > delete_time.seconds);
    // No PI in the receipt.
    let encoded = receipt.encode_to_vec();
    for pi in [&user.display_name, &user.email, &user.phone_number] {
        assert!(
            !encoded
                .windows(pi.len())
                .any(|window| window == pi.as_bytes())
        );
    }

    // The signature verifies with identity's published key, over exactly the receipt's fields.
    let keys = identity
        .list_signing_keys(as_portal(ListSigningKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .signing_keys;
    let key = keys
        .iter()
        .find(|k| k.key_id == receipt.key_id)
        .expect("the receipt's key is published");
    assert_eq!(key.algorithm, "Ed25519");
    let public_key = VerifyingKey::from_bytes(&key.public_key.clone().try_into().unwrap()).unwrap();
    let signature = Signature::from_slice(&receipt.signature).unwrap();
    assert!(
        public_key
            .verify(&receipt.signed_payload, &signature)
            .is_ok()
    );
    let signed = DeletionReceipt::decode(receipt.signed_payload.as_slice()).unwrap();
    assert_eq!(
        signed,
        DeletionReceipt {
            key_id: String::new(),
            signed_payload: Vec::new(),
            signature: Vec::new(),
            ..receipt.clone()
        }
    );
    let mut altered = receipt.signed_payload.clone();
    altered[3] ^= 0x01;
    assert!(public_key.verify(&altered, &signature).is_err());

    // The consent ledger shows the full withdrawal, recorded in the entry the receipt names.
    let state = suite
        .consent
        .get_consent_state(as_operator(GetConsentStateRequest {
            subject: user.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(state.withdrawn);
    assert!(!state.active);
    assert!(state.withdraw_time.is_some());
    let last = state.last_record.unwrap();
    assert_eq!(last.name, receipt.consent_withdrawal_record);
    assert!(last.full_withdrawal);

    // A tombstone without PI; no sign-in; the user's token no longer works for reading.
    let seen = identity
        .get_user(as_user(get(&user.name), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.state(), State::Deleted);
    // The same instant as the receipt's (the stored time has microsecond precision).
    let stored = seen.delete_time.unwrap();
    assert_eq!(
        (stored.seconds, stored.nanos / 1000),
        (delete_time.seconds, delete_time.nanos / 1000)
    );
    assert_no_pi(&seen);
    assert_error(
        sign_in(&mut suite, &user.email).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_error(
        identity.get_user(with_token(get(&user.name), &token)).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    assert_error(
        identity
            .export_user_data(with_token(export(&user.name), &token))
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );

    // Deleting again, by the user themself or their admin, returns the same receipt.
    let again = identity
        .delete_user(with_token(delete(&user.name), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, receipt);
    let stale_again = DeleteUserRequest {
        etag: "\"0\"".into(),
        ..delete(&user.name)
    };
    let again = identity
        .delete_user(as_user(stale_again, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.receipt_id, receipt.receipt_id);
    assert_eq!(again, receipt);

    // The address is free again: it registers a new user, not the old one revived.
    let reborn = self_registered(&mut suite, &tenant, 502).await;
    assert_ne!(reborn.name, user.name);
    assert_eq!(reborn.state(), State::Active);
    assert_pi_of(&reborn, 502);
    let token = sign_in(&mut suite, &user.email).await.unwrap();
    assert_eq!(token.user, reborn.name);
}

#[tokio::test]
async fn the_last_tenant_admin_may_still_delete_themself() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000901").await;
    let admin = first_admin(&mut suite, &tenant, 901).await;
    let receipt = suite
        .identity
        .delete_user(as_user(delete(&admin.name), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.user, admin.name);
    // The tenant has no admin now, so the operator may bootstrap one again.
    let request = registration(
        &tenant,
        person(902, &[Role::TenantAdmin]),
        "contracts/PSC-1/signatories/2",
    );
    suite
        .identity
        .register_user(as_operator(request))
        .await
        .unwrap();
}

#[tokio::test]
async fn deletion_fails_closed_while_consent_is_unreachable_and_a_retry_completes_it() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000601").await;
    let admin = first_admin(&mut suite, &tenant, 601).await;
    let user = colleague(&mut suite, &tenant, &admin, 602).await;
    let request = delete(&user.name);

    suite.consent_link.cut();
    let status = assert_error(
        suite
            .identity
            .delete_user(as_user(request.clone(), &user))
            .await,
        Code::Unavailable,
        "DEPENDENCY_UNAVAILABLE",
    );
    assert_eq!(
        tonic_types::StatusExt::get_error_details(&status)
            .error_info()
            .unwrap()
            .metadata
            .get("service")
            .map(String::as_str),
        Some("consent")
    );
    // Nothing was deleted: still active, PI readable, consent not withdrawn.
    let seen = suite
        .identity
        .get_user(as_user(get(&user.name), &user))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.state(), State::Active);
    assert_pi_of(&seen, 602);
    assert_eq!(seen.etag, user.etag);
    let state = suite
        .consent
        .get_consent_state(as_operator(GetConsentStateRequest {
            subject: user.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(state.active && !state.withdrawn);

    suite.consent_link.restore();
    let receipt = suite
        .identity
        .delete_user(as_user(request, &user))
        .await
        .unwrap()
        .into_inner();
    assert!(receipt.data_key_destroyed);
    let seen = suite
        .identity
        .get_user(as_user(get(&user.name), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.state(), State::Deleted);
    assert_no_pi(&seen);
}

#[tokio::test]
async fn a_user_exports_their_data_and_consent_ledger_and_an_auditor_sees_it_without_pi() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000701").await;
    let admin = first_admin(&mut suite, &tenant, 701).await;
    let user = colleague(&mut suite, &tenant, &admin, 702).await;
    let peer = colleague(&mut suite, &tenant, &admin, 703).await;
    let signed_up = self_registered(&mut suite, &tenant, 704).await;
    let consent_keys = suite
        .consent
        .list_signing_keys(as_operator(ConsentKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .signing_keys;
    let identity = &mut suite.identity;

    // The user themself: PI and the ledger, starting with the attested consent of their
    // registration (Art. 5.2).
    let exported = identity
        .export_user_data(as_user(export(&user.name), &user))
        .await
        .unwrap()
        .into_inner();
    let seen = exported.user.as_ref().unwrap();
    assert_eq!(seen.name, user.name);
    assert_pi_of(seen, 702);
    assert!(exported.export_time.is_some());
    let records = &exported.consent_records;
    let bases: Vec<&str> = records.iter().map(|r| r.basis.as_str()).collect();
    assert_eq!(
        bases.first(),
        Some(&"BASIS_CONTRACT_PARTY_ATTESTATION"),
        "{bases:?}"
    );
    for record in records {
        assert!(record.name.starts_with("consentRecords/"), "{record:?}");
        assert_eq!(record.action, "ACTION_GIVEN");
        assert_eq!(record.terms_version, 1);
        assert!(record.record_time.is_some());
        assert!(!record.receipt_payload.is_empty());
        assert!(!record.receipt_signature.is_empty());
        // Each entry's receipt verifies with the consent service's key.
        let key = consent_keys
            .iter()
            .find(|k| k.key_id == record.receipt_key_id)
            .expect("the receipt's key is published");
        let key = VerifyingKey::from_bytes(&key.public_key.clone().try_into().unwrap()).unwrap();
        let signature = Signature::from_slice(&record.receipt_signature).unwrap();
        assert!(key.verify(&record.receipt_payload, &signature).is_ok());
    }
    // Oldest first.
    let times: Vec<(i64, i32)> = records
        .iter()
        .map(|r| r.record_time.map(|t| (t.seconds, t.nanos)).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    // A self-registered user's ledger starts with the consent deemed by use (Art. 5.1).
    let theirs = identity
        .export_user_data(as_user(export(&signed_up.name), &signed_up))
        .await
        .unwrap()
        .into_inner();
    assert_pi_of(theirs.user.as_ref().unwrap(), 704);
    let first = theirs.consent_records.first().unwrap();
    assert_eq!(first.basis, "BASIS_DEEMED_BY_USE");
    assert_eq!(first.action, "ACTION_GIVEN");
    assert!(first.name.starts_with("consentRecords/"));
    // The admin also sees PI; the auditor sees the same ledger without PI.
    let by_admin = identity
        .export_user_data(as_user(export(&user.name), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_pi_of(by_admin.user.as_ref().unwrap(), 702);
    let by_auditor = identity
        .export_user_data(as_auditor(export(&user.name)))
        .await
        .unwrap()
        .into_inner();
    assert_no_pi(by_auditor.user.as_ref().unwrap());
    assert_eq!(by_auditor.consent_records, exported.consent_records);

    // A member may not export a colleague.
    assert_error(
        identity
            .export_user_data(as_user(export(&peer.name), &user))
            .await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );

    // An incomplete export is never returned.
    suite.consent_link.cut();
    assert_error(
        suite
            .identity
            .export_user_data(as_user(export(&user.name), &user))
            .await,
        Code::Unavailable,
        "DEPENDENCY_UNAVAILABLE",
    );
    suite.consent_link.restore();

    // After deletion the auditor still exports, without PI, and the ledger ends in the
    // withdrawal.
    let receipt = suite
        .identity
        .delete_user(as_user(delete(&user.name), &user))
        .await
        .unwrap()
        .into_inner();
    let after = suite
        .identity
        .export_user_data(as_auditor(export(&user.name)))
        .await
        .unwrap()
        .into_inner();
    let seen = after.user.as_ref().unwrap();
    assert_eq!(seen.state(), State::Deleted);
    assert_no_pi(seen);
    let withdrawal = after.consent_records.last().unwrap();
    assert_eq!(withdrawal.action, "ACTION_WITHDRAWN");
    assert_eq!(withdrawal.name, receipt.consent_withdrawal_record);
    assert!(withdrawal.basis.is_empty());
    assert_eq!(after.consent_records.len(), records.len() + 1);
}

#[tokio::test]
async fn the_user_event_feed_tells_each_step_of_a_users_life_by_id_only() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000801").await;
    let admin = first_admin(&mut suite, &tenant, 801).await;
    let user = colleague(&mut suite, &tenant, &admin, 802).await;
    sign_in(&mut suite, &user.email).await.unwrap();
    let change = User {
        name: user.name.clone(),
        phone_number: "+81312349802".into(),
        ..User::default()
    };
    suite
        .identity
        .update_user(as_user(update(change, &["phone_number"]), &user))
        .await
        .unwrap();
    let receipt = suite
        .identity
        .delete_user(as_user(delete(&user.name), &user))
        .await
        .unwrap()
        .into_inner();

    let mut stream = suite
        .identity
        .watch_user_events(as_operator(WatchUserEventsRequest {
            after: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let mut events: Vec<UserEvent> = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = stream.message().await.unwrap().expect("the feed ended");
            let deleted = event.user == user.name && event.r#type() == EventType::Deleted;
            events.push(event);
            if deleted {
                break;
            }
        }
    })
    .await
    .expect("no DELETED event within the deadline");

    // At least once: deduplicate by sequence.
    let mut seen = HashSet::new();
    let theirs: Vec<&UserEvent> = events
        .iter()
        .filter(|e| e.user == user.name && seen.insert(e.sequence))
        .collect();
    let types: Vec<EventType> = theirs.iter().map(|e| e.r#type()).collect();
    assert_eq!(
        types,
        [
            EventType::Registered,
            EventType::Activated,
            EventType::SignedIn,
            EventType::Updated,
            EventType::Deleted,
        ]
    );
    for event in &theirs {
        assert_eq!(event.tenant, tenant.name);
        assert!(event.sequence > 0);
        assert!(!event.cursor.is_empty() && event.cursor.len() <= 256);
        assert!(event.event_time.is_some());
    }
    assert_eq!(
        theirs.last().unwrap().sequence,
        receipt.deletion_event_sequence
    );

    // Ids only: no event, in any field, carries the PI of the user (or of their admin).
    for event in &events {
        let text = format!("{event:?}");
        let bytes = event.encode_to_vec();
        for pi in [
            &user.email,
            &user.display_name,
            &admin.email,
            &admin.display_name,
        ] {
            assert!(!text.contains(pi.as_str()), "{event:?}");
            assert!(!bytes.windows(pi.len()).any(|w| w == pi.as_bytes()));
            let lower = pi.to_lowercase();
            assert!(!text.to_lowercase().contains(&lower), "{event:?}");
        }
        if let Ok(cursor) = URL_SAFE_NO_PAD.decode(&event.cursor) {
            let cursor = String::from_utf8_lossy(&cursor);
            assert!(!cursor.contains(&user.email) && !cursor.contains(&user.display_name));
        }
    }
}

#[tokio::test]
async fn two_admins_demoting_themselves_at_once_leave_the_tenant_one_admin() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000900").await;
    let first = first_admin(&mut suite, &tenant, 900).await;
    let second = colleague(&mut suite, &tenant, &first, 901).await;
    let promote = User {
        name: second.name.clone(),
        roles: vec![Role::TenantAdmin.into()],
        ..User::default()
    };
    let second = suite
        .identity
        .update_user(as_user(update(promote, &["roles"]), &first))
        .await
        .unwrap()
        .into_inner();
    let demote = |admin: &User| {
        let mut identity = suite.identity.clone();
        let me = User {
            name: admin.name.clone(),
            roles: vec![Role::Member.into()],
            ..User::default()
        };
        let request = as_user(update(me, &["roles"]), admin);
        async move { identity.update_user(request).await }
    };
    let (a, b) = tokio::join!(demote(&first), demote(&second));
    let results = [a, b];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let refused = results.into_iter().find_map(Result::err).unwrap();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "LAST_TENANT_ADMIN");
}

#[tokio::test]
async fn a_demoted_admins_token_stops_working_at_once() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000901").await;
    let first = first_admin(&mut suite, &tenant, 902).await;
    let second = colleague(&mut suite, &tenant, &first, 903).await;
    let promote = User {
        name: second.name.clone(),
        roles: vec![Role::TenantAdmin.into(), Role::Member.into()],
        ..User::default()
    };
    let second = suite
        .identity
        .update_user(as_user(update(promote, &["roles"]), &first))
        .await
        .unwrap()
        .into_inner();
    let first_token = sign_in(&mut suite, &first.email).await.unwrap();
    let demote = User {
        name: first.name.clone(),
        roles: vec![Role::Member.into()],
        ..User::default()
    };
    suite
        .identity
        .update_user(as_user(update(demote, &["roles"]), &second))
        .await
        .unwrap();
    // The token still claims TENANT_ADMIN: refused until the user signs in again.
    assert_error(
        suite
            .identity
            .list_users(with_token(list(&tenant, 0, "", false), &first_token))
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    let fresh = sign_in(&mut suite, &first.email).await.unwrap();
    assert_error(
        suite
            .identity
            .list_users(with_token(list(&tenant, 0, "", false), &fresh))
            .await,
        Code::PermissionDenied,
        "CALLER_NOT_ALLOWED",
    );
}

#[tokio::test]
async fn repeating_an_update_changes_nothing_more() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000902").await;
    let user = self_registered(&mut suite, &tenant, 904).await;
    let change = User {
        name: user.name.clone(),
        phone_number: "+81398765432".into(),
        ..User::default()
    };
    let once = suite
        .identity
        .update_user(as_user(update(change.clone(), &[]), &user))
        .await
        .unwrap()
        .into_inner();
    let twice = suite
        .identity
        .update_user(as_user(update(change, &[]), &user))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(once, twice);
    assert_ne!(once.etag, user.etag);
}

#[tokio::test]
async fn not_found_names_the_resource_asked_for() {
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000903").await;
    let missing = format!("{}/users/0190f7a0-0000-7000-8000-0000000000ff", tenant.name);
    let status = assert_error(
        suite.identity.get_user(as_operator(get(&missing))).await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let details = tonic_types::StatusExt::get_error_details(&status);
    let resource = details.resource_info().unwrap();
    assert_eq!(resource.resource_type, "portal.identity.v1.User");
    assert_eq!(resource.resource_name, missing);
}

#[tokio::test]
async fn the_export_says_where_the_users_data_went_and_is_never_incomplete() {
    use portal_proto::transfer::v1::affiliate_transfer_service_client::AffiliateTransferServiceClient;
    use portal_proto::transfer::v1::group_entity::Kind;
    use portal_proto::transfer::v1::{
        AuthorizeTransferRequest, CreateEntityRequest, DataCategory, GroupEntity, Purpose,
    };
    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000904").await;
    let user = self_registered(&mut suite, &tenant, 905).await;
    let mut transfer =
        AffiliateTransferServiceClient::new(suite.transfer_service.channel().await.unwrap());
    let register = |kind: Kind, name: &str, country: &str, region: &str| {
        let request = CreateEntityRequest {
            request_id: String::new(),
            entity: Some(GroupEntity {
                kind: kind.into(),
                legal_name: name.into(),
                country_code: country.into(),
                region: region.into(),
                ..GroupEntity::default()
            }),
        };
        let mut transfer = transfer.clone();
        async move {
            transfer
                .create_entity(as_operator(request))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let operator = register(Kind::Operator, "Example Operator K.K.", "JP", "jp").await;
    let affiliate = register(Kind::Affiliate, "Example Affiliate Ltd.", "GB", "uk").await;
    let third = register(Kind::ThirdParty, "Example Partner Inc.", "US", "us").await;
    let service = portal_testkit::keys::token(
        portal_platform::auth::Kind::Service,
        "services/portal-backend",
        None,
        &[],
    );
    for destination in [&affiliate, &third] {
        let request = AuthorizeTransferRequest {
            request_id: String::new(),
            subject: user.name.clone(),
            data_categories: vec![DataCategory::Email.into()],
            source_entity: operator.name.clone(),
            destination_entity: destination.name.clone(),
            purpose: Purpose::PortalService.into(),
            legal_reference: String::new(),
        };
        transfer
            .authorize_transfer(authorized(request, &service))
            .await
            .unwrap();
    }
    let exported = suite
        .identity
        .export_user_data(as_user(export(&user.name), &user))
        .await
        .unwrap()
        .into_inner();
    // The affiliate received the email (allowed); the third party did not (denied).
    assert_eq!(exported.recipients.len(), 1);
    let recipient = &exported.recipients[0];
    assert_eq!(recipient.entity, affiliate.name);
    assert_eq!(recipient.entity_kind, "KIND_AFFILIATE");
    assert_eq!(recipient.data_categories, ["DATA_CATEGORY_EMAIL"]);
    assert_eq!(recipient.country_code, "GB");
    let decisions: Vec<_> = exported
        .transfer_records
        .iter()
        .map(|r| (r.decision.as_str(), r.destination_entity.as_str()))
        .collect();
    assert_eq!(
        decisions,
        [
            ("DECISION_DENIED", third.name.as_str()),
            ("DECISION_ALLOWED", affiliate.name.as_str())
        ]
    );
    assert_eq!(
        exported.transfer_records[0].denial_reason,
        "DENIAL_REASON_THIRD_PARTY_WITHOUT_CONSENT"
    );
    assert_eq!(
        exported.transfer_records[1].legal_basis,
        "LEGAL_BASIS_INTRA_GROUP_TRANSFER"
    );
    assert!(exported.transfer_records[1].cross_border);
    assert!(!exported.transfer_records_truncated);

    suite.transfer_link.cut();
    let status = suite
        .identity
        .export_user_data(as_user(export(&user.name), &user))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "DEPENDENCY_UNAVAILABLE");
}
