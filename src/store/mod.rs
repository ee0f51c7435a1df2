//! The database: SQLite (the embedded default) and PostgreSQL (for many replicas) behind
//! one type. The SQL lives in [`sql`]; each backend module only binds and runs it.

/// The part of a merge after the store is locked, the same on both backends: refuse
/// barcode conflicts with stored products, then write, count, and commit (or roll back for
/// a dry run or an abandoned sync). A macro because the two backends' transactions share no
/// executor type.
macro_rules! merge_into_locked_store {
    ($tx:ident, $statements:ident, $request:ident, $abandoned:ident) => {{
        use $crate::store::{MergeCounts, MergeOutcome, sql_limit, stored_conflicts_from_rows};
        let store_id = $request.store_id;
        let conflicts: Vec<(i64, String, Option<String>)> =
            sqlx::query_as($statements.stored_barcode_conflicts.as_str())
                .bind(store_id)
                .bind(sql_limit($request.max_conflicts))
                .fetch_all(&mut *$tx)
                .await?;
        if !conflicts.is_empty() {
            $tx.rollback().await?;
            return Ok(MergeOutcome::Conflicts(stored_conflicts_from_rows(
                conflicts,
            )));
        }

        sqlx::query($statements.delete_replaced_barcodes.as_str())
            .bind(store_id)
            .execute(&mut *$tx)
            .await?;
        let updated = sqlx::query($statements.update_changed_products.as_str())
            .bind(store_id)
            .bind($request.now)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        let created = sqlx::query($statements.insert_new_products.as_str())
            .bind(store_id)
            .bind($request.now)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        sqlx::query($statements.insert_missing_barcodes.as_str())
            .bind(store_id)
            .execute(&mut *$tx)
            .await?;
        let cleared = if $request.clear {
            sqlx::query($statements.clear_unlisted_products.as_str())
                .bind(store_id)
                .bind($request.now)
                .execute(&mut *$tx)
                .await?
                .rows_affected()
        } else {
            0
        };

        if $abandoned() {
            $tx.rollback().await?;
            return Ok(MergeOutcome::Abandoned);
        }
        if $request.dry_run {
            $tx.rollback().await?;
        } else {
            $tx.commit().await?;
        }
        Ok(MergeOutcome::Applied(MergeCounts {
            created,
            updated,
            cleared,
        }))
    }};
}

/// Reads shared by both backends, expanded once per backend with its pool type and
/// statements (sqlx gives the two backends no common executor type to write them once).
macro_rules! product_reads {
    ($database:ty, $statements:ident) => {
        pub(super) async fn product(
            pool: &sqlx::Pool<$database>,
            store_id: i64,
            key: &$crate::store::ProductKey,
        ) -> Result<Option<$crate::store::ProductRecord>, $crate::store::StoreError> {
            let (statement, value) = match key {
                $crate::store::ProductKey::ExternalId(external_id) => (
                    $statements.select_product_by_external_id.as_str(),
                    external_id,
                ),
                $crate::store::ProductKey::Barcode(barcode) => {
                    ($statements.select_product_by_barcode.as_str(), barcode)
                }
            };
            Ok(sqlx::query_as(statement)
                .bind(store_id)
                .bind(value)
                .fetch_optional(pool)
                .await?)
        }

        pub(super) async fn products_page(
            pool: &sqlx::Pool<$database>,
            filter: &$crate::store::ProductFilter,
            after_id: i64,
            limit: i64,
        ) -> Result<Vec<$crate::store::ProductRecord>, $crate::store::StoreError> {
            Ok(sqlx::query_as($statements.select_products_page.as_str())
                .bind(filter.store_id)
                .bind(after_id)
                .bind(filter.match_status)
                .bind(filter.in_stock_only)
                .bind(filter.updated_since)
                .bind(limit)
                .fetch_all(pool)
                .await?)
        }
    };
}

/// The staging steps shared by both backends: opening, the batch's own conflicts, cleanup.
macro_rules! staging_common {
    ($database:ty) => {
        pub(super) async fn open(
            pool: &sqlx::Pool<$database>,
        ) -> Result<Self, $crate::store::StoreError> {
            let mut connection = pool.acquire().await?;
            sqlx::raw_sql(sql::CREATE_STAGING)
                .execute(&mut *connection)
                .await?;
            Ok(Staging { connection })
        }

        async fn find_batch_conflicts(
            &mut self,
            limit: usize,
        ) -> Result<Vec<$crate::store::BatchConflict>, $crate::store::StoreError> {
            let duplicates = sqlx::query_as(sql::DUPLICATE_EXTERNAL_IDS)
                .bind($crate::store::sql_limit(limit))
                .fetch_all(&mut *self.connection)
                .await?;
            let shared = sqlx::query_as(sql::BARCODES_SHARED_IN_BATCH)
                .bind($crate::store::sql_limit(limit))
                .fetch_all(&mut *self.connection)
                .await?;
            Ok($crate::store::conflicts_from_rows(duplicates, shared, limit))
        }

        pub(super) async fn close(mut self) {
            if let Err(error) = sqlx::raw_sql(sql::DROP_STAGING)
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

mod postgres;
mod sql;
mod sqlite;

use std::fmt;
use std::str::FromStr;

use sqlx::{PgPool, SqlitePool};

use crate::sync::{ProductChange, StagedProduct};

/// Errors of the database layer. They carry SQL detail for the logs; the gRPC edge never
/// shows them to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether the database could not be reached (as opposed to refusing a statement).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            )
        )
    }
}

