//! Every SQL statement of the SQLite backend.
//! (Over 500 lines for a reason: every statement of the backend stands in this one file, in
//! the order a sync runs them, so that one file shows all this backend asks of its database.)
//!
//! A sync stages its products in two temporary tables of its own connection
//! (`staged_products`, `staged_barcodes`) and merges them into the live tables in one
//! transaction that holds SQLite's write lock:
//! 1. resolve: each staged product learns the id of the live product it is (by external id or
//!    by barcodes), or stays unresolved if it is new. An external-id sync of a store that
//!    has products resolves while it stages and keeps the products sent exactly as stored
//!    apart, as runs in `staged_unchanged`; those take no part in the checks and writes
//!    below, unless another sync wrote to the store meanwhile (then they are listed in
//!    `staged_products` with the values they were sent with, and checked as any other);
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

/// `$1` = the product's id, `$2` = its store (NULL: whichever).
pub const SELECT_PRODUCT_BY_ID: &str = "
    SELECT p.id, p.store_id, p.external_id, p.barcodes, p.in_stock, p.price, p.name,
           p.unit_size, p.abv, p.proof, p.category, p.match_status, p.claimed_by,
           p.claimed_by_token, p.catalog_item_id, p.catalog_kind, p.catalog_name,
           p.catalog_vintage, p.catalog_producer, p.created_at, p.updated_at
    FROM products p WHERE p.id = $1 AND ($2 IS NULL OR p.store_id = $2)";

/// `$1` = store, `$2` = external id.
pub const SELECT_PRODUCT_BY_EXTERNAL_ID: &str = "
    SELECT p.id, p.store_id, p.external_id, p.barcodes, p.in_stock, p.price, p.name,
           p.unit_size, p.abv, p.proof, p.category, p.match_status, p.claimed_by,
           p.claimed_by_token, p.catalog_item_id, p.catalog_kind, p.catalog_name,
           p.catalog_vintage, p.catalog_producer, p.created_at, p.updated_at
    FROM products p WHERE p.store_id = $1 AND p.external_id = $2";

/// `$1` = store, `$2` = barcode.
pub const SELECT_PRODUCT_BY_BARCODE: &str = "
    SELECT p.id, p.store_id, p.external_id, p.barcodes, p.in_stock, p.price, p.name,
           p.unit_size, p.abv, p.proof, p.category, p.match_status, p.claimed_by,
           p.claimed_by_token, p.catalog_item_id, p.catalog_kind, p.catalog_name,
           p.catalog_vintage, p.catalog_producer, p.created_at, p.updated_at
    FROM product_barcodes b JOIN products p ON p.store_id = b.store_id AND p.id = b.product_id
    WHERE b.store_id = $1 AND b.barcode = $2";

/// `$1` = store, `$2` = last id of the previous page, `$3` = match status (0 = any),
/// `$4` = in stock only, `$5` = updated since (NULL = any time), `$6` = page size.
pub const SELECT_PRODUCTS_PAGE: &str = "
    SELECT p.id, p.store_id, p.external_id, p.barcodes, p.in_stock, p.price, p.name,
           p.unit_size, p.abv, p.proof, p.category, p.match_status, p.claimed_by,
           p.claimed_by_token, p.catalog_item_id, p.catalog_kind, p.catalog_name,
           p.catalog_vintage, p.catalog_producer, p.created_at, p.updated_at
    FROM products p
    WHERE p.store_id = $1 AND p.id > $2
      AND ($3 = 0 OR p.match_status = $3)
      AND ($4 = FALSE OR p.in_stock > 0)
      AND ($5 IS NULL OR p.updated_at >= $5)
    ORDER BY p.id LIMIT $6";

// ---- the matching queue ----

