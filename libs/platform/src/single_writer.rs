//! Work that must have exactly one writer across replicas (log sequencing, checkpoint
//! signing, expiry sweeps): every replica runs [`SingleWriter::run`], and only the one holding
//! a PostgreSQL advisory lock does the work. The lock lives on a dedicated connection, so when
//! that replica dies its session ends, the lock is released, and another replica takes over.

use std::future::Future;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, PgPool};

/// A named task that one replica at a time runs.
#[derive(Debug, Clone)]
pub struct SingleWriter {
    name: String,
    key: i64,
    retry: Duration,
}

impl SingleWriter {
    /// `name` must be unique within the schema's database, e.g. `approval.expiry-sweeper`.
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

    /// Until `shutdown` completes: wait to become the writer, then run `work` while holding
    /// the lock. `work` is started afresh each time leadership is gained, and stopped (its
    /// future dropped) as soon as the lock's connection is lost.
    pub async fn run<F, Fut>(&self, pool: &PgPool, shutdown: impl Future<Output = ()>, mut work: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        loop {
            let lead = async {
                let Some(mut conn) = self.acquire(pool).await else {
                    return;
                };
                tracing::info!(task = %self.name, "became the single writer");
                tokio::select! {
                    () = work() => {}
                    () = self.watch(&mut conn) => {
                        tracing::warn!(task = %self.name, "lost the single-writer lock");
                    }
                }
                // Returning the lock explicitly lets another replica take over at once; if
                // the connection is gone, PostgreSQL has already released it.
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(self.key)
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            };
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

    /// A connection holding the lock, or None if another replica holds it or the database is
    /// away. It is detached from the pool: however this task ends, dropping it closes the
    /// session and so releases the lock, instead of parking a locked session in the pool.
    async fn acquire(&self, pool: &PgPool) -> Option<PgConnection> {
        let mut conn = pool.acquire().await.ok()?.detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut conn)
            .await
            .ok()?;
        locked.then_some(conn)
    }

    /// Returns when the lock's connection stops answering.
    async fn watch(&self, conn: &mut PgConnection) {
        loop {
            tokio::time::sleep(self.retry).await;
            let alive = tokio::time::timeout(self.retry.max(Duration::from_secs(1)), conn.ping());
            if !matches!(alive.await, Ok(Ok(()))) {
                return;
            }
        }
    }
}
