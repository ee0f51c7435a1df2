//! A sync on SQLite: its products are staged into temporary tables of its own connection
//! as they arrive, checked there, and merged into the live tables in one transaction that
//! holds the write lock (see `sql.rs` for each statement).

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::mpsc;

use super::merge::skip_staged_product;
use super::sql;
use crate::product::{Barcodes, Price, SyncKey};
use crate::store::merge::{Attempt, SKIP_ROUND, batch_conflicts_from_rows, one_per_product};
use crate::store::unchanged::StagingTarget;
use crate::store::{
    BatchConflict, During, MergeOutcome, MergeRequest, StagedProduct, Staging, StoreError,
    sql_limit,
};

/// Products per INSERT while staging: a usual message's worth. 13 parameters each stays far
/// below SQLite's limit of 32,766.
const PRODUCTS_PER_INSERT: usize = 1_000;
/// Barcodes per INSERT while staging; 2 parameters each.
const BARCODES_PER_INSERT: usize = 2_000;

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
pub(super) struct HeapShare;

impl HeapShare {
    fn claim() -> HeapShare {
        HeapShare::adjust(1);
        HeapShare
    }

    /// Changes the count and sets the limit under one lock, so that the last limit set
    /// always matches the count.
    pub(super) fn adjust(change: i64) {
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

/// What a sync staged, counted as batches go in.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct StagedStream {
    products: u64,
    /// One past the highest stream position staged.
    end: u64,
    skipped: bool,
}

impl StagedStream {
    fn add(&mut self, batch: &[StagedProduct]) {
        self.products += batch.len() as u64;
        if let Some(last) = batch.last() {
            self.end = self.end.max(last.index + 1);
        }
        self.skipped |= batch.iter().any(|product| product.skipped);
    }

    /// Records that staged products were skipped after staging (for conflicts).
    pub(super) fn mark_skipped(&mut self) {
        self.skipped = true;
    }

    /// Whether the staged products are the whole stream from position 0, in order, with
    /// none skipped: then a product's position can give its id.
    pub(super) fn is_whole_stream(&self) -> bool {
        !self.skipped && self.products == self.end
    }
}

/// The staging area of one sync on SQLite. Lookups share the staging connection: reading
/// the live file next to the temporary one costs no lock that matters in WAL mode.
pub(super) struct SqliteStaging {
    pub(super) connection: PoolConnection<Sqlite>,
    pub(super) target: StagingTarget,
    /// Whether the batch was checked for repeats of an external id or a barcode.
    pub(super) checked: bool,
    /// What was staged, counted as it was.
    pub(super) staged: StagedStream,
    _heap: HeapShare,
}

impl SqliteStaging {
    pub(super) async fn open(
        pool: &SqlitePool,
        store_id: i64,
        key: SyncKey,
    ) -> Result<Self, StoreError> {
        async {
            let mut connection = pool.acquire().await?;
            sqlx::raw_sql(sql::CREATE_STAGING)
                .execute(&mut *connection)
                .await?;
            // Read before the first lookup, so that a sync committing after it shows.
            let (generation, has_products): (i64, bool) = sqlx::query_as(sql::STAGING_START)
                .bind(store_id)
                .fetch_optional(&mut *connection)
                .await?
                .unwrap_or((0, false));
            Ok(SqliteStaging {
                connection,
                target: StagingTarget::new(store_id, key, generation, has_products),
                checked: false,
                staged: StagedStream::default(),
                _heap: HeapShare::claim(),
            })
        }
        .await
        .during("opening a sync's staging")
    }

    /// Runs one batch's statements, all in one round trip to the connection's thread. Each
    /// commits on its own, to the temporary database only: a sync that fails discards its
    /// staging whole, so nothing needs them to commit together.
    async fn write_batch(
        connection: &mut SqliteConnection,
        mut statements: QueryBuilder<Sqlite>,
    ) -> Result<(), sqlx::Error> {
        statements.build().execute(connection).await?;
        Ok(())
    }

