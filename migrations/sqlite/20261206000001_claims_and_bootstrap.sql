-- A claim belongs to the token that made it: only that token (or an admin) may release or
-- complete it.
ALTER TABLE products ADD COLUMN claimed_by_token BIGINT;

-- The first admin token is created once per database, by whichever server starts first:
-- the row that says so is inserted in the same transaction as the token, and a second
-- server's insert of it finds it there.
CREATE TABLE bootstrap (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    created_at BIGINT  NOT NULL
);

-- A database that has tokens already was bootstrapped.
INSERT INTO bootstrap (id, created_at) SELECT 1, 0 WHERE EXISTS (SELECT 1 FROM api_tokens);
