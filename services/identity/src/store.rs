//! Identity's SQL: tenants, users and sign-in failures in the `identity` schema. PI arrives here
//! only sealed (`crypto`); nothing in this module sees it in clear.

use chrono::{DateTime, Utc};
use portal_platform::ApiError;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::NewTenant;

#[derive(Debug, Clone, FromRow)]
pub struct TenantRow {
    pub id: Uuid,
    pub display_name: String,
    pub contract_reference: String,
    pub home_region: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub revision: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub state: String,
    pub channel: String,
    pub roles: Vec<String>,
    pub pi: Option<Vec<u8>>,
    pub data_key: Option<Vec<u8>>,
    pub kek_id: Option<String>,
    pub password_hash: Option<String>,
    pub activation_nonce: Option<Vec<u8>>,
    pub activation_expire_time: Option<DateTime<Utc>>,
    pub attested_by: Option<String>,
    pub attest_time: Option<DateTime<Utc>>,
    pub evidence_uri: Option<String>,
    pub registration_hash: Vec<u8>,
    pub deletion_receipt: Option<Vec<u8>>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub delete_time: Option<DateTime<Utc>>,
    pub revision: i64,
}

const USER_COLUMNS: &str = "id, tenant_id, state, channel, roles, pi, data_key, kek_id, \
    password_hash, activation_nonce, activation_expire_time, attested_by, attest_time, \
    evidence_uri, registration_hash, deletion_receipt, \
    create_time, update_time, delete_time, revision";

fn select_users(condition: &str) -> String {
    format!("SELECT {USER_COLUMNS} FROM identity.users WHERE {condition}")
}

pub async fn insert_tenant(
    conn: &mut PgConnection,
    id: Uuid,
    tenant: &NewTenant,
    now: DateTime<Utc>,
) -> Result<TenantRow, ApiError> {
    let inserted = sqlx::query_as::<_, TenantRow>(
        "INSERT INTO identity.tenants
             (id, display_name, contract_reference, home_region, create_time, update_time)
         VALUES ($1, $2, $3, $4, $5, $5)
         ON CONFLICT (contract_reference) DO NOTHING
         RETURNING *",
    )
    .bind(id)
    .bind(&tenant.display_name)
    .bind(&tenant.contract_reference)
    .bind(&tenant.home_region)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    inserted.ok_or_else(|| {
        ApiError::already_exists(
            "CONTRACT_REFERENCE_EXISTS",
            "a tenant with this contract reference exists",
        )
    })
}

pub async fn tenant(conn: &mut PgConnection, id: Uuid) -> Result<Option<TenantRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM identity.tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Whether the tenant has a TENANT_ADMIN in one of `states`, other than `except`.
pub async fn has_admin(
    conn: &mut PgConnection,
    tenant: Uuid,
    except: Option<Uuid>,
    states: &[&str],
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM identity.users
          WHERE tenant_id = $1 AND 'TENANT_ADMIN' = ANY (roles) AND state = ANY ($3)
            AND id IS DISTINCT FROM $2)",
    )
    .bind(tenant)
    .bind(except)
    .bind(states)
    .fetch_one(conn)
    .await
}

/// Serialises everything that concerns one email hash (registration, email change) until the
/// transaction ends, including registrations of an email nobody has yet.
pub async fn lock_email(conn: &mut PgConnection, email_hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(('x' || encode(substring($1 from 1 for 8), 'hex'))::bit(64)::bigint)")
        .bind(email_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// Serialises registrations in one tenant (the operator's first-admin bootstrap).
pub async fn lock_tenant(conn: &mut PgConnection, tenant: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT id FROM identity.tenants WHERE id = $1 FOR UPDATE")
        .bind(tenant)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn user_by_email(
    conn: &mut PgConnection,
    email_hash: &[u8],
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(select_users("email_hash = $1")))
        .bind(email_hash)
        .fetch_optional(conn)
        .await
}

pub async fn user_by_registration(
    conn: &mut PgConnection,
    registration_key: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(select_users("registration_key = $1")))
        .bind(registration_key)
        .fetch_optional(conn)
        .await
}

pub async fn user_by_activation(
    conn: &mut PgConnection,
    secret_hash: &[u8],
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(
        select_users("activation_secret_hash = $1") + " FOR UPDATE",
    ))
    .bind(secret_hash)
    .fetch_optional(conn)
    .await
}

