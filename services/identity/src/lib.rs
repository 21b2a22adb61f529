//! The identity service: Tenants, Portal Users (the three PI fields of Article 2, encrypted), registration, sign-in, deletion and the user's own data export.
//!
//! `api` holds the gRPC handlers, `domain` the rules (no I/O), `crypto` the key hierarchy that
//! protects PI, and `store` the SQL; calls to consent go through `portal_clients`.

mod api;
mod crypto;
mod domain;
mod store;

use portal_platform::db::Schema;
use portal_platform::events::{self, NewEvent};
use portal_platform::{ServiceContext, ServiceDef};
use portal_proto::identity::v1::UserEvent;
use portal_proto::identity::v1::identity_service_server::IdentityServiceServer;
use sqlx::PgConnection;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The identity service as the platform serves it.
pub static SERVICE: ServiceDef = ServiceDef {
    name: "identity",
    error_domain: "portal.identity",
    grpc_service: "portal.identity.v1.IdentityService",
    descriptor_set: portal_proto::identity::v1::FILE_DESCRIPTOR_SET,
    schema: Schema {
        name: "identity",
        migrations: &MIGRATIONS,
    },
    routes,
};

fn routes(context: ServiceContext) -> anyhow::Result<Routes> {
    let max = context.max_message_bytes();
    let server = IdentityServiceServer::new(api::IdentityServiceApi::new(context)?)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    Ok(Routes::new(server))
}

/// `event_type` of every user event in identity's outbox; the suffix is the `UserEvent.Type`
/// name (`portal.identity.v1.UserEvent.TYPE_DELETED`). WatchUserEvents serves these.
pub const USER_EVENT_TYPE_PREFIX: &str = "portal.identity.v1.UserEvent.";

/// Records `event` in identity's outbox, on `conn` inside the transaction that makes the
/// change, so WatchUserEvents delivers it exactly when the change commits. Set `type`, `user`
/// and `tenant` (ids only, never PI); the feed fields (cursor, sequence, event time, trace
/// context) are ignored here and filled from the outbox row when the event is delivered.
pub async fn record_user_event(
    conn: &mut PgConnection,
    event: &UserEvent,
) -> Result<i64, sqlx::Error> {
    // The feed fields belong to the outbox row; storing them too would let them disagree.
    let payload = UserEvent {
        cursor: String::new(),
        sequence: 0,
        event_time: None,
        traceparent: String::new(),
        tracestate: String::new(),
        ..event.clone()
    };
    let event_type = format!("{USER_EVENT_TYPE_PREFIX}{}", event.r#type().as_str_name());
    events::append(
        conn,
        SERVICE.schema.name,
        NewEvent {
            event_type: &event_type,
            subject: &event.user,
            payload: &events::encode(&payload),
        },
    )
    .await
}
