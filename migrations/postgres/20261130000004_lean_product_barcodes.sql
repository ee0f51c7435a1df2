-- A sync finds the barcodes it replaces through products.barcodes, by (store_id, barcode),
-- so the product_id index is not needed; its upkeep and the per-row foreign key check were
-- a large share of a bulk sync's writes. Products are never deleted, and the service writes
-- both tables in the same transactions, so every product_id still names a product.
ALTER TABLE product_barcodes DROP CONSTRAINT product_barcodes_product_id_fkey;
DROP INDEX product_barcodes_product;
