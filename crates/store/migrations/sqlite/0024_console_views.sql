-- The owner's console, second part (store/src/console_views.rs):
-- * tries of the 6 digits per pairing request (each approval attempt takes one
--   before the digits are compared; at MAX_CONFIRMATION_TRIES it is locked);
-- * when each agent key last minted (written at most once per key per
--   KEY_USE_RESOLUTION_SECS);
-- * the owner's outbound rows, newest first, for the "sent" view;
-- * grants an agent asks for (below).
ALTER TABLE pairing_requests ADD COLUMN confirm_tries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agent_keys ADD COLUMN last_used_at INTEGER;
CREATE INDEX outbound_queue_by_owner ON outbound_queue (owner, queued_at);
-- Grants an agent asks its owner for (`agentkeys mail grant-request`): pending
-- until the owner approves (the grant is inserted in the same transaction) or
-- denies it in the console.
CREATE TABLE grant_requests (
    id         TEXT    NOT NULL PRIMARY KEY,
    owner      TEXT    NOT NULL REFERENCES owners (id),
    agent      TEXT    NOT NULL REFERENCES agents (id),
    pattern    TEXT    NOT NULL,
    scopes     TEXT    NOT NULL,
    ttl        INTEGER NOT NULL CHECK (ttl > 0),
    reason     TEXT,
    created_at INTEGER NOT NULL,
    status     TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'denied')),
    decided_at INTEGER,
    grant_id   TEXT
) WITHOUT ROWID;
CREATE INDEX grant_requests_by_owner ON grant_requests (owner, status, created_at);
CREATE INDEX grant_requests_by_agent ON grant_requests (agent, status, created_at);
