//! Every SQL statement of the PostgreSQL backend.
//! (Over 500 lines for a reason: every statement of the backend stands in this one file, in
//! the order a sync runs them, so that one file shows all this backend asks of its database.)
//!
//! A sync streams its products with `COPY` into two temporary tables of its own connection
//! (`staged_products`, `staged_barcodes`) and merges them into the live tables in one
//! transaction that holds the store's row lock:
//! 1. resolve: each staged product learns the id of the live product it is (by external id or
//!    by barcodes), or stays unresolved if it is new. An external-id sync of a store that
//!    has products looks up each batch's stored products while it stages, and marks the
//!    products sent exactly as stored `unchanged`; those take no part in the checks and
//!    writes below;
//! 2. check: conflicts with stored products refuse the whole sync (or, with skip_invalid,
//!    skip the products that conflict);
//! 3. write: replaced barcodes, changed products, the clear, then new products with ids
//!    drawn in stream order and their barcodes; each statement's row count is a count of
//!    the answer.
//!
//! Merge statements bind `$1` = store id; those that write a timestamp bind `$2` = the
//! sync's time; those that report conflicts bind their last parameter = how many.

use std::fmt::Write as _;
use std::sync::LazyLock;

// ---- live products ----

/// Whether the database answers.
pub const PING: &str = "SELECT 1";

/// A statement on one product by its id, in two forms: with the product's store named
/// (the store's shard or partition alone answers) or without (every one is asked). A
/// caller that knows the store binds it as the form's last parameter.
pub struct OnProduct {
    anywhere: String,
    in_store: String,
}

impl OnProduct {
    /// `template` says `{in_store}` where the store's condition goes, before the id's
    /// (`store_condition`, e.g. `p.store_id = $2 AND `).
    fn new(template: &str, store_condition: &str) -> Self {
        OnProduct {
            anywhere: template.replace("{in_store}", ""),
            in_store: template.replace("{in_store}", store_condition),
        }
    }

    /// The form for a product whose store is known or not.
    pub fn for_store(&self, store_id: Option<i64>) -> &str {
        match store_id {
            Some(_) => &self.in_store,
            None => &self.anywhere,
        }
    }
}

/// `$1` = the product's id; `$2` = its store.
pub static SELECT_PRODUCT_BY_ID: LazyLock<OnProduct> = LazyLock::new(|| {
    OnProduct::new(
        "SELECT p.id, p.store_id, p.external_id, p.barcodes, p.in_stock, p.price::text AS price,
                p.name, p.unit_size, p.abv, p.proof, p.category, p.match_status, p.claimed_by,
                p.claimed_by_token, p.catalog_item_id, p.catalog_kind, p.catalog_name,
                p.catalog_vintage, p.catalog_producer, p.created_at, p.updated_at
         FROM products p WHERE {in_store}p.id = $1",
        "p.store_id = $2 AND ",
    )
});

/// How many keys a gathered product read binds: a batch is padded up to the next of these
/// with the empty key, which no product has (so padding finds no row to send). An array
/// of unknown length (`= ANY($2)`) makes PostgreSQL plan every execution anew, for more
/// than the read itself costs; a list of a fixed number of parameters gets a generic plan
/// after a few executions, as a single-key read does.
pub const GATHERED_READ_SIZES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// `$1` = store, `$2`… = as many external ids as the statement's size; `found_by` = the
/// external id.
pub fn select_products_by_external_ids(keys: usize) -> &'static str {
    static STATEMENTS: LazyLock<Vec<String>> = LazyLock::new(|| {
        gathered_reads("FROM products p WHERE p.store_id = $1 AND p.external_id = k.key")
    });
    gathered_read(&STATEMENTS, keys)
}

/// `$1` = store, `$2`… = as many barcodes as the statement's size; `found_by` = the barcode
/// a product was found by.
pub fn select_products_by_barcodes(keys: usize) -> &'static str {
    static STATEMENTS: LazyLock<Vec<String>> = LazyLock::new(|| {
        gathered_reads(
            "FROM product_barcodes b JOIN products p ON p.store_id = b.store_id AND p.id = b.product_id
             WHERE b.store_id = $1 AND b.barcode = k.key",
        )
    });
    gathered_read(&STATEMENTS, keys)
}

/// The smallest size of [`GATHERED_READ_SIZES`] that holds `keys` keys.
pub fn gathered_read_size(keys: usize) -> usize {
    GATHERED_READ_SIZES
        .into_iter()
        .find(|&size| size >= keys)
        .expect("a gathered read takes at most the largest size")
}

