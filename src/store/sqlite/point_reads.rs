//! SQLite point reads (products by key) on the caller's own thread: a request's one product,
//! and the stored products of a sync's batches as it uploads (see `staging.rs`).
//!
//! sqlx runs each statement of a SQLite connection on that connection's thread: a read costs
//! two thread handoffs, which for a point read dominate SQLite's own few microseconds (the
//! `reads` benchmark: 22k calls/s through sqlx, 35k this way, against 47k for a tonic server
//! that answers a constant). These reads run synchronously, through rusqlite on the same
//! SQLite library, on read-only connections kept for the next read. In WAL mode a reader
//! never waits for a writer; the short busy timeout bounds the rare waits (a checkpoint
//! being reset), after which the caller falls back to the pooled path.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{OpenFlags, OptionalExtension, Row};

use super::sql;
use crate::store::unchanged::{self, StoredMatch, StoredView};
use crate::store::{ProductKey, ProductRecord, StagedProduct};

/// The longest a point read waits for a lock before giving up to the pooled path.
const BUSY_TIMEOUT: Duration = Duration::from_millis(20);

/// Read-only connections to one SQLite file, opened on demand: at most one per thread that
/// reads at once, since a read holds its connection only while it runs.
#[derive(Debug)]
pub(super) struct PointReads {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl PointReads {
    pub(super) fn new(path: PathBuf) -> Self {
        PointReads {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The product of `store_id` with `key`, if it exists.
    pub(super) fn product(
        &self,
        store_id: i64,
        key: &ProductKey,
    ) -> Result<Option<ProductRecord>, rusqlite::Error> {
        let (statement, value) = match key {
            ProductKey::ExternalId(external_id) => {
                (sql::SELECT_PRODUCT_BY_EXTERNAL_ID, external_id)
            }
            ProductKey::Barcode(barcode) => (sql::SELECT_PRODUCT_BY_BARCODE, barcode),
        };
        let connection = match self.lock().pop() {
            Some(connection) => connection,
            None => self.open()?,
        };
        let found = connection
            .prepare_cached(statement)?
            .query_row(rusqlite::params![store_id, value], product_record)
            .optional();
        // A connection whose read failed is dropped: the next read opens a fresh one.
        if found.is_ok() {
            self.lock().push(connection);
        }
        found
    }

    /// A sync's own lookups of its batches' stored products.
    pub(super) fn batch_lookups(self: &Arc<Self>) -> BatchLookups {
        BatchLookups {
            reads: Arc::clone(self),
            connection: Mutex::new(None),
            next_guess: 0.into(),
            looked_up: 0.into(),
        }
    }

    fn open(&self) -> Result<rusqlite::Connection, rusqlite::Error> {
        let connection = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        Ok(connection)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<rusqlite::Connection>> {
        // A list of idle connections cannot be left half-changed by a panic.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The lookups of one sync's batches, on one read-only connection for the whole upload.
/// A small sync borrows it from the point reads and gives it back; after a big one it is
/// closed. (Kept across syncs, connections grew slower sync after sync: in a series of
/// re-syncs of a million products, the lookups took 3–4 s in the first and 10–20 s in each
/// later one on connections kept, 3.6–4.4 s in each on fresh ones.)
pub(super) struct BatchLookups {
    reads: Arc<PointReads>,
    connection: Mutex<Option<rusqlite::Connection>>,
    /// The id tried first for the next product looked up: the one after the last found.
    next_guess: AtomicI64,
    /// Products looked up so far.
    looked_up: AtomicUsize,
}

/// The most products a sync may look up on a connection that is then kept.
const KEPT_AFTER_LOOKUPS: usize = 10_000;

impl BatchLookups {
    /// Matches each product of a batch with the stored product of its external id in
    /// store `store_id`, and tells whether writing it would change anything. Compared
    /// where SQLite holds the row, nothing copied: this is most of a re-sync's work.
    pub(super) fn match_batch(
        &self,
        store_id: i64,
        products: &[StagedProduct],
    ) -> Result<LookedUp, rusqlite::Error> {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = match connection.take().or_else(|| self.reads.lock().pop()) {
            Some(open) => open,
            None => self.reads.open()?,
        };
        self.looked_up.fetch_add(products.len(), Ordering::Relaxed);
        // The lock on the connection orders the lookups: one batch at a time.
        let mut next_guess = self.next_guess.load(Ordering::Relaxed);
        let matched = match_stored(&open, store_id, products, &mut next_guess);
        self.next_guess.store(next_guess, Ordering::Relaxed);
        // A connection whose lookup failed is dropped: the next lookup opens a fresh one.
        if matched.is_ok() {
            *connection = Some(open);
        }
        matched
    }
}

impl Drop for BatchLookups {
    fn drop(&mut self) {
        let connection = self
            .connection
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(connection) = connection
            && *self.looked_up.get_mut() <= KEPT_AFTER_LOOKUPS
        {
            self.reads.lock().push(connection);
        }
    }
}

/// What a batch's lookup found, as of the store's sync generation it read.
pub(super) struct LookedUp {
    pub generation: i64,
    pub matches: Vec<Option<StoredMatch>>,
}

fn match_stored(
    connection: &rusqlite::Connection,
    store_id: i64,
    products: &[StagedProduct],
    next_guess: &mut i64,
) -> Result<LookedUp, rusqlite::Error> {
    // One read transaction for the batch: one snapshot, and the WAL's read lock taken
    // once instead of once per product.
    let _snapshot = connection.unchecked_transaction()?;
    let generation = connection
        .prepare_cached(sql::SYNC_GENERATION)?
        .query_row([store_id], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    let mut by_external_id = connection.prepare_cached(sql::SELECT_STORED_FIELDS)?;
    let mut by_id = connection.prepare_cached(sql::SELECT_STORED_FIELDS_BY_ID)?;
    let matches = products
        .iter()
        .map(|product| {
            let Some(external_id) = product.change.external_id.as_deref() else {
                return Ok(None);
            };
            // A POS mostly sends its products in the same order each time, and a store's
            // products got consecutive ids in the order they were first sent: the product
            // after the last one found is tried first, by id. That read lands where the
            // last one left the table, in pages just read; the external-id index is read
            // at a random place per product, mostly from the file (a sync's page cache
            // is small). The external id read confirms the guess, since it is unique in
            // the store.
            let mut rows = by_id.query(rusqlite::params![store_id, *next_guess])?;
            if let Some(row) = rows.next()?
                && row.get_ref(1)?.as_str_or_null()? == Some(external_id)
            {
                let found = compared(product, row)?;
                *next_guess = found.product_id + 1;
                return Ok(Some(found));
            }
            let mut rows = by_external_id.query(rusqlite::params![store_id, external_id])?;
            let Some(row) = rows.next()? else {
                return Ok(None);
            };
            let found = compared(product, row)?;
            *next_guess = found.product_id + 1;
            Ok(Some(found))
        })
        .collect::<Result<_, rusqlite::Error>>()?;
    Ok(LookedUp {
        generation,
        matches,
    })
}

/// What `product` is to the stored product of `row` (columns as `SELECT_STORED_FIELDS`).
fn compared(product: &StagedProduct, row: &Row<'_>) -> Result<StoredMatch, rusqlite::Error> {
    let stored = StoredView {
        external_id: row.get_ref(1)?.as_str_or_null()?,
        barcodes: row.get_ref(2)?.as_str_or_null()?,
        in_stock: row.get_ref(3)?.as_i64_or_null()?,
        price: row.get_ref(4)?.as_str_or_null()?,
        name: row.get_ref(5)?.as_str_or_null()?,
        unit_size: row.get_ref(6)?.as_str_or_null()?,
        abv: row.get_ref(7)?.as_f64_or_null()?,
        proof: row.get_ref(8)?.as_f64_or_null()?,
        category: row.get(9)?,
    };
    Ok(unchanged::stored_match(product, row.get(0)?, &stored))
}

/// A row of the product statements, by column name as sqlx's `FromRow` reads it.
fn product_record(row: &Row<'_>) -> Result<ProductRecord, rusqlite::Error> {
    Ok(ProductRecord {
        id: row.get("id")?,
        store_id: row.get("store_id")?,
        external_id: row.get("external_id")?,
        barcodes: row.get("barcodes")?,
        in_stock: row.get("in_stock")?,
        price: row.get("price")?,
        name: row.get("name")?,
        unit_size: row.get("unit_size")?,
        abv: row.get("abv")?,
        proof: row.get("proof")?,
        category: row.get("category")?,
        match_status: row.get("match_status")?,
        claimed_by: row.get("claimed_by")?,
        claimed_by_token: row.get("claimed_by_token")?,
        catalog_item_id: row.get("catalog_item_id")?,
        catalog_kind: row.get("catalog_kind")?,
        catalog_name: row.get("catalog_name")?,
        catalog_vintage: row.get("catalog_vintage")?,
        catalog_producer: row.get("catalog_producer")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}
