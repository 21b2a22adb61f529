//! Tests that span the four services live in `tests/`; this library holds what they share.

use portal_platform::ServiceDef;
use portal_platform::db::Schema;

/// Every service of the suite.
pub const ALL_SERVICES: [&ServiceDef; 4] = [
    &identity_service::SERVICE,
    &consent_service::SERVICE,
    &approval_service::SERVICE,
    &transfer_service::SERVICE,
];

/// Every service's schema, for a test database holding all four.
pub fn all_schemas() -> Vec<Schema> {
    ALL_SERVICES.iter().map(|def| def.schema).collect()
}

pub mod suite;
