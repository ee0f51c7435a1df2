-- The catalog team's matching queue: who is working on a product, and the queue itself
-- (pending products oldest first, across every store).

ALTER TABLE products ADD COLUMN claimed_by TEXT;
ALTER TABLE products ADD COLUMN claimed_at BIGINT;

CREATE INDEX products_match_queue ON products (match_status, id);
