//! One writer where one is needed: of several replicas running the same named task, exactly
//! one writes at a time; when it stops, or its session is killed, another takes over, and the
//! old one's writes stop at once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portal_platform::single_writer::SingleWriter;
use portal_testkit::{TestDb, eventually};
use portal_tests::all_schemas;
use sqlx::PgPool;
use tokio::sync::watch;

/// Which database session each replica writes through while it is the writer.
type Sessions = Arc<Mutex<HashMap<usize, i32>>>;

/// A replica: while it holds the lock, it logs its id every few milliseconds through the
/// lock's connection, until told to stop.
fn start_replica(
    pool: PgPool,
    id: usize,
    sessions: Sessions,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let task = SingleWriter::new("approval.test-writer", Duration::from_millis(100));
        let mut stop = stop;
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        task.run(&pool, stopped, |conn| {
            let sessions = Arc::clone(&sessions);
            Box::pin(async move {
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut *conn)
                    .await?;
                sessions.lock().unwrap().insert(id, pid);
                // Periodic work, as a sweeper does: one write every 10 ms.
                let mut every = tokio::time::interval(Duration::from_millis(10));
                loop {
                    every.tick().await;
                    sqlx::query("INSERT INTO approval.test_writer_log (replica) VALUES ($1)")
                        .bind(i32::try_from(id).unwrap())
                        .execute(&mut *conn)
                        .await?;
                }
            })
        })
        .await;
    })
}

/// The replicas in the order they wrote, each run of writes by one replica counted once.
async fn writers_in_order(admin: &PgPool) -> Vec<i32> {
    let log: Vec<i32> =
        sqlx::query_scalar("SELECT replica FROM approval.test_writer_log ORDER BY id")
            .fetch_all(admin)
            .await
            .unwrap();
    let mut runs = log;
    runs.dedup();
    runs
}

async fn wait_for_new_writer(admin: &PgPool, after: usize) -> Vec<i32> {
    eventually(Duration::from_secs(15), "a new writer", || async {
        let runs = writers_in_order(admin).await;
        (runs.len() > after).then_some(runs)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_writes_at_a_time_and_another_takes_over_when_it_stops_or_dies() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let admin = db.admin_pool().await.unwrap();
    for statement in [
        "CREATE TABLE approval.test_writer_log (id bigserial PRIMARY KEY, replica int NOT NULL)",
        "GRANT INSERT ON approval.test_writer_log TO approval_app",
        "GRANT USAGE ON SEQUENCE approval.test_writer_log_id_seq TO approval_app",
    ] {
        sqlx::query(statement).execute(&admin).await.unwrap();
    }
    let sessions: Sessions = Arc::default();
    let stops: Vec<_> = (0..3).map(|_| watch::channel(false)).collect();
    let replicas: Vec<_> = (1..=3)
        .map(|id| {
            let pool = db.app_pool(approval_service::SERVICE.schema).unwrap();
            start_replica(pool, id, Arc::clone(&sessions), stops[id - 1].1.clone())
        })
        .collect();

    // The writer stops, its process living on: another takes over.
    let first = wait_for_new_writer(&admin, 0).await[0];
    stops[usize::try_from(first).unwrap() - 1]
        .0
        .send_replace(true);
    let runs = wait_for_new_writer(&admin, 1).await;

    // The next writer's session is killed: its writes stop and another takes over.
    let second = runs[1];
    let pid = sessions.lock().unwrap()[&usize::try_from(second).unwrap()];
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&admin)
        .await
        .unwrap();
    // As when its whole process dies, the killed replica does not come back to compete.
    stops[usize::try_from(second).unwrap() - 1]
        .0
        .send_replace(true);
    let runs = wait_for_new_writer(&admin, 2).await;

    // Each replica wrote in one unbroken run: never two writers interleaved.
    let mut seen = runs.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), runs.len(), "writers interleaved: {runs:?}");
    for replica in replicas {
        replica.abort();
    }
}
