//! Every SQL statement of the service. Both backends run the same statements; the only
//! difference is how a price is stored (TEXT on SQLite, NUMERIC on PostgreSQL), which each
//! statement spells through its backend's [`Dialect`].
//!
//! A sync stages its products in two temporary tables of its own connection
//! (`staged_products`, `staged_barcodes`) and then merges them into the live tables in one
//! transaction. Merge statements bind `$1` = store id and, where they write a timestamp,
//! `$2` = the sync's time.

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
}

/// The statements of one backend, built once.
pub(super) struct Statements {
    pub select_product_by_external_id: String,
    pub select_product_by_barcode: String,
    pub select_products_page: String,
    pub stored_barcode_conflicts: String,
    pub delete_replaced_barcodes: String,
    pub update_changed_products: String,
    pub insert_new_products: String,
    pub insert_missing_barcodes: String,
    pub clear_unlisted_products: String,
}

pub(super) static SQLITE: LazyLock<Statements> = LazyLock::new(|| Statements::new(Dialect::Sqlite));
pub(super) static POSTGRES: LazyLock<Statements> =
    LazyLock::new(|| Statements::new(Dialect::Postgres));

/// Temporary staging tables of one sync; they live on the sync's own connection, so
/// staging takes no lock on the live tables and vanishes with the connection.
pub(super) const CREATE_STAGING: &str = "
    DROP TABLE IF EXISTS staged_products;
    DROP TABLE IF EXISTS staged_barcodes;
    CREATE TEMPORARY TABLE staged_products (
        idx         BIGINT PRIMARY KEY,
        external_id TEXT NOT NULL,
        barcodes    TEXT,
        in_stock    BIGINT,
        price       TEXT,
        name        TEXT,
        unit_size   TEXT,
        abv         DOUBLE PRECISION,
        proof       DOUBLE PRECISION,
        category    INTEGER
    );
    CREATE INDEX staged_products_external_id ON staged_products (external_id);
    CREATE TEMPORARY TABLE staged_barcodes (
        idx     BIGINT NOT NULL,
        barcode TEXT   NOT NULL
    );
    CREATE INDEX staged_barcodes_barcode ON staged_barcodes (barcode, idx);
";

pub(super) const DROP_STAGING: &str = "
    DROP TABLE IF EXISTS staged_products;
    DROP TABLE IF EXISTS staged_barcodes;
";

pub(super) const STAGED_PRODUCT_COLUMNS: &str = "staged_products (idx, external_id, barcodes, in_stock, price, name, unit_size, abv, proof, category)";

pub(super) const STAGED_BARCODE_COLUMNS: &str = "staged_barcodes (idx, barcode)";

/// Later products of the batch whose external id an earlier product already used;
/// `$1` = how many to report.
pub(super) const DUPLICATE_EXTERNAL_IDS: &str = "
    SELECT s.idx, s.external_id,
           (SELECT MIN(f.idx) FROM staged_products f WHERE f.external_id = s.external_id) AS first_idx
    FROM staged_products s
    WHERE EXISTS (SELECT 1 FROM staged_products d WHERE d.external_id = s.external_id AND d.idx < s.idx)
    ORDER BY s.idx
    LIMIT $1";

/// Later products of the batch that carry a barcode an earlier product already carries;
/// `$1` = how many to report.
pub(super) const BARCODES_SHARED_IN_BATCH: &str = "
    SELECT b.idx, b.barcode,
           (SELECT MIN(f.idx) FROM staged_barcodes f WHERE f.barcode = b.barcode) AS first_idx
    FROM staged_barcodes b
    WHERE EXISTS (SELECT 1 FROM staged_barcodes d WHERE d.barcode = b.barcode AND d.idx < b.idx)
    ORDER BY b.idx, b.barcode
    LIMIT $1";

/// Registers the store; the merge's first write, which also serializes syncs of one store.
pub(super) const ENSURE_STORE: &str =
    "INSERT INTO stores (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";

/// Holds the store's row until commit, so two syncs of one store never interleave, on any
/// replica. A plain row lock: portable to distributed PostgreSQL-compatible engines.
pub(super) const LOCK_STORE: &str = "SELECT id FROM stores WHERE id = $1 FOR UPDATE";

