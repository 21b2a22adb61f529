//! Events: a transactional outbox, a resumable feed over it, and consumers that apply each
//! event exactly once (issue 3; `docs/events.md`).
//!
//! - A service [`append`]s an event in the same transaction as the change it describes, so the
//!   event exists if and only if the change committed.
//! - [`feed`] replays stored events after a [`Cursor`] and then follows new ones. It never
//!   skips an event whose transaction commits late and never repeats one after a resume: it
//!   orders by `(tx, id)` (the writing transaction's id, then the row id) and delivers only rows
//!   of transactions older than every transaction still running, so nothing can later appear
//!   before a delivered row. A bigserial id alone is not commit order (`STACK.md`).
//! - A [`Consumer`] stores its cursor in its own schema in the same transaction as the effect
//!   it applies, so a consumer killed at any point resumes exactly where its last commit left it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{Stream, StreamExt};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use tracing::Instrument;

use crate::db::PlatformTable;
use crate::error::ApiError;
use crate::telemetry;
use tokio::sync::watch;

/// The outbox and consumer-cursor tables.
pub(crate) const TABLES: &[PlatformTable] = &[
    PlatformTable {
        version: 1000,
        description: "event outbox",
        // `tx` is the writing transaction's id (xid8: 64-bit, never wraps), the first half of
        // the feed order; the index serves the feed's `(tx, id) > cursor` range scan. The app
        // role appends and reads; it never rewrites history.
        sql: "CREATE TABLE {schema}.outbox (
                  id          bigserial   PRIMARY KEY,
                  tx          xid8        NOT NULL DEFAULT pg_current_xact_id(),
                  event_type  text        NOT NULL,
                  subject     text        NOT NULL,
                  payload     bytea       NOT NULL,
                  traceparent text        NOT NULL DEFAULT '',
                  tracestate  text        NOT NULL DEFAULT '',
                  event_time  timestamptz NOT NULL DEFAULT now()
              );
              CREATE INDEX outbox_tx_id ON {schema}.outbox (tx, id);
              GRANT SELECT, INSERT ON {schema}.outbox TO {app};
              GRANT USAGE ON SEQUENCE {schema}.outbox_id_seq TO {app};",
    },
    PlatformTable {
        version: 1001,
        description: "event consumer cursors",
        // One row per feed this schema's service consumes; `cursor` is '' until the first
        // event is applied (the row exists so that concurrent appliers can lock it).
        sql: "CREATE TABLE {schema}.event_cursors (
                  source      text        PRIMARY KEY,
                  cursor      text        NOT NULL,
                  update_time timestamptz NOT NULL DEFAULT now()
              );
              GRANT SELECT, INSERT, UPDATE ON {schema}.event_cursors TO {app};",
    },
    PlatformTable {
        version: 1002,
        description: "event retention",
        // The feed's horizon: the position of the newest forgotten event (a cursor before it
        // is expired). Forgetting runs as the owner (SECURITY DEFINER), so the app role still
        // cannot delete or rewrite a single event; it may only ask for the oldest prefix of the
        // feed order to be dropped, and only rows older than the days it gives (at least 30;
        // STRICT: a NULL asks for nothing).
        sql: "CREATE TABLE {schema}.outbox_horizon (
                  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
                  tx       xid8    NOT NULL,
                  id       bigint  NOT NULL
              );
              GRANT SELECT ON {schema}.outbox_horizon TO {app};
              CREATE FUNCTION {schema}.forget_events(retention_days integer, batch integer)
                  RETURNS bigint LANGUAGE plpgsql STRICT SECURITY DEFINER
                  SET search_path = pg_catalog, pg_temp AS $$
              DECLARE
                  cutoff timestamptz := now() - make_interval(days => retention_days);
                  forgotten bigint;
                  last_tx xid8;
                  last_id bigint;
              BEGIN
                  IF retention_days < 30 THEN
                      RAISE EXCEPTION 'events are kept for at least 30 days';
                  END IF;
                  WITH ordered AS (
                      SELECT tx, id, event_time FROM {schema}.outbox
                       WHERE tx < pg_snapshot_xmin(pg_current_snapshot())
                       ORDER BY tx, id LIMIT batch
                  ), first_kept AS (
                      SELECT tx, id FROM ordered WHERE event_time >= cutoff
                       ORDER BY tx, id LIMIT 1
                  ), gone AS (
                      DELETE FROM {schema}.outbox o USING ordered d
                       WHERE o.id = d.id
                         AND NOT EXISTS (SELECT FROM first_kept k WHERE (d.tx, d.id) >= (k.tx, k.id))
                      RETURNING o.tx, o.id
                  ), newest AS (
                      SELECT tx, id FROM gone ORDER BY tx DESC, id DESC LIMIT 1
                  )
                  SELECT (SELECT count(*) FROM gone), newest.tx, newest.id
                    INTO forgotten, last_tx, last_id
                    FROM (SELECT 1) one LEFT JOIN newest ON true;
                  IF forgotten > 0 THEN
                      INSERT INTO {schema}.outbox_horizon (tx, id) VALUES (last_tx, last_id)
                      ON CONFLICT (only_row) DO UPDATE SET tx = EXCLUDED.tx, id = EXCLUDED.id;
                  END IF;
                  RETURN forgotten;
              END $$;
              REVOKE ALL ON FUNCTION {schema}.forget_events(integer, integer) FROM PUBLIC;
              GRANT EXECUTE ON FUNCTION {schema}.forget_events(integer, integer) TO {app};",
    },
];

