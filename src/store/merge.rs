//! The final transaction of a sync, shared by both backends: what it is asked to do, what
//! it reports, and the steps themselves. The steps are macros because sqlx gives the two
//! backends' connections no common executor type; each backend expands them once.

use crate::product::SyncKey;

/// A problem of a batch that only shows across products (as opposed to a bad field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchConflict {
    /// Product `index` repeats the external id of product `first_index`.
    DuplicateExternalId {
        index: u64,
        first_index: u64,
        external_id: String,
    },
    /// Product `index` carries a barcode that product `first_index` of the batch carries too.
    BarcodeSharedInBatch {
        index: u64,
        first_index: u64,
        barcode: String,
    },
    /// Product `index` carries a barcode that a stored product keeps after the sync.
    BarcodeOwnedByStoredProduct {
        index: u64,
        barcode: String,
        owner_external_id: Option<String>,
    },
    /// Barcode sync: the barcodes of product `index` belong to several stored products.
    BarcodesOfSeveralProducts { index: u64, products: u64 },
    /// Barcode sync: product `index` matches the stored product that `first_index` matches.
    SameStoredProduct { index: u64, first_index: u64 },
    /// Barcode sync: the matched stored product already has another external id.
    ExternalIdMismatch {
        index: u64,
        sent: String,
        stored: String,
    },
    /// Barcode sync: the external id belongs to another stored product of the store.
    ExternalIdOfAnotherProduct { index: u64, external_id: String },
}

impl BatchConflict {
    /// Position of the offending product in the stream.
    pub fn index(&self) -> u64 {
        match self {
            BatchConflict::DuplicateExternalId { index, .. }
            | BatchConflict::BarcodeSharedInBatch { index, .. }
            | BatchConflict::BarcodeOwnedByStoredProduct { index, .. }
            | BatchConflict::BarcodesOfSeveralProducts { index, .. }
            | BatchConflict::SameStoredProduct { index, .. }
            | BatchConflict::ExternalIdMismatch { index, .. }
            | BatchConflict::ExternalIdOfAnotherProduct { index, .. } => *index,
        }
    }
}

/// What the final transaction of a sync does.
#[derive(Debug, Clone)]
pub struct MergeRequest {
    pub store_id: i64,
    pub key: SyncKey,
    pub clear: bool,
    /// Roll back instead of committing, after computing every count.
    pub dry_run: bool,
    /// The sync's time, microseconds since the Unix epoch: `created_at`/`updated_at` of
    /// every row it writes.
    pub now: i64,
    /// How many conflicts to report at most.
    pub max_conflicts: usize,
    /// Skip the products that conflict with stored ones instead of failing the merge.
    pub skip_invalid: bool,
    /// The mass-clear guard: the largest fraction of the store's in-stock products a clear
    /// may set out of stock (when that is more than [`MASS_CLEAR_FLOOR`] products); `None`
    /// when the sync allows a mass clear.
    pub max_clear_fraction: Option<f64>,
    /// The history run this merge completes when it commits.
    pub run: MergeRun,
    /// The sync's idempotency key: a merge whose key already committed for the store
    /// changes nothing.
    pub idempotency: Option<IdempotencyCheck>,
    /// Whether the batch was checked for products repeating an external id or a barcode.
    /// If not, a merge of products that are all new lets the live tables' unique keys
    /// find repeats (the checks then run only for a batch that has some), and any other
    /// merge answers [`MergeOutcome::BatchUnchecked`] before it writes.
    pub batch_checked: bool,
}

/// What the history records of a committed merge besides its own counts.
#[derive(Debug, Clone)]
pub struct MergeRun {
    pub sync_id: String,
    pub received: u64,
    /// Products rejected before the merge (skip_invalid).
    pub rejected_before: u64,
}

/// An idempotency key to honour.
#[derive(Debug, Clone)]
pub struct IdempotencyCheck {
    pub key: String,
    /// Hex SHA-256 of the sync's header and products.
    pub request_hash: String,
    /// Keys committed before this time (microseconds) are forgotten.
    pub not_before: i64,
}

/// A clear of this many products or fewer never trips the mass-clear guard.
pub const MASS_CLEAR_FLOOR: u64 = 10;

/// Rows written by a merge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeCounts {
    pub created: u64,
    pub updated: u64,
    pub cleared: u64,
    pub linked: u64,
}

