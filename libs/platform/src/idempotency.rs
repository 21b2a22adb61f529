//! Idempotent requests (AIP-155): the first answer to a `request_id` is stored in the same
//! transaction as the change it made, so a retry gets that answer back and the change happens
//! once. The same id with a different request is `INVALID_ARGUMENT`, `REQUEST_ID_REUSED`.
//! Ids are scoped to the caller and the method: one caller cannot replay another's answer.

use std::future::Future;
use std::pin::Pin;

use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::db::PlatformTable;
use crate::error::ApiError;

/// The request-record table.
pub(crate) const TABLES: &[PlatformTable] = &[PlatformTable {
    version: 2000,
    description: "idempotency records",
    sql: "CREATE TABLE {schema}.idempotency (
              caller       text        NOT NULL,
              method       text        NOT NULL,
              request_id   uuid        NOT NULL,
              request_hash bytea       NOT NULL,
              response     bytea,
              create_time  timestamptz NOT NULL DEFAULT now(),
              PRIMARY KEY (caller, method, request_id)
          );
          CREATE INDEX idempotency_create_time ON {schema}.idempotency (create_time);
          GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.idempotency TO {app};",
}];

/// Who asks, which method, and the id they chose.
#[derive(Debug, Clone)]
pub struct RequestKey<'a> {
    /// The caller's subject (`auth::Caller::subject`).
    pub caller: &'a str,
    /// The full gRPC method, e.g. `portal.consent.v1.ConsentService/RecordConsent`.
    pub method: &'a str,
    /// The request's `request_id` as sent; empty means the caller wants no idempotency.
    pub request_id: &'a str,
}

/// Work that runs inside the request's transaction.
pub type Work<'c, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'c>>;

/// `schema` is the service's own (a compile-time name: it is spliced into the SQL).
/// Runs `work` at most once per request id: in one transaction it claims the id, does the
/// work and stores the answer; a retry of the same request returns the stored answer without
/// running `work` again.
pub async fn once<Req, Resp, F>(
    pool: &PgPool,
    schema: &'static str,
    key: RequestKey<'_>,
    request: &Req,
    work: F,
) -> Result<Resp, ApiError>
where
    Req: Message,
    Resp: Message + Default,
    F: for<'c> FnOnce(&'c mut PgConnection) -> Work<'c, Resp>,
{
    let mut tx = pool.begin().await?;
    let request_id = match claim_in::<Req, Resp>(&mut tx, schema, &key, request).await? {
        Claim::Answered(answer) => return Ok(answer),
        Claim::Claimed(request_id) => request_id,
    };
    let response = work(&mut tx).await?;
    if let Some(request_id) = request_id {
        store_answer(&mut tx, schema, &key, request_id, &response).await?;
    }
    tx.commit().await?;
    Ok(response)
}

/// What [`claim_in`] found.
#[derive(Debug)]
pub enum Claim<Resp> {
    /// The request was answered before: the stored answer.
    Answered(Resp),
    /// The id is this transaction's now (or `None`: no `request_id`, no idempotency); do the
    /// work and [`store_answer`] in the same transaction.
    Claimed(Option<uuid::Uuid>),
}

/// [`once`]'s first step inside a transaction the caller runs (for work that handles several
/// requests in one transaction, as group commit does).
pub async fn claim_in<Req, Resp>(
    tx: &mut PgConnection,
    schema: &'static str,
    key: &RequestKey<'_>,
    request: &Req,
) -> Result<Claim<Resp>, ApiError>
where
    Req: Message,
    Resp: Message + Default,
{
    // A malformed id is the caller's mistake whatever the database's state.
    let Some(request_id) = parse_request_id(key.request_id)? else {
        return Ok(Claim::Claimed(None));
    };
    let hash = Sha256::digest(request.encode_to_vec()).to_vec();
    match claim(tx, schema, key, request_id, &hash).await? {
        Some(answer) => Resp::decode(answer.as_slice())
            .map(Claim::Answered)
            .map_err(|e| ApiError::internal(format_args!("stored answer: {e}"))),
        None => Ok(Claim::Claimed(Some(request_id))),
    }
}

