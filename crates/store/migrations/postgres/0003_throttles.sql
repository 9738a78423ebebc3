-- Failure counters shared by every node (store/src/throttles.rs, postgres/throttles.rs):
-- one row per key (a budget name and an address) holding the times of its
-- newest failures inside the window, at most the budget's `limit` of them, and
-- `expires_ms`, when the newest of them leaves the window. A failure is one
-- `INSERT … ON CONFLICT DO UPDATE` that rewrites the row under its row lock,
-- so concurrent failures from several nodes are applied one after the other
-- and none is lost.
--
-- Growth is bounded: a row has at most `limit` times, and rows whose
-- `expires_ms` has passed are deleted (at most every THROTTLE_PRUNE_INTERVAL
-- per node), so the table holds one small row per key that failed within its
-- window, plus those that expired since the last prune.
CREATE TABLE throttle_failures (
    key        TEXT COLLATE "C" PRIMARY KEY,
    times      BIGINT[] NOT NULL,
    expires_ms BIGINT   NOT NULL
);
CREATE INDEX throttle_failures_expiry ON throttle_failures (expires_ms);
