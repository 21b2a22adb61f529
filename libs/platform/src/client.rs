//! Outgoing gRPC calls: every call a service makes to another goes through [`connect`], so
//! each one carries the W3C trace context of the work that caused it (and, from issue 3, the
//! caller's credentials).

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::telemetry;

/// A channel whose calls carry the current trace context.
pub type OutgoingChannel = InterceptedService<Channel, OutgoingContext>;

/// Adds what every outgoing call must carry.
#[derive(Debug, Clone, Default)]
pub struct OutgoingContext;

impl tonic::service::Interceptor for OutgoingContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        telemetry::inject_current(request.metadata_mut());
        Ok(request)
    }
}

/// A lazily connecting channel to `uri` (`http://host:port`); a dead peer surfaces as
/// `UNAVAILABLE` on the call, not as a start-up failure.
pub fn connect(uri: &str, timeout: Duration) -> Result<OutgoingChannel, tonic::transport::Error> {
    let channel = Endpoint::from_shared(uri.to_owned())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_lazy();
    Ok(InterceptedService::new(channel, OutgoingContext))
}
