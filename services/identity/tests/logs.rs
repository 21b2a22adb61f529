//! No PI in logs: every line identity and consent log while a user is registered, activated,
//! signed in, updated and deleted is captured (at debug level, spans included) and searched
//! for the user's name, email and phone number.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use portal_proto::identity::v1::user::Role;
use portal_proto::identity::v1::{DeleteUserRequest, UpdateUserRequest, User};
use tracing_subscriber::fmt::MakeWriter;

/// Collects everything logged in this test binary.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn registration_sign_in_update_and_deletion_log_no_personal_information() {
    let captured = Captured::default();
    // Installed before the services start, so the harness's own subscriber stands aside.
    tracing_subscriber::fmt()
        .with_env_filter("debug,identity_service=trace,consent_service=trace,portal_platform=trace")
        .with_writer(captured.clone())
        .with_ansi(false)
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .init();

    let mut suite = suite().await;
    let tenant = create_tenant(&mut suite.identity, "PSC-2026-000200").await;
    let admin = first_admin(&mut suite, &tenant, 200).await;
    let member = colleague(&mut suite, &tenant, &admin, 201).await;
    suite
        .identity
        .sign_in(as_portal(sign_in_request(&member.email, PASSWORD)))
        .await
        .unwrap();
    // A failed sign-in and a refused registration are logged too.
    let _ = suite
        .identity
        .sign_in(as_portal(sign_in_request(
            &member.email,
            "wrong password here",
        )))
        .await;
    let mut duplicate = registration(&tenant, person(201, &[Role::Member]), &admin.name);
    duplicate.request_id = String::new();
    let _ = suite
        .identity
        .register_user(as_user(duplicate, &admin))
        .await;
    let new_phone = "+81398765432";
    let update = UpdateUserRequest {
        user: Some(User {
            name: member.name.clone(),
            phone_number: new_phone.into(),
            ..User::default()
        }),
        update_mask: None,
    };
    suite
        .identity
        .update_user(as_user(update, &member))
        .await
        .unwrap();
    suite
        .identity
        .delete_user(as_user(
            DeleteUserRequest {
                name: member.name.clone(),
                ..DeleteUserRequest::default()
            },
            &member,
        ))
        .await
        .unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("user registered") && logs.contains("user deleted"));
    assert!(
        logs.contains(&member.name),
        "ids are logged, so the search means something"
    );
    for pi in [
        admin.display_name.as_str(),
        admin.email.as_str(),
        admin.phone_number.as_str(),
        member.display_name.as_str(),
        member.email.as_str(),
        member.phone_number.as_str(),
        new_phone,
        PASSWORD,
    ] {
        assert!(!logs.contains(pi), "the logs contain personal information");
    }
}
