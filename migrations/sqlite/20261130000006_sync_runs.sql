-- The history of every sync, committed or not, and the idempotency keys of committed ones.
-- Timestamps are microseconds since the Unix epoch. Outcomes: 1 running, 2 committed,
-- 3 dry run, 4 rejected, 5 aborted, 6 timed out, 7 replayed (see store/history.rs).
CREATE TABLE sync_runs (
    -- The sync id: a UUIDv7, so ids sort by start time.
    id               TEXT    PRIMARY KEY,
    store_id         BIGINT  NOT NULL,
    started_at       BIGINT  NOT NULL,
    finished_at      BIGINT,
    clear            BOOLEAN NOT NULL,
    dry_run          BOOLEAN NOT NULL,
    key_field        INTEGER NOT NULL,
    skip_invalid     BOOLEAN NOT NULL,
    allow_mass_clear BOOLEAN NOT NULL,
    expected_count   BIGINT,
    idempotency_key  TEXT,
    -- SHA-256 of the header and every product, for idempotency keys.
    request_hash     TEXT,
    outcome          INTEGER NOT NULL,
    -- The gRPC status code and message a rejected sync was answered with.
    status_code      INTEGER NOT NULL DEFAULT 0,
    status_message   TEXT    NOT NULL DEFAULT '',
    received         BIGINT  NOT NULL DEFAULT 0,
    created          BIGINT  NOT NULL DEFAULT 0,
    updated          BIGINT  NOT NULL DEFAULT 0,
    unchanged        BIGINT  NOT NULL DEFAULT 0,
    cleared          BIGINT  NOT NULL DEFAULT 0,
    linked           BIGINT  NOT NULL DEFAULT 0,
    rejected         BIGINT  NOT NULL DEFAULT 0,
    -- The name of the token that sent the sync.
    token_name       TEXT    NOT NULL DEFAULT '',
    -- A replayed sync: the committed run whose answer it repeated.
    replay_of        TEXT
);

-- A store's history, newest first.
CREATE INDEX sync_runs_store ON sync_runs (store_id, id);

-- One committed sync per idempotency key and store.
CREATE UNIQUE INDEX sync_runs_idempotency_key ON sync_runs (store_id, idempotency_key)
    WHERE outcome = 2;
