-- Failure counters shared by every process on this database
-- (store/src/throttles.rs): one row per recorded failure of a key (a budget
-- name and an address). Recording a failure deletes every row whose window has
-- passed (`expires_ms`, the failure's time plus its window) and keeps only the
-- key's `limit` newest rows inside the window, so the table holds at most
-- `limit` rows per key that failed within its window.
CREATE TABLE throttle_failures (
    key        TEXT    NOT NULL,
    at_ms      INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX throttle_failures_key ON throttle_failures (key, at_ms);
CREATE INDEX throttle_failures_expiry ON throttle_failures (expires_ms);
