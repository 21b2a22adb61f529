//! Transfer's SQL: the entity registry, the append-only log and deleted subjects, in the
//! `transfer` schema.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::domain::{EntityFacts, kind_name};

#[derive(Debug, Clone, FromRow)]
pub struct EntityRow {
    pub id: Uuid,
    pub kind: String,
    pub legal_name: String,
    pub country_code: String,
    pub region: String,
    pub security_level: i32,
    pub last_review_time: Option<DateTime<Utc>>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub revision: i64,
}

pub async fn insert_entity(
    conn: &mut PgConnection,
    id: Uuid,
    facts: &EntityFacts,
    now: DateTime<Utc>,
) -> Result<EntityRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO transfer.entities
             (id, kind, legal_name, country_code, region, security_level, last_review_time,
              create_time, update_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING *",
    )
    .bind(id)
    .bind(kind_name(facts.kind))
    .bind(&facts.legal_name)
    .bind(&facts.country_code)
    .bind(&facts.region)
    .bind(facts.security_level)
    .bind(facts.last_review_time)
    .bind(now)
    .fetch_one(conn)
    .await
}

pub async fn update_entity(
    conn: &mut PgConnection,
    id: Uuid,
    facts: &EntityFacts,
    now: DateTime<Utc>,
) -> Result<EntityRow, sqlx::Error> {
    sqlx::query_as(
        "UPDATE transfer.entities SET legal_name = $2, country_code = $3, region = $4,
             security_level = $5, last_review_time = $6, update_time = $7,
             revision = revision + 1
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(&facts.legal_name)
    .bind(&facts.country_code)
    .bind(&facts.region)
    .bind(facts.security_level)
    .bind(facts.last_review_time)
    .bind(now)
    .fetch_one(conn)
    .await
}

pub async fn entity(
    conn: &mut PgConnection,
    id: Uuid,
    lock: bool,
) -> Result<Option<EntityRow>, sqlx::Error> {
    let sql = if lock {
        "SELECT * FROM transfer.entities WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM transfer.entities WHERE id = $1"
    };
    sqlx::query_as(sql).bind(id).fetch_optional(conn).await
}

/// One page of entities, oldest first, optionally of one kind.
pub async fn list_entities(
    pool: &PgPool,
    kind: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<EntityRow>, sqlx::Error> {
    let (after_time, after_id) = after.unzip();
    sqlx::query_as(
        "SELECT * FROM transfer.entities
          WHERE ($1::text IS NULL OR kind = $1)
            AND ($2::timestamptz IS NULL OR (create_time, id) > ($2, $3))
          ORDER BY create_time, id LIMIT $4",
    )
    .bind(kind)
    .bind(after_time)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A record on its way into the log.
pub struct NewRecord<'a> {
    pub id: Uuid,
    pub subject: &'a str,
    pub allowed: bool,
    pub source: Uuid,
    pub destination: Uuid,
    pub source_region: &'a str,
    pub destination_region: &'a str,
    pub source_country: &'a str,
    pub destination_country: &'a str,
    pub data_categories: &'a [i32],
    pub record_time: DateTime<Utc>,
}

/// Takes the next leaf index: the head's row lock orders appends, so sequences are dense and
/// follow commit order.
pub async fn next_sequence(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("UPDATE transfer.log_head SET size = size + 1 RETURNING size - 1")
        .fetch_one(conn)
        .await
}

pub async fn append(
    conn: &mut PgConnection,
    sequence: i64,
    record: &NewRecord<'_>,
    leaf_data: &[u8],
    leaf_hash: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO transfer.records
             (sequence, id, subject, decision, source_entity, destination_entity, source_region,
              destination_region, destination_country, data_categories, record_time, leaf_data,
              leaf_hash, source_country)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(sequence)
    .bind(record.id)
    .bind(record.subject)
    .bind(if record.allowed { "ALLOWED" } else { "DENIED" })
    .bind(record.source)
    .bind(record.destination)
    .bind(record.source_region)
    .bind(record.destination_region)
    .bind(record.destination_country)
    .bind(record.data_categories)
    .bind(record.record_time)
    .bind(leaf_data)
    .bind(leaf_hash)
    .bind(record.source_country)
    .execute(conn)
    .await?;
    Ok(())
}

/// The stored leaf data and hash of a record.
#[derive(Debug, Clone, FromRow)]
pub struct StoredRecord {
    pub sequence: i64,
    pub leaf_data: Vec<u8>,
    pub leaf_hash: Vec<u8>,
}

pub async fn record(pool: &PgPool, id: Uuid) -> Result<Option<StoredRecord>, sqlx::Error> {
    sqlx::query_as("SELECT sequence, leaf_data, leaf_hash FROM transfer.records WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The filter of ListTransferRecords and ExportTransferRecords; unset fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    pub subject: Option<String>,
    pub region: Option<String>,
    pub country: Option<String>,
    pub entity: Option<Uuid>,
    pub allowed: Option<bool>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
}

/// Records matching `filter` with sequence in `from..=until`, ascending, at most `limit`.
pub async fn records(
    pool: &PgPool,
    filter: &RecordFilter,
    from: i64,
    until: Option<i64>,
    limit: i64,
) -> Result<Vec<StoredRecord>, sqlx::Error> {
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT sequence, leaf_data, leaf_hash FROM transfer.records WHERE sequence >= ",
    );
    query.push_bind(from);
    if let Some(until) = until {
        query.push(" AND sequence <= ").push_bind(until);
    }
    if let Some(subject) = &filter.subject {
        query.push(" AND subject = ").push_bind(subject.clone());
    }
    if let Some(region) = &filter.region {
        query
            .push(" AND (source_region = ")
            .push_bind(region.clone());
        query
            .push(" OR destination_region = ")
            .push_bind(region.clone())
            .push(")");
    }
    if let Some(country) = &filter.country {
        query
            .push(" AND (source_country = ")
            .push_bind(country.clone());
        query
            .push(" OR destination_country = ")
            .push_bind(country.clone())
            .push(")");
    }
    if let Some(entity) = filter.entity {
        query.push(" AND (source_entity = ").push_bind(entity);
        query
            .push(" OR destination_entity = ")
            .push_bind(entity)
            .push(")");
    }
    if let Some(allowed) = filter.allowed {
        query
            .push(" AND decision = ")
            .push_bind(if allowed { "ALLOWED" } else { "DENIED" });
    }
    if let Some(start) = filter.start_time {
        query.push(" AND record_time >= ").push_bind(start);
    }
    if let Some(end) = filter.end_time {
        query.push(" AND record_time < ").push_bind(end);
    }
    query.push(" ORDER BY sequence LIMIT ").push_bind(limit);
    query.build_query_as().fetch_all(pool).await
}

/// The number of records in the log.
/// When record `sequence` was appended, if it exists.
pub async fn record_time<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    sequence: i64,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT record_time FROM transfer.records WHERE sequence = $1")
        .bind(sequence)
        .fetch_optional(executor)
        .await
}

pub async fn log_size<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT size FROM transfer.log_head")
        .fetch_one(executor)
        .await
}

