//! The final transaction of a sync on PostgreSQL: resolve the staged products, check them
//! against the stored ones, write, count, and commit (or roll back for a dry run, an
//! abandoned sync or a refusal), all in one transaction that holds the store's row lock.

use sqlx::{Connection, PgConnection, PgPool};

use super::sql;
use super::staging::{PostgresStaging, batch_conflicts, drop_marks};
use crate::product::SyncKey;
use crate::store::merge::{Attempt, SKIP_ROUND, StoredConflictRows, one_per_product};
use crate::store::{
    MASS_CLEAR_FLOOR, MergeCounts, MergeOutcome, MergeRequest, RunOutcome, sql_limit,
};

impl PostgresStaging {
    /// One attempt at the merge transaction.
    pub(super) async fn attempt(
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
        let mut recheck_batch = false;
        let limit = if request.skip_invalid {
            SKIP_ROUND
        } else {
            request.max_conflicts
        };
        if by_barcode {
            sqlx::query(sql::RESOLVE_BY_BARCODES)
                .bind(store_id)
                .execute(&mut *tx)
                .await?;
        } else if !self.target.marks_hold(generation) {
            // Another sync wrote to the store during the upload: what staging saw may be
            // stale (products created since, marks no longer true). If that happened after
            // the batch was checked, the marks are dropped now and the batch is checked
            // again with every product, in the rounds below.
            if !self.marks_dropped {
                drop_marks(&mut tx).await?;
                recheck_batch = true;
            }
            sqlx::query(sql::RESOLVE_BY_EXTERNAL_ID)
                .bind(store_id)
                .execute(&mut *tx)
                .await?;
        }
        loop {
            let mut rows = StoredConflictRows::default();
            if recheck_batch {
                rows.batch = batch_conflicts(&mut tx, false, limit).await?;
            }
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
                    .bind(store_id)
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

        let (in_stock_before, store_products): (i64, i64) = if request.clear {
            sqlx::query_as(sql::COUNT_IN_STOCK_AND_ALL)
                .bind(store_id)
                .fetch_one(&mut *tx)
                .await?
        } else {
            (0, 0)
        };
        // Every batch was looked up while no other sync wrote to the store, so the store
        // holds the same products as then; if the lookups found as many distinct products
        // as it holds, every one of them is listed and the clear has nothing to do (a
        // full-inventory push with clear, the usual case, spares a pass over the store).
        let everything_listed = self.target.look_up
            && self.target.marks_hold(generation)
            && u64::try_from(store_products).is_ok_and(|count| count == self.found.count);
        let linked: i64 = if by_barcode {
            sqlx::query_scalar(sql::COUNT_LINKS)
                .bind(store_id)
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
        let cleared = if request.clear && !everything_listed {
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
            if cleared > MASS_CLEAR_FLOOR && cleared as f64 > fraction * in_stock as f64 {
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
                .bind(store_id)
                .execute(&mut *tx)
                .await?;
            if let Err(error) = tx.commit().await {
                // The connection broke while the commit was on its way: whether it
                // committed is in the run's record, which it wrote. Settled before the
                // caller may retry, so that a sync never applies twice.
                if !matches!(error, sqlx::Error::Io(_))
                    || !run_committed(&self.pool, store_id, &run.sync_id).await?
                {
                    return Err(error);
                }
                tracing::warn!(%error, "the connection broke at the commit, which went through");
            }
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

/// Whether sync `sync_id`'s merge committed, read on a connection of its own.
async fn run_committed(pool: &PgPool, store_id: i64, sync_id: &str) -> Result<bool, sqlx::Error> {
    let outcome: Option<i32> = sqlx::query_scalar(sql::SYNC_RUN_OUTCOME)
        .bind(store_id)
        .bind(sync_id)
        .fetch_optional(pool)
        .await?;
    Ok(outcome == Some(RunOutcome::Committed.code()))
}

/// Turns staged product `index` into a skipped one: it writes nothing, and neither do its
/// barcodes.
pub(super) async fn skip_staged_product(
    connection: &mut PgConnection,
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
