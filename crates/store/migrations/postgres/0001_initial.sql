-- AgentKeys Mail metadata on PostgreSQL: the schema of migrations/sqlite/0001–0011
-- in one step, for several `serve` nodes sharing one database.
--
-- Times are Unix seconds (BIGINT). Ids, addresses and hashes are TEXT in their
-- canonical form, as in SQLite. Every TEXT column compares and sorts bytewise
-- (COLLATE "C"), like SQLite: listings come out in the same order whatever the
-- database's locale, and ULID range scans mean what they say.
--
-- What SQLite got from having one writer at a time is explicit here:
-- * the audit chain has a one-row head (`audit_chain`) that every append locks
--   (SELECT … FOR UPDATE) until its commit, so appends from all nodes form one
--   chain;
-- * message `seq` is taken from a one-row counter (`message_seq`) locked the same
--   way, so rows become visible in `seq` order (crates/store/src/postgres/index.rs);
-- * checkpoints are added under a transaction-scoped advisory lock.

-- Refuses UPDATE, DELETE and TRUNCATE on the append-only tables. Like SQLite's
-- triggers, this stops mistakes, not someone who can drop it: the hash chain is
-- what shows tampering.
CREATE FUNCTION agentkeys_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TABLE domains (
    name          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_at    BIGINT NOT NULL,
    -- Seconds; NULL means the server default (`limits.retention`).
    retention     BIGINT CHECK (retention IS NULL OR retention > 0),
    -- DNS verification (`agentkeys domain verify`).
    status        TEXT COLLATE "C" NOT NULL DEFAULT 'not_started'
                  CHECK (status IN ('not_started', 'pending', 'verifying', 'verified', 'invalid', 'failed')),
    status_detail TEXT COLLATE "C",
    checked_at    BIGINT
);

CREATE TABLE owners (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    email      TEXT COLLATE "C",
    created_at BIGINT NOT NULL
);

CREATE TABLE agents (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner      TEXT COLLATE "C" NOT NULL REFERENCES owners (id),
    name       TEXT COLLATE "C",
    created_at BIGINT NOT NULL
);
CREATE INDEX agents_by_owner ON agents (owner);

CREATE TABLE inboxes (
    address    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner      TEXT COLLATE "C" NOT NULL REFERENCES owners (id),
    agent      TEXT COLLATE "C" NOT NULL REFERENCES agents (id),
    status     TEXT COLLATE "C" NOT NULL CHECK (status IN ('active', 'disabled', 'suspended')),
    created_at BIGINT NOT NULL
);
CREATE INDEX inboxes_by_owner ON inboxes (owner);
CREATE INDEX inboxes_by_agent ON inboxes (agent);

CREATE TABLE agent_keys (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    agent      TEXT COLLATE "C" NOT NULL REFERENCES agents (id),
    -- HMAC-SHA256 of the secret, lowercase hex; AUTH looks keys up by it.
    hash       TEXT COLLATE "C" NOT NULL CONSTRAINT agent_keys_hash_key UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX agent_keys_by_agent ON agent_keys (agent);

CREATE TABLE grants (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner      TEXT COLLATE "C" NOT NULL REFERENCES owners (id),
    agent      TEXT COLLATE "C" NOT NULL REFERENCES agents (id),
    pattern    TEXT COLLATE "C" NOT NULL,
    scopes     TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX grants_by_agent ON grants (agent);
CREATE INDEX grants_by_owner ON grants (owner);

-- DKIM keys of the hosted domains, one row per version (see the SQLite
-- migration 0003 for the wrapping of the RSA key).
CREATE TABLE domain_keys (
    domain          TEXT COLLATE "C" NOT NULL REFERENCES domains (name),
    version         BIGINT NOT NULL CHECK (version >= 1),
    selector_ed     TEXT COLLATE "C" NOT NULL,
    selector_rsa    TEXT COLLATE "C" NOT NULL,
    rsa_key_wrapped BYTEA NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (domain, version)
);

-- The owner's approval gate.
CREATE TABLE owner_keys (
    owner       TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES owners (id),
    public_key  TEXT COLLATE "C" NOT NULL,
    enrolled_at BIGINT NOT NULL
);
CREATE TABLE enrollment_tickets (
    owner       TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES owners (id),
    code_hash   TEXT COLLATE "C" NOT NULL,
    expires_at  BIGINT NOT NULL,
    consumed_at BIGINT
);
-- Nonces of accepted owner requests: the primary key makes a replay lose on
-- any node.
CREATE TABLE owner_nonces (
    owner TEXT COLLATE "C" NOT NULL,
    nonce TEXT COLLATE "C" NOT NULL,
    ts    BIGINT NOT NULL,
    PRIMARY KEY (owner, nonce)
);
CREATE INDEX owner_nonces_by_ts ON owner_nonces (ts);

-- Pairing requests; transitions are compare-and-set on `status`.
CREATE TABLE pairing_requests (
    code_hash   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    device_key  TEXT COLLATE "C" NOT NULL,
    agent       TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C",
    opened_at   BIGINT NOT NULL,
    status      TEXT COLLATE "C" NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'approved', 'consumed')),
    owner       TEXT COLLATE "C" REFERENCES owners (id),
    approved_at BIGINT,
    consumed_at BIGINT
);
CREATE INDEX pairing_requests_by_opened ON pairing_requests (opened_at);

