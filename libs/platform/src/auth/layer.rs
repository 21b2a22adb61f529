//! The server layer that authenticates every call except health and reflection. The handler
//! finds the [`Caller`] in the request's extensions (`auth::caller(&request)`); while the
//! handler runs, the caller is also the task's [`current_caller`], so calls made on its behalf
//! can forward its token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::Caller;
use super::keys::Authenticator;
use crate::error::ApiError;

tokio::task_local! {
    static CURRENT_CALLER: Caller;
}

/// Runs `work` as serving `caller`: [`current_caller`] returns it inside.
pub async fn serve_as<F: Future>(caller: Caller, work: F) -> F::Output {
    CURRENT_CALLER.scope(caller, work).await
}

/// The caller of the request this task is serving, if any.
pub fn current_caller() -> Option<Caller> {
    CURRENT_CALLER.try_with(Caller::clone).ok()
}

#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
    domain: &'static str,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>, domain: &'static str) -> Self {
        Self {
            authenticator,
            domain,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
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
        if crate::server::is_infrastructure(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        match self.layer.authenticator.authenticate(authorization) {
            Ok(caller) => {
                request.extensions_mut().insert(caller.clone());
                Box::pin(serve_as(caller, inner.call(request)))
            }
            Err(refused) => {
                tracing::info!(reason = refused.reason(), "call refused: {refused}");
                let status: tonic::Status =
                    ApiError::unauthenticated(refused.reason(), refused.to_string())
                        .in_domain(self.layer.domain)
                        .into();
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
