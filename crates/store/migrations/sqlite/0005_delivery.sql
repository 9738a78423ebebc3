-- Outbound delivery: claim leases on queue rows and the attempt history.
--
-- A worker claims a due row by moving it to `sending` with `lease_until` (Unix
-- seconds) and a random `lease_token` in one statement; only the holder of the
-- token can record the attempt's outcome. A lease that expires (its worker
-- crashed) makes the row claimable again, so a restart resumes the queue.
ALTER TABLE outbound_queue ADD COLUMN lease_until INTEGER;
ALTER TABLE outbound_queue ADD COLUMN lease_token TEXT;

-- One row per delivery attempt of one (message, recipient), for `queue show`.
-- Like the queue itself, no foreign keys; `queue delete` removes both.
CREATE TABLE outbound_attempts (
    message_id  TEXT    NOT NULL,
    recipient   TEXT    NOT NULL,
    attempt     INTEGER NOT NULL CHECK (attempt >= 1),
    at          INTEGER NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('delivered', 'deferred', 'bounced')),
    response    TEXT,
    PRIMARY KEY (message_id, recipient, attempt)
) WITHOUT ROWID;