/// The statement of [`gathered_read_size`]`(keys)`.
fn gathered_read(statements: &'static [String], keys: usize) -> &'static str {
    let size = gathered_read_size(keys);
    let position = GATHERED_READ_SIZES.iter().position(|&each| each == size);
    &statements[position.expect("a size of the list")]
}

/// One statement per size of [`GATHERED_READ_SIZES`]: each key is looked up by a lateral
/// subquery of its own, `lookup` (which names the key `k.key`), so the plan is one unique
/// index probe per key whatever the table's statistics say (a freshly loaded table has
/// none, and an `IN` list or a join over it was planned as a scan of the whole store).
/// `LIMIT 1` (the key is unique) keeps the planner from pulling the subquery up into a
/// join.
fn gathered_reads(lookup: &str) -> Vec<String> {
    GATHERED_READ_SIZES
        .iter()
        .map(|&size| {
            let mut keys = String::new();
            for parameter in 2..size + 2 {
                let separator = if parameter == 2 { "" } else { ", " };
                write!(keys, "{separator}(${parameter}::text)").expect("writing to a String");
            }
            format!(
                "SELECT k.key AS found_by, p.*
                 FROM (VALUES {keys}) AS k(key)
                 CROSS JOIN LATERAL (
                     SELECT p.id, p.store_id, p.external_id, p.barcodes, p.in_stock,
                            p.price::text AS price, p.name, p.unit_size, p.abv, p.proof,
                            p.category, p.match_status, p.claimed_by, p.claimed_by_token,
                            p.catalog_item_id, p.catalog_kind, p.catalog_name,
                            p.catalog_vintage, p.catalog_producer, p.created_at, p.updated_at
                     {lookup}
                     LIMIT 1) AS p"
            )
        })
        .collect()
}

/// `$1` = store, `$2` = last id of the previous page, `$3` = match status (0 = any),
/// `$4` = in stock only, `$5` = updated since (NULL = any time), `$6` = page size.
pub const SELECT_PRODUCTS_PAGE: &str = "
    SELECT p.id, p.store_id, p.external_id, p.barcodes, p.in_stock, p.price::text AS price, p.name,
           p.unit_size, p.abv, p.proof, p.category, p.match_status, p.claimed_by,
           p.claimed_by_token, p.catalog_item_id, p.catalog_kind, p.catalog_name,
           p.catalog_vintage, p.catalog_producer, p.created_at, p.updated_at
    FROM products p
    WHERE p.store_id = $1 AND p.id > $2
      AND ($3 = 0 OR p.match_status = $3)
      AND ($4 = FALSE OR p.in_stock > 0)
      AND ($5::bigint IS NULL OR p.updated_at >= $5)
    ORDER BY p.id LIMIT $6";

// ---- the matching queue ----

/// `$1` = last id of the previous page, `$2` = the highest status wanted (1 = pending only,
/// 2 = in progress too), `$3` = category (0 = any), `$4` = page size, then (in the form for
/// one store) `$5` = the store. Oldest first: ids grow with creation.
pub static SELECT_PENDING_PAGE: LazyLock<OnProduct> = LazyLock::new(|| {
    OnProduct::new(
        "SELECT p.id, p.store_id, p.external_id, p.barcodes, p.in_stock, p.price::text AS price,
                p.name, p.unit_size, p.abv, p.proof, p.category, p.match_status, p.claimed_by,
                p.claimed_by_token, p.catalog_item_id, p.catalog_kind, p.catalog_name,
                p.catalog_vintage, p.catalog_producer, p.created_at, p.updated_at
         FROM products p
         WHERE {in_store}p.match_status BETWEEN 1 AND $2 AND p.id > $1
           AND ($3 = 0 OR p.category = $3)
         ORDER BY p.id LIMIT $4",
        "p.store_id = $5 AND ",
    )
});

/// PENDING -> IN_PROGRESS. `$1` = product, `$2` = who claims it (a token's name), `$3` =
/// when, `$4` = the claiming token's id; `$5` = its store.
pub static CLAIM: LazyLock<OnProduct> = LazyLock::new(|| {
    OnProduct::new(
        "UPDATE products SET match_status = 2, claimed_by = $2, claimed_at = $3,
             claimed_by_token = $4
         WHERE {in_store}id = $1 AND match_status = 1",
        "store_id = $5 AND ",
    )
});

/// PENDING or IN_PROGRESS -> COMPLETE. `$1` = product, `$2`..`$6` = the catalog item, `$7`
/// = when, `$8` = who matched it (a token's name), `$9` = that token's id, `$10` = the
/// token an in-progress product must be claimed by (NULL: any, for an admin); `$11` = its
/// store.
pub static COMPLETE: LazyLock<OnProduct> = LazyLock::new(|| {
    OnProduct::new(
        "UPDATE products SET match_status = 3,
             catalog_item_id = $2, catalog_kind = $3, catalog_name = $4,
             catalog_vintage = $5, catalog_producer = $6, updated_at = $7,
             claimed_by = $8, claimed_by_token = $9
         WHERE {in_store}id = $1
           AND (match_status = 1
                OR (match_status = 2 AND ($10::bigint IS NULL OR claimed_by_token = $10)))",
        "store_id = $11 AND ",
    )
});

/// IN_PROGRESS -> PENDING. `$1` = product, `$2` = the token it must be claimed by (NULL:
/// any, for an admin); `$3` = its store.
pub static RELEASE: LazyLock<OnProduct> = LazyLock::new(|| {
    OnProduct::new(
        "UPDATE products SET match_status = 1, claimed_by = NULL, claimed_at = NULL,
             claimed_by_token = NULL
         WHERE {in_store}id = $1 AND match_status = 2
           AND ($2::bigint IS NULL OR claimed_by_token = $2)",
        "store_id = $3 AND ",
    )
});

/// Whether any claim was made before `$1`: read first, so that no write (which waits for a
/// running merge) is made when there is nothing to expire.
pub const ANY_CLAIM_EXPIRED: &str =
    "SELECT COUNT(*) FROM products WHERE match_status = 2 AND claimed_at < $1";

/// Claims made before `$1` expire: their products are pending again.
pub const EXPIRE_CLAIMS: &str = "
    UPDATE products SET match_status = 1, claimed_by = NULL, claimed_at = NULL,
        claimed_by_token = NULL
    WHERE match_status = 2 AND claimed_at < $1";

// ---- tokens ----

/// Marks the database bootstrapped; no row changes if it was. `$1` = when.
pub const MARK_BOOTSTRAPPED: &str =
    "INSERT INTO bootstrap (id, created_at) VALUES (1, $1) ON CONFLICT (id) DO NOTHING";

pub const COUNT_TOKENS: &str = "SELECT COUNT(*) FROM api_tokens";

/// `$1` = name, `$2` = role, `$3` = secret hash, `$4` = when. Returns the id.
pub const INSERT_TOKEN: &str = "
    INSERT INTO api_tokens (name, role, secret_hash, created_at)
    VALUES ($1, $2, $3, $4) RETURNING id";

/// As [`INSERT_TOKEN`] with the id chosen: `$1` = id. The id sequence is left behind; see
/// [`CATCH_UP_TOKEN_IDS`].
pub const INSERT_TOKEN_WITH_ID: &str = "
    INSERT INTO api_tokens (id, name, role, secret_hash, created_at)
    VALUES ($1, $2, $3, $4, $5) RETURNING id";

/// A token stored with an id of its own leaves the id sequence behind; it catches up so
/// that the next token created does not draw that id again.
pub const CATCH_UP_TOKEN_IDS: &str =
    "SELECT setval(pg_get_serial_sequence('api_tokens', 'id'), (SELECT MAX(id) FROM api_tokens))";

/// `$1` = token, `$2` = store.
pub const INSERT_TOKEN_STORE: &str = "
    INSERT INTO api_token_stores (token_id, store_id) VALUES ($1, $2) ON CONFLICT DO NOTHING";

pub const SELECT_TOKEN: &str = "
    SELECT id, name, role, secret_hash, created_at, last_used_at, revoked_at
    FROM api_tokens WHERE id = $1";

pub const SELECT_TOKENS: &str = "
    SELECT id, name, role, secret_hash, created_at, last_used_at, revoked_at
    FROM api_tokens ORDER BY id";

pub const SELECT_TOKEN_STORES: &str =
    "SELECT store_id FROM api_token_stores WHERE token_id = $1 ORDER BY store_id";

/// `$1` = token, `$2` = when.
pub const REVOKE_TOKEN: &str =
    "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

/// Records a use at most once a minute per token. `$1` = token, `$2` = when.
pub const TOUCH_TOKEN: &str = "
    UPDATE api_tokens SET last_used_at = $2
    WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2 - 60000000)";

