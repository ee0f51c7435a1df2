//! PostgreSQL: the backend for many replicas sharing one database. A sync streams its
//! products into temporary tables of its own connection with `COPY` and merges them in one
//! transaction that holds the store's row lock (`staging.rs`).

mod copy_text;
mod sql;
mod staging;

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};

pub(super) use self::staging::CONNECTIONS_PER_SYNC;
use self::staging::PostgresStaging;
use super::{
    CatalogItemFields, Claimant, During, MAX_STORED_MESSAGE_BYTES, MatchQueueStore, NewSyncRun,
    NewToken, PendingFilter, PoolSettings, ProductFilter, ProductKey, ProductReads, ProductRecord,
    RunEnding, RunOutcome, Staging, StoreError, SyncHistory, SyncRunRecord, SyncStore, TokenRecord,
    TokenStore,
};
use crate::product::SyncKey;
use crate::quote::truncate_bytes;

/// How long a call waits for a free connection: a database that cannot be reached answers
/// UNAVAILABLE soon, not after 30 s.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL database.
#[derive(Debug)]
pub(super) struct PostgresBackend {
    pool: PgPool,
}

impl PostgresBackend {
    pub(super) async fn connect(url: &str, settings: PoolSettings) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            // A ping before every use would double the round trips of a read; a connection
            // that broke fails its next statement instead, and is dropped.
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .during("connecting to PostgreSQL")?;
        if settings.run_migrations {
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        }
        Ok(PostgresBackend { pool })
    }
}

#[async_trait]
impl ProductReads for PostgresBackend {
    async fn product(
        &self,
        store_id: i64,
        key: &ProductKey,
    ) -> Result<Option<ProductRecord>, StoreError> {
        let (statement, value) = match key {
            ProductKey::ExternalId(external_id) => {
                (sql::SELECT_PRODUCT_BY_EXTERNAL_ID, external_id)
            }
            ProductKey::Barcode(barcode) => (sql::SELECT_PRODUCT_BY_BARCODE, barcode),
        };
        sqlx::query_as(statement)
            .bind(store_id)
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .during("reading a product")
    }

    async fn products_page(
        &self,
        filter: &ProductFilter,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ProductRecord>, StoreError> {
        sqlx::query_as(sql::SELECT_PRODUCTS_PAGE)
            .bind(filter.store_id)
            .bind(after_id)
            .bind(filter.match_status)
            .bind(filter.in_stock_only)
            .bind(filter.updated_since)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .during("listing products")
    }

    async fn product_by_id(&self, product_id: i64) -> Result<Option<ProductRecord>, StoreError> {
        sqlx::query_as(sql::SELECT_PRODUCT_BY_ID)
            .bind(product_id)
            .fetch_optional(&self.pool)
            .await
            .during("reading a product by id")
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .during("checking the database")?;
        Ok(())
    }

    fn pool_connections(&self) -> (u32, u32) {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        (self.pool.size(), idle)
    }

    fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        None
    }

    async fn close(&self) {
        self.pool.close().await
    }
}

