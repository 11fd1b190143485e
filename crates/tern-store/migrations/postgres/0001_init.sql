-- Tern's PostgreSQL schema: the same tables as the embedded one, plus the
-- message bodies (so a lost node's disk loses nothing) and lease owners (so
-- nodes sharing the queue know whose attempt is in flight).

CREATE TABLE messages (
    id          TEXT PRIMARY KEY,
    sender      TEXT NOT NULL,           -- '' is the null reverse-path
    created_at  BIGINT NOT NULL,         -- Unix seconds
    size        BIGINT NOT NULL,
    auth_user   TEXT
);

-- A body in chunks of at most 1 MiB, written in the transaction that
-- commits the message, removed in the one that makes it final.
CREATE TABLE bodies (
    message_id  TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    data        BYTEA NOT NULL,
    PRIMARY KEY (message_id, seq)
);

CREATE TABLE recipients (
    message_id   TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx          INTEGER NOT NULL,
    address      TEXT NOT NULL,
    domain       TEXT NOT NULL,
    status       TEXT NOT NULL,          -- queued | deferred | delivered | failed
    detail       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL,
    leased_until BIGINT,                 -- set while an attempt is in flight
    leased_by    TEXT,                   -- the node whose attempt it is
    warned       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX recipients_due ON recipients (next_attempt)
    WHERE status IN ('queued', 'deferred');
CREATE INDEX recipients_leased_by ON recipients (leased_by)
    WHERE leased_by IS NOT NULL;

CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    message_id  TEXT NOT NULL,
    recipient   TEXT,
    kind        TEXT NOT NULL,
    detail      TEXT,
    at          BIGINT NOT NULL
);
CREATE INDEX events_message ON events (message_id);

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