/// `$1` = last id of the previous page, `$2` = the highest status wanted (1 = pending only,
/// 2 = in progress too), `$3` = store (0 = any), `$4` = category (0 = any), `$5` = page
/// size. Oldest first: ids grow with creation.
pub const SELECT_PENDING_PAGE: &str = "
    SELECT p.id, p.store_id, p.external_id, p.barcodes, p.in_stock, p.price, p.name,
           p.unit_size, p.abv, p.proof, p.category, p.match_status, p.claimed_by,
           p.claimed_by_token, p.catalog_item_id, p.catalog_kind, p.catalog_name,
           p.catalog_vintage, p.catalog_producer, p.created_at, p.updated_at
    FROM products p
    WHERE p.match_status BETWEEN 1 AND $2 AND p.id > $1
      AND ($3 = 0 OR p.store_id = $3)
      AND ($4 = 0 OR p.category = $4)
    ORDER BY p.id LIMIT $5";

/// PENDING -> IN_PROGRESS. `$1` = product, `$2` = who claims it (a token's name), `$3` =
/// when, `$4` = the claiming token's id, `$5` = the product's store (NULL: whichever).
pub const CLAIM: &str = "
    UPDATE products SET match_status = 2, claimed_by = $2, claimed_at = $3, claimed_by_token = $4
    WHERE id = $1 AND ($5 IS NULL OR store_id = $5) AND match_status = 1";

/// PENDING or IN_PROGRESS -> COMPLETE. `$1` = product, `$2`..`$6` = the catalog item, `$7`
/// = when, `$8` = who matched it (a token's name), `$9` = that token's id, `$10` = the
/// token an in-progress product must be claimed by (NULL: any, for an admin), `$11` = the
/// product's store (NULL: whichever).
pub const COMPLETE: &str = "
    UPDATE products SET match_status = 3,
        catalog_item_id = $2, catalog_kind = $3, catalog_name = $4,
        catalog_vintage = $5, catalog_producer = $6, updated_at = $7,
        claimed_by = $8, claimed_by_token = $9
    WHERE id = $1 AND ($11 IS NULL OR store_id = $11)
      AND (match_status = 1
           OR (match_status = 2 AND ($10 IS NULL OR claimed_by_token = $10)))";

/// IN_PROGRESS -> PENDING. `$1` = product, `$2` = the token it must be claimed by (NULL:
/// any, for an admin), `$3` = the product's store (NULL: whichever).
pub const RELEASE: &str = "
    UPDATE products SET match_status = 1, claimed_by = NULL, claimed_at = NULL,
        claimed_by_token = NULL
    WHERE id = $1 AND ($3 IS NULL OR store_id = $3)
      AND match_status = 2 AND ($2 IS NULL OR claimed_by_token = $2)";

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

/// As [`INSERT_TOKEN`] with the id chosen: `$1` = id. An INTEGER PRIMARY KEY takes the
/// next id after the largest, so nothing needs to catch up afterwards.
pub const INSERT_TOKEN_WITH_ID: &str = "
    INSERT INTO api_tokens (id, name, role, secret_hash, created_at)
    VALUES ($1, $2, $3, $4, $5) RETURNING id";

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

/// `$1` = store, `$2` = the run before which the page starts (NULL: the newest), `$3` =
/// page size.
pub const SELECT_SYNC_RUNS_PAGE: &str = "
    SELECT id, store_id, started_at, finished_at, clear, dry_run, key_field, skip_invalid,
           allow_mass_clear, expected_count, idempotency_key, outcome, status_code,
           status_message, received, created, updated, unchanged, cleared, linked, rejected,
           token_name, replay_of
    FROM sync_runs
    WHERE store_id = $1 AND ($2 IS NULL OR id < $2)
    ORDER BY id DESC LIMIT $3";

// ---- staging ----

