//! Conversions between stored records and wire messages.

use prost_types::Timestamp;

use crate::pb;
use crate::store::{ProductRecord, SyncRunRecord};
use crate::sync::{Barcodes, SyncCounts, SyncSummary};

const MICROS_PER_SECOND: i64 = 1_000_000;

/// Microseconds since the Unix epoch as a protobuf timestamp.
pub(crate) fn timestamp_from_micros(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(MICROS_PER_SECOND),
        nanos: (micros.rem_euclid(MICROS_PER_SECOND) * 1_000) as i32,
    }
}

/// A protobuf timestamp as microseconds since the Unix epoch (sub-microsecond parts dropped).
pub(crate) fn micros_from_timestamp(timestamp: &Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(MICROS_PER_SECOND)
        .saturating_add(i64::from(timestamp.nanos) / 1_000)
}

impl From<ProductRecord> for pb::Product {
    fn from(record: ProductRecord) -> Self {
        let catalog_item = record.catalog_item_id.map(|id| pb::CatalogItem {
            id,
            kind: record.catalog_kind.unwrap_or_default(),
            name: record.catalog_name.unwrap_or_default(),
            vintage: record.catalog_vintage.unwrap_or_default(),
            producer: record.catalog_producer.unwrap_or_default(),
        });
        pb::Product {
            id: record.id,
            store_id: record.store_id,
            external_id: record.external_id.unwrap_or_default(),
            barcodes: Barcodes::split_stored(record.barcodes.as_deref()),
            in_stock: record.in_stock,
            price: record.price,
            name: record.name,
            unit_size: record.unit_size,
            abv: record.abv,
            proof: record.proof,
            category: record.category,
            match_status: record.match_status,
            catalog_item,
            created_at: Some(timestamp_from_micros(record.created_at)),
            updated_at: Some(timestamp_from_micros(record.updated_at)),
            claimed_by: record.claimed_by.unwrap_or_default(),
        }
    }
}

impl From<SyncSummary> for pb::SyncResponse {
    fn from(summary: SyncSummary) -> Self {
        let counts = summary.counts;
        pb::SyncResponse {
            sync_id: summary.sync_id,
            received: counts.received,
            created: counts.created,
            updated: counts.updated,
            unchanged: counts.unchanged,
            cleared: counts.cleared,
            linked: counts.linked,
            rejected_total: counts.rejected,
            rejected: summary
                .rejected
                .into_iter()
                .map(|rejection| pb::Rejection {
                    index: rejection.index,
                    external_id: rejection.external_id,
                    field: rejection.field,
                    reason: rejection.reason,
                })
                .collect(),
            dry_run: summary.dry_run,
            replayed: summary.replayed,
        }
    }
}

impl From<SyncRunRecord> for pb::SyncRun {
    fn from(run: SyncRunRecord) -> Self {
        let counts = SyncCounts::from(run.counts);
        pb::SyncRun {
            header: Some(pb::SyncHeader {
                store_id: run.store_id,
                clear: run.clear,
                key: run.key_field,
                idempotency_key: run.idempotency_key.unwrap_or_default(),
                dry_run: run.dry_run,
                skip_invalid: run.skip_invalid,
                allow_mass_clear: run.allow_mass_clear,
                expected_count: run
                    .expected_count
                    .map(|count| u64::try_from(count).unwrap_or_default()),
            }),
            sync_id: run.id,
            store_id: run.store_id,
            started_at: Some(timestamp_from_micros(run.started_at)),
            finished_at: run.finished_at.map(timestamp_from_micros),
            outcome: run.outcome,
            status_code: run.status_code,
            status_message: run.status_message,
            received: counts.received,
            created: counts.created,
            updated: counts.updated,
            unchanged: counts.unchanged,
            cleared: counts.cleared,
            linked: counts.linked,
            rejected_total: counts.rejected,
            token_name: run.token_name,
            replay_of: run.replay_of.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_at_microsecond_precision() {
        for micros in [0, 1, 1_764_505_200_123_456, -1, -1_000_001] {
            assert_eq!(
                micros_from_timestamp(&timestamp_from_micros(micros)),
                micros
            );
        }
    }
}
