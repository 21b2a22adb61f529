//! Events through the platform's one outbox-and-feed mechanism, served by identity's
//! WatchUserEvents over a real socket: a resumed feed neither skips nor repeats, an event whose
//! transaction commits late is still delivered in order, a consumer killed mid-stream applies
//! every event exactly once, events carry the caller's trace context, and a bad cursor is
//! refused. Events are appended as `identity_app`, so the app role's grants are what is proven.
//! (Its own test binary: it installs the process-wide telemetry.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::sync::OnceLock;
use std::time::Duration;

use portal_platform::config::{LogFormat, TelemetrySettings};
use portal_platform::events::{self, Applied, Backoff, Consumer, Cursor, NewEvent, Received};
use portal_platform::telemetry::{self, Telemetry};
use portal_platform::{ApiError, ServiceDef};
use portal_proto::identity::v1::identity_service_client::IdentityServiceClient;
use portal_proto::identity::v1::{UserEvent, WatchUserEventsRequest, user_event};
use portal_testkit::{TestDb, TestService, eventually};
use portal_tests::all_schemas;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use tracing::Instrument;

const IDENTITY: &ServiceDef = &identity_service::SERVICE;
const TENANT: &str = "tenants/0190f7a0-0000-7000-8000-000000000000";

/// How long a test waits for something that must happen.
const DEADLINE: Duration = Duration::from_secs(10);

/// How long a test watches for something that must not happen (a bounded wait on the stream,
/// several feed polls long).
const QUIET: Duration = Duration::from_millis(1000);

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// The platform's own telemetry (with the OpenTelemetry layer, so spans have trace context),
/// installed before anything else in this binary can install a plainer subscriber.
fn install_telemetry() {
    TELEMETRY.get_or_init(|| {
        let settings = TelemetrySettings {
            log_format: LogFormat::Human,
            log_filter: "error,events=info,portal_platform::events=info".to_owned(),
            service_namespace: "portal".to_owned(),
            otlp_endpoint: None,
            metrics_listen: None,
            metrics_export_interval_ms: 30_000,
        };
        telemetry::init("events-test", &settings).unwrap()
    });
}

struct Suite {
    db: TestDb,
    identity: TestService,
    /// Connections as `identity_app`, as the identity service itself appends.
    identity_app: PgPool,
}

async fn suite() -> Suite {
    install_telemetry();
    let db = TestDb::new(&all_schemas()).await.unwrap();
    // The service's own retention sweep must not race the tests that forget events themselves.
    let keep_long = [("PORTAL_EVENTS__RETENTION_DAYS", "3650")];
    let identity = TestService::start_with(IDENTITY, db.url(), &keep_long)
        .await
        .unwrap();
    let identity_app = db.app_pool(IDENTITY.schema).unwrap();
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&identity_app)
        .await
        .unwrap();
    assert_eq!(role, "identity_app");
    Suite {
        db,
        identity,
        identity_app,
    }
}

fn registered(n: u32) -> UserEvent {
    UserEvent {
        r#type: user_event::Type::Registered.into(),
        user: format!("{TENANT}/users/0190f7a0-0000-7000-8000-{n:012}"),
        tenant: TENANT.to_owned(),
        ..UserEvent::default()
    }
}

/// Appends user event `n` on `conn` (inside the caller's transaction) through the platform.
async fn append_on(conn: &mut PgConnection, n: u32) -> i64 {
    let event = registered(n);
    events::append(
        conn,
        "identity",
        NewEvent {
            event_type: "portal.identity.v1.UserEvent.TYPE_REGISTERED",
            subject: &event.user,
            payload: &events::encode(&event),
        },
    )
    .await
    .unwrap()
}

/// Appends and commits user events `numbers`, one transaction each; returns their ids.
async fn append_committed(pool: &PgPool, numbers: std::ops::Range<u32>) -> Vec<i64> {
    let mut ids = Vec::new();
    for n in numbers {
        let mut tx = pool.begin().await.unwrap();
        ids.push(append_on(&mut tx, n).await);
        tx.commit().await.unwrap();
    }
    ids
}

