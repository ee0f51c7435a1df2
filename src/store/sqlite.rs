//! SQLite: the embedded default. One file in WAL mode, so readers never wait for the
//! writer; a sync stages into its connection's temporary database, which takes no lock on
//! the main file, and holds the write lock only for its final merge.

use std::str::FromStr;
use std::time::Duration;

use futures::{Stream, StreamExt};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Sqlite, SqlitePool};
use tokio::sync::mpsc;

use super::sql::{self, SQLITE};
use super::{BatchConflict, MergeOutcome, MergeRequest, PoolSettings, StagingTarget, StoreError};
use super::StagedProduct;
use crate::product::{Barcodes, Price};

/// How long a writer waits for another writer's merge before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a call waits for a free connection of its pool.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Products per INSERT while staging: a usual message's worth. 13 parameters each stays far
/// below SQLite's limit of 32,766.
const PRODUCTS_PER_INSERT: usize = 1_000;
/// Barcodes per INSERT while staging; 2 parameters each.
const BARCODES_PER_INSERT: usize = 2_000;

pub(super) async fn connect(url: &str, settings: PoolSettings) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL is durable across application crashes in WAL mode; only a power loss may
        // drop the last commits.
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
        // A ping before every use would double the round trips of a read; a connection that
        // broke fails its next statement instead, and is dropped.
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    if settings.run_migrations {
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    }
    drop(migrations_lock);
    HeapShare::adjust(0);
    Ok(pool)
}

/// Whether a SQLite URL names a database in memory (`sqlite::memory:`, `mode=memory`).
pub(super) fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// An exclusive lock on `<database>-migrate.lock`, held while the migrations run (an
/// in-memory database is this process's alone and needs none). sqlx's
/// SQLite migrator checks which migrations are applied and applies the rest in separate
/// transactions, so two processes starting on one fresh file would both apply the first
/// (PostgreSQL's migrator takes a lock of its own).
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

// An INTEGER PRIMARY KEY takes the next id after the largest; nothing to catch up.
token_queries!(sqlx::Sqlite, None);
history_queries!(sqlx::Sqlite);
live_queries!(sqlx::Sqlite, SQLITE);

/// SQLite's heap (page caches, sorters) is one pool for every connection of the process,
/// and a connection's cache grows into whatever the others leave unused: without a limit a
/// single big sync keeps taking pages as long as it touches new ones. The soft heap limit
/// makes SQLite recycle its own pages instead, and it follows the number of running syncs:
/// memory grows with how many syncs run at once, never with how big one is.
const HEAP_PER_RUNNING_SYNC: i64 = 4 * 1024 * 1024;
/// The heap kept for reads whatever the syncs: the page caches of the request pool's
/// connections. With less, a read misses its cache and reads its pages from the file on
/// every call (the `reads` benchmark gained a third with it).
const HEAP_FOR_READS: i64 = 16 * 1024 * 1024;

/// Syncs staging on SQLite in this process, whatever the database file: the heap is shared.
static RUNNING_SYNCS: std::sync::Mutex<i64> = std::sync::Mutex::new(0);

/// One running sync's share of SQLite's heap, given back when the staging is dropped,
/// whichever way the sync ends.
struct HeapShare;

impl HeapShare {
    fn claim() -> HeapShare {
        HeapShare::adjust(1);
        HeapShare
    }

    /// Changes the count and sets the limit under one lock, so that the last limit set
    /// always matches the count.
    fn adjust(change: i64) {
        let mut running = RUNNING_SYNCS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *running += change;
        // Reads between syncs get one share too.
        let limit = HEAP_FOR_READS + HEAP_PER_RUNNING_SYNC * *running;
        // SAFETY: sets a process-wide integer under SQLite's own mutex; no pointer is passed
        // and it may be called from any thread at any time.
        unsafe {
            libsqlite3_sys::sqlite3_soft_heap_limit64(limit);
        }
    }
}

impl Drop for HeapShare {
    fn drop(&mut self) {
        HeapShare::adjust(-1);
    }
}

/// The staging area of one sync on SQLite.
pub struct Staging {
    connection: PoolConnection<Sqlite>,
    target: StagingTarget,
    _heap: HeapShare,
}

impl Staging {
    /// Lookups share the staging connection: reading the live file next to the temporary
    /// one costs no lock that matters in WAL mode.
    fn new(connection: PoolConnection<Sqlite>, _pool: &SqlitePool, target: StagingTarget) -> Self {
        Staging {
            connection,
            target,
            _heap: HeapShare::claim(),
        }
    }

    /// Binding a batch's values costs about as much as SQLite's own work on them, and that
    /// work runs on the connection's thread: this task binds the next batch while that
    /// thread writes the one before.
    pub(super) async fn stage_all(
        &mut self,
        mut batches: impl Stream<Item = Vec<StagedProduct>> + Unpin,
    ) -> Result<(), StoreError> {
        let target = self.target;
        let (bound, mut to_write) = mpsc::channel(1);
        let bind = async move {
            while let Some(batch) = batches.next().await {
                if batch.is_empty() {
                    continue;
                }
                if bound.send(bind_batch(batch, &target)).await.is_err() {
                    // The writer failed; it reports why.
                    break;
                }
            }
            Ok(())
        };
        let write = async {
            while let Some(statements) = to_write.recv().await {
                self.write_batch(statements).await?;
            }
            Ok(())
        };
        futures::try_join!(bind, write).map(|_| ())
    }

