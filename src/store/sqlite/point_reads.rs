//! SQLite point reads (one product by key) on the caller's own thread.
//!
//! sqlx runs each statement of a SQLite connection on that connection's thread: a read costs
//! two thread handoffs, which for a point read dominate SQLite's own few microseconds (the
//! `reads` benchmark: 22k calls/s through sqlx, 35k this way, against 47k for a tonic server
//! that answers a constant). These reads run synchronously, through rusqlite on the same
//! SQLite library, on read-only connections kept for the next read. In WAL mode a reader
//! never waits for a writer; the short busy timeout bounds the rare waits (a checkpoint
//! being reset), after which the caller falls back to the pooled path.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{OpenFlags, OptionalExtension, Row};

use super::sql;
use crate::store::{ProductKey, ProductRecord};

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
