//! Authentication of every call except health and reflection (an [`Admission`]). The handler
//! finds the [`Caller`] in the request's extensions (`auth::caller(&request)`); while the
//! handler runs, the caller is also the task's [`current_caller`], so calls made on its behalf
//! can forward its token.

use std::future::Future;
use std::sync::Arc;

use super::Caller;
use super::keys::Authenticator;
use crate::admission::Admission;
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

/// Refuses calls without a valid token: UNAUTHENTICATED with the reason (`docs/auth.md`).
#[derive(Debug, Clone)]
pub struct Authenticate(pub Arc<Authenticator>);

impl Admission for Authenticate {
    fn admit(&self, headers: &http::HeaderMap) -> Result<Option<Caller>, ApiError> {
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        match self.0.authenticate(authorization) {
            Ok(caller) => Ok(Some(caller)),
            Err(refused) => {
                tracing::info!(reason = refused.reason(), "call refused: {refused}");
                Err(ApiError::unauthenticated(
                    refused.reason(),
                    refused.to_string(),
                ))
            }
        }
    }
}
