//! Work that must have exactly one writer across replicas (log sequencing, checkpoint
//! signing, expiry sweeps): every replica runs [`SingleWriter::run`], and only the one holding
//! a PostgreSQL advisory lock does the work.
//!
//! The work runs on the very connection that holds the lock, and must make its single-writer
//! writes there: if that session ends (the replica dies, the network drops it, an operator
//! terminates it), its lock is released and its writes fail at once, so a new writer can never
//! overlap an old one. The session asks the server to probe the client with TCP keepalives, so
//! a replica whose host vanished without closing the socket loses the lock in under a minute,
//! not after the kernel's two-hour default.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, PgPool};

/// The writer's work, given the connection that holds the lock.
pub type LeaderWork<'c> = Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + 'c>>;

/// A named task that one replica at a time runs.
#[derive(Debug, Clone)]
pub struct SingleWriter {
    name: String,
    key: i64,
    retry: Duration,
}

impl SingleWriter {
    /// `name` must be unique within the database, e.g. `approval.expiry-sweeper`; replicas
    /// that are not the writer try to become it every `retry`.
    pub fn new(name: &str, retry: Duration) -> Self {
        let digest = Sha256::digest(name.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self {
            name: name.to_owned(),
            key: i64::from_be_bytes(first),
            retry,
        }
    }

    /// Until `shutdown` completes: wait to become the writer, then run `work` on the lock's
    /// connection. `work` is started afresh each time leadership is gained; when it fails
    /// (its connection is gone) or returns, the lock is given up and the race starts again.
    pub async fn run<F>(&self, pool: &PgPool, shutdown: impl Future<Output = ()>, mut work: F)
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> LeaderWork<'c>,
    {
        tokio::pin!(shutdown);
        loop {
            let lead = async {
                let Some(mut conn) = self.acquire(pool).await else {
                    return;
                };
                tracing::info!(task = %self.name, "became the single writer");
                match work(&mut conn).await {
                    Ok(()) => {
                        // Returning the lock explicitly lets another replica take over at once.
                        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                            .bind(self.key)
                            .execute(&mut conn)
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(task = %self.name, error = %e, "single writer stopped")
                    }
                }
                let _ = conn.close().await;
            };
            // Dropping `lead` on shutdown drops the connection, which ends the session and
            // with it the lock.
            tokio::select! {
                () = &mut shutdown => return,
                () = lead => {}
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(self.retry) => {}
            }
        }
    }

    /// A connection holding the lock, taken out of the pool; None if another replica holds
    /// the lock or the database is away (the pooled connection then goes back unlocked).
    async fn acquire(&self, pool: &PgPool) -> Option<PgConnection> {
        let mut pooled = pool.acquire().await.ok()?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut *pooled)
            .await
            .ok()?;
        if !locked {
            return None;
        }
        // Held for as long as the lock: it must never go back to the pool still locked.
        let mut conn = pooled.detach();
        let keepalives = "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                          SET tcp_keepalives_count = 3; SET tcp_user_timeout = 30000";
        if sqlx::raw_sql(keepalives).execute(&mut conn).await.is_err() {
            let _ = conn.close().await;
            return None;
        }
        Some(conn)
    }
}
