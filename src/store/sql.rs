//! Every SQL statement of the service. Both backends run the same statements except where a
//! [`Dialect`] spells something its own way: how a price is stored (TEXT on SQLite, NUMERIC
//! on PostgreSQL) and how new product ids are drawn.
//!
//! A sync stages its products in two temporary tables of its own connection
//! (`staged_products`, `staged_barcodes`) and merges them into the live tables in one
//! transaction:
//! 1. resolve: each staged product learns the id of the live product it is (by external id or
//!    by barcodes), or stays unresolved if it is new. An external-id sync resolves while it
//!    stages and marks the products sent exactly as stored `unchanged`; those take no part
//!    in the checks and writes below (see `unchanged.rs`);
//! 2. check: conflicts with stored products refuse the whole sync;
//! 3. write: replaced barcodes, changed products, new products (with ids drawn in stream
//!    order), their barcodes, and the clear; each statement's row count is a count of the
//!    answer.
//!
//! Merge statements bind `$1` = store id; those that write a timestamp bind `$2` = the
//! sync's time; those that report conflicts bind their last parameter = how many.

use std::fmt::Write as _;
use std::sync::LazyLock;

/// What differs between the backends' SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// A stored price read as exact decimal text.
    fn price_as_text(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => column.to_owned(),
            Dialect::Postgres => format!("{column}::text"),
        }
    }

    /// Staged price text converted to the stored price type.
    fn text_as_price(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => column.to_owned(),
            Dialect::Postgres => format!("{column}::numeric"),
        }
    }

    /// The staging position: SQLite's rowid alias is its fastest key.
    fn staging_key(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INTEGER PRIMARY KEY",
            Dialect::Postgres => "BIGINT PRIMARY KEY",
        }
    }

    /// Creates the new products and their barcodes in one statement, where the backend can:
    /// the staged rows are not rewritten to carry the new ids.
    fn insert_new_products_with_barcodes(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            // New products enter the matching queue as pending (match_status 1); identity
            // values are drawn in stream order.
            Dialect::Postgres => Some(
                "WITH created AS (
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
                 FROM created WHERE barcodes IS NOT NULL",
            ),
        }
    }

    /// Indexes the staged products by their resolved live id, where the planner needs it.
    fn index_resolved_products(self) -> Option<&'static str> {
        match self {
            // Without it SQLite updates the live table row by row, scanning the staged
            // products for each: quadratic in the size of a re-sync.
            Dialect::Sqlite => Some(
                "CREATE INDEX staged_products_product_id ON staged_products (product_id)
                     WHERE NOT unchanged",
            ),
            // PostgreSQL hash-joins on it; an index would only cost.
            Dialect::Postgres => None,
        }
    }

    /// Deletes the barcodes of matched products whose barcode set changes. Runs before the
    /// products are updated, while `p.barcodes` still holds the old set.
    fn delete_replaced_barcodes(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "DELETE FROM product_barcodes
                 WHERE store_id = $1 AND product_id IN (
                     SELECT p.id FROM staged_products s
                     JOIN products p ON p.id = s.product_id
                     WHERE NOT s.skipped AND NOT s.unchanged AND s.barcodes IS NOT NULL
                       AND s.barcodes IS DISTINCT FROM p.barcodes)"
            }
            // By the old barcodes themselves: the table keeps no index on product_id here.
            Dialect::Postgres => {
                "DELETE FROM product_barcodes pb
                 USING (SELECT unnest(string_to_array(p.barcodes, ' ')) AS barcode
                        FROM staged_products s
                        JOIN products p ON p.id = s.product_id
                        WHERE NOT s.skipped AND NOT s.unchanged AND s.barcodes IS NOT NULL
                          AND s.barcodes IS DISTINCT FROM p.barcodes) AS replaced
                 WHERE pb.store_id = $1 AND pb.barcode = replaced.barcode"
            }
        }
    }

    /// Splits the barcodes of the products marked unchanged into `staged_barcodes` (they
    /// were left out while staging, and the marks are being dropped).
    fn stage_barcodes_of_unchanged(self) -> String {
        match self {
            Dialect::Sqlite => {
                format!("{SPLIT_STAGED_BARCODES_OF}unchanged{SPLIT_STAGED_BARCODES_END}")
            }
            Dialect::Postgres => "INSERT INTO staged_barcodes (idx, barcode)
                 SELECT idx, unnest(string_to_array(barcodes, ' ')) FROM staged_products
                 WHERE unchanged AND barcodes IS NOT NULL"
                .to_owned(),
        }
    }

    /// Whether staged product `staged` changes stored product `stored`: a field the POS
    /// leaves out changes nothing, a sent field that differs does, and so does a first
    /// external id (barcode sync). `unchanged.rs` states the same test in Rust.
    fn differs(self, staged: &str, stored: &str) -> String {
        let price = self.price_as_text(&format!("{stored}.price"));
        let mut test = format!(
            "(({staged}.external_id IS NOT NULL AND {stored}.external_id IS NULL) \
             OR ({staged}.price IS NOT NULL AND {staged}.price IS DISTINCT FROM {price})"
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

    /// Sets every product of the store that this sync did not list out of stock.
    fn clear_unlisted_products(self) -> &'static str {
        match self {
            // SQLite builds the listed ids into one temporary index and probes it.
            Dialect::Sqlite => {
                "UPDATE products SET in_stock = 0, updated_at = $2
                 WHERE store_id = $1
                   AND (in_stock IS NULL OR in_stock <> 0)
                   AND id NOT IN (SELECT product_id FROM staged_products
                                  WHERE product_id IS NOT NULL)"
            }
            // PostgreSQL runs NOT IN as a hashed subplan only while the ids fit in work_mem,
            // and otherwise rescans them for every product; an anti-join has no such cliff.
            Dialect::Postgres => {
                "UPDATE products SET in_stock = 0, updated_at = $2
                 WHERE store_id = $1
                   AND (in_stock IS NULL OR in_stock <> 0)
                   AND NOT EXISTS (SELECT 1 FROM staged_products s WHERE s.product_id = products.id)"
            }
        }
    }

    /// Indexes of the staging tables. SQLite joins by nested loops and needs them;
    /// PostgreSQL hash-joins, and maintaining them row by row during `COPY` only costs.
    fn staging_indexes(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "CREATE INDEX staged_barcodes_barcode ON staged_barcodes (barcode, idx);"
            }
            Dialect::Postgres => "",
        }
    }

    /// Gives every new staged product its id, in stream order, and marks it created.
    fn allocate_new_product_ids(self) -> &'static str {
        match self {
            // The merge holds SQLite's write lock, so nobody else draws ids meanwhile.
            Dialect::Sqlite => {
                "UPDATE staged_products
                 SET product_id = (SELECT COALESCE(MAX(id), 0) FROM products) + numbered.n,
                     created = TRUE
                 FROM (SELECT idx, ROW_NUMBER() OVER (ORDER BY idx) AS n
                       FROM staged_products
                       WHERE product_id IS NULL AND NOT skipped) AS numbered
                 WHERE staged_products.idx = numbered.idx"
            }
            // Ids come from the table's own sequence, so concurrent syncs of other stores
            // (which hold other row locks) never collide.
            Dialect::Postgres => {
                "UPDATE staged_products
                 SET product_id = drawn.id, created = TRUE
                 FROM (SELECT idx, nextval(pg_get_serial_sequence('products', 'id')) AS id
                       FROM (SELECT idx FROM staged_products
                             WHERE product_id IS NULL AND NOT skipped
                             ORDER BY idx) AS ordered) AS drawn
                 WHERE staged_products.idx = drawn.idx"
            }
        }
    }
}