/// Forgets up to `batch` of the oldest events of `schema`'s feed that are older than
/// `retention_days`, stopping at the first younger one (so what is forgotten is always a
/// prefix of the feed order); returns how many. Cursors before them are then expired.
pub async fn forget_old_events(
    conn: &mut PgConnection,
    schema: &str,
    retention_days: u32,
    batch: i32,
) -> Result<i64, sqlx::Error> {
    let forget = format!("SELECT {}($1, $2)", table(schema, "forget_events")?);
    sqlx::query_scalar(AssertSqlSafe(forget))
        .bind(i32::try_from(retention_days).unwrap_or(i32::MAX))
        .bind(batch)
        .fetch_one(conn)
        .await
}

/// Reason of a cursor older than the feed's retention: the receiver must resynchronise.
pub const CURSOR_EXPIRED: &str = "CURSOR_EXPIRED";

/// Rows fetched per feed query; a full batch is followed at once by the next.
const BATCH: i64 = 256;

/// Version tag inside every cursor, so the format can change without misreading old cursors.
const CURSOR_VERSION: &str = "v1";

/// Longest cursor accepted, as the contracts promise (`UserEvent.cursor`).
const MAX_CURSOR_CHARS: usize = 256;

/// Reason of a cursor that is not a cursor of the feed asked for.
pub const INVALID_CURSOR: &str = "INVALID_CURSOR";

/// A position in one feed: just after the event it was taken from. Callers treat its encoding
/// as opaque; it names the feed (the schema) so a cursor of another feed is refused rather than
/// silently misread.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    feed: String,
    tx: u64,
    id: i64,
}

impl Cursor {
    /// The feed (schema) this cursor belongs to.
    pub fn feed(&self) -> &str {
        &self.feed
    }

    /// The opaque text form: base64url of `v1:<feed>:<tx>:<id>`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{CURSOR_VERSION}:{}:{}:{}",
            self.feed, self.tx, self.id
        ))
    }

    /// Reads a cursor of any feed; anything malformed is `INVALID_ARGUMENT`, `INVALID_CURSOR`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        Self::decode(text).ok_or_else(|| {
            ApiError::invalid_argument(INVALID_CURSOR, "not a cursor of this feed")
                .violation("after", "not a cursor of this feed")
        })
    }

    /// Reads a request's resume cursor for `feed`: empty means from the start; a cursor of
    /// another feed is as invalid as a malformed one.
    pub fn parse_for(feed: &str, text: &str) -> Result<Option<Self>, ApiError> {
        if text.is_empty() {
            return Ok(None);
        }
        let cursor = Self::parse(text)?;
        if cursor.feed != feed {
            return Err(Self::foreign());
        }
        Ok(Some(cursor))
    }

    fn expired() -> ApiError {
        ApiError::new(
            tonic::Code::OutOfRange,
            CURSOR_EXPIRED,
            "the cursor is older than the feed's retention; resynchronise",
        )
    }

    fn ahead() -> ApiError {
        ApiError::invalid_argument(INVALID_CURSOR, "the cursor is ahead of the feed")
            .violation("after", "not a cursor this feed gave out")
    }

    fn foreign() -> ApiError {
        ApiError::invalid_argument(INVALID_CURSOR, "not a cursor of this feed")
            .violation("after", "not a cursor of this feed")
    }

    fn decode(text: &str) -> Option<Self> {
        if text.len() > MAX_CURSOR_CHARS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let plain = String::from_utf8(bytes).ok()?;
        let mut parts = plain.split(':');
        let (version, feed, tx, id) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != CURSOR_VERSION || parts.next().is_some() || !is_identifier(feed) {
            return None;
        }
        let tx = tx.parse::<u64>().ok()?;
        let id = id.parse::<i64>().ok().filter(|id| *id > 0)?;
        Some(Self {
            feed: feed.to_owned(),
            tx,
            id,
        })
    }

    /// The feed's order: by writing transaction, then by row id.
    fn position(&self) -> (u64, i64) {
        (self.tx, self.id)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// An event to append. `subject` is a resource name (ids only); neither it nor `payload` may
/// hold personal information, because events outlive the data they describe.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    /// What happened, e.g. `portal.identity.v1.UserEvent.TYPE_DELETED`.
    pub event_type: &'a str,
    /// The resource concerned, e.g. `tenants/{tenant}/users/{user}`.
    pub subject: &'a str,
    /// The event as its feed's receivers decode it (usually an encoded protobuf message).
    pub payload: &'a [u8],
}

