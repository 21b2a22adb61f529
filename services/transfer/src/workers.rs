//! Transfer's background work: the consumer of identity's user events. A DELETED user is
//! recorded as a deleted subject, so every later transfer of theirs is refused (Art. 5.3),
//! even if consent were ever to forget the withdrawal. (Consent already refuses from the
//! moment DeleteUser returns; this is the second, independent source.)

use chrono::Utc;
use portal_clients::identity::Identity;
use portal_platform::{ApiError, db};
use portal_proto::identity::v1::UserEvent;
use portal_proto::identity::v1::user_event::Type as UserEventType;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::SERVICE;
use crate::store;

/// Starts the consumer once the schema is migrated; it stops when the server drains.
pub fn start(pool: PgPool, identity: Identity, draining: watch::Receiver<bool>) {
    tokio::spawn(async move {
        if !db::wait_until_ready(&pool, SERVICE.schema, draining.clone()).await {
            return;
        }
        let mut stop = draining.clone();
        identity
            .consume_user_events(
                pool,
                SERVICE.schema.name,
                |conn: &mut PgConnection, event: &UserEvent| Box::pin(apply(conn, event)),
                async move {
                    let _ = stop.wait_for(|drain| *drain).await;
                },
            )
            .await;
    });
}

async fn apply(conn: &mut PgConnection, event: &UserEvent) -> Result<(), ApiError> {
    if event.r#type() == UserEventType::Deleted {
        store::record_deleted_subject(conn, &event.user, Utc::now()).await?;
        tracing::info!(subject = %event.user, "deleted subject recorded; transfers refused");
    }
    Ok(())
}
