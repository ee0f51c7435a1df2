//! A sync on SQLite: its products are staged into temporary tables of its own connection
//! as they arrive (each batch with what a lookup of its stored products found), checked
//! there, and merged into the live tables in one transaction that holds the write lock
//! (see `sql.rs` for each statement).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::mpsc;

use super::batches;
use super::heap::HeapShare;
use super::merge::skip_staged_product;
use super::point_reads::{BatchLookups, PointReads};
use super::sql;
use crate::product::SyncKey;
use crate::store::merge::{Attempt, SKIP_ROUND, batch_conflicts_from_rows, one_per_product};
use crate::store::unchanged::{FoundProducts, StagingTarget};
use crate::store::{
    BatchConflict, During, MergeOutcome, MergeRequest, StagedProduct, Staging, StoreError,
    sql_limit,
};

/// Batches prepared (looked up and bound) ahead of the one being written.
const BATCHES_AHEAD: usize = 2;

/// What a sync staged, counted as batches go in.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct StagedStream {
    products: u64,
    /// One past the highest stream position staged.
    end: u64,
    skipped: bool,
}

impl StagedStream {
    pub(super) fn of(batch: &[StagedProduct]) -> Self {
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
            .map(|batch| batches::prepare(lookups.clone(), store_id, batch))
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
