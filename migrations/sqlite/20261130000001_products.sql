-- Stores and their products, as the POS reports them.
-- Timestamps are microseconds since the Unix epoch (UTC), the same on every backend.

CREATE TABLE stores (
    id         INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE products (
    id               INTEGER PRIMARY KEY,
    store_id         INTEGER NOT NULL REFERENCES stores (id),
    -- NULL for products created by the legacy barcode sync without an external id.
    external_id      TEXT,
    -- The product's barcodes, sorted and joined by single spaces (barcodes hold no
    -- whitespace); NULL when it has none. product_barcodes holds the same barcodes one
    -- row each, for uniqueness and lookup; this copy makes change detection one comparison.
    barcodes         TEXT,
    in_stock         INTEGER,
    -- Exact decimal text as the POS sent it, e.g. '12.99'.
    price            TEXT,
    name             TEXT,
    unit_size        TEXT,
    abv              REAL,
    proof            REAL,
    category         INTEGER NOT NULL DEFAULT 0,
    match_status     INTEGER NOT NULL DEFAULT 1,
    catalog_item_id  INTEGER,
    catalog_kind     INTEGER,
    catalog_name     TEXT,
    catalog_vintage  TEXT,
    catalog_producer TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);

CREATE UNIQUE INDEX products_store_external_id ON products (store_id, external_id);

CREATE TABLE product_barcodes (
    store_id   INTEGER NOT NULL,
    barcode    TEXT    NOT NULL,
    product_id INTEGER NOT NULL REFERENCES products (id),
    PRIMARY KEY (store_id, barcode)
) WITHOUT ROWID;

CREATE INDEX product_barcodes_product ON product_barcodes (product_id);

-- Listing a store's products in id order, page by page.
CREATE INDEX products_store_id ON products (store_id, id);
