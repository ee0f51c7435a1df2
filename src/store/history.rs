//! The history of syncs (`sync_runs`), shared by both backends: each backend expands
//! [`history_queries`] once with its pool type. A run is written when its sync starts, so
//! that a sync cut short by a crash still shows; a committed run is completed inside the
//! merge's own transaction, and every other ending right after it.

/// How a sync ended, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Still uploading or merging (or cut short by a server that stopped).
    Running = 1,
    Committed = 2,
    DryRun = 3,
    /// Refused: bad input, a guard, a limit, a failure; see the status.
    Rejected = 4,
    /// The client went away, or the server stopped, before the commit.
    Aborted = 5,
    /// The client sent nothing for too long.
    TimedOut = 6,
    /// An idempotency key that had committed before: answered from that run.
    Replayed = 7,
}

impl RunOutcome {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// A sync as its run starts.
#[derive(Debug, Clone)]
pub struct NewSyncRun<'a> {
    pub id: &'a str,
    pub store_id: i64,
    pub started_at: i64,
    pub clear: bool,
    pub dry_run: bool,
    /// The wire value of the key field.
    pub key_field: i32,
    pub skip_invalid: bool,
    pub allow_mass_clear: bool,
    pub expected_count: Option<u64>,
    pub idempotency_key: Option<&'a str>,
    pub token_name: &'a str,
}

/// How a run ended, other than by committing (which the merge records itself).
#[derive(Debug, Clone, Default)]
pub struct RunEnding {
    pub finished_at: i64,
    /// `None` leaves the outcome recorded so far; see [`RunOutcome`].
    pub outcome: Option<RunOutcome>,
    pub status_code: i32,
    pub status_message: String,
    pub counts: RunCounts,
    pub request_hash: Option<String>,
    pub replay_of: Option<String>,
}

/// The counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct RunCounts {
    pub received: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub cleared: i64,
    pub linked: i64,
    pub rejected: i64,
}

/// One stored run.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SyncRunRecord {
    pub id: String,
    pub store_id: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub clear: bool,
    pub dry_run: bool,
    pub key_field: i32,
    pub skip_invalid: bool,
    pub allow_mass_clear: bool,
    pub expected_count: Option<i64>,
    pub idempotency_key: Option<String>,
    pub outcome: i32,
    pub status_code: i32,
    pub status_message: String,
    #[sqlx(flatten)]
    pub counts: RunCounts,
    pub token_name: String,
    pub replay_of: Option<String>,
}

/// What the history says of a sync whose server stopped under it. Its client saw the
/// connection break: gRPC's UNAVAILABLE.
pub(super) const SERVER_STOPPED: &str = "the server stopped during the sync; nothing was committed";
pub(super) const UNAVAILABLE_CODE: i32 = 14;

pub(super) const SYNC_RUN_COLUMNS: &str = "id, store_id, started_at, finished_at, clear, dry_run, \
     key_field, skip_invalid, allow_mass_clear, expected_count, idempotency_key, outcome, \
     status_code, status_message, received, created, updated, unchanged, cleared, linked, \
     rejected, token_name, replay_of";

macro_rules! history_queries {
    ($database:ty) => {
        pub(super) async fn insert_sync_run(
            pool: &sqlx::Pool<$database>,
            run: &$crate::store::NewSyncRun<'_>,
        ) -> Result<(), $crate::store::StoreError> {
            sqlx::query(
                "INSERT INTO sync_runs (id, store_id, started_at, clear, dry_run, key_field,
                     skip_invalid, allow_mass_clear, expected_count, idempotency_key, outcome,
                     token_name, heartbeat_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $3)",
            )
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
            .bind($crate::store::RunOutcome::Running.code())
            .bind(run.token_name)
            .execute(pool)
            .await?;
            Ok(())
        }

        /// Records how a run ended, unless it already ended (a committed run stays so).
        pub(super) async fn end_sync_run(
            pool: &sqlx::Pool<$database>,
            id: &str,
            ending: &$crate::store::RunEnding,
        ) -> Result<(), $crate::store::StoreError> {
            let counts = &ending.counts;
            sqlx::query(
                "UPDATE sync_runs SET finished_at = $2, outcome = COALESCE($3, outcome),
                     status_code = $4, status_message = $5, received = $6, created = $7,
                     updated = $8, unchanged = $9, cleared = $10, linked = $11, rejected = $12,
                     request_hash = COALESCE($13, request_hash), replay_of = $14
                 WHERE id = $1 AND outcome = $15",
            )
            .bind(id)
            .bind(ending.finished_at)
            .bind(ending.outcome.map($crate::store::RunOutcome::code))
            .bind(ending.status_code)
            .bind($crate::quote::truncate_bytes(
                ending.status_message.clone(),
                $crate::store::MAX_STORED_MESSAGE_BYTES,
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
            .bind($crate::store::RunOutcome::Running.code())
            .execute(pool)
            .await?;
            Ok(())
        }

        /// Marks a running sync alive at `now`.
        pub(super) async fn touch_sync_run(
            pool: &sqlx::Pool<$database>,
            id: &str,
            now: i64,
        ) -> Result<(), $crate::store::StoreError> {
            sqlx::query("UPDATE sync_runs SET heartbeat_at = $2 WHERE id = $1 AND outcome = $3")
                .bind(id)
                .bind(now)
                .bind($crate::store::RunOutcome::Running.code())
                .execute(pool)
                .await?;
            Ok(())
        }

        /// Records the running syncs not marked alive since `silent_since` as aborted: their
        /// server stopped (their transactions, if any, rolled back with its connections).
        pub(super) async fn abort_silent_sync_runs(
            pool: &sqlx::Pool<$database>,
            silent_since: i64,
            now: i64,
        ) -> Result<u64, $crate::store::StoreError> {
            let aborted = sqlx::query(
                "UPDATE sync_runs SET outcome = $1, finished_at = $2, status_code = $3,
                     status_message = $4
                 WHERE outcome = $5 AND heartbeat_at < $6",
            )
            .bind($crate::store::RunOutcome::Aborted.code())
            .bind(now)
            .bind($crate::store::history::UNAVAILABLE_CODE)
            .bind($crate::store::history::SERVER_STOPPED)
            .bind($crate::store::RunOutcome::Running.code())
            .bind(silent_since)
            .execute(pool)
            .await?;
            Ok(aborted.rows_affected())
        }

        pub(super) async fn sync_run(
            pool: &sqlx::Pool<$database>,
            id: &str,
        ) -> Result<Option<$crate::store::SyncRunRecord>, $crate::store::StoreError> {
            let statement = format!(
                "SELECT {} FROM sync_runs WHERE id = $1",
                $crate::store::history::SYNC_RUN_COLUMNS
            );
            Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement))
                .bind(id)
                .fetch_optional(pool)
                .await?)
        }

        /// Up to `limit` runs of a store, newest first, older than run `before` if given.
        pub(super) async fn sync_runs_page(
            pool: &sqlx::Pool<$database>,
            store_id: i64,
            before: Option<&str>,
            limit: i64,
        ) -> Result<Vec<$crate::store::SyncRunRecord>, $crate::store::StoreError> {
            let statement = format!(
                "SELECT {} FROM sync_runs
                 WHERE store_id = $1 AND ($2 IS NULL OR id < $2)
                 ORDER BY id DESC LIMIT $3",
                $crate::store::history::SYNC_RUN_COLUMNS
            );
            Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement))
                .bind(store_id)
                .bind(before)
                .bind(limit)
                .fetch_all(pool)
                .await?)
        }
    };
}
