//! Who may call what. Every call carries a bearer token (`authorization: Bearer <token>`);
//! a **store** token acts only for the stores it was issued for, a **matcher** token works
//! the matching queue and reads any store, an **admin** token may do everything.
//!
//! A token reads `isk_<id>_<secret>`: the id finds the stored row, and the secret (256
//! random bits, hex) is checked against the stored SHA-256 hash in constant time. A plain
//! hash is enough for random secrets of that size; nothing but the hash is ever stored.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::now_micros;
use crate::store::{Database, NewToken, StoreError, TokenRecord};

const TOKEN_PREFIX: &str = "isk_";
const SECRET_BYTES: usize = 32;

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Sync and read the listed stores only.
    Store(Vec<i64>),
    /// Work the matching queue and read any store.
    Matcher,
    /// Everything.
    Admin,
}

impl Role {
    fn name(&self) -> &'static str {
        match self {
            Role::Store(_) => "store",
            Role::Matcher => "matcher",
            Role::Admin => "admin",
        }
    }
}

/// The caller of one request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, for logs and history; "anonymous" when authentication is off.
    pub name: String,
    /// The token's id; `None` when authentication is off.
    pub token_id: Option<i64>,
    pub role: Role,
}

/// Why a call was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "missing credentials: send the metadata \"authorization: Bearer <token>\" \
         (inventory-sync tokens create makes a token)"
    )]
    Missing,
    #[error("the token is not valid (malformed, unknown or revoked)")]
    Invalid,
    #[error("the token {token:?} may not act for store {store_id}")]
    StoreDenied { token: String, store_id: i64 },
    #[error("the token {token:?} may not {action}; it takes a {needed} token")]
    RoleDenied {
        token: String,
        action: &'static str,
        needed: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Principal {
    /// The caller when authentication is turned off.
    pub fn anonymous_admin() -> Self {
        Principal {
            name: "anonymous".to_owned(),
            token_id: None,
            role: Role::Admin,
        }
    }

    /// Syncing a store: its own store token, or an admin.
    pub fn may_write_store(&self, store_id: i64) -> Result<(), AuthError> {
        match &self.role {
            Role::Admin => Ok(()),
            Role::Store(stores) if stores.contains(&store_id) => Ok(()),
            Role::Store(_) => Err(self.store_denied(store_id)),
            Role::Matcher => Err(AuthError::RoleDenied {
                token: self.name.clone(),
                action: "sync a store",
                needed: "store or admin",
            }),
        }
    }

    /// Reading a store: its own store token, a matcher or an admin.
    pub fn may_read_store(&self, store_id: i64) -> Result<(), AuthError> {
        match &self.role {
            Role::Admin | Role::Matcher => Ok(()),
            Role::Store(stores) if stores.contains(&store_id) => Ok(()),
            Role::Store(_) => Err(self.store_denied(store_id)),
        }
    }

    /// Working the matching queue: a matcher or an admin.
    pub fn may_match(&self) -> Result<(), AuthError> {
        match &self.role {
            Role::Admin | Role::Matcher => Ok(()),
            Role::Store(_) => Err(AuthError::RoleDenied {
                token: self.name.clone(),
                action: "use the matching queue",
                needed: "matcher or admin",
            }),
        }
    }

    /// Whether this caller may act on what another token started (an admin may).
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    fn store_denied(&self, store_id: i64) -> AuthError {
        AuthError::StoreDenied {
            token: self.name.clone(),
            store_id,
        }
    }
}

/// A freshly created token: shown once, then only its hash exists.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub id: i64,
    secret: String,
}

impl fmt::Display for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}_{}", self.id, self.secret)
    }
}

impl fmt::Debug for IssuedToken {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuedToken {{ id: {}, .. }}", self.id)
    }
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `isk_<id>_<secret>` → (id, secret).
fn parse_token(token: &str) -> Option<(i64, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id = id.parse().ok()?;
    (secret.len() == SECRET_BYTES * 2).then_some((id, secret))
}

/// Creates a token and returns it; only its hash is stored.
pub async fn create_token(
    database: &Database,
    name: &str,
    role: &Role,
) -> Result<IssuedToken, StoreError> {
    let secret = hex::encode(rand::random::<[u8; SECRET_BYTES]>());
    let stores = match role {
        Role::Store(stores) => stores.as_slice(),
        Role::Matcher | Role::Admin => &[],
    };
    let id = database
        .insert_token(&NewToken {
            name,
            role: role.name(),
            secret_hash: &hash_secret(&secret),
            stores,
            created_at: now_micros(),
        })
        .await?;
    Ok(IssuedToken { id, secret })
}

