//! The database, behind one seam: the interfaces below say what the service needs from a
//! database (products, the matching queue, tokens, the sync history, and a sync's staging
//! and merge), and each backend implements all of them once, with its own SQL:
//! - [`sqlite`]: SQLite, the embedded default;
//! - [`postgres`]: PostgreSQL, for many service replicas sharing one database.
//!
//! The rest of the service holds a [`Database`] and never knows which backend it is. Every
//! statement of a backend lives in its module; nothing here names a gRPC code.

mod history;
mod merge;
mod postgres;
mod records;
mod retry;
mod sqlite;
mod tokens;
mod unchanged;

pub use history::{NewSyncRun, RunCounts, RunEnding, RunOutcome, SyncRunRecord};
pub use merge::{
    BatchConflict, IdempotencyCheck, MASS_CLEAR_FLOOR, MergeCounts, MergeOutcome, MergeRequest,
    MergeRun,
};
pub use records::{
    CatalogItemFields, Claimant, PendingFilter, ProductFilter, ProductKey, ProductRecord,
    ProductRef, StagedProduct,
};
pub use retry::serialization_retries;
pub use tokens::{NewToken, TokenRecord};

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::product::SyncKey;

/// Longest status message a sync's history keeps, in bytes: a page of the history must
/// stay readable by a client with default message limits.
pub const MAX_STORED_MESSAGE_BYTES: usize = 1024;

/// Errors of the database layer. They carry the operation that failed and SQL detail for
/// the logs; the gRPC edge never shows them to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{operation} failed: {source}")]
    Database {
        operation: &'static str,
        source: sqlx::Error,
    },
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("cannot lock {path} to run the migrations alone: {source}")]
    MigrationLock {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the database aborted the work to keep concurrent transactions serializable,
    /// and went on doing so through every retry: the caller may run it again.
    pub fn is_contention(&self) -> bool {
        matches!(self, StoreError::Database { source, .. } if retry::is_serialization_failure(source))
    }

    /// Whether the database could not be reached (as opposed to refusing a statement).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database {
                source: sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed,
                ..
            }
        )
    }
}

/// Names the operation a database error happened in.
trait During<T> {
    fn during(self, operation: &'static str) -> Result<T, StoreError>;
}

impl<T> During<T> for Result<T, sqlx::Error> {
    fn during(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database { operation, source })
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

/// How a pool of connections is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// Run the backend's migrations first (once per process is enough; they are
    /// serialized across processes).
    pub run_migrations: bool,
    /// Open no connection until one is needed (PostgreSQL): a database that is down then
    /// fails the calls that need it, not the start, and a call gives up on a connection
    /// after a second instead of five. For read replicas, which have the primary behind
    /// them.
    pub connect_lazily: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 16,
            run_migrations: true,
            connect_lazily: false,
        }
    }
}

/// The service's database: one backend, shared by every task.
#[derive(Debug, Clone)]
pub struct Database(Arc<dyn Backend>);

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
        Ok(match url {
            DatabaseUrl::Sqlite(url) => Database(Arc::new(
                sqlite::SqliteBackend::connect(url, settings).await?,
            )),
            DatabaseUrl::Postgres(url) => Database(Arc::new(
                postgres::PostgresBackend::connect(url, settings).await?,
            )),
        })
    }
}

impl Deref for Database {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// Everything the service needs from a database; what each backend implements.
pub trait Backend: ProductReads + MatchQueueStore + TokenStore + SyncHistory + SyncStore {}

impl<T: ProductReads + MatchQueueStore + TokenStore + SyncHistory + SyncStore> Backend for T {}

/// Reads of live products.
#[async_trait]
pub trait ProductReads: Send + Sync + fmt::Debug {
    /// One product of a store, if it exists.
    async fn product(
        &self,
        store_id: i64,
        key: &ProductKey,
    ) -> Result<Option<ProductRecord>, StoreError>;