/// The id of the record at leaf `sequence`.
pub async fn record_at(pool: &PgPool, sequence: i64) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM transfer.records WHERE sequence = $1")
        .bind(sequence)
        .fetch_optional(pool)
        .await
}

/// One entity that received a subject's data, over the subject's ALLOWED transfers.
#[derive(Debug, Clone, FromRow)]
pub struct RecipientRow {
    pub entity: Uuid,
    pub first_time: DateTime<Utc>,
    pub last_time: DateTime<Utc>,
    pub data_categories: Vec<i32>,
    pub transfer_count: i64,
    pub kind: Option<String>,
    pub legal_name: Option<String>,
    pub country_code: String,
    pub region: String,
}

/// The subject's recipients in order of first transfer, skipping `offset`.
pub async fn recipients(
    pool: &PgPool,
    subject: &str,
    offset: i64,
    limit: i64,
) -> Result<Vec<RecipientRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.destination_entity AS entity, r.first_time, r.last_time,
                r.data_categories, r.transfer_count, e.kind, e.legal_name,
                r.country_code, r.region
           FROM (SELECT destination_entity,
                        min(record_time) AS first_time,
                        max(record_time) AS last_time,
                        count(*) AS transfer_count,
                        (array_agg(destination_country ORDER BY sequence DESC))[1] AS country_code,
                        (array_agg(destination_region ORDER BY sequence DESC))[1] AS region,
                        ARRAY(SELECT DISTINCT c FROM transfer.records x, unnest(x.data_categories) c
                               WHERE x.subject = $1 AND x.decision = 'ALLOWED'
                                 AND x.destination_entity = t.destination_entity
                               ORDER BY c) AS data_categories
                   FROM transfer.records t
                  WHERE subject = $1 AND decision = 'ALLOWED'
                  GROUP BY destination_entity) r
           LEFT JOIN transfer.entities e ON e.id = r.destination_entity
          ORDER BY r.first_time, r.destination_entity
          OFFSET $2 LIMIT $3",
    )
    .bind(subject)
    .bind(offset)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn is_deleted_subject(pool: &PgPool, subject: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM transfer.deleted_subjects WHERE subject = $1)")
        .bind(subject)
        .fetch_one(pool)
        .await
}

