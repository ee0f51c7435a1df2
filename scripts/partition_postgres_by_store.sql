-- Hash-partitions the tables of store data by store, four partitions each, in a database the
-- service has migrated and that holds no store data yet:
--   psql -v ON_ERROR_STOP=1 -d DATABASE -f scripts/partition_postgres_by_store.sql
-- Each table keeps its columns, defaults, checks and indexes (every unique one includes the
-- store, so each is checked within one partition); products' ids come from a sequence, as a
-- partitioned table of PostgreSQL 15 takes no identity column. The tests run the PostgreSQL
-- suite on this layout (TEST_POSTGRES_LAYOUT=partitioned) and check that every statement of a
-- sync and of a read touches one partition.
BEGIN;

DO $$
DECLARE
    store_data CONSTANT text[][] := ARRAY[
        ARRAY['stores', 'id'],
        ARRAY['products', 'store_id'],
        ARRAY['product_barcodes', 'store_id'],
        ARRAY['sync_runs', 'store_id']];
    entry text[];
    holds_rows boolean;
BEGIN
    FOREACH entry SLICE 1 IN ARRAY store_data LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', entry[1]) INTO holds_rows;
        IF holds_rows THEN
            RAISE EXCEPTION '% holds rows: partition a database before it holds store data',
                entry[1];
        END IF;
        EXECUTE format(
            'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                 INCLUDING INDEXES INCLUDING STORAGE INCLUDING COMMENTS)
             PARTITION BY HASH (%I)',
            entry[1] || '_by_store', entry[1], entry[2]);
        FOR remainder IN 0..3 LOOP
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF %I FOR VALUES WITH (MODULUS 4, REMAINDER %s)',
                entry[1] || '_p' || remainder, entry[1] || '_by_store', remainder);
        END LOOP;
    END LOOP;
END $$;

DROP TABLE products, product_barcodes, sync_runs, stores;
ALTER TABLE stores_by_store RENAME TO stores;
ALTER TABLE products_by_store RENAME TO products;
ALTER TABLE product_barcodes_by_store RENAME TO product_barcodes;
ALTER TABLE sync_runs_by_store RENAME TO sync_runs;

CREATE SEQUENCE products_id_seq OWNED BY products.id;
ALTER TABLE products ALTER COLUMN id SET DEFAULT nextval('products_id_seq');
ALTER TABLE products ADD FOREIGN KEY (store_id) REFERENCES stores (id);
-- As migrations/postgres/20261206000002_products_fillfactor.sql: room for heap-only updates.
ALTER TABLE products_p0 SET (fillfactor = 90);
ALTER TABLE products_p1 SET (fillfactor = 90);
ALTER TABLE products_p2 SET (fillfactor = 90);
ALTER TABLE products_p3 SET (fillfactor = 90);

COMMIT;
