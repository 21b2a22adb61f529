//! Approval's SQL: requests, their transitions, tenant connections and deleted users, in the
//! `approval` schema.

use chrono::{DateTime, Utc};
use portal_platform::ApiError;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::State;

#[derive(Debug, Clone, FromRow)]
pub struct RequestRow {
    pub id: Uuid,
    pub requester_tenant: Uuid,
    pub requester_user: Uuid,
    pub target_tenant: Uuid,
    pub message: String,
    pub requester_display_name: String,
    pub requester_contract_reference: String,
    pub target_display_name: String,
    pub target_contract_reference: String,
    pub state: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    pub decide_time: Option<DateTime<Utc>>,
    pub decided_by: String,
    pub decision_reason: String,
    pub tenant_connection: Option<Uuid>,
    pub revision: i64,
}

impl RequestRow {
    pub fn stored_state(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Pending)
    }

    /// Whether `tenant` is one of the request's two sides.
    pub fn involves(&self, tenant: Uuid) -> bool {
        self.requester_tenant == tenant || self.target_tenant == tenant
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct TransitionRow {
    pub position: i32,
    pub from_state: Option<String>,
    pub to_state: String,
    pub actor: String,
    pub time: DateTime<Utc>,
    pub reason: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct ConnectionRow {
    pub id: Uuid,
    pub tenant_a: Uuid,
    pub tenant_b: Uuid,
    pub approval_request: Uuid,
    pub state: String,
    pub create_time: DateTime<Utc>,
    pub delete_time: Option<DateTime<Utc>>,
    pub deleted_by: String,
    pub revision: i64,
}

impl ConnectionRow {
    pub fn involves(&self, tenant: Uuid) -> bool {
        self.tenant_a == tenant || self.tenant_b == tenant
    }
}

/// Records expiries that have passed for requests between `a` and `b` (so the one-PENDING
/// rule only counts live requests), returning the expired rows.
pub async fn expire_between(
    conn: &mut PgConnection,
    a: Uuid,
    b: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<RequestRow>, sqlx::Error> {
    expire_where(
        conn,
        "state = 'PENDING' AND expire_time <= $1
           AND least(requester_tenant, target_tenant) = least($2::uuid, $3::uuid)
           AND greatest(requester_tenant, target_tenant) = greatest($2::uuid, $3::uuid)",
        now,
        Some((a, b)),
        None,
    )
    .await
}

/// Records up to `limit` passed expiries (the sweeper), returning the expired rows.
pub async fn expire_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<RequestRow>, sqlx::Error> {
    expire_where(
        conn,
        "id IN (SELECT id FROM approval.requests WHERE state = 'PENDING' AND expire_time <= $1
                ORDER BY expire_time LIMIT $4 FOR UPDATE SKIP LOCKED)",
        now,
        None,
        Some(limit),
    )
    .await
}

/// EXPIRED at their expire_time, decided by the suite, with the transition recorded.
async fn expire_where(
    conn: &mut PgConnection,
    condition: &str,
    now: DateTime<Utc>,
    pair: Option<(Uuid, Uuid)>,
    limit: Option<i64>,
) -> Result<Vec<RequestRow>, sqlx::Error> {
    let (a, b) = pair.unzip();
    let rows: Vec<RequestRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE approval.requests SET state = 'EXPIRED', decide_time = expire_time,
             update_time = expire_time, decided_by = '{actor}', decision_reason = '{reason}',
             revision = revision + 1
         WHERE {condition} RETURNING *",
        actor = crate::domain::SUITE_ACTOR,
        reason = crate::domain::REASON_EXPIRED,
    )))
    .bind(now)
    .bind(a)
    .bind(b)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    for row in &rows {
        insert_transition(
            conn,
            row.id,
            1,
            Some(State::Pending),
            State::Expired,
            &row.decided_by,
            row.expire_time,
            &row.decision_reason,
        )
        .await?;
    }
    Ok(rows)
}

