//! The history of syncs on PostgreSQL.

use async_trait::async_trait;

use super::{PostgresBackend, sql};
use crate::quote::truncate_bytes;
use crate::store::retry::retrying;
use crate::store::{
    During, MAX_STORED_MESSAGE_BYTES, NewSyncRun, RunEnding, RunOutcome, StoreError, SyncHistory,
    SyncRunRecord,
};

#[async_trait]
impl SyncHistory for PostgresBackend {
    async fn insert_sync_run(&self, run: &NewSyncRun<'_>) -> Result<(), StoreError> {
        retrying(|| {
            sqlx::query(sql::INSERT_SYNC_RUN)
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
                .bind(RunOutcome::Running.code())
                .bind(run.token_name)
                .execute(&self.pool)
        })
        .await
        .during("recording a sync's start")?;
        Ok(())
    }

    async fn end_sync_run(
        &self,
        store_id: i64,
        id: &str,
        ending: &RunEnding,
    ) -> Result<(), StoreError> {
        let counts = &ending.counts;
        let message = truncate_bytes(ending.status_message.clone(), MAX_STORED_MESSAGE_BYTES);
        retrying(|| {
            sqlx::query(sql::END_SYNC_RUN)
                .bind(id)
                .bind(ending.finished_at)
                .bind(ending.outcome.map(RunOutcome::code))
                .bind(ending.status_code)
                .bind(message.as_str())
                .bind(counts.received)
                .bind(counts.created)
                .bind(counts.updated)
                .bind(counts.unchanged)
                .bind(counts.cleared)
                .bind(counts.linked)
                .bind(counts.rejected)
                .bind(ending.request_hash.as_deref())
                .bind(ending.replay_of.as_deref())
                .bind(RunOutcome::Running.code())
                .bind(store_id)
                .execute(&self.pool)
        })
        .await
        .during("recording a sync's end")?;
        Ok(())
    }

    async fn touch_sync_run(&self, store_id: i64, id: &str, now: i64) -> Result<(), StoreError> {
        retrying(|| {
            sqlx::query(sql::TOUCH_SYNC_RUN)
                .bind(id)
                .bind(now)
                .bind(RunOutcome::Running.code())
                .bind(store_id)
                .execute(&self.pool)
        })
        .await
        .during("marking a sync alive")?;
        Ok(())
    }

    async fn end_silent_sync_runs(
        &self,
        silent_since: i64,
        ending: &RunEnding,
    ) -> Result<u64, StoreError> {
        let message = truncate_bytes(ending.status_message.clone(), MAX_STORED_MESSAGE_BYTES);
        let ended = retrying(|| {
            sqlx::query(sql::END_SILENT_SYNC_RUNS)
                .bind(ending.outcome.map(RunOutcome::code))
                .bind(ending.finished_at)
                .bind(ending.status_code)
                .bind(message.as_str())
                .bind(RunOutcome::Running.code())
                .bind(silent_since)
                .execute(&self.pool)
        })
        .await
        .during("ending silent syncs")?;
        Ok(ended.rows_affected())
    }

    async fn sync_run(&self, store_id: i64, id: &str) -> Result<Option<SyncRunRecord>, StoreError> {
        sqlx::query_as(sql::SELECT_SYNC_RUN)
            .bind(id)
            .bind(store_id)
            .fetch_optional(&self.pool)
            .await
            .during("reading a sync run")
    }

    async fn sync_runs_page(
        &self,
        store_id: i64,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SyncRunRecord>, StoreError> {
        sqlx::query_as(sql::SELECT_SYNC_RUNS_PAGE)
            .bind(store_id)
            .bind(before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .during("listing sync runs")
    }
}
