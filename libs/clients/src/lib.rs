//! The suite's calls to its own services, one typed client per peer, each used as the call
//! graph in `docs/architecture.md` says: identity → consent (record, withdraw, read the
//! ledger), identity → transfer (where a user's data went); approval and transfer → identity (tenants, the user event feed); transfer →
//! consent (check). Each client calls as the calling service itself (its SERVICE token) through
//! the platform's outgoing channel, and turns a peer that cannot be reached into `UNAVAILABLE`
//! (`DEPENDENCY_UNAVAILABLE`, metadata `service`), so every caller fails closed the same way.

pub mod consent;
pub mod identity;
pub mod transfer;
