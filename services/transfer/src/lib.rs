//! The transfer service: The registry of group entities and subcontractors, and the decision and log of every transfer of PI (Articles 3, 4).
//!
//! `api` holds the gRPC handlers, `domain` the rules of Art. 3 and 4 (no I/O), `leaf` the
//! records as Merkle leaves, `sequencer` group commit, `tree` tree heads, proofs and checkpoints, `update` UpdateEntity's
//! field mask, `store` the SQL and `workers` the consumer of identity's deletions and the
//! checkpoint writer.

mod api;
mod domain;
mod leaf;
mod sequencer;
mod store;
mod tree;
mod update;
mod workers;

use portal_platform::db::Schema;
use portal_platform::{ServiceContext, ServiceDef};
use portal_proto::transfer::v1::affiliate_transfer_service_server::AffiliateTransferServiceServer;
use sqlx::migrate::Migrator;
use tonic::service::Routes;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The transfer service as the platform serves it.
pub static SERVICE: ServiceDef = ServiceDef {
    name: "transfer",
    error_domain: "portal.transfer",
    grpc_service: "portal.transfer.v1.AffiliateTransferService",
    descriptor_set: portal_proto::transfer::v1::FILE_DESCRIPTOR_SET,
    schema: Schema {
        name: "transfer",
        migrations: &MIGRATIONS,
    },
    routes,
};

fn routes(context: ServiceContext) -> anyhow::Result<Routes> {
    let max = context.max_message_bytes();
    let server = AffiliateTransferServiceServer::new(api::TransferServiceApi::new(context)?)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    Ok(Routes::new(server))
}
