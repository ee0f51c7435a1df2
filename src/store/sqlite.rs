//! SQLite: the embedded default. One file in WAL mode, so readers never wait for the
//! writer; a sync stages into its connection's temporary database, which takes no lock on
//! the main file, and holds the write lock only for its final merge.

use std::str::FromStr;
use std::time::Duration;

use futures::{Stream, StreamExt};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Sqlite, SqlitePool};

use super::sql::{self, SQLITE};
use super::{
    BatchConflict, MergeOutcome, MergeRequest, StagingTarget, StoreError, staged_barcodes,
};
use crate::sync::StagedProduct;

/// How long a writer waits for another writer's merge before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_CONNECTIONS: u32 = 16;
/// Products per INSERT while staging; 13 parameters each stays far below SQLite's limit.
const PRODUCTS_PER_INSERT: usize = 500;
/// Barcodes per INSERT while staging; 2 parameters each.
const BARCODES_PER_INSERT: usize = 2_000;

pub(super) async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL is durable across application crashes in WAL mode; only a power loss may
        // drop the last commits.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    HeapShare::adjust(0);
    Ok(pool)
}

token_queries!(sqlx::Sqlite);
history_queries!(sqlx::Sqlite);
live_queries!(sqlx::Sqlite, SQLITE);

/// SQLite's heap (page caches, sorters) is one pool for every connection of the process,
/// and a connection's cache grows into whatever the others leave unused: without a limit a
/// single big sync keeps taking pages as long as it touches new ones. The soft heap limit
/// makes SQLite recycle its own pages instead, and it follows the number of running syncs:
/// memory grows with how many syncs run at once, never with how big one is.
const HEAP_PER_RUNNING_SYNC: i64 = 4 * 1024 * 1024;

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
        let limit = HEAP_PER_RUNNING_SYNC * (*running).max(1);
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

    pub(super) async fn stage_all(
        &mut self,
        mut batches: impl Stream<Item = Vec<StagedProduct>> + Unpin,
    ) -> Result<(), StoreError> {
        while let Some(batch) = batches.next().await {
            if !batch.is_empty() {
                self.stage(&batch).await?;
            }
        }
        Ok(())
    }

    async fn stage(&mut self, products: &[StagedProduct]) -> Result<(), StoreError> {
        let compare = self.target.look_up;
        // One transaction per batch: a journal sync per batch instead of per statement.
        // It is a transaction of the temporary database only.
        let mut tx = self.connection.begin().await?;
        for chunk in products.chunks(PRODUCTS_PER_INSERT) {
            let mut insert = if compare {
                QueryBuilder::<Sqlite>::new(sql::STAGED_BATCH)
            } else {
                let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO ");
                insert.push(sql::STAGED_PRODUCT_COLUMNS).push(" ");
                insert
            };
            insert.push_values(chunk, |mut row, product| {
                let change = &product.change;
                row.push_bind(product.index as i64)
                    .push_bind(change.external_id.clone())
                    .push_bind(staged_barcodes(change))
                    .push_bind(change.in_stock)
                    .push_bind(change.price.as_ref().map(|price| price.to_string()))
                    .push_bind(change.name.clone())
                    .push_bind(change.unit_size.clone())
                    .push_bind(change.abv)
                    .push_bind(change.proof)
                    .push_bind(change.category.map(|category| category.code()))
                    .push_bind(product.skipped);
                if !compare {
                    row.push_bind(None::<i64>).push_bind(false);
                }
            });
            if compare {
                insert
                    .push(&SQLITE.stage_compared)
                    .push_bind(self.target.store_id);
            }
            insert.build().execute(&mut *tx).await?;
        }
        let barcodes: Vec<(i64, &str)> = products
            .iter()
            .flat_map(|product| {
                let index = product.index as i64;
                product
                    .change
                    .barcodes
                    .iter()
                    .flat_map(|barcodes| barcodes.as_slice())
                    .map(move |barcode| (index, barcode.as_str()))
            })
            .collect();
        for chunk in barcodes.chunks(BARCODES_PER_INSERT) {
            // The barcodes of unchanged products take no part in the checks (see
            // `unchanged.rs`); the merge splits them out should the marks be dropped.
            let mut insert = if compare {
                QueryBuilder::<Sqlite>::new(sql::STAGED_BATCH_BARCODES)
            } else {
                let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO ");
                insert.push(sql::STAGED_BARCODE_COLUMNS).push(" ");
                insert
            };
            insert.push_values(chunk, |mut row, (index, barcode)| {
                row.push_bind(*index).push_bind(barcode.to_string());
            });
            if compare {
                insert.push(sql::STAGE_CHANGED_BARCODES);
            }
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
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
        assert_eq!(heap_limit(), 2 * HEAP_PER_RUNNING_SYNC);
        drop(first);
        assert_eq!(heap_limit(), HEAP_PER_RUNNING_SYNC);
        drop(second);
        // Reads between syncs keep one share.
        assert_eq!(heap_limit(), HEAP_PER_RUNNING_SYNC);
    }
}