fn bearer() -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("Bearer {}", portal_testkit::keys::operator_token())
        .parse()
        .unwrap()
}

async fn watch(channel: Channel, after: &str) -> Result<Streaming<UserEvent>, tonic::Status> {
    let mut client = IdentityServiceClient::new(channel);
    let mut request = tonic::Request::new(WatchUserEventsRequest {
        after: after.to_owned(),
    });
    request.metadata_mut().insert("authorization", bearer());
    Ok(client.watch_user_events(request).await?.into_inner())
}

async fn next(stream: &mut Streaming<UserEvent>) -> UserEvent {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("no event within the deadline")
        .unwrap()
        .expect("the feed ended")
}

/// Fails if the stream delivers anything within [`QUIET`].
async fn assert_quiet(stream: &mut Streaming<UserEvent>, why: &str) {
    if let Ok(delivered) = tokio::time::timeout(QUIET, stream.message()).await {
        panic!("{why}: delivered {delivered:?}");
    }
}

#[tokio::test]
async fn a_resumed_feed_neither_skips_nor_repeats_an_event() {
    let suite = suite().await;
    let first = append_committed(&suite.identity_app, 0..5).await;

    let mut stream = watch(suite.identity.channel().await.unwrap(), "")
        .await
        .unwrap();
    let mut cursor = String::new();
    for (n, id) in first.iter().take(3).enumerate() {
        let event = next(&mut stream).await;
        assert_eq!(event.sequence, *id);
        assert_eq!(event.user, registered(u32::try_from(n).unwrap()).user);
        assert_eq!(event.tenant, TENANT);
        assert_eq!(event.r#type(), user_event::Type::Registered);
        assert!(event.event_time.is_some());
        assert!(!event.cursor.is_empty() && event.cursor.len() <= 256);
        cursor = event.cursor;
    }
    drop(stream);

    let later = append_committed(&suite.identity_app, 5..8).await;
    let rest: Vec<i64> = first[3..].iter().chain(&later).copied().collect();
    let mut resumed = watch(suite.identity.channel().await.unwrap(), &cursor)
        .await
        .unwrap();
    let mut delivered = Vec::new();
    for _ in 0..rest.len() {
        delivered.push(next(&mut resumed).await.sequence);
    }
    assert_eq!(
        delivered, rest,
        "exactly the events after the cursor, in order"
    );
    assert_quiet(&mut resumed, "nothing more was appended").await;
}

#[tokio::test]
async fn an_event_committed_late_is_delivered_after_a_later_id_committed_first() {
    let suite = suite().await;
    let pool = &suite.identity_app;
    let before = append_committed(pool, 0..1).await;
    let mut stream = watch(suite.identity.channel().await.unwrap(), "")
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.sequence, before[0]);

    // A takes the smaller id but has not committed; B takes a larger id and commits first.
    let mut a = pool.begin().await.unwrap();
    let a_id = append_on(&mut a, 1).await;
    let mut b = pool.begin().await.unwrap();
    let b_id = append_on(&mut b, 2).await;
    b.commit().await.unwrap();
    assert!(a_id < b_id);
    let admin = suite.db.admin_pool().await.unwrap();
    let b_visible: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM identity.outbox WHERE id = $1)")
            .bind(b_id)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(b_visible, "B is committed and readable");
    // A reader going "after the last id" would deliver B now and then never see A.
    assert_quiet(&mut stream, "B must wait while the older A is in flight").await;

    a.commit().await.unwrap();
    let first = next(&mut stream).await;
    let second = next(&mut stream).await;
    assert_eq!((first.sequence, second.sequence), (a_id, b_id), "A, then B");

    // A reader resuming from before them sees the same order.
    let mut resumed = watch(suite.identity.channel().await.unwrap(), &{
        let mut replay = watch(suite.identity.channel().await.unwrap(), "")
            .await
            .unwrap();
        next(&mut replay).await.cursor
    })
    .await
    .unwrap();
    assert_eq!(next(&mut resumed).await.sequence, a_id);
    assert_eq!(next(&mut resumed).await.sequence, b_id);

    // The feed only held back while A was open: it still delivers promptly afterwards.
    let after = append_committed(pool, 3..4).await;
    assert_eq!(next(&mut stream).await.sequence, after[0]);
}