// ---- the history of syncs ----

/// `$1`..`$10` = the run's header, `$11` = outcome RUNNING, `$12` = the token's name.
pub const INSERT_SYNC_RUN: &str = "
    INSERT INTO sync_runs (id, store_id, started_at, clear, dry_run, key_field, skip_invalid,
        allow_mass_clear, expected_count, idempotency_key, outcome, token_name, heartbeat_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $3)";

/// Ends a run that is still running (`$15` = RUNNING): `$1` = id, `$2` = when, `$3` =
/// outcome (NULL keeps it), `$4`/`$5` = status, `$6`..`$12` = counts, `$13` = request hash,
/// `$14` = the run it replays, `$16` = the store.
pub const END_SYNC_RUN: &str = "
    UPDATE sync_runs SET finished_at = $2, outcome = COALESCE($3, outcome),
        status_code = $4, status_message = $5, received = $6, created = $7,
        updated = $8, unchanged = $9, cleared = $10, linked = $11, rejected = $12,
        request_hash = COALESCE($13, request_hash), replay_of = $14
    WHERE store_id = $16 AND id = $1 AND outcome = $15";

/// `$1` = id, `$2` = when, `$3` = RUNNING, `$4` = the store.
pub const TOUCH_SYNC_RUN: &str =
    "UPDATE sync_runs SET heartbeat_at = $2 WHERE store_id = $4 AND id = $1 AND outcome = $3";

