//! The consent service's SQL. Every statement is schema-qualified and runs as `consent_app`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::domain::{DocumentKind, Latest, NewDocument};

/// A published document version as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DocumentRow {
    pub kind: String,
    pub version: i64,
    pub label: String,
    pub uri: String,
    pub content_sha256: String,
    pub announce_time: DateTime<Utc>,
    pub effective_time: DateTime<Utc>,
    pub change_summary: String,
    pub material_change: bool,
    pub publish_time: DateTime<Utc>,
    pub published_by: String,
}

const DOCUMENT_COLUMNS: &str = "kind, version, label, uri, content_sha256, announce_time, \
    effective_time, change_summary, material_change, publish_time, published_by";

/// Serialises publications of one kind, so "greater than the latest" holds under concurrency.
pub async fn lock_kind(conn: &mut PgConnection, kind: DocumentKind) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('consent.documents.' || $1))")
        .bind(kind.segment())
        .execute(conn)
        .await
        .map(|_| ())
}

pub async fn latest(
    conn: &mut PgConnection,
    kind: DocumentKind,
) -> Result<Option<Latest>, sqlx::Error> {
    let row: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT version, effective_time FROM consent.documents \
         WHERE kind = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(kind.segment())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(version, effective_time)| Latest {
        version,
        effective_time,
    }))
}

pub async fn exists(
    conn: &mut PgConnection,
    kind: DocumentKind,
    version: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM consent.documents WHERE kind = $1 AND version = $2)",
    )
    .bind(kind.segment())
    .bind(version)
    .fetch_one(conn)
    .await
}

pub async fn insert(
    conn: &mut PgConnection,
    document: &NewDocument,
    published_by: &str,
) -> Result<DocumentRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO consent.documents (kind, version, label, uri, content_sha256, \
             announce_time, effective_time, change_summary, material_change, publish_time, \
             published_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), $10) \
         RETURNING kind, version, label, uri, content_sha256, announce_time, effective_time, \
             change_summary, material_change, publish_time, published_by",
    )
    .bind(document.kind.segment())
    .bind(document.version)
    .bind(&document.label)
    .bind(&document.uri)
    .bind(&document.content_sha256)
    .bind(document.announce_time)
    .bind(document.effective_time)
    .bind(&document.change_summary)
    .bind(document.material_change)
    .bind(published_by)
    .fetch_one(conn)
    .await
}

/// The version of `kind` in force at `at`: the highest whose effective time has come.
pub async fn in_force(
    pool: &PgPool,
    kind: DocumentKind,
    at: DateTime<Utc>,
) -> Result<Option<DocumentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DOCUMENT_COLUMNS} FROM consent.documents \
         WHERE kind = $1 AND effective_time <= $2 ORDER BY effective_time DESC LIMIT 1"
    )))
    .bind(kind.segment())
    .bind(at)
    .fetch_optional(pool)
    .await
}

/// The next version of `kind` published but not yet in force at `at`.
pub async fn upcoming(
    pool: &PgPool,
    kind: DocumentKind,
    at: DateTime<Utc>,
) -> Result<Option<DocumentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DOCUMENT_COLUMNS} FROM consent.documents \
         WHERE kind = $1 AND effective_time > $2 ORDER BY effective_time ASC LIMIT 1"
    )))
    .bind(kind.segment())
    .bind(at)
    .fetch_optional(pool)
    .await
}

/// Where a page of document versions starts: terms before the privacy policy, then highest
/// version first.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct DocumentPosition {
    pub rank: i32,
    pub version: i64,
}

/// One page of versions (`kind` None: both kinds), after `after`, with one extra row to tell
/// whether another page follows.
pub async fn list(
    pool: &PgPool,
    kind: Option<DocumentKind>,
    after: Option<DocumentPosition>,
    limit: usize,
) -> Result<Vec<DocumentRow>, sqlx::Error> {
    let (rank, version) = after.map_or((-1, i64::MAX), |p| (p.rank, p.version));
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DOCUMENT_COLUMNS} FROM consent.documents \
         WHERE ($1::text IS NULL OR kind = $1) \
           AND (CASE kind WHEN 'terms' THEN 0 ELSE 1 END, -version) > ($2, -$3::bigint) \
         ORDER BY CASE kind WHEN 'terms' THEN 0 ELSE 1 END, version DESC \
         LIMIT $4"
    )))
    .bind(kind.map(DocumentKind::segment))
    .bind(rank)
    .bind(version)
    .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
}

/// The paging position of a row.
pub fn position(row: &DocumentRow) -> DocumentPosition {
    DocumentPosition {
        rank: i32::from(row.kind != "terms"),
        version: row.version,
    }
}
