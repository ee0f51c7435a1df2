//! Retries of what a database aborted to keep concurrent transactions serializable.
//!
//! Under repeatable read or serializable isolation (CockroachDB's default, YugabyteDB's
//! snapshot, or a PostgreSQL configured so), a transaction that finds a row changed since it
//! began fails with SQLSTATE 40001 instead of waiting and reading the new row, and a deadlock
//! is broken with 40P01. Either leaves nothing behind, and running the transaction again
//! from its start is what the database asks for. Each retry waits a jittered, growing pause,
//! so that two transactions that collided do not collide again; after `MAX_ATTEMPTS` the
//! error stands, and the caller is told to retry (`ABORTED`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Runs of one transaction, the first included.
pub(super) const MAX_ATTEMPTS: u32 = 8;
/// The pause before the first retry; it doubles with each one, up to `LONGEST_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_millis(320);

/// Retries made in this process, for the metrics.
static RETRIES: AtomicU64 = AtomicU64::new(0);

/// How many transactions or statements this process ran again after a serialization
/// failure.
pub fn serialization_retries() -> u64 {
    RETRIES.load(Ordering::Relaxed)
}

/// Whether the database aborted the transaction to keep it serializable (40001) or to break
/// a deadlock (40P01): running it again may succeed.
pub(super) fn is_serialization_failure(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => {
            matches!(error.code().as_deref(), Some("40001") | Some("40P01"))
        }
        _ => false,
    }
}

/// Waits before retry number `retry` (from 1), and counts it.
pub(super) async fn pause_before(retry: u32) {
    RETRIES.fetch_add(1, Ordering::Relaxed);
    let doubled = FIRST_PAUSE.saturating_mul(1 << retry.saturating_sub(1).min(16));
    let pause = doubled.min(LONGEST_PAUSE);
    // Between half and one and a half times the pause.
    let jitter = 0.5 + rand::random::<f64>();
    tokio::time::sleep(pause.mul_f64(jitter)).await;
}

/// Runs `statement` (one statement, or a transaction that begins and ends inside it) until
/// it succeeds, fails otherwise than by a serialization failure, or has run `MAX_ATTEMPTS`
/// times.
pub(super) async fn retrying<T, F, Fut>(mut statement: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 1;
    loop {
        match statement().await {
            Err(error) if is_serialization_failure(&error) && attempt < MAX_ATTEMPTS => {
                tracing::debug!(%error, attempt, "serialization failure; running it again");
                pause_before(attempt).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A database's refusal with SQLSTATE `code`.
    #[derive(Debug)]
    struct Refusal(&'static str);

    impl std::fmt::Display for Refusal {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "refused with {}", self.0)
        }
    }

    impl std::error::Error for Refusal {}

    impl sqlx::error::DatabaseError for Refusal {
        fn message(&self) -> &str {
            "refused"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    /// Runs a statement that fails with `codes` in turn, then succeeds; how it ended and
    /// how many times it ran.
    async fn run_failing(codes: &[&'static str]) -> (Result<usize, sqlx::Error>, usize) {
        let mut runs = 0;
        let result = retrying(|| {
            runs += 1;
            let failure = codes.get(runs - 1).copied();
            let run = runs;
            async move {
                match failure {
                    Some(code) => Err(sqlx::Error::Database(Box::new(Refusal(code)))),
                    None => Ok(run),
                }
            }
        })
        .await;
        (result, runs)
    }

    #[tokio::test(start_paused = true)]
    async fn serialization_failures_and_deadlocks_are_run_again() {
        let (result, runs) = run_failing(&["40001", "40P01", "40001"]).await;
        assert_eq!((result.unwrap(), runs), (4, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_end_it_at_once() {
        let (result, runs) = run_failing(&["23505"]).await;
        assert!(result.is_err());
        assert_eq!(runs, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn it_gives_up_after_the_last_attempt() {
        let (result, runs) = run_failing(&["40001"; 20]).await;
        assert!(result.is_err_and(|error| is_serialization_failure(&error)));
        assert_eq!(runs, MAX_ATTEMPTS as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_grows_and_stays_bounded() {
        let before = tokio::time::Instant::now();
        pause_before(1).await;
        // Timers fire on whole milliseconds.
        let tick = Duration::from_millis(1);
        let first = before.elapsed();
        assert!(
            first >= FIRST_PAUSE / 2 && first <= FIRST_PAUSE * 3 / 2 + tick,
            "{first:?}"
        );
        let before = tokio::time::Instant::now();
        pause_before(30).await;
        let last = before.elapsed();
        assert!(
            last >= LONGEST_PAUSE / 2 && last <= LONGEST_PAUSE * 3 / 2 + tick,
            "{last:?}"
        );
    }
}