/// The protobuf encoding of `message`, for [`NewEvent::payload`] (so service crates need not
/// depend on `prost` themselves).
pub fn encode<M: prost::Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// Appends `event` to `schema`'s outbox on `conn`, which must be inside the transaction that
/// makes the change the event describes: the event then commits, or rolls back, with it. The
/// current span's W3C trace context is stored with it, so the work the event causes later
/// joins the trace of the call that caused it. Returns the event's id (its `sequence`).
pub async fn append(
    conn: &mut PgConnection,
    schema: &str,
    event: NewEvent<'_>,
) -> Result<i64, sqlx::Error> {
    let outbox = table(schema, "outbox")?;
    let (traceparent, tracestate) = telemetry::current_trace_context();
    let insert = format!(
        "INSERT INTO {outbox} (event_type, subject, payload, traceparent, tracestate) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id"
    );
    sqlx::query_scalar(AssertSqlSafe(insert))
        .bind(event.event_type)
        .bind(event.subject)
        .bind(event.payload)
        .bind(traceparent)
        .bind(tracestate)
        .fetch_one(conn)
        .await
}

/// An event as stored and delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Row id: unique and positive; services deliver it as the event's `sequence`.
    pub id: i64,
    /// Resume position just after this event.
    pub cursor: Cursor,
    pub event_type: String,
    pub subject: String,
    pub payload: Vec<u8>,
    /// W3C trace context of the call that appended it; empty if it was not traced.
    pub traceparent: String,
    pub tracestate: String,
    /// The time of the transaction that appended it.
    pub event_time: chrono::DateTime<chrono::Utc>,
}

impl StoredEvent {
    /// Decodes the payload as the protobuf message `M`; a payload that does not decode is a
    /// bug in the writer, so the caller sees INTERNAL.
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, ApiError> {
        M::decode(self.payload.as_slice()).map_err(|e| {
            ApiError::internal(format_args!(
                "event {} ({}) does not decode: {e}",
                self.id, self.event_type
            ))
        })
    }
}

