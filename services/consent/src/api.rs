//! gRPC handlers of `portal.consent.v1.ConsentService`. Methods not yet implemented answer
//! `UNIMPLEMENTED` through the generated default stubs.

use portal_proto::consent::v1::consent_service_server::ConsentService;

/// Handlers; they gain the database pool and clients as the methods are implemented.
#[derive(Debug)]
pub struct ConsentServiceApi;

#[tonic::async_trait]
impl ConsentService for ConsentServiceApi {}