/// The statements of one backend, built once.
pub(super) struct Statements {
    pub create_staging: String,
    pub select_product_by_id: String,
    pub select_product_by_external_id: String,
    pub select_product_by_barcode: String,
    pub select_products_page: String,
    pub select_pending_page: String,
    pub update_changed_products: String,
    pub insert_new_products: String,
    pub allocate_new_product_ids: &'static str,
    pub index_resolved_products: Option<&'static str>,
    pub insert_new_products_with_barcodes: Option<&'static str>,
    pub delete_replaced_barcodes: &'static str,
    pub stage_barcodes_of_unchanged: String,
    pub clear_unlisted_products: &'static str,
    /// See [`STAGED_BATCH`].
    pub stage_compared: String,
    /// The lookup of a batch's stored products on PostgreSQL: the columns of
    /// [`super::unchanged::StoredFields`] of store `$1`'s products whose external ids are in
    /// the array `$2`. (SQLite compares while it stages instead.)
    pub select_stored_fields: String,
}

pub(super) static SQLITE: LazyLock<Statements> = LazyLock::new(|| Statements::new(Dialect::Sqlite));
pub(super) static POSTGRES: LazyLock<Statements> =
    LazyLock::new(|| Statements::new(Dialect::Postgres));

pub(super) const DROP_STAGING: &str = "
    DROP TABLE IF EXISTS staged_products;
    DROP TABLE IF EXISTS staged_barcodes;
