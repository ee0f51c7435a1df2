//! The database: SQLite (the embedded default) and PostgreSQL (for many replicas) behind
//! one type. The SQL lives in [`sql`]; each backend module only binds and runs it.

#[macro_use]
mod merge;
#[macro_use]
mod live;
#[macro_use]
mod tokens;
#[macro_use]
mod history;
mod point_reads;
mod postgres;
mod sql;
mod sqlite;
mod unchanged;

pub use history::{NewSyncRun, RunCounts, RunEnding, RunOutcome, SyncRunRecord};
pub use merge::{
    BatchConflict, IdempotencyCheck, MASS_CLEAR_FLOOR, MergeCounts, MergeOutcome, MergeRequest,
    MergeRun,
};
pub use point_reads::PointReads;
pub use tokens::{NewToken, TokenRecord};

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use futures::Stream;
use sqlx::{PgPool, SqlitePool};

use crate::product::{ProductChange, SyncKey};

/// Longest status message a sync's history keeps, in bytes: a page of the history must
/// stay readable by a client with default message limits.
pub const MAX_STORED_MESSAGE_BYTES: usize = 1024;

/// Errors of the database layer. They carry SQL detail for the logs; the gRPC edge never
/// shows them to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("cannot lock {path} to run the migrations alone: {source}")]
    MigrationLock {
        path: String,
        source: std::io::Error,
    },
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

impl DatabaseUrl {
    /// A SQLite database that lives in memory only (`sqlite::memory:`, `mode=memory`).
    pub fn is_in_memory(&self) -> bool {
        match self {
            DatabaseUrl::Sqlite(url) => sqlite::is_in_memory(url),
            DatabaseUrl::Postgres(_) => false,
        }
    }

    /// Connections one running sync may hold at once: its staging connection, and on
    /// PostgreSQL the lookups that run ahead of its `COPY`.
    pub fn connections_per_sync(&self) -> u32 {
        match self {
            DatabaseUrl::Sqlite(_) => 1,
            DatabaseUrl::Postgres(_) => postgres::CONNECTIONS_PER_SYNC,
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
    /// A SQLite file: its pool, and its point reads on the caller's thread (none for a
    /// database in memory, which only the pool's connections share).
    Sqlite(SqlitePool, Option<Arc<PointReads>>),
    Postgres(PgPool),
}

/// A validated product to stage, and its position in the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedProduct {
    pub index: u64,
    pub change: ProductChange,
    /// Rejected with skip_invalid: only its key is staged, so that it counts as listed.
    pub skipped: bool,
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

/// Filters of the matching queue.
#[derive(Debug, Clone, Default)]
pub struct PendingFilter {
    /// 0 = every store.
    pub store_id: i64,
    /// 0 = every category.
    pub category: i32,
    /// List products being matched too, not only those waiting.
    pub include_in_progress: bool,
}

/// A catalog item as the matching queue stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogItemFields<'a> {
    pub id: i64,
    pub kind: i32,
    pub name: &'a str,
    pub vintage: &'a str,
    pub producer: &'a str,
}

/// Who works the matching queue in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimant<'a> {
    /// The token's name, recorded as `claimed_by`.
    pub name: &'a str,
    /// The token's id; `None` when authentication is off.
    pub token_id: Option<i64>,
    /// An admin may release or complete anyone's claim.
    pub admin: bool,
}

impl Claimant<'_> {
    /// The token a claim must be held by for this claimant to release or complete it;
    /// `None` for any.
    fn required_owner(&self) -> Option<i64> {
        if self.admin { None } else { self.token_id }
    }
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
    /// Who is matching the product while it is in progress, and who matched it once it is
    /// complete (a token's name).
    pub claimed_by: Option<String>,
    /// The token of `claimed_by`; `None` when authentication is off.
    pub claimed_by_token: Option<i64>,
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

/// How a pool of connections is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// Run the backend's migrations first (once per process is enough; they are
    /// serialized across processes).
    pub run_migrations: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 16,
            run_migrations: true,
        }
    }
}

