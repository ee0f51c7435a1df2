-- A re-sync stages the products it finds unchanged without their values. Should another
-- sync of the store commit during its upload, it needs them back: each merge that runs
-- while another sync of its store is running first records the products it is about to
-- write as they were (tagged with the generation it will make), and the overtaken sync
-- takes each product's values from the first record made after its lookup, or from the
-- product itself if none was. Emptied by the first merge of the store that runs alone.
CREATE TABLE product_preimages (
    store_id   INTEGER NOT NULL,
    product_id INTEGER NOT NULL,
    generation BIGINT  NOT NULL,
    barcodes   TEXT,
    in_stock   INTEGER,
    price      TEXT,
    name       TEXT,
    unit_size  TEXT,
    abv        REAL,
    proof      REAL,
    category   INTEGER NOT NULL,
    PRIMARY KEY (store_id, product_id, generation)
) WITHOUT ROWID;
