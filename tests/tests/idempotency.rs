//! AIP-155 through the platform's one idempotency store: a retried request gets the first
//! answer and its change happens once, even when the retries race; the same id with a
//! different request is refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use portal_platform::idempotency::{RequestKey, once};
use portal_proto::identity::v1::{GetTenantRequest, Tenant};
use portal_testkit::TestDb;
use portal_tests::all_schemas;
use sqlx::{AssertSqlSafe, PgPool};
use tonic::Code;

const METHOD: &str = "portal.identity.v1.IdentityService/CreateTenant";

/// The identity service's app-role pool, and a table the work writes to (made by the test as
/// superuser) so that each time the work really runs is visible.
async fn setup(db: &TestDb) -> (PgPool, PgPool) {
    let admin = db.admin_pool().await.unwrap();
    for statement in [
        "CREATE TABLE identity.test_effects (id bigserial PRIMARY KEY, label text NOT NULL)",
        "GRANT SELECT, INSERT ON identity.test_effects TO identity_app",
        "GRANT USAGE ON SEQUENCE identity.test_effects_id_seq TO identity_app",
    ] {
        sqlx::query(statement).execute(&admin).await.unwrap();
    }
    let app = db.app_pool(identity_service::SERVICE.schema).unwrap();
    (app, admin)
}

async fn create(
    pool: &PgPool,
    caller: &str,
    request_id: &str,
    name: &str,
) -> Result<Tenant, tonic::Status> {
    let key = RequestKey {
        caller,
        method: METHOD,
        request_id,
    };
    let request = GetTenantRequest {
        name: name.to_owned(),
    };
    // Unique per run of the work, so a second run would show in the answer.
    let label = format!("{name} #{}", uuid::Uuid::now_v7());
    once(pool, "identity", key, &request, move |tx| {
        Box::pin(async move {
            sqlx::query(AssertSqlSafe(
                "INSERT INTO identity.test_effects (label) VALUES ($1)".to_owned(),
            ))
            .bind(&label)
            .execute(&mut *tx)
            .await?;
            Ok(Tenant {
                display_name: label,
                ..Tenant::default()
            })
        })
    })
    .await
    .map_err(tonic::Status::from)
}

async fn effects(admin: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM identity.test_effects")
        .fetch_one(admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_gets_the_first_answer_and_the_change_happens_once() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let (app, admin) = setup(&db).await;
    let id = "0190f7a0-1111-7000-8000-000000000001";
    let first = create(&app, "operators/a", id, "tenants/x").await.unwrap();
    let retry = create(&app, "operators/a", id, "tenants/x").await.unwrap();
    assert_eq!(first, retry);
    assert_eq!(effects(&admin).await, 1);
}

#[tokio::test]
async fn racing_retries_get_one_answer_and_one_change() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let (app, admin) = setup(&db).await;
    let id = "0190f7a0-1111-7000-8000-000000000002";
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { create(&app, "operators/a", id, "tenants/x").await })
        })
        .collect();
    let mut answers = Vec::new();
    for attempt in attempts {
        answers.push(attempt.await.unwrap().unwrap());
    }
    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "{answers:?}"
    );
    assert_eq!(effects(&admin).await, 1);
}

#[tokio::test]
async fn a_reused_request_id_with_a_different_request_is_invalid_argument() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let (app, admin) = setup(&db).await;
    let id = "0190f7a0-1111-7000-8000-000000000003";
    create(&app, "operators/a", id, "tenants/x").await.unwrap();
    let reused = create(&app, "operators/a", id, "tenants/y")
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument);
    let details = tonic_types::StatusExt::get_error_details(&reused);
    assert_eq!(details.error_info().unwrap().reason, "REQUEST_ID_REUSED");
    assert_eq!(effects(&admin).await, 1);
}

#[tokio::test]
async fn request_ids_are_scoped_to_their_caller() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let (app, admin) = setup(&db).await;
    let id = "0190f7a0-1111-7000-8000-000000000004";
    let mine = create(&app, "operators/a", id, "tenants/x").await.unwrap();
    let theirs = create(&app, "operators/b", id, "tenants/x").await.unwrap();
    assert_ne!(
        mine, theirs,
        "another caller's id does not replay my answer"
    );
    assert_eq!(effects(&admin).await, 2);
}

#[tokio::test]
async fn a_malformed_request_id_is_invalid_argument_and_changes_nothing() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let (app, admin) = setup(&db).await;
    let bad = create(&app, "operators/a", "not-a-uuid", "tenants/x")
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(effects(&admin).await, 0);
}

#[tokio::test]
async fn answers_are_kept_for_a_day_and_then_forgotten() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let (app, admin) = setup(&db).await;
    let old = uuid::Uuid::now_v7().to_string();
    let recent = uuid::Uuid::now_v7().to_string();
    create(&app, "services/a", &old, "tenants/old")
        .await
        .unwrap();
    create(&app, "services/a", &recent, "tenants/recent")
        .await
        .unwrap();
    sqlx::query(
        "UPDATE identity.idempotency SET create_time = now() - interval '25 hours'
          WHERE request_id = $1::uuid",
    )
    .bind(&old)
    .execute(&admin)
    .await
    .unwrap();
    // As the service's own role, as the server's retention task runs it.
    let mut conn = app.acquire().await.unwrap();
    let forgotten = portal_platform::idempotency::forget_expired(&mut conn, "identity", 100)
        .await
        .unwrap();
    assert_eq!(forgotten, 1);
    // The recent answer is still replayed; the old id now counts as a new request.
    let again = create(&app, "services/a", &recent, "tenants/recent")
        .await
        .unwrap();
    assert!(again.display_name.starts_with("tenants/recent"));
    assert_eq!(effects(&admin).await, 2);
    create(&app, "services/a", &old, "tenants/old")
        .await
        .unwrap();
    assert_eq!(effects(&admin).await, 3);
}
