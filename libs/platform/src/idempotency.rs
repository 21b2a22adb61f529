//! Idempotent requests by `request_id` (issue 3).

use crate::db::PlatformTable;

/// The request-record table.
pub(crate) const TABLES: &[PlatformTable] = &[];
