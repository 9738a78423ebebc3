-- Issue 10: the message id of an idempotency claim (see the SQLite migration 0015).
ALTER TABLE send_idempotency ADD COLUMN IF NOT EXISTS message_id TEXT COLLATE "C";
CREATE INDEX IF NOT EXISTS messages_by_id ON messages (id);
