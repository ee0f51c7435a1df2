//! The domain of a sync: validated products, the options of one sync, its counts and its
//! errors, and the session that stages products as they arrive and merges them at the end.
//! Nothing here knows about gRPC transport; the generated messages are only read, once, to
//! turn them into validated types.

mod admission;
mod session;
mod violation;

pub(crate) use crate::product::check_text;
pub use crate::product::{
    Barcodes, Category, FieldError, FieldLimits, MAX_EXTERNAL_ID_CHARS, MAX_NAME_CHARS,
    MAX_PRICE_DECIMALS, Price, ProductChange, SyncKey,
};
pub use admission::Admission;
pub use session::{Sender, SyncEngine, SyncSession, reap_silent_runs};
pub use violation::{Violation, Violations};

use std::time::Duration;

use crate::pb;
pub use crate::store::StagedProduct;
use crate::store::{RunCounts, StoreError};

/// Bounds on what syncs may carry and do.
#[derive(Debug, Clone)]
pub struct SyncLimits {
    /// Most products in one sync.
    pub max_products: u64,
    /// Most violations listed in one error (all are counted).
    pub max_violations: usize,
    /// Bounds on each product's fields.
    pub fields: FieldLimits,
    /// The mass-clear guard: the largest fraction of a store's in-stock products that a
    /// clearing sync may set out of stock without `allow_mass_clear`.
    pub max_clear_fraction: f64,
    /// Syncs merging or streaming at once; more wait their turn.
    pub max_concurrent_syncs: usize,
    /// Syncs of one store running or waiting at once; more are refused at once.
    pub max_syncs_per_store: usize,
    /// Syncs sent with one token running or waiting at once; more are refused at once.
    pub max_syncs_per_token: usize,
    /// The longest a sync's stream may stay open, from its first message.
    pub max_sync_duration: Duration,
    /// How long a sync waits for its turn before `RESOURCE_EXHAUSTED`.
    pub queue_timeout: Duration,
    /// A sync whose client sends nothing for this long is rolled back.
    pub idle_timeout: Duration,
    /// How long a committed idempotency key is honoured.
    pub idempotency_retention: Duration,
    /// How often a running sync marks its history run alive. A run silent for
    /// [`SILENT_HEARTBEATS`] of these is recorded as aborted: its server stopped.
    pub heartbeat: Duration,
}

/// Missed heartbeats after which a running sync is taken for aborted.
pub const SILENT_HEARTBEATS: u32 = 3;

impl Default for SyncLimits {
    fn default() -> Self {
        SyncLimits {
            max_products: 5_000_000,
            max_violations: 100,
            fields: FieldLimits::default(),
            max_clear_fraction: 0.5,
            max_concurrent_syncs: 8,
            max_syncs_per_store: 2,
            max_syncs_per_token: 4,
            max_sync_duration: Duration::from_secs(30 * 60),
            queue_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            idempotency_retention: Duration::from_secs(7 * 24 * 60 * 60),
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// The options of one sync, from its header, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOptions {
    pub store_id: i64,
    pub key: SyncKey,
    pub clear: bool,
    pub dry_run: bool,
    pub allow_mass_clear: bool,
    pub skip_invalid: bool,
    pub expected_count: Option<u64>,
    /// A retry with the same key for the same store replays the committed answer.
    pub idempotency_key: Option<String>,
}

/// Longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

impl TryFrom<pb::SyncHeader> for SyncOptions {
    type Error = SyncError;

    fn try_from(header: pb::SyncHeader) -> Result<Self, Self::Error> {
        if header.store_id <= 0 {
            return Err(SyncError::Invalid(Violations::single(Violation::new(
                "header.store_id",
                format!("store_id is {}; it must be > 0", header.store_id),
            ))));
        }
        let key = match pb::KeyField::try_from(header.key) {
            Ok(pb::KeyField::Unspecified | pb::KeyField::ExternalId) => SyncKey::ExternalId,
            Ok(pb::KeyField::Barcode) => SyncKey::Barcode,
            Err(_) => {
                return Err(SyncError::Invalid(Violations::single(Violation::new(
                    "header.key",
                    format!(
                        "key {} is unknown; use KEY_FIELD_EXTERNAL_ID or KEY_FIELD_BARCODE",
                        header.key
                    ),
                ))));
            }
        };
        let idempotency_key = match header.idempotency_key.as_str() {
            "" => None,
            key => {
                check_text("idempotency_key", key, MAX_IDEMPOTENCY_KEY_CHARS).map_err(
                    |problem| {
                        SyncError::Invalid(Violations::single(Violation::new(
                            "header.idempotency_key",
                            problem.description,
                        )))
                    },
                )?;
                Some(key.to_owned())
            }
        };
        Ok(SyncOptions {
            store_id: header.store_id,
            key,
            clear: header.clear,
            dry_run: header.dry_run,
            allow_mass_clear: header.allow_mass_clear,
            skip_invalid: header.skip_invalid,
            expected_count: header.expected_count,
            idempotency_key,
        })
    }
}

/// What a sync did. `created + updated + unchanged + rejected == received`; `linked`
/// products are among the `updated` ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    pub received: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub cleared: u64,
    pub linked: u64,
    /// Products skipped by `skip_invalid`.
    pub rejected: u64,
}

/// Counts as the history stores them (BIGINT columns).
impl From<SyncCounts> for RunCounts {
    fn from(counts: SyncCounts) -> Self {
        let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        RunCounts {
            received: count(counts.received),
            created: count(counts.created),
            updated: count(counts.updated),
            unchanged: count(counts.unchanged),
            cleared: count(counts.cleared),
            linked: count(counts.linked),
            rejected: count(counts.rejected),
        }
    }
}

impl From<RunCounts> for SyncCounts {
    fn from(counts: RunCounts) -> Self {
        let count = |value: i64| u64::try_from(value).unwrap_or_default();
        SyncCounts {
            received: count(counts.received),
            created: count(counts.created),
            updated: count(counts.updated),
            unchanged: count(counts.unchanged),
            cleared: count(counts.cleared),
            linked: count(counts.linked),
            rejected: count(counts.rejected),
        }
    }
}

/// A product skipped by `skip_invalid`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub index: u64,
    pub external_id: String,
    /// The first offending field, relative to the product (`price`).
    pub field: String,
    /// Every problem of the product, in words.
    pub reason: String,
}

