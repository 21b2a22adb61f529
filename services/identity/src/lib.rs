//! The identity service: Tenants, Portal Users (the three PI fields of Article 2, encrypted), registration, sign-in, deletion and the user's own data export.
//!
//! `api` holds the gRPC handlers; the domain rules and the SQL arrive with the issues that
//! implement the methods.

mod api;

use portal_platform::db::Schema;
use portal_platform::{ServiceContext, ServiceDef};
use portal_proto::identity::v1::identity_service_server::IdentityServiceServer;
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

fn routes(context: ServiceContext) -> Routes {
    let max = context.max_message_bytes();
    let server = IdentityServiceServer::new(api::IdentityServiceApi)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    Routes::new(server)
}
