//! Reads of live products and the matching queue's transitions, shared by both backends:
//! each backend expands [`live_queries`] once with its pool type and statements (sqlx gives
//! the two backends no common executor type to write them once).

/// A catalog item as bound into SQL.
pub(super) type CatalogItemRow<'a> = (i64, i32, &'a str, &'a str, &'a str);

macro_rules! live_queries {
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

        pub(super) async fn product_by_id(
            pool: &sqlx::Pool<$database>,
            product_id: i64,
        ) -> Result<Option<$crate::store::ProductRecord>, $crate::store::StoreError> {
            Ok(sqlx::query_as($statements.select_product_by_id.as_str())
                .bind(product_id)
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

        pub(super) async fn pending_page(
            pool: &sqlx::Pool<$database>,
            filter: &$crate::store::PendingFilter,
            after_id: i64,
            limit: i64,
        ) -> Result<Vec<$crate::store::ProductRecord>, $crate::store::StoreError> {
            let highest_status = if filter.include_in_progress { 2 } else { 1 };
            Ok(sqlx::query_as($statements.select_pending_page.as_str())
                .bind(after_id)
                .bind(highest_status)
                .bind(filter.store_id)
                .bind(filter.category)
                .bind(limit)
                .fetch_all(pool)
                .await?)
        }

        pub(super) async fn claim(
            pool: &sqlx::Pool<$database>,
            product_id: i64,
            claimant: &$crate::store::Claimant<'_>,
            now: i64,
        ) -> Result<bool, $crate::store::StoreError> {
            let result = sqlx::query($crate::store::sql::CLAIM)
                .bind(product_id)
                .bind(claimant.name)
                .bind(now)
                .bind(claimant.token_id)
                .execute(pool)
                .await?;
            Ok(result.rows_affected() == 1)
        }

        pub(super) async fn complete(
            pool: &sqlx::Pool<$database>,
            product_id: i64,
            (id, kind, name, vintage, producer): $crate::store::live::CatalogItemRow<'_>,
            claimant: &$crate::store::Claimant<'_>,
            now: i64,
        ) -> Result<bool, $crate::store::StoreError> {
            let result = sqlx::query($crate::store::sql::COMPLETE)
                .bind(product_id)
                .bind(id)
                .bind(kind)
                .bind(name)
                .bind(vintage)
                .bind(producer)
                .bind(now)
                .bind(claimant.name)
                .bind(claimant.token_id)
                .bind(claimant.required_owner())
                .execute(pool)
                .await?;
            Ok(result.rows_affected() == 1)
        }

        pub(super) async fn release(
            pool: &sqlx::Pool<$database>,
            product_id: i64,
            claimant: &$crate::store::Claimant<'_>,
        ) -> Result<bool, $crate::store::StoreError> {
            let result = sqlx::query($crate::store::sql::RELEASE)
                .bind(product_id)
                .bind(claimant.required_owner())
                .execute(pool)
                .await?;
            Ok(result.rows_affected() == 1)
        }

        pub(super) async fn expire_claims(
            pool: &sqlx::Pool<$database>,
            claimed_before: i64,
        ) -> Result<u64, $crate::store::StoreError> {
            let expired: i64 = sqlx::query_scalar($crate::store::sql::ANY_CLAIM_EXPIRED)
                .bind(claimed_before)
                .fetch_one(pool)
                .await?;
            if expired == 0 {
                return Ok(0);
            }
            let result = sqlx::query($crate::store::sql::EXPIRE_CLAIMS)
                .bind(claimed_before)
                .execute(pool)
                .await?;
            Ok(result.rows_affected())
        }
    };
}
