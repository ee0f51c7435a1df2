//! API tokens as stored.

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