/// The staging tables of one sync, on its own connection. `idx` is SQLite's rowid alias,
/// its fastest key; the barcode index serves the checks, which SQLite runs as nested loops.
pub const CREATE_STAGING: &str = "
    DROP TABLE IF EXISTS staged_products;
    DROP TABLE IF EXISTS staged_unchanged;
    DROP TABLE IF EXISTS staged_barcodes;
    CREATE TEMPORARY TABLE staged_products (
        idx         INTEGER PRIMARY KEY,
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
        -- Rejected (skip_invalid): it writes nothing, but its key counts as listed, so a
        -- clear never zeroes a product for a bad copy of it.
        skipped     BOOLEAN NOT NULL DEFAULT FALSE,
        -- Sent with exactly the barcodes stored, as of the same generation as `unchanged`:
        -- they are its own, so no check of stored owners and no rewrite needs them (the
        -- check for a barcode sent twice still does).
        barcodes_kept BOOLEAN NOT NULL DEFAULT FALSE,
        -- Listed by a run of staged_unchanged, without its values: should the marks go
        -- stale, they are rebuilt from what was stored (see RESTORE_VALUES_*).
        without_values BOOLEAN NOT NULL DEFAULT FALSE,
        -- Of a product listed without values: which fields it sent (SENT_* bits), and the
        -- store's sync generation its lookup read.
        sent_fields  INTEGER,
        looked_up_at BIGINT
    );
    -- The products marked unchanged, as runs: consecutive stream positions that are
    -- consecutive stored products and send the same fields. A re-sync mostly repeats the
    -- order of the sync that created its products, so a batch is a run or a few, where a
    -- row per product cost a second per million. They are listed one by one (in
    -- staged_products) only when the merge needs them so (see EXPAND_UNCHANGED_RUNS).
    CREATE TEMPORARY TABLE staged_unchanged (
        first_idx        INTEGER PRIMARY KEY,
        first_product_id BIGINT  NOT NULL,
        products         BIGINT  NOT NULL,
        sent_fields      INTEGER NOT NULL,
        looked_up_at     BIGINT  NOT NULL
    );
    CREATE INDEX staged_unchanged_product ON staged_unchanged (first_product_id, products);
    CREATE TEMPORARY TABLE staged_barcodes (
        idx     BIGINT NOT NULL,
        barcode TEXT   NOT NULL
    );
    CREATE INDEX staged_barcodes_barcode ON staged_barcodes (barcode, idx);";

pub const DROP_STAGING: &str = "
    DROP TABLE IF EXISTS staged_products;
    DROP TABLE IF EXISTS staged_unchanged;
    DROP TABLE IF EXISTS staged_barcodes;";

/// The store's sync generation, and whether it has products at all. Read when an upload
/// begins; a store that is missing is at generation 0 and empty.
pub const STAGING_START: &str = "
    SELECT s.sync_generation, EXISTS (SELECT 1 FROM products p WHERE p.store_id = s.id)
    FROM stores s WHERE s.id = $1";

/// Followed by the rows of a batch as `VALUES`, for a store without stored products to
/// compare with.
pub const INSERT_STAGED_PRODUCTS: &str = "INSERT INTO staged_products (idx, external_id, barcodes, in_stock, price, name, unit_size, abv, proof, category, skipped, product_id, barcodes_kept) ";

/// Followed by runs of products marked unchanged as `VALUES`.
pub const INSERT_UNCHANGED_RUNS: &str = "INSERT INTO staged_unchanged (first_idx, first_product_id, products, sent_fields, looked_up_at) ";

/// Followed by barcode rows as `VALUES`.
pub const INSERT_STAGED_BARCODES: &str = "INSERT INTO staged_barcodes (idx, barcode) ";

/// The fields of a stored product that a sync compares, by the product's external id:
/// `$1` = store, `$2` = external id. Columns as `unchanged::StoredView`, id first.
pub const SELECT_STORED_FIELDS: &str = "
    SELECT id, external_id, barcodes, in_stock, price, name, unit_size, abv, proof, category
    FROM products WHERE store_id = $1 AND external_id = $2";

/// The same fields of the store's product with id `$2` (`$1` = store): a guess at which
/// product an external id is, confirmed by comparing the external id read.
pub const SELECT_STORED_FIELDS_BY_ID: &str = "
    SELECT id, external_id, barcodes, in_stock, price, name, unit_size, abv, proof, category
    FROM products WHERE store_id = $1 AND id = $2";

