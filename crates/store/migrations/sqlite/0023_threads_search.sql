-- Threads and search (issue 13 §4). Every value is derived at acceptance from
-- the stored copy (`MessageFacts`, store/src/message_facts.rs) and written in
-- the indexing transaction, so a message is searchable and threaded exactly
-- when it is acknowledged.

-- The thread a message belongs to: the id of the first message of the thread
-- that reached this inbox. Rows indexed before this migration are threads of
-- their own.
ALTER TABLE messages ADD COLUMN thread_id TEXT;
UPDATE messages SET thread_id = id WHERE thread_id IS NULL;
-- Whether the message has an attachment part.
ALTER TABLE messages ADD COLUMN has_attachment INTEGER NOT NULL DEFAULT 0 CHECK (has_attachment IN (0, 1));
-- To: and Cc: addresses, lower-cased, separated by one space (the `to` filter).
ALTER TABLE messages ADD COLUMN recipients TEXT NOT NULL DEFAULT '';
-- Threads of an inbox: GROUP BY thread_id over (owner, inbox), and one thread's
-- messages in order.
CREATE INDEX messages_by_thread ON messages (owner, inbox, thread_id, id);

-- The keys that join messages into threads: `m:<message id>` (own id,
-- In-Reply-To, References) and `s:<base subject>`; a message looks up its
-- keys to find its thread (MessageFacts::thread_lookup_keys).
CREATE TABLE message_thread_keys (
    owner TEXT    NOT NULL,
    inbox TEXT    NOT NULL,
    key   TEXT    NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (owner, inbox, key, seq)
) WITHOUT ROWID;
CREATE INDEX message_thread_keys_by_seq ON message_thread_keys (seq);

-- Full text: one row per message, rowid = messages.seq. Contentless (the words
-- are in the index only; the text stays in the blob), deletable. The columns
-- hold the words MessageFacts extracted (store/src/message_facts.rs, `terms`),
-- separated by spaces; `scope` holds one word naming the (owner, inbox), so a
-- query's candidates are that inbox's rows (the join checks owner and inbox).
CREATE VIRTUAL TABLE message_search USING fts5(
    scope, subject, sender, recipients, body,
    content = '', contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 0'
);

-- Every removal of a message (unindex, retention, inbox expiry) removes its
-- words and thread keys in the same transaction.
CREATE TRIGGER messages_search_delete AFTER DELETE ON messages BEGIN
    DELETE FROM message_search WHERE rowid = OLD.seq;
    DELETE FROM message_thread_keys WHERE seq = OLD.seq;
END;
