//! The approval service: Approval requests between tenants (sent and received), their lifecycle and the tenant connections they create.
//!
//! `api` holds the gRPC handlers, `domain` the rules (no I/O), `store` the SQL, `view` how rows
//! look to callers and the feed, and `workers` the expiry
//! sweeper and the consumer of identity's deletions.

mod api;
mod domain;
mod store;
mod view;
mod workers;

use portal_platform::db::Schema;
use portal_platform::{ServiceContext, ServiceDef};
use portal_proto::approval::v1::approval_service_server::ApprovalServiceServer;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The approval service as the platform serves it.
pub static SERVICE: ServiceDef = ServiceDef {
    name: "approval",
    error_domain: "portal.approval",
    grpc_service: "portal.approval.v1.ApprovalService",
    descriptor_set: portal_proto::approval::v1::FILE_DESCRIPTOR_SET,
    schema: Schema {
        name: "approval",
        migrations: &MIGRATIONS,
    },
    routes,
};

fn routes(context: ServiceContext) -> anyhow::Result<Routes> {
    let max = context.max_message_bytes();
    let server = ApprovalServiceServer::new(api::ApprovalServiceApi::new(context)?)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    Ok(Routes::new(server))
}
