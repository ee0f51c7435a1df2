//! PostgreSQL: the backend for many replicas sharing one database. A sync streams its
//! products into temporary tables of its own connection with `COPY` (`staging.rs`) and
//! merges them in one transaction that holds the store's row lock (`merge.rs`). Reads, the
//! matching queue, tokens and the history are in `reads.rs`, `tokens.rs` and `history.rs`;
//! single products are read in gathered queries (`point_reads.rs`); every statement is in
//! `sql.rs`.

mod copy_text;
mod history;
mod merge;
#[cfg(test)]
mod partitions_test;
mod point_reads;
mod reads;
mod sql;
mod staging;
mod tokens;

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use self::point_reads::PointReads;
pub(super) use self::staging::CONNECTIONS_PER_SYNC;
use self::staging::PostgresStaging;
use super::{During, PoolSettings, Staging, StoreError, SyncStore};
use crate::product::SyncKey;

/// How long a call waits for a free connection: a database that cannot be reached answers
/// UNAVAILABLE soon, not after 30 s.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// The same for a pool that connects lazily: a read replica, which the primary stands in
/// for when it cannot be reached.
const LAZY_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most tasks that read single products (see `point_reads.rs`): each holds a connection
/// while its query runs.
const MOST_POINT_READERS: u32 = 4;

/// A PostgreSQL database.
#[derive(Debug)]
pub(super) struct PostgresBackend {
    pool: PgPool,
    point_reads: PointReads,
}

impl PostgresBackend {
    pub(super) async fn connect(url: &str, settings: PoolSettings) -> Result<Self, StoreError> {
        let options = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            // A ping before every use would double the round trips of a read; a connection
            // that broke fails its next statement instead, and is dropped.
            .test_before_acquire(false)
            .acquire_timeout(if settings.connect_lazily {
                LAZY_ACQUIRE_TIMEOUT
            } else {
                ACQUIRE_TIMEOUT
            });
        let pool = if settings.connect_lazily {
            options.connect_lazy(url)
        } else {
            options.connect(url).await
        }
        .during("connecting to PostgreSQL")?;
        if settings.run_migrations {
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        }
        // At most half the pool reads single products, so other calls find a connection.
        let readers = (settings.max_connections / 2).clamp(1, MOST_POINT_READERS);
        let point_reads = PointReads::start(pool.clone(), readers as usize);
        Ok(PostgresBackend { pool, point_reads })
    }
}

#[async_trait]
impl SyncStore for PostgresBackend {
    async fn open_staging(
        &self,
        store_id: i64,
        key: SyncKey,
    ) -> Result<Box<dyn Staging>, StoreError> {
        Ok(Box::new(
            PostgresStaging::open(&self.pool, store_id, key).await?,
        ))
    }
}
