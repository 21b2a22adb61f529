//! One mapping from failures to gRPC statuses (AIP-193): a code, a message for the caller, a
//! stable UPPER_SNAKE `ErrorInfo.reason` callers can match on, and `BadRequest` field
//! violations. Internal detail is logged, never sent: messages must not carry personal
//! information, and database errors can quote row values.

use std::collections::HashMap;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// A failure as the caller will see it. Each service maps its own error enum into this type
/// in one place; handlers return it (or that enum) and never build a `Status` by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(Box<Failure>);

/// Boxed so that `Result<_, ApiError>` stays small on the happy path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    code: Code,
    reason: &'static str,
    message: String,
    domain: &'static str,
    violations: Vec<(String, String)>,
    metadata: HashMap<String, String>,
    /// `google.rpc.ResourceInfo` (type, name) of the resource a NOT_FOUND is about.
    resource: Option<(String, String)>,
}

impl ApiError {
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Self(Box::new(Failure {
            code,
            reason,
            message: message.into(),
            domain: "portal",
            violations: Vec::new(),
            metadata: HashMap::new(),
            resource: None,
        }))
    }

    /// Malformed input. Add the offending fields with [`ApiError::violation`].
    pub fn invalid_argument(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, reason, message)
    }

    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, reason, message)
    }

    pub fn already_exists(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::AlreadyExists, reason, message)
    }

    /// The resource's state forbids the action.
    pub fn failed_precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, reason, message)
    }

    /// A concurrent change won (stale etag, lost race); the caller may re-read and retry.
    pub fn aborted(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Aborted, reason, message)
    }

    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, reason, message)
    }

    pub fn permission_denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, reason, message)
    }

    /// A dependency (the database, another service) cannot answer; retrying later may work.
    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, reason, message)
    }

    /// A bug or an unexpected state. `context` is logged here and not sent to the caller.
    pub fn internal(context: impl std::fmt::Display) -> Self {
        tracing::error!(error = %context, "internal error");
        Self::new(Code::Internal, "INTERNAL", "internal error")
    }

    /// Names the field and what is wrong with it, as a `BadRequest` field violation.
    pub fn violation(mut self, field: impl Into<String>, description: impl Into<String>) -> Self {
        self.0.violations.push((field.into(), description.into()));
        self
    }

    /// Names the resource the error is about (`google.rpc.ResourceInfo`): its type, e.g.
    /// `portal.identity.v1.User`, and the name the caller gave. Never PI.
    pub fn resource(mut self, resource_type: &str, name: &str) -> Self {
        self.0.resource = Some((resource_type.to_owned(), name.to_owned()));
        self
    }

    /// Adds `ErrorInfo` metadata (ids and states only: never personal information).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the `ErrorInfo.domain`: the service the reason belongs to (`portal.<service>`).
    pub fn in_domain(mut self, domain: &'static str) -> Self {
        self.0.domain = domain;
        self
    }

    pub fn code(&self) -> Code {
        self.0.code
    }

    pub fn reason(&self) -> &'static str {
        self.0.reason
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}: {}", self.0.code, self.0.reason, self.0.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        let error = *error.0;
        let mut details = ErrorDetails::new();
        details.set_error_info(error.reason, error.domain, error.metadata);
        for (field, description) in error.violations {
            details.add_bad_request_violation(field, description);
        }
        if let Some((resource_type, name)) = error.resource {
            details.set_resource_info(resource_type, name, "", error.message.clone());
        }
        tonic::Status::with_error_details(error.code, error.message, details)
    }
}

/// Reason callers see when this service's database cannot be reached.
pub const DATABASE_UNAVAILABLE: &str = "DATABASE_UNAVAILABLE";

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            tracing::warn!(error = %error, "database unavailable");
            return Self::unavailable(DATABASE_UNAVAILABLE, "the database is unavailable");
        }
        if let sqlx::Error::Database(db) = &error {
            // Serialization failure or deadlock: the transaction lost a race and may be retried.
            if matches!(db.code().as_deref(), Some("40001" | "40P01")) {
                return Self::aborted("CONCURRENT_UPDATE", "a concurrent change won; retry");
            }
            // Only the SQLSTATE is logged: a database message can quote the row's values.
            return Self::internal(format_args!(
                "database error {}",
                db.code().as_deref().unwrap_or("?")
            ));
        }
        Self::internal(format_args!("database error: {}", error_kind(&error)))
    }
}

/// Whether the error means the database cannot be reached (as opposed to a failed statement).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P0x: shutting down or starting; 53300: too
            // many connections.
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }),
        _ => false,
    }
}

fn error_kind(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::RowNotFound => "row not found",
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => "decode",
        sqlx::Error::Encode(_) => "encode",
        sqlx::Error::Migrate(_) => "migration",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_reason_domain_and_field_violations() {
        let status: tonic::Status = ApiError::invalid_argument("INVALID_EMAIL", "email is invalid")
            .violation("user.email", "not an email address")
            .in_domain("identity.portal")
            .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "email is invalid");
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "INVALID_EMAIL");
        assert_eq!(info.domain, "identity.portal");
        let bad = details.bad_request().unwrap();
        assert_eq!(bad.field_violations[0].field, "user.email");
    }

    #[test]
    fn a_lost_database_is_unavailable_not_internal() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        for error in [sqlx::Error::PoolTimedOut, sqlx::Error::Io(io)] {
            let api = ApiError::from(error);
            assert_eq!(api.code(), Code::Unavailable);
            assert_eq!(api.reason(), DATABASE_UNAVAILABLE);
        }
    }

    #[test]
    fn internal_errors_do_not_reveal_their_context() {
        let status: tonic::Status = ApiError::internal("row held alice@example.com").into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("alice"));
    }
}
