-- The owner's approval gate: registered master keys, enrollment tickets and
-- the nonces of signed owner requests (replay protection shared by every
-- process that opens this database).

-- One master public key per owner (Ed25519, 32 bytes as lowercase hex).
CREATE TABLE owner_keys (
    owner       TEXT    NOT NULL PRIMARY KEY REFERENCES owners (id),
    public_key  TEXT    NOT NULL,
    enrolled_at INTEGER NOT NULL
) WITHOUT ROWID;

-- The one outstanding enrollment code of an owner, as its SHA-256 (hex). A
-- redeemed ticket keeps its row with `consumed_at` set, so a used code answers
-- like a wrong one; issuing a new code replaces the row.
CREATE TABLE enrollment_tickets (
    owner       TEXT    NOT NULL PRIMARY KEY REFERENCES owners (id),
    code_hash   TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    consumed_at INTEGER
) WITHOUT ROWID;

-- Nonces of accepted owner requests, kept while their timestamp is within the
-- clock-skew window; older rows are pruned on insert.
CREATE TABLE owner_nonces (
    owner TEXT    NOT NULL,
    nonce TEXT    NOT NULL,
    ts    INTEGER NOT NULL,
    PRIMARY KEY (owner, nonce)
) WITHOUT ROWID;
CREATE INDEX owner_nonces_by_ts ON owner_nonces (ts);