/// The user `id` of `tenant`, locked for update when `lock`.
pub async fn user(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    lock: bool,
) -> Result<Option<UserRow>, sqlx::Error> {
    let mut sql = select_users("tenant_id = $1 AND id = $2 AND state <> 'REGISTERING'");
    if lock {
        sql.push_str(" FOR UPDATE");
    }
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// One page of a tenant's users, oldest first, after `after` (create time, id).
pub async fn list_users(
    pool: &PgPool,
    tenant: Uuid,
    show_deleted: bool,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: usize,
) -> Result<Vec<UserRow>, sqlx::Error> {
    let (after_time, after_id) = after.unzip();
    sqlx::query_as(sqlx::AssertSqlSafe(
        select_users(
            "tenant_id = $1 AND state <> 'REGISTERING' AND ($2 OR state <> 'DELETED')
               AND ($3::timestamptz IS NULL OR (create_time, id) > ($3, $4))",
        ) + " ORDER BY create_time, id LIMIT $5",
    ))
    .bind(tenant)
    .bind(show_deleted)
    .bind(after_time)
    .bind(after_id)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
}

/// A user row on its way in: sealed PI, never clear text.
pub struct NewUser<'a> {
    pub id: Uuid,
    pub tenant: Uuid,
    pub channel: &'a str,
    pub roles: &'a [String],
    pub pi: &'a [u8],
    pub data_key: &'a [u8],
    pub kek_id: &'a str,
    pub email_hash: &'a [u8],
    pub password_hash: Option<&'a str>,
    pub attested_by: Option<&'a str>,
    pub attest_time: Option<DateTime<Utc>>,
    pub evidence_uri: Option<&'a str>,
    pub registration_key: &'a str,
    pub registration_hash: &'a [u8],
}

/// Inserts a REGISTERING user, or, when `take_over` names an unfinished registration of the
/// same email, gives that row to this registration (keeping its id, so a consent already
/// recorded for it still names the right user).
pub async fn begin_registration(
    conn: &mut PgConnection,
    user: &NewUser<'_>,
    take_over: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<Uuid, sqlx::Error> {
    let sql = if take_over.is_some() {
        "UPDATE identity.users SET tenant_id = $2, channel = $3, roles = $4, pi = $5,
             data_key = $6, kek_id = $7, email_hash = $8, password_hash = $9, attested_by = $10,
             attest_time = $11, evidence_uri = $12, registration_key = $13,
             registration_hash = $14, create_time = $15, update_time = $15
         WHERE id = $1 AND state = 'REGISTERING' RETURNING id"
    } else {
        "INSERT INTO identity.users
             (id, tenant_id, state, channel, roles, pi, data_key, kek_id, email_hash,
              password_hash, attested_by, attest_time, evidence_uri, registration_key,
              registration_hash, create_time, update_time)
         VALUES ($1, $2, 'REGISTERING', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                 $15, $15)
         RETURNING id"
    };
    sqlx::query_scalar(sql)
        .bind(take_over.unwrap_or(user.id))
        .bind(user.tenant)
        .bind(user.channel)
        .bind(user.roles)
        .bind(user.pi)
        .bind(user.data_key)
        .bind(user.kek_id)
        .bind(user.email_hash)
        .bind(user.password_hash)
        .bind(user.attested_by)
        .bind(user.attest_time)
        .bind(user.evidence_uri)
        .bind(user.registration_key)
        .bind(user.registration_hash)
        .bind(now)
        .fetch_one(conn)
        .await
}

/// Registrations that never completed within a day hold sealed PI of nobody: erased.
pub async fn forget_abandoned_registrations(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM identity.users
          WHERE state = 'REGISTERING' AND create_time < $1 - interval '1 day'",
    )
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Erases a registration that cannot complete (consent refused it for good).
pub async fn abandon_registration(
    conn: &mut PgConnection,
    id: Uuid,
    registration_key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM identity.users
          WHERE id = $1 AND registration_key = $2 AND state = 'REGISTERING'",
    )
    .bind(id)
    .bind(registration_key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Completes registration `registration_key` once its consent is recorded: the user becomes
/// `state`. `None` if another registration took the row over meanwhile.
#[allow(clippy::too_many_arguments, reason = "one UPDATE, its values")]
pub async fn complete_registration(
    conn: &mut PgConnection,
    id: Uuid,
    registration_key: &str,
    state: &str,
    consent_record: &str,
    activation: Option<(&[u8], &[u8], DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Result<Option<UserRow>, sqlx::Error> {
    let (hash, nonce, expire) = match activation {
        Some((hash, nonce, expire)) => (Some(hash), Some(nonce), Some(expire)),
        None => (None, None, None),
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE identity.users SET state = $3, consent_record = $4,
             activation_secret_hash = $5, activation_nonce = $6, activation_expire_time = $7,
             create_time = $8, update_time = $8
         WHERE id = $1 AND registration_key = $2 AND state = 'REGISTERING'
         RETURNING {USER_COLUMNS}"
    )))
    .bind(id)
    .bind(registration_key)
    .bind(state)
    .bind(consent_record)
    .bind(hash)
    .bind(nonce)
    .bind(expire)
    .bind(now)
    .fetch_optional(conn)
    .await
}

pub async fn activate(
    conn: &mut PgConnection,
    id: Uuid,
    password_hash: &str,
    now: DateTime<Utc>,
) -> Result<UserRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE identity.users SET state = 'ACTIVE', password_hash = $2, activation_nonce = NULL,
             update_time = $3, revision = revision + 1
         WHERE id = $1 RETURNING {USER_COLUMNS}"
    )))
    .bind(id)
    .bind(password_hash)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// Stores an update: new sealed PI and lookup hash, and/or new roles.