/// The effect the consumer test applies: a row per event in a table the test made in the
/// approval schema, counting how many times each event took effect.
async fn record_effect(conn: &mut PgConnection, event: &UserEvent) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO approval.test_applied (sequence) VALUES ($1) \
         ON CONFLICT (sequence) DO UPDATE SET times = test_applied.times + 1",
    )
    .bind(event.sequence)
    .execute(conn)
    .await?;
    Ok(())
}

/// Opens identity's feed over gRPC, as a consuming service does.
async fn open_feed(
    channel: Channel,
    after: Option<Cursor>,
) -> Result<
    impl tokio_stream::Stream<Item = Result<Received<UserEvent>, tonic::Status>>,
    tonic::Status,
> {
    let after = after.map(|cursor| cursor.encode()).unwrap_or_default();
    let events = watch(channel, &after).await?;
    Ok(events.map(|event| {
        let event = event?;
        let (cursor, traceparent, tracestate) = (
            event.cursor.clone(),
            event.traceparent.clone(),
            event.tracestate.clone(),
        );
        Received::parse(&cursor, &traceparent, &tracestate, event).map_err(tonic::Status::from)
    }))
}

/// Applied events as (sequence, times applied), in the order they were applied.
async fn applied(admin: &PgPool) -> Vec<(i64, i32)> {
    sqlx::query_as("SELECT sequence, times FROM approval.test_applied ORDER BY applied_order")
        .fetch_all(admin)
        .await
        .unwrap()
}

/// Runs a consumer of identity's feed in the approval schema; its effect stalls forever,
/// inside its transaction, on the event with sequence `stall_at` (after announcing it).
fn spawn_consumer(
    suite: &Suite,
    approval_app: &PgPool,
    stall_at: Option<i64>,
    stalled: mpsc::UnboundedSender<i64>,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let consumer = Consumer::new(approval_app.clone(), "approval", "identity");
    let uri = suite.identity.uri();
    tokio::spawn(async move {
        let channel = Channel::from_shared(uri).unwrap().connect_lazy();
        consumer
            .run(
                |after| open_feed(channel.clone(), after),
                |conn: &mut PgConnection, event: &UserEvent| {
                    let stalled = stalled.clone();
                    Box::pin(async move {
                        record_effect(conn, event).await?;
                        if Some(event.sequence) == stall_at {
                            let _ = stalled.send(event.sequence);
                            std::future::pending::<()>().await;
                        }
                        Ok::<(), ApiError>(())
                    })
                },
                Backoff {
                    initial: Duration::from_millis(50),
                    max: Duration::from_millis(500),
                },
                async {
                    let _ = shutdown.await;
                },
            )
            .await;
    })
}

