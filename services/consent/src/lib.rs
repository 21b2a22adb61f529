//! The consent service: Versioned terms and privacy policy, the append-only consent ledger, consent decisions and signed receipts (Articles 5-7).
//!
//! `api` holds the gRPC handlers, `domain` the rules (no I/O), `store` the SQL.

mod api;
mod domain;
mod receipt;
mod store;

use portal_platform::db::Schema;
use portal_platform::{ServiceContext, ServiceDef};
use portal_proto::consent::v1::consent_service_server::ConsentServiceServer;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The consent service as the platform serves it.
pub static SERVICE: ServiceDef = ServiceDef {
    name: "consent",
    error_domain: "portal.consent",
    grpc_service: "portal.consent.v1.ConsentService",
    descriptor_set: portal_proto::consent::v1::FILE_DESCRIPTOR_SET,
    schema: Schema {
        name: "consent",
        migrations: &MIGRATIONS,
    },
    routes,
};

fn routes(context: ServiceContext) -> anyhow::Result<Routes> {
    let max = context.max_message_bytes();
    let server = ConsentServiceServer::new(api::ConsentServiceApi::new(context))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    Ok(Routes::new(server))
}