#[async_trait]
impl MatchQueueStore for PostgresBackend {
    async fn pending_page(
        &self,
        filter: &PendingFilter,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ProductRecord>, StoreError> {
        let highest_status = if filter.include_in_progress { 2 } else { 1 };
        sqlx::query_as(sql::SELECT_PENDING_PAGE)
            .bind(after_id)
            .bind(highest_status)
            .bind(filter.store_id)
            .bind(filter.category)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .during("listing the matching queue")
    }

    async fn claim(
        &self,
        product_id: i64,
        claimant: &Claimant<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(sql::CLAIM)
            .bind(product_id)
            .bind(claimant.name)
            .bind(now)
            .bind(claimant.token_id)
            .execute(&self.pool)
            .await
            .during("claiming a product")?;
        Ok(result.rows_affected() == 1)
    }

    async fn complete(
        &self,
        product_id: i64,
        item: &CatalogItemFields<'_>,
        claimant: &Claimant<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(sql::COMPLETE)
            .bind(product_id)
            .bind(item.id)
            .bind(item.kind)
            .bind(item.name)
            .bind(item.vintage)
            .bind(item.producer)
            .bind(now)
            .bind(claimant.name)
            .bind(claimant.token_id)
            .bind(claimant.required_owner())
            .execute(&self.pool)
            .await
            .during("completing a match")?;
        Ok(result.rows_affected() == 1)
    }

    async fn release(&self, product_id: i64, claimant: &Claimant<'_>) -> Result<bool, StoreError> {
        let result = sqlx::query(sql::RELEASE)
            .bind(product_id)
            .bind(claimant.required_owner())
            .execute(&self.pool)
            .await
            .during("releasing a claim")?;
        Ok(result.rows_affected() == 1)
    }

    async fn expire_claims(&self, claimed_before: i64) -> Result<u64, StoreError> {
        let expired: i64 = sqlx::query_scalar(sql::ANY_CLAIM_EXPIRED)
            .bind(claimed_before)
            .fetch_one(&self.pool)
            .await
            .during("looking for expired claims")?;
        if expired == 0 {
            return Ok(0);
        }
        let result = sqlx::query(sql::EXPIRE_CLAIMS)
            .bind(claimed_before)
            .execute(&self.pool)
            .await
            .during("expiring claims")?;
        Ok(result.rows_affected())
    }
}

/// Stores a token's row with an id of the table's choosing; returns the id.
async fn insert_token_row(
    connection: &mut PgConnection,
    token: &NewToken<'_>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sql::INSERT_TOKEN)
        .bind(token.name)
        .bind(token.role)
        .bind(token.secret_hash)
        .bind(token.created_at)
        .fetch_one(connection)
        .await
}

#[async_trait]
impl TokenStore for PostgresBackend {
    async fn insert_token(&self, token: &NewToken<'_>) -> Result<i64, StoreError> {
        async {
            let mut tx = self.pool.begin().await?;
            let id = insert_token_row(&mut tx, token).await?;
            for store_id in token.stores {
                sqlx::query(sql::INSERT_TOKEN_STORE)
                    .bind(id)
                    .bind(store_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(id)
        }
        .await
        .during("storing a token")
    }

    async fn insert_first_token(
        &self,
        token: &NewToken<'_>,
        id: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        async {
            let mut tx = self.pool.begin().await?;
            let first = sqlx::query(sql::MARK_BOOTSTRAPPED)
                .bind(token.created_at)
                .execute(&mut *tx)
                .await?;
            let tokens: i64 = sqlx::query_scalar(sql::COUNT_TOKENS)
                .fetch_one(&mut *tx)
                .await?;
            if first.rows_affected() == 0 || tokens > 0 {
                // Bootstrapped already, or tokens were made by hand before the first start.
                tx.commit().await?;
                return Ok(None);
            }
            let id = match id {
                Some(id) => {
                    let id: i64 = sqlx::query_scalar(sql::INSERT_TOKEN_WITH_ID)
                        .bind(id)
                        .bind(token.name)
                        .bind(token.role)
                        .bind(token.secret_hash)
                        .bind(token.created_at)
                        .fetch_one(&mut *tx)
                        .await?;
                    sqlx::query(sql::CATCH_UP_TOKEN_IDS)
                        .execute(&mut *tx)
                        .await?;
                    id
                }
                None => insert_token_row(&mut tx, token).await?,
            };
            tx.commit().await?;
            Ok(Some(id))
        }
        .await
        .during("storing the first token")
    }

    async fn token(&self, id: i64) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query_as(sql::SELECT_TOKEN)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .during("reading a token")
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        sqlx::query_as(sql::SELECT_TOKENS)
            .fetch_all(&self.pool)
            .await
            .during("listing tokens")
    }

    async fn token_stores(&self, token_id: i64) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(sql::SELECT_TOKEN_STORES)
            .bind(token_id)
            .fetch_all(&self.pool)
            .await
            .during("reading a token's stores")
    }