/// The PENDING request of `kind` between the two tenants, in either direction, if any.
pub async fn pending_between(
    conn: &mut PgConnection,
    kind: &str,
    a: Uuid,
    b: Uuid,
) -> Result<Option<RequestRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM approval.requests
          WHERE kind = $1 AND state = 'PENDING'
            AND least(requester_tenant, target_tenant) = least($2::uuid, $3::uuid)
            AND greatest(requester_tenant, target_tenant) = greatest($2::uuid, $3::uuid)",
    )
    .bind(kind)
    .bind(a)
    .bind(b)
    .fetch_optional(conn)
    .await
}

/// Serialises everything that concerns one pair of tenants until the transaction ends.
pub async fn lock_pair(conn: &mut PgConnection, a: Uuid, b: Uuid) -> Result<(), sqlx::Error> {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("approval-pair:{low}:{high}"))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn active_connection_between(
    conn: &mut PgConnection,
    a: Uuid,
    b: Uuid,
) -> Result<Option<ConnectionRow>, sqlx::Error> {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    sqlx::query_as(
        "SELECT * FROM approval.connections
          WHERE tenant_a = $1 AND tenant_b = $2 AND state = 'ACTIVE'",
    )
    .bind(low)
    .bind(high)
    .fetch_optional(conn)
    .await
}

pub struct NewRequest<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub requester_tenant: Uuid,
    pub requester_user: Uuid,
    pub target_tenant: Uuid,
    pub message: &'a str,
    pub requester: (&'a str, &'a str),
    pub target: (&'a str, &'a str),
    pub now: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
}

pub async fn insert_request(
    conn: &mut PgConnection,
    new: &NewRequest<'_>,
    actor: &str,
) -> Result<RequestRow, sqlx::Error> {
    let row: RequestRow = sqlx::query_as(
        "INSERT INTO approval.requests
             (id, kind, requester_tenant, requester_user, target_tenant, message,
              requester_display_name, requester_contract_reference, target_display_name,
              target_contract_reference, state, create_time, update_time, expire_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'PENDING', $11, $11, $12)
         RETURNING *",
    )
    .bind(new.id)
    .bind(new.kind)
    .bind(new.requester_tenant)
    .bind(new.requester_user)
    .bind(new.target_tenant)
    .bind(new.message)
    .bind(new.requester.0)
    .bind(new.requester.1)
    .bind(new.target.0)
    .bind(new.target.1)
    .bind(new.now)
    .bind(new.expire_time)
    .fetch_one(&mut *conn)
    .await?;
    insert_transition(conn, row.id, 0, None, State::Pending, actor, new.now, "").await?;
    Ok(row)
}

#[allow(
    clippy::too_many_arguments,
    reason = "one row of the history, column by column"
)]
async fn insert_transition(
    conn: &mut PgConnection,
    request: Uuid,
    position: i32,
    from: Option<State>,
    to: State,
    actor: &str,
    time: DateTime<Utc>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO approval.transitions (request, position, from_state, to_state, actor, time, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(request)
    .bind(position)
    .bind(from.map(State::as_str))
    .bind(to.as_str())
    .bind(actor)
    .bind(time)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn request(
    conn: &mut PgConnection,
    id: Uuid,
    lock: bool,
) -> Result<Option<RequestRow>, sqlx::Error> {
    let sql = if lock {
        "SELECT * FROM approval.requests WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM approval.requests WHERE id = $1"
    };
    sqlx::query_as(sql).bind(id).fetch_optional(conn).await
}

/// Takes a PENDING request to its final `to` state, recording the transition.
pub async fn decide(
    conn: &mut PgConnection,
    id: Uuid,
    to: State,
    actor: &str,
    reason: &str,
    connection: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<RequestRow, sqlx::Error> {
    let row: RequestRow = sqlx::query_as(
        "UPDATE approval.requests SET state = $2, decide_time = $5, update_time = $5,
             decided_by = $3, decision_reason = $4, tenant_connection = $6,
             revision = revision + 1
         WHERE id = $1 AND state = 'PENDING' RETURNING *",
    )
    .bind(id)
    .bind(to.as_str())
    .bind(actor)
    .bind(reason)
    .bind(now)
    .bind(connection)
    .fetch_one(&mut *conn)
    .await?;
    insert_transition(conn, id, 1, Some(State::Pending), to, actor, now, reason).await?;
    Ok(row)
}

/// The PENDING requests `user` sent, locked.
pub async fn pending_sent_by(
    conn: &mut PgConnection,
    user: Uuid,
) -> Result<Vec<RequestRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM approval.requests WHERE requester_user = $1 AND state = 'PENDING'
          ORDER BY id FOR UPDATE",
    )
    .bind(user)
    .fetch_all(conn)
    .await
}

/// Which side of requests a list shows.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Sent,
    Received,
}