/// The stored events of `schema`'s outbox after `after` (all of them if `None`), in feed order,
/// then each new event once its transaction and every older one have finished; polls every
/// `poll` when caught up. The stream ends after its first error: a cursor of another feed is
/// `INVALID_CURSOR`, a lost database `UNAVAILABLE` (the caller resumes from its last cursor).
pub fn feed(
    pool: PgPool,
    schema: &'static str,
    after: Option<Cursor>,
    poll: Duration,
) -> impl Stream<Item = Result<StoredEvent, ApiError>> + Send + 'static {
    async_stream::stream! {
        if after.as_ref().is_some_and(|cursor| cursor.feed != schema) {
            yield Err(Cursor::foreign());
            return;
        }
        let outbox = match table(schema, "outbox") {
            Ok(outbox) => outbox,
            Err(e) => {
                yield Err(ApiError::from(e));
                return;
            }
        };
        // Only rows of transactions older than the snapshot's xmin: every one of those has
        // finished, and any transaction still running or yet to start has an id >= xmin, so
        // no row can ever appear before the ones delivered here. Row comparison on
        // (tx, id) uses the outbox_tx_id index.
        let select = format!(
            "SELECT id, tx::text, event_type, subject, payload, traceparent, tracestate, event_time \
             FROM {outbox} \
             WHERE tx < pg_snapshot_xmin(pg_current_snapshot()) \
               AND (tx, id) > ($1::text::xid8, $2) \
             ORDER BY tx, id \
             LIMIT $3"
        );
        let horizon = format!("SELECT tx::text, id FROM {schema}.outbox_horizon");
        let (mut tx, mut id) = after.map_or((0, 0), |cursor| cursor.position());
        // A cursor comes from an event this feed delivered: one past the newest event (and past
        // the horizon) was made up, and would skip whatever the feed appends up to it.
        if (tx, id) != (0, 0)
            && let Err(e) = still_in_feed(&pool, &horizon, (tx, id), Some(&outbox)).await
        {
            yield Err(e);
            return;
        }
        loop {
            let rows: Result<Vec<Row>, sqlx::Error> = sqlx::query_as(AssertSqlSafe(select.clone()))
                .bind(tx.to_string())
                .bind(id)
                .bind(BATCH)
                .fetch_all(&pool)
                .await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    yield Err(ApiError::from(e));
                    return;
                }
            };
            // Read after the rows: if the horizon is still at or before the position, nothing
            // after the position was forgotten before the rows were read. A stream from the
            // start has no position to lose until it delivers its first event.
            if (tx, id) != (0, 0)
                && let Err(e) = still_in_feed(&pool, &horizon, (tx, id), None).await
            {
                yield Err(e);
                return;
            }
            let caught_up = i64::try_from(rows.len()).unwrap_or(i64::MAX) < BATCH;
            for row in rows {
                let event = match row.into_event(schema) {
                    Ok(event) => event,
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                };
                (tx, id) = event.cursor.position();
                yield Ok(event);
            }
            if caught_up {
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// A boxed gRPC response stream, as tonic's generated servers take it.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// Serves `schema`'s feed as a gRPC stream: parses the request's `after` cursor (a bad one is
/// the call's own `INVALID_ARGUMENT`), then maps each stored event to the feed's message with
/// `to_message` (which returns `None` for events this stream does not carry). Errors carry the
/// service's `domain` and end the stream; the client resumes with its last cursor.
pub fn watch<T, F>(
    pool: PgPool,
    schema: &'static str,
    after: &str,
    poll: Duration,
    domain: &'static str,
    draining: watch::Receiver<bool>,
    mut to_message: F,
) -> Result<ResponseStream<T>, ApiError>
where
    T: Send + 'static,
    F: FnMut(StoredEvent) -> Result<Option<T>, ApiError> + Send + 'static,
{
    let after = Cursor::parse_for(schema, after).map_err(|e| e.in_domain(domain))?;
    let events = feed(pool, schema, after, poll);
    Ok(Box::pin(async_stream::stream! {
        let mut events = std::pin::pin!(events);
        let mut draining = draining;
        loop {
            // A drain ends the stream at once, so a server shutting down does not wait out its
            // grace period for watchers; they resume elsewhere from their last cursor.
            let next = tokio::select! {
                event = events.next() => Some(event),
                _ = draining.wait_for(|draining| *draining) => None,
            };
            let Some(next) = next else {
                let drained = ApiError::unavailable(
                    SERVER_DRAINING,
                    "the server is shutting down; resume from the last cursor",
                );
                yield Err(tonic::Status::from(drained.in_domain(domain)));
                return;
            };
            let Some(event) = next else {
                return;
            };
            match event.and_then(&mut to_message) {
                Ok(Some(message)) => yield Ok(message),
                Ok(None) => {}
                Err(e) => {
                    yield Err(tonic::Status::from(e.in_domain(domain)));
                    return;
                }
            }
        }
    }))
}

/// That `position` is still one of this feed's: `CURSOR_EXPIRED` if events after it were
/// forgotten (the horizon, read with `horizon`, is past it), and with `outbox` also
/// `INVALID_CURSOR` if it is past the newest event and the horizon (never given out).
async fn still_in_feed(
    pool: &PgPool,
    horizon: &str,
    position: (u64, i64),
    outbox: Option<&str>,
) -> Result<(), ApiError> {
    let forgotten = newest_position(pool, horizon).await?.unwrap_or((0, 0));
    if position < forgotten {
        return Err(Cursor::expired());
    }
    if let Some(outbox) = outbox {
        let newest = format!("SELECT tx::text, id FROM {outbox} ORDER BY tx DESC, id DESC LIMIT 1");
        let newest = newest_position(pool, &newest).await?.unwrap_or((0, 0));
        if position > newest.max(forgotten) {
            return Err(Cursor::ahead());
        }
    }
    Ok(())
}

/// The `(tx, id)` that `select` reads (one row of `tx::text, id`), if any.
async fn newest_position(pool: &PgPool, select: &str) -> Result<Option<(u64, i64)>, ApiError> {
    let row: Option<(String, i64)> = sqlx::query_as(AssertSqlSafe(select.to_owned()))
        .fetch_optional(pool)
        .await?;
    row.map(|(tx, id)| {
        tx.parse::<u64>()
            .map(|tx| (tx, id))
            .map_err(|_| ApiError::internal("a feed position has a bad transaction id"))
    })
    .transpose()
}

/// Reason a watch stream ends with when its server drains.
pub const SERVER_DRAINING: &str = "SERVER_DRAINING";

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    tx: String,
    event_type: String,
    subject: String,
    payload: Vec<u8>,
    traceparent: String,
    tracestate: String,
    event_time: chrono::DateTime<chrono::Utc>,
}

