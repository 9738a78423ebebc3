-- Inboxes with an expiry (issue 11 §5): an inbox an agent creates under a grant
-- with the `create` scope lives at most until the grant's expiry. From
-- `expires_at` on (Unix seconds) it is absent to RCPT, AUTH and mints, and the
-- retention sweeper removes it with its mail (one `inbox.expire` record each).
-- NULL: the inbox never expires (every inbox created before this migration).
ALTER TABLE inboxes ADD COLUMN expires_at BIGINT CHECK (expires_at IS NULL OR expires_at > created_at);
-- The sweeper's question: which inboxes have expired, earliest first.
CREATE INDEX inboxes_by_expiry ON inboxes (expires_at) WHERE expires_at IS NOT NULL;