impl Database {
    /// Connects (creating a SQLite file if missing) and runs the backend's migrations.
    pub async fn connect(url: &DatabaseUrl) -> Result<Self, StoreError> {
        Self::connect_with(url, PoolSettings::default()).await
    }

    /// Connects with a pool of the given size.
    pub async fn connect_with(
        url: &DatabaseUrl,
        settings: PoolSettings,
    ) -> Result<Self, StoreError> {
        match url {
            DatabaseUrl::Sqlite(url) => {
                let pool = sqlite::connect(url, settings).await?;
                let point_reads = (!sqlite::is_in_memory(url)).then(|| {
                    let path = pool.connect_options().get_filename().to_owned();
                    Arc::new(PointReads::new(path))
                });
                Ok(Database::Sqlite(pool, point_reads))
            }
            DatabaseUrl::Postgres(url) => {
                Ok(Database::Postgres(postgres::connect(url, settings).await?))
            }
        }
    }

    /// Opens a staging area for one sync of `store_id` on a connection of its own.
    pub async fn open_staging(&self, store_id: i64, key: SyncKey) -> Result<Staging, StoreError> {
        match self {
            Database::Sqlite(pool, _) => Ok(Staging::Sqlite(
                sqlite::Staging::open(pool, store_id, key).await?,
            )),
            Database::Postgres(pool) => Ok(Staging::Postgres(
                postgres::Staging::open(pool, store_id, key).await?,
            )),
        }
    }

    /// One product of a store, if it exists.
    pub async fn product(
        &self,
        store_id: i64,
        key: &ProductKey,
    ) -> Result<Option<ProductRecord>, StoreError> {
        match self {
            Database::Sqlite(pool, point_reads) => {
                if let Some(point_reads) = point_reads {
                    match point_reads.product(store_id, key) {
                        Ok(found) => return Ok(found),
                        // Busy or broken: the pooled path waits as long as it takes.
                        Err(error) => {
                            tracing::debug!(%error, "a point read failed; reading through the pool")
                        }
                    }
                }
                sqlite::product(pool, store_id, key).await
            }
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
            Database::Sqlite(pool, _) => sqlite::products_page(pool, filter, after_id, limit).await,
            Database::Postgres(pool) => {
                postgres::products_page(pool, filter, after_id, limit).await
            }
        }
    }

