//! Reads of live products and the matching queue's transitions on PostgreSQL.

use async_trait::async_trait;

use super::{PostgresBackend, sql};
use crate::store::retry::retrying;
use crate::store::{
    CatalogItemFields, Claimant, During, MatchQueueStore, PendingFilter, ProductFilter, ProductKey,
    ProductReads, ProductRecord, ProductRef, StoreError,
};

#[async_trait]
impl ProductReads for PostgresBackend {
    async fn product(
        &self,
        store_id: i64,
        key: &ProductKey,
    ) -> Result<Option<ProductRecord>, StoreError> {
        self.point_reads.product(&self.pool, store_id, key).await
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

    async fn product_by_id(
        &self,
        product: ProductRef,
    ) -> Result<Option<ProductRecord>, StoreError> {
        let query =
            sqlx::query_as(sql::SELECT_PRODUCT_BY_ID.for_store(product.store_id)).bind(product.id);
        in_store(query, product.store_id)
            .fetch_optional(&self.pool)
            .await
            .during("reading a product by id")
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(sql::PING)
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
        self.point_reads.close();
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
        let store_id = (filter.store_id != 0).then_some(filter.store_id);
        let query = sqlx::query_as(sql::SELECT_PENDING_PAGE.for_store(store_id))
            .bind(after_id)
            .bind(highest_status)
            .bind(filter.category)
            .bind(limit);
        in_store(query, store_id)
            .fetch_all(&self.pool)
            .await
            .during("listing the matching queue")
    }

    async fn claim(
        &self,
        product: ProductRef,
        claimant: &Claimant<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = retrying(|| {
            let query = sqlx::query(sql::CLAIM.for_store(product.store_id))
                .bind(product.id)
                .bind(claimant.name)
                .bind(now)
                .bind(claimant.token_id);
            in_store(query, product.store_id).execute(&self.pool)
        })
        .await
        .during("claiming a product")?;
        Ok(result.rows_affected() == 1)
    }

    async fn complete(
        &self,
        product: ProductRef,
        item: &CatalogItemFields<'_>,
        claimant: &Claimant<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = retrying(|| {
            let query = sqlx::query(sql::COMPLETE.for_store(product.store_id))
                .bind(product.id)
                .bind(item.id)
                .bind(item.kind)
                .bind(item.name)
                .bind(item.vintage)
                .bind(item.producer)
                .bind(now)
                .bind(claimant.name)
                .bind(claimant.token_id)
                .bind(claimant.required_owner());
            in_store(query, product.store_id).execute(&self.pool)
        })
        .await
        .during("completing a match")?;
        Ok(result.rows_affected() == 1)
    }

    async fn release(
        &self,
        product: ProductRef,
        claimant: &Claimant<'_>,
    ) -> Result<bool, StoreError> {
        let result = retrying(|| {
            let query = sqlx::query(sql::RELEASE.for_store(product.store_id))
                .bind(product.id)
                .bind(claimant.required_owner());
            in_store(query, product.store_id).execute(&self.pool)
        })
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
        let result = retrying(|| {
            sqlx::query(sql::EXPIRE_CLAIMS)
                .bind(claimed_before)
                .execute(&self.pool)
        })
        .await
        .during("expiring claims")?;
        Ok(result.rows_affected())
    }
}

/// Binds the store of a statement's form for one store (see `sql::OnProduct`), if known.
fn in_store<Q: BindStore>(query: Q, store_id: Option<i64>) -> Q {
    match store_id {
        Some(store_id) => query.bind_store(store_id),
        None => query,
    }
}

/// The two kinds of query `in_store` binds to.
trait BindStore {
    fn bind_store(self, store_id: i64) -> Self;
}

impl<'q> BindStore for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_store(self, store_id: i64) -> Self {
        self.bind(store_id)
    }
}

impl<'q, O> BindStore for sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    fn bind_store(self, store_id: i64) -> Self {
        self.bind(store_id)
    }
}
