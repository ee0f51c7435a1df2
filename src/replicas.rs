//! Reads that a read replica may answer (`serve --read-database-url`): GetProduct,
//! ListProducts, ListPending and ListSyncRuns. They go to the replicas in turn; a replica
//! that cannot be reached is left out for a while, and when none answers, the primary does.
//! A replica answers with what it has replayed: a sync committed within its lag may not show
//! yet. Everything a sync or a queue transition needs to be right reads the primary.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::store::{Database, StoreError};

/// How long a replica that could not be reached is left out before it is tried again (a
/// read that finds it unreachable waits up to a second for it).
const LEFT_OUT_FOR: Duration = Duration::from_secs(30);

/// The primary's request pool and the replicas, shared by every read.
#[derive(Debug, Clone)]
pub struct ReplicaReads(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    primary: Database,
    replicas: Vec<Replica>,
    /// Where the next read starts looking: reads take turns.
    next: AtomicUsize,
}

#[derive(Debug)]
struct Replica {
    database: Database,
    /// Left out until then, after it could not be reached.
    left_out_until: std::sync::Mutex<Option<Instant>>,
}

impl Replica {
    fn is_left_out(&self) -> bool {
        let left_out = self.lock();
        left_out.is_some_and(|until| Instant::now() < until)
    }

    fn leave_out(&self) {
        *self.lock() = Some(Instant::now() + LEFT_OUT_FOR);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // An instant cannot be left half-written.
        self.left_out_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ReplicaReads {
    /// Reads go to `replicas` in turn, to `primary` when there are none or none answers.
    pub fn new(primary: Database, replicas: Vec<Database>) -> Self {
        ReplicaReads(Arc::new(Inner {
            primary,
            replicas: replicas
                .into_iter()
                .map(|database| Replica {
                    database,
                    left_out_until: std::sync::Mutex::new(None),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }))
    }

    /// Runs `read` on the next replica that is not left out; if it cannot be reached, on
    /// the one after, and on the primary last. Any other failure is the read's answer.
    pub async fn read<T, F, Fut>(&self, read: F) -> Result<T, StoreError>
    where
        F: Fn(Database) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let replicas = &self.0.replicas;
        if !replicas.is_empty() {
            let first = self.0.next.fetch_add(1, Ordering::Relaxed);
            for offset in 0..replicas.len() {
                let replica = &replicas[(first + offset) % replicas.len()];
                if replica.is_left_out() {
                    continue;
                }
                match read(replica.database.clone()).await {
                    Err(error) if error.is_unavailable() => {
                        tracing::warn!(%error, "a read replica could not be reached; leaving it out for a while");
                        replica.leave_out();
                    }
                    answer => return answer,
                }
            }
        }
        read(self.0.primary.clone()).await
    }

    /// Closes the replicas' connections (the primary's pool is closed with the others).
    pub async fn close(&self) {
        for replica in &self.0.replicas {
            replica.database.close().await;
        }
    }
}