#[tokio::test]
async fn a_consumer_killed_mid_stream_and_restarted_applies_every_event_exactly_once() {
    let suite = suite().await;
    let admin = suite.db.admin_pool().await.unwrap();
    for statement in [
        "CREATE TABLE approval.test_applied (
             sequence      bigint    PRIMARY KEY,
             times         int       NOT NULL DEFAULT 1,
             applied_order bigserial NOT NULL
         )",
        "GRANT SELECT, INSERT, UPDATE ON approval.test_applied TO approval_app",
        "GRANT USAGE ON SEQUENCE approval.test_applied_applied_order_seq TO approval_app",
    ] {
        sqlx::query(statement).execute(&admin).await.unwrap();
    }
    let approval_app = suite.db.app_pool(approval_service::SERVICE.schema).unwrap();
    let ids = append_committed(&suite.identity_app, 0..8).await;

    // First run: killed while applying the fifth event, inside its transaction.
    let (stalled_tx, mut stalled) = mpsc::unbounded_channel();
    let (_keep_running, shutdown) = tokio::sync::oneshot::channel();
    let first = spawn_consumer(&suite, &approval_app, Some(ids[4]), stalled_tx, shutdown);
    let stalled_on = tokio::time::timeout(DEADLINE, stalled.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stalled_on, ids[4]);
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let expected: Vec<(i64, i32)> = ids[..4].iter().map(|id| (*id, 1)).collect();
    assert_eq!(
        applied(&admin).await,
        expected,
        "the killed transaction left no trace"
    );

    // While it is down, events are written out of id order: A (smaller id) commits last.
    let mut a = suite.identity_app.begin().await.unwrap();
    let a_id = append_on(&mut a, 100).await;
    let b_id = append_committed(&suite.identity_app, 101..102).await[0];
    assert!(a_id < b_id);

    // Restarted: it resumes from its stored cursor.
    let (stalled_tx, _stalled) = mpsc::unbounded_channel();
    let (stop, shutdown) = tokio::sync::oneshot::channel();
    let second = spawn_consumer(&suite, &approval_app, None, stalled_tx, shutdown);
    let before_a = ids.len();
    eventually(DEADLINE, "the events committed before A", || {
        let admin = &admin;
        async move { (applied(admin).await.len() == before_a).then_some(()) }
    })
    .await
    .unwrap();
    a.commit().await.unwrap();
    let all = eventually(DEADLINE, "A and B", || {
        let admin = &admin;
        async move {
            let all = applied(admin).await;
            (all.len() == before_a + 2).then_some(all)
        }
    })
    .await
    .unwrap();

    let expected: Vec<(i64, i32)> = ids
        .iter()
        .chain([&a_id, &b_id])
        .map(|id| (*id, 1))
        .collect();
    assert_eq!(all, expected, "every event once, A before B");

    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, second)
        .await
        .expect("the consumer stops on shutdown")
        .unwrap();
    let consumer = Consumer::new(approval_app.clone(), "approval", "identity");
    let stored = consumer.cursor().await.unwrap().unwrap();
    assert_eq!(stored.feed(), "identity");
    let mut from_stored = watch(suite.identity.channel().await.unwrap(), &stored.encode())
        .await
        .unwrap();
    assert_quiet(&mut from_stored, "the stored cursor is past every event").await;
}