/// Splits the barcode lists of staged products into `staged_barcodes`, for the products
/// that meet a condition written between these two (`barcodes` is the space-separated list
/// the product was staged with).
const SPLIT_STAGED_BARCODES_OF: &str = "
    WITH RECURSIVE split (idx, barcode, rest) AS (
        SELECT idx, '', barcodes || ' ' FROM staged_products
        WHERE barcodes IS NOT NULL AND ";
const SPLIT_STAGED_BARCODES_END: &str = "
        UNION ALL
        SELECT idx, substr(rest, 1, instr(rest, ' ') - 1), substr(rest, instr(rest, ' ') + 1)
        FROM split WHERE rest <> '')
    INSERT INTO staged_barcodes (idx, barcode)
    SELECT idx, barcode FROM split WHERE barcode <> ''";

/// Lists the products of the unchanged runs one by one, each with its external id (read
/// from its stored product) and without its values, and empties the runs: for the checks
/// that group every staged product (a stored product found twice), or for stale marks.
/// Rows without values are still marked unchanged; `$1` = store.
pub const EXPAND_UNCHANGED_RUNS: &str = "
    WITH RECURSIVE listed (idx, product_id, last_idx, sent_fields, looked_up_at) AS (
        SELECT first_idx, first_product_id, first_idx + products - 1, sent_fields,
               looked_up_at
        FROM staged_unchanged
        UNION ALL
        SELECT idx + 1, product_id + 1, last_idx, sent_fields, looked_up_at
        FROM listed WHERE idx < last_idx)
    INSERT INTO staged_products (idx, external_id, product_id, sent_fields, looked_up_at,
                                 unchanged, without_values)
    SELECT l.idx, p.external_id, l.product_id, l.sent_fields, l.looked_up_at, TRUE, TRUE
    FROM listed l CROSS JOIN products p
    WHERE p.store_id = $1 AND p.id = l.product_id";

pub const FORGET_UNCHANGED_RUNS: &str = "DELETE FROM staged_unchanged";

/// The bits of `staged_products.sent_fields`, one per field a sync may leave out.
pub const SENT_BARCODES: i64 = 1;
pub const SENT_IN_STOCK: i64 = 2;
pub const SENT_PRICE: i64 = 4;
pub const SENT_NAME: i64 = 8;
pub const SENT_UNIT_SIZE: i64 = 16;
pub const SENT_ABV: i64 = 32;
pub const SENT_PROOF: i64 = 64;
pub const SENT_CATEGORY: i64 = 128;

/// `SET` assignments giving a product staged without values the sent fields of `source`
/// (the others stay NULL: left out).
fn values_sent_from(source: &str) -> String {
    let mut assignments = String::new();
    for (column, bit) in [
        ("barcodes", SENT_BARCODES),
        ("in_stock", SENT_IN_STOCK),
        ("price", SENT_PRICE),
        ("name", SENT_NAME),
        ("unit_size", SENT_UNIT_SIZE),
        ("abv", SENT_ABV),
        ("proof", SENT_PROOF),
        ("category", SENT_CATEGORY),
    ] {
        write!(
            assignments,
            "{column} = CASE WHEN staged_products.sent_fields & {bit} <> 0 \
             THEN {source}.{column} END, "
        )
        .expect("writing to a String cannot fail");
    }
    assignments.push_str("without_values = FALSE");
    assignments
}

/// Stale marks, first: products staged without values that another sync wrote since their
/// lookup take the sent fields from the first record of the store made after it (the
/// product as it was when looked up, and so as this sync sent it).
pub static RESTORE_VALUES_FROM_PREIMAGES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE staged_products SET {}
         FROM product_preimages pre
         WHERE staged_products.without_values
           AND pre.store_id = $1 AND pre.product_id = staged_products.product_id
           AND pre.generation = (
               SELECT MIN(q.generation) FROM product_preimages q
               WHERE q.store_id = $1 AND q.product_id = staged_products.product_id
                 AND q.generation > staged_products.looked_up_at)",
        values_sent_from("pre")
    )
});

/// Stale marks, then: the others take them from the stored product, which no sync wrote
/// since their lookup.
pub static RESTORE_VALUES_FROM_STORED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE staged_products SET {}
         FROM products p
         WHERE staged_products.without_values
           AND p.store_id = $1 AND p.id = staged_products.product_id",
        values_sent_from("p")
    )
});

