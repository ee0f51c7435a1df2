//! A sync on PostgreSQL: its products stream into temporary tables of its own connection
//! through one `COPY`, are checked there, and are merged into the live tables in one
//! transaction that holds the store's row lock (see `sql.rs` for each statement).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use super::copy_text::CopyText;
use super::sql;
use crate::product::SyncKey;
use crate::store::merge::{
    Attempt, SKIP_ROUND, StoredConflictRows, batch_conflicts_from_rows, one_per_product,
};
use crate::store::unchanged::{self, StagingTarget, StoredFields, StoredMatch};
use crate::store::{
    BatchConflict, During, MergeCounts, MergeOutcome, MergeRequest, StagedProduct, Staging,
    StoreError, sql_limit,
};

/// How long staging waits for a connection to look up a batch's stored products.
const LOOKUP_CONNECTION_WAIT: Duration = Duration::from_millis(500);
/// Batches looked up ahead of the one going into the `COPY`, each on a connection of its
/// own while its lookup runs.
const LOOKUPS_AHEAD: usize = 2;
/// The staging connection and the lookups ahead.
pub(crate) const CONNECTIONS_PER_SYNC: u32 = 1 + LOOKUPS_AHEAD as u32;

/// The staging area of one sync on PostgreSQL.
pub(super) struct PostgresStaging {
    connection: PoolConnection<Postgres>,
    /// Lookups of stored products run on other connections while the `COPY` is open.
    pool: PgPool,
    target: StagingTarget,
    /// Whether the staged barcodes were split into rows of their own for the checks.
    checks_prepared: bool,
    /// Whether the batch was checked for repeats of an external id or a barcode.
    checked: bool,
}

