//! One batch of a SQLite sync on its way into staging: looked up (its stored products
//! found and compared) and bound into the statements that stage it, on a thread of the
//! blocking pool while the staging connection writes the batch before. Products found
//! unchanged are bound as runs (see `sql::CREATE_STAGING`).

use std::num::NonZeroUsize;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use sqlx::{QueryBuilder, Sqlite};
use tokio::sync::Semaphore;

use super::point_reads::BatchLookups;
use super::sql;
use super::staging::StagedStream;
use crate::product::{Barcodes, Price, ProductChange};
use crate::store::StagedProduct;
use crate::store::unchanged::StoredMatch;

/// Products per INSERT while staging: a usual message's worth. 13 parameters each stays far
/// below SQLite's limit of 32,766.
const PRODUCTS_PER_INSERT: usize = 1_000;
/// Barcodes per INSERT while staging; 2 parameters each.
const BARCODES_PER_INSERT: usize = 2_000;
/// The size from which a batch is prepared on a thread of the blocking pool.
const PREPARED_ELSEWHERE_FROM: usize = 100;

/// Batches prepared at once in the process. Each keeps a thread busy for a millisecond or
/// two; more than one per core would only queue on the cores, each holding a connection.
static PREPARE_SLOTS: LazyLock<Semaphore> = LazyLock::new(|| {
    Semaphore::new(std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
});

/// A batch ready to be written: its statements, what its lookup found (`None` if it was
/// not looked up), and what it adds to the stream staged.
pub(super) struct PreparedBatch {
    pub statements: QueryBuilder<Sqlite>,
    pub matches: Option<Vec<Option<StoredMatch>>>,
    pub stream: StagedStream,
    pub looking_up: Duration,
    pub binding: Duration,
}

/// Looks up a batch's stored products (with `lookups`) and binds its statements, on a
/// thread of the blocking pool: the part of staging that runs beside SQLite's own work
/// on the batch before. A small batch is prepared on the spot: handing it over would
/// cost more than preparing it.
pub(super) async fn prepare(
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
}