/// Whether a sync of store `$1` other than `$2` is running: then this merge records the
/// store's products before it writes them.
pub const OTHER_SYNC_OF_STORE_RUNNING: &str = "
    SELECT EXISTS (SELECT 1 FROM sync_runs WHERE outcome = 1 AND store_id = $1 AND id <> $2)";

/// Records the products [`UPDATE_CHANGED_PRODUCTS`] (or its barcode-sync form, which writes
/// the same products) is about to write, as they are, tagged with generation `$2` (the one
/// this merge makes).
pub static RECORD_PREIMAGES_OF_CHANGED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{RECORD_PREIMAGES}
         FROM staged_products s CROSS JOIN products
         WHERE {}",
        changed_stored_products()
    )
});

/// Records the products [`CLEAR_UNLISTED_PRODUCTS`] is about to set out of stock, as they
/// are, tagged with generation `$2`.
pub static RECORD_PREIMAGES_OF_CLEARED: LazyLock<String> =
    LazyLock::new(|| format!("{RECORD_PREIMAGES} FROM products WHERE {UNLISTED_IN_STOCK}"));

const RECORD_PREIMAGES: &str = "
    INSERT OR IGNORE INTO product_preimages (store_id, product_id, generation, barcodes,
        in_stock, price, name, unit_size, abv, proof, category)
    SELECT products.store_id, products.id, $2, products.barcodes, products.in_stock,
           products.price, products.name, products.unit_size, products.abv, products.proof,
           products.category";

/// Drops the store's records once no other sync of it runs.
pub const FORGET_PREIMAGES: &str = "DELETE FROM product_preimages WHERE store_id = $1";

/// The barcodes of the products marked unchanged, split out when the marks are dropped
/// (they were left out while staging).
pub static SPLIT_BARCODES_OF_UNCHANGED: LazyLock<String> =
    LazyLock::new(|| format!("{SPLIT_STAGED_BARCODES_OF}unchanged{SPLIT_STAGED_BARCODES_END}"));

