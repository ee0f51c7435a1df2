//! A sync on SQLite: its products are staged into temporary tables of its own connection
//! as they arrive (each batch with what a lookup of its stored products found), checked
//! there, and merged into the live tables in one transaction that holds the write lock
//! (see `sql.rs` for each statement).

use std::num::NonZeroUsize;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{Semaphore, mpsc};

use super::merge::skip_staged_product;
use super::point_reads::{BatchLookups, PointReads};
use super::sql;
use crate::product::{Barcodes, Price, ProductChange, SyncKey};
use crate::store::merge::{Attempt, SKIP_ROUND, batch_conflicts_from_rows, one_per_product};
use crate::store::unchanged::{FoundProducts, StagingTarget, StoredMatch};
use crate::store::{
    BatchConflict, During, MergeOutcome, MergeRequest, StagedProduct, Staging, StoreError,
    sql_limit,
};

/// Products per INSERT while staging: a usual message's worth. 13 parameters each stays far
/// below SQLite's limit of 32,766.
const PRODUCTS_PER_INSERT: usize = 1_000;
/// Barcodes per INSERT while staging; 2 parameters each.
const BARCODES_PER_INSERT: usize = 2_000;
/// Batches prepared (looked up and bound) ahead of the one being written.
const BATCHES_AHEAD: usize = 2;
/// The size from which a batch is prepared on a thread of the blocking pool.
const PREPARED_ELSEWHERE_FROM: usize = 100;

