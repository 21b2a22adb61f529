//! Transfer's background work:
//!
//! - the consumer of identity's user events: a DELETED user is recorded as a deleted subject,
//!   so every later transfer of theirs is refused (Art. 5.3), even if consent were ever to
//!   forget the withdrawal (consent already refuses from the moment DeleteUser returns; this is
//!   the second, independent source);
//! - the checkpoint writer, a single writer across replicas: whenever the log has grown it signs
//!   the new tree head, checking every interval (so at least every second while records arrive);
//! - the checkpoint monitor, on every replica: how far the newest checkpoint is behind the log,
//!   for the metrics, read from the database whoever signs (or if nobody does).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use portal_clients::identity::Identity;
use portal_platform::auth::keys::TokenSigner;
use portal_platform::single_writer::SingleWriter;
use portal_platform::{ApiError, ServiceContext};
use portal_proto::identity::v1::UserEvent;
use portal_proto::identity::v1::user_event::Type as UserEventType;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::SERVICE;
use crate::{store, tree};

/// How often the checkpoint writer looks for growth.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// How often every replica measures the checkpoint lag.
const MONITOR_INTERVAL: Duration = Duration::from_secs(5);

/// Starts them once the schema is migrated; they stop when the server drains.
pub fn start(
    context: ServiceContext,
    identity: Identity,
    signer: Option<Arc<TokenSigner>>,
    origin: String,
) {
    tokio::spawn(async move {
        if !context.until_ready().await {
            return;
        }
        let (pool, draining) = (context.pool, context.draining);
        let consume = identity.consume_user_events(
            pool.clone(),
            SERVICE.schema.name,
            |conn: &mut PgConnection, event: &UserEvent| Box::pin(apply(conn, event)),
            drained(draining.clone()),
        );
        let monitor = monitor_checkpoints(pool.clone(), draining.clone());
        match signer {
            Some(signer) => {
                tokio::join!(
                    consume,
                    monitor,
                    checkpoints(pool, signer, origin, draining)
                );
            }
            None => {
                tracing::error!("no auth.signing_key: the transfer log cannot be checkpointed");
                tokio::join!(consume, monitor);
            }
        }
    });
}

async fn drained(mut draining: watch::Receiver<bool>) {
    let _ = draining.wait_for(|drain| *drain).await;
}

async fn checkpoints(
    pool: PgPool,
    signer: Arc<TokenSigner>,
    origin: String,
    draining: watch::Receiver<bool>,
) {
    let writer = SingleWriter::new("transfer.checkpointer", Duration::from_secs(1));
    writer
        .run(&pool, drained(draining.clone()), |conn| {
            let (signer, origin, draining) = (signer.clone(), origin.clone(), draining.clone());
            Box::pin(async move {
                loop {
                    checkpoint_if_grown(conn, &signer, &origin).await?;
                    tokio::select! {
                        () = tokio::time::sleep(CHECKPOINT_INTERVAL) => {}
                        () = drained(draining.clone()) => return Ok(()),
                    }
                }
            })
        })
        .await;
}

/// Signs the current tree head if no checkpoint covers it yet (the empty log included).
async fn checkpoint_if_grown(
    conn: &mut PgConnection,
    signer: &TokenSigner,
    origin: &str,
) -> Result<(), sqlx::Error> {
    let size = store::log_size(&mut *conn).await?;
    let latest = store::latest_checkpoint(&mut *conn).await?;
    if latest.is_some_and(|c| c.tree_size >= size) {
        return Ok(());
    }
    let checkpoint = tree::sign(conn, signer, origin, size)
        .await
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    store::insert_checkpoint(conn, &checkpoint).await?;
    tracing::debug!(tree_size = size, "checkpoint signed");
    Ok(())
}

/// Every `MONITOR_INTERVAL` until the drain: records waiting for a checkpoint, and how long the
/// oldest of them has waited. Read-only, so every replica reports the same truth and the
/// lag still grows when no replica can sign.
async fn monitor_checkpoints(pool: PgPool, draining: watch::Receiver<bool>) {
    loop {
        match checkpoint_lag(&pool).await {
            Ok((waiting, age)) => portal_platform::metrics::checkpoint_lag(waiting, age),
            Err(e) => tracing::debug!(error = %e, "checkpoint lag not measured"),
        }
        tokio::select! {
            () = tokio::time::sleep(MONITOR_INTERVAL) => {}
            () = drained(draining.clone()) => return,
        }
    }
}

async fn checkpoint_lag(pool: &PgPool) -> Result<(u64, Duration), sqlx::Error> {
    let size = store::log_size(pool).await?;
    let covered = store::latest_checkpoint(pool)
        .await?
        .map_or(0, |c| c.tree_size);
    if size <= covered {
        return Ok((0, Duration::ZERO));
    }
    // The oldest record no checkpoint covers yet: the first after the newest checkpoint.
    let oldest = store::record_time(pool, covered).await?;
    let waited = oldest
        .and_then(|time| (Utc::now() - time).to_std().ok())
        .unwrap_or_default();
    Ok((u64::try_from(size - covered).unwrap_or(0), waited))
}

async fn apply(conn: &mut PgConnection, event: &UserEvent) -> Result<(), ApiError> {
    if event.r#type() == UserEventType::Deleted {
        store::record_deleted_subject(conn, &event.user, Utc::now()).await?;
        tracing::info!(subject = %event.user, "deleted subject recorded; transfers refused");
    }
    Ok(())
}