/// Ends the running runs (`$5` = RUNNING) silent since `$6`: `$1` = outcome, `$2` = when,
/// `$3`/`$4` = status.
pub const END_SILENT_SYNC_RUNS: &str = "
    UPDATE sync_runs SET outcome = $1, finished_at = $2, status_code = $3, status_message = $4
    WHERE outcome = $5 AND heartbeat_at < $6";

/// `$1` = id, `$2` = the store.
pub const SELECT_SYNC_RUN: &str = "
    SELECT id, store_id, started_at, finished_at, clear, dry_run, key_field, skip_invalid,
           allow_mass_clear, expected_count, idempotency_key, outcome, status_code,
           status_message, received, created, updated, unchanged, cleared, linked, rejected,
           token_name, replay_of
    FROM sync_runs WHERE store_id = $2 AND id = $1";

/// The outcome recorded of run `$2` of store `$1`.
pub const SYNC_RUN_OUTCOME: &str = "SELECT outcome FROM sync_runs WHERE store_id = $1 AND id = $2";

/// `$1` = store, `$2` = the run before which the page starts (NULL: the newest), `$3` =
/// page size.
pub const SELECT_SYNC_RUNS_PAGE: &str = "
    SELECT id, store_id, started_at, finished_at, clear, dry_run, key_field, skip_invalid,
           allow_mass_clear, expected_count, idempotency_key, outcome, status_code,
           status_message, received, created, updated, unchanged, cleared, linked, rejected,
           token_name, replay_of
    FROM sync_runs
    WHERE store_id = $1 AND ($2::text IS NULL OR id < $2)
    ORDER BY id DESC LIMIT $3";

// ---- staging ----