/// Batches prepared at once in the process. Each keeps a thread busy for a millisecond or
/// two; more than one per core would only queue on the cores, each holding a connection.
static PREPARE_SLOTS: LazyLock<Semaphore> = LazyLock::new(|| {
    Semaphore::new(std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
});

/// A batch ready to be written: its statements, what its lookup found (`None` if it was
/// not looked up), and what it adds to the stream staged.
struct PreparedBatch {
    statements: QueryBuilder<Sqlite>,
    matches: Option<Vec<Option<StoredMatch>>>,
    stream: StagedStream,
    looking_up: Duration,
    binding: Duration,
}

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
    fn of(batch: &[StagedProduct]) -> Self {
        StagedStream {
            products: batch.len() as u64,
            end: batch.last().map_or(0, |last| last.index + 1),
            skipped: batch.iter().any(|product| product.skipped),
        }
    }

    fn add(&mut self, batch: StagedStream) {
        self.products += batch.products;
        self.end = self.end.max(batch.end);
        self.skipped |= batch.skipped;
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

/// The staging area of one sync on SQLite.
pub(super) struct SqliteStaging {
    pub(super) connection: PoolConnection<Sqlite>,
    key: SyncKey,
    /// Where each batch's stored products are looked up while the batch before is written;
    /// none for a database in memory.
    lookups: Option<Arc<BatchLookups>>,
    pub(super) target: StagingTarget,
    /// Whether the batch was checked for repeats of an external id or a barcode.
    pub(super) checked: bool,
    /// What was staged, counted as it was.
    pub(super) staged: StagedStream,
    /// The stored products the lookups found.
    pub(super) found: FoundProducts,
    /// The products marked unchanged are listed one by one with the values they were sent
    /// with, and checked as any other: another sync wrote to the store during the upload.
    pub(super) marks_dropped: bool,
    _heap: HeapShare,
}

impl SqliteStaging {
    pub(super) async fn open(
        pool: &SqlitePool,
        point_reads: Option<&Arc<PointReads>>,
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
            let mut target = StagingTarget::new(store_id, key, generation, has_products);
            let lookups = point_reads
                .filter(|_| target.look_up)
                .map(|reads| Arc::new(reads.batch_lookups()));
            if lookups.is_none() {
                target.without_lookups();
            }
            Ok(SqliteStaging {
                connection,
                key,
                lookups,
                target,
                checked: false,
                staged: StagedStream::default(),
                found: FoundProducts::default(),
                marks_dropped: false,
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

    /// Looks up a batch's stored products (with `lookups`) and binds its statements, on a
    /// thread of the blocking pool: the part of staging that runs beside SQLite's own work
    /// on the batch before. A small batch is prepared on the spot: handing it over would
    /// cost more than preparing it.
    async fn prepare(
        lookups: Option<Arc<BatchLookups>>,
        store_id: i64,
        batch: Vec<StagedProduct>,
    ) -> PreparedBatch {
        if batch.len() < PREPARED_ELSEWHERE_FROM {
            return prepare_batch(lookups.as_deref(), store_id, batch);
        }
        let _slot = PREPARE_SLOTS
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let prepared =
            tokio::task::spawn_blocking(move || prepare_batch(lookups.as_deref(), store_id, batch))
                .await;
        prepared.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
    }

    async fn find_batch_conflicts(
        &mut self,
        limit: usize,
    ) -> Result<Vec<BatchConflict>, sqlx::Error> {
        self.list_unchanged_as_needed().await?;
        let conflicts = batch_conflicts(
            &mut self.connection,
            self.target.look_up && !self.found.found_twice,
            limit,
        )
        .await?;
        self.checked = true;
        Ok(conflicts)
    }

    /// Lists the unchanged products one by one where the checks of the batch need them so:
    /// every one, with the values it was sent with, if another sync wrote to the store
    /// since the upload began; every one's external id, if a stored product was found
    /// twice. Done outside the merge's transaction (the values are what committed before
    /// the lookups, which no later commit changes); should the marks go stale after this,
    /// the merge lists them itself.
    async fn list_unchanged_as_needed(&mut self) -> Result<(), sqlx::Error> {
        if self.key == SyncKey::Barcode || self.marks_dropped {
            return Ok(());
        }
        let store_id = self.target.store_id;
        let generation: Option<i64> = sqlx::query_scalar(sql::SYNC_GENERATION)
            .bind(store_id)
            .fetch_optional(&mut *self.connection)
            .await?;
        if !self.target.marks_hold(generation.unwrap_or(0)) {
            list_unchanged(&mut self.connection, store_id, Marks::Dropped).await?;
            self.marks_dropped = true;
        } else if self.found.found_twice {
            list_unchanged(&mut self.connection, store_id, Marks::Kept).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Staging for SqliteStaging {
    /// Looking up and binding a batch's values cost about as much as SQLite's own work on
    /// them, and that work runs on the connection's thread: the next batches are prepared
    /// on other threads while that thread writes the one before.
    async fn stage_all(
        &mut self,
        batches: BoxStream<'_, Vec<StagedProduct>>,
    ) -> Result<(), StoreError> {
        let SqliteStaging {
            connection,
            lookups,
            target,
            staged,
            found,
            ..
        } = self;
        let store_id = target.store_id;
        let lookups = lookups.clone().filter(|_| target.look_up);
        let prepared = batches
            .filter(|batch| std::future::ready(!batch.is_empty()))
            .map(|batch| Self::prepare(lookups.clone(), store_id, batch))
            .buffered(BATCHES_AHEAD);
        let started = Instant::now();
        let (bound, mut to_write) = mpsc::channel(1);
        let bind = async move {
            let (mut looking_up, mut binding) = (Duration::ZERO, Duration::ZERO);
            let mut prepared = std::pin::pin!(prepared);
            while let Some(batch) = prepared.next().await {
                match &batch.matches {
                    Some(matches) => found.note(matches),
                    None => target.without_lookups(),
                }
                staged.add(batch.stream);
                looking_up += batch.looking_up;
                binding += batch.binding;
                if bound.send(batch.statements).await.is_err() {
                    // The writer failed; it reports why.
                    break;
                }
            }
            found.forget_ids();
            Ok((looking_up, binding, staged.products))
        };
        let connection = &mut **connection;
        let write = async {
            let mut writing = Duration::ZERO;
            while let Some(statements) = to_write.recv().await {
                let started = Instant::now();
                Self::write_batch(connection, statements).await?;
                writing += started.elapsed();
            }
            Ok(writing)
        };
        let ((looking_up, binding, products), writing) =
            futures::try_join!(bind, write).during("staging products")?;
        // Where a slow upload spent its time: each part runs beside the others.
        tracing::debug!(
            products,
            looking_up_ms = looking_up.as_millis(),
            binding_ms = binding.as_millis(),
            writing_ms = writing.as_millis(),
            elapsed_ms = started.elapsed().as_millis(),
            "products staged"
        );
        Ok(())
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

/// Up to `limit` products of the staged batch that repeat an external id or a barcode of an
/// earlier one. With `only_new_external_ids`, only the external ids of products not found
/// are grouped (see `sql::DUPLICATE_EXTERNAL_IDS_OF_NEW_PRODUCTS`).
pub(super) async fn batch_conflicts(
    connection: &mut SqliteConnection,
    only_new_external_ids: bool,
    limit: usize,
) -> Result<Vec<BatchConflict>, sqlx::Error> {
    let statement = if only_new_external_ids {
        sql::DUPLICATE_EXTERNAL_IDS_OF_NEW_PRODUCTS.as_str()
    } else {
        sql::DUPLICATE_EXTERNAL_IDS.as_str()
    };
    let duplicates = sqlx::query_as(statement)
        .bind(sql_limit(limit))
        .fetch_all(&mut *connection)
        .await?;
    let shared = sqlx::query_as(sql::BARCODES_SHARED_IN_BATCH)
        .bind(sql_limit(limit))
        .fetch_all(&mut *connection)
        .await?;
    Ok(batch_conflicts_from_rows(duplicates, shared, limit))
}

/// What becomes of the unchanged marks when the unchanged products are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marks {
    /// They hold: each product is listed by its external id only, and stays unchanged.
    Kept,
    /// Another sync wrote to the store during the upload: each product gets back the
    /// values it was sent with, its barcodes split out, and is checked and written as any
    /// other.
    Dropped,
}

/// Lists the products of the unchanged runs in `staged_products`, one by one.
pub(super) async fn list_unchanged(
    connection: &mut SqliteConnection,
    store_id: i64,
    marks: Marks,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql::EXPAND_UNCHANGED_RUNS)
        .bind(store_id)
        .execute(&mut *connection)
        .await?;
    sqlx::query(sql::FORGET_UNCHANGED_RUNS)
        .execute(&mut *connection)
        .await?;
    if marks == Marks::Dropped {
        for restore in [
            sql::RESTORE_VALUES_FROM_PREIMAGES.as_str(),
            sql::RESTORE_VALUES_FROM_STORED.as_str(),
        ] {
            sqlx::query(restore)
                .bind(store_id)
                .execute(&mut *connection)
                .await?;
        }
        sqlx::query(sql::SPLIT_BARCODES_OF_UNCHANGED.as_str())
            .execute(&mut *connection)
            .await?;
        sqlx::query(sql::FORGET_UNCHANGED)
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// Looks up a batch's stored products (with `lookups`) and binds its statements.
fn prepare_batch(
    lookups: Option<&BatchLookups>,
    store_id: i64,
    batch: Vec<StagedProduct>,
) -> PreparedBatch {
    let started = Instant::now();
    let looked_up = match lookups.map(|lookups| lookups.match_batch(store_id, &batch)) {
        Some(Ok(looked_up)) => Some(looked_up),
        Some(Err(error)) => {
            // It only saves work: the merge resolves what it did not.
            tracing::warn!(%error, "a lookup of stored products failed; staging without them");
            None
        }
        None => None,
    };
    let bound_from = Instant::now();
    let stream = StagedStream::of(&batch);
    let statements = match &looked_up {
        Some(looked_up) => bind_batch(batch, &looked_up.matches, looked_up.generation),
        None => {
            let unmatched = vec![None; batch.len()];
            bind_batch(batch, &unmatched, 0)
        }
    };
    PreparedBatch {
        statements,
        matches: looked_up.map(|looked_up| looked_up.matches),
        stream,
        looking_up: bound_from - started,
        binding: bound_from.elapsed(),
    }
}

/// The INSERT statements that stage one batch, as one query with its values bound, each
/// product with what its lookup (at sync generation `looked_up_at`) found, if anything.
/// Products marked unchanged are staged as runs, without their values: most of a re-sync,
/// and no check or write needs them unless the marks go stale (see `sql::RESTORE_VALUES_*`).
/// The values move from the products into the query: nothing is copied on the way.
fn bind_batch(
    products: Vec<StagedProduct>,
    matches: &[Option<StoredMatch>],
    looked_up_at: i64,
) -> QueryBuilder<Sqlite> {
    let mut query = QueryBuilder::<Sqlite>::new("");
    let mut runs = UnchangedRuns::default();
    let mut barcodes: Vec<(i64, String)> = Vec::new();
    // The unchanged products are gathered into runs as the others are bound.
    let mut changed = products
        .into_iter()
        .zip(matches.iter().copied())
        .filter(|(product, stored)| match stored {
            Some(stored) if stored.unchanged => {
                runs.add(
                    product.index as i64,
                    stored.product_id,
                    sent_fields(&product.change),
                );
                false
            }
            _ => true,
        })
        .peekable();
    while changed.peek().is_some() {
        query.push(sql::INSERT_STAGED_PRODUCTS);
        query.push_values(
            changed.by_ref().take(PRODUCTS_PER_INSERT),
            |mut row, (product, stored)| {
                let index = product.index as i64;
                let change = product.change;
                let joined_barcodes = change.barcodes.as_ref().map(Barcodes::joined);
                barcodes.extend(
                    change
                        .barcodes
                        .into_iter()
                        .flat_map(Barcodes::into_vec)
                        .map(|barcode| (index, barcode)),
                );
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
                    .push_bind(product.skipped)
                    .push_bind(stored.map(|stored| stored.product_id))
                    .push_bind(stored.is_some_and(|stored| stored.barcodes_kept));
            },
        );
        query.push(";\n");
    }
    drop(changed);
    let mut runs = runs.0.into_iter();
    for _ in 0..runs.len().div_ceil(PRODUCTS_PER_INSERT) {
        query.push(sql::INSERT_UNCHANGED_RUNS);
        query.push_values(runs.by_ref().take(PRODUCTS_PER_INSERT), |mut row, run| {
            row.push_bind(run.first_index)
                .push_bind(run.first_product_id)
                .push_bind(run.products)
                .push_bind(run.sent_fields)
                .push_bind(looked_up_at);
        });
        query.push(";\n");
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

/// Products marked unchanged, in stream order, gathered into runs of `staged_unchanged`.
#[derive(Debug, Default, PartialEq)]
struct UnchangedRuns(Vec<UnchangedRun>);

/// Consecutive stream positions that are consecutive stored products, sending the same
/// fields.
#[derive(Debug, Clone, Copy, PartialEq)]
struct UnchangedRun {
    first_index: i64,
    first_product_id: i64,
    products: i64,
    sent_fields: i64,
}

impl UnchangedRuns {
    /// Adds the product at stream position `index`, stored as `product_id`; positions come
    /// in increasing order.
    fn add(&mut self, index: i64, product_id: i64, sent_fields: i64) {
        if let Some(last) = self.0.last_mut()
            && last.first_index + last.products == index
            && last.first_product_id + last.products == product_id
            && last.sent_fields == sent_fields
        {
            last.products += 1;
            return;
        }
        self.0.push(UnchangedRun {
            first_index: index,
            first_product_id: product_id,
            products: 1,
            sent_fields,
        });
    }
}

/// Which fields a product sends, as `staged_products.sent_fields` bits.
fn sent_fields(change: &ProductChange) -> i64 {
    [
        (change.barcodes.is_some(), sql::SENT_BARCODES),
        (change.in_stock.is_some(), sql::SENT_IN_STOCK),
        (change.price.is_some(), sql::SENT_PRICE),
        (change.name.is_some(), sql::SENT_NAME),
        (change.unit_size.is_some(), sql::SENT_UNIT_SIZE),
        (change.abv.is_some(), sql::SENT_ABV),
        (change.proof.is_some(), sql::SENT_PROOF),
        (change.category.is_some(), sql::SENT_CATEGORY),
    ]
    .into_iter()
    .filter(|(sent, _)| *sent)
    .fold(0, |bits, (_, bit)| bits | bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_products_in_stored_order_make_one_run() {
        let mut runs = UnchangedRuns::default();
        for (index, product_id) in [(0, 10), (1, 11), (2, 12)] {
            runs.add(index, product_id, 3);
        }
        assert_eq!(
            runs.0,
            [UnchangedRun {
                first_index: 0,
                first_product_id: 10,
                products: 3,
                sent_fields: 3,
            }]
        );
    }

    #[test]
    fn a_run_ends_at_a_gap_in_positions_or_ids_or_other_fields_sent() {
        let mut runs = UnchangedRuns::default();
        // 0-1 a run; 3 skips a position; 4 jumps back in ids; 5 sends other fields.
        for (index, product_id, sent) in [(0, 10, 1), (1, 11, 1), (3, 13, 1), (4, 2, 1), (5, 3, 2)]
        {
            runs.add(index, product_id, sent);
        }
        let runs: Vec<(i64, i64, i64)> = runs
            .0
            .iter()
            .map(|run| (run.first_index, run.first_product_id, run.products))
            .collect();
        assert_eq!(runs, [(0, 10, 2), (3, 13, 1), (4, 2, 1), (5, 3, 1)]);
    }

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
