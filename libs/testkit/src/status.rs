//! What tests read from a failed call: the `ErrorInfo` reason and the `BadRequest` fields.

use tonic::{Code, Status};

/// The ErrorInfo reason of a failed call ("" if none).
pub fn reason(status: &Status) -> String {
    tonic_types::StatusExt::get_error_details(status)
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// The fields a BadRequest names, in order.
pub fn violations(status: &Status) -> Vec<String> {
    tonic_types::StatusExt::get_details_bad_request(status)
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Asserts the call failed with `code` and `reason`; returns the status for further checks.
#[allow(clippy::panic, reason = "a test assertion")]
pub fn assert_error<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    expected: &str,
) -> Status {
    let status = match result {
        Ok(answer) => panic!("the call should have failed, but answered {answer:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), expected, "{status:?}");
    status
}
