-- Idempotency keys of `POST /v1/inboxes/{address}/send` (issue 11 §5): a send
-- retried with the same key answers the first response and mails nobody twice.
-- Scoped per inbox and agent; `key_hash` is SHA-256 of the key, `body_hash`
-- SHA-256 of the request (media type and body). `response` is the first answer
-- (JSON), NULL while that request runs. Rows older than 24 h are deleted.
CREATE TABLE send_idempotency (
    inbox      TEXT NOT NULL,
    agent      TEXT NOT NULL,
    key_hash   TEXT NOT NULL,
    body_hash  TEXT NOT NULL,
    response   TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (inbox, agent, key_hash)
) WITHOUT ROWID;
CREATE INDEX send_idempotency_created_at ON send_idempotency (created_at);
