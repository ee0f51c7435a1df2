//! API tokens on SQLite.

use async_trait::async_trait;
use sqlx::SqliteConnection;

use super::{SqliteBackend, sql};
use crate::store::{During, NewToken, StoreError, TokenRecord, TokenStore};

/// Stores a token's row with an id of the table's choosing; returns the id.
async fn insert_token_row(
    connection: &mut SqliteConnection,
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
impl TokenStore for SqliteBackend {
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
                    sqlx::query_scalar(sql::INSERT_TOKEN_WITH_ID)
                        .bind(id)
                        .bind(token.name)
                        .bind(token.role)
                        .bind(token.secret_hash)
                        .bind(token.created_at)
                        .fetch_one(&mut *tx)
                        .await?
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
