-- Signed audit checkpoints (DESIGN.md §7): the authority's Ed25519 signature over
-- `Checkpoint::signing_bytes()` (tag, head seq, head hash, time). `agentkeys audit
-- verify` checks each signature with the key derived from the master seed, and
-- that the chain still holds record `seq` with hash `head_hash`.
CREATE TABLE audit_checkpoints (
    seq        INTEGER NOT NULL PRIMARY KEY CHECK (seq >= 1), -- the head's seq; one checkpoint per head
    head_hash  TEXT    NOT NULL CHECK (length(head_hash) = 64),
    ts         INTEGER NOT NULL,                               -- when it was signed, Unix seconds
    signature  TEXT    NOT NULL                                -- hex (Ed25519: 128 digits)
);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
