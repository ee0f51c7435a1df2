//! A sync on PostgreSQL: its products stream into temporary tables of its own connection
//! through one `COPY`, are checked there, and are merged into the live tables in one
//! transaction that holds the store's row lock (see `sql.rs` for each statement).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use super::copy_text::CopyText;
use super::merge::skip_staged_product;
use super::sql;
use crate::product::SyncKey;
use crate::store::merge::{Attempt, SKIP_ROUND, batch_conflicts_from_rows, one_per_product};
use crate::store::retry;
use crate::store::unchanged::{self, FoundProducts, StagingTarget, StoredFields, StoredMatch};
use crate::store::{
    BatchConflict, During, MergeOutcome, MergeRequest, StagedProduct, Staging, StoreError,
    sql_limit,
};

/// How long staging waits for a connection to look up a batch's stored products.
const LOOKUP_CONNECTION_WAIT: Duration = Duration::from_millis(500);
/// Batches looked up ahead of the one going into the `COPY`, each on a connection of its
/// own while its lookup runs. A re-sync's upload waits on these lookups: with two, a
/// fifth of the machine sat idle and a 10%-changed re-sync took 0.61–0.66 of a create;
/// with three, 0.44–0.51; four measured the same as three (`cargo bench --bench sync`).
const LOOKUPS_AHEAD: usize = 3;
/// Staged products from which the planner is given statistics of the staging tables (and
/// below which a batch is checked for repeats before the merge): for fewer, its guesses for
/// a temporary table without them serve, and each `ANALYZE` is one more round trip.
const STATISTICS_FROM: u64 = 1_000;
/// The size up to which the staging tables are emptied by deleting rows, and past which
/// they are truncated (which costs about as much as creating a table).
const KEPT_STAGING_BYTES: i64 = 4 * 1024 * 1024;
/// The staging connection and the lookups ahead.
pub(crate) const CONNECTIONS_PER_SYNC: u32 = 1 + LOOKUPS_AHEAD as u32;

/// The staging area of one sync on PostgreSQL.
pub(super) struct PostgresStaging {
    pub(super) connection: PoolConnection<Postgres>,
    /// Lookups of stored products run on other connections while the `COPY` is open.
    pub(super) pool: PgPool,
    pub(super) target: StagingTarget,
    /// Whether the staged barcodes were split into rows of their own for the checks.
    pub(super) checks_prepared: bool,
    /// Whether the batch was checked for repeats of an external id or a barcode.
    pub(super) checked: bool,
    /// Products staged.
    pub(super) staged: u64,
    /// The stored products the lookups found.
    pub(super) found: FoundProducts,
    key: SyncKey,
    /// The unchanged marks (and the barcodes kept) are dropped, the barcodes of every
    /// product split out: another sync wrote to the store during the upload.
    pub(super) marks_dropped: bool,
}