";

pub(super) const STAGED_PRODUCT_COLUMNS: &str = "staged_products (idx, external_id, barcodes, in_stock, price, name, unit_size, abv, proof, category, skipped, product_id, unchanged)";

pub(super) const STAGED_BARCODE_COLUMNS: &str = "staged_barcodes (idx, barcode)";

/// SQLite stages a batch of a store that has products by joining it with them as it
/// inserts (see `unchanged.rs`): `WITH batch (…) AS (VALUES …)` and then
/// [`Statements::stage_compared`], followed by the bound store id.
pub(super) const STAGED_BATCH: &str = "WITH batch (idx, external_id, barcodes, in_stock, price, name, unit_size, abv, proof, category, skipped) AS (";

/// SQLite splits the barcode lists of staged products into `staged_barcodes`, for the
/// products that meet a condition written between these two (`barcodes` is the
/// space-separated list the product was staged with).
pub(super) const SPLIT_STAGED_BARCODES_OF: &str = "
    WITH RECURSIVE split (idx, barcode, rest) AS (
        SELECT idx, '', barcodes || ' ' FROM staged_products
        WHERE barcodes IS NOT NULL AND ";
pub(super) const SPLIT_STAGED_BARCODES_END: &str = "
        UNION ALL
        SELECT idx, substr(rest, 1, instr(rest, ' ') - 1), substr(rest, instr(rest, ' ') + 1)
        FROM split WHERE rest <> '')
    INSERT INTO staged_barcodes (idx, barcode)
    SELECT idx, barcode FROM split WHERE barcode <> ''";

// ---- checks of the batch alone, before the merge; `$1` = how many to report ----

/// Later products of the batch whose external id an earlier product already used.
/// Grouped rather than probed per row, so no staging index is needed for it.
pub(super) const DUPLICATE_EXTERNAL_IDS: &str = "
    SELECT s.idx, s.external_id, repeated.first_idx
    FROM staged_products s
    JOIN (SELECT external_id, MIN(idx) AS first_idx
          FROM staged_products
          GROUP BY external_id
          HAVING COUNT(*) > 1) AS repeated ON repeated.external_id = s.external_id
    WHERE NOT s.skipped AND s.idx > repeated.first_idx
    ORDER BY s.idx
    LIMIT $1";

/// Later products of the batch that carry a barcode an earlier product already carries.
pub(super) const BARCODES_SHARED_IN_BATCH: &str = "
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

// ---- the merge ----

/// Rejects a staged product (skip_invalid): it writes nothing, and neither do its barcodes.
/// `$1` = its position.
pub(super) const SKIP_STAGED_PRODUCT: &str =
    "UPDATE staged_products SET skipped = TRUE, barcodes = NULL WHERE idx = $1";
pub(super) const DROP_SKIPPED_BARCODES: &str = "DELETE FROM staged_barcodes WHERE idx = $1";

/// Registers the store; the merge's first write, which also serializes syncs of one store.
pub(super) const ENSURE_STORE: &str =
    "INSERT INTO stores (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";

