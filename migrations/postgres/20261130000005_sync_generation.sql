-- Counts the committed syncs that wrote to a store's products. A sync reads it before it
-- compares its products with the stored ones while uploading; if it is unchanged when the
-- sync takes the store's lock, no other sync wrote in between, and those comparisons hold.
ALTER TABLE stores ADD COLUMN sync_generation BIGINT NOT NULL DEFAULT 0;