impl PostgresStaging {
    pub(super) async fn open(
        pool: &PgPool,
        store_id: i64,
        key: SyncKey,
    ) -> Result<Self, StoreError> {
        async {
            let mut connection = pool.acquire().await?;
            sqlx::raw_sql(sql::OPEN_STAGING)
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
                staged: 0,
                found: FoundProducts::default(),
                key,
                marks_dropped: false,
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
        let external_ids = unchanged::external_ids(products);
        // First the products stored after the batch's first one, as many as it holds;
        // then, by their external ids, those the range did not hold.
        let mut stored: Vec<StoredFields> = match external_ids.first() {
            Some(first) => {
                sqlx::query_as(sql::SELECT_STORED_FIELDS_FROM)
                    .bind(store_id)
                    .bind(first)
                    .bind(products.len() as i64)
                    .fetch_all(&mut *connection)
                    .await?
            }
            None => Vec::new(),
        };
        let in_range: HashSet<&str> = stored
            .iter()
            .filter_map(|fields| fields.external_id.as_deref())
            .collect();
        let elsewhere: Vec<&str> = external_ids
            .into_iter()
            .filter(|external_id| !in_range.contains(external_id))
            .collect();
        drop(in_range);
        if !elsewhere.is_empty() {
            let found: Vec<StoredFields> = sqlx::query_as(sql::SELECT_STORED_FIELDS)
                .bind(store_id)
                .bind(elsewhere)
                .fetch_all(&mut *connection)
                .await?;
            stored.extend(found);
        }
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
                    self.target.without_lookups();
                }
                vec![None; batch.len()]
            });
            self.found.note(&matches);
            copy.send(copy_rows(&batch, &matches).buffer.into_bytes())
                .await?;
            self.staged += batch.len() as u64;
            match looked_up.next().await {
                Some(looked_up_batch) => next = looked_up_batch,
                None => break,
            }
        }
        copy.finish().await?;
        self.found.forget_ids();
        if self.staged >= STATISTICS_FROM {
            sqlx::raw_sql(sql::ANALYZE_STAGED_PRODUCTS)
                .execute(&mut *self.connection)
                .await?;
        }
        Ok(())
    }

    /// Empties the staging tables for the connection's next sync: by deleting the rows of
    /// tables that stayed small, by truncating those that grew or were given statistics
    /// (which would mislead the planner about the next, small, sync).
    async fn empty(&mut self) -> Result<(), sqlx::Error> {
        let size: i64 = sqlx::query_scalar(sql::STAGING_SIZE)
            .fetch_one(&mut *self.connection)
            .await?;
        let statement = if size > KEPT_STAGING_BYTES || self.staged >= STATISTICS_FROM {
            sql::TRUNCATE_STAGING
        } else {
            sql::EMPTY_STAGING
        };
        sqlx::raw_sql(statement)
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
            if self.staged >= STATISTICS_FROM {
                sqlx::raw_sql(sql::ANALYZE_STAGED_BARCODES)
                    .execute(&mut *self.connection)
                    .await?;
            }
            self.checks_prepared = true;
        }
        Ok(())
    }

    async fn find_batch_conflicts(
        &mut self,
        limit: usize,
    ) -> Result<Vec<BatchConflict>, sqlx::Error> {
        self.prepare_checks().await?;
        self.drop_marks_if_stale().await?;
        // `target.look_up` is still on only if every batch was looked up.
        let conflicts = batch_conflicts(
            &mut self.connection,
            self.target.look_up && !self.found.found_twice,
            limit,
        )
        .await?;
        self.checked = true;
        Ok(conflicts)
    }

    /// Drops the unchanged marks if another sync wrote to the store since the upload
    /// began, so that the checks of the batch see every product's barcodes. Outside the
    /// merge's transaction; should the marks go stale after this, the merge drops them
    /// itself and checks the batch again.
    async fn drop_marks_if_stale(&mut self) -> Result<(), sqlx::Error> {
        if self.key == SyncKey::Barcode || self.marks_dropped {
            return Ok(());
        }
        let generation: Option<i64> = sqlx::query_scalar(sql::SYNC_GENERATION)
            .bind(self.target.store_id)
            .fetch_optional(&mut *self.connection)
            .await?;
        if !self.target.marks_hold(generation.unwrap_or(0)) {
            drop_marks(&mut self.connection).await?;
            self.marks_dropped = true;
        }
        Ok(())
    }
}

/// Up to `limit` products of the staged batch that repeat an external id or a barcode of an
/// earlier one. With `only_new_external_ids`, only the external ids of products not found
/// are grouped (see `sql::DUPLICATE_EXTERNAL_IDS_OF_NEW_PRODUCTS`). The barcodes must be
/// split out (`prepare_checks`).
pub(super) async fn batch_conflicts(
    connection: &mut PgConnection,
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

/// Another sync wrote to the store during the upload: what staging saw may be stale. The
/// barcodes of the products marked unchanged are split out (they were left out, and the
/// changed products' ones must be already), and every mark is dropped.
pub(super) async fn drop_marks(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    for statement in [
        sql::SPLIT_BARCODES_OF_UNCHANGED,
        sql::FORGET_UNCHANGED,
        sql::FORGET_KEPT_BARCODES,
    ] {
        sqlx::query(statement).execute(&mut *connection).await?;
    }
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
        // A small batch is checked before the transaction: cheaper than an attempt that
        // may stop to ask for it. Not with an idempotency key: whether the key committed
        // before is answered first (a retry gets its replay, a reuse is refused as a
        // reuse, whatever the batch holds), and only the attempt can read that.
        if !self.checked && self.staged < STATISTICS_FROM && request.idempotency.is_none() {
            let conflicts = self.batch_conflicts(request.max_conflicts).await?;
            if !conflicts.is_empty() {
                return Ok(MergeOutcome::Conflicts(conflicts));
            }
        }
        let mut attempt = 1;
        loop {
            match self.attempt(request, abandoned).await {
                Ok(Attempt::Finished(outcome)) => return Ok(outcome),
                Ok(Attempt::CheckBatchFirst) => {
                    let conflicts = self.batch_conflicts(request.max_conflicts).await?;
                    if !conflicts.is_empty() {
                        return Ok(MergeOutcome::Conflicts(conflicts));
                    }
                }
                // The transaction was rolled back whole; the staged rows are as they were.
                Err(error)
                    if retry::is_serialization_failure(&error) && attempt < retry::MAX_ATTEMPTS =>
                {
                    tracing::info!(%error, attempt, "the merge lost a serialization conflict; running it again");
                    retry::pause_before(attempt).await;
                    attempt += 1;
                }
                Err(error) => return Err(error).during("merging a sync"),
            }
        }
    }

    async fn close(mut self: Box<Self>) {
        if let Err(error) = self.empty().await {
            // The connection may hold staged rows; never hand it to another request.
            tracing::warn!(%error, "could not empty the staging tables; closing the connection");
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
        rows.boolean(stored.is_some_and(|stored| stored.barcodes_kept));
        rows.end_row();
    }
    rows
}