/// Holds the store's row until commit, so two syncs of one store never interleave, on any
/// replica, and reads its sync generation. A plain row lock: portable to distributed
/// PostgreSQL-compatible engines.
pub(super) const LOCK_STORE: &str = "SELECT sync_generation FROM stores WHERE id = $1 FOR UPDATE";

/// The store's sync generation, and whether it has products at all. Read when an upload
/// begins; a store that is missing is at generation 0 and empty.
pub(super) const STAGING_START: &str = "
    SELECT s.sync_generation, EXISTS (SELECT 1 FROM products p WHERE p.store_id = s.id)
    FROM stores s WHERE s.id = $1";

/// The store's sync generation, read under SQLite's write lock.
pub(super) const SYNC_GENERATION: &str = "SELECT sync_generation FROM stores WHERE id = $1";

/// Counts a sync that wrote to the store's products.
pub(super) const ADVANCE_SYNC_GENERATION: &str =
    "UPDATE stores SET sync_generation = sync_generation + 1 WHERE id = $1";

/// Forgets a store's idempotency key committed before `$3`: its retention is over.
/// `$2` = the key.
pub(super) const FORGET_EXPIRED_IDEMPOTENCY_KEY: &str = "
    UPDATE sync_runs SET idempotency_key = NULL
    WHERE store_id = $1 AND idempotency_key = $2 AND outcome = 2 AND finished_at < $3";

/// The committed run of a store's idempotency key, and the hash of what it sent.
pub(super) const COMMITTED_RUN_OF_IDEMPOTENCY_KEY: &str = "
    SELECT id, request_hash FROM sync_runs
    WHERE store_id = $1 AND idempotency_key = $2 AND outcome = 2";

/// Completes a sync's history run in the merge's own transaction: it says committed
/// exactly when the sync did. `$1` = the sync id, `$2` = when, `$3`..`$9` = counts,
/// `$10` = the request hash of an idempotency key.
pub(super) const COMMIT_SYNC_RUN: &str = "
    UPDATE sync_runs SET outcome = 2, finished_at = $2, received = $3, created = $4,
        updated = $5, unchanged = $6, cleared = $7, linked = $8, rejected = $9,
        request_hash = $10
    WHERE id = $1";

/// Another sync wrote to the store while this one uploaded: the unchanged marks may be
/// stale, so every product is checked again.
pub(super) const FORGET_UNCHANGED: &str =
    "UPDATE staged_products SET unchanged = FALSE WHERE unchanged";

/// External-id sync: a staged product is the live product with its external id.
pub(super) const RESOLVE_BY_EXTERNAL_ID: &str = "
    UPDATE staged_products SET product_id = p.id
    FROM products p
    WHERE p.store_id = $1 AND p.external_id = staged_products.external_id
      AND staged_products.product_id IS NULL";

/// Barcode sync: a staged product is the live product that owns one of its barcodes (the
/// lowest id, should they point at several: that is refused by the checks below).
pub(super) const RESOLVE_BY_BARCODES: &str = "
    UPDATE staged_products SET product_id = owners.product_id
    FROM (SELECT b.idx, MIN(pb.product_id) AS product_id
          FROM staged_barcodes b
          JOIN product_barcodes pb ON pb.store_id = $1 AND pb.barcode = b.barcode
          GROUP BY b.idx) AS owners
    WHERE staged_products.idx = owners.idx";

/// External-id sync: a staged barcode owned by another stored product that keeps its
/// barcodes through this sync. Rows: (idx, barcode, owner's external id). SQLite joins in
/// the order written with CROSS JOIN: from the staged barcodes (those of changed products
/// only), never from the store's.
pub(super) const BARCODES_OWNED_BY_OTHER_PRODUCTS: &str = "
    SELECT s.idx, b.barcode, p.external_id
    FROM staged_barcodes b
    CROSS JOIN staged_products s
    CROSS JOIN product_barcodes pb
    CROSS JOIN products p
    WHERE s.idx = b.idx AND pb.store_id = $1 AND pb.barcode = b.barcode AND p.id = pb.product_id
      AND NOT s.skipped
      AND (s.product_id IS NULL OR pb.product_id <> s.product_id)
      AND NOT EXISTS (
          SELECT 1 FROM staged_products o
          WHERE o.product_id = pb.product_id AND o.barcodes IS NOT NULL AND NOT o.unchanged)
    ORDER BY s.idx, b.barcode
    LIMIT $2";