/// Whether staged product `staged` changes stored product `stored`: a field the POS leaves
/// out changes nothing, a sent field that differs does, and so does a first external id
/// (barcode sync). The rule `unchanged::is_unchanged` states in Rust; a test checks that
/// the two agree.
pub fn differs(staged: &str, stored: &str) -> String {
    let mut test = format!(
        "(({staged}.external_id IS NOT NULL AND {stored}.external_id IS NULL) \
         OR ({staged}.price IS NOT NULL AND {staged}.price IS DISTINCT FROM {stored}.price)"
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

/// As [`DUPLICATE_EXTERNAL_IDS`], when every batch was looked up and no stored product was
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

/// The store's sync generation, read under the write lock.
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

/// Another sync wrote to the store while this one uploaded: the unchanged marks (and the
/// barcodes kept) may be stale, so every product is checked again.
pub const FORGET_UNCHANGED: &str = "
    UPDATE staged_products SET unchanged = FALSE, barcodes_kept = FALSE
    WHERE unchanged OR barcodes_kept";

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

/// Without it SQLite updates the live table row by row, scanning the staged products for
/// each: quadratic in the size of a re-sync.
pub const INDEX_RESOLVED_PRODUCTS: &str =
    "CREATE INDEX staged_products_product_id ON staged_products (product_id) WHERE NOT unchanged";

/// External-id sync: a staged barcode owned by another stored product that keeps its
/// barcodes through this sync. Rows: (idx, barcode, owner's external id). Joined in the
/// order written (CROSS JOIN): from the staged barcodes (those of changed products only),
/// never from the store's.
pub const BARCODES_OWNED_BY_OTHER_PRODUCTS: &str = "
    SELECT s.idx, b.barcode, p.external_id
    FROM staged_barcodes b
    CROSS JOIN staged_products s
    CROSS JOIN product_barcodes pb
    CROSS JOIN products p
    WHERE s.idx = b.idx AND pb.store_id = $1 AND pb.barcode = b.barcode
      AND p.store_id = $1 AND p.id = pb.product_id
      AND NOT s.skipped AND NOT s.barcodes_kept
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
    JOIN products p ON p.id = s.product_id AND +p.store_id = $1
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
    JOIN products p ON p.id = s.product_id AND +p.store_id = $1
    WHERE NOT s.skipped AND p.external_id IS NULL AND s.external_id IS NOT NULL";

/// Deletes the barcodes of matched products whose barcode set changes. Runs before the
/// products are updated, while `p.barcodes` still holds the old set.
pub const DELETE_REPLACED_BARCODES: &str = "
    DELETE FROM product_barcodes
    WHERE store_id = $1 AND product_id IN (
        SELECT p.id FROM staged_products s
        JOIN products p ON p.id = s.product_id AND +p.store_id = $1
        WHERE NOT s.skipped AND NOT s.unchanged AND NOT s.barcodes_kept
          AND s.barcodes IS NOT NULL AND s.barcodes IS DISTINCT FROM p.barcodes)";

/// The new barcode sets of those same products (all replaced sets were deleted first, so a
/// barcode moving between two of them collides with nothing).
pub const INSERT_REPLACEMENT_BARCODES: &str = "
    INSERT INTO product_barcodes (store_id, barcode, product_id)
    SELECT $1, b.barcode, s.product_id
    FROM staged_products s
    JOIN products p ON p.id = s.product_id AND +p.store_id = $1
    JOIN staged_barcodes b ON b.idx = s.idx
    WHERE NOT s.skipped AND NOT s.unchanged AND NOT s.barcodes_kept AND s.barcodes IS NOT NULL
      AND s.barcodes IS DISTINCT FROM p.barcodes";

/// Only rows whose stored data really changes are written, so the affected row count is
/// the `updated` count and a re-sync of unchanged data writes nothing. The unary `+` keeps
/// SQLite from driving the join from the store's index, which visits every product of the
/// store; it drives from the staged rows instead. An external-id sync never changes an
/// external id, and leaves it out of the `SET` list: SQLite then leaves the external-id
/// index alone instead of rewriting each updated product's entry in it.
pub static UPDATE_CHANGED_PRODUCTS: LazyLock<String> =
    LazyLock::new(|| update_changed_products(""));

/// As [`UPDATE_CHANGED_PRODUCTS`], for a barcode sync, which may give a product its first
/// external id (never another one).
pub static UPDATE_CHANGED_PRODUCTS_BY_BARCODE: LazyLock<String> = LazyLock::new(|| {
    update_changed_products("external_id = COALESCE(products.external_id, s.external_id),")
});

fn update_changed_products(set_external_id: &str) -> String {
    format!(
        "UPDATE products SET
            {set_external_id}
            barcodes  = COALESCE(s.barcodes, products.barcodes),
            in_stock  = COALESCE(s.in_stock, products.in_stock),
            price     = COALESCE(s.price, products.price),
            name      = COALESCE(s.name, products.name),
            unit_size = COALESCE(s.unit_size, products.unit_size),
            abv       = COALESCE(s.abv, products.abv),
            proof     = COALESCE(s.proof, products.proof),
            category  = COALESCE(s.category, products.category),
            updated_at = $2
         FROM staged_products s
         WHERE {}",
        changed_stored_products()
    )
}

/// The stored products (`products`) that their staged rows (`s`) change.
fn changed_stored_products() -> String {
    format!(
        "+products.store_id = $1 AND products.id = s.product_id
         AND NOT s.skipped AND NOT s.unchanged
         AND {}",
        differs("s", "products")
    )
}

/// Sets every product of the store that this sync did not list out of stock. The ids listed
/// one by one are built into one temporary index and probed; those listed by an unchanged
/// run are found in the run that starts at or before them (runs do not overlap: a stored
/// product found twice has them listed one by one). Runs before new products exist.
pub static CLEAR_UNLISTED_PRODUCTS: LazyLock<String> = LazyLock::new(|| {
    format!("UPDATE products SET in_stock = 0, updated_at = $2 WHERE {UNLISTED_IN_STOCK}")
});

/// The store's products this sync did not list, unless out of stock already.
const UNLISTED_IN_STOCK: &str = "
    products.store_id = $1
    AND (products.in_stock IS NULL OR products.in_stock <> 0)
    AND products.id NOT IN (SELECT product_id FROM staged_products WHERE product_id IS NOT NULL)
    AND NOT COALESCE((SELECT products.id < u.first_product_id + u.products
                      FROM staged_unchanged u
                      WHERE u.first_product_id <= products.id
                      ORDER BY u.first_product_id DESC LIMIT 1), FALSE)";

/// The id the next new product takes. The merge holds the write lock, so nobody else draws
/// ids meanwhile.
pub const NEXT_PRODUCT_ID: &str = "SELECT COALESCE(MAX(id), 0) + 1 FROM products";

/// Creates every staged product, when all are new, none was skipped and their positions
/// run from 0 without a gap: the product at position `idx` gets id `$3 + idx`. New products
/// enter the matching queue as pending (match_status 1).
pub const INSERT_STREAM_AS_NEW_PRODUCTS: &str = "
    INSERT INTO products (id, store_id, external_id, barcodes, in_stock, price, name,
                          unit_size, abv, proof, category, match_status, created_at, updated_at)
    SELECT $3 + s.idx, $1, s.external_id, s.barcodes, s.in_stock, s.price,
           s.name, s.unit_size, s.abv, s.proof, COALESCE(s.category, 0), 1, $2, $2
    FROM staged_products s
    ORDER BY s.idx";

/// The barcodes of the products [`INSERT_STREAM_AS_NEW_PRODUCTS`] created. `$2` = the first
/// id.
pub const INSERT_STREAM_BARCODES: &str = "
    INSERT INTO product_barcodes (store_id, barcode, product_id)
    SELECT $1, b.barcode, $2 + b.idx
    FROM staged_barcodes b";

/// Gives every new staged product its id, in stream order, and marks it created. The merge
/// holds the write lock, so nobody else draws ids meanwhile.
pub const ALLOCATE_NEW_PRODUCT_IDS: &str = "
    UPDATE staged_products
    SET product_id = (SELECT COALESCE(MAX(id), 0) FROM products) + numbered.n,
        created = TRUE
    FROM (SELECT idx, ROW_NUMBER() OVER (ORDER BY idx) AS n
          FROM staged_products
          WHERE product_id IS NULL AND NOT skipped) AS numbered
    WHERE staged_products.idx = numbered.idx";

/// New products enter the matching queue as pending (match_status 1).
pub const INSERT_NEW_PRODUCTS: &str = "
    INSERT INTO products (id, store_id, external_id, barcodes, in_stock, price, name,
                          unit_size, abv, proof, category, match_status, created_at, updated_at)
    SELECT s.product_id, $1, s.external_id, s.barcodes, s.in_stock, s.price,
           s.name, s.unit_size, s.abv, s.proof, COALESCE(s.category, 0), 1, $2, $2
    FROM staged_products s
    WHERE s.created
    ORDER BY s.idx";

/// The barcodes of the products created by this sync.
pub const INSERT_NEW_PRODUCT_BARCODES: &str = "
    INSERT INTO product_barcodes (store_id, barcode, product_id)
    SELECT $1, b.barcode, s.product_id
    FROM staged_products s
    JOIN staged_barcodes b ON b.idx = s.idx
    WHERE s.created";

/// Completes a sync's history run in the merge's own transaction: it says committed
/// exactly when the sync did. `$1` = the sync id, `$2` = when, `$3`..`$9` = counts,
/// `$10` = the request hash of an idempotency key, `$11` = the store.
pub const COMMIT_SYNC_RUN: &str = "
    UPDATE sync_runs SET outcome = 2, finished_at = $2, received = $3, created = $4,
        updated = $5, unchanged = $6, cleared = $7, linked = $8, rejected = $9,
        request_hash = $10
    WHERE store_id = $11 AND id = $1";
