//! The final transaction of a sync, as both backends see it: what it is asked to do, what
//! it reports, and the conflicts it finds. Each backend runs it with its own SQL
//! (`sqlite/merge.rs`, `postgres/merge.rs`).

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
}

/// One attempt at the merge transaction. A batch that was not checked for repeats of an
/// external id or a barcode is merged unchecked only when all its products are new: the
/// live tables' unique keys then find repeats, and the checks run only for a batch that
/// has some. Any other unchecked merge stops before it writes, to be checked first.
#[derive(Debug)]
pub(super) enum Attempt {
    Finished(MergeOutcome),
    CheckBatchFirst,
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
    /// The checks of the batch alone, when they run again in the merge.
    pub batch: Vec<BatchConflict>,
}

impl StoredConflictRows {
    pub(super) fn into_conflicts(self, limit: usize) -> Vec<BatchConflict> {
        let mut conflicts = self.batch;
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