    async fn find_batch_conflicts(
        &mut self,
        limit: usize,
    ) -> Result<Vec<BatchConflict>, sqlx::Error> {
        let duplicates = sqlx::query_as(sql::DUPLICATE_EXTERNAL_IDS)
            .bind(sql_limit(limit))
            .fetch_all(&mut *self.connection)
            .await?;
        let shared = sqlx::query_as(sql::BARCODES_SHARED_IN_BATCH)
            .bind(sql_limit(limit))
            .fetch_all(&mut *self.connection)
            .await?;
        self.checked = true;
        Ok(batch_conflicts_from_rows(duplicates, shared, limit))
    }
}

#[async_trait]
impl Staging for SqliteStaging {
    /// Binding a batch's values costs about as much as SQLite's own work on them, and that
    /// work runs on the connection's thread: this task binds the next batch while that
    /// thread writes the one before.
    async fn stage_all(
        &mut self,
        mut batches: BoxStream<'_, Vec<StagedProduct>>,
    ) -> Result<(), StoreError> {
        let target = self.target;
        let staged = &mut self.staged;
        let (bound, mut to_write) = mpsc::channel(1);
        let bind = async move {
            while let Some(batch) = batches.next().await {
                if batch.is_empty() {
                    continue;
                }
                staged.add(&batch);
                if bound.send(bind_batch(batch, &target)).await.is_err() {
                    // The writer failed; it reports why.
                    break;
                }
            }
            Ok(())
        };
        let connection = &mut *self.connection;
        let write = async {
            while let Some(statements) = to_write.recv().await {
                Self::write_batch(connection, statements).await?;
            }
            Ok(())
        };
        futures::try_join!(bind, write)
            .map(|_| ())
            .during("staging products")
    }

    async fn batch_conflicts(&mut self, limit: usize) -> Result<Vec<BatchConflict>, StoreError> {
        self.find_batch_conflicts(limit)
            .await
            .during("checking a sync's products")
    }

    /// Skips the products of the batch that conflict with others of the batch, round after
    /// round until none do; returns what was skipped.
    async fn skip_batch_conflicts(&mut self) -> Result<Vec<BatchConflict>, StoreError> {
        async {
            let mut skipped = Vec::new();
            loop {
                let conflicts = self.find_batch_conflicts(SKIP_ROUND).await?;
                if conflicts.is_empty() {
                    return Ok(skipped);
                }
                let conflicts = one_per_product(conflicts);
                for conflict in &conflicts {
                    skip_staged_product(&mut self.connection, conflict.index()).await?;
                }
                self.staged.mark_skipped();
                skipped.extend(conflicts);
            }
        }
        .await
        .during("skipping a sync's conflicting products")
    }

    async fn merge(
        &mut self,
        request: &MergeRequest,
        abandoned: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<MergeOutcome, StoreError> {
        loop {
            match self
                .attempt(request, abandoned)
                .await
                .during("merging a sync")?
            {
                Attempt::Finished(outcome) => return Ok(outcome),
                Attempt::CheckBatchFirst => {
                    let conflicts = self.batch_conflicts(request.max_conflicts).await?;
                    if !conflicts.is_empty() {
                        return Ok(MergeOutcome::Conflicts(conflicts));
                    }
                }
            }
        }
    }

    async fn close(mut self: Box<Self>) {
        if let Err(error) = sqlx::raw_sql(sql::DROP_STAGING)
            .execute(&mut *self.connection)
            .await
        {
            // The connection may hold staged rows; never hand it to another request.
            tracing::warn!(%error, "could not drop the staging tables; closing the connection");
            let _ = self.connection.detach().close().await;
        }
    }
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
            query.push(sql::STAGE_COMPARED_BATCH);
        } else {
            query.push(sql::INSERT_STAGED_PRODUCTS);
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
                .push(sql::STAGE_COMPARED.as_str())
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
        query.push(sql::INSERT_STAGED_BARCODES);
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
