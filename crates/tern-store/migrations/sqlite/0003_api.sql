-- The HTTP API: what a message was sent with (for search), API keys,
-- suppressions, webhooks and their deliveries.

ALTER TABLE messages ADD COLUMN subject TEXT;
ALTER TABLE messages ADD COLUMN tags TEXT;       -- JSON array of strings
ALTER TABLE messages ADD COLUMN metadata TEXT;   -- JSON object of strings
CREATE INDEX messages_created ON messages (created_at);
CREATE INDEX recipients_address ON recipients (address);

-- Extra facts of an event as a JSON object (bounce class, remote host).
ALTER TABLE events ADD COLUMN data TEXT;
CREATE INDEX events_at ON events (at);

-- Keys are `tern_<id>_<secret>`; only the secret's SHA-256 is kept.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    scope       TEXT NOT NULL,           -- send | read | admin
    secret_hash TEXT NOT NULL,           -- hex SHA-256 of the secret
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- Addresses never sent to: hard bounces, unsubscribes, added by hand.
CREATE TABLE suppressions (
    address     TEXT PRIMARY KEY,        -- lower case
    reason      TEXT NOT NULL,
    source      TEXT NOT NULL,           -- bounce | manual
    created_at  BIGINT NOT NULL
);

CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,           -- ',delivered,bounced,' or ',*,'
    secret      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- One row per (webhook, event): written by the trigger below in the
-- transaction that writes the event, so no event is ever missed.
CREATE TABLE webhook_deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id   TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id     BIGINT NOT NULL,
    status       TEXT NOT NULL,          -- pending | delivered | failed
    attempts     BIGINT NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL,
    leased_until BIGINT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, id);

CREATE TABLE webhook_attempts (
    delivery_id BIGINT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    at          BIGINT NOT NULL,
    status_code BIGINT,                  -- the HTTP status, NULL when none came
    error       TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id);

CREATE TRIGGER events_to_webhooks AFTER INSERT ON events
BEGIN
    INSERT INTO webhook_deliveries (webhook_id, event_id, status, attempts, next_attempt, created_at)
    SELECT id, NEW.id, 'pending', 0, NEW.at, NEW.at FROM webhooks
    WHERE events = ',*,' OR instr(events, ',' || NEW.kind || ',') > 0;
END;