/// The staging tables of one sync, on its own connection. They stay with the connection
/// for its next sync, emptied: creating and dropping them costs a sync more than a
/// millisecond of catalog writes, and a small sync takes a few. They start empty whatever
/// an earlier user left. No indexes: PostgreSQL hash-joins, and maintaining them row by row
/// during `COPY` only costs.
pub const OPEN_STAGING: &str = "
    SET client_min_messages TO warning;
    CREATE TEMPORARY TABLE IF NOT EXISTS staged_products (
        idx         BIGINT PRIMARY KEY,
        external_id TEXT,
        barcodes    TEXT,
        in_stock    BIGINT,
        price       TEXT,
        name        TEXT,
        unit_size   TEXT,
        abv         DOUBLE PRECISION,
        proof       DOUBLE PRECISION,
        category    INTEGER,
        -- Resolved in the merge: the live product this one is or becomes.
        product_id  BIGINT,
        created     BOOLEAN NOT NULL DEFAULT FALSE,
        -- Sent exactly as stored, as of the sync generation read when the upload began:
        -- no check or write needs it.
        unchanged   BOOLEAN NOT NULL DEFAULT FALSE,
        -- Sent with exactly the barcodes stored, as of the same generation: its barcodes
        -- are its own already, so no stored product's can be among them and none is
        -- rewritten. They still take part in the check for barcodes sent twice.
        barcodes_kept BOOLEAN NOT NULL DEFAULT FALSE,
        -- Rejected (skip_invalid): it writes nothing, but its key counts as listed, so a
        -- clear never zeroes a product for a bad copy of it.
        skipped     BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE TEMPORARY TABLE IF NOT EXISTS staged_barcodes (
        idx     BIGINT  NOT NULL,
        barcode TEXT    NOT NULL,
        -- Its product's `barcodes_kept`.
        kept    BOOLEAN NOT NULL DEFAULT FALSE
    );
    DELETE FROM staged_products;
    DELETE FROM staged_barcodes;";

/// Bytes the staging tables take, dead rows included: temporary tables are never vacuumed,
/// so rows deleted stay until the tables are truncated.
pub const STAGING_SIZE: &str =
    "SELECT pg_total_relation_size('staged_products') + pg_total_relation_size('staged_barcodes')";

/// Empties small staging tables.
pub const EMPTY_STAGING: &str = "DELETE FROM staged_products; DELETE FROM staged_barcodes;";

/// Empties staging tables that grew, giving their space back.
pub const TRUNCATE_STAGING: &str = "TRUNCATE staged_products, staged_barcodes";

/// The store's sync generation, and whether it has products at all. Read when an upload
/// begins; a store that is missing is at generation 0 and empty.
pub const STAGING_START: &str = "
    SELECT s.sync_generation, EXISTS (SELECT 1 FROM products p WHERE p.store_id = $1)
    FROM stores s WHERE s.id = $1";

/// The staged rows of a whole upload, in `COPY` text format.
pub const COPY_STAGED_PRODUCTS: &str = "COPY staged_products (idx, external_id, barcodes, in_stock, price, name, unit_size, abv, proof, category, skipped, product_id, unchanged, barcodes_kept) FROM STDIN";

/// The fields of store `$1`'s products whose external ids are in the array `$2`, for
/// `unchanged::StoredFields`. Joined to the sent ids rather than filtered by `= ANY`: the
/// join probes the (store_id, external_id) index whatever the statistics say, while the
/// filter, on a table not analyzed since a big sync, is planned as a scan of the store.
pub const SELECT_STORED_FIELDS: &str = "
    SELECT p.id, p.external_id, p.barcodes, p.in_stock, p.price::text AS price, p.name,
           p.unit_size, p.abv, p.proof, p.category
    FROM UNNEST($2::text[]) AS sent (external_id)
    JOIN products p ON p.store_id = $1 AND p.external_id = sent.external_id";

/// The same fields of store `$1`'s products with the `$3` ids from that of the product with
/// external id `$2` on: a batch's stored products when the POS sends them in the order
/// they were created, which a re-sync mostly does. One probe of the external-id index and a
/// range of the store's id index (0.6 ms for a thousand products, against 8 ms to probe
/// the external-id index for each). Written as a `LATERAL` subquery with a `LIMIT` so that
/// the plan is that whatever the statistics: a join was planned as a scan of the whole
/// store right after a big sync.
pub const SELECT_STORED_FIELDS_FROM: &str = "
    SELECT p.id, p.external_id, p.barcodes, p.in_stock, p.price::text AS price, p.name,
           p.unit_size, p.abv, p.proof, p.category
    FROM (SELECT id FROM products WHERE store_id = $1 AND external_id = $2 LIMIT 1) AS first
    CROSS JOIN LATERAL (
        SELECT * FROM products p
        WHERE p.store_id = $1 AND p.id >= first.id AND p.id < first.id + $3
        ORDER BY p.id LIMIT $3) AS p";

/// Gives the planner statistics of the staged products: temporary tables get none on their
/// own, and without them it guesses a handful of rows and picks nested loops and sorts made
/// for those over a million.
pub const ANALYZE_STAGED_PRODUCTS: &str = "ANALYZE staged_products";

/// Splits the staged barcodes of changed products into their own rows, for the checks of
/// the batch and the merge of stored products.
pub const SPLIT_STAGED_BARCODES: &str = "
    INSERT INTO staged_barcodes (idx, barcode, kept)
    SELECT idx, unnest(string_to_array(barcodes, ' ')), barcodes_kept FROM staged_products
    WHERE barcodes IS NOT NULL AND NOT unchanged";

pub const ANALYZE_STAGED_BARCODES: &str = "ANALYZE staged_barcodes";

/// The barcodes of the products marked unchanged, split out when the marks are dropped
/// (they were left out while staging).
pub const SPLIT_BARCODES_OF_UNCHANGED: &str = "
    INSERT INTO staged_barcodes (idx, barcode)
    SELECT idx, unnest(string_to_array(barcodes, ' ')) FROM staged_products
    WHERE unchanged AND barcodes IS NOT NULL";

/// Whether staged product `staged` changes stored product `stored`: a field the POS leaves
/// out changes nothing, a sent field that differs does, and so does a first external id
/// (barcode sync). Staging marks unchanged products with `unchanged::is_unchanged`, the
/// same rule in Rust; this one decides which of the others the merge writes.
fn differs(staged: &str, stored: &str) -> String {
    let mut test = format!(
        "(({staged}.external_id IS NOT NULL AND {stored}.external_id IS NULL) \
         OR ({staged}.price IS NOT NULL AND {staged}.price IS DISTINCT FROM {stored}.price::text)"
    );
    for column in [
        "barcodes",
        "in_stock",
        "name",
        "unit_size",
        "abv",
        "proof",
        "category",
    ] {
        write!(
            test,
            " OR ({staged}.{column} IS NOT NULL \
             AND {staged}.{column} IS DISTINCT FROM {stored}.{column})"
        )
        .expect("writing to a String cannot fail");
    }
    test.push(')');
    test
}

// ---- checks of the batch alone; `$1` = how many to report ----

/// Later products of the batch whose external id an earlier product already used.
/// Grouped rather than probed per row, so no staging index is needed for it.
pub static DUPLICATE_EXTERNAL_IDS: LazyLock<String> =
    LazyLock::new(|| repeated_external_ids("staged_products"));

/// [`DUPLICATE_EXTERNAL_IDS`] when every product was looked up and no stored product was
/// found twice: then an external id sent twice was sent at least once by a product not
/// found (two products found by one external id are one stored product, since a stored
/// product's external id never changes), so only those external ids are grouped. In a
/// re-sync that creates nothing, nothing is.
pub static DUPLICATE_EXTERNAL_IDS_OF_NEW_PRODUCTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH candidates AS (
             SELECT s.idx, s.external_id, s.skipped
             FROM staged_products s
             WHERE s.external_id IN (SELECT n.external_id FROM staged_products n
                                     WHERE n.product_id IS NULL))
         {}",
        repeated_external_ids("candidates")
    )
});