/// One page of a tenant's sent or received requests, newest first, after `after`, in the
/// effective states `states` at `now`.
pub async fn list_requests(
    pool: &PgPool,
    side: Side,
    tenant: Uuid,
    states: &[&str],
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<RequestRow>, sqlx::Error> {
    let column = match side {
        Side::Sent => "requester_tenant",
        Side::Received => "target_tenant",
    };
    let (after_time, after_id) = after.unzip();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM approval.requests
          WHERE {column} = $1
            AND (CASE WHEN state = 'PENDING' AND expire_time <= $6 THEN 'EXPIRED' ELSE state END)
                = ANY ($2)
            AND ($3::timestamptz IS NULL OR (create_time, id) < ($3, $4))
          ORDER BY create_time DESC, id DESC LIMIT $5"
    )))
    .bind(tenant)
    .bind(states)
    .bind(after_time)
    .bind(after_id)
    .bind(limit)
    .bind(now)
    .fetch_all(pool)
    .await
}

pub async fn transitions(pool: &PgPool, request: Uuid) -> Result<Vec<TransitionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT position, from_state, to_state, actor, time, reason FROM approval.transitions
          WHERE request = $1 ORDER BY position",
    )
    .bind(request)
    .fetch_all(pool)
    .await
}

pub async fn insert_connection(
    conn: &mut PgConnection,
    id: Uuid,
    a: Uuid,
    b: Uuid,
    request: Uuid,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    let inserted = sqlx::query(
        "INSERT INTO approval.connections (id, tenant_a, tenant_b, approval_request, state, create_time)
         VALUES ($1, $2, $3, $4, 'ACTIVE', $5)",
    )
    .bind(id)
    .bind(low)
    .bind(high)
    .bind(request)
    .bind(now)
    .execute(conn)
    .await;
    match inserted {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(already_connected()),
        other => other.map(|_| ()).map_err(ApiError::from),
    }
}

pub fn already_connected() -> ApiError {
    ApiError::failed_precondition(
        "ALREADY_CONNECTED",
        "the two tenants already have an active connection",
    )
}

pub async fn connection(
    conn: &mut PgConnection,
    id: Uuid,
    lock: bool,
) -> Result<Option<ConnectionRow>, sqlx::Error> {
    let sql = if lock {
        "SELECT * FROM approval.connections WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM approval.connections WHERE id = $1"
    };
    sqlx::query_as(sql).bind(id).fetch_optional(conn).await
}

pub async fn end_connection(
    conn: &mut PgConnection,
    id: Uuid,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<ConnectionRow, sqlx::Error> {
    sqlx::query_as(
        "UPDATE approval.connections SET state = 'DELETED', delete_time = $3, deleted_by = $2,
             revision = revision + 1
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(actor)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// One page of a tenant's connections, newest first.
pub async fn list_connections(
    pool: &PgPool,
    tenant: Uuid,
    show_deleted: bool,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ConnectionRow>, sqlx::Error> {
    let (after_time, after_id) = after.unzip();
    sqlx::query_as(
        "SELECT * FROM approval.connections
          WHERE (tenant_a = $1 OR tenant_b = $1) AND ($2 OR state = 'ACTIVE')
            AND ($3::timestamptz IS NULL OR (create_time, id) < ($3, $4))
          ORDER BY create_time DESC, id DESC LIMIT $5",
    )
    .bind(tenant)
    .bind(show_deleted)
    .bind(after_time)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Serialises a user's sends with the application of their deletion.
pub async fn lock_user(conn: &mut PgConnection, user: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("approval-user:{user}"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether identity reported `user` deleted.
pub async fn is_deleted_user<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    user: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM approval.deleted_users WHERE user_name = $1)")
        .bind(user)
        .fetch_one(executor)
        .await
}

pub async fn record_deleted_user(
    conn: &mut PgConnection,
    user: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO approval.deleted_users (user_name, delete_time) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(user)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
