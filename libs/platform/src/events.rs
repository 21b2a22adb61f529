//! Events: a transactional outbox and a resumable feed (issue 3).

use crate::db::PlatformTable;

/// The outbox and consumer-cursor tables.
pub(crate) const TABLES: &[PlatformTable] = &[];
