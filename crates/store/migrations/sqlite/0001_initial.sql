-- AgentKeys Mail metadata, initial schema.
--
-- Times are Unix seconds (INTEGER). Ids are stored in their canonical text form
-- (lowercase wallet ids, lowercase addresses); grants keep their pattern and
-- scopes in the Display form of `InboxPattern` and `Scopes`.

CREATE TABLE domains (
    name       TEXT    NOT NULL PRIMARY KEY,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE owners (
    id         TEXT    NOT NULL PRIMARY KEY,
    email      TEXT,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE agents (
    id         TEXT    NOT NULL PRIMARY KEY,
    owner      TEXT    NOT NULL REFERENCES owners (id),
    name       TEXT,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX agents_by_owner ON agents (owner);

CREATE TABLE inboxes (
    address    TEXT    NOT NULL PRIMARY KEY,
    owner      TEXT    NOT NULL REFERENCES owners (id),
    agent      TEXT    NOT NULL REFERENCES agents (id),
    status     TEXT    NOT NULL CHECK (status IN ('active', 'disabled', 'suspended')),
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX inboxes_by_owner ON inboxes (owner);
CREATE INDEX inboxes_by_agent ON inboxes (agent);

CREATE TABLE agent_keys (
    id         TEXT    NOT NULL PRIMARY KEY,
    agent      TEXT    NOT NULL REFERENCES agents (id),
    -- HMAC-SHA256 of the secret, lowercase hex; AUTH looks keys up by it.
    hash       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
) WITHOUT ROWID;
CREATE INDEX agent_keys_by_agent ON agent_keys (agent);

CREATE TABLE grants (
    id         TEXT    NOT NULL PRIMARY KEY,
    owner      TEXT    NOT NULL REFERENCES owners (id),
    agent      TEXT    NOT NULL REFERENCES agents (id),
    pattern    TEXT    NOT NULL,
    scopes     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
) WITHOUT ROWID;
CREATE INDEX grants_by_agent ON grants (agent);

-- One row per (message, remote recipient). No foreign keys: a queued message
-- must stay deliverable (and auditable) whatever happens to its sender later.
CREATE TABLE outbound_queue (
    message_id      TEXT    NOT NULL,
    recipient       TEXT    NOT NULL,
    sender          TEXT    NOT NULL,
    owner           TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'sending', 'delivered', 'deferred', 'bounced')),
    size            INTEGER NOT NULL CHECK (size >= 0),
    queued_at       INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_response   TEXT,
    PRIMARY KEY (message_id, recipient)
) WITHOUT ROWID;
CREATE INDEX outbound_queue_due ON outbound_queue (state, next_attempt_at);
CREATE INDEX outbound_queue_by_time ON outbound_queue (queued_at);
