//! Approval's background work, started with the server and stopped when it drains:
//!
//! - the expiry sweeper, a single writer across replicas, records requests whose expire_time
//!   has passed (they read as EXPIRED from that instant anyway; the sweeper makes it stored
//!   history and an event);
//! - the deletion consumer applies identity's user feed exactly once: a DELETED user's
//!   PENDING requests are WITHDRAWN (Art. 5.3) and their tokens refused from then on.

use std::time::Duration;

use chrono::Utc;
use portal_platform::names::user_ids;
use portal_platform::single_writer::SingleWriter;
use portal_platform::{ApiError, ServiceContext};
use portal_proto::identity::v1::UserEvent;
use portal_proto::identity::v1::user_event::Type as UserEventType;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::SERVICE;
use crate::domain::{REASON_REQUESTER_DELETED, SUITE_ACTOR, State};
use crate::store;
use crate::view::{self, event_for};
use portal_clients::identity::Identity;

/// Expiries recorded per sweeper transaction.
const SWEEP_BATCH: i64 = 500;

/// Starts both once the schema is migrated.
pub fn start(context: ServiceContext, identity: Identity, sweep_interval: Duration) {
    tokio::spawn(async move {
        if !context.until_ready().await {
            return;
        }
        let (pool, draining) = (context.pool, context.draining);
        tokio::join!(
            sweep(pool.clone(), sweep_interval, draining.clone()),
            consume_user_events(pool, identity, draining),
        );
    });
}

async fn drained(mut draining: watch::Receiver<bool>) {
    let _ = draining.wait_for(|drain| *drain).await;
}

async fn sweep(pool: PgPool, interval: Duration, draining: watch::Receiver<bool>) {
    let writer = SingleWriter::new(
        "approval.expiry-sweeper",
        interval.max(Duration::from_secs(1)),
    );
    writer
        .run(&pool, drained(draining.clone()), |conn| {
            let draining = draining.clone();
            Box::pin(async move {
                loop {
                    expire_due(conn).await?;
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        () = drained(draining.clone()) => return Ok(()),
                    }
                }
            })
        })
        .await;
}

/// Records every passed expiry, a batch per transaction.
async fn expire_due(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    loop {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let expired = store::expire_due(&mut tx, Utc::now(), SWEEP_BATCH).await?;
        for row in &expired {
            view::emit(&mut tx, event_for(State::Expired), row, None).await?;
        }
        tx.commit().await?;
        if expired.len() < usize::try_from(SWEEP_BATCH).unwrap_or(usize::MAX) {
            return Ok(());
        }
    }
}

async fn consume_user_events(pool: PgPool, identity: Identity, draining: watch::Receiver<bool>) {
    identity
        .consume_user_events(
            pool,
            SERVICE.schema.name,
            |conn: &mut PgConnection, event: &UserEvent| Box::pin(apply_user_event(conn, event)),
            drained(draining),
        )
        .await;
}

/// A deleted user (Art. 5.3): their PENDING requests are withdrawn by the suite, their tokens
/// refused here from now on, and their open watch streams ended. Other user events change
/// nothing here.
async fn apply_user_event(conn: &mut PgConnection, event: &UserEvent) -> Result<(), ApiError> {
    if event.r#type() != UserEventType::Deleted {
        return Ok(());
    }
    let Some((_, user)) = user_ids(&event.user) else {
        tracing::error!(user = %event.user, "a DELETED event names no user; skipped");
        return Ok(());
    };
    let now = Utc::now();
    // Serialised with the user's own sends: a request sent while the deletion is applied is
    // either seen here and withdrawn, or refused there.
    store::lock_user(conn, &event.user).await?;
    store::record_deleted_user(conn, &event.user, now).await?;
    for pending in store::pending_sent_by(conn, user).await? {
        if pending.expire_time <= now {
            continue; // already EXPIRED; the sweeper records it
        }
        let row = store::decide(
            conn,
            pending.id,
            State::Withdrawn,
            SUITE_ACTOR,
            REASON_REQUESTER_DELETED,
            None,
            now,
        )
        .await?;
        view::emit(conn, event_for(State::Withdrawn), &row, None).await?;
    }
    // Ends the user's own open watch streams once they have seen those withdrawals.
    view::emit_user_deleted(conn, &event.user).await?;
    tracing::info!(user = %event.user, "deleted user's pending approval requests withdrawn");
    Ok(())
}