/// The later rows of `rows` (staged products, or some of them) whose external id an
/// earlier row of `rows` has.
fn repeated_external_ids(rows: &str) -> String {
    format!(
        "SELECT s.idx, s.external_id, repeated.first_idx
         FROM {rows} s
         JOIN (SELECT external_id, MIN(idx) AS first_idx
               FROM {rows}
               GROUP BY external_id
               HAVING COUNT(*) > 1) AS repeated ON repeated.external_id = s.external_id
         WHERE NOT s.skipped AND s.idx > repeated.first_idx
         ORDER BY s.idx
         LIMIT $1"
    )
}

/// Later products of the batch that carry a barcode an earlier product already carries.
pub const BARCODES_SHARED_IN_BATCH: &str = "
    SELECT b.idx, b.barcode, shared.first_idx
    FROM staged_barcodes b
    JOIN (SELECT barcode, MIN(idx) AS first_idx
          FROM staged_barcodes
          GROUP BY barcode
          HAVING COUNT(*) > 1) AS shared ON shared.barcode = b.barcode
    JOIN staged_products s ON s.idx = b.idx
    WHERE NOT s.skipped AND b.idx > shared.first_idx
    ORDER BY b.idx, b.barcode
    LIMIT $1";

/// Rejects a staged product (skip_invalid): it writes nothing, and neither do its barcodes.
/// `$1` = its position.
pub const SKIP_STAGED_PRODUCT: &str =
    "UPDATE staged_products SET skipped = TRUE, barcodes = NULL WHERE idx = $1";
pub const DROP_SKIPPED_BARCODES: &str = "DELETE FROM staged_barcodes WHERE idx = $1";

// ---- the merge ----

/// Registers the store; the merge's first write. `$2` = when.
pub const ENSURE_STORE: &str =
    "INSERT INTO stores (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";

/// Holds the store's row until commit, so two syncs of one store never interleave, on any
/// replica, and reads its sync generation. A plain row lock: portable to distributed
/// PostgreSQL-compatible engines.
pub const LOCK_STORE: &str = "SELECT sync_generation FROM stores WHERE id = $1 FOR UPDATE";

/// The store's sync generation, read without its lock.
pub const SYNC_GENERATION: &str = "SELECT sync_generation FROM stores WHERE id = $1";

/// Counts a sync that wrote to the store's products.
pub const ADVANCE_SYNC_GENERATION: &str =
    "UPDATE stores SET sync_generation = sync_generation + 1 WHERE id = $1";

/// Forgets a store's idempotency key committed before `$3`: its retention is over.
/// `$2` = the key.
pub const FORGET_EXPIRED_IDEMPOTENCY_KEY: &str = "
    UPDATE sync_runs SET idempotency_key = NULL
    WHERE store_id = $1 AND idempotency_key = $2 AND outcome = 2 AND finished_at < $3";

/// The committed run of a store's idempotency key, and the hash of what it sent.
pub const COMMITTED_RUN_OF_IDEMPOTENCY_KEY: &str = "
    SELECT id, request_hash FROM sync_runs
    WHERE store_id = $1 AND idempotency_key = $2 AND outcome = 2";

/// Another sync wrote to the store while this one uploaded: the unchanged marks may be
/// stale, so every product is checked again.
pub const FORGET_UNCHANGED: &str = "
    UPDATE staged_products SET unchanged = FALSE, barcodes_kept = FALSE
    WHERE unchanged OR barcodes_kept";

/// The same for the split barcodes of the products whose barcodes were marked kept.
pub const FORGET_KEPT_BARCODES: &str = "UPDATE staged_barcodes SET kept = FALSE WHERE kept";

/// External-id sync: a staged product is the live product with its external id.
pub const RESOLVE_BY_EXTERNAL_ID: &str = "
    UPDATE staged_products SET product_id = p.id
    FROM products p
    WHERE p.store_id = $1 AND p.external_id = staged_products.external_id
      AND staged_products.product_id IS NULL";