    /// Runs one batch's statements, all in one round trip to the connection's thread. Each
    /// commits on its own, to the temporary database only: a sync that fails discards its
    /// staging whole, so nothing needs them to commit together.
    async fn write_batch(
        &mut self,
        mut statements: QueryBuilder<Sqlite>,
    ) -> Result<(), StoreError> {
        statements.build().execute(&mut *self.connection).await?;
        Ok(())
    }

    pub(super) async fn batch_conflicts(
        &mut self,
        limit: usize,
    ) -> Result<Vec<BatchConflict>, StoreError> {
        self.find_batch_conflicts(limit).await
    }

    pub(super) async fn merge(
        &mut self,
        request: &MergeRequest,
        abandoned: impl Fn() -> bool,
    ) -> Result<MergeOutcome, StoreError> {
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads first
        // could fail to upgrade its lock instead of waiting for another writer.
        let mut tx = self.connection.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(sql::ENSURE_STORE)
            .bind(request.store_id)
            .bind(request.now)
            .execute(&mut *tx)
            .await?;
        let generation: i64 = sqlx::query_scalar(sql::SYNC_GENERATION)
            .bind(request.store_id)
            .fetch_one(&mut *tx)
            .await?;
        merge_into_locked_store!(tx, SQLITE, request, abandoned, generation, self.target)
    }

    staging_common!(sqlx::Sqlite, SQLITE);
}

/// The INSERT statements that stage one batch, as one query with its values bound. The
/// values move from the products into the query: nothing is copied on the way.
fn bind_batch(products: Vec<StagedProduct>, target: &StagingTarget) -> QueryBuilder<Sqlite> {
    let compare = target.look_up;
    let mut query = QueryBuilder::<Sqlite>::new("");
    let mut barcodes: Vec<(i64, String)> = Vec::new();
    let first_index = products.first().map(|product| product.index as i64);
    let chunks = products.len().div_ceil(PRODUCTS_PER_INSERT);
    let mut products = products.into_iter();
    for _ in 0..chunks {
        if compare {
            query.push(sql::STAGED_BATCH);
        } else {
            query.push(format_args!("INSERT INTO {} ", sql::STAGED_PRODUCT_COLUMNS));
        }
        query.push_values(
            products.by_ref().take(PRODUCTS_PER_INSERT),
            |mut row, product| {
                let index = product.index as i64;
                let change = product.change;
                let joined_barcodes = change.barcodes.as_ref().map(Barcodes::joined);
                if !compare {
                    barcodes.extend(
                        change
                            .barcodes
                            .into_iter()
                            .flat_map(Barcodes::into_vec)
                            .map(|barcode| (index, barcode)),
                    );
                }
                row.push_bind(index)
                    .push_bind(change.external_id)
                    .push_bind(joined_barcodes)
                    .push_bind(change.in_stock)
                    .push_bind(change.price.map(Price::into_string))
                    .push_bind(change.name)
                    .push_bind(change.unit_size)
                    .push_bind(change.abv)
                    .push_bind(change.proof)
                    .push_bind(change.category.map(|category| category.code()))
                    .push_bind(product.skipped);
                if !compare {
                    row.push_bind(None::<i64>).push_bind(false);
                }
            },
        );
        if compare {
            query
                .push(&SQLITE.stage_compared)
                .push_bind(target.store_id);
        }
        query.push(";\n");
    }
    if compare {
        // Only changed products take part in the checks (see `unchanged.rs`), and in a
        // re-sync most are unchanged: their barcodes are split out of the rows just staged
        // (every row from the batch's first index on) rather than bound one by one.
        if let Some(first) = first_index {
            query
                .push(sql::SPLIT_STAGED_BARCODES_OF)
                .push("NOT unchanged AND idx >= ")
                .push_bind(first)
                .push(sql::SPLIT_STAGED_BARCODES_END)
                .push(";\n");
        }
        return query;
    }
    let mut barcodes = barcodes.into_iter();
    for _ in 0..barcodes.len().div_ceil(BARCODES_PER_INSERT) {
        query.push(format_args!("INSERT INTO {} ", sql::STAGED_BARCODE_COLUMNS));
        query.push_values(
            barcodes.by_ref().take(BARCODES_PER_INSERT),
            |mut row, (index, barcode)| {
                row.push_bind(index).push_bind(barcode);
            },
        );
        query.push(";\n");
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit SQLite holds now (a negative argument only reads it).
    fn heap_limit() -> i64 {
        // SAFETY: as in `HeapShare::adjust`.
        unsafe { libsqlite3_sys::sqlite3_soft_heap_limit64(-1) }
    }

    #[test]
    fn the_heap_limit_follows_the_running_syncs() {
        // No other test of this binary stages on SQLite, so the counts are this test's.
        let first = HeapShare::claim();
        let second = HeapShare::claim();
        assert_eq!(heap_limit(), HEAP_FOR_READS + 2 * HEAP_PER_RUNNING_SYNC);
        drop(first);
        assert_eq!(heap_limit(), HEAP_FOR_READS + HEAP_PER_RUNNING_SYNC);
        drop(second);
        // Reads keep their share between syncs.
        assert_eq!(heap_limit(), HEAP_FOR_READS);
    }
}
