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
pub async fn in_force<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    kind: DocumentKind,
    at: DateTime<Utc>,
) -> Result<Option<DocumentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DOCUMENT_COLUMNS} FROM consent.documents \
         WHERE kind = $1 AND effective_time <= $2 ORDER BY effective_time DESC LIMIT 1"
    )))
    .bind(kind.segment())
    .bind(at)
    .fetch_optional(executor)
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

/// A subject's current consent, as maintained beside the ledger.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StateRow {
    pub subject: String,
    pub tenant: String,
    pub active: bool,
    pub consented_terms_version: i64,
    pub withdrawn: bool,
    pub withdraw_time: Option<DateTime<Utc>>,
    pub withdraw_record: Option<uuid::Uuid>,
    pub last_sequence: i64,
}

const STATE_COLUMNS: &str = "subject, tenant, active, consented_terms_version, \
    withdrawn, withdraw_time, withdraw_record, last_sequence";

/// The subject's state row, created if missing and locked until the transaction ends: every
/// entry of one subject is written one after the other.
pub async fn lock_subject(
    conn: &mut PgConnection,
    subject: &str,
    tenant: &str,
) -> Result<StateRow, sqlx::Error> {
    sqlx::query(
        "INSERT INTO consent.subject_state (subject, tenant) VALUES ($1, $2) \
         ON CONFLICT (subject) DO NOTHING",
    )
    .bind(subject)
    .bind(tenant)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {STATE_COLUMNS} FROM consent.subject_state WHERE subject = $1 FOR UPDATE"
    )))
    .bind(subject)
    .fetch_one(conn)
    .await
}

pub async fn state(pool: &PgPool, subject: &str) -> Result<Option<StateRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {STATE_COLUMNS} FROM consent.subject_state WHERE subject = $1 AND last_sequence > 0"
    )))
    .bind(subject)
    .fetch_optional(pool)
    .await
}

/// Whether any terms version after `after`, up to the one in force, changed materially.
pub async fn material_change_since(pool: &PgPool, after: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM consent.documents WHERE kind = 'terms' AND version > $1 \
         AND effective_time <= now() AND material_change)",
    )
    .bind(after)
    .fetch_one(pool)
    .await
}

/// The next ledger position, taken before the entry is signed so the signature covers it.
pub async fn next_sequence(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT nextval('consent.ledger_sequence')")
        .fetch_one(conn)
        .await
}

/// One ledger entry as stored: the signed record's bytes and their signature.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EntryRow {
    pub sequence: i64,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
    pub key_id: String,
    pub iso27560: Vec<u8>,
    pub iso27560_signature: Vec<u8>,
}

const ENTRY_COLUMNS: &str = "sequence, payload, signature, key_id, iso27560, iso27560_signature";

/// What a new entry is indexed by, besides its signed bytes.
#[derive(Debug)]
pub struct NewEntry<'a> {
    pub sequence: i64,
    pub id: uuid::Uuid,
    pub subject: &'a str,
    pub action: &'a str,
    pub basis: &'a str,
    pub terms_version: i64,
    pub recipient_entity: &'a str,
    pub record_time: DateTime<Utc>,
    pub payload: &'a [u8],
    pub signature: &'a [u8],
    pub key_id: &'a str,
    pub iso27560: &'a [u8],
    pub iso27560_signature: &'a [u8],
}

pub async fn append(conn: &mut PgConnection, entry: &NewEntry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consent.ledger (sequence, id, subject, action, basis, terms_version, \
             recipient_entity, record_time, payload, signature, key_id, iso27560, \
             iso27560_signature) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(entry.sequence)
    .bind(entry.id)
    .bind(entry.subject)
    .bind(entry.action)
    .bind(entry.basis)
    .bind(entry.terms_version)
    .bind(entry.recipient_entity)
    .bind(entry.record_time)
    .bind(entry.payload)
    .bind(entry.signature)
    .bind(entry.key_id)
    .bind(entry.iso27560)
    .bind(entry.iso27560_signature)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn entry_by_id(
    conn: &mut PgConnection,
    id: uuid::Uuid,
) -> Result<Option<EntryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM consent.ledger WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// After an Art. 5.1 consent: the subject's consent is active under `terms_version`.
pub async fn record_given_5_1(
    conn: &mut PgConnection,
    subject: &str,
    terms_version: i64,
    record: uuid::Uuid,
    sequence: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE consent.subject_state SET active = true, \
             consented_terms_version = GREATEST(consented_terms_version, $2), \
             basis_record = $3, last_sequence = $4 WHERE subject = $1",
    )
    .bind(subject)
    .bind(terms_version)
    .bind(record)
    .bind(sequence)
    .execute(conn)
    .await
    .map(|_| ())
}

/// After an explicit consent: it is in force for its recipient (again, if it was withdrawn).
pub async fn record_given_explicit(
    conn: &mut PgConnection,
    subject: &str,
    recipient: &str,
    record: uuid::Uuid,
    record_time: DateTime<Utc>,
    terms_version: i64,
    sequence: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consent.explicit_consents \
             (subject, recipient_entity, record, record_time, terms_version) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (subject, recipient_entity) DO UPDATE SET record = $3, record_time = $4, \
             terms_version = $5, withdrawal_record = NULL",
    )
    .bind(subject)
    .bind(recipient)
    .bind(record)
    .bind(record_time)
    .bind(terms_version)
    .execute(&mut *conn)
    .await?;
    set_last_sequence(conn, subject, sequence).await
}