-- The outbound queue: one row per (message, remote recipient); claims are
-- leases (`lease_until`, `lease_token`) taken with FOR UPDATE SKIP LOCKED.
CREATE TABLE outbound_queue (
    message_id      TEXT COLLATE "C" NOT NULL,
    recipient       TEXT COLLATE "C" NOT NULL,
    sender          TEXT COLLATE "C" NOT NULL,
    owner           TEXT COLLATE "C" NOT NULL,
    state           TEXT COLLATE "C" NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'sending', 'delivered', 'deferred', 'bounced')),
    size            BIGINT NOT NULL CHECK (size >= 0),
    queued_at       BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_response   TEXT COLLATE "C",
    lease_until     BIGINT,
    lease_token     TEXT COLLATE "C",
    PRIMARY KEY (message_id, recipient)
);
CREATE INDEX outbound_queue_due ON outbound_queue (state, next_attempt_at);
CREATE INDEX outbound_queue_by_time ON outbound_queue (queued_at);
CREATE INDEX outbound_queue_by_lease ON outbound_queue (lease_token) WHERE lease_token IS NOT NULL;

CREATE TABLE outbound_attempts (
    message_id TEXT COLLATE "C" NOT NULL,
    recipient  TEXT COLLATE "C" NOT NULL,
    attempt    BIGINT NOT NULL CHECK (attempt >= 1),
    at         BIGINT NOT NULL,
    outcome    TEXT COLLATE "C" NOT NULL CHECK (outcome IN ('delivered', 'deferred', 'bounced')),
    response   TEXT COLLATE "C",
    PRIMARY KEY (message_id, recipient, attempt)
);

-- The message index: a derived, rebuildable cache of the blob store.
CREATE TABLE messages (
    seq         BIGINT NOT NULL PRIMARY KEY CHECK (seq >= 1),
    owner       TEXT COLLATE "C" NOT NULL,
    inbox       TEXT COLLATE "C" NOT NULL,
    id          TEXT COLLATE "C" NOT NULL,
    received_at BIGINT NOT NULL,
    size        BIGINT NOT NULL CHECK (size >= 0),
    CONSTRAINT messages_by_inbox UNIQUE (owner, inbox, id)
);
CREATE INDEX messages_by_inbox_seq ON messages (owner, inbox, seq);
CREATE INDEX messages_by_time ON messages (received_at);

-- The last `seq` handed out. An indexing transaction locks this row, takes the
-- next values and holds the lock until it commits: the next indexer can only
-- take its values after this one's rows are visible.
CREATE TABLE message_seq (
    id   SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    last BIGINT   NOT NULL CHECK (last >= 0)
);
INSERT INTO message_seq (id, last) VALUES (1, 0);