/// How a merge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Committed, or rolled back for a dry run, with these counts; with `skip_invalid`, the
    /// products skipped for conflicting with stored ones.
    Applied {
        counts: MergeCounts,
        skipped: Vec<BatchConflict>,
    },
    /// Rolled back: the batch conflicts with stored products.
    Conflicts(Vec<BatchConflict>),
    /// Rolled back: the client went away before the commit.
    Abandoned,
    /// Rolled back: the clear would set more of the store out of stock than allowed.
    MassClear { would_clear: u64, in_stock: u64 },
    /// Nothing done: the idempotency key committed before, in run `run_id`, with the
    /// same content.
    Replay { run_id: String },
    /// Nothing done: the idempotency key committed before, in run `run_id`, with other
    /// content.
    KeyReused { run_id: String },
    /// Rolled back: the batch must be checked first (see [`MergeRequest::batch_checked`]).
    BatchUnchecked,
}

/// Positions come back from SQL as BIGINT; they were written from `u64` positions.
fn position(index: i64) -> u64 {
    index as u64
}

/// The batch's own conflicts, in stream order, at most `limit`.
pub(super) fn batch_conflicts_from_rows(
    duplicates: Vec<(i64, String, i64)>,
    shared_barcodes: Vec<(i64, String, i64)>,
    limit: usize,
) -> Vec<BatchConflict> {
    let duplicates = duplicates.into_iter().map(|(index, external_id, first)| {
        BatchConflict::DuplicateExternalId {
            index: position(index),
            first_index: position(first),
            external_id,
        }
    });
    let shared = shared_barcodes.into_iter().map(|(index, barcode, first)| {
        BatchConflict::BarcodeSharedInBatch {
            index: position(index),
            first_index: position(first),
            barcode,
        }
    });
    in_stream_order(duplicates.chain(shared).collect(), limit)
}

/// Conflicts with stored products found by the checks of one sync key.
#[derive(Debug, Default)]
pub(super) struct StoredConflictRows {
    pub owned_by_others: Vec<(i64, String, Option<String>)>,
    pub of_several_products: Vec<(i64, i64)>,
    pub same_stored_product: Vec<(i64, i64)>,
    pub external_id_mismatches: Vec<(i64, String, String)>,
    pub external_ids_of_others: Vec<(i64, String)>,
}

impl StoredConflictRows {
    pub(super) fn into_conflicts(self, limit: usize) -> Vec<BatchConflict> {
        let mut conflicts = Vec::new();
        conflicts.extend(self.owned_by_others.into_iter().map(
            |(index, barcode, owner_external_id)| BatchConflict::BarcodeOwnedByStoredProduct {
                index: position(index),
                barcode,
                owner_external_id,
            },
        ));
        conflicts.extend(
            self.of_several_products
                .into_iter()
                .map(
                    |(index, products)| BatchConflict::BarcodesOfSeveralProducts {
                        index: position(index),
                        products: position(products),
                    },
                ),
        );
        conflicts.extend(self.same_stored_product.into_iter().map(|(index, first)| {
            BatchConflict::SameStoredProduct {
                index: position(index),
                first_index: position(first),
            }
        }));
        conflicts.extend(
            self.external_id_mismatches
                .into_iter()
                .map(|(index, sent, stored)| BatchConflict::ExternalIdMismatch {
                    index: position(index),
                    sent,
                    stored,
                }),
        );
        conflicts.extend(
            self.external_ids_of_others
                .into_iter()
                .map(
                    |(index, external_id)| BatchConflict::ExternalIdOfAnotherProduct {
                        index: position(index),
                        external_id,
                    },
                ),
        );
        in_stream_order(conflicts, limit)
    }
}

/// Conflicts looked for per round when they are skipped rather than reported.
pub(super) const SKIP_ROUND: usize = 10_000;

/// The first conflict of each product: a skipped product is rejected once, whatever else
/// is wrong with it.
pub(super) fn one_per_product(mut conflicts: Vec<BatchConflict>) -> Vec<BatchConflict> {
    conflicts.sort_by_key(BatchConflict::index);
    conflicts.dedup_by_key(|conflict| conflict.index());
    conflicts
}

fn in_stream_order(mut conflicts: Vec<BatchConflict>, limit: usize) -> Vec<BatchConflict> {
    conflicts.sort_by_key(BatchConflict::index);
    conflicts.truncate(limit);
    conflicts
}