pub async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    pi: &[u8],
    email_hash: &[u8],
    roles: &[String],
    now: DateTime<Utc>,
) -> Result<UserRow, ApiError> {
    let updated = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE identity.users SET pi = $2, email_hash = $3, roles = $4, update_time = $5,
             revision = revision + 1
         WHERE id = $1 RETURNING {USER_COLUMNS}"
    )))
    .bind(id)
    .bind(pi)
    .bind(email_hash)
    .bind(roles)
    .bind(now)
    .fetch_one(conn)
    .await;
    match updated {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(email_taken()),
        other => Ok(other?),
    }
}

pub fn email_taken() -> ApiError {
    ApiError::already_exists(
        "EMAIL_ALREADY_REGISTERED",
        "a user with this email address exists in this deployment",
    )
}

/// Crypto-shreds the user: the data key, the sealed PI, the lookup hash and the credentials
/// go; the tombstone keeps ids, roles, channel, times and the receipt.
pub async fn erase(
    conn: &mut PgConnection,
    id: Uuid,
    receipt: &[u8],
    now: DateTime<Utc>,
) -> Result<UserRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE identity.users SET state = 'DELETED', pi = NULL, data_key = NULL, kek_id = NULL,
             email_hash = NULL, password_hash = NULL, activation_secret_hash = NULL,
             activation_nonce = NULL, deletion_receipt = $2, delete_time = $3,
             update_time = $3, revision = revision + 1
         WHERE id = $1 RETURNING {USER_COLUMNS}"
    )))
    .bind(id)
    .bind(receipt)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// Until when sign-in for this email hash is locked, if it is.
pub async fn locked_until(
    pool: &PgPool,
    email_hash: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT locked_until FROM identity.sign_in_failures
          WHERE email_hash = $1 AND locked_until > $2",
    )
    .bind(email_hash)
    .bind(now)
    .fetch_optional(pool)
    .await
    .map(Option::flatten)
}

/// Counts a failed sign-in; the `max_failures`-th in a row locks the email until `lock_until`.
pub async fn record_failure(
    pool: &PgPool,
    email_hash: &[u8],
    max_failures: i32,
    now: DateTime<Utc>,
    lock_until: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO identity.sign_in_failures AS f (email_hash, failures, last_failure)
         VALUES ($1, 1, $2)
         ON CONFLICT (email_hash) DO UPDATE SET
             failures = CASE WHEN f.locked_until IS NOT NULL AND f.locked_until <= $2
                             THEN 1 ELSE f.failures + 1 END,
             locked_until = CASE WHEN f.locked_until IS NOT NULL AND f.locked_until <= $2
                                 THEN NULL ELSE f.locked_until END,
             last_failure = $2",
    )
    .bind(email_hash)
    .bind(now)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE identity.sign_in_failures SET locked_until = $3
          WHERE email_hash = $1 AND failures >= $2 AND locked_until IS NULL",
    )
    .bind(email_hash)
    .bind(max_failures)
    .bind(lock_until)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn clear_failures(pool: &PgPool, email_hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM identity.sign_in_failures WHERE email_hash = $1")
        .bind(email_hash)
        .execute(pool)
        .await?;
    Ok(())
}
