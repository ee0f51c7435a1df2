//! A sync on SQLite: its products are staged into temporary tables of its own connection
//! as they arrive, checked there, and merged into the live tables in one transaction that
//! holds the write lock (see `sql.rs` for each statement).

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::mpsc;

use super::sql;
use crate::product::{Barcodes, Price, SyncKey};
use crate::store::merge::{
    Attempt, SKIP_ROUND, StoredConflictRows, batch_conflicts_from_rows, one_per_product,
};
use crate::store::unchanged::StagingTarget;
use crate::store::{
    BatchConflict, During, MergeCounts, MergeOutcome, MergeRequest, StagedProduct, Staging,
    StoreError, sql_limit,
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

/// The staging area of one sync on SQLite. Lookups share the staging connection: reading
/// the live file next to the temporary one costs no lock that matters in WAL mode.
pub(super) struct SqliteStaging {
    connection: PoolConnection<Sqlite>,
    target: StagingTarget,
    /// Whether the batch was checked for repeats of an external id or a barcode.
    checked: bool,
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

    /// One attempt at the merge transaction.
    async fn attempt(
        &mut self,
        request: &MergeRequest,
        abandoned: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Attempt, sqlx::Error> {
        let store_id = request.store_id;
        let by_barcode = request.key == SyncKey::Barcode;
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads first
        // could fail to upgrade its lock instead of waiting for another writer.
        let mut tx = self.connection.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(sql::ENSURE_STORE)
            .bind(store_id)
            .bind(request.now)
            .execute(&mut *tx)
            .await?;
        let generation: i64 = sqlx::query_scalar(sql::SYNC_GENERATION)
            .bind(store_id)
            .fetch_one(&mut *tx)
            .await?;

        // Under the write lock, so a retry waits for the attempt in flight and then sees
        // its key.
        if let Some(check) = &request.idempotency {
            sqlx::query(sql::FORGET_EXPIRED_IDEMPOTENCY_KEY)
                .bind(store_id)
                .bind(&check.key)
                .bind(check.not_before)
                .execute(&mut *tx)
                .await?;
            let earlier: Option<(String, Option<String>)> =
                sqlx::query_as(sql::COMMITTED_RUN_OF_IDEMPOTENCY_KEY)
                    .bind(store_id)
                    .bind(&check.key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((run_id, request_hash)) = earlier {
                tx.rollback().await?;
                let same = request_hash.as_deref() == Some(check.request_hash.as_str());
                return Ok(Attempt::Finished(if same {
                    MergeOutcome::Replay { run_id }
                } else {
                    MergeOutcome::KeyReused { run_id }
                }));
            }
        }

        if by_barcode {
            sqlx::query(sql::RESOLVE_BY_BARCODES)
                .bind(store_id)
                .execute(&mut *tx)
                .await?;
        } else if !self.target.marks_hold(generation) {
            // Another sync wrote to the store during the upload: what staging saw may be
            // stale (products created since, marks no longer true).
            sqlx::query(sql::SPLIT_BARCODES_OF_UNCHANGED.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::FORGET_UNCHANGED).execute(&mut *tx).await?;
            sqlx::query(sql::RESOLVE_BY_EXTERNAL_ID)
                .bind(store_id)
                .execute(&mut *tx)
                .await?;
        }
        // Then no staged product matches a stored one: the steps for stored products have
        // nothing to do, and skipping them spares a pass over the staged rows each.
        let only_new = self.target.stages_only_new_products(generation);
        if !only_new && !self.checked {
            tx.rollback().await?;
            return Ok(Attempt::CheckBatchFirst);
        }
        if !only_new {
            sqlx::query(sql::INDEX_RESOLVED_PRODUCTS)
                .execute(&mut *tx)
                .await?;
        }

        // With skip_invalid, conflicting products are skipped and the checks run again
        // (skipping one product may not settle another's conflict); otherwise the first
        // round's conflicts refuse the merge.
        let mut skipped = Vec::new();
        let limit = if request.skip_invalid {
            SKIP_ROUND
        } else {
            request.max_conflicts
        };
        loop {
            let mut rows = StoredConflictRows::default();
            if by_barcode {
                rows.of_several_products = sqlx::query_as(sql::BARCODES_OF_SEVERAL_PRODUCTS)
                    .bind(store_id)
                    .bind(sql_limit(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                rows.same_stored_product = sqlx::query_as(sql::SAME_STORED_PRODUCT_TWICE)
                    .bind(sql_limit(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                rows.external_id_mismatches = sqlx::query_as(sql::EXTERNAL_ID_MISMATCHES)
                    .bind(sql_limit(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                rows.external_ids_of_others = sqlx::query_as(sql::EXTERNAL_IDS_OF_OTHER_PRODUCTS)
                    .bind(store_id)
                    .bind(sql_limit(limit))
                    .fetch_all(&mut *tx)
                    .await?;
            } else {
                rows.owned_by_others = sqlx::query_as(sql::BARCODES_OWNED_BY_OTHER_PRODUCTS)
                    .bind(store_id)
                    .bind(sql_limit(limit))
                    .fetch_all(&mut *tx)
                    .await?;
            }
            let mut conflicts = rows.into_conflicts(limit);
            if conflicts.is_empty() {
                break;
            }
            if !request.skip_invalid {
                tx.rollback().await?;
                conflicts.truncate(request.max_conflicts);
                return Ok(Attempt::Finished(MergeOutcome::Conflicts(conflicts)));
            }
            let conflicts = one_per_product(conflicts);
            for conflict in &conflicts {
                skip_staged_product(&mut tx, conflict.index()).await?;
            }
            skipped.extend(conflicts);
        }

        let in_stock_before: i64 = if request.clear {
            sqlx::query_scalar(sql::COUNT_IN_STOCK)
                .bind(store_id)
                .fetch_one(&mut *tx)
                .await?
        } else {
            0
        };
        let linked: i64 = if by_barcode {
            sqlx::query_scalar(sql::COUNT_LINKS)
                .fetch_one(&mut *tx)
                .await?
        } else {
            0
        };
        let updated = if only_new {
            0
        } else {
            sqlx::query(sql::DELETE_REPLACED_BARCODES)
                .bind(store_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::INSERT_REPLACEMENT_BARCODES)
                .bind(store_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::UPDATE_CHANGED_PRODUCTS.as_str())
                .bind(store_id)
                .bind(request.now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        };
        // The clear runs before new products exist, so it needs to tell apart only the
        // listed stored products (those resolved) from the unlisted ones.
        let cleared = if request.clear {
            sqlx::query(sql::CLEAR_UNLISTED_PRODUCTS)
                .bind(store_id)
                .bind(request.now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        } else {
            0
        };
        // Ids are drawn into the staged rows first, and the barcodes follow them.
        let inserted: Result<u64, sqlx::Error> = async {
            sqlx::query(sql::ALLOCATE_NEW_PRODUCT_IDS)
                .execute(&mut *tx)
                .await?;
            let created = sqlx::query(sql::INSERT_NEW_PRODUCTS)
                .bind(store_id)
                .bind(request.now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(sql::INSERT_NEW_PRODUCT_BARCODES)
                .bind(store_id)
                .execute(&mut *tx)
                .await?;
            Ok(created)
        }
        .await;
        let created = match inserted {
            Ok(created) => created,
            // An unchecked batch repeats an external id or a barcode.
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() && !self.checked => {
                tx.rollback().await?;
                return Ok(Attempt::CheckBatchFirst);
            }
            Err(error) => return Err(error),
        };

        if let Some(fraction) = request.max_clear_fraction {
            let in_stock = in_stock_before as u64;
            if cleared > crate::store::MASS_CLEAR_FLOOR
                && cleared as f64 > fraction * in_stock as f64
            {
                tx.rollback().await?;
                return Ok(Attempt::Finished(MergeOutcome::MassClear {
                    would_clear: cleared,
                    in_stock,
                }));
            }
        }
        if abandoned() {
            tx.rollback().await?;
            return Ok(Attempt::Finished(MergeOutcome::Abandoned));
        }
        if created + updated + cleared > 0 {
            sqlx::query(sql::ADVANCE_SYNC_GENERATION)
                .bind(store_id)
                .execute(&mut *tx)
                .await?;
        }
        if request.dry_run {
            tx.rollback().await?;
        } else {
            let run = &request.run;
            let rejected = run.rejected_before + skipped.len() as u64;
            let unchanged = run.received.saturating_sub(created + updated + rejected);
            sqlx::query(sql::COMMIT_SYNC_RUN)
                .bind(&run.sync_id)
                .bind(crate::clock::now_micros())
                .bind(run.received as i64)
                .bind(created as i64)
                .bind(updated as i64)
                .bind(unchanged as i64)
                .bind(cleared as i64)
                .bind(linked)
                .bind(rejected as i64)
                .bind(
                    request
                        .idempotency
                        .as_ref()
                        .map(|check| check.request_hash.as_str()),
                )
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(Attempt::Finished(MergeOutcome::Applied {
            counts: MergeCounts {
                created,
                updated,
                cleared,
                linked: linked as u64,
            },
            skipped,
        }))
    }
}

/// Turns staged product `index` into a skipped one: it writes nothing, and neither do its
/// barcodes.
async fn skip_staged_product(
    connection: &mut SqliteConnection,
    index: u64,
) -> Result<(), sqlx::Error> {
    let index = index as i64;
    sqlx::query(sql::SKIP_STAGED_PRODUCT)
        .bind(index)
        .execute(&mut *connection)
        .await?;
    sqlx::query(sql::DROP_SKIPPED_BARCODES)
        .bind(index)
        .execute(&mut *connection)
        .await?;
    Ok(())
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
