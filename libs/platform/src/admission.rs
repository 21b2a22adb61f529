//! Checks a call must pass before any handler runs (authentication, database readiness), as
//! one tower layer. Health and reflection are always admitted: a load balancer asks health
//! and grpcurl asks reflection, with no credentials and whatever the database's state.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::auth::Caller;
use crate::auth::layer::serve_as;
use crate::error::ApiError;

/// One check on incoming calls.
pub trait Admission: Clone + Send + Sync + 'static {
    /// `Ok(Some(caller))` admits the call on behalf of `caller`, `Ok(None)` admits it as is,
    /// `Err` answers it with that error instead of running the handler.
    fn admit(&self, headers: &http::HeaderMap) -> Result<Option<Caller>, ApiError>;
}

/// Whether `path` is health or reflection.
pub fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// The layer applying one [`Admission`]; errors carry the service's `ErrorInfo` domain.
#[derive(Debug, Clone)]
pub struct AdmissionLayer<A> {
    admission: A,
    domain: &'static str,
}

impl<A> AdmissionLayer<A> {
    pub fn new(admission: A, domain: &'static str) -> Self {
        Self { admission, domain }
    }
}

impl<S, A: Clone> tower::Layer<S> for AdmissionLayer<A> {
    type Service = Admit<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Admit<S, A> {
    inner: S,
    layer: AdmissionLayer<A>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, A, B> tower::Service<http::Request<B>> for Admit<S, A>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    A: Admission,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if is_infrastructure(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        match self.layer.admission.admit(request.headers()) {
            Ok(Some(caller)) => {
                request.extensions_mut().insert(caller.clone());
                Box::pin(serve_as(caller, inner.call(request)))
            }
            Ok(None) => Box::pin(inner.call(request)),
            Err(refused) => {
                let status: tonic::Status = refused.in_domain(self.layer.domain).into();
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_reflection_are_infrastructure() {
        assert!(is_infrastructure("/grpc.health.v1.Health/Check"));
        assert!(is_infrastructure("/grpc.health.v1.Health/Watch"));
        assert!(is_infrastructure(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_infrastructure(
            "/portal.identity.v1.IdentityService/GetTenant"
        ));
    }
}
