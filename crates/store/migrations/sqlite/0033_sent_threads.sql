-- Sent mail in threads (issue 13 §4; postgres 0024). A send admitted from now
-- on records its subject and its thread keys: its own `Message-ID` and its
-- `In-Reply-To`/`References` ids, spelled as `message_thread_keys` spells
-- them (`m:<id>`; never its subject). A thread of the inbox shows the sends
-- whose keys one of its received messages registered. Sends admitted before
-- this migration have no keys and stay out of threads.
ALTER TABLE agent_sends ADD COLUMN subject TEXT;
CREATE TABLE sent_thread_keys (
    owner      TEXT NOT NULL,
    inbox      TEXT NOT NULL,
    key        TEXT NOT NULL,
    message_id TEXT NOT NULL REFERENCES agent_sends (message_id) ON DELETE CASCADE,
    PRIMARY KEY (owner, inbox, key, message_id)
);
CREATE INDEX sent_thread_keys_by_message ON sent_thread_keys (message_id);
