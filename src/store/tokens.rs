//! Storage of API tokens, shared by both backends: each backend expands [`token_queries`]
//! once with its pool type.

/// One stored token (never the token itself: only the hash of its secret).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    /// `store`, `matcher` or `admin`.
    pub role: String,
    /// Hex SHA-256 of the token's secret.
    pub secret_hash: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A new token to store.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub name: &'a str,
    pub role: &'a str,
    pub secret_hash: &'a str,
    pub stores: &'a [i64],
    pub created_at: i64,
}

macro_rules! token_queries {
    ($database:ty, $after_explicit_id:expr) => {
        /// Stores `token` as the database's first token, with `id` if given, unless the
        /// database was bootstrapped already; returns its id if it was stored. One
        /// transaction: of servers starting at once, exactly one stores it.
        pub(super) async fn insert_first_token(
            pool: &sqlx::Pool<$database>,
            token: &$crate::store::NewToken<'_>,
            id: Option<i64>,
        ) -> Result<Option<i64>, $crate::store::StoreError> {
            let mut tx = pool.begin().await?;
            let first = sqlx::query(
                "INSERT INTO bootstrap (id, created_at) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
            )
            .bind(token.created_at)
            .execute(&mut *tx)
            .await?;
            let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens")
                .fetch_one(&mut *tx)
                .await?;
            if first.rows_affected() == 0 || tokens > 0 {
                // Bootstrapped already, or tokens were made by hand before the first start.
                tx.commit().await?;
                return Ok(None);
            }
            let id: i64 = match id {
                Some(id) => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO api_tokens (id, name, role, secret_hash, created_at)
                         VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    )
                    .bind(id)
                    .bind(token.name)
                    .bind(token.role)
                    .bind(token.secret_hash)
                    .bind(token.created_at)
                    .fetch_one(&mut *tx)
                    .await?;
                    let after_explicit_id: Option<&str> = $after_explicit_id;
                    if let Some(statement) = after_explicit_id {
                        sqlx::query(statement).execute(&mut *tx).await?;
                    }
                    id
                }
                None => insert_token_row(&mut *tx, token).await?,
            };
            tx.commit().await?;
            Ok(Some(id))
        }

        pub(super) async fn insert_token(
            pool: &sqlx::Pool<$database>,
            token: &$crate::store::NewToken<'_>,
        ) -> Result<i64, $crate::store::StoreError> {
            let mut tx = pool.begin().await?;
            let id = insert_token_row(&mut *tx, token).await?;
            for store_id in token.stores {
                sqlx::query(
                    "INSERT INTO api_token_stores (token_id, store_id) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(store_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(id)
        }

        /// Stores a token's row with an id of the table's choosing; returns the id.
        async fn insert_token_row(
            connection: &mut <$database as sqlx::Database>::Connection,
            token: &$crate::store::NewToken<'_>,
        ) -> Result<i64, $crate::store::StoreError> {
            Ok(sqlx::query_scalar(
                "INSERT INTO api_tokens (name, role, secret_hash, created_at)
                 VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(token.name)
            .bind(token.role)
            .bind(token.secret_hash)
            .bind(token.created_at)
            .fetch_one(connection)
            .await?)
        }

        pub(super) async fn token(
            pool: &sqlx::Pool<$database>,
            id: i64,
        ) -> Result<Option<$crate::store::TokenRecord>, $crate::store::StoreError> {
            const SQL: &str = const_format_token_select!("WHERE id = $1");
            Ok(sqlx::query_as(SQL).bind(id).fetch_optional(pool).await?)
        }

        pub(super) async fn tokens(
            pool: &sqlx::Pool<$database>,
        ) -> Result<Vec<$crate::store::TokenRecord>, $crate::store::StoreError> {
            const SQL: &str = const_format_token_select!("ORDER BY id");
            Ok(sqlx::query_as(SQL).fetch_all(pool).await?)
        }

        pub(super) async fn token_stores(
            pool: &sqlx::Pool<$database>,
            token_id: i64,
        ) -> Result<Vec<i64>, $crate::store::StoreError> {
            Ok(sqlx::query_scalar(
                "SELECT store_id FROM api_token_stores WHERE token_id = $1 ORDER BY store_id",
            )
            .bind(token_id)
            .fetch_all(pool)
            .await?)
        }

        pub(super) async fn revoke_token(
            pool: &sqlx::Pool<$database>,
            id: i64,
            now: i64,
        ) -> Result<bool, $crate::store::StoreError> {
            let result = sqlx::query(
                "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(now)
            .execute(pool)
            .await?;
            Ok(result.rows_affected() == 1)
        }

        pub(super) async fn count_tokens(
            pool: &sqlx::Pool<$database>,
        ) -> Result<i64, $crate::store::StoreError> {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens")
                .fetch_one(pool)
                .await?)
        }

        /// Records a use, at most once a minute per token: a write per call would contend
        /// with syncs for SQLite's write lock.
        pub(super) async fn touch_token(
            pool: &sqlx::Pool<$database>,
            id: i64,
            now: i64,
        ) -> Result<(), $crate::store::StoreError> {
            sqlx::query(
                "UPDATE api_tokens SET last_used_at = $2
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2 - 60000000)",
            )
            .bind(id)
            .bind(now)
            .execute(pool)
            .await?;
            Ok(())
        }
    };
}

/// `SELECT <token columns> FROM api_tokens <tail>` as a constant.
macro_rules! const_format_token_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, name, role, secret_hash, created_at, last_used_at, revoked_at FROM api_tokens ",
            $tail
        )
    };
}