pub async fn record_deleted_subject(
    conn: &mut PgConnection,
    subject: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO transfer.deleted_subjects (subject, delete_time) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(subject)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores the leaf hash of leaf `index` and every complete subtree its append completes; runs in
/// the append's transaction, after the sequence is taken.
pub async fn add_leaf(
    conn: &mut PgConnection,
    index: i64,
    leaf_hash: &[u8],
) -> Result<(), sqlx::Error> {
    let index_u = u64::try_from(index).unwrap_or_default();
    let completed = portal_merkle::completed_by(index_u);
    let left_siblings: Vec<portal_merkle::Node> = completed.iter().map(|(_, left)| *left).collect();
    let lefts = nodes(&mut *conn, &left_siblings).await?;
    let mut current: Vec<u8> = leaf_hash.to_vec();
    let mut rows: Vec<(i16, i64, Vec<u8>)> = vec![(0, index, current.clone())];
    for ((level, node_index), left) in completed {
        let left = lefts
            .iter()
            .find(|(node, _)| *node == left)
            .map(|(_, hash)| *hash)
            .ok_or_else(|| sqlx::Error::Protocol("a left subtree of the log is missing".into()))?;
        let right: portal_merkle::Hash = current
            .as_slice()
            .try_into()
            .map_err(|_| sqlx::Error::Protocol("a stored hash is not 32 bytes".into()))?;
        let hash = portal_merkle::node_hash(&left, &right);
        current = hash.to_vec();
        rows.push((
            i16::try_from(level).unwrap_or(i16::MAX),
            i64::try_from(node_index).unwrap_or(i64::MAX),
            current.clone(),
        ));
    }
    let (levels, indexes, hashes): (Vec<i16>, Vec<i64>, Vec<Vec<u8>>) =
        rows.into_iter()
            .fold((vec![], vec![], vec![]), |(mut l, mut i, mut h), row| {
                l.push(row.0);
                i.push(row.1);
                h.push(row.2);
                (l, i, h)
            });
    sqlx::query(
        "INSERT INTO transfer.tree_nodes (level, index, hash)
         SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
    )
    .bind(levels)
    .bind(indexes)
    .bind(hashes)
    .execute(conn)
    .await?;
    Ok(())
}

/// The stored hashes of `wanted` complete subtrees (those that exist).
pub async fn nodes<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    wanted: &[portal_merkle::Node],
) -> Result<Vec<(portal_merkle::Node, portal_merkle::Hash)>, sqlx::Error> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let levels: Vec<i16> = wanted
        .iter()
        .map(|(level, _)| i16::try_from(*level).unwrap_or(i16::MAX))
        .collect();
    let indexes: Vec<i64> = wanted
        .iter()
        .map(|(_, index)| i64::try_from(*index).unwrap_or(i64::MAX))
        .collect();
    let rows: Vec<(i16, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT n.level, n.index, n.hash FROM transfer.tree_nodes n
           JOIN unnest($1::smallint[], $2::bigint[]) AS w(level, index)
             ON n.level = w.level AND n.index = w.index",
    )
    .bind(levels)
    .bind(indexes)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(level, index, hash)| {
            let node = (u32::try_from(level).ok()?, u64::try_from(index).ok()?);
            Some((node, hash.as_slice().try_into().ok()?))
        })
        .collect())
}

#[derive(Debug, Clone, FromRow)]
pub struct CheckpointRow {
    pub tree_size: i64,
    pub root_hash: Vec<u8>,
    pub time: DateTime<Utc>,
    pub key_id: String,
    pub signature: Vec<u8>,
    pub origin: String,
}

pub async fn latest_checkpoint<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<Option<CheckpointRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM transfer.checkpoints ORDER BY tree_size DESC LIMIT 1")
        .fetch_optional(executor)
        .await
}

pub async fn insert_checkpoint(
    conn: &mut PgConnection,
    checkpoint: &CheckpointRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO transfer.checkpoints (tree_size, root_hash, time, key_id, signature, origin)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tree_size) DO NOTHING",
    )
    .bind(checkpoint.tree_size)
    .bind(&checkpoint.root_hash)
    .bind(checkpoint.time)
    .bind(&checkpoint.key_id)
    .bind(&checkpoint.signature)
    .bind(&checkpoint.origin)
    .execute(conn)
    .await?;
    Ok(())
}
