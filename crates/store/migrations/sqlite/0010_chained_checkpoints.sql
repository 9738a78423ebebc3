-- Chained audit checkpoints (format v2, issue 15 item 4; crates/audit/src/checkpoint.rs).
--
-- A v2 checkpoint also signs `counter` (1, 2, 3, … without gaps) and `prev_hash`,
-- the hash of checkpoint `counter - 1` (32 zero bytes for 1). Rows written before
-- have neither (format v1, still verified as they are). `audit_checkpoint_start`
-- keeps a copy of checkpoint 1 so that deleting every checkpoint is noticed;
-- `audit verify` also refuses records the latest checkpoint does not cover once
-- they are older than the allowed age.
ALTER TABLE audit_checkpoints ADD COLUMN counter INTEGER CHECK (counter IS NULL OR counter >= 1);
ALTER TABLE audit_checkpoints ADD COLUMN prev_hash TEXT CHECK (prev_hash IS NULL OR length(prev_hash) = 64);
CREATE UNIQUE INDEX audit_checkpoints_by_counter ON audit_checkpoints (counter) WHERE counter IS NOT NULL;

CREATE TABLE audit_checkpoint_start (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),  -- one chain per database
    seq        INTEGER NOT NULL CHECK (seq >= 1),
    head_hash  TEXT    NOT NULL CHECK (length(head_hash) = 64),
    ts         INTEGER NOT NULL,
    signature  TEXT    NOT NULL,
    counter    INTEGER NOT NULL CHECK (counter = 1),
    prev_hash  TEXT    NOT NULL CHECK (length(prev_hash) = 64)
);
CREATE TRIGGER audit_checkpoint_start_no_update BEFORE UPDATE ON audit_checkpoint_start
BEGIN SELECT RAISE(ABORT, 'audit_checkpoint_start is append-only'); END;
CREATE TRIGGER audit_checkpoint_start_no_delete BEFORE DELETE ON audit_checkpoint_start
BEGIN SELECT RAISE(ABORT, 'audit_checkpoint_start is append-only'); END;