-- The audit log: one row per record, in chain order (seq from 1, no gaps).
-- `detail` is the canonical JSON exactly as hashed. `detail_owner` and
-- `detail_agent` are the detail's `owner` and `agent` strings, copied at insert
-- for the owner's audit listing; they are not part of the hash.
CREATE TABLE audit_log (
    seq          BIGINT NOT NULL PRIMARY KEY CHECK (seq >= 1),
    ts           BIGINT NOT NULL,
    actor        TEXT COLLATE "C" NOT NULL,
    operation    TEXT COLLATE "C" NOT NULL,
    subject      TEXT COLLATE "C" NOT NULL,
    outcome      TEXT COLLATE "C" NOT NULL CHECK (outcome IN ('ok', 'denied', 'failed')),
    detail       TEXT COLLATE "C" NOT NULL,
    prev_hash    TEXT COLLATE "C" NOT NULL CHECK (length(prev_hash) = 64),
    hash         TEXT COLLATE "C" NOT NULL CHECK (length(hash) = 64),
    detail_owner TEXT COLLATE "C",
    detail_agent TEXT COLLATE "C"
);
CREATE INDEX audit_log_by_actor ON audit_log (actor);
CREATE INDEX audit_log_by_subject ON audit_log (subject);
CREATE INDEX audit_log_by_detail_owner ON audit_log (detail_owner) WHERE detail_owner IS NOT NULL;
CREATE INDEX audit_log_by_detail_agent ON audit_log (detail_agent) WHERE detail_agent IS NOT NULL;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION agentkeys_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION agentkeys_append_only();

-- The chain head every append locks (FOR UPDATE) and moves in its transaction:
-- one chain across every node. Genesis: seq 0, zero hash.
CREATE TABLE audit_chain (
    id   SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  BIGINT   NOT NULL CHECK (seq >= 0),
    hash TEXT COLLATE "C" NOT NULL CHECK (length(hash) = 64)
);
INSERT INTO audit_chain (id, seq, hash) VALUES (1, 0, repeat('0', 64));

-- Signed checkpoints (v1 rows have no counter/prev_hash; v2 rows chain).
CREATE TABLE audit_checkpoints (
    seq       BIGINT NOT NULL PRIMARY KEY CHECK (seq >= 1),
    head_hash TEXT COLLATE "C" NOT NULL CHECK (length(head_hash) = 64),
    ts        BIGINT NOT NULL,
    signature TEXT COLLATE "C" NOT NULL,
    counter   BIGINT CHECK (counter IS NULL OR counter >= 1),
    prev_hash TEXT COLLATE "C" CHECK (prev_hash IS NULL OR length(prev_hash) = 64)
);
CREATE UNIQUE INDEX audit_checkpoints_by_counter ON audit_checkpoints (counter) WHERE counter IS NOT NULL;
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION agentkeys_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION agentkeys_append_only();

CREATE TABLE audit_checkpoint_start (
    id        SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    seq       BIGINT NOT NULL CHECK (seq >= 1),
    head_hash TEXT COLLATE "C" NOT NULL CHECK (length(head_hash) = 64),
    ts        BIGINT NOT NULL,
    signature TEXT COLLATE "C" NOT NULL,
    counter   BIGINT NOT NULL CHECK (counter = 1),
    prev_hash TEXT COLLATE "C" NOT NULL CHECK (length(prev_hash) = 64)
);
CREATE TRIGGER audit_checkpoint_start_append_only BEFORE UPDATE OR DELETE ON audit_checkpoint_start
    FOR EACH ROW EXECUTE FUNCTION agentkeys_append_only();
CREATE TRIGGER audit_checkpoint_start_no_truncate BEFORE TRUNCATE ON audit_checkpoint_start
    FOR EACH STATEMENT EXECUTE FUNCTION agentkeys_append_only();

-- Idempotency keys of the HTTP send route (see the SQLite migration 0011).
CREATE TABLE send_idempotency (
    inbox      TEXT COLLATE "C" NOT NULL,
    agent      TEXT COLLATE "C" NOT NULL,
    key_hash   TEXT COLLATE "C" NOT NULL,
    body_hash  TEXT COLLATE "C" NOT NULL,
    response   TEXT COLLATE "C",
    created_at BIGINT NOT NULL,
    PRIMARY KEY (inbox, agent, key_hash)
);
CREATE INDEX send_idempotency_created_at ON send_idempotency (created_at);