/// Barcode sync: products whose barcodes belong to several stored products.
/// Rows: (idx, how many stored products).
pub(super) const BARCODES_OF_SEVERAL_PRODUCTS: &str = "
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
pub(super) const SAME_STORED_PRODUCT_TWICE: &str = "
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
/// Rows: (idx, sent external id, stored external id).
pub(super) const EXTERNAL_ID_MISMATCHES: &str = "
    SELECT s.idx, s.external_id, p.external_id
    FROM staged_products s
    JOIN products p ON p.id = s.product_id
    WHERE NOT s.skipped AND s.external_id IS NOT NULL AND p.external_id IS NOT NULL
      AND p.external_id <> s.external_id
    ORDER BY s.idx
    LIMIT $1";

/// Barcode sync: external ids that belong to a stored product other than the match.
/// Rows: (idx, external id).
pub(super) const EXTERNAL_IDS_OF_OTHER_PRODUCTS: &str = "
    SELECT s.idx, s.external_id
    FROM staged_products s
    JOIN products p ON p.store_id = $1 AND p.external_id = s.external_id
    WHERE NOT s.skipped AND (s.product_id IS NULL OR p.id <> s.product_id)
    ORDER BY s.idx
    LIMIT $2";

/// Barcode sync: matched products without an external id that get one now.
pub(super) const COUNT_LINKS: &str = "
    SELECT COUNT(*)
    FROM staged_products s
    JOIN products p ON p.id = s.product_id
    WHERE NOT s.skipped AND p.external_id IS NULL AND s.external_id IS NOT NULL";

/// The new barcode sets of those same products (all replaced sets were deleted first, so a
/// barcode moving between two of them collides with nothing).
pub(super) const INSERT_REPLACEMENT_BARCODES: &str = "
    INSERT INTO product_barcodes (store_id, barcode, product_id)
    SELECT $1, b.barcode, s.product_id
    FROM staged_products s
    JOIN products p ON p.id = s.product_id
    JOIN staged_barcodes b ON b.idx = s.idx
    WHERE NOT s.skipped AND NOT s.unchanged AND s.barcodes IS NOT NULL
      AND s.barcodes IS DISTINCT FROM p.barcodes";

/// How many products this sync creates.
pub(super) const COUNT_NEW_PRODUCTS: &str =
    "SELECT COUNT(*) FROM staged_products WHERE product_id IS NULL AND NOT skipped";

/// The barcodes of the products created by this sync.
pub(super) const INSERT_NEW_PRODUCT_BARCODES: &str = "
    INSERT INTO product_barcodes (store_id, barcode, product_id)
    SELECT $1, b.barcode, s.product_id
    FROM staged_products s
    JOIN staged_barcodes b ON b.idx = s.idx
    WHERE s.created";

/// The store's products in stock before the sync: the base of the mass-clear guard.
pub(super) const COUNT_IN_STOCK: &str =
    "SELECT COUNT(*) FROM products WHERE store_id = $1 AND in_stock > 0";

// ---- the matching queue; `$1` = product id ----

/// PENDING -> IN_PROGRESS. `$2` = who claims it (a token's name), `$3` = when, `$4` = the
/// claiming token's id.
pub(super) const CLAIM: &str = "
    UPDATE products SET match_status = 2, claimed_by = $2, claimed_at = $3, claimed_by_token = $4
    WHERE id = $1 AND match_status = 1";

