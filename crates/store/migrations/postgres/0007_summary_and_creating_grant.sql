-- The header summary of each indexed message (sqlite 0017): bounded, cleaned
-- From: header (never the envelope sender), subject and our MX's verdict.
-- Rows indexed before this migration have none.
ALTER TABLE messages ADD COLUMN header_from_address TEXT;
ALTER TABLE messages ADD COLUMN header_from_name TEXT;
ALTER TABLE messages ADD COLUMN subject TEXT;
ALTER TABLE messages ADD COLUMN authenticated BOOLEAN NOT NULL DEFAULT false;

-- The grant an agent created an inbox under (sqlite 0017): revoking, shortening
-- or narrowing it ends the inbox.
ALTER TABLE inboxes ADD COLUMN created_by_grant TEXT COLLATE "C";
CREATE INDEX inboxes_by_creating_grant ON inboxes (created_by_grant) WHERE created_by_grant IS NOT NULL;

-- The owner a hosted domain is assigned to (NULL: shared), sqlite 0017.
ALTER TABLE domains ADD COLUMN owner TEXT COLLATE "C";