/// Most rejections listed in an answer; all are counted.
pub const MAX_LISTED_REJECTIONS: usize = 1_000;

/// The answer to a completed sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSummary {
    pub sync_id: String,
    pub counts: SyncCounts,
    /// The first [`MAX_LISTED_REJECTIONS`] rejections, in stream order.
    pub rejected: Vec<Rejection>,
    /// Nothing was committed.
    pub dry_run: bool,
    /// The answer of an earlier sync with the same idempotency key, repeated.
    pub replayed: bool,
}

/// Why a sync did not complete. Nothing of it was committed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The input breaks the contract; every problem found is listed.
    #[error("{0}")]
    Invalid(Violations),
    /// `expected_count` did not match what arrived.
    #[error("expected {expected} products but received {received}; nothing was committed")]
    CountMismatch { expected: u64, received: u64 },
    /// The idempotency key committed before with other content.
    #[error(
        "idempotency key {} was used by sync {run_id} of this store with other content; \
         nothing was committed. Use a new key for new content",
        crate::quote::quoted(key)
    )]
    IdempotencyKeyReused { key: String, run_id: String },
    /// The client's stream failed in transport (it was cancelled, the connection broke, or
    /// a message could not be decoded).
    #[error("the sync's stream failed: {detail}; nothing was committed")]
    StreamFailed { cancelled: bool, detail: String },
    /// The server that ran the sync stopped before it ended (seen by another server, or by
    /// this one after a restart, when its heartbeats stopped).
    #[error("the server stopped during the sync; nothing was committed")]
    ServerStopped,
    /// The sync carries more products than the server accepts.
    #[error("a sync may carry at most {limit} products; nothing was committed")]
    TooManyProducts { limit: u64 },
    /// The clear would set too much of the store out of stock.
    #[error(
        "this clearing sync would set {would_clear} products out of stock, more than {percent}% \
         of the store's {in_stock} in-stock products; nothing was committed. If that is \
         intended, set header.allow_mass_clear"
    )]
    MassClear {
        would_clear: u64,
        in_stock: u64,
        percent: u32,
    },
    /// The store already runs as many syncs as it may.
    #[error(
        "store {store_id} already has {limit} syncs running, the most one store may run at \
         once; retry when one of them has ended"
    )]
    StoreBusy { store_id: i64, limit: usize },
    /// The token already sends as many syncs as it may.
    #[error(
        "this token already has {limit} syncs running, the most one token may run at once; \
         retry when one of them has ended"
    )]
    TokenBusy { limit: usize },
    /// No turn for the sync came up in time: too many syncs are running.
    #[error(
        "the server is running its limit of {limit} syncs and none finished within {waited:?}; \
         retry later"
    )]
    Busy { limit: usize, waited: Duration },
    /// The client sent nothing for too long.
    #[error("the client sent nothing for {0:?}; the sync was rolled back")]
    Idle(Duration),
    /// The stream stayed open longer than a sync may take.
    #[error(
        "the sync's stream was still open after {0:?}, the longest a sync may take; it was \
         rolled back. Send large inventories faster, or split them across stores"
    )]
    TooLong(Duration),
    /// A message of the stream was larger than the server accepts.
    #[error(
        "a message of the stream was larger than the server's limit of {limit} bytes; the sync \
         was rolled back. Send the products in smaller messages"
    )]
    MessageTooLarge { limit: usize },
    /// The token that sent the sync was revoked before it could commit.
    #[error("the token that sent this sync was revoked; nothing was committed")]
    Revoked,
    /// The client went away before the sync completed.
    #[error("the sync was abandoned by the client")]
    Abandoned,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sync's worker task failed unexpectedly.
    #[error("the sync's worker failed: {0}")]
    Worker(String),
}
