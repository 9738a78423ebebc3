-- Per-agent send guardrails and owner review (issue 13 §3).
--
-- `agent_send_limits`: the owner's limits on one agent (JSON of
-- `agentkeys_core::send_limits::SendLimits`), with the owner who set them: read
-- only while the agent still belongs to that owner.
CREATE TABLE agent_send_limits (
    agent      TEXT COLLATE "C" PRIMARY KEY,
    owner      TEXT COLLATE "C" NOT NULL,
    limits     TEXT COLLATE "C" NOT NULL,
    updated_at BIGINT NOT NULL
);

-- One row per accepted send (sent or held), written under the agent's lock by
-- the admission that counted it: the hour and day windows count these rows.
-- `queue_id` is the id its copies were stored and queued under (the message id
-- itself for a direct send, a new id for a released held message, NULL while
-- held or after a rejection).
CREATE TABLE agent_sends (
    message_id     TEXT COLLATE "C" PRIMARY KEY,
    agent          TEXT COLLATE "C" NOT NULL,
    owner          TEXT COLLATE "C" NOT NULL,
    inbox          TEXT COLLATE "C" NOT NULL,
    at             BIGINT NOT NULL,
    recipients     TEXT COLLATE "C" NOT NULL,
    new_recipients BIGINT NOT NULL CHECK (new_recipients >= 0),
    queue_id       TEXT COLLATE "C"
);
CREATE INDEX agent_sends_by_agent ON agent_sends (agent, at);
CREATE INDEX agent_sends_by_inbox ON agent_sends (inbox, at);
CREATE INDEX agent_sends_by_queue_id ON agent_sends (queue_id) WHERE queue_id IS NOT NULL;

-- The new recipients of accepted sends, one row each: the "new recipients per
-- day" window counts these.
CREATE TABLE agent_new_recipients (
    message_id TEXT COLLATE "C" NOT NULL,
    recipient  TEXT COLLATE "C" NOT NULL,
    agent      TEXT COLLATE "C" NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (message_id, recipient)
);
CREATE INDEX agent_new_recipients_by_agent ON agent_new_recipients (agent, at);

-- Addresses an agent has sent a released message to (not a held or rejected
-- one): any other address is a new recipient.
CREATE TABLE agent_known_recipients (
    agent         TEXT COLLATE "C" NOT NULL,
    recipient     TEXT COLLATE "C" NOT NULL,
    first_message TEXT COLLATE "C" NOT NULL,
    first_at      BIGINT NOT NULL,
    PRIMARY KEY (agent, recipient)
);

-- Messages held for the owner's review; the bytes are the blob held/<id>.eml.
-- `key_id` and `grant_id` are the sender's authorization when it was held,
-- restored by the approval (`ReleaseApproved`).
CREATE TABLE held_messages (
    id          TEXT COLLATE "C" PRIMARY KEY,
    owner       TEXT COLLATE "C" NOT NULL,
    agent       TEXT COLLATE "C" NOT NULL,
    inbox       TEXT COLLATE "C" NOT NULL,
    key_id      TEXT COLLATE "C" NOT NULL,
    grant_id    TEXT COLLATE "C" NOT NULL,
    recipients  TEXT COLLATE "C" NOT NULL,
    reason      TEXT COLLATE "C" NOT NULL,
    size        BIGINT NOT NULL CHECK (size >= 0),
    subject     TEXT COLLATE "C",
    held_at     BIGINT NOT NULL,
    state       TEXT COLLATE "C" NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'approved', 'rejected')),
    decided_at  BIGINT,
    released_as TEXT COLLATE "C"
);
CREATE INDEX held_messages_by_owner ON held_messages (owner, state, held_at);

-- What the owner should hear about (a send refused by a limit, a held
-- message), one row per `notice_key`: the seam for owner notification channels
-- (webhooks are fed in the same transaction; an e-mail channel follows `id`).
CREATE TABLE owner_notices (
    id         BIGSERIAL PRIMARY KEY,
    notice_key TEXT COLLATE "C" NOT NULL UNIQUE,
    owner      TEXT COLLATE "C" NOT NULL,
    agent      TEXT COLLATE "C" NOT NULL,
    kind       TEXT COLLATE "C" NOT NULL,
    detail     TEXT COLLATE "C" NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX owner_notices_by_owner ON owner_notices (owner, id);
