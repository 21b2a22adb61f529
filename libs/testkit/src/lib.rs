//! The test harness every service's tests use: a real PostgreSQL ([`postgres`]), a fresh
//! database per test cloned from a migrated template ([`TestDb`]), services on port 0 with a
//! connected client ([`TestService`]), and a TCP proxy that cuts one service's database
//! connection without touching the shared server ([`TcpProxy`]), and a real OTLP receiver and
//! Prometheus scrape ([`telemetry`]). Nothing is shared between
//! tests but the server and the template, so tests (and whole test runs) can run in parallel.

mod database;
pub mod keys;
pub mod load;
pub mod pki;
pub mod postgres;
mod proxy;
mod service;
pub mod status;
pub mod telemetry;

pub use database::TestDb;
pub use proxy::TcpProxy;
pub use service::TestService;

use std::time::Duration;

/// Polls `check` until it returns `Some`, or fails after `deadline`. Tests wait for state this
/// way, never by sleeping a fixed time.
pub async fn eventually<T, F, Fut>(
    deadline: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= give_up {
            anyhow::bail!("gave up after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Log output for tests, shown by the test runner for failing tests (`RUST_LOG`, default warn).
pub fn init_tracing() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
