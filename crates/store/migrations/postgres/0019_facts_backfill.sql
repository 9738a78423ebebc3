-- Threads and words for rows indexed before they existed (issue 13 §4; sqlite
-- 0028). `facts_version` is the version of the thread keys and words written
-- for the row (store/src/search.rs, FACTS_VERSION): rows indexed before this
-- migration get 0 (they predate threads and search, 0013, or the attachment
-- lexeme); rows the indexing statement writes from now on get the column's
-- new default, 1, the current version. The Mailroom's backfill
-- (`Mailroom::backfill_facts`, at startup, in batches) re-reads the stored
-- copy of the old ones and writes them at the current version.
ALTER TABLE messages ADD COLUMN facts_version SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE messages ALTER COLUMN facts_version SET DEFAULT 1;
-- What the backfill has left to do, in seq order; empty once it is done.
CREATE INDEX messages_facts_pending ON messages (seq) WHERE facts_version < 1;
