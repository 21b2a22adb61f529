//! What every portal service stands on, each mechanism in one place: configuration
//! ([`config`]), telemetry ([`telemetry`], [`metrics`]), the database and its roles ([`db`]), serving
//! ([`server`]), outgoing calls ([`client`]), errors as gRPC statuses ([`error`]), the binary
//! entry point ([`cli`]) and a private PostgreSQL from local binaries ([`local_pg`]).

pub mod admission;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod local_pg;
pub mod metrics;
pub mod names;
pub mod paging;
pub mod server;
pub mod single_writer;
pub mod telemetry;
pub mod time;
pub mod tls;

pub use error::ApiError;
pub use server::{ServiceContext, ServiceDef};