/// After an explicit withdrawal: the consent for `recipient` is no longer in force.
pub async fn record_withdrawn_explicit(
    conn: &mut PgConnection,
    subject: &str,
    recipient: &str,
    withdrawal: uuid::Uuid,
    sequence: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE consent.explicit_consents SET withdrawal_record = $3 \
         WHERE subject = $1 AND recipient_entity = $2",
    )
    .bind(subject)
    .bind(recipient)
    .bind(withdrawal)
    .execute(&mut *conn)
    .await?;
    set_last_sequence(conn, subject, sequence).await
}

/// After a full withdrawal (Art. 5.3): nothing is in force, and nothing can be again.
pub async fn record_full_withdrawal(
    conn: &mut PgConnection,
    subject: &str,
    withdrawal: uuid::Uuid,
    time: DateTime<Utc>,
    sequence: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE consent.explicit_consents SET withdrawal_record = $2 \
         WHERE subject = $1 AND withdrawal_record IS NULL",
    )
    .bind(subject)
    .bind(withdrawal)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE consent.subject_state SET active = false, withdrawn = true, withdraw_time = $2, \
             withdraw_record = $3, last_sequence = $4 WHERE subject = $1",
    )
    .bind(subject)
    .bind(time)
    .bind(withdrawal)
    .bind(sequence)
    .execute(conn)
    .await
    .map(|_| ())
}

async fn set_last_sequence(
    conn: &mut PgConnection,
    subject: &str,
    sequence: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE consent.subject_state SET last_sequence = $2 WHERE subject = $1")
        .bind(subject)
        .bind(sequence)
        .execute(conn)
        .await
        .map(|_| ())
}

/// The explicit consent in force for `recipient`, if any.
/// The latest entry giving consent on `basis` under terms `version`, if any: Art. 5.1 consent
/// is recorded once per subject, terms version and basis.
pub async fn given_under_terms(
    conn: &mut PgConnection,
    subject: &str,
    version: i64,
    basis: &str,
) -> Result<Option<uuid::Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM consent.ledger
          WHERE subject = $1 AND terms_version = $2 AND action = 'given' AND basis = $3
          ORDER BY sequence DESC LIMIT 1",
    )
    .bind(subject)
    .bind(version)
    .bind(basis)
    .fetch_optional(conn)
    .await
}

pub async fn explicit_consent(
    conn: &mut PgConnection,
    subject: &str,
    recipient: &str,
) -> Result<Option<uuid::Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT record FROM consent.explicit_consents \
         WHERE subject = $1 AND recipient_entity = $2 AND withdrawal_record IS NULL",
    )
    .bind(subject)
    .bind(recipient)
    .fetch_optional(conn)
    .await
}

/// The explicit consents in force, oldest first.
pub async fn explicit_consents(
    pool: &PgPool,
    subject: &str,
) -> Result<Vec<(String, uuid::Uuid, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT recipient_entity, record, record_time FROM consent.explicit_consents \
         WHERE subject = $1 AND withdrawal_record IS NULL ORDER BY record_time, recipient_entity",
    )
    .bind(subject)
    .fetch_all(pool)
    .await
}

/// The terms version named by a ledger entry.
pub async fn entry_terms_version(pool: &PgPool, id: uuid::Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT terms_version FROM consent.ledger WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map(Option::unwrap_or_default)
}

/// One page of ledger entries (of `subject`, or all), oldest first, after `after`, with one
/// extra row to tell whether another page follows.
pub async fn entries(
    pool: &PgPool,
    subject: Option<&str>,
    after: i64,
    limit: usize,
) -> Result<Vec<EntryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM consent.ledger \
         WHERE ($1::text IS NULL OR subject = $1) AND sequence > $2 \
         ORDER BY sequence LIMIT $3"
    )))
    .bind(subject)
    .bind(after)
    .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
}

/// The last entry of a subject.
pub async fn entry_by_sequence(
    pool: &PgPool,
    sequence: i64,
) -> Result<Option<EntryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM consent.ledger WHERE sequence = $1"
    )))
    .bind(sequence)
    .fetch_optional(pool)
    .await
}

/// Everything a consent decision needs, in one round trip: the subject's state, whether any
/// terms version is in force, and the explicit consent for `recipient` (empty: none asked).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DecisionInputs {
    pub active: Option<bool>,
    pub consented_terms_version: Option<i64>,
    pub basis_record: Option<uuid::Uuid>,
    pub withdrawn: Option<bool>,
    pub withdraw_record: Option<uuid::Uuid>,
    pub terms_in_force: bool,
    pub explicit_record: Option<uuid::Uuid>,
    pub explicit_terms_version: Option<i64>,
    pub explicit_withdrawal: Option<uuid::Uuid>,
}

pub async fn decision_inputs(
    pool: &PgPool,
    subject: &str,
    recipient: &str,
) -> Result<DecisionInputs, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.active, s.consented_terms_version, s.basis_record, s.withdrawn, \
             s.withdraw_record, \
             EXISTS (SELECT FROM consent.documents \
                     WHERE kind = 'terms' AND effective_time <= now()) AS terms_in_force, \
             e.record AS explicit_record, e.terms_version AS explicit_terms_version, \
             e.withdrawal_record AS explicit_withdrawal \
         FROM (VALUES ($1::text, $2::text)) AS q (subject, recipient) \
         LEFT JOIN consent.subject_state s ON s.subject = q.subject AND s.last_sequence > 0 \
         LEFT JOIN consent.explicit_consents e \
             ON e.subject = q.subject AND e.recipient_entity = q.recipient",
    )
    .bind(subject)
    .bind(recipient)
    .fetch_one(pool)
    .await
}