/// The merge after the store is locked: resolve, check, write, count, and commit (or roll
/// back for a dry run or an abandoned sync). See [`super::sql`] for each statement.
/// `$generation` is the store's sync generation read under the lock; `$resolved_at` the one
/// as of which staging resolved products and marked them unchanged, if it did.
macro_rules! merge_into_locked_store {
    ($tx:ident, $statements:ident, $request:ident, $abandoned:ident, $generation:expr, $target:expr) => {{
        use $crate::store::merge::StoredConflictRows;
        use $crate::store::sql;
        use $crate::store::{MergeCounts, MergeOutcome, sql_limit};
        use $crate::product::SyncKey;

        let store_id = $request.store_id;
        let limit = sql_limit($request.max_conflicts);
        let by_barcode = $request.key == SyncKey::Barcode;

        // Under the store's lock, so a retry waits for the attempt in flight and then sees
        // its key.
        if let Some(check) = &$request.idempotency {
            sqlx::query(sql::FORGET_EXPIRED_IDEMPOTENCY_KEY)
                .bind(store_id)
                .bind(&check.key)
                .bind(check.not_before)
                .execute(&mut *$tx)
                .await?;
            let earlier: Option<(String, Option<String>)> =
                sqlx::query_as(sql::COMMITTED_RUN_OF_IDEMPOTENCY_KEY)
                    .bind(store_id)
                    .bind(&check.key)
                    .fetch_optional(&mut *$tx)
                    .await?;
            if let Some((run_id, request_hash)) = earlier {
                $tx.rollback().await?;
                return Ok(
                    if request_hash.as_deref() == Some(check.request_hash.as_str()) {
                        MergeOutcome::Replay { run_id }
                    } else {
                        MergeOutcome::KeyReused { run_id }
                    },
                );
            }
        }

        if by_barcode {
            sqlx::query(sql::RESOLVE_BY_BARCODES)
                .bind(store_id)
                .execute(&mut *$tx)
                .await?;
        } else if $target.resolved_at != Some($generation) {
            // Another sync wrote to the store during the upload: what staging saw may be
            // stale (products created since, marks no longer true).
            sqlx::query($statements.stage_barcodes_of_unchanged.as_str())
                .execute(&mut *$tx)
                .await?;
            sqlx::query(sql::FORGET_UNCHANGED)
                .execute(&mut *$tx)
                .await?;
            sqlx::query(sql::RESOLVE_BY_EXTERNAL_ID)
                .bind(store_id)
                .execute(&mut *$tx)
                .await?;
        }
        // Then no staged product matches a stored one: the steps for stored products have
        // nothing to do, and skipping them spares a pass over the staged rows each.
        let only_new = $target.stages_only_new_products($generation);
        if !only_new && !$request.batch_checked {
            $tx.rollback().await?;
            return Ok(MergeOutcome::BatchUnchecked);
        }
        if let Some(index) = $statements.index_resolved_products
            && !only_new
        {
            sqlx::query(index).execute(&mut *$tx).await?;
        }

        // With skip_invalid, conflicting products are skipped and the checks run again
        // (skipping one product may not settle another's conflict); otherwise the first
        // round's conflicts refuse the merge.
        let mut skipped = Vec::new();
        let limit = if $request.skip_invalid {
            sql_limit($crate::store::merge::SKIP_ROUND)
        } else {
            limit
        };
        loop {
            let mut rows = StoredConflictRows::default();
            if by_barcode {
                rows.of_several_products = sqlx::query_as(sql::BARCODES_OF_SEVERAL_PRODUCTS)
                    .bind(store_id)
                    .bind(limit)
                    .fetch_all(&mut *$tx)
                    .await?;
                rows.same_stored_product = sqlx::query_as(sql::SAME_STORED_PRODUCT_TWICE)
                    .bind(limit)
                    .fetch_all(&mut *$tx)
                    .await?;
                rows.external_id_mismatches = sqlx::query_as(sql::EXTERNAL_ID_MISMATCHES)
                    .bind(limit)
                    .fetch_all(&mut *$tx)
                    .await?;
                rows.external_ids_of_others = sqlx::query_as(sql::EXTERNAL_IDS_OF_OTHER_PRODUCTS)
                    .bind(store_id)
                    .bind(limit)
                    .fetch_all(&mut *$tx)
                    .await?;
            } else {
                rows.owned_by_others = sqlx::query_as(sql::BARCODES_OWNED_BY_OTHER_PRODUCTS)
                    .bind(store_id)
                    .bind(limit)
                    .fetch_all(&mut *$tx)
                    .await?;
            }
            let conflicts = rows.into_conflicts(limit as usize);
            if conflicts.is_empty() {
                break;
            }
            if !$request.skip_invalid {
                $tx.rollback().await?;
                let mut conflicts = conflicts;
                conflicts.truncate($request.max_conflicts);
                return Ok(MergeOutcome::Conflicts(conflicts));
            }
            let conflicts = $crate::store::merge::one_per_product(conflicts);
            for conflict in &conflicts {
                skip_staged_product!(&mut *$tx, conflict.index());
            }
            skipped.extend(conflicts);
        }

        let in_stock_before: i64 = if $request.clear {
            sqlx::query_scalar(sql::COUNT_IN_STOCK)
                .bind(store_id)
                .fetch_one(&mut *$tx)
                .await?
        } else {
            0
        };
        let linked: i64 = if by_barcode {
            sqlx::query_scalar(sql::COUNT_LINKS)
                .fetch_one(&mut *$tx)
                .await?
        } else {
            0
        };
        let updated = if only_new {
            0
        } else {
            sqlx::query($statements.delete_replaced_barcodes)
                .bind(store_id)
                .execute(&mut *$tx)
                .await?;
            sqlx::query(sql::INSERT_REPLACEMENT_BARCODES)
                .bind(store_id)
                .execute(&mut *$tx)
                .await?;
            sqlx::query($statements.update_changed_products.as_str())
                .bind(store_id)
                .bind($request.now)
                .execute(&mut *$tx)
                .await?
                .rows_affected()
        };
        // The clear runs before new products exist, so it needs to tell apart only the
        // listed stored products (those resolved) from the unlisted ones.
        let cleared = if $request.clear {
            sqlx::query($statements.clear_unlisted_products)
                .bind(store_id)
                .bind($request.now)
                .execute(&mut *$tx)
                .await?
                .rows_affected()
        } else {
            0
        };
        let inserted: Result<u64, sqlx::Error> = async {
            Ok(match $statements.insert_new_products_with_barcodes {
                // One statement creates the products and their barcodes, ids drawn as it
                // goes.
                Some(statement) => {
                    let created: i64 = sqlx::query_scalar(sql::COUNT_NEW_PRODUCTS)
                        .fetch_one(&mut *$tx)
                        .await?;
                    sqlx::query(statement)
                        .bind(store_id)
                        .bind($request.now)
                        .execute(&mut *$tx)
                        .await?;
                    created as u64
                }
                // Ids are drawn into the staged rows first, and the barcodes follow them.
                None => {
                    sqlx::query($statements.allocate_new_product_ids)
                        .execute(&mut *$tx)
                        .await?;
                    let created = sqlx::query($statements.insert_new_products.as_str())
                        .bind(store_id)
                        .bind($request.now)
                        .execute(&mut *$tx)
                        .await?
                        .rows_affected();
                    sqlx::query(sql::INSERT_NEW_PRODUCT_BARCODES)
                        .bind(store_id)
                        .execute(&mut *$tx)
                        .await?;
                    created
                }
            })
        }
        .await;
        let created = match inserted {
            Ok(created) => created,
            // An unchecked batch repeats an external id or a barcode.
            Err(sqlx::Error::Database(error))
                if error.is_unique_violation() && !$request.batch_checked =>
            {
                $tx.rollback().await?;
                return Ok(MergeOutcome::BatchUnchecked);
            }
            Err(error) => return Err(error.into()),
        };

        if let Some(fraction) = $request.max_clear_fraction {
            let in_stock = in_stock_before as u64;
            if cleared > $crate::store::merge::MASS_CLEAR_FLOOR
                && cleared as f64 > fraction * in_stock as f64
            {
                $tx.rollback().await?;
                return Ok(MergeOutcome::MassClear {
                    would_clear: cleared,
                    in_stock,
                });
            }
        }
        if $abandoned() {
            $tx.rollback().await?;
            return Ok(MergeOutcome::Abandoned);
        }
        if created + updated + cleared > 0 {
            sqlx::query(sql::ADVANCE_SYNC_GENERATION)
                .bind(store_id)
                .execute(&mut *$tx)
                .await?;
        }
        if $request.dry_run {
            $tx.rollback().await?;
        } else {
            let run = &$request.run;
            let rejected = run.rejected_before + skipped.len() as u64;
            let unchanged = run.received.saturating_sub(created + updated + rejected);
            sqlx::query(sql::COMMIT_SYNC_RUN)
                .bind(&run.sync_id)
                .bind($crate::clock::now_micros())
                .bind(run.received as i64)
                .bind(created as i64)
                .bind(updated as i64)
                .bind(unchanged as i64)
                .bind(cleared as i64)
                .bind(linked)
                .bind(rejected as i64)
                .bind(
                    $request
                        .idempotency
                        .as_ref()
                        .map(|check| check.request_hash.as_str()),
                )
                .execute(&mut *$tx)
                .await?;
            $tx.commit().await?;
        }
        Ok(MergeOutcome::Applied {
            counts: MergeCounts {
                created,
                updated,
                cleared,
                linked: linked as u64,
            },
            skipped,
        })
    }};
}

