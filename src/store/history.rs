//! The history of syncs (`sync_runs`): a run as it starts, as it ends, and as it is read
//! back.

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