/// PENDING or IN_PROGRESS -> COMPLETE. `$2`..`$6` = the catalog item, `$7` = when, `$8` =
/// who matched it (a token's name), `$9` = that token's id, `$10` = the token an in-progress
/// product must be claimed by (NULL: any, for an admin).
pub(super) const COMPLETE: &str = "
    UPDATE products SET match_status = 3,
        catalog_item_id = $2, catalog_kind = $3, catalog_name = $4,
        catalog_vintage = $5, catalog_producer = $6, updated_at = $7,
        claimed_by = $8, claimed_by_token = $9
    WHERE id = $1
      AND (match_status = 1
           OR (match_status = 2 AND ($10 IS NULL OR claimed_by_token = $10)))";

/// IN_PROGRESS -> PENDING. `$2` = the token it must be claimed by (NULL: any, for an admin).
pub(super) const RELEASE: &str = "
    UPDATE products SET match_status = 1, claimed_by = NULL, claimed_at = NULL,
        claimed_by_token = NULL
    WHERE id = $1 AND match_status = 2 AND ($2 IS NULL OR claimed_by_token = $2)";

/// Whether any claim was made before `$1`: read first, so that no write (which on SQLite
/// waits for a running merge) is made when there is nothing to expire.
pub(super) const ANY_CLAIM_EXPIRED: &str = "
    SELECT COUNT(*) FROM products WHERE match_status = 2 AND claimed_at < $1";

/// Claims made before `$1` expire: their products are pending again.
pub(super) const EXPIRE_CLAIMS: &str = "
    UPDATE products SET match_status = 1, claimed_by = NULL, claimed_at = NULL,
        claimed_by_token = NULL
    WHERE match_status = 2 AND claimed_at < $1";

