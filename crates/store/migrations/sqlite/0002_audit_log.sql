-- The audit log (DESIGN.md §7; encoding and verifier in crates/audit).
--
-- One row per record, in chain order. `seq` is the chain position (from 1, no
-- gaps); appends read the head and insert inside one BEGIN IMMEDIATE transaction,
-- together with the change the record describes. Hashes are lowercase hex;
-- `detail` is the canonical JSON of the record's detail.
CREATE TABLE audit_log (
    seq       INTEGER NOT NULL PRIMARY KEY CHECK (seq >= 1),
    ts        INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    operation TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    outcome   TEXT    NOT NULL CHECK (outcome IN ('ok', 'denied', 'failed')),
    detail    TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL CHECK (length(prev_hash) = 64),
    hash      TEXT    NOT NULL CHECK (length(hash) = 64)
);

-- Append-only. These stop mistakes, not an attacker with the file (who can drop
-- them): the hash chain is what shows tampering.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
