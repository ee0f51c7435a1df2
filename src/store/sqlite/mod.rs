//! SQLite: the embedded default. One file in WAL mode, so readers never wait for the
//! writer; a sync stages into its connection's temporary database, which takes no lock on
//! the main file (`staging.rs`), and holds the write lock only for its final merge
//! (`merge.rs`); each batch is looked up and bound on its way in (`batches.rs`), and each
//! running sync has a share of SQLite's heap (`heap.rs`). Reads, the matching queue, tokens
//! and the history are in `reads.rs`, `tokens.rs` and `history.rs`; every statement is in
//! `sql.rs`.

mod batches;
mod heap;
mod history;
mod merge;
mod point_reads;
mod reads;
mod sql;
mod staging;
mod tokens;
#[cfg(test)]
mod unchanged_rule_test;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use self::point_reads::PointReads;
use self::staging::SqliteStaging;
use super::{During, PoolSettings, Staging, StoreError, SyncStore};
use crate::product::SyncKey;

/// How long a writer waits for another writer's merge before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a call waits for a free connection of its pool.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A SQLite database file (or one in memory).
#[derive(Debug)]
pub(super) struct SqliteBackend {
    pool: SqlitePool,
    /// Point reads on the caller's thread; none for a database in memory, which only the
    /// pool's connections share.
    point_reads: Option<Arc<PointReads>>,
}

impl SqliteBackend {
    pub(super) async fn connect(url: &str, settings: PoolSettings) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .during("reading the SQLite URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes in WAL mode; only a power loss
            // may drop the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let migrations_lock = match settings.run_migrations {
            true if is_in_memory(url) => None,
            true => Some(MigrationsLock::take(options.get_filename()).await?),
            false => None,
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A ping before every use would double the round trips of a read; a connection
            // that broke fails its next statement instead, and is dropped.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .during("opening the SQLite database")?;
        if settings.run_migrations {
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        }
        drop(migrations_lock);
        heap::HeapShare::adjust(0);
        let point_reads = (!is_in_memory(url)).then(|| {
            Arc::new(PointReads::new(
                pool.connect_options().get_filename().to_owned(),
            ))
        });
        Ok(SqliteBackend { pool, point_reads })
    }
}

/// Whether a SQLite URL names a database in memory (`sqlite::memory:`, `mode=memory`).
pub(super) fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// An exclusive lock on `<database>-migrate.lock`, held while the migrations run (an
/// in-memory database is this process's alone and needs none). sqlx's SQLite migrator
/// checks which migrations are applied and applies the rest in separate transactions, so
/// two processes starting on one fresh file would both apply the first (PostgreSQL's
/// migrator takes a lock of its own).
struct MigrationsLock(std::fs::File);

impl MigrationsLock {
    async fn take(database: &std::path::Path) -> Result<Self, StoreError> {
        let mut path = database.as_os_str().to_owned();
        path.push("-migrate.lock");
        let path = std::path::PathBuf::from(path);
        let failed = |source| StoreError::MigrationLock {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(failed)?;
        // Blocks until another process's migrations are done: off the async threads.
        let locked = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|error| failed(std::io::Error::other(error)))?;
        Ok(MigrationsLock(locked.map_err(failed)?))
    }
}

impl Drop for MigrationsLock {
    fn drop(&mut self) {
        // Closing the file would release it too; unlocking says so.
        let _ = self.0.unlock();
    }
}

#[async_trait]
impl SyncStore for SqliteBackend {
    async fn open_staging(
        &self,
        store_id: i64,
        key: SyncKey,
    ) -> Result<Box<dyn Staging>, StoreError> {
        Ok(Box::new(
            SqliteStaging::open(&self.pool, self.point_reads.as_ref(), store_id, key).await?,
        ))
    }
}
