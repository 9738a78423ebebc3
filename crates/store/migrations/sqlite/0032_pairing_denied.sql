-- The owner may deny a pairing request outright (issue 12): `status` may be
-- 'denied' (terminal; `owner` is who denied it, `approved_at` stays NULL and
-- `consumed_at` holds when it was denied). SQLite cannot change a CHECK
-- constraint in place, so the table is rebuilt with its rows and indexes.
CREATE TABLE pairing_requests_0032 (
    code_hash     TEXT    NOT NULL PRIMARY KEY,
    device_key    TEXT    NOT NULL,
    agent         TEXT    NOT NULL,
    name          TEXT,
    opened_at     INTEGER NOT NULL,
    status        TEXT    NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'approved', 'consumed', 'denied')),
    owner         TEXT    REFERENCES owners (id),
    approved_at   INTEGER,
    consumed_at   INTEGER,
    addressed_to  TEXT,
    confirm_tries INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO pairing_requests_0032
    (code_hash, device_key, agent, name, opened_at, status, owner, approved_at, consumed_at, addressed_to, confirm_tries)
    SELECT code_hash, device_key, agent, name, opened_at, status, owner, approved_at, consumed_at, addressed_to, confirm_tries
      FROM pairing_requests;
DROP TABLE pairing_requests;
ALTER TABLE pairing_requests_0032 RENAME TO pairing_requests;
CREATE INDEX pairing_requests_by_opened ON pairing_requests (opened_at);
CREATE INDEX pairing_requests_addressed ON pairing_requests (addressed_to, status, opened_at);