#[tokio::test]
async fn an_event_carries_the_trace_context_of_the_call_that_appended_it() {
    let suite = suite().await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let span = tracing::info_span!("a call that registers a user");
    telemetry::continue_trace(&span, &format!("00-{caller_trace}-{caller_span}-01"), "");
    async {
        let mut tx = suite.identity_app.begin().await.unwrap();
        identity_service::record_user_event(&mut tx, &registered(1))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    .instrument(span)
    .await;
    // Appended outside any traced call: no trace context.
    append_committed(&suite.identity_app, 2..3).await;

    let mut stream = watch(suite.identity.channel().await.unwrap(), "")
        .await
        .unwrap();
    let traced = next(&mut stream).await;
    let untraced = next(&mut stream).await;
    let parts: Vec<&str> = traced.traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{}", traced.traceparent);
    assert_eq!(parts[1], caller_trace, "the caller's trace");
    assert_ne!(
        parts[2], caller_span,
        "the appending span, a child of the caller's"
    );
    assert_eq!(traced.user, registered(1).user);
    assert_eq!(untraced.traceparent, "");

    // A consumer applying the event does its work inside the same trace.
    let approval_app = suite.db.app_pool(approval_service::SERVICE.schema).unwrap();
    let consumer = Consumer::new(approval_app, "approval", "identity");
    let received = Received::parse(
        &traced.cursor.clone(),
        &traced.traceparent.clone(),
        &traced.tracestate.clone(),
        traced,
    )
    .unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let outcome = consumer
        .apply(&received, |_conn: &mut PgConnection, _event: &UserEvent| {
            let _ = seen_tx.send(telemetry::current_trace_context().0);
            Box::pin(async { Ok::<(), ApiError>(()) })
        })
        .await
        .unwrap();
    assert_eq!(outcome, Applied::Applied);
    let during_effect = seen.recv().await.unwrap();
    assert_eq!(
        during_effect.split('-').nth(1),
        Some(caller_trace),
        "{during_effect}"
    );
    // Applying it again is a redelivery: nothing happens.
    let again: Result<Applied, ApiError> = consumer
        .apply(&received, |_conn: &mut PgConnection, _event: &UserEvent| {
            Box::pin(async { panic!("a redelivered event took effect") })
        })
        .await;
    assert_eq!(again.unwrap(), Applied::AlreadyApplied);
}

#[tokio::test]
async fn a_malformed_cursor_or_one_of_another_feed_is_invalid_argument() {
    let suite = suite().await;
    // A real cursor, but of the approval schema's feed.
    let approval_app = suite.db.app_pool(approval_service::SERVICE.schema).unwrap();
    let mut tx = approval_app.begin().await.unwrap();
    events::append(
        &mut tx,
        "approval",
        NewEvent {
            event_type: "test",
            subject: "approvalRequests/0190f7a0-0000-7000-8000-000000000000",
            payload: b"",
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut approval_feed = std::pin::pin!(events::feed(
        approval_app,
        "approval",
        None,
        Duration::from_millis(50)
    ));
    let foreign = tokio::time::timeout(DEADLINE, approval_feed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .cursor
        .encode();

    for after in ["not-a-cursor", "djE6aWRlbnRpdHk6MTox!", foreign.as_str()] {
        let status = watch(suite.identity.channel().await.unwrap(), after)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{after}: {status:?}");
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "INVALID_CURSOR");
        assert_eq!(info.domain, IDENTITY.error_domain);
    }
}

#[tokio::test]
async fn a_watch_stream_outlives_the_request_timeout() {
    install_telemetry();
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let settings = [("PORTAL_SERVER__REQUEST_TIMEOUT_MS", "300")];
    let identity = TestService::start_with(IDENTITY, db.url(), &settings)
        .await
        .unwrap();
    let mut stream = watch(identity.channel().await.unwrap(), "").await.unwrap();
    // Idle for several request timeouts: the call's deadline bounds the call, not the stream.
    assert_quiet(&mut stream, "nothing was appended").await;
    let ids = append_committed(&db.app_pool(IDENTITY.schema).unwrap(), 0..1).await;
    assert_eq!(next(&mut stream).await.sequence, ids[0]);
}

#[tokio::test]
async fn a_portal_user_may_not_watch_the_deployments_user_events() {
    let suite = suite().await;
    let mut client = IdentityServiceClient::new(suite.identity.channel().await.unwrap());
    let mut request = tonic::Request::new(WatchUserEventsRequest::default());
    let token = portal_testkit::keys::token(
        portal_platform::auth::Kind::User,
        &format!("{TENANT}/users/0190f7a0-0000-7000-8000-000000000001"),
        Some(TENANT),
        &["TENANT_ADMIN"],
    );
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    let refused = client.watch_user_events(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let info = refused.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "CALLER_NOT_ALLOWED");
    assert_eq!(info.domain, "portal.identity");
}

#[tokio::test]
async fn a_draining_server_ends_watch_streams_at_once_so_watchers_resume_elsewhere() {
    let suite = suite().await;
    append_committed(&suite.identity_app, 0..1).await;
    let mut stream = watch(suite.identity.channel().await.unwrap(), "")
        .await
        .unwrap();
    let first = next(&mut stream).await;
    assert!(!first.cursor.is_empty());

    // The default grace period is 20 s; the stream must not hold the drain that long.
    let stopping = tokio::spawn(suite.identity.stop());
    let ended = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("the stream outlived the drain");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let reason = status
        .get_error_details()
        .error_info()
        .unwrap()
        .reason
        .clone();
    assert_eq!(reason, "SERVER_DRAINING");
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("the server did not finish draining")
        .unwrap()
        .unwrap();
}

/// Makes events `ids` look `days` old (as the superuser: nothing else can change them).
async fn make_old(admin: &PgPool, ids: &[i64], days: i32) {
    sqlx::query(
        "UPDATE identity.outbox SET event_time = now() - make_interval(days => $2) \
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .bind(days)
    .execute(admin)
    .await
    .unwrap();
}

/// The status a watch from `after` fails with, at the call or as its first message.
async fn watch_failure(channel: Channel, after: &str) -> tonic::Status {
    match watch(channel, after).await {
        Err(status) => status,
        Ok(mut stream) => tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("an answer within the deadline")
            .expect_err("the watch fails"),
    }
}

#[tokio::test]
async fn events_past_retention_are_forgotten_oldest_first_and_older_cursors_expire() {
    let suite = suite().await;
    let ids = append_committed(&suite.identity_app, 0..5).await;
    let mut stream = watch(suite.identity.channel().await.unwrap(), "")
        .await
        .unwrap();
    let after_first = next(&mut stream).await.cursor;
    let after_second = next(&mut stream).await.cursor;
    drop(stream);

    // The first, second and fourth are past the 30 days; the third is not, so only the first
    // two go: what is forgotten is always the oldest part of the feed, with no holes.
    let admin = suite.db.admin_pool().await.unwrap();
    make_old(&admin, &[ids[0], ids[1], ids[3]], 31).await;
    let mut conn = suite.identity_app.acquire().await.unwrap();
    let forgotten = events::forget_old_events(&mut conn, "identity", 30, 1000).await;
    assert_eq!(forgotten.unwrap(), 2);
    let kept: Vec<i64> = sqlx::query_scalar("SELECT id FROM identity.outbox ORDER BY id")
        .fetch_all(&admin)
        .await
        .unwrap();
    assert_eq!(kept, ids[2..]);

    // The app role asks the owner's function to forget; it cannot shorten the retention below
    // the contracts' 30 days (nor by giving none), nor delete an event itself.
    assert!(
        events::forget_old_events(&mut conn, "identity", 1, 1000)
            .await
            .is_err()
    );
    let null_days: Option<i64> = sqlx::query_scalar("SELECT identity.forget_events(NULL, 1000)")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(null_days, None, "a NULL retention forgets nothing");
    let deleted = sqlx::query("DELETE FROM identity.outbox")
        .execute(&mut *conn)
        .await;
    assert!(deleted.is_err(), "the app role deleted events");

    // A new watcher starts at the oldest kept event; one at the newest forgotten event goes on;
    // one before it has lost events and is told so.
    let channel = suite.identity.channel().await.unwrap();
    let mut from_start = watch(channel.clone(), "").await.unwrap();
    let mut resumed = watch(channel.clone(), &after_second).await.unwrap();
    for id in &ids[2..] {
        assert_eq!(next(&mut from_start).await.sequence, *id);
        assert_eq!(next(&mut resumed).await.sequence, *id);
    }
    let expired = watch_failure(channel, &after_first).await;
    assert_eq!(expired.code(), Code::OutOfRange, "{expired:?}");
    let info = expired.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "CURSOR_EXPIRED");
}

#[tokio::test]
async fn a_cursor_ahead_of_the_feed_is_refused_as_made_up() {
    let suite = suite().await;
    let ids = append_committed(&suite.identity_app, 0..2).await;
    let channel = suite.identity.channel().await.unwrap();
    let mut stream = watch(channel.clone(), "").await.unwrap();
    let newest = {
        next(&mut stream).await;
        next(&mut stream).await
    };
    assert_eq!(newest.sequence, ids[1]);

    // The newest event's own cursor is fine; one a transaction further on was never given out.
    let mut at_newest = watch(channel.clone(), &newest.cursor).await.unwrap();
    assert_quiet(&mut at_newest, "nothing after the newest event").await;
    let (tx, id): (String, i64) = sqlx::query_as(
        "SELECT tx::text, id FROM identity.outbox ORDER BY tx DESC, id DESC LIMIT 1",
    )
    .fetch_one(&suite.identity_app)
    .await
    .unwrap();
    let tx: u64 = tx.parse().unwrap();
    let made_up = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("v1:identity:{}:{id}", tx + 1))
    };
    let refused = watch_failure(channel, &made_up).await;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let info = refused.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "INVALID_CURSOR");
}
