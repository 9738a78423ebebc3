-- Webhooks (issue 13 §1); see the SQLite migration 0018 for the design.
CREATE TABLE webhook_subscriptions (
    id                     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner                  TEXT COLLATE "C" NOT NULL,
    url                    TEXT COLLATE "C" NOT NULL,
    events                 TEXT COLLATE "C" NOT NULL,
    inbox                  TEXT COLLATE "C",
    secret_sealed          BYTEA NOT NULL,
    previous_secret_sealed BYTEA,
    previous_until         BIGINT,
    created_at             BIGINT NOT NULL,
    agent                  TEXT COLLATE "C",
    read_grant             TEXT COLLATE "C",
    send_grant             TEXT COLLATE "C",
    include_body           BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX webhook_subscriptions_by_owner ON webhook_subscriptions (owner);

CREATE TABLE webhook_deliveries (
    id              TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    subscription_id TEXT COLLATE "C" NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    owner           TEXT COLLATE "C" NOT NULL,
    event_type      TEXT COLLATE "C" NOT NULL,
    event_key       TEXT COLLATE "C" NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT COLLATE "C" NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    created_at      BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    lease_until_ms  BIGINT,
    lease_token     TEXT COLLATE "C",
    last_attempt_at BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    CONSTRAINT webhook_deliveries_once UNIQUE (subscription_id, event_key)
);
-- The claim's order (next_attempt_ms, id): walked in order, stopped at the limit.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_ms, id) WHERE state IN ('pending', 'sending');
CREATE INDEX webhook_deliveries_by_subscription ON webhook_deliveries (subscription_id, created_at);
CREATE INDEX webhook_deliveries_by_lease ON webhook_deliveries (lease_token) WHERE lease_token IS NOT NULL;

-- The feeder's position in the message index (`seq` is visible in commit
-- order on this backend too: the index holds its counter row until commit).
CREATE TABLE webhook_feed (
    name     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL
);
INSERT INTO webhook_feed (name, position) SELECT 'messages', COALESCE(MAX(seq), 0) FROM messages;

ALTER TABLE outbound_queue ADD COLUMN webhook_fed BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE outbound_queue SET webhook_fed = TRUE;
CREATE INDEX outbound_queue_webhook_unfed ON outbound_queue (message_id) WHERE NOT webhook_fed;
ALTER TABLE outbound_attempts ADD COLUMN webhook_fed BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE outbound_attempts SET webhook_fed = TRUE;
CREATE INDEX outbound_attempts_webhook_unfed ON outbound_attempts (message_id) WHERE NOT webhook_fed;
