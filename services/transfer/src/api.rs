//! gRPC handlers of `portal.transfer.v1.AffiliateTransferService`. Methods not yet implemented answer
//! `UNIMPLEMENTED` through the generated default stubs.

use portal_proto::transfer::v1::affiliate_transfer_service_server::AffiliateTransferService;

/// Handlers; they gain the database pool and clients as the methods are implemented.
#[derive(Debug)]
pub struct AffiliateTransferServiceApi;

#[tonic::async_trait]
impl AffiliateTransferService for AffiliateTransferServiceApi {}