    async fn revoke_token(&self, id: i64, now: i64) -> Result<bool, StoreError> {
        let result = sqlx::query(sql::REVOKE_TOKEN)
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await
            .during("revoking a token")?;
        Ok(result.rows_affected() == 1)
    }

    async fn count_tokens(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(sql::COUNT_TOKENS)
            .fetch_one(&self.pool)
            .await
            .during("counting tokens")
    }

    async fn touch_token(&self, id: i64, now: i64) -> Result<(), StoreError> {
        sqlx::query(sql::TOUCH_TOKEN)
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await
            .during("recording a token's use")?;
        Ok(())
    }
}

#[async_trait]
impl SyncHistory for PostgresBackend {
    async fn insert_sync_run(&self, run: &NewSyncRun<'_>) -> Result<(), StoreError> {
        sqlx::query(sql::INSERT_SYNC_RUN)
            .bind(run.id)
            .bind(run.store_id)
            .bind(run.started_at)
            .bind(run.clear)
            .bind(run.dry_run)
            .bind(run.key_field)
            .bind(run.skip_invalid)
            .bind(run.allow_mass_clear)
            .bind(run.expected_count.map(|count| count as i64))
            .bind(run.idempotency_key)
            .bind(RunOutcome::Running.code())
            .bind(run.token_name)
            .execute(&self.pool)
            .await
            .during("recording a sync's start")?;
        Ok(())
    }

    async fn end_sync_run(&self, id: &str, ending: &RunEnding) -> Result<(), StoreError> {
        let counts = &ending.counts;
        sqlx::query(sql::END_SYNC_RUN)
            .bind(id)
            .bind(ending.finished_at)
            .bind(ending.outcome.map(RunOutcome::code))
            .bind(ending.status_code)
            .bind(truncate_bytes(
                ending.status_message.clone(),
                MAX_STORED_MESSAGE_BYTES,
            ))
            .bind(counts.received)
            .bind(counts.created)
            .bind(counts.updated)
            .bind(counts.unchanged)
            .bind(counts.cleared)
            .bind(counts.linked)
            .bind(counts.rejected)
            .bind(ending.request_hash.as_deref())
            .bind(ending.replay_of.as_deref())
            .bind(RunOutcome::Running.code())
            .execute(&self.pool)
            .await
            .during("recording a sync's end")?;
        Ok(())
    }

    async fn touch_sync_run(&self, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(sql::TOUCH_SYNC_RUN)
            .bind(id)
            .bind(now)
            .bind(RunOutcome::Running.code())
            .execute(&self.pool)
            .await
            .during("marking a sync alive")?;
        Ok(())
    }

    async fn end_silent_sync_runs(
        &self,
        silent_since: i64,
        ending: &RunEnding,
    ) -> Result<u64, StoreError> {
        let ended = sqlx::query(sql::END_SILENT_SYNC_RUNS)
            .bind(ending.outcome.map(RunOutcome::code))
            .bind(ending.finished_at)
            .bind(ending.status_code)
            .bind(truncate_bytes(
                ending.status_message.clone(),
                MAX_STORED_MESSAGE_BYTES,
            ))
            .bind(RunOutcome::Running.code())
            .bind(silent_since)
            .execute(&self.pool)
            .await
            .during("ending silent syncs")?;
        Ok(ended.rows_affected())
    }

    async fn sync_run(&self, id: &str) -> Result<Option<SyncRunRecord>, StoreError> {
        sqlx::query_as(sql::SELECT_SYNC_RUN)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .during("reading a sync run")
    }

    async fn sync_runs_page(
        &self,
        store_id: i64,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SyncRunRecord>, StoreError> {
        sqlx::query_as(sql::SELECT_SYNC_RUNS_PAGE)
            .bind(store_id)
            .bind(before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .during("listing sync runs")
    }
}

#[async_trait]
impl SyncStore for PostgresBackend {
    async fn open_staging(
        &self,
        store_id: i64,
        key: SyncKey,
    ) -> Result<Box<dyn Staging>, StoreError> {
        Ok(Box::new(
            PostgresStaging::open(&self.pool, store_id, key).await?,
        ))
    }
}
