-- The message index (issue 4, read path): one row per stored inbox copy
-- `<owner>/<inbox>/<id>.eml`. A derived, rebuildable cache of the blob store:
-- every column follows from the blob's key and length (received_at is the
-- ULID's time), rows are written after the blob is durable and before the
-- `250`, and `serve` re-indexes at start any blob the index lacks.
--
-- `seq` numbers rows in commit order (SQLite has one writer at a time and
-- AUTOINCREMENT never reuses a value), so "every row after seq N" is exactly
-- what a reader has not seen yet: the event stream replays by it.
CREATE TABLE messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    owner       TEXT    NOT NULL,
    inbox       TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    size        INTEGER NOT NULL CHECK (size >= 0)
);
-- Listing: WHERE owner = ? AND inbox = ? AND id < ? ORDER BY id DESC LIMIT ?
CREATE UNIQUE INDEX messages_by_inbox ON messages (owner, inbox, id);
-- Event replay: WHERE owner = ? AND inbox = ? AND seq > ? ORDER BY seq (every
-- index ends with the rowid, which is seq).
CREATE INDEX messages_by_inbox_seq ON messages (owner, inbox);
-- Retention sweeps: the oldest rows first.
CREATE INDEX messages_by_time ON messages (received_at);

-- Per-domain retention in seconds; NULL means the server default (`limits.retention`).
ALTER TABLE domains ADD COLUMN retention INTEGER CHECK (retention IS NULL OR retention > 0);