/// Where the first admin token comes from.
#[derive(Debug, Clone, Copy)]
pub enum FirstToken<'a> {
    /// A new random one.
    Generated,
    /// One the operator chose (`isk_<id>_<64 hex digits>`).
    Seeded(&'a str),
}

/// Why the first admin token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "the seeded admin token is not of the form isk_<id>_<64 hex digits>; make one with \
         `echo isk_1_$(openssl rand -hex 32)`"
    )]
    MalformedSeed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the database's first admin token, unless it has one or has had tokens: exactly
/// one of several servers starting at once on a fresh database creates it. Returns the
/// token if this call created it.
pub async fn create_first_admin_token(
    database: &Database,
    source: FirstToken<'_>,
) -> Result<Option<IssuedToken>, BootstrapError> {
    let (id, secret) = match source {
        FirstToken::Generated => (None, hex::encode(rand::random::<[u8; SECRET_BYTES]>())),
        FirstToken::Seeded(token) => {
            let (id, secret) = parse_token(token.trim()).ok_or(BootstrapError::MalformedSeed)?;
            if id <= 0 || !secret.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                return Err(BootstrapError::MalformedSeed);
            }
            (Some(id), secret.to_owned())
        }
    };
    let token = NewToken {
        name: "first admin",
        role: Role::Admin.name(),
        secret_hash: &hash_secret(&secret),
        stores: &[],
        created_at: now_micros(),
    };
    let created = database.insert_first_token(&token, id).await?;
    Ok(created.map(|id| IssuedToken { id, secret }))
}

/// Revokes a token; `false` if there is no such active token.
pub async fn revoke_token(database: &Database, id: i64) -> Result<bool, StoreError> {
    database.revoke_token(id, now_micros()).await
}

/// A stored token with its stores, as `tokens list` shows it.
#[derive(Debug, Clone)]
pub struct TokenSummary {
    pub record: TokenRecord,
    pub stores: Vec<i64>,
}

/// Every token, oldest first.
pub async fn list_tokens(database: &Database) -> Result<Vec<TokenSummary>, StoreError> {
    let mut summaries = Vec::new();
    for record in database.tokens().await? {
        let stores = database.token_stores(record.id).await?;
        summaries.push(TokenSummary { record, stores });
    }
    Ok(summaries)
}

/// Checks the bearer tokens of calls, or lets every call through when turned off.
///
/// A token checked against its stored row is taken as valid for the next
/// `recheck_interval` without reading the row again: a read then costs one query, not two,
/// and a token revoked by any process (`tokens revoke` writes the database directly) is
/// refused by every server within that interval. A sync is checked again, against the row,
/// just before it commits. Nothing is written on a call's path: when a token was last used
/// is noted in memory and written in the background (see [`Authenticator::record_uses`]),
/// since on SQLite any write waits for a running sync's merge.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// `None` when authentication is off.
    database: Option<Database>,
    /// Latest use of each token not yet written.
    uses: Arc<Mutex<HashMap<i64, i64>>>,
    /// Tokens checked against their rows lately, by id.
    verified: Arc<Mutex<HashMap<i64, Verified>>>,
    recheck_interval: Duration,
}

/// A token found valid, and when.
#[derive(Debug, Clone)]
struct Verified {
    secret_hash: String,
    principal: Principal,
    at: Instant,
}

/// How often the tokens' last uses are written.
pub const TOKEN_USE_INTERVAL: Duration = Duration::from_secs(60);

