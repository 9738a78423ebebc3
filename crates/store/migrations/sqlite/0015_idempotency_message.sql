-- Issue 10: an idempotency claim records the id of the message its send will
-- store, so a claim left "in use" by a crashed node is resolved by what was
-- stored (SendIdempotency::claim): the message is in the index or the
-- outbound queue (answer with it) or it is not (the retry proceeds).
-- NULL for claims made before this migration (they stay "in use" until the TTL).
ALTER TABLE send_idempotency ADD COLUMN message_id TEXT;
-- Whether a message id was indexed, whatever the inbox (only for stale claims).
CREATE INDEX messages_by_id ON messages (id);
