-- Search plans at scale (issue 13 §4; BENCHMARKS.md, "Search"). PostgreSQL
-- estimates how many rows a tsquery matches from the most common lexemes
-- ANALYZE records for the column (10 per unit of statistics target); a lexeme
-- outside that list is guessed at half the rarest listed one's frequency.
-- With the default target (100: 1,000 lexemes) that guess was about 1 % of the
-- rows for a rare word or a word no message has, so the planner walked the
-- primary key newest first and checked every row of the table (416 ms p99 at
-- 100,000 messages for a missing word) instead of asking the GIN index. With
-- 10,000 lexemes recorded the estimate of a word outside the list is small
-- enough that the GIN index is chosen, and the listed ones are estimated
-- from their measured frequency. ANALYZE reads 300,000 sample rows instead of
-- 30,000 for this column.
ALTER TABLE messages ALTER COLUMN search SET STATISTICS 1000;

-- Sent mail in threads (issue 13 §4; sqlite 0033). A send admitted from now
-- on records its subject and its thread keys: its own `Message-ID` and its
-- `In-Reply-To`/`References` ids, spelled as `message_thread_keys` spells
-- them (`m:<id>`; never its subject). A thread of the inbox shows the sends
-- whose keys one of its received messages registered. Sends admitted before
-- this migration have no keys and stay out of threads.
ALTER TABLE agent_sends ADD COLUMN subject TEXT COLLATE "C";
CREATE TABLE sent_thread_keys (
    owner      TEXT COLLATE "C" NOT NULL,
    inbox      TEXT COLLATE "C" NOT NULL,
    key        TEXT COLLATE "C" NOT NULL,
    message_id TEXT COLLATE "C" NOT NULL REFERENCES agent_sends (message_id) ON DELETE CASCADE,
    PRIMARY KEY (owner, inbox, key, message_id)
);
CREATE INDEX sent_thread_keys_by_message ON sent_thread_keys (message_id);
