-- Per-agent send guardrails and owner review (issue 13 §3).
--
-- `agent_send_limits`: the owner's limits on one agent (JSON of
-- `agentkeys_core::send_limits::SendLimits`), with the owner who set them: read
-- only while the agent still belongs to that owner.
CREATE TABLE agent_send_limits (
    agent      TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    limits     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

-- One row per accepted send (sent or held), written under the agent's lock by
-- the admission that counted it: the hour and day windows count these rows.
-- `queue_id` is the id its copies were stored and queued under (the message id
-- itself for a direct send, a new id for a released held message, NULL while
-- held or after a rejection).
CREATE TABLE agent_sends (
    message_id     TEXT PRIMARY KEY,
    agent          TEXT NOT NULL,
    owner          TEXT NOT NULL,
    inbox          TEXT NOT NULL,
    at             INTEGER NOT NULL,
    recipients     TEXT NOT NULL,
    new_recipients INTEGER NOT NULL CHECK (new_recipients >= 0),
    queue_id       TEXT
);
CREATE INDEX agent_sends_by_agent ON agent_sends (agent, at);
CREATE INDEX agent_sends_by_inbox ON agent_sends (inbox, at);
CREATE INDEX agent_sends_by_queue_id ON agent_sends (queue_id) WHERE queue_id IS NOT NULL;

-- The new recipients of accepted sends, one row each: the "new recipients per
-- day" window counts these.
CREATE TABLE agent_new_recipients (
    message_id TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    agent      TEXT NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (message_id, recipient)
);
CREATE INDEX agent_new_recipients_by_agent ON agent_new_recipients (agent, at);

-- Addresses an agent has sent a released message to (not a held or rejected
-- one): any other address is a new recipient.
CREATE TABLE agent_known_recipients (
    agent         TEXT NOT NULL,
    recipient     TEXT NOT NULL,
    first_message TEXT NOT NULL,
    first_at      INTEGER NOT NULL,
    PRIMARY KEY (agent, recipient)
);

-- Messages held for the owner's review; the bytes are the blob held/<id>.eml.
-- `key_id` and `grant_id` are the sender's authorization when it was held,
-- restored by the approval (`ReleaseApproved`).
CREATE TABLE held_messages (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    agent       TEXT NOT NULL,
    inbox       TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    grant_id    TEXT NOT NULL,
    recipients  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    size        INTEGER NOT NULL CHECK (size >= 0),
    subject     TEXT,
    held_at     INTEGER NOT NULL,
    state       TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'approved', 'rejected')),
    decided_at  INTEGER,
    released_as TEXT
);
CREATE INDEX held_messages_by_owner ON held_messages (owner, state, held_at);

-- What the owner should hear about (a send refused by a limit, a held
-- message), one row per `notice_key`: the seam for owner notification channels
-- (webhooks are fed in the same transaction; an e-mail channel follows `id`).
CREATE TABLE owner_notices (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    notice_key TEXT NOT NULL UNIQUE,
    owner      TEXT NOT NULL,
    agent      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    detail     TEXT NOT NULL,
    at         INTEGER NOT NULL
);
CREATE INDEX owner_notices_by_owner ON owner_notices (owner, id);