    /// Up to `limit` products matching `filter` with ids above `after_id`, in id order.
    async fn products_page(
        &self,
        filter: &ProductFilter,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ProductRecord>, StoreError>;

    /// One product by the service's own id.
    async fn product_by_id(&self, product: ProductRef)
    -> Result<Option<ProductRecord>, StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The pool's open connections and how many of them are idle.
    fn pool_connections(&self) -> (u32, u32);

    /// The file of a SQLite database.
    fn sqlite_path(&self) -> Option<std::path::PathBuf>;

    /// Closes every connection.
    async fn close(&self);
}

/// The catalog team's matching queue.
#[async_trait]
pub trait MatchQueueStore: Send + Sync {
    /// Up to `limit` products of the queue with ids above `after_id`, oldest first.
    async fn pending_page(
        &self,
        filter: &PendingFilter,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ProductRecord>, StoreError>;

    /// Moves a pending product to in progress, claimed by `claimant`; `false` if it was not
    /// pending (or is unknown).
    async fn claim(
        &self,
        product: ProductRef,
        claimant: &Claimant<'_>,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Completes a pending product, or one in progress that `claimant` may complete, with
    /// its catalog item; `false` if it was neither (or is unknown).
    async fn complete(
        &self,
        product: ProductRef,
        item: &CatalogItemFields<'_>,
        claimant: &Claimant<'_>,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Moves an in-progress product that `claimant` may release back to pending; `false` if
    /// it was not in progress or is another's.
    async fn release(
        &self,
        product: ProductRef,
        claimant: &Claimant<'_>,
    ) -> Result<bool, StoreError>;

    /// Makes products claimed before `claimed_before` pending again; how many.
    async fn expire_claims(&self, claimed_before: i64) -> Result<u64, StoreError>;
}

/// API tokens (only the hashes of their secrets).
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a new token; returns its id.
    async fn insert_token(&self, token: &NewToken<'_>) -> Result<i64, StoreError>;

    /// Stores the database's first token (an admin), with `id` if given, unless the
    /// database was bootstrapped before; its id if it was stored. One transaction: of
    /// servers starting at once, exactly one stores it.
    async fn insert_first_token(
        &self,
        token: &NewToken<'_>,
        id: Option<i64>,
    ) -> Result<Option<i64>, StoreError>;

    /// One token by id, revoked or not.
    async fn token(&self, id: i64) -> Result<Option<TokenRecord>, StoreError>;

    /// Every token, oldest first.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// The stores a token may act for.
    async fn token_stores(&self, token_id: i64) -> Result<Vec<i64>, StoreError>;

    /// Revokes a token; `false` if there is no such token or it was already revoked.
    async fn revoke_token(&self, id: i64, now: i64) -> Result<bool, StoreError>;

    /// How many tokens were ever created (revoked ones included).
    async fn count_tokens(&self) -> Result<i64, StoreError>;

    /// Records that a token was used, at most once a minute per token.
    async fn touch_token(&self, id: i64, now: i64) -> Result<(), StoreError>;
}

/// The history of syncs. A run is written when its sync starts, so that a sync cut short
/// by a crash still shows; a committed run is completed inside the merge's own
/// transaction, and every other ending right after it.
#[async_trait]
pub trait SyncHistory: Send + Sync {
    /// Records that a sync started.
    async fn insert_sync_run(&self, run: &NewSyncRun<'_>) -> Result<(), StoreError>;

    /// Records how sync `id` of `store_id` ended, unless it committed (the merge recorded
    /// that).
    async fn end_sync_run(
        &self,
        store_id: i64,
        id: &str,
        ending: &RunEnding,
    ) -> Result<(), StoreError>;

    /// Marks running sync `id` of `store_id` alive.
    async fn touch_sync_run(&self, store_id: i64, id: &str, now: i64) -> Result<(), StoreError>;

    /// Ends every running sync not marked alive since `silent_since` with `ending`; how
    /// many.
    async fn end_silent_sync_runs(
        &self,
        silent_since: i64,
        ending: &RunEnding,
    ) -> Result<u64, StoreError>;

    /// Sync run `id` of `store_id`.
    async fn sync_run(&self, store_id: i64, id: &str) -> Result<Option<SyncRunRecord>, StoreError>;

    /// Up to `limit` runs of a store, newest first, older than run `before` if given.
    async fn sync_runs_page(
        &self,
        store_id: i64,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SyncRunRecord>, StoreError>;
}

/// Where syncs land.
#[async_trait]
pub trait SyncStore: Send + Sync {
    /// Opens a staging area for one sync of `store_id` on a connection of its own.
    async fn open_staging(
        &self,
        store_id: i64,
        key: SyncKey,
    ) -> Result<Box<dyn Staging>, StoreError>;
}

/// The staging area of one sync: products land here as they arrive and reach the live
/// tables only in [`Staging::merge`].
#[async_trait]
pub trait Staging: Send + Sync {
    /// Stages every batch of validated products the stream yields, as they come.
    async fn stage_all(
        &mut self,
        batches: BoxStream<'_, Vec<StagedProduct>>,
    ) -> Result<(), StoreError>;

    /// Up to `limit` products that repeat an external id or a barcode of an earlier
    /// product of the batch.
    async fn batch_conflicts(&mut self, limit: usize) -> Result<Vec<BatchConflict>, StoreError>;

    /// Skips (skip_invalid) the products that conflict within the batch; returns them.
    async fn skip_batch_conflicts(&mut self) -> Result<Vec<BatchConflict>, StoreError>;

    /// Merges the staged products into the live tables in one transaction; a batch not
    /// checked for repeats yet is checked when the merge needs it, and its repeats answer
    /// [`MergeOutcome::Conflicts`]. `abandoned` is asked just before the commit; if it
    /// says so, everything is rolled back.
    async fn merge(
        &mut self,
        request: &MergeRequest,
        abandoned: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<MergeOutcome, StoreError>;

    /// Drops the staged rows and returns the connection to the pool.
    async fn close(self: Box<Self>);
}

/// Limits bound as SQL parameters.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
