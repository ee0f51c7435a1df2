//! PostgreSQL: the backend for many replicas sharing one database. A sync streams its
//! products into temporary tables of its own connection with `COPY` and merges them in one
//! transaction that holds the store's row lock.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool, Postgres};

use super::sql::{self, POSTGRES};
use super::unchanged::{self, StoredFields, StoredMatch};
use super::{
    BatchConflict, MergeOutcome, MergeRequest, PoolSettings, StagingTarget, StoreError,
    staged_barcodes,
};
use super::StagedProduct;

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long staging waits for a connection to look up a batch's stored products.
const LOOKUP_CONNECTION_WAIT: Duration = Duration::from_millis(500);
/// Batches looked up ahead of the one going into the `COPY`, each on a connection of its
/// own while its lookup runs.
const LOOKUPS_AHEAD: usize = 2;
/// The staging connection and the lookups ahead.
pub(super) const CONNECTIONS_PER_SYNC: u32 = 1 + LOOKUPS_AHEAD as u32;

pub(super) async fn connect(url: &str, settings: PoolSettings) -> Result<PgPool, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        // A ping before every use would double the round trips of a read; a connection that
        // broke fails its next statement instead, and is dropped.
        .test_before_acquire(false)
        // A database that cannot be reached answers UNAVAILABLE soon, not after 30 s.
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(url)
        .await?;
    if settings.run_migrations {
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    }
    Ok(pool)
}

// A token stored with an id of its own leaves the id sequence behind; it catches up so that
// the next token created does not draw that id again.
token_queries!(
    sqlx::Postgres,
    Some(
        "SELECT setval(pg_get_serial_sequence('api_tokens', 'id'), (SELECT MAX(id) FROM api_tokens))"
    )
);
history_queries!(sqlx::Postgres);
live_queries!(sqlx::Postgres, POSTGRES);

/// The staging area of one sync on PostgreSQL.
pub struct Staging {
    connection: PoolConnection<Postgres>,
    /// Lookups of stored products run on other connections while the `COPY` is open.
    pool: PgPool,
    target: StagingTarget,
}

impl Staging {
    fn new(connection: PoolConnection<Postgres>, pool: &PgPool, target: StagingTarget) -> Self {
        Staging {
            connection,
            pool: pool.clone(),
            target,
        }
    }

    /// The stored products of a batch, matched to its products, on a connection borrowed
    /// for the lookup; `None` when none came free soon (every connection busy).
    async fn look_up(
        pool: &PgPool,
        store_id: i64,
        products: &[StagedProduct],
    ) -> Result<Option<Vec<Option<StoredMatch>>>, StoreError> {
        let Ok(connection) = tokio::time::timeout(LOOKUP_CONNECTION_WAIT, pool.acquire()).await
        else {
            return Ok(None);
        };
        let mut connection = connection?;
        let stored: Vec<StoredFields> = sqlx::query_as(POSTGRES.select_stored_fields.as_str())
            .bind(store_id)
            .bind(unchanged::external_ids(products))
            .fetch_all(&mut *connection)
            .await?;
        Ok(Some(unchanged::match_batch(products, stored)))
    }

    /// Streams every batch into `staged_products` through one `COPY`, open for the whole
    /// upload: one round trip per batch and none to wait for. (Each short `COPY` would end
    /// with a small write that waits out delayed acknowledgements.) Barcodes travel in the
    /// product rows and are split out by [`Staging::prepare_checks`].
    ///
    /// The next batches are looked up on other connections while a batch's rows go out,
    /// so the upload does not stop for each lookup's round trip. Should lookups find no
    /// connection, staging goes on without them: they only save work, and the merge
    /// resolves what they did not.
    pub(super) async fn stage_all(
        &mut self,
        batches: impl Stream<Item = Vec<StagedProduct>> + Unpin,
    ) -> Result<(), StoreError> {
        let lookups_on = Arc::new(AtomicBool::new(self.target.look_up));
        let pool = self.pool.clone();
        let store_id = self.target.store_id;
        let looked_up = batches
            .filter(|batch| std::future::ready(!batch.is_empty()))
            .map(|batch| {
                let pool = pool.clone();
                let lookups_on = Arc::clone(&lookups_on);
                async move {
                    let matches = if lookups_on.load(Ordering::Relaxed) {
                        Self::look_up(&pool, store_id, &batch).await?
                    } else {
                        None
                    };
                    if matches.is_none() {
                        lookups_on.store(false, Ordering::Relaxed);
                    }
                    Ok::<_, StoreError>((batch, matches))
                }
            })
            .buffered(LOOKUPS_AHEAD);
        let mut looked_up = std::pin::pin!(looked_up);
        // No `COPY` for a sync without products.
        let Some(mut next) = looked_up.next().await else {
            return Ok(());
        };
        let statement = format!("COPY {} FROM STDIN", sql::STAGED_PRODUCT_COLUMNS);
        let mut copy = self.connection.copy_in_raw(&statement).await?;
        loop {
            let (batch, matches) = next?;
            let matches = matches.unwrap_or_else(|| {
                if self.target.look_up {
                    tracing::warn!("no database connection free for lookups; staging without them");
                    self.target.look_up = false;
                    self.target.resolved_at = None;
                }
                vec![None; batch.len()]
            });
            copy.send(copy_rows(&batch, &matches).buffer.into_bytes())
                .await?;
            match looked_up.next().await {
                Some(looked_up_batch) => next = looked_up_batch,
                None => break,
            }
        }
        copy.finish().await?;
        Ok(())
    }