impl Statements {
    fn new(dialect: Dialect) -> Self {
        let product_columns = format!(
            "p.id, p.store_id, p.external_id, p.barcodes, p.in_stock, {price} AS price, p.name, \
             p.unit_size, p.abv, p.proof, p.category, p.match_status, p.catalog_item_id, \
             p.catalog_kind, p.catalog_name, p.catalog_vintage, p.catalog_producer, \
             p.created_at, p.updated_at",
            price = dialect.price_as_text("p.price"),
        );
        let staged_price = dialect.text_as_price("s.price");
        let stored_price_text = dialect.price_as_text("products.price");

        Statements {
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
            // A staged barcode already owned by another stored product of the store that
            // keeps its barcodes through this sync. `$2` = how many to report.
            stored_barcode_conflicts: "
                SELECT s.idx, b.barcode, p.external_id
                FROM staged_barcodes b
                JOIN staged_products s ON s.idx = b.idx
                JOIN product_barcodes pb ON pb.store_id = $1 AND pb.barcode = b.barcode
                JOIN products p ON p.id = pb.product_id
                WHERE (p.external_id IS NULL OR p.external_id <> s.external_id)
                  AND NOT EXISTS (
                      SELECT 1 FROM staged_products o
                      WHERE o.external_id = p.external_id AND o.barcodes IS NOT NULL)
                ORDER BY s.idx, b.barcode
                LIMIT $2"
                .to_owned(),
            // Runs before the products are updated, while `p.barcodes` still holds the old set.
            delete_replaced_barcodes: "
                DELETE FROM product_barcodes
                WHERE store_id = $1 AND product_id IN (
                    SELECT p.id FROM staged_products s
                    JOIN products p ON p.store_id = $1 AND p.external_id = s.external_id
                    WHERE s.barcodes IS NOT NULL AND s.barcodes IS DISTINCT FROM p.barcodes)"
                .to_owned(),
            // Only rows whose stored data really changes are written, so the affected row
            // count is the `updated` count and a re-sync of unchanged data writes nothing.
            update_changed_products: format!(
                "UPDATE products SET
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
                 WHERE products.store_id = $1 AND products.external_id = s.external_id
                   AND (   (s.barcodes  IS NOT NULL AND s.barcodes  IS DISTINCT FROM products.barcodes)
                        OR (s.in_stock  IS NOT NULL AND s.in_stock  IS DISTINCT FROM products.in_stock)
                        OR (s.price     IS NOT NULL AND s.price     IS DISTINCT FROM {stored_price_text})
                        OR (s.name      IS NOT NULL AND s.name      IS DISTINCT FROM products.name)
                        OR (s.unit_size IS NOT NULL AND s.unit_size IS DISTINCT FROM products.unit_size)
                        OR (s.abv       IS NOT NULL AND s.abv       IS DISTINCT FROM products.abv)
                        OR (s.proof     IS NOT NULL AND s.proof     IS DISTINCT FROM products.proof)
                        OR (s.category  IS NOT NULL AND s.category  IS DISTINCT FROM products.category))"
            ),
            // New products enter the matching queue as pending (match_status 1), in stream order.
            insert_new_products: format!(
                "INSERT INTO products (store_id, external_id, barcodes, in_stock, price, name,
                                       unit_size, abv, proof, category, match_status,
                                       created_at, updated_at)
                 SELECT $1, s.external_id, s.barcodes, s.in_stock, {staged_price}, s.name,
                        s.unit_size, s.abv, s.proof, COALESCE(s.category, 0), 1, $2, $2
                 FROM staged_products s
                 WHERE NOT EXISTS (
                     SELECT 1 FROM products p WHERE p.store_id = $1 AND p.external_id = s.external_id)
                 ORDER BY s.idx"
            ),
            // After the replaced barcodes were deleted, a staged barcode still present in the
            // store can only belong to the same product (conflicts were refused before), so
            // inserting the missing ones completes every product's set.
            insert_missing_barcodes: "
                INSERT INTO product_barcodes (store_id, barcode, product_id)
                SELECT $1, b.barcode, p.id
                FROM staged_barcodes b
                JOIN staged_products s ON s.idx = b.idx
                JOIN products p ON p.store_id = $1 AND p.external_id = s.external_id
                WHERE NOT EXISTS (
                    SELECT 1 FROM product_barcodes pb WHERE pb.store_id = $1 AND pb.barcode = b.barcode)"
                .to_owned(),
            clear_unlisted_products: "
                UPDATE products SET in_stock = 0, updated_at = $2
                WHERE store_id = $1
                  AND (in_stock IS NULL OR in_stock <> 0)
                  AND (external_id IS NULL OR NOT EXISTS (
                      SELECT 1 FROM staged_products s WHERE s.external_id = products.external_id))"
                .to_owned(),
        }
    }
}