impl Row {
    fn into_event(self, feed: &str) -> Result<StoredEvent, ApiError> {
        let tx = self
            .tx
            .parse::<u64>()
            .map_err(|_| ApiError::internal(format_args!("event {}: bad tx", self.id)))?;
        Ok(StoredEvent {
            id: self.id,
            cursor: Cursor {
                feed: feed.to_owned(),
                tx,
                id: self.id,
            },
            event_type: self.event_type,
            subject: self.subject,
            payload: self.payload,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            event_time: self.event_time,
        })
    }
}

/// An event as a consumer receives it from a feed (usually a gRPC Watch stream): the feed's
/// cursor and trace context, and the event itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Received<T> {
    pub cursor: Cursor,
    pub traceparent: String,
    pub tracestate: String,
    /// When the event was committed at its source, if the feed says (for the lag metric).
    pub event_time: Option<std::time::SystemTime>,
    pub event: T,
}

impl<T> Received<T> {
    /// From the fields every feed message carries; a malformed cursor is `INVALID_CURSOR`.
    pub fn parse(
        cursor: &str,
        traceparent: &str,
        tracestate: &str,
        event: T,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            cursor: Cursor::parse(cursor)?,
            traceparent: traceparent.to_owned(),
            tracestate: tracestate.to_owned(),
            event_time: None,
            event,
        })
    }

    /// The same event, saying when it was committed at its source.
    #[must_use]
    pub fn committed_at(mut self, time: Option<std::time::SystemTime>) -> Self {
        self.event_time = time;
        self
    }
}

/// What [`Consumer::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The effect ran and committed together with the new cursor.
    Applied,
    /// The event is at or before the stored cursor (a redelivery): nothing was done.
    AlreadyApplied,
}

/// An effect of one event, run inside the consumer's transaction.
pub type Effect<'c, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'c>>;

/// How long a consumer waits before reconnecting: `initial` after it made progress, doubling
/// on each failure in a row up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

/// Applies one feed's events to this service's schema, each exactly once: the effect and the
/// new cursor commit in one transaction, so a crash before the commit leaves neither and the
/// event is applied on resume, and a crash after it leaves both and the event is not repeated.
#[derive(Debug, Clone)]
pub struct Consumer {
    pool: PgPool,
    schema: &'static str,
    source: String,
}

impl Consumer {
    /// A consumer storing its cursor as `source` (the feed's name, e.g. `identity`) in the
    /// `event_cursors` table of `schema`, the consuming service's own schema.
    pub fn new(pool: PgPool, schema: &'static str, source: impl Into<String>) -> Self {
        Self {
            pool,
            schema,
            source: source.into(),
        }
    }