/// How long a token checked against its row is taken as valid, by default.
pub const DEFAULT_TOKEN_RECHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Authenticator {
    /// Checks tokens against `database`, each again after `recheck_interval` (zero: on
    /// every call).
    pub fn new(database: Database, recheck_interval: Duration) -> Self {
        Authenticator {
            database: Some(database),
            uses: Arc::default(),
            verified: Arc::default(),
            recheck_interval,
        }
    }

    /// Every call is an anonymous admin. For development only.
    pub fn disabled() -> Self {
        Authenticator {
            database: None,
            uses: Arc::default(),
            verified: Arc::default(),
            recheck_interval: Duration::ZERO,
        }
    }

    /// Writes when each token used since the last time was last used; returns how many
    /// tokens were written.
    pub async fn record_uses(&self) -> Result<usize, StoreError> {
        let Some(database) = &self.database else {
            return Ok(0);
        };
        let uses = std::mem::take(&mut *lock(&self.uses));
        for (position, (&id, &used_at)) in uses.iter().enumerate() {
            if let Err(error) = database.touch_token(id, used_at).await {
                // Kept for the next round, unless the token was used again meanwhile.
                let mut pending = lock(&self.uses);
                for (&id, &used_at) in uses.iter().skip(position) {
                    pending.entry(id).or_insert(used_at);
                }
                return Err(error);
            }
        }
        Ok(uses.len())
    }

    /// Writes the tokens' last uses every [`TOKEN_USE_INTERVAL`] until aborted.
    pub async fn record_uses_periodically(self) {
        let mut ticks = tokio::time::interval(TOKEN_USE_INTERVAL);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(error) = self.record_uses().await {
                tracing::warn!(%error, "could not record when tokens were last used");
            }
        }
    }

    /// The caller of token `id` if it was checked against its row within the recheck
    /// interval and `secret_hash` is its secret's.
    fn recently_verified(&self, id: i64, secret_hash: &str) -> Option<Principal> {
        let verified = lock(&self.verified);
        let known = verified.get(&id)?;
        let matches: bool = secret_hash
            .as_bytes()
            .ct_eq(known.secret_hash.as_bytes())
            .into();
        (matches && known.at.elapsed() < self.recheck_interval).then(|| known.principal.clone())
    }

    /// The caller of a request with this `authorization` metadata value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let Some(database) = &self.database else {
            return Ok(Principal::anonymous_admin());
        };
        let authorization = authorization.ok_or(AuthError::Missing)?;
        let token = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?
            .trim();
        let (id, secret) = parse_token(token).ok_or(AuthError::Invalid)?;
        let presented = hash_secret(secret);
        if let Some(principal) = self.recently_verified(id, &presented) {
            lock(&self.uses).insert(id, now_micros());
            return Ok(principal);
        }
        let checked_at = Instant::now();
        let Some(record) = database.token(id).await? else {
            lock(&self.verified).remove(&id);
            return Err(AuthError::Invalid);
        };
        let matches: bool = presented
            .as_bytes()
            .ct_eq(record.secret_hash.as_bytes())
            .into();
        if record.revoked_at.is_some() {
            lock(&self.verified).remove(&id);
        }
        // A wrong secret leaves the cache alone: anyone may guess at a token's id.
        if !matches || record.revoked_at.is_some() {
            return Err(AuthError::Invalid);
        }
        let role = match record.role.as_str() {
            "admin" => Role::Admin,
            "matcher" => Role::Matcher,
            _ => Role::Store(database.token_stores(id).await?),
        };
        let principal = Principal {
            name: record.name,
            token_id: Some(id),
            role,
        };
        lock(&self.uses).insert(id, now_micros());
        if !self.recheck_interval.is_zero() {
            let verified = Verified {
                secret_hash: presented,
                principal: principal.clone(),
                at: checked_at,
            };
            lock(&self.verified).insert(id, verified);
        }
        Ok(principal)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each holder makes one change to a map: a panic cannot leave it half-changed.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_back_into_id_and_secret() {
        let token = IssuedToken {
            id: 42,
            secret: "ab".repeat(SECRET_BYTES),
        };
        let text = token.to_string();
        assert_eq!(
            parse_token(&text),
            Some((42, "ab".repeat(SECRET_BYTES).as_str()))
        );
        assert!(
            !format!("{token:?}").contains("abab"),
            "Debug never shows the secret"
        );
        for bad in [
            "",
            "isk_",
            "isk_42",
            "isk_x_abab",
            "tok_42_abab",
            "isk_42_short",
        ] {
            assert_eq!(parse_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn store_tokens_are_confined_to_their_stores() {
        let store = Principal {
            name: "pos".into(),
            token_id: Some(1),
            role: Role::Store(vec![7]),
        };
        assert!(store.may_write_store(7).is_ok());
        assert!(matches!(
            store.may_write_store(8),
            Err(AuthError::StoreDenied { store_id: 8, .. })
        ));
        assert!(store.may_read_store(8).is_err());
        assert!(store.may_match().is_err());
        let matcher = Principal {
            name: "team".into(),
            token_id: Some(2),
            role: Role::Matcher,
        };
        assert!(matcher.may_read_store(8).is_ok());
        assert!(matcher.may_write_store(8).is_err());
        assert!(matcher.may_match().is_ok());
    }
}