/// [`once`]'s last step: stores the answer to a claimed request in the same transaction.
pub async fn store_answer<Resp: Message>(
    tx: &mut PgConnection,
    schema: &'static str,
    key: &RequestKey<'_>,
    request_id: uuid::Uuid,
    response: &Resp,
) -> Result<(), ApiError> {
    let store = format!(
        "UPDATE {schema}.idempotency SET response = $4 \
         WHERE caller = $1 AND method = $2 AND request_id = $3"
    );
    sqlx::query(AssertSqlSafe(store))
        .bind(key.caller)
        .bind(key.method)
        .bind(request_id)
        .bind(response.encode_to_vec())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// How long a stored answer is kept (the contracts promise 24 hours).
pub const RETENTION_HOURS: i32 = 24;

/// Forgets up to `batch` stored answers older than [`RETENTION_HOURS`]; returns how many. Run
/// by the server's retention task (`server::serve`), one replica at a time.
pub async fn forget_expired(
    conn: &mut PgConnection,
    schema: &str,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let delete = format!(
        "DELETE FROM {schema}.idempotency WHERE ctid IN (
             SELECT ctid FROM {schema}.idempotency
              WHERE create_time < now() - make_interval(hours => $1)
              LIMIT $2)"
    );
    let done = sqlx::query(AssertSqlSafe(delete))
        .bind(RETENTION_HOURS)
        .bind(batch)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// The answer already stored for this request, if any, without claiming the id: lets a
/// handler that must call another service before [`once`] skip that call on a retry (and so
/// answer a retry even while that service is down). The same id with a different request is
/// `REQUEST_ID_REUSED`, as in [`once`].
pub async fn replay<Req, Resp>(
    pool: &PgPool,
    schema: &'static str,
    key: &RequestKey<'_>,
    request: &Req,
) -> Result<Option<Resp>, ApiError>
where
    Req: Message,
    Resp: Message + Default,
{
    let Some(request_id) = parse_request_id(key.request_id)? else {
        return Ok(None);
    };
    let select = format!(
        "SELECT request_hash, response FROM {schema}.idempotency \
         WHERE caller = $1 AND method = $2 AND request_id = $3"
    );
    let stored: Option<(Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(AssertSqlSafe(select))
        .bind(key.caller)
        .bind(key.method)
        .bind(request_id)
        .fetch_optional(pool)
        .await?;
    let Some((stored_hash, response)) = stored else {
        return Ok(None);
    };
    if stored_hash != Sha256::digest(request.encode_to_vec()).to_vec() {
        return Err(reused());
    }
    response
        .map(|answer| {
            Resp::decode(answer.as_slice())
                .map_err(|e| ApiError::internal(format_args!("stored answer: {e}")))
        })
        .transpose()
}

fn reused() -> ApiError {
    ApiError::invalid_argument(
        "REQUEST_ID_REUSED",
        "this request_id was used for a different request",
    )
    .violation("request_id", "already used for a different request")
}

/// A `request_id` as sent: empty (no idempotency wanted) or a UUID.
pub fn parse_request_id(text: &str) -> Result<Option<uuid::Uuid>, ApiError> {
    if text.is_empty() {
        return Ok(None);
    }
    uuid::Uuid::parse_str(text).map(Some).map_err(|_| {
        ApiError::invalid_argument("INVALID_REQUEST", "request_id must be a UUID")
            .violation("request_id", "must be a UUID")
    })
}

/// Claims the id for this transaction, or returns the answer already stored for it. A
/// concurrent first attempt holds the row until it commits or rolls back, so the claim waits
/// for it and then either replays its answer or takes over.
async fn claim(
    tx: &mut PgConnection,
    schema: &'static str,
    key: &RequestKey<'_>,
    request_id: uuid::Uuid,
    hash: &[u8],
) -> Result<Option<Vec<u8>>, ApiError> {
    let insert = format!(
        "INSERT INTO {schema}.idempotency (caller, method, request_id, request_hash) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
    );
    let inserted = sqlx::query(AssertSqlSafe(insert))
        .bind(key.caller)
        .bind(key.method)
        .bind(request_id)
        .bind(hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if inserted == 1 {
        return Ok(None);
    }
    let select = format!(
        "SELECT request_hash, response FROM {schema}.idempotency \
         WHERE caller = $1 AND method = $2 AND request_id = $3"
    );
    let (stored_hash, response): (Vec<u8>, Option<Vec<u8>>) = sqlx::query_as(AssertSqlSafe(select))
        .bind(key.caller)
        .bind(key.method)
        .bind(request_id)
        .fetch_one(&mut *tx)
        .await?;
    if stored_hash != hash {
        return Err(reused());
    }
    response
        .map(Some)
        .ok_or_else(|| ApiError::internal("an idempotency record committed without its answer"))
}