    /// The cursor of the last applied event, or `None` before the first.
    pub async fn cursor(&self) -> Result<Option<Cursor>, sqlx::Error> {
        let select = format!(
            "SELECT cursor FROM {} WHERE source = $1",
            table(self.schema, "event_cursors")?
        );
        let stored: Option<String> = sqlx::query_scalar(AssertSqlSafe(select))
            .bind(&self.source)
            .fetch_optional(&self.pool)
            .await?;
        match stored.filter(|text| !text.is_empty()) {
            None => Ok(None),
            Some(text) => Cursor::parse(&text)
                .map(Some)
                .map_err(|e| sqlx::Error::Decode(Box::new(e))),
        }
    }

    /// Runs `effect` for `event` and stores the event's cursor, in one transaction, unless the
    /// stored cursor is already at or past the event. The cursor row is locked first, so two
    /// replicas applying the same feed at once still apply each event once. The work runs in a
    /// span joined to the trace of the call that caused the event.
    pub async fn apply<T, E, F>(&self, event: &Received<T>, effect: F) -> Result<Applied, E>
    where
        E: From<sqlx::Error>,
        F: for<'c> FnOnce(&'c mut PgConnection, &'c T) -> Effect<'c, E>,
    {
        let span = tracing::info_span!(
            "event.apply",
            otel.name = "event.apply",
            otel.kind = "consumer",
            event.source = %self.source,
        );
        telemetry::continue_trace(&span, &event.traceparent, &event.tracestate);
        let applied = self.apply_in_span(event, effect).instrument(span).await?;
        if applied == Applied::Applied {
            crate::metrics::event_applied(self.schema, &self.source, event.event_time);
        }
        Ok(applied)
    }

    async fn apply_in_span<T, E, F>(&self, event: &Received<T>, effect: F) -> Result<Applied, E>
    where
        E: From<sqlx::Error>,
        F: for<'c> FnOnce(&'c mut PgConnection, &'c T) -> Effect<'c, E>,
    {
        let cursors = table(self.schema, "event_cursors")?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {cursors} (source, cursor) VALUES ($1, '') ON CONFLICT DO NOTHING"
        )))
        .bind(&self.source)
        .execute(&mut *tx)
        .await?;
        let stored: String = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT cursor FROM {cursors} WHERE source = $1 FOR UPDATE"
        )))
        .bind(&self.source)
        .fetch_one(&mut *tx)
        .await?;
        if !stored.is_empty() {
            let stored = Cursor::parse(&stored).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            if stored.feed != event.cursor.feed {
                let mismatch = format!(
                    "consumer {} stores a cursor of feed {} but received one of feed {}",
                    self.source, stored.feed, event.cursor.feed
                );
                return Err(sqlx::Error::Protocol(mismatch).into());
            }
            if event.cursor.position() <= stored.position() {
                tx.rollback().await?;
                return Ok(Applied::AlreadyApplied);
            }
        }
        effect(&mut tx, &event.event).await?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {cursors} SET cursor = $2, update_time = now() WHERE source = $1"
        )))
        .bind(&self.source)
        .bind(event.cursor.encode())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Applied::Applied)
    }

    /// Until `shutdown` completes: opens the feed from the stored cursor with `open` (in
    /// production a gRPC Watch call through `crate::client`), applies each event with
    /// `effect`, and after any error (lost feed, lost database, failed effect) reconnects
    /// from the stored cursor after a `backoff` delay. A failing event is retried, never
    /// skipped: later events must not overtake it.
    pub async fn run<T, E, SE, O, OFut, S, F>(
        &self,
        mut open: O,
        effect: F,
        backoff: Backoff,
        shutdown: impl Future<Output = ()>,
    ) where
        E: From<sqlx::Error> + fmt::Display,
        SE: fmt::Display,
        O: FnMut(Option<Cursor>) -> OFut,
        OFut: Future<Output = Result<S, SE>>,
        S: Stream<Item = Result<Received<T>, SE>>,
        F: for<'c> Fn(&'c mut PgConnection, &'c T) -> Effect<'c, E>,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut delay = backoff.initial;
        loop {
            let mut progressed = false;
            let session = self.session(&mut open, &effect, &mut progressed);
            let ended = tokio::select! {
                () = &mut shutdown => return,
                ended = session => ended,
            };
            tracing::warn!(source = %self.source, reason = %ended, "event feed interrupted; reconnecting");
            if progressed {
                delay = backoff.initial;
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = delay.saturating_mul(2).min(backoff.max);
        }
    }

    /// One connection to the feed; returns why it ended.
    async fn session<T, E, SE, O, OFut, S, F>(
        &self,
        open: &mut O,
        effect: &F,
        progressed: &mut bool,
    ) -> String
    where
        E: From<sqlx::Error> + fmt::Display,
        SE: fmt::Display,
        O: FnMut(Option<Cursor>) -> OFut,
        OFut: Future<Output = Result<S, SE>>,
        S: Stream<Item = Result<Received<T>, SE>>,
        F: for<'c> Fn(&'c mut PgConnection, &'c T) -> Effect<'c, E>,
    {
        let after = match self.cursor().await {
            Ok(after) => after,
            Err(e) => return format!("reading the cursor: {}", ApiError::from(e)),
        };
        let events = match open(after).await {
            Ok(events) => events,
            Err(e) => return format!("opening the feed: {e}"),
        };
        crate::metrics::event_feed_connected(self.schema, &self.source, true);
        let ended = self.apply_all(events, effect, progressed).await;
        crate::metrics::event_feed_connected(self.schema, &self.source, false);
        ended
    }

    /// Applies events from an open feed until it ends or fails; returns why it ended.
    async fn apply_all<T, E, SE, S, F>(
        &self,
        events: S,
        effect: &F,
        progressed: &mut bool,
    ) -> String
    where
        E: From<sqlx::Error> + fmt::Display,
        SE: fmt::Display,
        S: Stream<Item = Result<Received<T>, SE>>,
        F: for<'c> Fn(&'c mut PgConnection, &'c T) -> Effect<'c, E>,
    {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => return format!("feed: {e}"),
            };
            match self.apply(&event, effect).await {
                Ok(_) => *progressed = true,
                Err(e) => return format!("applying an event: {e}"),
            }
        }
        "the feed ended".to_owned()
    }
}

