//! Point reads of products, gathered: lookups that arrive while a query is in flight are
//! answered together by the next one.
//!
//! With one query per lookup, 64 callers of `GetProduct` kept the service at a quarter of
//! what gRPC alone answers: PostgreSQL's backends and the loopback round trips took most of
//! the machine. Here a few reader tasks take lookups off a queue; a reader takes every lookup
//! waiting (up to [`MOST_KEYS_PER_QUERY`]) and asks for them in one statement per store and
//! kind of key (see `sql::select_products_by_external_ids`). Nothing waits to fill a batch:
//! a lone caller is sent at once, and batches grow only while callers already queue behind
//! busy readers. Each statement names one store, so it stays on one shard or partition.
//!
//! A lookup is queued only after its request arrived, and its query starts later still, so
//! it sees every commit that finished before the call: the same answer a query of its own
//! would give. If a gathered query fails, each of its callers runs its own query, so each
//! gets its own error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{FromRow, PgConnection, PgPool, Postgres, Row};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use super::sql;
use crate::store::{During, ProductKey, ProductRecord, StoreError};

/// Most keys one query asks for.
const MOST_KEYS_PER_QUERY: usize = sql::GATHERED_READ_SIZES[sql::GATHERED_READ_SIZES.len() - 1];
/// Lookups that may wait for a reader before callers wait to queue.
const QUEUE_LENGTH: usize = 4_096;
/// How long a reader without lookups keeps its connection.
const IDLE_READER_KEEPS_CONNECTION: Duration = Duration::from_secs(1);

/// The answer a reader gives one lookup: the product or none, or word that the gathered
/// query failed and the caller should ask alone.
type Answer = Result<Option<ProductRecord>, GatheredQueryFailed>;

struct GatheredQueryFailed;

/// The callers waiting for each key of one query.
type CallersByKey = HashMap<String, Vec<oneshot::Sender<Answer>>>;

struct Lookup {
    store_id: i64,
    key: ProductKey,
    answer: oneshot::Sender<Answer>,
}

/// The queue of point reads and the readers that serve it.
#[derive(Debug)]
pub(super) struct PointReads {
    queue: mpsc::Sender<Lookup>,
    closing: watch::Sender<bool>,
}

impl PointReads {
    /// Starts `readers` reader tasks on `pool`; they end when this is dropped or closed.
    pub(super) fn start(pool: PgPool, readers: usize) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE_LENGTH);
        let (closing, _) = watch::channel(false);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..readers.max(1) {
            tokio::spawn(serve_lookups(
                pool.clone(),
                Arc::clone(&waiting),
                closing.subscribe(),
            ));
        }
        PointReads { queue, closing }
    }

    /// Ends the readers, which give their connections back: the pool closes only once
    /// every connection is back. Later lookups read alone.
    pub(super) fn close(&self) {
        self.closing.send_replace(true);
    }

    /// The product of `store_id` with `key`, read together with any other lookups waiting.
    pub(super) async fn product(
        &self,
        pool: &PgPool,
        store_id: i64,
        key: &ProductKey,
    ) -> Result<Option<ProductRecord>, StoreError> {
        let (answer, answered) = oneshot::channel();
        let lookup = Lookup {
            store_id,
            key: key.clone(),
            answer,
        };
        if self.queue.send(lookup).await.is_ok()
            && let Ok(Ok(product)) = answered.await
        {
            return Ok(product);
        }
        read_alone(pool, store_id, key).await
    }
}

/// What a reader does next.
enum Next {
    /// Answer the lookups taken.
    Answer,
    /// Give its connection back: no lookup came for [`IDLE_READER_KEEPS_CONNECTION`].
    GiveConnectionBack,
    /// End: the reads are closing, or nobody can queue lookups any more.
    End,
}