impl Statements {
    fn new(dialect: Dialect) -> Self {
        let product_columns = format!(
            "p.id, p.store_id, p.external_id, p.barcodes, p.in_stock, {price} AS price, p.name, \
             p.unit_size, p.abv, p.proof, p.category, p.match_status, p.claimed_by, p.claimed_by_token, \
             p.catalog_item_id, p.catalog_kind, p.catalog_name, p.catalog_vintage, \
             p.catalog_producer, p.created_at, p.updated_at",
            price = dialect.price_as_text("p.price"),
        );
        let staged_price = dialect.text_as_price("s.price");

        Statements {
            create_staging: format!(
                "DROP TABLE IF EXISTS staged_products;
                 DROP TABLE IF EXISTS staged_barcodes;
                 CREATE TEMPORARY TABLE staged_products (
                     idx         {key},
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
                     -- Sent exactly as stored, as of the sync generation read when the
                     -- upload began (see `unchanged.rs`): no check or write needs it.
                     unchanged   BOOLEAN NOT NULL DEFAULT FALSE,
                     -- Rejected (skip_invalid): it writes nothing, but its key counts as
                     -- listed, so a clear never zeroes a product for a bad copy of it.
                     skipped     BOOLEAN NOT NULL DEFAULT FALSE
                 );
                 CREATE TEMPORARY TABLE staged_barcodes (
                     idx     BIGINT NOT NULL,
                     barcode TEXT   NOT NULL
                 );
                 {indexes}",
                key = dialect.staging_key(),
                indexes = dialect.staging_indexes(),
            ),
            select_product_by_id: format!(
                "SELECT {product_columns} FROM products p WHERE p.id = $1"
            ),
            select_product_by_external_id: format!(
                "SELECT {product_columns} FROM products p WHERE p.store_id = $1 AND p.external_id = $2"
            ),
            select_product_by_barcode: format!(
                "SELECT {product_columns} FROM product_barcodes b \
                 JOIN products p ON p.id = b.product_id \
                 WHERE b.store_id = $1 AND b.barcode = $2"
            ),
            // $2 = last id of the previous page, $3 = match status (0 = any), $4 = in stock
            // only, $5 = updated since (NULL = any time), $6 = page size.
            select_products_page: format!(
                "SELECT {product_columns} FROM products p \
                 WHERE p.store_id = $1 AND p.id > $2 \
                   AND ($3 = 0 OR p.match_status = $3) \
                   AND ($4 = FALSE OR p.in_stock > 0) \
                   AND ($5 IS NULL OR p.updated_at >= $5) \
                 ORDER BY p.id LIMIT $6"
            ),
            // $1 = last id of the previous page, $2 = the highest status wanted (1 = pending
            // only, 2 = in progress too), $3 = store (0 = any), $4 = category (0 = any),
            // $5 = page size. Oldest first: ids grow with creation.
            select_pending_page: format!(
                "SELECT {product_columns} FROM products p \
                 WHERE p.match_status BETWEEN 1 AND $2 AND p.id > $1 \
                   AND ($3 = 0 OR p.store_id = $3) \
                   AND ($4 = 0 OR p.category = $4) \
                 ORDER BY p.id LIMIT $5"
            ),
            // Only rows whose stored data really changes are written, so the affected row
            // count is the `updated` count and a re-sync of unchanged data writes nothing.
            // A barcode sync may give a product its first external id (never another one).
            // The unary `+` keeps SQLite from driving the join from the store's index, which
            // visits every product of the store; it drives from the staged rows instead.
            update_changed_products: format!(
                "UPDATE products SET
                    external_id = COALESCE(products.external_id, s.external_id),
                    barcodes  = COALESCE(s.barcodes, products.barcodes),
                    in_stock  = COALESCE(s.in_stock, products.in_stock),
                    price     = COALESCE({staged_price}, products.price),
                    name      = COALESCE(s.name, products.name),
                    unit_size = COALESCE(s.unit_size, products.unit_size),
                    abv       = COALESCE(s.abv, products.abv),
                    proof     = COALESCE(s.proof, products.proof),
                    category  = COALESCE(s.category, products.category),
                    updated_at = $2
                 FROM staged_products s
                 WHERE +products.store_id = $1 AND products.id = s.product_id
                   AND NOT s.skipped AND NOT s.unchanged
                   AND {differs}",
                differs = dialect.differs("s", "products"),
            ),
            // New products enter the matching queue as pending (match_status 1).
            insert_new_products: format!(
                "INSERT INTO products (id, store_id, external_id, barcodes, in_stock, price, name,
                                       unit_size, abv, proof, category, match_status,
                                       created_at, updated_at)
                 SELECT s.product_id, $1, s.external_id, s.barcodes, s.in_stock, {staged_price},
                        s.name, s.unit_size, s.abv, s.proof, COALESCE(s.category, 0), 1, $2, $2
                 FROM staged_products s
                 WHERE s.created
                 ORDER BY s.idx"
            ),
            allocate_new_product_ids: dialect.allocate_new_product_ids(),
            index_resolved_products: dialect.index_resolved_products(),
            insert_new_products_with_barcodes: dialect.insert_new_products_with_barcodes(),
            delete_replaced_barcodes: dialect.delete_replaced_barcodes(),
            stage_barcodes_of_unchanged: dialect.stage_barcodes_of_unchanged(),
            clear_unlisted_products: dialect.clear_unlisted_products(),
            stage_compared: format!(
                ")
                 INSERT INTO {STAGED_PRODUCT_COLUMNS}
                 SELECT s.idx, s.external_id, s.barcodes, s.in_stock, s.price, s.name,
                        s.unit_size, s.abv, s.proof, s.category, s.skipped, p.id,
                        p.id IS NOT NULL AND NOT s.skipped AND NOT {differs}
                 FROM batch s
                 LEFT JOIN products p ON p.external_id = s.external_id AND p.store_id = ",
                differs = dialect.differs("s", "p"),
            ),
            // Joined to the sent ids rather than filtered by `= ANY`: the join probes the
            // (store_id, external_id) index whatever the statistics say, while the filter,
            // on a table not analyzed since a big sync, is planned as a scan of the store.
            select_stored_fields: format!(
                "SELECT p.id, p.external_id, p.barcodes, p.in_stock, {price} AS price, p.name, \
                 p.unit_size, p.abv, p.proof, p.category \
                 FROM UNNEST($2::text[]) AS sent (external_id) \
                 JOIN products p ON p.store_id = $1 AND p.external_id = sent.external_id",
                price = dialect.price_as_text("p.price"),
            ),
        }
    }
}