/// Barcode sync: a staged product is the live product that owns one of its barcodes (the
/// lowest id, should they point at several: that is refused by the checks).
pub const RESOLVE_BY_BARCODES: &str = "
    UPDATE staged_products SET product_id = owners.product_id
    FROM (SELECT b.idx, MIN(pb.product_id) AS product_id
          FROM staged_barcodes b
          JOIN product_barcodes pb ON pb.store_id = $1 AND pb.barcode = b.barcode
          GROUP BY b.idx) AS owners
    WHERE staged_products.idx = owners.idx";

/// External-id sync: a staged barcode owned by another stored product that keeps its
/// barcodes through this sync. Rows: (idx, barcode, owner's external id). Only the barcodes
/// of changed products are staged, and of those only the barcodes of products whose set
/// changes are searched, so the search starts from few rows.
pub const BARCODES_OWNED_BY_OTHER_PRODUCTS: &str = "
    SELECT s.idx, b.barcode, p.external_id
    FROM staged_barcodes b
    JOIN staged_products s ON s.idx = b.idx AND NOT b.kept
    JOIN product_barcodes pb ON pb.store_id = $1 AND pb.barcode = b.barcode
    JOIN products p ON p.store_id = $1 AND p.id = pb.product_id
      AND NOT s.skipped
      AND (s.product_id IS NULL OR pb.product_id <> s.product_id)
      AND NOT EXISTS (
          SELECT 1 FROM staged_products o
          WHERE o.product_id = pb.product_id AND o.barcodes IS NOT NULL AND NOT o.unchanged)
    ORDER BY s.idx, b.barcode
    LIMIT $2";

/// Barcode sync: products whose barcodes belong to several stored products.
/// Rows: (idx, how many stored products).
pub const BARCODES_OF_SEVERAL_PRODUCTS: &str = "
    SELECT b.idx, COUNT(DISTINCT pb.product_id)
    FROM staged_barcodes b
    JOIN staged_products s ON s.idx = b.idx
    JOIN product_barcodes pb ON pb.store_id = $1 AND pb.barcode = b.barcode
    WHERE NOT s.skipped
    GROUP BY b.idx
    HAVING COUNT(DISTINCT pb.product_id) > 1
    ORDER BY b.idx
    LIMIT $2";

/// Barcode sync: later products that match the same stored product as an earlier one.
/// Rows: (idx, the earlier idx).
pub const SAME_STORED_PRODUCT_TWICE: &str = "
    SELECT s.idx, twice.first_idx
    FROM staged_products s
    JOIN (SELECT product_id, MIN(idx) AS first_idx
          FROM staged_products
          WHERE product_id IS NOT NULL
          GROUP BY product_id
          HAVING COUNT(*) > 1) AS twice ON twice.product_id = s.product_id
    WHERE s.idx > twice.first_idx AND NOT s.skipped
    ORDER BY s.idx
    LIMIT $1";

/// Barcode sync: matched products that already have another external id.
/// Rows: (idx, sent external id, stored external id). `$2` = how many.
pub const EXTERNAL_ID_MISMATCHES: &str = "
    SELECT s.idx, s.external_id, p.external_id
    FROM staged_products s
    JOIN products p ON p.id = s.product_id AND p.store_id = $1
    WHERE NOT s.skipped AND s.external_id IS NOT NULL AND p.external_id IS NOT NULL
      AND p.external_id <> s.external_id
    ORDER BY s.idx
    LIMIT $2";

/// Barcode sync: external ids that belong to a stored product other than the match.
/// Rows: (idx, external id).
pub const EXTERNAL_IDS_OF_OTHER_PRODUCTS: &str = "
    SELECT s.idx, s.external_id
    FROM staged_products s
    JOIN products p ON p.store_id = $1 AND p.external_id = s.external_id
    WHERE NOT s.skipped AND (s.product_id IS NULL OR p.id <> s.product_id)
    ORDER BY s.idx
    LIMIT $2";

/// The store's products in stock before the sync (the base of the mass-clear guard), and
/// all its products (in the same pass).
pub const COUNT_IN_STOCK_AND_ALL: &str =
    "SELECT COUNT(*) FILTER (WHERE in_stock > 0), COUNT(*) FROM products WHERE store_id = $1";

/// Barcode sync: matched products without an external id that get one now.
pub const COUNT_LINKS: &str = "
    SELECT COUNT(*)
    FROM staged_products s
    JOIN products p ON p.id = s.product_id AND p.store_id = $1
    WHERE NOT s.skipped AND p.external_id IS NULL AND s.external_id IS NOT NULL";

