-- Every primary and unique key of a table of store data includes store_id, as a
-- distributed engine requires of its distribution column (Citus) and PostgreSQL of a
-- partitioned table's partition key: a product is (store_id, id), a sync run
-- (store_id, id). Each new key serves what the index it replaces did (a store's products
-- or runs in id order).
ALTER TABLE products DROP CONSTRAINT products_pkey;
ALTER TABLE products ADD PRIMARY KEY (store_id, id);
DROP INDEX products_store_id;
-- A product asked for by its id alone (a queue call that does not name the store) is
-- found through this one; each shard or partition answers for its own rows.
CREATE INDEX products_id ON products (id);

ALTER TABLE sync_runs DROP CONSTRAINT sync_runs_pkey;
ALTER TABLE sync_runs ADD PRIMARY KEY (store_id, id);
DROP INDEX sync_runs_store;
