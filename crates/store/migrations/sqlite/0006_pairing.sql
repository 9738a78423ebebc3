-- Pairing requests (DESIGN.md §5): an agent opens one with its device public
-- key, its owner approves it with a signed request, the agent collects its key.
-- Keyed by the SHA-256 of the pair code (hex); the code itself is never stored.
-- Transitions are compare-and-set on `status`, so two approvals (or two
-- collections) cannot both win. Expiry is computed from the times, not stored.
CREATE TABLE pairing_requests (
    code_hash   TEXT    NOT NULL PRIMARY KEY,
    device_key  TEXT    NOT NULL,
    agent       TEXT    NOT NULL,
    name        TEXT,
    opened_at   INTEGER NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'approved', 'consumed')),
    owner       TEXT    REFERENCES owners (id),
    approved_at INTEGER,
    consumed_at INTEGER
) WITHOUT ROWID;
CREATE INDEX pairing_requests_by_opened ON pairing_requests (opened_at);