/// `schema.table`, refusing a schema name that is not a plain identifier (schema names come
/// from code, never from input, but they are spliced into SQL).
fn table(schema: &str, table: &str) -> Result<String, sqlx::Error> {
    if is_identifier(schema) {
        Ok(format!("{schema}.{table}"))
    } else {
        Err(sqlx::Error::Configuration(
            "a schema name must be a lower-case identifier".into(),
        ))
    }
}

fn is_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(feed: &str, tx: u64, id: i64) -> Cursor {
        Cursor {
            feed: feed.to_owned(),
            tx,
            id,
        }
    }

    #[test]
    fn a_cursor_round_trips_through_its_opaque_text() {
        let original = cursor("identity", u64::MAX, i64::MAX);
        let text = original.encode();
        assert!(text.len() <= MAX_CURSOR_CHARS);
        assert_eq!(Cursor::parse(&text).unwrap(), original);
        assert_eq!(
            Cursor::parse_for("identity", &text).unwrap(),
            Some(original)
        );
        assert_eq!(Cursor::parse_for("identity", "").unwrap(), None);
    }

    #[test]
    fn malformed_or_foreign_cursors_are_invalid_cursor() {
        let foreign = cursor("approval", 10, 3).encode();
        let wrong_version = URL_SAFE_NO_PAD.encode("v0:identity:10:3");
        let zero_id = URL_SAFE_NO_PAD.encode("v1:identity:10:0");
        let extra = URL_SAFE_NO_PAD.encode("v1:identity:10:3:4");
        let bad_feed = URL_SAFE_NO_PAD.encode("v1:Identity;--:10:3");
        let long = "A".repeat(MAX_CURSOR_CHARS + 1);
        for text in [
            "not a cursor",
            "!!!",
            foreign.as_str(),
            wrong_version.as_str(),
            zero_id.as_str(),
            extra.as_str(),
            bad_feed.as_str(),
            long.as_str(),
        ] {
            let error = Cursor::parse_for("identity", text).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{text}");
            assert_eq!(error.reason(), INVALID_CURSOR, "{text}");
        }
    }

    #[test]
    fn feed_order_is_by_transaction_then_id() {
        assert!(cursor("f", 5, 9).position() < cursor("f", 6, 1).position());
        assert!(cursor("f", 6, 1).position() < cursor("f", 6, 2).position());
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert_eq!(table("identity", "outbox").unwrap(), "identity.outbox");
        for bad in ["", "Identity", "a.b", "x; DROP TABLE y", "1abc"] {
            assert!(table(bad, "outbox").is_err(), "{bad}");
        }
    }
}