impl PostgresStaging {
    pub(super) async fn open(
        pool: &PgPool,
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
            Ok(PostgresStaging {
                connection,
                pool: pool.clone(),
                target: StagingTarget::new(store_id, key, generation, has_products),
                checks_prepared: false,
                checked: false,
            })
        }
        .await
        .during("opening a sync's staging")
    }

    /// The stored products of a batch, matched to its products, on a connection borrowed
    /// for the lookup; `None` when none came free soon (every connection busy).
    async fn look_up(
        pool: &PgPool,
        store_id: i64,
        products: &[StagedProduct],
    ) -> Result<Option<Vec<Option<StoredMatch>>>, sqlx::Error> {
        let Ok(connection) = tokio::time::timeout(LOOKUP_CONNECTION_WAIT, pool.acquire()).await
        else {
            return Ok(None);
        };
        let mut connection = connection?;
        let stored: Vec<StoredFields> = sqlx::query_as(sql::SELECT_STORED_FIELDS)
            .bind(store_id)
            .bind(unchanged::external_ids(products))
            .fetch_all(&mut *connection)
            .await?;
        Ok(Some(unchanged::match_batch(products, stored)))
    }

    /// Streams every batch into `staged_products` through one `COPY`, open for the whole
    /// upload: one round trip per batch and none to wait for. (Each short `COPY` would end
    /// with a small write that waits out delayed acknowledgements.) Barcodes travel in the
    /// product rows and are split out for the checks.
    ///
    /// The next batches are looked up on other connections while a batch's rows go out,
    /// so the upload does not stop for each lookup's round trip. Should lookups find no
    /// connection, staging goes on without them: they only save work, and the merge
    /// resolves what they did not.
    async fn copy_all(
        &mut self,
        batches: BoxStream<'_, Vec<StagedProduct>>,
    ) -> Result<(), sqlx::Error> {
        let lookups_on = Arc::new(AtomicBool::new(self.target.look_up));
        let pool = self.pool.clone();
        let store_id = self.target.store_id;
        let looked_up = batches
            .filter(|batch| std::future::ready(!batch.is_empty()))
            .map(|batch| {
                let pool = pool.clone();
                let lookups_on = Arc::clone(&lookups_on);
                async move {
                    let matches = if lookups_on.load(Ordering::Relaxed) {
                        Self::look_up(&pool, store_id, &batch).await?
                    } else {
                        None
                    };
                    if matches.is_none() {
                        lookups_on.store(false, Ordering::Relaxed);
                    }
                    Ok::<_, sqlx::Error>((batch, matches))
                }
            })
            .buffered(LOOKUPS_AHEAD);
        let mut looked_up = std::pin::pin!(looked_up);
        // No `COPY` for a sync without products.
        let Some(mut next) = looked_up.next().await else {
            return Ok(());
        };
        let mut copy = self
            .connection
            .copy_in_raw(sql::COPY_STAGED_PRODUCTS)
            .await?;
        loop {
            let (batch, matches) = next?;
            let matches = matches.unwrap_or_else(|| {
                if self.target.look_up {
                    tracing::warn!("no database connection free for lookups; staging without them");
                    self.target.look_up = false;
                    self.target.resolved_at = None;
                }
                vec![None; batch.len()]
            });
            copy.send(copy_rows(&batch, &matches).buffer.into_bytes())
                .await?;
            match looked_up.next().await {
                Some(looked_up_batch) => next = looked_up_batch,
                None => break,
            }
        }
        copy.finish().await?;
        sqlx::raw_sql(sql::ANALYZE_STAGED_PRODUCTS)
            .execute(&mut *self.connection)
            .await?;
        Ok(())
    }

    /// Splits the staged barcodes into their own rows, once, before the first check.
    async fn prepare_checks(&mut self) -> Result<(), sqlx::Error> {
        if !self.checks_prepared {
            sqlx::raw_sql(sql::SPLIT_STAGED_BARCODES)
                .execute(&mut *self.connection)
                .await?;
            self.checks_prepared = true;
        }
        Ok(())
    }

    async fn find_batch_conflicts(
        &mut self,
        limit: usize,
    ) -> Result<Vec<BatchConflict>, sqlx::Error> {
        self.prepare_checks().await?;
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
        let mut tx = self.connection.begin().await?;
        sqlx::query(sql::ENSURE_STORE)
            .bind(store_id)
            .bind(request.now)
            .execute(&mut *tx)
            .await?;
        let generation: i64 = sqlx::query_scalar(sql::LOCK_STORE)
            .bind(store_id)
            .fetch_one(&mut *tx)
            .await?;

        // Under the store's lock, so a retry waits for the attempt in flight and then sees
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
            sqlx::query(sql::SPLIT_BARCODES_OF_UNCHANGED)
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
        // One statement creates the products and their barcodes, ids drawn as it goes.
        let inserted: Result<u64, sqlx::Error> = async {
            let created: i64 = sqlx::query_scalar(sql::COUNT_NEW_PRODUCTS)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(sql::INSERT_NEW_PRODUCTS_WITH_BARCODES)
                .bind(store_id)
                .bind(request.now)
                .execute(&mut *tx)
                .await?;
            Ok(created as u64)
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
async fn skip_staged_product(connection: &mut PgConnection, index: u64) -> Result<(), sqlx::Error> {
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
impl Staging for PostgresStaging {
    async fn stage_all(
        &mut self,
        batches: BoxStream<'_, Vec<StagedProduct>>,
    ) -> Result<(), StoreError> {
        self.copy_all(batches).await.during("staging products")
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

/// The staged rows of a batch in `COPY` text format.
fn copy_rows(products: &[StagedProduct], matches: &[Option<StoredMatch>]) -> CopyText {
    let mut rows = CopyText::default();
    for (product, stored) in products.iter().zip(matches) {
        let change = &product.change;
        rows.int(Some(product.index as i64));
        rows.text(change.external_id.as_deref());
        rows.text(
            change
                .barcodes
                .as_ref()
                .map(|barcodes| barcodes.joined())
                .as_deref(),
        );
        rows.int(change.in_stock);
        rows.text(change.price.as_ref().map(|price| price.as_str()));
        rows.text(change.name.as_deref());
        rows.text(change.unit_size.as_deref());
        rows.float(change.abv);
        rows.float(change.proof);
        rows.int(change.category.map(|category| i64::from(category.code())));
        rows.boolean(product.skipped);
        rows.int(stored.map(|stored| stored.product_id));
        rows.boolean(stored.is_some_and(|stored| stored.unchanged));
        rows.end_row();
    }
    rows
}
