-- Webhooks (issue 13 §1): an owner's subscriptions, and one delivery row per
-- (subscription, event) — the outbox the delivery worker claims from.
--
-- `events` is the list of event types between commas (",message.received,"),
-- so a match is one `instr`. The secrets are sealed under a key derived from
-- the master seed (the store never sees them in the clear); during a rotation
-- the previous one keeps signing until `previous_until`.
--
-- An agent's subscription (`agent` set) lives under its grants: events of
-- `message.received` go out only while `read_grant` is active, the outbound
-- events only while `send_grant` is (checked when each event is recorded).
-- `include_body`: `message.received` carries the message's text.
CREATE TABLE webhook_subscriptions (
    id                     TEXT    NOT NULL PRIMARY KEY,
    owner                  TEXT    NOT NULL,
    url                    TEXT    NOT NULL,
    events                 TEXT    NOT NULL,
    inbox                  TEXT,
    secret_sealed          BLOB    NOT NULL,
    previous_secret_sealed BLOB,
    previous_until         INTEGER,
    created_at             INTEGER NOT NULL,
    agent                  TEXT,
    read_grant             TEXT,
    send_grant             TEXT,
    include_body           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX webhook_subscriptions_by_owner ON webhook_subscriptions (owner);

-- `id` is the Standard Webhooks `webhook-id`: stable across retries and
-- redeliveries. `(subscription_id, event_key)` is unique, so feeding the same
-- event twice (two nodes, a restart) never makes a second delivery.
-- Times: `created_at` in seconds; `next_attempt_ms`, `lease_until_ms` in ms.
CREATE TABLE webhook_deliveries (
    id              TEXT    NOT NULL PRIMARY KEY,
    subscription_id TEXT    NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    owner           TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    event_key       TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    created_at      INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    lease_until_ms  INTEGER,
    lease_token     TEXT,
    last_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    UNIQUE (subscription_id, event_key)
);
-- The claim's order (next_attempt_ms, id): walked in order, stopped at the limit.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_ms, id) WHERE state IN ('pending', 'sending');
CREATE INDEX webhook_deliveries_by_subscription ON webhook_deliveries (subscription_id, created_at);
CREATE INDEX webhook_deliveries_by_lease ON webhook_deliveries (lease_token) WHERE lease_token IS NOT NULL;

-- How far the feeder has turned index rows into `message.received` events
-- (by `seq`, which is commit order). Starts at the newest row: mail received
-- before webhooks existed raises no events.
CREATE TABLE webhook_feed (
    name     TEXT    NOT NULL PRIMARY KEY,
    position INTEGER NOT NULL
);
INSERT INTO webhook_feed (name, position) SELECT 'messages', COALESCE(MAX(seq), 0) FROM messages;

-- Outbound rows and attempts the feeder has turned into `message.sent` and
-- `message.delivered|deferred|bounced` events (rows written before this
-- migration count as done).
ALTER TABLE outbound_queue ADD COLUMN webhook_fed INTEGER NOT NULL DEFAULT 0;
UPDATE outbound_queue SET webhook_fed = 1;
CREATE INDEX outbound_queue_webhook_unfed ON outbound_queue (message_id) WHERE webhook_fed = 0;
ALTER TABLE outbound_attempts ADD COLUMN webhook_fed INTEGER NOT NULL DEFAULT 0;
UPDATE outbound_attempts SET webhook_fed = 1;
CREATE INDEX outbound_attempts_webhook_unfed ON outbound_attempts (message_id) WHERE webhook_fed = 0;
