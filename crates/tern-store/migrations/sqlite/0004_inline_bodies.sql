-- Small bodies live in the database, written in the transaction that
-- commits their message: one fsync (the WAL's) makes both durable, where
-- a spool file needs its own and one of its directory. Large ones stay in
-- the spool, so that they are never held whole.
CREATE TABLE bodies (
    message_id  TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    data        BLOB NOT NULL
);