/// Where the data lives, as given by `--database-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite database file, created if missing. Holds a `sqlite:` URL.
    Sqlite(String),
    /// A PostgreSQL server. Holds a `postgres://` URL.
    Postgres(String),
}

impl FromStr for DatabaseUrl {
    type Err = String;

    /// `postgres://` and `postgresql://` select PostgreSQL; `sqlite:` URLs and plain paths
    /// select a SQLite file.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err("the database URL is empty".to_owned());
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(DatabaseUrl::Postgres(text.to_owned()))
        } else if text.starts_with("sqlite:") {
            Ok(DatabaseUrl::Sqlite(text.to_owned()))
        } else if text.contains("://") {
            Err(format!(
                "unsupported database URL {text:?}: use a SQLite file path or a postgres:// URL"
            ))
        } else {
            Ok(DatabaseUrl::Sqlite(format!("sqlite://{text}")))
        }
    }
}

impl fmt::Display for DatabaseUrl {
    /// Shows the URL without its password, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(url) => f.write_str(url),
            DatabaseUrl::Postgres(url) => match ::url::Url::parse(url) {
                Ok(mut parsed) => {
                    if parsed.password().is_some() {
                        // Cannot fail: a URL that has a password can have it replaced.
                        let _ = parsed.set_password(Some("***"));
                    }
                    f.write_str(parsed.as_str())
                }
                Err(_) => f.write_str("postgres://…"),
            },
        }
    }
}

/// The database of the service.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// How a single product is looked up.
#[derive(Debug, Clone)]
pub enum ProductKey {
    ExternalId(String),
    Barcode(String),
}

/// Filters of a product listing.
#[derive(Debug, Clone, Default)]
pub struct ProductFilter {
    pub store_id: i64,
    /// 0 = any status.
    pub match_status: i32,
    pub in_stock_only: bool,
    /// Microseconds since the Unix epoch.
    pub updated_since: Option<i64>,
}

/// A product as stored, one row of `products`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProductRecord {
    pub id: i64,
    pub store_id: i64,
    pub external_id: Option<String>,
    /// Sorted barcodes joined by single spaces.
    pub barcodes: Option<String>,
    pub in_stock: Option<i64>,
    pub price: Option<String>,
    pub name: Option<String>,
    pub unit_size: Option<String>,
    pub abv: Option<f64>,
    pub proof: Option<f64>,
    pub category: i32,
    pub match_status: i32,
    pub catalog_item_id: Option<i64>,
    pub catalog_kind: Option<i32>,
    pub catalog_name: Option<String>,
    pub catalog_vintage: Option<String>,
    pub catalog_producer: Option<String>,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    /// Microseconds since the Unix epoch.
    pub updated_at: i64,
}

impl Database {
    /// Connects (creating a SQLite file if missing) and runs the backend's migrations.
    pub async fn connect(url: &DatabaseUrl) -> Result<Self, StoreError> {
        match url {
            DatabaseUrl::Sqlite(url) => Ok(Database::Sqlite(sqlite::connect(url).await?)),
            DatabaseUrl::Postgres(url) => Ok(Database::Postgres(postgres::connect(url).await?)),
        }
    }

    /// Opens a staging area for one sync on a connection of its own.
    pub async fn open_staging(&self) -> Result<Staging, StoreError> {
        match self {
            Database::Sqlite(pool) => Ok(Staging::Sqlite(sqlite::Staging::open(pool).await?)),
            Database::Postgres(pool) => Ok(Staging::Postgres(postgres::Staging::open(pool).await?)),
        }
    }

    /// One product of a store, if it exists.
    pub async fn product(
        &self,
        store_id: i64,
        key: &ProductKey,
    ) -> Result<Option<ProductRecord>, StoreError> {
        match self {
            Database::Sqlite(pool) => sqlite::product(pool, store_id, key).await,
            Database::Postgres(pool) => postgres::product(pool, store_id, key).await,
        }
    }