/// Turns staged product `$index` into a skipped one (see `sql::SKIP_STAGED_PRODUCT`).
macro_rules! skip_staged_product {
    ($executor:expr, $index:expr) => {{
        let index = $index as i64;
        sqlx::query($crate::store::sql::SKIP_STAGED_PRODUCT)
            .bind(index)
            .execute($executor)
            .await?;
        sqlx::query($crate::store::sql::DROP_SKIPPED_BARCODES)
            .bind(index)
            .execute($executor)
            .await?;
    }};
}

/// The staging steps shared by both backends: opening, the batch's own conflicts, cleanup.
macro_rules! staging_common {
    ($database:ty, $statements:ident) => {
        pub(super) async fn open(
            pool: &sqlx::Pool<$database>,
            store_id: i64,
            key: $crate::product::SyncKey,
        ) -> Result<Self, $crate::store::StoreError> {
            let mut connection = pool.acquire().await?;
            sqlx::raw_sql($statements.create_staging.as_str())
                .execute(&mut *connection)
                .await?;
            let target = if key == $crate::product::SyncKey::ExternalId {
                // Read before the first lookup, so that a sync committing after it shows.
                let (generation, has_products): (i64, bool) =
                    sqlx::query_as($crate::store::sql::STAGING_START)
                        .bind(store_id)
                        .fetch_optional(&mut *connection)
                        .await?
                        .unwrap_or((0, false));
                $crate::store::StagingTarget {
                    store_id,
                    resolved_at: Some(generation),
                    look_up: has_products,
                }
            } else {
                $crate::store::StagingTarget {
                    store_id,
                    resolved_at: None,
                    look_up: false,
                }
            };
            Ok(Staging::new(connection, pool, target))
        }

        async fn find_batch_conflicts(
            &mut self,
            limit: usize,
        ) -> Result<Vec<$crate::store::BatchConflict>, $crate::store::StoreError> {
            use $crate::store::{sql, sql_limit};
            let duplicates = sqlx::query_as(sql::DUPLICATE_EXTERNAL_IDS)
                .bind(sql_limit(limit))
                .fetch_all(&mut *self.connection)
                .await?;
            let shared = sqlx::query_as(sql::BARCODES_SHARED_IN_BATCH)
                .bind(sql_limit(limit))
                .fetch_all(&mut *self.connection)
                .await?;
            Ok($crate::store::merge::batch_conflicts_from_rows(
                duplicates, shared, limit,
            ))
        }

        /// Skips the products of the batch that conflict with others of the batch, round
        /// after round until none do; returns what was skipped.
        pub(super) async fn skip_batch_conflicts(
            &mut self,
        ) -> Result<Vec<$crate::store::BatchConflict>, $crate::store::StoreError> {
            let mut skipped = Vec::new();
            loop {
                let conflicts = self
                    .find_batch_conflicts($crate::store::merge::SKIP_ROUND)
                    .await?;
                if conflicts.is_empty() {
                    return Ok(skipped);
                }
                let conflicts = $crate::store::merge::one_per_product(conflicts);
                for conflict in &conflicts {
                    skip_staged_product!(&mut *self.connection, conflict.index());
                }
                skipped.extend(conflicts);
            }
        }

        pub(super) async fn close(mut self) {
            if let Err(error) = sqlx::raw_sql($crate::store::sql::DROP_STAGING)
                .execute(&mut *self.connection)
                .await
            {
                // The connection may hold staged rows; never hand it to another request.
                tracing::warn!(%error, "could not drop the staging tables; closing the connection");
                let _ = self.connection.detach().close().await;
            }
        }
    };
}
