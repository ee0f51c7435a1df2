-- Bearer tokens. Only a SHA-256 hash of each token's secret is kept; the token itself is
-- shown once, when it is created.

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('store', 'matcher', 'admin')),
    secret_hash  TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

-- The stores a store token may act for.
CREATE TABLE api_token_stores (
    token_id INTEGER NOT NULL REFERENCES api_tokens (id),
    store_id INTEGER NOT NULL,
    PRIMARY KEY (token_id, store_id)
);