/// One reader: waits for a lookup, takes whatever else is waiting, and answers them all.
/// It keeps its connection from one batch to the next (giving one back to the pool costs a
/// write of its own to the socket), and gives it back once idle.
async fn serve_lookups(
    pool: PgPool,
    waiting: Arc<Mutex<mpsc::Receiver<Lookup>>>,
    mut closing: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(MOST_KEYS_PER_QUERY);
    let mut connection: Option<PoolConnection<Postgres>> = None;
    loop {
        let next = {
            let mut waiting = waiting.lock().await;
            let holding = connection.is_some();
            tokio::select! {
                taken = waiting.recv_many(&mut batch, MOST_KEYS_PER_QUERY) => {
                    if taken == 0 { Next::End } else { Next::Answer }
                }
                () = tokio::time::sleep(IDLE_READER_KEEPS_CONNECTION), if holding => {
                    Next::GiveConnectionBack
                }
                _ = closing.wait_for(|closing| *closing) => Next::End,
            }
        };
        match next {
            Next::Answer => {}
            Next::GiveConnectionBack => {
                connection = None;
                continue;
            }
            // Lookups still queued when the last reader ends are dropped with the queue,
            // and their callers read alone.
            Next::End => return,
        }
        if connection.is_none() {
            connection = pool.acquire().await.ok();
        }
        let Some(reader) = connection.as_mut() else {
            for lookup in batch.drain(..) {
                let _ = lookup.answer.send(Err(GatheredQueryFailed));
            }
            continue;
        };
        if !answer_batch(reader, &mut batch).await {
            // The connection may be what failed; the next batch takes another.
            connection = None;
        }
    }
}

/// Answers every lookup of `batch` (and empties it), one query per store and kind of key.
async fn answer_batch(connection: &mut PgConnection, batch: &mut Vec<Lookup>) -> bool {
    let mut all_answered = true;
    // Lookups of one store and kind, by key; callers asking for the same key share a row.
    let mut groups: HashMap<(i64, bool), CallersByKey> = HashMap::new();
    for lookup in batch.drain(..) {
        let (by_barcode, value) = match lookup.key {
            ProductKey::ExternalId(id) => (false, id),
            ProductKey::Barcode(code) => (true, code),
        };
        groups
            .entry((lookup.store_id, by_barcode))
            .or_default()
            .entry(value)
            .or_default()
            .push(lookup.answer);
    }
    for ((store_id, by_barcode), mut callers) in groups {
        let keys: Vec<&str> = callers.keys().map(String::as_str).collect();
        match read_together(connection, store_id, by_barcode, &keys).await {
            Ok(found) => {
                for (key, product) in found {
                    for caller in callers.remove(&key).unwrap_or_default() {
                        let _ = caller.send(Ok(Some(product.clone())));
                    }
                }
                for caller in callers.into_values().flatten() {
                    let _ = caller.send(Ok(None));
                }
            }
            Err(error) => {
                tracing::warn!(store_id, %error, "a gathered product read failed; each caller reads alone");
                all_answered = false;
                for caller in callers.into_values().flatten() {
                    let _ = caller.send(Err(GatheredQueryFailed));
                }
            }
        }
    }
    all_answered
}

/// The products of `store_id` with any of `keys` (external ids, or barcodes when
/// `by_barcode`), each with the key it was found by.
async fn read_together(
    connection: &mut PgConnection,
    store_id: i64,
    by_barcode: bool,
    keys: &[&str],
) -> Result<Vec<(String, ProductRecord)>, StoreError> {
    let statement = if by_barcode {
        sql::select_products_by_barcodes(keys.len())
    } else {
        sql::select_products_by_external_ids(keys.len())
    };
    let mut query = sqlx::query(statement).bind(store_id);
    for position in 0..sql::gathered_read_size(keys.len()) {
        // No product has an empty key: a padding probe costs one index descent, no row.
        query = query.bind(keys.get(position).copied().unwrap_or(""));
    }
    let rows = query
        .fetch_all(connection)
        .await
        .during("reading products")?;
    rows.iter()
        .map(|row| Ok((row.try_get("found_by")?, ProductRecord::from_row(row)?)))
        .collect::<Result<_, sqlx::Error>>()
        .during("reading products")
}

/// The product of `store_id` with `key`, by a query of its own.
async fn read_alone(
    pool: &PgPool,
    store_id: i64,
    key: &ProductKey,
) -> Result<Option<ProductRecord>, StoreError> {
    let (by_barcode, value) = match key {
        ProductKey::ExternalId(external_id) => (false, external_id),
        ProductKey::Barcode(barcode) => (true, barcode),
    };
    let mut connection = pool.acquire().await.during("reading a product")?;
    let found = read_together(&mut connection, store_id, by_barcode, &[value]).await?;
    Ok(found.into_iter().next().map(|(_, product)| product))
}
