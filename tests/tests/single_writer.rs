//! One writer where one is needed: of several replicas running the same named task, exactly
//! one works at a time, and when it stops another takes over.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portal_platform::single_writer::SingleWriter;
use portal_testkit::{TestDb, eventually};
use portal_tests::all_schemas;
use sqlx::PgPool;
use tokio::sync::watch;

fn replica_pool(db: &TestDb) -> PgPool {
    db.app_pool(approval_service::SERVICE.schema).unwrap()
}

/// A replica: works (marking itself as the writer) while it holds the lock, until told to
/// stop. Its pool outlives the task, as in a process whose other work goes on.
fn start_replica(
    pool: PgPool,
    id: usize,
    writer: Arc<AtomicUsize>,
    concurrent: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let task = SingleWriter::new("approval.test-sweeper", Duration::from_millis(100));
        let mut stop = stop;
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        task.run(&pool, stopped, || {
            let writer = Arc::clone(&writer);
            let concurrent = Arc::clone(&concurrent);
            async move {
                let _guard = Working::start(&concurrent);
                writer.store(id, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
        })
        .await;
    })
}

/// Counts replicas working at once; dropped when the work stops.
struct Working(Arc<AtomicUsize>);

impl Working {
    fn start(concurrent: &Arc<AtomicUsize>) -> Self {
        concurrent.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(concurrent))
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_replica_writes_and_another_takes_over_when_it_stops() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let writer = Arc::new(AtomicUsize::new(0));
    let concurrent = Arc::new(AtomicUsize::new(0));
    let (max_tx, max_rx) = watch::channel(0usize);
    // Records the most replicas ever seen working at once.
    let monitor = {
        let concurrent = Arc::clone(&concurrent);
        tokio::spawn(async move {
            loop {
                let now = concurrent.load(Ordering::SeqCst);
                max_tx.send_if_modified(|max| {
                    let grew = now > *max;
                    *max = (*max).max(now);
                    grew
                });
                tokio::task::yield_now().await;
            }
        })
    };

    let pools: Vec<PgPool> = (0..3).map(|_| replica_pool(&db)).collect();
    let stops: Vec<_> = (0..3).map(|_| watch::channel(false)).collect();
    let replicas: Vec<_> = (1..=3)
        .map(|id| {
            start_replica(
                pools[id - 1].clone(),
                id,
                Arc::clone(&writer),
                Arc::clone(&concurrent),
                stops[id - 1].1.clone(),
            )
        })
        .collect();
    let first = eventually(Duration::from_secs(10), "a writer", || async {
        let id = writer.load(Ordering::SeqCst);
        (id != 0).then_some(id)
    })
    .await
    .unwrap();

    // The writer stops (its process lives on): the lock is released and another takes over.
    stops[first - 1].0.send_replace(true);
    let second = eventually(Duration::from_secs(10), "a new writer", || async {
        let id = writer.load(Ordering::SeqCst);
        (id != first && id != 0).then_some(id)
    })
    .await
    .unwrap();
    assert_ne!(second, first);
    eventually(Duration::from_secs(5), "one replica working", || async {
        (concurrent.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await
    .unwrap();
    monitor.abort();
    assert_eq!(*max_rx.borrow(), 1, "two replicas never write at once");
    for replica in replicas {
        replica.abort();
    }
}
