-- Threads and words for rows indexed before they existed (issue 13 §4).
-- `facts_version` is the version of the thread keys and words written for the
-- row (store/src/search.rs, FACTS_VERSION): rows indexed before this migration
-- get 0, either because they predate threads and search (0023: no thread keys,
-- no words) or because they predate the attachment word (this migration). The
-- Mailroom's backfill (`Mailroom::backfill_facts`, at startup, in batches)
-- re-reads their stored copy and writes them at the current version; new rows
-- are written at it.
ALTER TABLE messages ADD COLUMN facts_version INTEGER NOT NULL DEFAULT 0;
-- What the backfill has left to do, in seq order; empty once it is done.
CREATE INDEX messages_facts_pending ON messages (seq) WHERE facts_version < 1;