    /// Up to `limit` products matching `filter` with ids above `after_id`, in id order.
    pub async fn products_page(
        &self,
        filter: &ProductFilter,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ProductRecord>, StoreError> {
        match self {
            Database::Sqlite(pool) => sqlite::products_page(pool, filter, after_id, limit).await,
            Database::Postgres(pool) => {
                postgres::products_page(pool, filter, after_id, limit).await
            }
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}

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
}

impl BatchConflict {
    /// Position of the offending product in the stream.
    pub fn index(&self) -> u64 {
        match self {
            BatchConflict::DuplicateExternalId { index, .. }
            | BatchConflict::BarcodeSharedInBatch { index, .. }
            | BatchConflict::BarcodeOwnedByStoredProduct { index, .. } => *index,
        }
    }
}

/// What the final transaction of a sync does.
#[derive(Debug, Clone)]
pub struct MergeRequest {
    pub store_id: i64,
    pub clear: bool,
    /// Roll back instead of committing, after computing every count.
    pub dry_run: bool,
    /// The sync's time, microseconds since the Unix epoch: `created_at`/`updated_at` of
    /// every row it writes.
    pub now: i64,
    /// How many conflicts to report at most.
    pub max_conflicts: usize,
}

/// Rows written by a merge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeCounts {
    pub created: u64,
    pub updated: u64,
    pub cleared: u64,
}

/// How a merge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Committed, or rolled back for a dry run, with these counts.
    Applied(MergeCounts),
    /// Rolled back: the batch conflicts with stored products.
    Conflicts(Vec<BatchConflict>),
    /// Rolled back: the client went away before the commit.
    Abandoned,
}

/// The staging area of one sync: products land here as they arrive and reach the live
/// tables only in [`Staging::merge`].
pub enum Staging {
    Sqlite(sqlite::Staging),
    Postgres(postgres::Staging),
}

impl Staging {
    /// Stages a batch of validated products.
    pub async fn stage(&mut self, products: &[StagedProduct]) -> Result<(), StoreError> {
        match self {
            Staging::Sqlite(staging) => staging.stage(products).await,
            Staging::Postgres(staging) => staging.stage(products).await,
        }
    }

    /// Duplicate external ids and barcodes shared within the staged batch.
    pub async fn batch_conflicts(
        &mut self,
        limit: usize,
    ) -> Result<Vec<BatchConflict>, StoreError> {
        match self {
            Staging::Sqlite(staging) => staging.batch_conflicts(limit).await,
            Staging::Postgres(staging) => staging.batch_conflicts(limit).await,
        }
    }

    /// Merges the staged products into the live tables in one transaction. `abandoned` is
    /// asked just before the commit; if it says so, everything is rolled back.
    pub async fn merge(
        &mut self,
        request: &MergeRequest,
        abandoned: impl Fn() -> bool,
    ) -> Result<MergeOutcome, StoreError> {
        match self {
            Staging::Sqlite(staging) => staging.merge(request, abandoned).await,
            Staging::Postgres(staging) => staging.merge(request, abandoned).await,
        }
    }

    /// Drops the staged rows and returns the connection to the pool.
    pub async fn close(self) {
        match self {
            Staging::Sqlite(staging) => staging.close().await,
            Staging::Postgres(staging) => staging.close().await,
        }
    }
}

/// The staged form of a product's optional text fields.
fn staged_barcodes(change: &ProductChange) -> Option<String> {
    change.barcodes.as_ref().map(|barcodes| barcodes.joined())
}

fn conflicts_from_rows(
    duplicates: Vec<(i64, String, i64)>,
    shared_barcodes: Vec<(i64, String, i64)>,
    limit: usize,
) -> Vec<BatchConflict> {
    let mut conflicts: Vec<BatchConflict> = duplicates
        .into_iter()
        .map(
            |(index, external_id, first_index)| BatchConflict::DuplicateExternalId {
                index: index as u64,
                first_index: first_index as u64,
                external_id,
            },
        )
        .chain(
            shared_barcodes
                .into_iter()
                .map(
                    |(index, barcode, first_index)| BatchConflict::BarcodeSharedInBatch {
                        index: index as u64,
                        first_index: first_index as u64,
                        barcode,
                    },
                ),
        )
        .collect();
    conflicts.sort_by_key(BatchConflict::index);
    conflicts.truncate(limit);
    conflicts
}

fn stored_conflicts_from_rows(rows: Vec<(i64, String, Option<String>)>) -> Vec<BatchConflict> {
    rows.into_iter()
        .map(
            |(index, barcode, owner_external_id)| BatchConflict::BarcodeOwnedByStoredProduct {
                index: index as u64,
                barcode,
                owner_external_id,
            },
        )
        .collect()
}

/// Limits bound as SQL parameters.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