    /// One product by the service's own id.
    pub async fn product_by_id(
        &self,
        product_id: i64,
    ) -> Result<Option<ProductRecord>, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::product_by_id(pool, product_id).await,
            Database::Postgres(pool) => postgres::product_by_id(pool, product_id).await,
        }
    }

    /// Up to `limit` products of the matching queue with ids above `after_id`, oldest first.
    pub async fn pending_page(
        &self,
        filter: &PendingFilter,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ProductRecord>, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::pending_page(pool, filter, after_id, limit).await,
            Database::Postgres(pool) => postgres::pending_page(pool, filter, after_id, limit).await,
        }
    }

    /// Moves a pending product to in progress, claimed by `claimant`; `false` if it was not
    /// pending (or is unknown).
    pub async fn claim(
        &self,
        product_id: i64,
        claimant: &Claimant<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::claim(pool, product_id, claimant, now).await,
            Database::Postgres(pool) => postgres::claim(pool, product_id, claimant, now).await,
        }
    }

    /// Completes a pending product, or one in progress that `claimant` may complete, with
    /// its catalog item; `false` if it was neither (or is unknown).
    pub async fn complete(
        &self,
        product_id: i64,
        item: &CatalogItemFields<'_>,
        claimant: &Claimant<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let row = (item.id, item.kind, item.name, item.vintage, item.producer);
        match self {
            Database::Sqlite(pool, _) => {
                sqlite::complete(pool, product_id, row, claimant, now).await
            }
            Database::Postgres(pool) => {
                postgres::complete(pool, product_id, row, claimant, now).await
            }
        }
    }

    /// Moves an in-progress product that `claimant` may release back to pending; `false` if
    /// it was not in progress or is another's.
    pub async fn release(
        &self,
        product_id: i64,
        claimant: &Claimant<'_>,
    ) -> Result<bool, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::release(pool, product_id, claimant).await,
            Database::Postgres(pool) => postgres::release(pool, product_id, claimant).await,
        }
    }

    /// Makes products claimed before `claimed_before` pending again; how many.
    pub async fn expire_claims(&self, claimed_before: i64) -> Result<u64, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::expire_claims(pool, claimed_before).await,
            Database::Postgres(pool) => postgres::expire_claims(pool, claimed_before).await,
        }
    }

    /// Stores a new token; returns its id.
    pub async fn insert_token(&self, token: &NewToken<'_>) -> Result<i64, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::insert_token(pool, token).await,
            Database::Postgres(pool) => postgres::insert_token(pool, token).await,
        }
    }

    /// Stores the database's first token (an admin), with `id` if given, unless the
    /// database was bootstrapped before; its id if it was stored.
    pub async fn insert_first_token(
        &self,
        token: &NewToken<'_>,
        id: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::insert_first_token(pool, token, id).await,
            Database::Postgres(pool) => postgres::insert_first_token(pool, token, id).await,
        }
    }

    /// One token by id, revoked or not.
    pub async fn token(&self, id: i64) -> Result<Option<TokenRecord>, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::token(pool, id).await,
            Database::Postgres(pool) => postgres::token(pool, id).await,
        }
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::tokens(pool).await,
            Database::Postgres(pool) => postgres::tokens(pool).await,
        }
    }

    /// The stores a token may act for.
    pub async fn token_stores(&self, token_id: i64) -> Result<Vec<i64>, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::token_stores(pool, token_id).await,
            Database::Postgres(pool) => postgres::token_stores(pool, token_id).await,
        }
    }

    /// Revokes a token; `false` if there is no such token or it was already revoked.
    pub async fn revoke_token(&self, id: i64, now: i64) -> Result<bool, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::revoke_token(pool, id, now).await,
            Database::Postgres(pool) => postgres::revoke_token(pool, id, now).await,
        }
    }

    /// How many tokens were ever created (revoked ones included).
    pub async fn count_tokens(&self) -> Result<i64, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::count_tokens(pool).await,
            Database::Postgres(pool) => postgres::count_tokens(pool).await,
        }
    }

    /// Records that a token was used.
    pub async fn touch_token(&self, id: i64, now: i64) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::touch_token(pool, id, now).await,
            Database::Postgres(pool) => postgres::touch_token(pool, id, now).await,
        }
    }

    /// Records that a sync started.
    pub async fn insert_sync_run(&self, run: &NewSyncRun<'_>) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::insert_sync_run(pool, run).await,
            Database::Postgres(pool) => postgres::insert_sync_run(pool, run).await,
        }
    }

    /// Records how a sync ended, unless it committed (the merge recorded that).
    pub async fn end_sync_run(&self, id: &str, ending: &RunEnding) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::end_sync_run(pool, id, ending).await,
            Database::Postgres(pool) => postgres::end_sync_run(pool, id, ending).await,
        }
    }

    /// Marks a running sync alive.
    pub async fn touch_sync_run(&self, id: &str, now: i64) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::touch_sync_run(pool, id, now).await,
            Database::Postgres(pool) => postgres::touch_sync_run(pool, id, now).await,
        }
    }

    /// Records running syncs not marked alive since `silent_since` as aborted; how many.
    pub async fn abort_silent_sync_runs(
        &self,
        silent_since: i64,
        now: i64,
    ) -> Result<u64, StoreError> {
        match self {
            Database::Sqlite(pool, _) => {
                sqlite::abort_silent_sync_runs(pool, silent_since, now).await
            }
            Database::Postgres(pool) => {
                postgres::abort_silent_sync_runs(pool, silent_since, now).await
            }
        }
    }

    /// One sync run by id.
    pub async fn sync_run(&self, id: &str) -> Result<Option<SyncRunRecord>, StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlite::sync_run(pool, id).await,
            Database::Postgres(pool) => postgres::sync_run(pool, id).await,
        }
    }

    /// Up to `limit` runs of a store, newest first, older than run `before` if given.
    pub async fn sync_runs_page(
        &self,
        store_id: i64,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SyncRunRecord>, StoreError> {
        match self {
            Database::Sqlite(pool, _) => {
                sqlite::sync_runs_page(pool, store_id, before, limit).await
            }
            Database::Postgres(pool) => {
                postgres::sync_runs_page(pool, store_id, before, limit).await
            }
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(pool, _) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
            Database::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
        }
        Ok(())
    }

    /// The file of a SQLite database.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        match self {
            Database::Sqlite(pool, _) => Some(pool.connect_options().get_filename().to_owned()),
            Database::Postgres(_) => None,
        }
    }

    /// The pool's open connections and how many of them are idle.
    pub fn pool_connections(&self) -> (u32, u32) {
        let (size, idle) = match self {
            Database::Sqlite(pool, _) => (pool.size(), pool.num_idle()),
            Database::Postgres(pool) => (pool.size(), pool.num_idle()),
        };
        (size, u32::try_from(idle).unwrap_or(u32::MAX))
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool, _) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}

