//! gRPC handlers of `portal.approval.v1.ApprovalService`. Methods not yet implemented answer
//! `UNIMPLEMENTED` through the generated default stubs.

use portal_proto::approval::v1::approval_service_server::ApprovalService;

/// Handlers; they gain the database pool and clients as the methods are implemented.
#[derive(Debug)]
pub struct ApprovalServiceApi;

#[tonic::async_trait]
impl ApprovalService for ApprovalServiceApi {}
