-- Tern's embedded schema. Written in the SQL that PostgreSQL shares, so the
-- other backend follows with the same tables.

-- One row per accepted message. The body lives in the spool under `id`.
CREATE TABLE messages (
    id          TEXT PRIMARY KEY,
    sender      TEXT NOT NULL,           -- '' is the null reverse-path
    created_at  BIGINT NOT NULL,         -- Unix seconds
    size        BIGINT NOT NULL,
    auth_user   TEXT                     -- who submitted it, when authenticated
);

-- One row per recipient, each with its own delivery state.
CREATE TABLE recipients (
    message_id   TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx          INTEGER NOT NULL,
    address      TEXT NOT NULL,
    domain       TEXT NOT NULL,
    status       TEXT NOT NULL,          -- queued | deferred | delivered | failed
    detail       TEXT,                   -- last reason or reply
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL,        -- Unix seconds
    leased_until BIGINT,                 -- set while an attempt is in flight
    warned       INTEGER NOT NULL DEFAULT 0, -- a delay warning was sent
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX recipients_due ON recipients (next_attempt)
    WHERE status IN ('queued', 'deferred');

-- What happened, in order: accepted, delivered, deferred, failed, ...
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
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