/// The staging area of one sync: products land here as they arrive and reach the live
/// tables only in [`Staging::merge`].
pub enum Staging {
    Sqlite(sqlite::Staging),
    Postgres(postgres::Staging),
}

impl Staging {
    /// Stages every batch of validated products the stream yields, as they come.
    pub async fn stage_all(
        &mut self,
        batches: impl Stream<Item = Vec<StagedProduct>> + Unpin,
    ) -> Result<(), StoreError> {
        match self {
            Staging::Sqlite(staging) => staging.stage_all(batches).await,
            Staging::Postgres(staging) => staging.stage_all(batches).await,
        }
    }

    /// Readies the staged batch for the merge (statistics), once the upload is complete.
    pub async fn prepare_merge(&mut self) -> Result<(), StoreError> {
        match self {
            Staging::Sqlite(_) => Ok(()),
            Staging::Postgres(staging) => staging.prepare_merge().await,
        }
    }

    /// Readies the staged batch for its checks and the merge of stored products (derived
    /// rows); once, before the first check or a merge with `batch_checked`.
    pub async fn prepare_checks(&mut self) -> Result<(), StoreError> {
        match self {
            Staging::Sqlite(_) => Ok(()),
            Staging::Postgres(staging) => staging.prepare_checks().await,
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

    /// Skips (skip_invalid) the products that conflict within the batch; returns them.
    pub async fn skip_batch_conflicts(&mut self) -> Result<Vec<BatchConflict>, StoreError> {
        match self {
            Staging::Sqlite(staging) => staging.skip_batch_conflicts().await,
            Staging::Postgres(staging) => staging.skip_batch_conflicts().await,
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

/// The store a staging area stages for, and what it resolves while staging.
#[derive(Debug, Clone, Copy)]
struct StagingTarget {
    store_id: i64,
    /// For an external-id sync: the store's sync generation when the upload began, as of
    /// which staged products are resolved and marked unchanged (see `unchanged.rs`).
    resolved_at: Option<i64>,
    /// Look up each batch's stored products: an external-id sync of a store that has any.
    look_up: bool,
}

impl StagingTarget {
    /// Whether every staged product is new to the store: an external-id sync of a store
    /// that had no products when the upload began, and no sync has written to it since
    /// (only syncs create products, and a sync that writes advances the generation).
    fn stages_only_new_products(&self, generation: i64) -> bool {
        !self.look_up && self.resolved_at == Some(generation)
    }
}

/// The staged form of a product's optional text fields.
fn staged_barcodes(change: &ProductChange) -> Option<String> {
    change.barcodes.as_ref().map(|barcodes| barcodes.joined())
}

/// Limits bound as SQL parameters.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
