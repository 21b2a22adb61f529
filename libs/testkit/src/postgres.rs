//! Which PostgreSQL the tests use: `DATABASE_URL` when set, else the server on
//! 127.0.0.1:5432, else a throwaway cluster started from the local PostgreSQL binaries (shared
//! by every test process on this machine), else an error saying what is missing.

use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use portal_platform::local_pg::LocalCluster;
use secrecy::SecretString;

static ADMIN_URL: OnceLock<Result<SecretString, String>> = OnceLock::new();

/// A superuser URL of the server the tests use (its `postgres` database).
pub fn admin_url() -> anyhow::Result<SecretString> {
    ADMIN_URL
        .get_or_init(|| discover().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("no PostgreSQL for the tests: {e}"))
}

fn discover() -> anyhow::Result<SecretString> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(portal_platform::db::with_database(
            &SecretString::from(url),
            "postgres",
        )?);
    }
    let local = SocketAddr::from(([127, 0, 0, 1], 5432));
    if TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok() {
        return Ok(SecretString::from(
            "postgres://postgres@127.0.0.1:5432/postgres",
        ));
    }
    throwaway_cluster()
}

/// One cluster for every test process: a file lock makes the first start it and the rest
/// find it running.
fn throwaway_cluster() -> anyhow::Result<SecretString> {
    let base = std::env::temp_dir();
    let lock = std::fs::File::create(base.join("portal-testkit-pg.lock"))?;
    lock.lock()?;
    let cluster = LocalCluster::start(&base.join("portal-testkit-pg"));
    lock.unlock()?;
    Ok(cluster?.admin_url())
}