    /// Gives the planner statistics of the staged products: temporary tables get none on
    /// their own, and without them it guesses a handful of rows and picks nested loops and
    /// sorts made for those over a million.
    pub(super) async fn prepare_merge(&mut self) -> Result<(), StoreError> {
        sqlx::raw_sql("ANALYZE staged_products")
            .execute(&mut *self.connection)
            .await?;
        Ok(())
    }

    /// Splits the staged barcodes into their own rows, with statistics, for the checks of
    /// the batch and the merge of stored products.
    pub(super) async fn prepare_checks(&mut self) -> Result<(), StoreError> {
        sqlx::raw_sql(
            "INSERT INTO staged_barcodes (idx, barcode)
                 SELECT idx, unnest(string_to_array(barcodes, ' ')) FROM staged_products
                 WHERE barcodes IS NOT NULL AND NOT unchanged;
             ANALYZE staged_barcodes;",
        )
        .execute(&mut *self.connection)
        .await?;
        Ok(())
    }

    pub(super) async fn batch_conflicts(
        &mut self,
        limit: usize,
    ) -> Result<Vec<BatchConflict>, StoreError> {
        self.find_batch_conflicts(limit).await
    }

    pub(super) async fn merge(
        &mut self,
        request: &MergeRequest,
        abandoned: impl Fn() -> bool,
    ) -> Result<MergeOutcome, StoreError> {
        let mut tx = self.connection.begin().await?;
        sqlx::query(sql::ENSURE_STORE)
            .bind(request.store_id)
            .bind(request.now)
            .execute(&mut *tx)
            .await?;
        let generation: i64 = sqlx::query_scalar(sql::LOCK_STORE)
            .bind(request.store_id)
            .fetch_one(&mut *tx)
            .await?;
        merge_into_locked_store!(tx, POSTGRES, request, abandoned, generation, self.target)
    }

    staging_common!(sqlx::Postgres, POSTGRES);
}

/// The staged rows of a batch in `COPY` text format.
fn copy_rows(products: &[StagedProduct], matches: &[Option<StoredMatch>]) -> CopyText {
    let mut rows = CopyText::default();
    for (product, stored) in products.iter().zip(matches) {
        let change = &product.change;
        rows.int(Some(product.index as i64));
        rows.text(change.external_id.as_deref());
        rows.text(staged_barcodes(change).as_deref());
        rows.int(change.in_stock);
        rows.text(change.price.as_ref().map(|price| price.as_str()));
        rows.text(change.name.as_deref());
        rows.text(change.unit_size.as_deref());
        rows.float(change.abv);
        rows.float(change.proof);
        rows.int(change.category.map(|category| i64::from(category.code())));
        rows.boolean(product.skipped);
        rows.int(stored.map(|stored| stored.product_id));
        rows.boolean(stored.is_some_and(|stored| stored.unchanged));
        rows.end_row();
    }
    rows
}

/// Rows in PostgreSQL's `COPY … FROM STDIN` text format: tab-separated fields, `\N` for
/// NULL, backslash escapes for the characters that would break the framing.
#[derive(Default)]
struct CopyText {
    buffer: String,
    /// Whether the current row has a field yet, i.e. the next field needs a separator.
    row_has_fields: bool,
}

impl CopyText {
    fn separate(&mut self) {
        if self.row_has_fields {
            self.buffer.push('\t');
        }
        self.row_has_fields = true;
    }

    fn text(&mut self, value: Option<&str>) {
        self.separate();
        let Some(value) = value else {
            self.buffer.push_str("\\N");
            return;
        };
        for character in value.chars() {
            match character {
                '\\' => self.buffer.push_str("\\\\"),
                '\t' => self.buffer.push_str("\\t"),
                '\n' => self.buffer.push_str("\\n"),
                '\r' => self.buffer.push_str("\\r"),
                other => self.buffer.push(other),
            }
        }
    }

    fn int(&mut self, value: Option<i64>) {
        self.separate();
        match value {
            Some(value) => write!(self.buffer, "{value}").expect("writing to a String cannot fail"),
            None => self.buffer.push_str("\\N"),
        }
    }

    fn float(&mut self, value: Option<f64>) {
        self.separate();
        match value {
            // Display of a finite f64 round-trips exactly and never uses an exponent.
            Some(value) => write!(self.buffer, "{value}").expect("writing to a String cannot fail"),
            None => self.buffer.push_str("\\N"),
        }
    }

    fn boolean(&mut self, value: bool) {
        self.separate();
        self.buffer.push(if value { 't' } else { 'f' });
    }

    fn end_row(&mut self) {
        self.buffer.push('\n');
        self.row_has_fields = false;
    }
}

#[cfg(test)]
mod tests {
    use super::CopyText;

    #[test]
    fn copy_text_escapes_framing_characters_and_marks_nulls() {
        let mut rows = CopyText::default();
        rows.int(Some(7));
        rows.text(Some("a\tb\\c\nd"));
        rows.text(None);
        rows.float(Some(12.5));
        rows.end_row();
        rows.text(Some(""));
        rows.int(None);
        rows.end_row();
        assert_eq!(rows.buffer, "7\ta\\tb\\\\c\\nd\t\\N\t12.5\n\t\\N\n");
    }
}