/// Deletes the barcodes of matched products whose barcode set changes, by the old barcodes
/// themselves (the table keeps no index on product_id here). Runs before the products are
/// updated, while `p.barcodes` still holds the old set.
pub const DELETE_REPLACED_BARCODES: &str = "
    DELETE FROM product_barcodes pb
    USING (SELECT unnest(string_to_array(p.barcodes, ' ')) AS barcode
           FROM staged_products s
           JOIN products p ON p.id = s.product_id AND p.store_id = $1
           WHERE NOT s.skipped AND NOT s.unchanged AND NOT s.barcodes_kept
             AND s.barcodes IS NOT NULL AND s.barcodes IS DISTINCT FROM p.barcodes) AS replaced
    WHERE pb.store_id = $1 AND pb.barcode = replaced.barcode";

/// The new barcode sets of those same products (all replaced sets were deleted first, so a
/// barcode moving between two of them collides with nothing).
pub const INSERT_REPLACEMENT_BARCODES: &str = "
    INSERT INTO product_barcodes (store_id, barcode, product_id)
    SELECT $1, b.barcode, s.product_id
    FROM staged_products s
    JOIN products p ON p.id = s.product_id AND p.store_id = $1
    JOIN staged_barcodes b ON b.idx = s.idx AND NOT b.kept
    WHERE NOT s.skipped AND NOT s.unchanged AND NOT s.barcodes_kept AND s.barcodes IS NOT NULL
      AND s.barcodes IS DISTINCT FROM p.barcodes";

/// Only rows whose stored data really changes are written, so the affected row count is
/// the `updated` count and a re-sync of unchanged data writes nothing. A barcode sync may
/// give a product its first external id (never another one).
pub static UPDATE_CHANGED_PRODUCTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE products SET
            external_id = COALESCE(products.external_id, s.external_id),
            barcodes  = COALESCE(s.barcodes, products.barcodes),
            in_stock  = COALESCE(s.in_stock, products.in_stock),
            price     = COALESCE(s.price::numeric, products.price),
            name      = COALESCE(s.name, products.name),
            unit_size = COALESCE(s.unit_size, products.unit_size),
            abv       = COALESCE(s.abv, products.abv),
            proof     = COALESCE(s.proof, products.proof),
            category  = COALESCE(s.category, products.category),
            updated_at = $2
         FROM staged_products s
         WHERE products.store_id = $1 AND products.id = s.product_id
           AND NOT s.skipped AND NOT s.unchanged
           AND {differs}",
        differs = differs("s", "products"),
    )
});

/// Sets every product of the store that this sync did not list out of stock. Runs before
/// new products exist. NOT IN runs as a hashed subplan only while the ids fit in work_mem,
/// and otherwise rescans them for every product; an anti-join has no such cliff.
pub const CLEAR_UNLISTED_PRODUCTS: &str = "
    UPDATE products SET in_stock = 0, updated_at = $2
    WHERE store_id = $1
      AND (in_stock IS NULL OR in_stock <> 0)
      AND NOT EXISTS (SELECT 1 FROM staged_products s WHERE s.product_id = products.id)";

/// How many products this sync creates.
pub const COUNT_NEW_PRODUCTS: &str =
    "SELECT COUNT(*) FROM staged_products WHERE product_id IS NULL AND NOT skipped";

/// Creates the new products and their barcodes in one statement: the staged rows are not
/// rewritten to carry the new ids. New products enter the matching queue as pending
/// (match_status 1); identity values are drawn in stream order.
pub const INSERT_NEW_PRODUCTS_WITH_BARCODES: &str = "
    WITH created AS (
        INSERT INTO products (store_id, external_id, barcodes, in_stock, price, name,
                              unit_size, abv, proof, category, match_status,
                              created_at, updated_at)
        SELECT $1, s.external_id, s.barcodes, s.in_stock, s.price::numeric, s.name,
               s.unit_size, s.abv, s.proof, COALESCE(s.category, 0), 1, $2, $2
        FROM staged_products s
        WHERE s.product_id IS NULL AND NOT s.skipped
        ORDER BY s.idx
        RETURNING id, barcodes)
    INSERT INTO product_barcodes (store_id, barcode, product_id)
    SELECT $1, unnest(string_to_array(barcodes, ' ')), id
    FROM created WHERE barcodes IS NOT NULL";

/// Completes a sync's history run in the merge's own transaction: it says committed
/// exactly when the sync did. `$1` = the sync id, `$2` = when, `$3`..`$9` = counts,
/// `$10` = the request hash of an idempotency key, `$11` = the store.
pub const COMMIT_SYNC_RUN: &str = "
    UPDATE sync_runs SET outcome = 2, finished_at = $2, received = $3, created = $4,
        updated = $5, unchanged = $6, cleared = $7, linked = $8, rejected = $9,
        request_hash = $10
    WHERE store_id = $11 AND id = $1";
