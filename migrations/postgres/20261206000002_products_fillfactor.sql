-- A re-sync mostly changes stock and prices, never an indexed column (id, store_id,
-- external_id, match_status). With room left on each page, PostgreSQL writes such an update
-- as a heap-only tuple beside the old one and touches none of the four indexes; on full
-- pages every changed product adds an entry to each index. 10% free holds about five
-- updated rows of a page between vacuums. Applies to pages written from now on.
ALTER TABLE products SET (fillfactor = 90);
