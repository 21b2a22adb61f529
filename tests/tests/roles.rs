//! SPEC.md, Security: each service's app role reads and writes its own schema's data and
//! nothing else, and cannot change any schema's structure.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use portal_testkit::TestDb;
use portal_tests::all_schemas;
use sqlx::{AssertSqlSafe, PgPool};

/// Runs `statement` as `role` and returns the SQLSTATE it failed with, if it failed.
async fn sqlstate_as(pool: &PgPool, role: &str, statement: &str) -> Option<String> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!("SET LOCAL ROLE {role}")))
        .execute(&mut *tx)
        .await
        .unwrap();
    let result = sqlx::query(AssertSqlSafe(statement.to_owned()))
        .execute(&mut *tx)
        .await;
    tx.rollback().await.unwrap();
    match result {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

const INSUFFICIENT_PRIVILEGE: Option<&str> = Some("42501");

#[tokio::test]
async fn an_app_role_reads_its_own_schema_and_no_other() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let pool = db.admin_pool().await.unwrap();
    for own in all_schemas() {
        let role = own.app_role();
        let read_own = format!("SELECT count(*) FROM {}._sqlx_migrations", own.name);
        assert_eq!(
            sqlstate_as(&pool, &role, &read_own).await,
            None,
            "{role} on its own schema"
        );
        for other in all_schemas().iter().filter(|s| s.name != own.name) {
            let read_other = format!("SELECT count(*) FROM {}._sqlx_migrations", other.name);
            assert_eq!(
                sqlstate_as(&pool, &role, &read_other).await.as_deref(),
                INSUFFICIENT_PRIVILEGE,
                "{role} must not read schema {}",
                other.name
            );
        }
    }
}

#[tokio::test]
async fn an_app_role_cannot_change_any_schema() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let pool = db.admin_pool().await.unwrap();
    for schema in all_schemas() {
        let role = schema.app_role();
        let s = schema.name;
        for ddl in [
            format!("CREATE TABLE {s}.intruder (id int)"),
            format!("DROP TABLE {s}._sqlx_migrations"),
            format!("ALTER TABLE {s}._sqlx_migrations ADD COLUMN intruder int"),
            format!("TRUNCATE {s}._sqlx_migrations"),
            format!("CREATE SCHEMA intruder_{s}"),
            "CREATE TABLE public.intruder (id int)".to_owned(),
            "CREATE TEMP TABLE intruder (id int)".to_owned(),
            "CREATE FUNCTION pg_temp.intruder() RETURNS int AS 'SELECT 1' LANGUAGE sql".to_owned(),
        ] {
            assert_eq!(
                sqlstate_as(&pool, &role, &ddl).await.as_deref(),
                INSUFFICIENT_PRIVILEGE,
                "{role} must not run: {ddl}"
            );
        }
    }
}

#[tokio::test]
async fn concurrent_start_ups_bootstrap_and_migrate_each_schema_once() {
    // A database with no schemas at all: two start-ups per service race to bootstrap and migrate
    // it. (The roles usually exist already, being cluster-wide; `docs/platform.md` says how
    // their creation tolerates the race.)
    let db = TestDb::new(&[]).await.unwrap();
    let db = std::sync::Arc::new(db);
    let mut racers = Vec::new();
    for schema in all_schemas().into_iter().chain(all_schemas()) {
        let db = std::sync::Arc::clone(&db);
        racers.push(tokio::spawn(async move { db.migrate(schema).await }));
    }
    for racer in racers {
        racer.await.unwrap().unwrap();
    }
    let pool = db.admin_pool().await.unwrap();
    for schema in all_schemas() {
        let owner: String = sqlx::query_scalar(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1",
        )
        .bind(schema.name)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(owner, schema.owner_role());
    }
}
