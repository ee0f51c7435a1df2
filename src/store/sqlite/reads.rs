//! Reads of live products and the matching queue's transitions on SQLite.

use async_trait::async_trait;

use super::{SqliteBackend, sql};
use crate::store::{
    CatalogItemFields, Claimant, During, MatchQueueStore, PendingFilter, ProductFilter, ProductKey,
    ProductReads, ProductRecord, ProductRef, StoreError,
};

#[async_trait]
impl ProductReads for SqliteBackend {
    async fn product(
        &self,
        store_id: i64,
        key: &ProductKey,
    ) -> Result<Option<ProductRecord>, StoreError> {
        if let Some(point_reads) = &self.point_reads {
            match point_reads.product(store_id, key) {
                Ok(found) => return Ok(found),
                // Busy or broken: the pooled path waits as long as it takes.
                Err(error) => {
                    tracing::debug!(%error, "a point read failed; reading through the pool")
                }
            }
        }
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

    async fn product_by_id(
        &self,
        product: ProductRef,
    ) -> Result<Option<ProductRecord>, StoreError> {
        sqlx::query_as(sql::SELECT_PRODUCT_BY_ID)
            .bind(product.id)
            .bind(product.store_id)
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
        Some(self.pool.connect_options().get_filename().to_owned())
    }

    async fn close(&self) {
        self.pool.close().await
    }
}

#[async_trait]
impl MatchQueueStore for SqliteBackend {
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
        product: ProductRef,
        claimant: &Claimant<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(sql::CLAIM)
            .bind(product.id)
            .bind(claimant.name)
            .bind(now)
            .bind(claimant.token_id)
            .bind(product.store_id)
            .execute(&self.pool)
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
        let result = sqlx::query(sql::COMPLETE)
            .bind(product.id)
            .bind(item.id)
            .bind(item.kind)
            .bind(item.name)
            .bind(item.vintage)
            .bind(item.producer)
            .bind(now)
            .bind(claimant.name)
            .bind(claimant.token_id)
            .bind(claimant.required_owner())
            .bind(product.store_id)
            .execute(&self.pool)
            .await
            .during("completing a match")?;
        Ok(result.rows_affected() == 1)
    }

    async fn release(
        &self,
        product: ProductRef,
        claimant: &Claimant<'_>,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(sql::RELEASE)
            .bind(product.id)
            .bind(claimant.required_owner())
            .bind(product.store_id)
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
