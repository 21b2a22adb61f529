//! gRPC handlers of `portal.identity.v1.IdentityService`. Methods not yet implemented answer
//! `UNIMPLEMENTED` through the generated default stubs.

use portal_proto::identity::v1::identity_service_server::IdentityService;

/// Handlers; they gain the database pool and clients as the methods are implemented.
#[derive(Debug)]
pub struct IdentityServiceApi;

#[tonic::async_trait]
impl IdentityService for IdentityServiceApi {}
